"""Hypothesis stateful test: the workqueue against a simple reference model of client-go's semantics."""

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

    @rule()
    def shutdown(self) -> None:
        self.q.shutdown()
        self.m.shutting_down = True

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
