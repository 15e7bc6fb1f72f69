import asyncio
from datetime import UTC, datetime

import pytest

from localcache.runtime.clock import SYSTEM_CLOCK, Clock, FakeClock


async def test_fake_sleep_completes_only_when_time_is_advanced() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.monotonic())

    t0 = clock.monotonic()
    tasks = [asyncio.create_task(sleeper(d)) for d in (30, 0.8, 10)]
    await clock.settle()
    assert woke == [] and clock.sleepers == 3
    await clock.advance(5)
    assert woke == [t0 + 0.8]
    await clock.advance(25)
    assert woke == [t0 + 0.8, t0 + 10, t0 + 30]
    await asyncio.gather(*tasks)


async def test_chained_sleeps_within_one_advance_fire_in_order() -> None:
    clock = FakeClock()
    times: list[float] = []

    async def loop() -> None:
        for _ in range(5):
            await clock.sleep(2)
            times.append(clock.monotonic())

    task = asyncio.create_task(loop())
    await clock.advance(7)
    base = clock.monotonic() - 7
    assert times == [base + 2, base + 4, base + 6]
    await clock.advance(10)
    assert len(times) == 5
    await task


async def test_wall_clock_moves_with_virtual_time() -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    clock = FakeClock(start)
    await clock.advance(3600)
    assert clock.now() == datetime(2026, 5, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        await clock.advance(-1)


async def test_cancelled_sleeper_is_not_counted() -> None:
    clock = FakeClock()
    t = asyncio.create_task(clock.sleep(5))
    await clock.settle()
    assert clock.sleepers == 1
    t.cancel()
    await clock.settle()
    assert clock.sleepers == 0
    await clock.advance(10)  # must not fail on the cancelled future


def test_both_clocks_satisfy_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)
    assert SYSTEM_CLOCK.now().tzinfo is not None
