"""The reflector's list/watch decisions against a fake source, in virtual time (client-go's error matrix)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from localcache.runtime import errors
from localcache.runtime.clock import FakeClock
from localcache.runtime.reflector import Backoff, Reflector

from .fakesource import FakeSource, cm


class Sink:
    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.log: list[tuple[str, str]] = []
        self.rv = ""

    def _k(self, o: dict[str, Any]) -> str:
        return f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"

    def replace(self, items: list[dict[str, Any]], rv: str) -> None:
        self.objects = {self._k(o): o for o in items}
        self.log.append(("replace", rv))
        self.rv = rv

    def add(self, o: dict[str, Any]) -> None:
        self.objects[self._k(o)] = o
        self.log.append(("add", self._k(o)))

    def update(self, o: dict[str, Any]) -> None:
        self.objects[self._k(o)] = o
        self.log.append(("update", self._k(o)))

    def delete(self, o: dict[str, Any]) -> None:
        self.objects.pop(self._k(o), None)
        self.log.append(("delete", self._k(o)))

    def bookmark(self, rv: str) -> None:
        self.log.append(("bookmark", rv))


async def eventually(
    cond: Callable[[], bool], clock: FakeClock, step: float = 0.05, limit: float = 300
) -> None:
    spent = 0.0
    while not cond():
        if spent > limit:
            raise AssertionError("condition not reached in virtual time")
        await clock.advance(step)
        spent += step


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeSource, Sink, Reflector, FakeClock]]:
    clock = FakeClock()
    src = FakeSource()
    sink = Sink()
    refl = Reflector(src, sink, name="test", clock=clock, rng=random.Random(7))
    yield src, sink, refl, clock


def lists(src: FakeSource) -> list[dict[str, Any]]:
    return [kw for op, kw in src.calls if op == "list"]


def watches(src: FakeSource) -> list[dict[str, Any]]:
    return [kw for op, kw in src.calls if op == "watch"]


async def start(refl: Reflector) -> asyncio.Task[None]:
    return asyncio.create_task(refl.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_first_list_at_rv0_paged_then_watch_with_bookmarks_and_random_timeout(rig: Any) -> None:
    src, sink, refl, clock = rig
    src.add(cm("a"))
    src.add(cm("b"))
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    assert lists(src) == [{"resource_version": "0", "limit": 500, "continue": None}]
    w = watches(src)[0]
    assert w["resource_version"] == "102" and w["allow_watch_bookmarks"] is True
    assert 300 <= w["timeout_seconds"] < 600
    assert sorted(sink.objects) == ["ns/a", "ns/b"]
    await stop(t)


async def test_events_and_bookmarks_advance_rv_and_normal_close_rewatches_without_relist(rig: Any) -> None:
    src, sink, refl, clock = rig
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    src.add(cm("a"))
    src.modify(cm("a", k="v"))
    src.bookmark()
    await eventually(lambda: refl.last_sync_resource_version == "103", clock)
    assert sink.log[1:] == [("add", "ns/a"), ("update", "ns/a"), ("bookmark", "103")]
    await clock.advance(2)  # the watch has lived > 1 s
    src.close_watches()
    await eventually(lambda: len(watches(src)) == 2 and src.open_watches == 1, clock)
    assert len(lists(src)) == 1
    assert watches(src)[1]["resource_version"] == "103"
    src.delete("a")
    await eventually(lambda: "ns/a" not in sink.objects, clock)
    await stop(t)


async def test_410_in_stream_relists_at_last_rv_unpaged_never_rewatches_expired_rv(rig: Any) -> None:
    src, _sink, refl, clock = rig
    src.add(cm("a"))
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    src.send_error(410, "Expired")
    await eventually(lambda: len(lists(src)) == 2, clock, limit=5)
    # relist at the last synced RV, unpaged (a specific RV is served from the watch cache)
    assert lists(src)[1] == {"resource_version": "101", "limit": None, "continue": None}
    await eventually(lambda: src.open_watches == 1, clock)
    # no watch was ever opened twice from the expired RV without a list in between
    ops = [op for op, _ in src.calls]
    assert ops == ["list", "watch", "list", "watch"]
    await stop(t)


async def test_410_on_relist_falls_back_to_quorum_list_at_empty_rv(rig: Any) -> None:
    src, _sink, refl, clock = rig
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    src.list_errors = [errors.Gone("too old", reason="Expired")]
    src.send_error(410, "Gone")
    await eventually(lambda: len(lists(src)) == 3, clock, limit=5)
    assert [c["resource_version"] for c in lists(src)] == ["0", "100", ""]
    assert lists(src)[2]["limit"] == 500
    await eventually(lambda: src.open_watches == 1, clock)
    assert refl.relist_resource_version() == str(src.rv)
    await stop(t)


async def test_too_large_resource_version_is_treated_like_410(rig: Any) -> None:
    src, _sink, refl, clock = rig
    src.list_errors = [
        errors.Timeout(
            "Too large resource version",
            reason="Timeout",
            details={"causes": [{"reason": "ResourceVersionTooLarge"}]},
        )
    ]
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    assert [c["resource_version"] for c in lists(src)] == ["0", ""]
    await stop(t)


@pytest.mark.parametrize(
    "err",
    [errors.TooManyRequests("slow down", reason="TooManyRequests"), errors.ConnectionFailed("refused")],
)
async def test_429_and_connection_refused_back_off_and_rewatch_without_relist(
    rig: Any, err: Exception
) -> None:
    src, _sink, refl, clock = rig
    src.watch_errors = [err, err]
    t = await start(refl)
    await eventually(lambda: len(watches(src)) == 1, clock)
    t0 = clock.monotonic()
    await clock.settle()
    assert src.open_watches == 0
    await eventually(lambda: src.open_watches == 1, clock, step=0.1)
    waited = clock.monotonic() - t0
    # two backoffs: [0.8, 1.6) then [1.6, 3.2)
    assert 2.4 <= waited < 4.9
    assert len(lists(src)) == 1
    assert [w["resource_version"] for w in watches(src)] == ["100"] * 3
    await stop(t)


async def test_other_watch_errors_back_off_and_relist(rig: Any) -> None:
    src, _sink, refl, clock = rig
    src.watch_errors = [errors.ServerError("boom", reason="InternalError")]
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    assert len(lists(src)) == 2
    await stop(t)


async def test_very_short_watch_is_an_error(rig: Any) -> None:
    src, _sink, refl, clock = rig
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    src.close_watches()  # closed at once, no events
    await eventually(lambda: len(lists(src)) == 2, clock, limit=5)
    await stop(t)


async def test_inactivity_timeout_and_dropped_connection_rewatch_from_last_rv(rig: Any) -> None:
    src, _sink, refl, clock = rig
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    src.stream_errors = [errors.Timeout("no data for 90s", status=0)]
    src.add(cm("a"))
    await eventually(lambda: len(watches(src)) == 2 and src.open_watches == 1, clock)
    src.stream_errors = [errors.ConnectionFailed("reset by peer")]
    src.add(cm("b"))
    await eventually(lambda: len(watches(src)) == 3 and src.open_watches == 1, clock)
    assert [w["resource_version"] for w in watches(src)] == ["100", "101", "102"]
    assert len(lists(src)) == 1
    await stop(t)


async def test_missed_delete_across_relist_is_removed_from_sink(rig: Any) -> None:
    src, sink, refl, clock = rig
    src.add(cm("a"))
    src.add(cm("b"))
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    src.delete("a", send=False)
    src.add(cm("c"), send=False)
    src.reset_watch()
    await eventually(lambda: sorted(sink.objects) == ["ns/b", "ns/c"], clock)
    await stop(t)


async def test_pagination_and_expired_continue_token(rig: Any) -> None:
    src, sink, refl, clock = rig
    for i in range(1200):
        src.add(cm(f"o{i:04d}"), send=False)
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock)
    assert [(c["limit"], c["continue"] is not None) for c in lists(src)] == [
        (500, False),
        (500, True),
        (500, True),
    ]
    assert len(sink.objects) == 1200
    await stop(t)

    src2, sink2, clock2 = FakeSource(), Sink(), FakeClock()
    for i in range(600):
        src2.add(cm(f"o{i:04d}"), send=False)
    src2.list_errors = []
    refl2 = Reflector(src2, sink2, clock=clock2, rng=random.Random(1))
    orig = src2.list

    async def flaky(**kw: Any) -> dict[str, Any]:
        if kw["continue_"]:
            src2.calls.append(
                (
                    "list",
                    {
                        "resource_version": kw["resource_version"],
                        "limit": kw["limit"],
                        "continue": kw["continue_"],
                    },
                )
            )
            raise errors.Gone("continue expired", reason="Expired")
        return await orig(**kw)

    src2.list = flaky  # type: ignore[method-assign]
    t2 = await start(refl2)
    await eventually(lambda: src2.open_watches == 1, clock2)
    assert [(c["resource_version"], c["limit"]) for c in lists(src2)] == [
        ("0", 500),
        (None, 500),
        ("0", None),
    ]
    assert len(sink2.objects) == 600
    await stop(t2)


async def test_watch_timeouts_are_randomised_in_5_to_10_minutes(rig: Any) -> None:
    _src, _sink, refl, _clock = rig
    values = {refl._watch_timeout() for _ in range(200)}
    assert min(values) >= 300 and max(values) < 600 and len(values) > 50


def test_backoff_doubles_with_jitter_caps_and_resets_after_two_minutes() -> None:
    clock = FakeClock()
    b = Backoff(clock, rng=random.Random(3))
    delays = [b.next() for _ in range(10)]
    bases = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30, 30, 30]
    for d, base in zip(delays, bases, strict=True):
        assert base <= d < 2 * base
    asyncio.run(clock.advance(121))
    assert 0.8 <= b.next() < 1.6  # reset after 2 min without a backoff
    b2 = Backoff(clock, rng=random.Random(3))
    b2.next()
    asyncio.run(clock.advance(119))
    assert 1.6 <= b2.next() < 3.2  # not yet


async def test_watch_list_streams_initial_state_then_keeps_watching() -> None:
    clock = FakeClock()
    src = FakeSource()
    src.add(cm("a"))
    src.add(cm("b"))
    sink = Sink()
    refl = Reflector(src, sink, clock=clock, use_watch_list=True, rng=random.Random(2))
    orig_watch = src._watch

    def watch_list(kw: dict[str, Any]) -> Any:
        if kw.get("send_initial_events"):
            # synthetic ADDED for the current state, then the end bookmark
            for q_obj in sorted(src.objects):
                src.history.append((1, "ADDED", src.objects[q_obj]))
            src.history.append(
                (
                    1,
                    "BOOKMARK",
                    {
                        "metadata": {
                            "resourceVersion": str(src.rv),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        }
                    },
                )
            )
        cm_ = orig_watch(kw)
        return cm_

    src._watch = watch_list  # type: ignore[method-assign]
    t = asyncio.create_task(refl.run())
    await eventually(lambda: sink.log and sink.log[0][0] == "replace", clock)
    assert sink.log[0] == ("replace", "102") and sorted(sink.objects) == ["ns/a", "ns/b"]
    assert lists(src) == []
    src.history.clear()
    src.add(cm("c"))
    await eventually(lambda: "ns/c" in sink.objects, clock)
    first = watches(src)[0]
    assert first["send_initial_events"] is True and first["resource_version_match"] == "NotOlderThan"
    await stop(t)


async def test_429_retry_after_is_honoured_when_longer_than_backoff(rig: Any) -> None:
    src, _sink, refl, clock = rig
    src.watch_errors = [errors.TooManyRequests("slow down", retry_after=10.0, reason="TooManyRequests")]
    t = await start(refl)
    await eventually(lambda: len(watches(src)) == 1, clock)
    t0 = clock.monotonic()
    await eventually(lambda: src.open_watches == 1, clock, step=0.5)
    assert clock.monotonic() - t0 >= 10
    assert len(lists(src)) == 1
    await stop(t)


async def test_list_errors_back_off_and_retry(rig: Any) -> None:
    src, sink, refl, clock = rig
    src.add(cm("a"))
    src.list_errors = [errors.ServerError("etcd down", reason="InternalError")] * 3
    t = await start(refl)
    await eventually(lambda: src.open_watches == 1, clock, step=0.2)
    assert len(lists(src)) == 4 and "ns/a" in sink.objects
    await stop(t)
