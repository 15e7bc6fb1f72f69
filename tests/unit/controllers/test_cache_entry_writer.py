"""The LocalModelNode entry writer: optimistic concurrency (409 → re-read → re-apply), batching of
concurrent changes into one write, create-or-adopt, and no write when nothing changes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import jsonpatch
import pytest

from localcache.controllers.cache import EntryWriter
from localcache.runtime import errors
from localcache.runtime.clock import FakeClock


class FakeCache:
    """The informer cache as the writer sees it: possibly stale copies."""

    def __init__(self) -> None:
        self.lmns: dict[str, dict[str, Any]] = {}
        self.nodes = {"n1": {"metadata": {"name": "n1", "uid": "uid-n1"}}}

    def get_cached(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        src = self.nodes if resource.kind == "Node" else self.lmns
        obj = src.get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def get_shared(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """Not a copy, like the real one: a writer that mutated it would corrupt the "informer"."""
        src = self.nodes if resource.kind == "Node" else self.lmns
        return src.get(name)


class FakeApi:
    """An API server for one kind: JSON patches with ``test`` preconditions, counted writes."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 10
        self.writes: list[str] = []
        self.gate: asyncio.Event | None = None

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        if name not in self.objects:
            raise errors.NotFound(name)
        return copy.deepcopy(self.objects[name])

    async def create(
        self, resource: Any, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        self.writes.append("create")
        name = body["metadata"]["name"]
        if name in self.objects:
            raise errors.AlreadyExists(name)
        self.objects[name] = copy.deepcopy(body)
        return self._bump(self.objects[name])

    async def patch(
        self,
        resource: Any,
        name: str,
        patch: list[dict[str, Any]],
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        """JSON patches, with the API server's answer to a failed ``test``: 422 Invalid."""
        assert patch_type == "json"
        self.writes.append("patch")
        if self.gate is not None:
            await self.gate.wait()
        try:
            self.objects[name] = jsonpatch.apply_patch(self.objects[name], patch)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise errors.Invalid(f"{name}: {exc}") from None
        return self._bump(self.objects[name])

    def agent_writes_status(self, name: str) -> None:
        self.objects[name]["status"] = {"modelStatus": {"a": "ModelDownloaded"}}
        self._bump(self.objects[name])

    def someone_else_adds(self, name: str, entry: dict[str, Any]) -> None:
        self.objects[name]["spec"]["localModels"].append(entry)
        self._bump(self.objects[name])


async def until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Let the event loop run until ``condition`` holds (a bounded number of turns, no wall time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def entry(model: str, namespace: str = "") -> dict[str, Any]:
    e = {"sourceModelUri": f"hf://o/{model}", "modelName": model, "nodeGroup": "g"}
    if namespace:
        e["namespace"] = namespace
    return e


def models(api: FakeApi) -> list[tuple[str, str]]:
    return sorted((e["modelName"], e.get("namespace", "")) for e in api.objects["n1"]["spec"]["localModels"])


async def test_create_with_node_owner_then_no_write_when_unchanged() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    assert await writer.set("n1", ("a", ""), entry("a")) == "added"
    assert api.objects["n1"]["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-n1"}
    ]
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    assert await writer.set("n1", ("a", ""), entry("a")) is None
    assert api.writes == ["create"]
    assert await writer.set("gone-node", ("a", ""), entry("a")) is None, (
        "no LocalModelNode for a missing Node"
    )


async def test_conflict_rereads_and_keeps_the_other_writers_entry() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])  # the informer caught up...
    api.someone_else_adds("n1", entry("x", "team"))  # ...and then another writer moved on
    assert await writer.set("n1", ("b", ""), entry("b")) == "added"
    assert models(api) == [("a", ""), ("b", ""), ("x", "team")]
    assert api.writes == ["create", "patch", "patch"]  # one failed test, one good patch
    assert await writer.set("n1", ("x", "team"), None) == "removed"
    assert models(api) == [("a", ""), ("b", "")]


async def test_status_writes_in_between_do_not_fail_the_spec_write() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    api.agent_writes_status("n1")  # a newer resourceVersion than the informer's, same spec
    assert await writer.set("n1", ("b", ""), entry("b")) == "added"
    assert api.writes == ["create", "patch"]
    assert models(api) == [("a", ""), ("b", "")]
    assert api.objects["n1"]["status"] == {"modelStatus": {"a": "ModelDownloaded"}}


