"""Workqueue semantics (client-go queue_test / delaying_queue_test / rate limiter tests), virtual time."""

from __future__ import annotations

import asyncio

import pytest

from localcache.runtime.clock import FakeClock
from localcache.runtime.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    ItemFastSlowRateLimiter,
    LatencyPacer,
    MaxOfRateLimiter,
    WithMaxWaitRateLimiter,
    default_controller_rate_limiter,
)
from localcache.runtime.workqueue import LOW_PRIORITY, QueueEmpty, ShutDown, WorkQueue


def drain(q: WorkQueue[str]) -> list[str]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except QueueEmpty:
            return out


async def test_basic_fifo_and_dedup() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    for x in ("a", "b", "a", "c", "b"):
        q.add(x)
    assert len(q) == 3
    assert drain(q) == ["a", "b", "c"]


async def test_add_while_processing_requeues_exactly_once_on_done() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0, "never handed out while processing"
    with pytest.raises(QueueEmpty):
        q.get_nowait()
    q.done("a")
    assert q.get_nowait() == "a"
    q.done("a")
    assert len(q) == 0 and q.processing == 0


async def test_get_waits_for_add() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.add("x")
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_shutdown_hands_out_remaining_then_raises_and_drops_adds() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    q.add("a")
    q.add("b")
    waiter_q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    blocked = asyncio.create_task(waiter_q.get())
    await asyncio.sleep(0)
    q.shutdown()
    waiter_q.shutdown()
    q.add("c")
    assert await q.get() == "a"
    assert await q.get() == "b"
    with pytest.raises(ShutDown):
        await q.get()
    with pytest.raises(ShutDown):
        await blocked


async def test_shutdown_with_drain_waits_for_in_flight() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    q.add("a")
    item = q.get_nowait()
    drained = asyncio.create_task(q.shutdown_with_drain())
    await asyncio.sleep(0.01)
    assert not drained.done()
    q.done(item)
    await asyncio.wait_for(drained, 1)


async def test_add_after_earliest_wins_and_fires_in_virtual_time() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 5)  # earlier: wins
    q.add_after("a", 20)  # later: ignored
    q.add_after("b", 0)  # now
    assert drain(q) == ["b"]
    q.done("b")
    await clock.advance(4.9)
    assert len(q) == 0
    await clock.advance(0.2)
    assert drain(q) == ["a"]
    q.done("a")
    await clock.advance(30)
    assert len(q) == 0, "superseded entries never fire"
    q.shutdown()


async def test_two_items_fire_in_ready_order() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("late", 3)
    q.add_after("early", 1)
    await clock.advance(5)
    assert drain(q) == ["early", "late"]
    q.shutdown()


async def test_priorities_higher_first_fifo_within_and_max_wins() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())
    q.add("low1", LOW_PRIORITY)
    q.add("n1")
    q.add("low2", LOW_PRIORITY)
    q.add("n2")
    q.add("low1", 0)  # moves up, to the back of priority 0
    q.add("n1", LOW_PRIORITY)  # lower: keeps 0 and its place
    assert drain(q) == ["n1", "n2", "low1", "low2"]
    assert q.priority_of("low2") == LOW_PRIORITY


async def test_rate_limited_add_forget_and_num_requeues() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock, rate_limiter=ItemExponentialFailureRateLimiter(1, 100))
    q.add_rate_limited("a")  # 1 s
    await clock.advance(1)
    assert drain(q) == ["a"]
    q.done("a")
    q.add_rate_limited("a")  # 2 s
    await clock.advance(1.5)
    assert len(q) == 0
    await clock.advance(0.5)
    assert drain(q) == ["a"]
    assert q.num_requeues("a") == 2
    q.forget("a")
    assert q.num_requeues("a") == 0
    q.shutdown()


def test_exponential_limiter_series_and_cap() -> None:
    lim = ItemExponentialFailureRateLimiter(0.005, 1000)
    series = [lim.when("x") for _ in range(21)]
    assert series[:4] == [0.005, 0.01, 0.02, 0.04]
    assert series[17] == pytest.approx(0.005 * 2**17) and series[17] < 1000
    assert series[18] == 1000 and series[20] == 1000  # 5 ms * 2^18 > 1000 s
    assert lim.num_requeues("x") == 21 and lim.when("y") == 0.005
    for _ in range(2000):
        lim.when("z")
    assert lim.when("z") == 1000


def test_bucket_limiter_burst_then_qps() -> None:
    clock = FakeClock()
    b = BucketRateLimiter(10, 100, clock)
    assert [b.when(i) for i in range(100)] == [0.0] * 100
    assert b.when("x") == pytest.approx(0.1)
    assert b.when("y") == pytest.approx(0.2)
    asyncio.run(clock.advance(10))  # refills (capped at burst)
    assert b.when("z") == 0.0


def test_default_controller_limiter_is_max_of_both() -> None:
    clock = FakeClock()
    lim = default_controller_rate_limiter(clock)
    assert lim.when("a") == 0.005
    for i in range(120):
        lim.when(f"k{i}")
    # bucket exhausted: the global wait dominates the per-item 5 ms
    assert lim.when("fresh") > 1.0
    lim.forget("a")
    assert lim.num_requeues("a") == 0


async def test_latency_pacer_spaces_writes_by_the_last_answer_time() -> None:
    clock = FakeClock()
    pacer = LatencyPacer(min_interval=0.5, max_interval=4, factor=2, clock=clock)
    assert pacer.delay() == 0.0  # the first write goes at once
    started = clock.monotonic()
    await clock.advance(0.1)  # a quick answer: the floor applies
    pacer.wrote(started)
    assert pacer.delay() == pytest.approx(0.5)
    await clock.advance(0.5)
    assert pacer.delay() == 0.0
    started = clock.monotonic()
    await clock.advance(1.5)  # a loaded server: twice its answer time
    pacer.wrote(started)
    assert pacer.delay() == pytest.approx(3.0)
    started = clock.monotonic()
    await clock.advance(30)  # never longer than the ceiling
    pacer.wrote(started)
    assert pacer.delay() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        LatencyPacer(min_interval=2, max_interval=1)


def test_fast_slow_and_max_wait() -> None:
    fs = ItemFastSlowRateLimiter(0.1, 5, 2)
    assert [fs.when("a") for _ in range(4)] == [0.1, 0.1, 5, 5]
    capped = WithMaxWaitRateLimiter(ItemExponentialFailureRateLimiter(1, 1e9), 3)
    assert [capped.when("a") for _ in range(4)] == [1, 2, 3, 3]
    m = MaxOfRateLimiter(fs, capped)
    m.forget("a")
    assert fs.num_requeues("a") == 0 and capped.num_requeues("a") == 0
