"""Child processes that cannot outlive the test, demo or simulator that started them."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for subprocesses: the kernel SIGKILLs the child when its parent dies, however it
    dies (even SIGKILL), so an interrupted run leaves no server behind. Linux only, as is this harness."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