async def test_informer_showing_a_status_write_from_before_ours_is_not_trusted() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    api.agent_writes_status("n1")
    between = copy.deepcopy(api.objects["n1"])  # the agent's status write, spec [a]
    await writer.set("n1", ("b", ""), entry("b"))
    cache.lmns["n1"] = between  # the informer delivers the agent's write only now: newer than
    # anything it showed before, older than our last write
    assert await writer.set("n1", ("c", ""), entry("c")) == "added"
    assert api.writes == ["create", "patch", "patch"], "no failed test, no re-read"
    assert models(api) == [("a", ""), ("b", ""), ("c", "")]


async def test_a_real_invalid_answer_is_raised_not_retried() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])

    async def invalid(*_: Any, **__: Any) -> dict[str, Any]:
        api.writes.append("patch")
        raise errors.Invalid("spec.localModels[1].sourceModelUri: Invalid value")

    api.patch = invalid  # type: ignore[method-assign]
    with pytest.raises(errors.Invalid, match="sourceModelUri"):
        await writer.set("n1", ("b", ""), entry("b"))
    assert api.writes == ["create", "patch"]


async def test_stale_informer_after_our_own_write_does_not_conflict() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    await writer.set("n1", ("b", ""), entry("b"))
    # the informer still shows the version before our patch: the writer uses what the patch returned
    await writer.set("n1", ("c", ""), entry("c"))
    assert api.writes == ["create", "patch", "patch"]
    assert models(api) == [("a", ""), ("b", ""), ("c", "")]


async def test_concurrent_changes_to_one_node_are_batched() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("first", ""), entry("first"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    api.gate = asyncio.Event()
    first = asyncio.create_task(writer.set("n1", ("m0", ""), entry("m0")))
    await until(lambda: api.writes.count("patch") == 1)  # m0's patch is in flight, held at the gate
    rest = [asyncio.create_task(writer.set("n1", (f"m{i}", ""), entry(f"m{i}"))) for i in range(1, 20)]
    await until(lambda: len(writer._pending.get("n1", [])) == 19)
    api.gate.set()
    outcomes = await asyncio.gather(first, *rest)
    assert outcomes == ["added"] * 20
    assert len(models(api)) == 21
    assert api.writes.count("patch") == 2, api.writes  # m0 alone, then m1..m19 in one patch


async def test_the_next_write_waits_in_proportion_to_the_last_answer_time() -> None:
    """A slow answer (a loaded API server) spaces the next write by twice its time; changes that
    arrive meanwhile go out together."""
    api, cache, clock = FakeApi(), FakeCache(), FakeClock()
    writer = EntryWriter(api, cache, clock=clock)
    await writer.set("n1", ("first", ""), entry("first"))
    api.gate = asyncio.Event()
    slow = asyncio.create_task(writer.set("n1", ("m0", ""), entry("m0")))
    await until(lambda: api.writes.count("patch") == 1)
    await clock.advance(3)  # the API server takes 3 s to answer
    api.gate.set()
    assert await slow == "added"
    later = [asyncio.create_task(writer.set("n1", (f"m{i}", ""), entry(f"m{i}"))) for i in range(1, 6)]
    await clock.advance(5.9)
    assert api.writes.count("patch") == 1 and not any(t.done() for t in later)
    await clock.advance(0.1)
    assert await asyncio.gather(*later) == ["added"] * 5
    assert api.writes.count("patch") == 2 and len(models(api)) == 7


async def test_a_write_that_failed_after_hanging_does_not_hold_back_the_next() -> None:
    """An API server restart hangs a request for a long time: that is an outage, not load."""
    api, cache, clock = FakeApi(), FakeCache(), FakeClock()
    writer = EntryWriter(api, cache, clock=clock)
    await writer.set("n1", ("first", ""), entry("first"))
    real_patch = api.patch

    async def hangs_then_fails(*_: Any, **__: Any) -> dict[str, Any]:
        await clock.sleep(30)
        raise errors.ServerError("the API server went away")

    api.patch = hangs_then_fails  # type: ignore[method-assign]
    failing = asyncio.create_task(writer.set("n1", ("m0", ""), entry("m0")))
    await clock.advance(30)
    with pytest.raises(errors.ServerError):
        await failing
    api.patch = real_patch  # type: ignore[method-assign]
    retried = asyncio.create_task(writer.set("n1", ("m0", ""), entry("m0")))
    await clock.settle()
    assert retried.done() and retried.result() == "added", "written at once, not 60 s later"


async def test_an_unchanged_entry_does_not_wait_behind_a_write_in_flight() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    writer._written.clear()
    api.gate = asyncio.Event()
    held = asyncio.create_task(writer.set("n1", ("b", ""), entry("b")))
    await until(lambda: api.writes.count("patch") == 1)
    assert await writer.set("n1", ("a", ""), entry("a")) is None  # returns while "b" is held
    assert await writer.set("n1", ("zz", ""), None) is None
    assert not held.done()
    api.gate.set()
    assert await held == "added"
    # an identity whose write is in flight is never answered from the older copy
    api.gate = asyncio.Event()
    removing = asyncio.create_task(writer.set("n1", ("b", ""), None))
    await until(lambda: api.writes.count("patch") == 2)
    again = asyncio.create_task(writer.set("n1", ("b", ""), entry("b")))
    await asyncio.sleep(0)
    assert not again.done()
    api.gate.set()
    assert await removing == "removed" and await again == "added"
    assert models(api) == [("a", ""), ("b", "")]


async def test_errors_reach_every_waiter() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])

    async def broken(*_: Any, **__: Any) -> dict[str, Any]:
        raise errors.Forbidden("no RBAC")

    api.patch = broken  # type: ignore[method-assign]
    results = await asyncio.gather(
        writer.set("n1", ("b", ""), entry("b")),
        writer.set("n1", ("c", ""), entry("c")),
        return_exceptions=True,
    )
    assert all(isinstance(r, errors.Forbidden) for r in results)


