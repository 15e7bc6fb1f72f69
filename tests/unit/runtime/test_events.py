"""EventRecorder: Event shape, deduplication by patch, similar-message aggregation, spam filter,
bounded cache, non-blocking queue and tolerance of API errors."""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from localcache.runtime import errors
from localcache.runtime.clock import FakeClock
from localcache.runtime.events import COMBINED_PREFIX, WRITE_CONCURRENCY, EventRecorder
from localcache.runtime.resources import CONFIGMAPS, EVENTS, Resource

CM = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "cfg", "namespace": "ns1", "uid": "u-1", "resourceVersion": "7"},
}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "u-n"}}


class FakeEvents:
    """Events by (namespace, name); merge patches applied; errors injectable per verb."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[Exception]] = defaultdict(list)
        self.gate: asyncio.Event | None = None

    async def _enter(self, verb: str, resource: Resource) -> None:
        assert resource == EVENTS
        if self.gate is not None:
            await self.gate.wait()
        if self.fail[verb]:
            self.calls.append((verb, "failed"))
            raise self.fail[verb].pop(0)

    async def create(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        await self._enter("create", resource)
        assert namespace == obj["metadata"]["namespace"]
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            raise errors.AlreadyExists("exists")
        self.calls.append(("create", key[1]))
        self.objects[key] = copy.deepcopy(obj)
        return obj

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        await self._enter("patch", resource)
        assert patch_type == "merge" and namespace is not None
        if (namespace, name) not in self.objects:
            raise errors.NotFound("event gone")
        self.calls.append(("patch", name))
        self.objects[(namespace, name)].update(patch)
        return self.objects[(namespace, name)]

    def only(self) -> dict[str, Any]:
        assert len(self.objects) == 1, self.objects
        return next(iter(self.objects.values()))


@pytest.fixture
def sink() -> FakeEvents:
    return FakeEvents()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def recorder(sink: FakeEvents, clock: FakeClock) -> AsyncIterator[EventRecorder]:
    rec = EventRecorder(sink, "my-controller", host="node-a", clock=clock)
    yield rec
    await rec.close(grace=1)


async def test_first_event_creates_a_full_core_v1_event(recorder: EventRecorder, sink: FakeEvents) -> None:
    recorder.event(CM, "Normal", "Synced", "config synced")
    await recorder.flush()
    ev = sink.only()
    assert ev["metadata"]["namespace"] == "ns1" and ev["metadata"]["name"].startswith("cfg.")
    assert ev["involvedObject"] == {
        "kind": "ConfigMap",
        "name": "cfg",
        "namespace": "ns1",
        "uid": "u-1",
        "resourceVersion": "7",
        "apiVersion": "v1",
    }
    assert (ev["type"], ev["reason"], ev["message"], ev["count"]) == ("Normal", "Synced", "config synced", 1)
    assert ev["source"] == {"component": "my-controller", "host": "node-a"}
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-01-01T00:00:00Z"


async def test_cluster_scoped_object_events_go_to_default(recorder: EventRecorder, sink: FakeEvents) -> None:
    recorder.warning(NODE, "DiskFull", "no space")
    await recorder.flush()
    assert sink.only()["metadata"]["namespace"] == "default"


async def test_repeated_event_patches_count_and_last_timestamp(
    recorder: EventRecorder, sink: FakeEvents, clock: FakeClock
) -> None:
    recorder.event(CM, "Warning", "Failed", "boom")
    await recorder.flush()
    await clock.advance(65)
    recorder.event(CM, "Warning", "Failed", "boom")
    recorder.event(CM, "Warning", "Failed", "boom")
    await recorder.flush()
    ev = sink.only()
    assert ev["count"] == 3
    assert ev["firstTimestamp"] == "2026-01-01T00:00:00Z" and ev["lastTimestamp"] == "2026-01-01T00:01:05Z"
    assert [verb for verb, _ in sink.calls] == ["create", "patch", "patch"]


async def test_a_different_message_is_a_different_event(recorder: EventRecorder, sink: FakeEvents) -> None:
    recorder.event(CM, "Warning", "Failed", "boom")
    recorder.event(CM, "Warning", "Failed", "bang")
    recorder.event(CM, "Normal", "Failed", "boom")
    await recorder.flush()
    assert len(sink.objects) == 3
    assert len({ev["metadata"]["name"] for ev in sink.objects.values()}) == 3


async def test_similar_messages_are_combined_after_ten(recorder: EventRecorder, sink: FakeEvents) -> None:
    for i in range(15):
        recorder.event(CM, "Warning", "Retrying", f"attempt {i}")
    await recorder.flush()
    assert len(sink.objects) == 10, "nine distinct events, then one combined event"
    combined = [ev for ev in sink.objects.values() if ev["message"].startswith(COMBINED_PREFIX)]
    assert len(combined) == 1
    assert combined[0]["message"] == COMBINED_PREFIX + "attempt 14" and combined[0]["count"] == 6


async def test_spam_filter_limits_one_object(
    recorder: EventRecorder, sink: FakeEvents, clock: FakeClock
) -> None:
    for i in range(40):
        recorder.event(CM, "Normal", f"Reason{i}", "m")  # distinct reasons: no dedup, no aggregation
    await recorder.flush()
    assert len(sink.objects) == 25 and recorder.dropped == 15
    await clock.advance(300)
    recorder.event(CM, "Normal", "Later", "m")
    recorder.event(CM, "Normal", "Later2", "m")
    await recorder.flush()
    assert len(sink.objects) == 26, "one token refills per 5 minutes"
    recorder.event(NODE, "Normal", "Other", "m")  # another object has its own bucket
    await recorder.flush()
    assert len(sink.objects) == 27


async def test_event_never_blocks_and_a_full_queue_drops(sink: FakeEvents, clock: FakeClock) -> None:
    rec = EventRecorder(sink, "c", host="", clock=clock, queue_size=3)
    sink.gate = asyncio.Event()  # the API hangs
    try:
        for i in range(10):
            rec.event(CM, "Normal", f"R{i}", "m")  # returns at once although nothing is written
        await asyncio.sleep(0)
        assert sink.objects == {}
        assert rec.dropped >= 6
        sink.gate.set()
        await rec.flush()
        assert 3 <= len(sink.objects) <= 4
    finally:
        sink.gate.set()
        await rec.close(grace=1)


async def test_api_errors_are_logged_not_raised(
    recorder: EventRecorder, sink: FakeEvents, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sink.fail["create"].append(errors.Forbidden("events is forbidden"))
    recorder.event(CM, "Normal", "A", "m")
    recorder.event(CM, "Normal", "B", "m")
    await recorder.flush()
    assert [ev["reason"] for ev in sink.objects.values()] == ["B"]
    assert "event not written" in caplog.text


async def test_transient_errors_are_retried(
    recorder: EventRecorder, sink: FakeEvents, clock: FakeClock
) -> None:
    sink.fail["create"].extend([errors.ServerError("etcd"), errors.Timeout("slow")])
    recorder.event(CM, "Normal", "A", "m")
    await clock.advance(1)
    await clock.advance(2)
    await recorder.flush()
    assert sink.only()["reason"] == "A"
    assert [verb for verb, _ in sink.calls] == ["create", "create", "create"]


async def test_patch_of_a_vanished_event_recreates_it(recorder: EventRecorder, sink: FakeEvents) -> None:
    recorder.event(CM, "Normal", "A", "m")
    await recorder.flush()
    sink.objects.clear()  # the API server's event TTL expired it
    recorder.event(CM, "Normal", "A", "m")
    await recorder.flush()
    ev = sink.only()
    assert ev["count"] == 2 and ev["reason"] == "A"


async def test_dedup_cache_is_bounded(sink: FakeEvents, clock: FakeClock) -> None:
    rec = EventRecorder(sink, "c", host="", clock=clock, cache_size=2)
    try:
        for reason in ("A", "B", "C", "A"):
            rec.event(CM, "Normal", reason, "m")
        await rec.flush()
        assert [verb for verb, _ in sink.calls] == ["create"] * 4, "A was evicted, so it is created again"
    finally:
        await rec.close(grace=1)


def test_bad_input_names_the_field() -> None:
    rec = EventRecorder(FakeEvents(), "c", host="")
    with pytest.raises(ValueError, match="event type 'Info'"):
        rec.event(CM, "Info", "A", "m")
    with pytest.raises(ValueError, match=r"metadata\.name"):
        rec.event({"kind": "ConfigMap", "metadata": {}}, "Normal", "A", "m")
    with pytest.raises(ValueError, match="has no kind"):
        rec.event({"metadata": {"name": "x"}}, "Normal", "A", "m")
    with pytest.raises(ValueError, match="reason is empty"):
        rec.event(CM, "Normal", "", "m")


async def test_long_messages_are_truncated(recorder: EventRecorder, sink: FakeEvents) -> None:
    recorder.event(CM, "Normal", "A", "x" * 5000)
    await recorder.flush()
    msg = sink.only()["message"]
    assert len(msg) == 1024 and msg.endswith("...")


async def test_listed_objects_get_kind_from_the_resource(recorder: EventRecorder, sink: FakeEvents) -> None:
    listed = {"metadata": {"name": "cfg", "namespace": "ns1", "uid": "u-1"}}  # LIST items carry no kind
    with pytest.raises(ValueError, match="pass resource="):
        recorder.event(listed, "Normal", "A", "m")
    recorder.event(listed, "Normal", "A", "m", resource=CONFIGMAPS)
    await recorder.flush()
    ref = sink.only()["involvedObject"]
    assert (ref["kind"], ref["apiVersion"], ref["name"]) == ("ConfigMap", "v1", "cfg")


async def test_events_of_different_objects_are_written_together_and_one_objects_in_order(
    sink: FakeEvents, clock: FakeClock
) -> None:
    in_flight, most = 0, 0
    create = sink.create

    async def counting_create(*args: Any, **kw: Any) -> dict[str, Any]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.01)
            return await create(*args, **kw)
        finally:
            in_flight -= 1

    sink.create = counting_create  # type: ignore[method-assign]
    rec = EventRecorder(sink, "c", host="h", clock=clock)
    for i in range(20):
        rec.normal(
            {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": f"p{i}", "namespace": "ns"}}, "R", "m"
        )
    same = {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "one", "namespace": "ns"}}
    for i in range(3):
        rec.normal(same, "R", f"step {i}")
    await asyncio.wait_for(rec.flush(), 5)
    await rec.close(grace=1)
    assert 1 < most <= WRITE_CONCURRENCY, most
    assert rec.written == 23
    steps = [o["message"] for o in sink.objects.values() if o["involvedObject"]["name"] == "one"]
    assert steps == ["step 0", "step 1", "step 2"], "one object's events keep their order"
