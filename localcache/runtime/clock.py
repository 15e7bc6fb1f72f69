"""An injectable clock, so backoffs, resyncs, rate limits and leases can be tested in virtual time.

Everything in ``localcache.runtime`` that waits or reads the time takes a :class:`Clock`
(defaulting to :data:`SYSTEM_CLOCK`). Tests pass a :class:`FakeClock`: its ``sleep`` only returns
when the test moves time forward with :meth:`FakeClock.advance`, so a 30 s backoff or a 10 h
resync runs in microseconds and deterministically.

Interface (stable, relied on by the manager and leader election):

* ``clock.now() -> datetime`` (timezone-aware, UTC) wall time, for timestamps written to the API;
* ``clock.monotonic() -> float`` seconds, for measuring intervals and deadlines;
* ``await clock.sleep(seconds)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "wait_event"]


@runtime_checkable
class Clock(Protocol):
    """Time as the runtime sees it."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)``, ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """Virtual time: sleepers wake only when :meth:`advance` moves the clock past their deadline.

    ``advance`` is async: after releasing each due sleeper it yields to the event loop until the woken
    tasks have run as far as they can, so a test can ``await clock.advance(30)`` and then assert on the
    state a 30 s backoff leads to. Sleepers woken by ``advance`` that sleep again within the advanced
    span are woken too, in deadline order, as real time would.
    """

    def __init__(self, start: datetime | None = None, monotonic_start: float = 1000.0) -> None:
        self._wall0 = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._wall0.tzinfo is None:
            raise ValueError("FakeClock start must be timezone-aware")
        self._mono0 = monotonic_start
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping (cancelled ones excluded): lets a test wait until code is parked."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """Seconds until the earliest sleeper wakes, or None."""
        live = [d for d, _, f in self._sleepers if not f.done()]
        return (min(live) - self._elapsed) if live else None

    async def settle(self, rounds: int = 20) -> None:
        """Let runnable tasks run: a bounded number of event-loop turns."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way in deadline order."""
        if seconds < 0:
            raise ValueError("cannot move a clock backwards")
        target = self._elapsed + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._elapsed = max(self._elapsed, deadline)
            fut.set_result(None)
            await self.settle()
        self._elapsed = target
        await self.settle()

    async def run_until_idle(self, max_seconds: float = 1e9) -> None:
        """Advance to each next deadline until nobody sleeps or ``max_seconds`` of virtual time passed."""
        start = self._elapsed
        while True:
            nxt = self.next_deadline()
            if nxt is None or self._elapsed + nxt - start > max_seconds:
                return
            await self.advance(nxt)


async def wait_event(
    event: asyncio.Event,
    timeout: float | None,  # noqa: ASYNC109
    clock: Clock = SYSTEM_CLOCK,
) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds of ``clock`` time; True if it was set."""
    if event.is_set():
        return True
    if timeout is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    return event.is_set()
