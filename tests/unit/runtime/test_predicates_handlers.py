from __future__ import annotations

import asyncio
from typing import Any

from localcache.runtime.clock import FakeClock
from localcache.runtime.handlers import (
    EnqueueRequestForObject,
    EnqueueRequestForOwner,
    EnqueueRequestsFromMapFunc,
    InformerAdapter,
)
from localcache.runtime.predicates import (
    CreateEvent,
    DeleteEvent,
    Funcs,
    UpdateEvent,
    and_,
    annotations_changed,
    generation_changed,
    label_selector,
    labels_changed,
    not_,
    or_,
    resource_version_changed,
)
from localcache.runtime.reconcile import Request
from localcache.runtime.store import DeletedFinalStateUnknown
from localcache.runtime.workqueue import LOW_PRIORITY, QueueEmpty, WorkQueue


def obj(
    name: str = "a", rv: str = "1", gen: int = 1, labels: Any = None, ann: Any = None, **extra: Any
) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "resourceVersion": rv, "generation": gen}
    if labels is not None:
        meta["labels"] = labels
    if ann is not None:
        meta["annotations"] = ann
    return {"metadata": meta, **extra}


def test_update_predicates() -> None:
    same = UpdateEvent(obj(rv="1"), obj(rv="1"))
    status_only = UpdateEvent(obj(rv="1"), obj(rv="2", status={"x": 1}))
    spec = UpdateEvent(obj(rv="1", gen=1), obj(rv="2", gen=2))
    relabel = UpdateEvent(obj(rv="1", labels={"a": "1"}), obj(rv="2", labels={"a": "2"}))
    annotate = UpdateEvent(obj(rv="1"), obj(rv="2", ann={"k": "v"}))
    assert same.is_resync and not status_only.is_resync
    assert [resource_version_changed().update(e) for e in (same, status_only)] == [False, True]
    assert [generation_changed().update(e) for e in (same, status_only, spec)] == [False, False, True]
    assert [labels_changed().update(e) for e in (status_only, relabel)] == [False, True]
    assert [annotations_changed().update(e) for e in (status_only, annotate)] == [False, True]
    # create/delete pass through update-only predicates
    assert generation_changed().create(CreateEvent(obj())) and generation_changed().delete(DeleteEvent(obj()))


def test_combinators_and_operators() -> None:
    spec = UpdateEvent(obj(rv="1", gen=1), obj(rv="2", gen=2))
    relabel = UpdateEvent(obj(rv="1", labels={"a": "1"}), obj(rv="2", labels={"a": "2"}))
    either = or_(generation_changed(), labels_changed())
    both = and_(generation_changed(), labels_changed())
    assert either.update(spec) and either.update(relabel) and not both.update(spec)
    assert not_(generation_changed()).update(relabel)
    assert (generation_changed() | labels_changed()).update(relabel)
    assert not (generation_changed() & labels_changed()).update(relabel)
    assert (~generation_changed()).update(relabel)
    only_create = Funcs(update=lambda e: False, delete=lambda e: False)
    assert only_create.create(CreateEvent(obj())) and not only_create.update(spec)


def test_label_selector_predicate() -> None:
    p = label_selector("app=web,tier in (a,b)")
    assert p.create(CreateEvent(obj(labels={"app": "web", "tier": "a"})))
    assert not p.create(CreateEvent(obj(labels={"app": "web"})))
    assert p.update(UpdateEvent(obj(), obj(labels={"app": "web", "tier": "b"})))


def owned(*refs: dict[str, Any]) -> Any:
    o = obj("child")
    o["metadata"]["ownerReferences"] = list(refs)
    return o


def test_enqueue_for_owner_only_controller_by_default() -> None:
    ctl = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w1", "controller": True}
    other = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w2"}
    wrong_group = {"apiVersion": "other.io/v1", "kind": "Widget", "name": "w3", "controller": True}
    wrong_kind = {"apiVersion": "example.com/v1", "kind": "Gadget", "name": "g", "controller": True}
    o = owned(ctl, other, wrong_group, wrong_kind)
    assert list(EnqueueRequestForOwner("example.com", "Widget").requests(o)) == [Request("ns", "w1")]
    every = EnqueueRequestForOwner("example.com", "Widget", only_controller=False)
    assert list(every.requests(o)) == [Request("ns", "w1"), Request("ns", "w2")]
    cluster_owner = EnqueueRequestForOwner("example.com", "Widget", owner_namespaced=False)
    assert list(cluster_owner.requests(o)) == [Request("", "w1")]


