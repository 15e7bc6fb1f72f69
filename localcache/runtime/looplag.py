"""Event-loop lag: how late a periodic wake-up runs, the asyncio analogue of Go's scheduler metrics.

Every controller, informer and probe in a process shares one event loop, so a handler that blocks it
(CPU-bound work, a synchronous call) delays all of them. A task sleeps ``interval`` seconds on the
loop and measures how much later than asked it wakes up. The lag is real-time by nature, so this
module uses the loop's own clock rather than the injectable one.

Metrics: ``asyncio_event_loop_lag_seconds`` (gauge, the last measurement) and
``asyncio_event_loop_lag_observed_seconds`` (histogram of every measurement).

:meth:`LoopLagMonitor.check` is a healthz check: it fails when the last lag exceeded ``threshold``
or when the monitor itself has not ticked for ``threshold`` (a loop stuck so long that nothing runs
cannot answer a probe at all, which fails liveness in the same way).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge, Histogram

__all__ = ["LoopLagMonitor"]

log = logging.getLogger(__name__)

loop_lag_seconds = Gauge("asyncio_event_loop_lag_seconds", "Event loop lag of the last periodic measurement")
loop_lag_observed_seconds = Histogram(
    "asyncio_event_loop_lag_observed_seconds",
    "Distribution of event loop lag measurements",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class LoopLagMonitor:
    """A runnable (on every replica) measuring lag every ``interval`` seconds."""

    needs_leader_election = False

    def __init__(self, interval: float = 0.5, threshold: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError(f"loop lag interval must be positive, got {interval}")
        self.interval = interval
        self.threshold = threshold
        self.last_lag = 0.0
        self.max_lag = 0.0
        self._last_tick: float | None = None
        self.ticks = 0
        self._tick: asyncio.Future[float] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_tick = loop.time()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            lag = max(0.0, now - before - self.interval)
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)
            self._last_tick = now
            self.ticks += 1
            loop_lag_seconds.set(lag)
            loop_lag_observed_seconds.observe(lag)
            if self._tick is not None:
                if not self._tick.done():
                    self._tick.set_result(lag)
                self._tick = None
            if lag > self.threshold:
                log.warning("event loop lag above threshold", extra={"lag_s": round(lag, 3)})

    async def next_tick(self) -> float:
        """Wait for the next measurement and return it (for tests and benchmarks)."""
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._tick)

    def check(self) -> None:
        """healthz: fails on a lag above ``threshold`` or a monitor that stopped ticking."""
        if self.last_lag > self.threshold:
            raise RuntimeError(f"event loop lag {self.last_lag:.2f}s exceeds {self.threshold:.2f}s")
        if self._last_tick is not None:
            silent = asyncio.get_running_loop().time() - self._last_tick
            if silent > self.interval + self.threshold:
                raise RuntimeError(f"event loop lag monitor silent for {silent:.2f}s")
