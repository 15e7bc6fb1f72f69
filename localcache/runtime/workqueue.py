"""The controller workqueue: client-go's dedup semantics, a delaying heap, rate limiting, priorities.

Semantics reproduced exactly from client-go ``util/workqueue`` (one event loop, so no locks):

* ``add(x)``: dropped while shutting down; a no-op if ``x`` is already waiting (``dirty``); if ``x``
  is being processed it is only marked dirty and re-queued when :meth:`done` is called. So one
  item is never handed to two workers at once, and an item added mid-work runs exactly once more.
* ``get()`` marks the item processing; every ``get`` must be paired with ``done(x)``
  (``async with queue.item() as x`` does it for you).
* ``shutdown()``: further adds are dropped, ``get`` hands out what is still queued, then raises
  :class:`ShutDown`. ``await shutdown_with_drain()`` also waits until in-flight items are done.
* ``add_after(x, d)``: ``d <= 0`` adds now; otherwise ``x`` waits in a heap. Re-adding an item that
  is already waiting keeps the **earlier** ready time. A 10 s heartbeat is the safety net.
* ``add_rate_limited(x)`` = ``add_after(x, limiter.when(x))``; ``forget(x)`` resets its backoff.
* Priorities (controller-runtime's priority queue): higher first, FIFO within a priority; a
  duplicate add keeps the max priority, and an item moved up goes to the back of the higher FIFO.
  Controllers give initial-list and resync events :data:`LOW_PRIORITY` (-100).

Metrics (labels ``name``/``controller``) are those of controller-runtime; ``update_unfinished_work()``
refreshes the two "stuck work" gauges (the controller calls it every 500 ms).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from localcache.runtime import metrics
from localcache.runtime.clock import SYSTEM_CLOCK, Clock, wait_event
from localcache.runtime.ratelimit import RateLimiter, default_controller_rate_limiter

__all__ = ["LOW_PRIORITY", "MAX_WAIT", "QueueEmpty", "ShutDown", "WorkQueue"]

T = TypeVar("T", bound=Hashable)
LOW_PRIORITY = -100
#: the delaying queue's safety-net heartbeat (client-go ``maxWait``)
MAX_WAIT = 10.0


class ShutDown(Exception):
    """The queue is shut down and empty: a worker should exit."""


class QueueEmpty(Exception):
    """``get_nowait`` found nothing ready."""


class _NoMetric:
    def inc(self, *_: Any) -> None: ...

    def set(self, *_: Any) -> None: ...

    def observe(self, *_: Any) -> None: ...


class WorkQueue(Generic[T]):
    """A dedup, delaying, rate-limited priority queue of hashable items (see the module docstring)."""

    def __init__(
        self,
        name: str = "",
        *,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = SYSTEM_CLOCK,
        controller: str | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.rate_limiter: RateLimiter = rate_limiter or default_controller_rate_limiter(clock)
        self._queues: dict[int, deque[tuple[T, int]]] = {}
        self._prios: list[int] = []  # ascending; the highest is popped first
        self._queued: dict[T, tuple[int, int]] = {}  # item -> (priority, token) of its live entry
        self._dirty: dict[T, int] = {}  # item -> priority it should be queued with
        self._processing: dict[T, float] = {}  # item -> monotonic start
        self._added_at: dict[T, float] = {}
        self._last_priority: dict[T, int] = {}
        self._tokens = itertools.count()
        self._not_empty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        # delaying part
        self._waiting: dict[T, tuple[float, int, int]] = {}  # item -> (ready_at, priority, seq)
        self._heap: list[tuple[float, int, T]] = []
        self._delay_wake = asyncio.Event()
        self._delay_task: asyncio.Task[None] | None = None
        # metrics
        if name:
            ctl = controller or name
            self._m_adds: Any = metrics.workqueue_adds_total.labels(name, ctl)
            self._m_retries: Any = metrics.workqueue_retries_total.labels(name, ctl)
            self._m_qdur: Any = metrics.workqueue_queue_duration_seconds.labels(name, ctl)
            self._m_wdur: Any = metrics.workqueue_work_duration_seconds.labels(name, ctl)
            self._m_unfinished: Any = metrics.workqueue_unfinished_work_seconds.labels(name, ctl)
            self._m_longest: Any = metrics.workqueue_longest_running_processor_seconds.labels(name, ctl)
            self._m_depth_for = lambda p: metrics.workqueue_depth.labels(name, ctl, str(p))
        else:
            self._m_adds = self._m_retries = self._m_qdur = self._m_wdur = _NoMetric()
            self._m_unfinished = self._m_longest = _NoMetric()
            self._m_depth_for = lambda p: _NoMetric()
        self._depth_gauges: dict[int, Any] = {}

    # --- introspection -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Items ready to be handed out (client-go ``Len``)."""
        return len(self._queued)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def is_processing(self, item: T) -> bool:
        return item in self._processing

    def is_dirty(self, item: T) -> bool:
        return item in self._dirty

    @property
    def processing(self) -> int:
        return len(self._processing)

    @property
    def waiting(self) -> int:
        """Items in the delay heap."""
        return len(self._waiting)

    def priority_of(self, item: T) -> int:
        """The priority ``item`` was last handed out with (0 if never)."""
        return self._last_priority.get(item, 0)

    # --- basic queue ---------------------------------------------------------------------------------
    def _depth(self, prio: int, delta: int) -> None:
        g = self._depth_gauges.get(prio)
        if g is None:
            g = self._depth_gauges[prio] = self._m_depth_for(prio)
        g.inc(delta)

    def _push(self, item: T, prio: int) -> None:
        q = self._queues.get(prio)
        if q is None:
            q = self._queues[prio] = deque()
            bisect.insort(self._prios, prio)
        token = next(self._tokens)
        q.append((item, token))
        self._queued[item] = (prio, token)
        self._depth(prio, 1)
        self._not_empty.set()

    def add(self, item: T, priority: int = 0) -> None:
        if self._shutting_down:
            return
        self._m_adds.inc()
        if item in self._dirty:
            if priority > self._dirty[item]:
                self._dirty[item] = priority
                queued = self._queued.get(item)
                if queued is not None:  # move it up: the old entry becomes stale
                    self._depth(queued[0], -1)
                    self._push(item, priority)
            return
        self._dirty[item] = priority
        self._added_at.setdefault(item, self.clock.monotonic())
        if item in self._processing:
            return
        self._push(item, priority)

    def _pop(self) -> T:
        while self._prios:
            prio = self._prios[-1]
            q = self._queues[prio]
            while q:
                item, token = q.popleft()
                live = self._queued.get(item)
                if live is None or live[1] != token:
                    continue  # stale entry of an item that moved up
                del self._queued[item]
                self._depth(prio, -1)
                if not q:
                    del self._queues[prio]
                    self._prios.pop()
                return item
            del self._queues[prio]
            self._prios.pop()
        raise QueueEmpty

    def get_nowait(self) -> T:
        """The next ready item, marked processing; :class:`QueueEmpty` or :class:`ShutDown` otherwise."""
        if not self._queued:
            self._not_empty.clear()
            if self._shutting_down:
                raise ShutDown
            raise QueueEmpty
        item = self._pop()
        if not self._queued:
            self._not_empty.clear()
        now = self.clock.monotonic()
        self._processing[item] = now
        self._idle.clear()
        self._last_priority[item] = self._dirty.pop(item)
        added = self._added_at.pop(item, None)
        if added is not None:
            self._m_qdur.observe(now - added)
        return item

    async def get(self) -> T:
        """Wait for the next item; raises :class:`ShutDown` once shut down and empty."""
        while True:
            try:
                return self.get_nowait()
            except QueueEmpty:
                await self._not_empty.wait()

    def done(self, item: T) -> None:
        started = self._processing.pop(item, None)
        if started is None:
            return
        self._m_wdur.observe(self.clock.monotonic() - started)
        if item in self._dirty:
            self._push(item, self._dirty[item])
        elif not self._processing:
            self._idle.set()

    @asynccontextmanager
    async def item(self) -> AsyncIterator[T]:
        """``async with queue.item() as x:`` gets an item and always marks it done."""
        x = await self.get()
        try:
            yield x
        finally:
            self.done(x)

    def shutdown(self) -> None:
        self._shutting_down = True
        self._not_empty.set()  # wake every getter; they drain what is queued, then see ShutDown
        if self._delay_task is not None:
            self._delay_task.cancel()
            self._delay_task = None

    async def shutdown_with_drain(self) -> None:
        """Shut down and wait until every item handed out has been marked done."""
        self.shutdown()
        await self._idle.wait()

    # --- delaying ------------------------------------------------------------------------------------
    def add_after(self, item: T, delay: float, priority: int = 0) -> None:
        if self._shutting_down:
            return
        self._m_retries.inc()
        if delay <= 0:
            self.add(item, priority)
            return
        ready = self.clock.monotonic() + delay
        cur = self._waiting.get(item)
        if cur is not None:
            if cur[0] <= ready:  # the earlier ready time wins
                if priority > cur[1]:
                    self._waiting[item] = (cur[0], priority, cur[2])
                return
            priority = max(priority, cur[1])
        seq = next(self._tokens)
        self._waiting[item] = (ready, priority, seq)
        heapq.heappush(self._heap, (ready, seq, item))
        if self._heap[0][1] == seq:
            self._delay_wake.set()
        if self._delay_task is None or self._delay_task.done():
            self._delay_task = asyncio.get_running_loop().create_task(
                self._delay_loop(), name=f"workqueue-delay:{self.name}"
            )

    def _fire_ready(self) -> float | None:
        now = self.clock.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, item = heapq.heappop(heap)
            entry = self._waiting.get(item)
            if entry is None or entry[2] != seq:
                continue  # superseded by an earlier ready time
            del self._waiting[item]
            self.add(item, entry[1])
        return (heap[0][0] - now) if heap else None

    async def _delay_loop(self) -> None:
        while not self._shutting_down:
            self._delay_wake.clear()
            nxt = self._fire_ready()
            wait = MAX_WAIT if nxt is None else min(nxt, MAX_WAIT)
            await wait_event(self._delay_wake, wait, self.clock)

    # --- rate limiting -------------------------------------------------------------------------------
    def add_rate_limited(self, item: T, priority: int = 0) -> None:
        self.add_after(item, self.rate_limiter.when(item), priority)

    def forget(self, item: T) -> None:
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)

    # --- metrics -------------------------------------------------------------------------------------
    def update_unfinished_work(self) -> None:
        now = self.clock.monotonic()
        total = 0.0
        longest = 0.0
        for started in self._processing.values():
            d = now - started
            total += d
            longest = max(longest, d)
        self._m_unfinished.set(total)
        self._m_longest.set(longest)