def drain(q: WorkQueue[Request]) -> list[tuple[Request, int]]:
    out = []
    while True:
        try:
            r = q.get_nowait()
        except QueueEmpty:
            return out
        out.append((r, q.priority_of(r)))
        q.done(r)


async def test_adapter_priorities_predicates_and_tombstones() -> None:
    q: WorkQueue[Request] = WorkQueue(clock=FakeClock())
    a = InformerAdapter(EnqueueRequestForObject(), [resource_version_changed()], q)
    a.on_add(obj("x"), True)
    a.on_add(obj("y"), False)
    assert drain(q) == [(Request("ns", "y"), 0), (Request("ns", "x"), LOW_PRIORITY)]
    a.on_update(obj("x", rv="5"), obj("x", rv="5"))  # resync: filtered by resource_version_changed
    assert drain(q) == []
    b = InformerAdapter(EnqueueRequestForObject(), [], q)
    b.on_update(obj("x", rv="5"), obj("x", rv="5"))  # resync without a filter: low priority
    assert drain(q) == [(Request("ns", "x"), LOW_PRIORITY)]
    seen: list[bool] = []
    c = InformerAdapter(
        EnqueueRequestForObject(), [Funcs(delete=lambda e: seen.append(e.delete_state_unknown) or True)], q
    )
    c.on_delete(DeletedFinalStateUnknown("ns/z", obj("z")))
    c.on_delete(obj("w"))
    assert seen == [True, False]
    assert [r for r, _ in drain(q)] == [Request("ns", "z"), Request("ns", "w")]


async def test_adapter_with_async_map_function() -> None:
    q: WorkQueue[Request] = WorkQueue(clock=FakeClock())

    async def fan_out(o: Any) -> list[Request]:
        await asyncio.sleep(0)
        return [Request("ns", f"{o['metadata']['name']}-{i}") for i in range(2)]

    a = InformerAdapter(EnqueueRequestsFromMapFunc(fan_out), [], q)
    await a.on_add(obj("m"), False)  # type: ignore[func-returns-value]
    assert [r.name for r, _ in drain(q)] == ["m-0", "m-1"]


def test_request_keys() -> None:
    assert Request("ns", "a").key == "ns/a" and Request("", "n").key == "n"
    assert Request.from_key("ns/a") == Request("ns", "a") and Request.from_key("n") == Request("", "n")


async def test_adapter_with_plain_function_returning_a_coroutine() -> None:
    q: WorkQueue[Request] = WorkQueue(clock=FakeClock())

    async def lookup(o: Any) -> list[Request]:
        return [Request("ns", "owner-of-" + o["metadata"]["name"])]

    a = InformerAdapter(EnqueueRequestsFromMapFunc(lambda o: lookup(o)), [], q)
    a.on_add(obj("p"), False)
    await asyncio.gather(*a._pending)
    assert [r.name for r, _ in drain(q)] == ["owner-of-p"]


async def test_coalescing_map_function_enqueues_each_request_once_per_burst() -> None:
    clock = FakeClock()
    q: WorkQueue[Request] = WorkQueue(clock=clock)
    a = InformerAdapter(EnqueueRequestsFromMapFunc(lambda o: [Request("", "cache")], coalesce=0.5), [], q)
    for name in ("node-1", "node-2", "node-3"):  # three agents report the same model in a burst
        a.on_update(obj(name), obj(name))
        await clock.advance(0.1)
    assert drain(q) == [], "nothing before the first event's delay is up"
    await clock.advance(0.2)
    assert [r for r, _ in drain(q)] == [Request("", "cache")], "one reconcile for the burst"
    a.on_update(obj("node-1"), obj("node-1"))
    await clock.advance(0.5)
    assert [r for r, _ in drain(q)] == [Request("", "cache")], "a later event is a new burst"
