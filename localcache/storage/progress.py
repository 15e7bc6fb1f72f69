"""Progress a human and a log collector can both read.

Not on a TTY (a Job's log), one key=value line every `interval` seconds, never carriage returns, which
is what KServe issue #6016 asks for; on a TTY, a single redrawn bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("localcache.storage.progress")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.1f}TiB"


class Progress:
    def __init__(
        self,
        total_bytes: int | None,
        total_files: int,
        *,
        interval: float = 5.0,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.interval = interval
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done_bytes = 0
        self.resumed_bytes = 0
        self.files_done = 0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def add(self, n: int) -> None:
        self.done_bytes += n

    def add_resumed(self, n: int) -> None:
        """Bytes reused from an earlier attempt: counted as done, not in the transfer rate."""
        self.done_bytes += n
        self.resumed_bytes += n

    def file_done(self) -> None:
        self.files_done += 1

    def snapshot(self) -> dict[str, float | int | None]:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = (self.done_bytes - self.resumed_bytes) / elapsed
        total = self.total_bytes
        percent = (100.0 * self.done_bytes / total) if total else None
        eta = ((total - self.done_bytes) / rate) if (total and rate > 0) else None
        return {
            "bytes": self.done_bytes,
            "total": total,
            "percent": round(percent, 1) if percent is not None else None,
            "rate_bps": int(rate),
            "eta_s": round(eta, 1) if eta is not None else None,
            "files_done": self.files_done,
            "files": self.total_files,
            "elapsed_s": round(elapsed, 1),
        }

    def line(self) -> str:
        s = self.snapshot()
        return "progress " + " ".join(f"{k}={'-' if v is None else v}" for k, v in s.items())

    def _emit(self, final: bool = False) -> None:
        if self.tty:
            s = self.snapshot()
            pct = s["percent"] or 0.0
            filled = int(30 * float(pct) / 100)
            bar = "#" * filled + "-" * (30 - filled)
            eta = "-" if s["eta_s"] is None else f"{s['eta_s']}s"
            total = "?" if self.total_bytes is None else _human(self.total_bytes)
            self.stream.write(
                f"\r[{bar}] {pct:5.1f}% {_human(self.done_bytes)}/{total} "
                f"{_human(float(s['rate_bps'] or 0))}/s eta {eta} files {self.files_done}/{self.total_files}"
                + ("\n" if final else "")
            )
            self.stream.flush()
        else:
            log.info(self.line())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._emit()

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, *, final: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if final:
            self._emit(final=True)
