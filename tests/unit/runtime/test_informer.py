"""Shared informer behaviour against a fake source, in virtual time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from localcache.runtime.clock import FakeClock
from localcache.runtime.informer import FuncHandler, SharedInformer
from localcache.runtime.store import DeletedFinalStateUnknown

from .fakesource import FakeSource, cm


async def eventually(
    cond: Callable[[], bool], clock: FakeClock, step: float = 0.05, limit: float = 60
) -> None:
    spent = 0.0
    while not cond():
        if spent > limit:
            raise AssertionError("condition not reached in virtual time")
        await clock.advance(step)
        spent += step


class Rec:
    def __init__(self, informer: SharedInformer | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.informer = informer
        self.store_saw: list[bool] = []

    def on_add(self, obj: dict[str, Any], initial: bool) -> None:
        if self.informer is not None:  # the store is updated before handlers hear of it
            self.store_saw.append(self.informer.store.get_by_name("ns", obj["metadata"]["name"]) is not None)
        self.events.append(("add", obj["metadata"]["name"], initial))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"], old["data"], new["data"]))

    def on_delete(self, obj: Any) -> None:
        if isinstance(obj, DeletedFinalStateUnknown):
            self.events.append(("tombstone", obj.key, obj.obj["data"]))
        else:
            self.events.append(("delete", obj["metadata"]["name"]))


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeSource, SharedInformer, FakeClock, asyncio.Task[None] | None]]:
    clock = FakeClock()
    src = FakeSource()
    inf = SharedInformer(src, clock=clock, name="cms", rng=random.Random(5))
    holder: list[asyncio.Task[None]] = []
    yield src, inf, clock, holder  # type: ignore[misc]
    for t in holder:
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)


async def test_initial_list_then_events_in_order_with_store_first(rig: Any) -> None:
    src, inf, clock, tasks = rig
    src.add(cm("a", k="1"))
    rec = Rec(inf)
    reg = inf.add_event_handler(rec)
    assert not inf.has_synced() and not reg.has_synced()
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(reg.has_synced, clock)
    assert inf.has_synced()
    src.modify(cm("a", k="2"))
    src.add(cm("b", k="1"))
    src.delete("a")
    await eventually(lambda: len(rec.events) == 4, clock)
    assert rec.events == [
        ("add", "a", True),
        ("update", "a", {"k": "1"}, {"k": "2"}),
        ("add", "b", False),
        ("delete", "a"),
    ]
    assert rec.store_saw == [True, True]
    assert inf.last_sync_resource_version == str(src.rv)


async def test_relist_emits_only_changes_and_tombstones_for_missed_deletes(rig: Any) -> None:
    src, inf, clock, tasks = rig
    for n in ("a", "b", "c"):
        src.add(cm(n, v="1"))
    rec = Rec()
    inf.add_event_handler(rec)
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(lambda: len(rec.events) == 3, clock)
    src.delete("a", send=False)
    src.modify(cm("b", v="2"), send=False)
    src.add(cm("d", v="1"), send=False)
    src.reset_watch()  # re-watch from an old RV is 410 -> relist
    await eventually(lambda: len(rec.events) == 6, clock)
    assert sorted(rec.events[3:], key=str) == sorted(
        [("tombstone", "ns/a", {"v": "1"}), ("update", "b", {"v": "1"}, {"v": "2"}), ("add", "d", False)],
        key=str,
    )
    assert sorted(inf.store.keys()) == ["ns/b", "ns/c", "ns/d"]


async def test_slow_handler_does_not_block_watch_or_other_handlers(rig: Any) -> None:
    src, inf, clock, tasks = rig
    gate = asyncio.Event()
    slow_seen: list[str] = []

    async def slow_add(obj: dict[str, Any], initial: bool) -> None:
        await gate.wait()
        slow_seen.append(obj["metadata"]["name"])

    fast = Rec()
    slow_reg = inf.add_event_handler(FuncHandler(on_add=slow_add), name="slow")
    fast_reg = inf.add_event_handler(fast, name="fast")
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(fast_reg.has_synced, clock)
    for i in range(50):
        src.add(cm(f"o{i}"))
    await eventually(lambda: len(fast.events) == 50 and len(inf.store) == 50, clock)
    assert slow_seen == [] and slow_reg.pending >= 49
    assert slow_reg.has_synced(), "empty initial list: synced even though later events wait"
    gate.set()
    await eventually(lambda: len(slow_seen) == 50, clock)


async def test_per_handler_has_synced_waits_for_initial_list_processing(rig: Any) -> None:
    src, inf, clock, tasks = rig
    src.add(cm("a"))
    gate = asyncio.Event()

    async def blocked(obj: dict[str, Any], initial: bool) -> None:
        await gate.wait()

    reg = inf.add_event_handler(FuncHandler(on_add=blocked))
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(inf.has_synced, clock)
    await clock.advance(5)
    assert not reg.has_synced()
    gate.set()
    await eventually(reg.has_synced, clock)


async def test_late_handler_gets_synthetic_initial_adds(rig: Any) -> None:
    src, inf, clock, tasks = rig
    src.add(cm("a"))
    src.add(cm("b"))
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(inf.has_synced, clock)
    rec = Rec()
    reg = inf.add_event_handler(rec)
    await eventually(reg.has_synced, clock)
    assert sorted(rec.events) == [("add", "a", True), ("add", "b", True)]


async def test_resync_delivers_same_rv_updates_every_period(rig: Any) -> None:
    src, inf, clock, tasks = rig
    src.add(cm("a", v="1"))
    rec = Rec()
    inf.add_event_handler(rec, resync_period=30)
    other = Rec()
    inf.add_event_handler(other)  # no resync for this one
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(lambda: len(rec.events) == 1, clock)
    await clock.advance(31)
    await eventually(lambda: len(rec.events) == 2, clock, limit=1)
    assert rec.events[1] == ("update", "a", {"v": "1"}, {"v": "1"})
    await clock.advance(30)
    assert len(rec.events) == 3
    assert len(other.events) == 1


async def test_resync_period_minimum_is_one_second(rig: Any) -> None:
    _, inf, _, _ = rig
    reg = inf.add_event_handler(Rec(), resync_period=0.01)
    assert reg.resync_period == 1.0


async def test_transform_strips_managed_fields_by_default(rig: Any) -> None:
    src, inf, clock, tasks = rig
    obj = cm("a")
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:data": {}}}]
    src.add(obj)
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(inf.has_synced, clock)
    assert "managedFields" not in inf.store.get("ns/a")["metadata"]


async def test_failing_handler_skips_notification_and_continues(rig: Any) -> None:
    src, inf, clock, tasks = rig
    seen: list[str] = []

    def on_add(obj: dict[str, Any], initial: bool) -> None:
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("handler bug")
        seen.append(obj["metadata"]["name"])

    inf.add_event_handler(FuncHandler(on_add=on_add))
    tasks.append(asyncio.create_task(inf.start()))
    await eventually(inf.has_synced, clock)
    src.add(cm("bad"))
    src.add(cm("good"))
    await eventually(lambda: seen == ["good"], clock)