async def test_fresh_removal_does_not_trust_a_stale_informer() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    api.someone_else_adds("n1", entry("late"))  # not in the informer yet
    writer._written.clear()  # as if another process had written it
    assert await writer.set("n1", ("late", ""), None) is None  # the informer's view: nothing to do
    assert await writer.set("n1", ("late", ""), None, fresh=True) == "removed"
    assert models(api) == [("a", "")]


async def test_forget_drops_a_gone_node_but_not_a_lock_in_use() -> None:
    api, cache = FakeApi(), FakeCache()
    writer = EntryWriter(api, cache)
    await writer.set("n1", ("a", ""), entry("a"))
    cache.lmns["n1"] = copy.deepcopy(api.objects["n1"])
    assert await writer.set("n1", ("a", ""), entry("a")) is None  # builds the entry index
    assert "n1" in writer._entry_maps and "n1" in writer._locks and "n1" in writer._pacers
    writer.forget("n1")
    assert not any("n1" in m for m in (writer._entry_maps, writer._locks, writer._pacers, writer._written))

    api.gate = asyncio.Event()
    in_flight = asyncio.create_task(writer.set("n1", ("b", ""), entry("b")))
    await until(lambda: api.writes.count("patch") == 1)
    lock = writer._locks["n1"]
    writer.forget("n1")
    assert writer._locks.get("n1") is lock, "a write holds it: a second lock would let two writers in"
    api.gate.set()
    assert await in_flight == "added"
    assert writer._callers == {}
    writer.forget("n1")
    assert "n1" not in writer._locks


async def test_a_deleted_local_model_node_wakes_every_cache_it_held_and_is_forgotten() -> None:
    from types import SimpleNamespace

    from localcache.controllers.cache import CLUSTER, LocalModelNodeMapper

    cache = FakeCache()
    writer = EntryWriter(FakeApi(), cache)
    reconciler = SimpleNamespace(scope=CLUSTER, cache=cache, writer=writer)
    reconciler._requests = lambda keys: sorted(r for k in keys if (r := CLUSTER.request_for_key(k)))
    mapper = LocalModelNodeMapper(reconciler)  # type: ignore[arg-type]
    lmn = {
        "metadata": {"name": "n1", "resourceVersion": "5"},
        "spec": {"localModels": [entry("a"), entry("b"), entry("c", "team")]},
        "status": {"modelStatus": {"a": "ModelDownloaded"}},
    }
    cache.lmns["n1"] = lmn
    assert [r.name for r in mapper(lmn)] == ["a", "b"]  # first sight: both cluster caches
    assert mapper(lmn) == [], "nothing changed"
    writer._entry_maps["n1"] = ("5", {})
    del cache.lmns["n1"]  # the informer's store drops it before the handlers run
    assert [r.name for r in mapper(lmn)] == ["a", "b"], "an unchanged final state still wakes them"
    assert "n1" not in mapper._last and "n1" not in writer._entry_maps
