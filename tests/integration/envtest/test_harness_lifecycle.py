"""The harness leaves no process behind, whether it is stopped politely or its parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcache.testing.pytest_plugin import use_existing_cluster

pytestmark = pytest.mark.skipif(use_existing_cluster(), reason="checks the local envtest harness itself")

CHILD = """
import sys
from localcache.testing.envtest import ControlPlane
plane = ControlPlane(controllers=None, crd_dirs=()).start()
print(" ".join(map(str, plane.pids)), flush=True)
sys.stdin.read()  # block until killed
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until_dead(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        survivors = [p for p in pids if alive(p)]
        if not survivors:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_sigkilled_test_process_leaves_nothing_behind() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, f"expected etcd and kube-apiserver pids, got {line!r}"
        assert all(alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_until_dead(pids) == [], "control-plane processes outlived the SIGKILLed test process"


def test_up_command_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "up.kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcache.testing.envtest",
            "up",
            "--kubeconfig",
            str(kubeconfig),
            "--no-controller-manager",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("envtest: ready at https://127.0.0.1:"), line + (
            proc.stderr.read() if proc.poll() else ""
        )
        assert kubeconfig.exists()
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_until_dead([int(c) for c in children]) == []
    assert not kubeconfig.exists(), "the kubeconfig of a stopped cluster should not be left pointing nowhere"
