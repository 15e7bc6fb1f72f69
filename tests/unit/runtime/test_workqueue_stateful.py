"""Hypothesis stateful test: the workqueue (dedup, priorities, delays) against a simple reference model."""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from localcache.runtime.clock import FakeClock
from localcache.runtime.workqueue import QueueEmpty, ShutDown, WorkQueue

ITEMS = st.sampled_from(["a", "b", "c", "d"])
PRIOS = st.sampled_from([-100, 0, 10])


class Model:
    """Reference: a list of (item, prio) in the queue, dirty map, processing set."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, int]] = []  # insertion order
        self.dirty: dict[str, int] = {}
        self.processing: set[str] = set()
        self.shutting_down = False
        self.now = 0.0
        self.waiting: dict[str, tuple[float, int, int]] = {}  # item -> (ready, prio, seq)
        self.seq = 0

    def add_after(self, x: str, d: float, p: int) -> None:
        if self.shutting_down:
            return
        if d <= 0:
            self.add(x, p)
            return
        ready = self.now + d
        cur = self.waiting.get(x)
        if cur is not None and cur[0] <= ready:
            self.waiting[x] = (cur[0], max(cur[1], p), cur[2])
            return
        self.seq += 1
        self.waiting[x] = (ready, max(p, cur[1]) if cur else p, self.seq)

    def advance(self, dt: float) -> None:
        self.now += dt
        due = sorted((r, seq, x, p) for x, (r, p, seq) in self.waiting.items() if r <= self.now)
        for _, _, x, p in due:
            del self.waiting[x]
            self.add(x, p)

    def add(self, x: str, p: int) -> None:
        if self.shutting_down:
            return
        if x in self.dirty:
            if p > self.dirty[x]:
                self.dirty[x] = p
                for i, (y, _) in enumerate(self.queue):
                    if y == x:
                        del self.queue[i]
                        self.queue.append((x, p))
                        break
            return
        self.dirty[x] = p
        if x not in self.processing:
            self.queue.append((x, p))

    def get(self) -> str | None:
        if not self.queue:
            return None
        best = max(p for _, p in self.queue)
        for i, (x, p) in enumerate(self.queue):
            if p == best:
                del self.queue[i]
                self.processing.add(x)
                del self.dirty[x]
                return x
        raise AssertionError

    def done(self, x: str) -> None:
        self.processing.discard(x)
        if x in self.dirty:
            self.queue.append((x, self.dirty[x]))


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.q: WorkQueue[str] = self.loop.run_until_complete(self._make())
        self.m = Model()

    async def _make(self) -> WorkQueue[str]:
        return WorkQueue(clock=self.clock)

    def teardown(self) -> None:
        self.q.shutdown()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    @invariant()
    def same_waiting(self) -> None:
        if not self.m.shutting_down:
            assert self.q.waiting == len(self.m.waiting)

    @rule(x=ITEMS, p=PRIOS)
    def add(self, x: str, p: int) -> None:
        self.q.add(x, p)
        self.m.add(x, p)

    @rule()
    def get(self) -> None:
        expected = self.m.get()
        try:
            got = self.q.get_nowait()
        except QueueEmpty:
            got = None
        except ShutDown:
            got = None
        assert got == expected

    @precondition(lambda self: bool(self.m.processing))
    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        x = data.draw(st.sampled_from(sorted(self.m.processing)))
        self.q.done(x)
        self.m.done(x)

    @rule(x=ITEMS, d=st.sampled_from([0, 1, 2, 5]), p=PRIOS)
    def add_after(self, x: str, d: float, p: int) -> None:
        async def go() -> None:
            self.q.add_after(x, d, p)

        self.loop.run_until_complete(go())
        self.m.add_after(x, d, p)

    @rule(dt=st.sampled_from([0.5, 1, 3]))
    def advance(self, dt: float) -> None:
        self.loop.run_until_complete(self.clock.advance(dt))
        self.m.advance(dt)

    @rule()
    def shutdown(self) -> None:
        self.q.shutdown()
        self.m.shutting_down = True
        self.m.waiting.clear()

    @invariant()
    def same_state(self) -> None:
        assert len(self.q) == len(self.m.queue)
        assert self.q.processing == len(self.m.processing)
        for x in "abcd":
            assert self.q.is_processing(x) == (x in self.m.processing)
            assert self.q.is_dirty(x) == (x in self.m.dirty)

    @invariant()
    def never_queued_while_processing(self) -> None:
        for x in self.m.processing:
            assert x not in [y for y, _ in self.m.queue]


TestWorkQueueStateful = QueueMachine.TestCase
TestWorkQueueStateful.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
