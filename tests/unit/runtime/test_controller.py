"""Controller behaviour specs (controller-runtime controller_test), in virtual time over fake sources."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from localcache.runtime import errors
from localcache.runtime.builder import Builder, BuilderError
from localcache.runtime.cache import InformerCache, ResourceNotCached
from localcache.runtime.clock import FakeClock
from localcache.runtime.controller import CacheSyncTimeout, Controller
from localcache.runtime.handlers import EnqueueRequestForObject
from localcache.runtime.informer import SharedInformer
from localcache.runtime.predicates import generation_changed
from localcache.runtime.reconcile import Request, Result, TerminalError, current_reconcile_id
from localcache.runtime.resources import CONFIGMAPS, SECRETS, Resource
from localcache.runtime.workqueue import LOW_PRIORITY

from .fakesource import FakeClient, FakeSource, cm

_n = iter(range(10_000))


def uniq(base: str) -> str:
    return f"{base}-{next(_n)}"


def metric(metric_name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric_name, labels) or 0.0


async def eventually(
    cond: Callable[[], bool], clock: FakeClock, step: float = 0.01, limit: float = 60
) -> None:
    spent = 0.0
    while not cond():
        if spent > limit:
            raise AssertionError("condition not reached in virtual time")
        await clock.advance(step)
        spent += step


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.src = FakeSource()
        self.informer = SharedInformer(self.src, clock=self.clock, name=uniq("inf"), rng=random.Random(1))
        self.tasks: list[asyncio.Task[Any]] = []

    def controller(self, reconciler: Any, **kw: Any) -> Controller:
        c = Controller(uniq("ctl"), reconciler, clock=self.clock, **kw)
        c.watch(self.informer, EnqueueRequestForObject())
        return c

    def run(self, *runnables: Any) -> None:
        for r in runnables:
            self.tasks.append(asyncio.create_task(r.start()))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    r.run(r.informer)
    yield r
    for t in r.tasks:
        t.cancel()
    await asyncio.gather(*r.tasks, return_exceptions=True)


async def test_success_forgets_and_counts(rig: Rig) -> None:
    rig.src.add(cm("a"))
    calls: list[Request] = []

    async def reconcile(req: Request) -> None:
        assert current_reconcile_id()
        calls.append(req)

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: calls == [Request("ns", "a")], rig.clock)
    assert metric("controller_runtime_reconcile_total", controller=c.name, result="success") == 1
    assert metric("controller_runtime_reconcile_total", controller=c.name, result="error") == 0
    assert metric("controller_runtime_max_concurrent_reconciles", controller=c.name) == 1


async def test_error_requeues_with_exponential_backoff_and_ignores_requeue_after(rig: Rig) -> None:
    rig.src.add(cm("a"))
    times: list[float] = []

    async def reconcile(req: Request) -> Result:
        times.append(rig.clock.monotonic())
        if len(times) < 5:
            raise errors.Conflict("stale", reason="Conflict")
        return Result()

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: len(times) == 5, rig.clock, step=0.001)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.005, 0.01, 0.02, 0.04], abs=0.0015)
    assert c.queue.num_requeues(Request("ns", "a")) == 0, "success forgets the backoff"
    assert metric("controller_runtime_reconcile_errors_total", controller=c.name) == 4


async def test_terminal_error_is_not_requeued(rig: Rig) -> None:
    rig.src.add(cm("a"))
    calls: list[int] = []

    async def reconcile(req: Request) -> None:
        calls.append(1)
        raise TerminalError("bad spec")

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: len(calls) == 1, rig.clock)
    await rig.clock.advance(100)
    assert len(calls) == 1
    assert metric("controller_runtime_terminal_reconcile_errors_total", controller=c.name) == 1
    assert metric("controller_runtime_reconcile_total", controller=c.name, result="error") == 1


async def test_requeue_after_and_requeue(rig: Rig) -> None:
    rig.src.add(cm("a"))
    times: list[float] = []

    async def reconcile(req: Request) -> Result:
        times.append(rig.clock.monotonic())
        return Result(requeue_after=30) if len(times) < 3 else Result()

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: len(times) == 3, rig.clock, step=1)
    assert times[1] - times[0] == pytest.approx(30, abs=1) and times[2] - times[1] == pytest.approx(30, abs=1)
    assert metric("controller_runtime_reconcile_total", controller=c.name, result="requeue_after") == 2


async def test_bug_exceptions_are_recovered_and_counted_as_panics(rig: Rig) -> None:
    rig.src.add(cm("a"))
    calls: list[int] = []

    async def reconcile(req: Request) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("spec")

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: len(calls) == 2, rig.clock)
    assert metric("controller_runtime_reconcile_panics_total", controller=c.name) == 1


async def test_recover_panic_false_stops_the_controller(rig: Rig) -> None:
    rig.src.add(cm("a"))

    async def reconcile(req: Request) -> None:
        raise TypeError("bug")

    c = rig.controller(reconcile, recover_panic=False)
    task = asyncio.create_task(c.start())
    await eventually(task.done, rig.clock)
    with pytest.raises(TypeError):
        task.result()


async def test_reconcile_timeout_cancels_and_retries(rig: Rig) -> None:
    rig.src.add(cm("a"))
    calls: list[int] = []

    async def reconcile(req: Request) -> None:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(3600)

    c = rig.controller(reconcile, reconcile_timeout=0.05)
    rig.run(c)
    await asyncio.wait_for(_until(lambda: len(calls) == 2, rig.clock), 5)
    assert metric("controller_runtime_reconcile_timeouts_total", controller=c.name) == 1


async def _until(cond: Callable[[], bool], clock: FakeClock) -> None:
    while not cond():
        await asyncio.sleep(0.01)
        await clock.advance(0.01)


async def test_same_key_never_reconciled_concurrently_and_workers_run_in_parallel(rig: Rig) -> None:
    for i in range(6):
        rig.src.add(cm(f"o{i}"))
    active: set[str] = set()
    max_parallel = 0
    violations: list[str] = []
    done: list[str] = []

    async def reconcile(req: Request) -> None:
        nonlocal max_parallel
        if req.name in active:
            violations.append(req.name)
        active.add(req.name)
        max_parallel = max(max_parallel, len(active))
        await rig.clock.sleep(1)
        active.discard(req.name)
        done.append(req.name)

    c = rig.controller(reconcile, max_concurrent_reconciles=4)
    rig.run(c)
    await eventually(lambda: len(active) == 4, rig.clock)
    in_flight = set(active)
    # modify everything: in-flight keys run exactly once more; queued keys collapse into their pending run
    for i in range(6):
        rig.src.modify(cm(f"o{i}", v="2"))
    await eventually(lambda: len(done) == 10, rig.clock, step=0.1)
    await rig.clock.advance(5)
    assert not violations and max_parallel == 4 and len(done) == 10
    assert sorted(done) == sorted([f"o{i}" for i in range(6)] + list(in_flight))


async def test_reconcile_not_called_before_handler_synced_and_initial_list_is_low_priority(rig: Rig) -> None:
    for i in range(3):
        rig.src.add(cm(f"o{i}"))
    prios: list[int] = []
    c: Controller

    async def reconcile(req: Request) -> None:
        prios.append(c.queue.priority_of(req))

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: len(prios) == 3, rig.clock)
    assert prios == [LOW_PRIORITY] * 3
    rig.src.modify(cm("o1", v="x"))
    await eventually(lambda: len(prios) == 4, rig.clock)
    assert prios[3] == 0


async def test_cache_sync_timeout() -> None:
    clock = FakeClock()
    src = FakeSource()
    inf = SharedInformer(src, clock=clock)  # never started: never syncs
    c = Controller(uniq("ctl"), lambda r: None, clock=clock, cache_sync_timeout=120)
    c.watch(inf, EnqueueRequestForObject())
    task = asyncio.create_task(c.start())
    await clock.advance(121)
    with pytest.raises(CacheSyncTimeout):
        await asyncio.wait_for(task, 1)


WIDGETS = Resource("example.com", "v1", "widgets", "Widget", True)


async def test_builder_for_owns_watches_predicates_and_shared_informers() -> None:
    clock = FakeClock()
    client = FakeClient()
    cache = InformerCache(client, clock=clock, rng=random.Random(0))
    widgets, cms, secrets = client.source(WIDGETS), client.source(CONFIGMAPS), client.source(SECRETS)
    widgets.add(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns"}}
    )
    seen: list[str] = []

    async def reconcile(req: Request) -> None:
        seen.append(req.key)

    name = uniq("widget")
    ctl = (
        Builder(client, cache, name=name)
        .for_(WIDGETS, predicates=[generation_changed()])
        .owns(CONFIGMAPS)
        .watches(SECRETS, lambda s: [Request("ns", s["metadata"]["labels"]["widget"])])
        .with_options(max_concurrent_reconciles=2)
        .build(reconcile)
    )
    second = Builder(client, cache, name=uniq("other")).for_(WIDGETS).build(reconcile)
    assert len(cache.informers) == 3, "one informer per resource however many controllers use it"
    assert (
        ctl.max_concurrent_reconciles == 2 and ctl.needs_leader_election and not cache.needs_leader_election
    )
    tasks = [asyncio.create_task(x.start()) for x in (cache, ctl)]
    try:
        await eventually(lambda: seen == ["ns/w"], clock)
        assert await cache.wait_for_sync(1)
        owned = cm("child")
        owned["metadata"]["ownerReferences"] = [
            {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "controller": True, "uid": "u"}
        ]
        cms.add(owned)
        await eventually(lambda: len(seen) == 2, clock)
        not_controller = cm("other")
        not_controller["metadata"]["ownerReferences"] = [
            {"apiVersion": "example.com/v1", "kind": "Widget", "name": "zzz", "uid": "u2"}
        ]
        cms.add(not_controller)
        secret = {"kind": "Secret", "metadata": {"name": "s", "namespace": "ns", "labels": {"widget": "w2"}}}
        secrets.add(secret)
        await eventually(lambda: len(seen) == 3, clock)
        assert seen == ["ns/w", "ns/w", "ns/w2"]
        # a status-only change (no generation bump) is filtered out by generation_changed
        w = widgets.objects["ns/w"]
        widgets.modify({**w, "status": {"ok": True}})
        await clock.advance(2)
        assert len(seen) == 3
        assert (await cache.get(WIDGETS, "w", "ns"))["status"] == {"ok": True}
        with pytest.raises(errors.NotFound):
            await cache.get(WIDGETS, "nope", "ns")
        with pytest.raises(ResourceNotCached):
            cache.list(Resource("", "v1", "pods", "Pod"))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    del second


def test_builder_validation() -> None:
    cache = InformerCache(FakeClient(), clock=FakeClock())
    with pytest.raises(BuilderError, match="needs for_"):
        Builder(None, cache, name=uniq("x")).build(lambda r: None)
    with pytest.raises(BuilderError, match="owns"):
        Builder(None, cache, name=uniq("x")).owns(CONFIGMAPS).build(lambda r: None)
    with pytest.raises(BuilderError, match="only be called once"):
        Builder(None, cache).for_(CONFIGMAPS).for_(CONFIGMAPS)
    n = uniq("dup")
    Builder(None, cache, name=n).for_(CONFIGMAPS).build(lambda r: None)
    with pytest.raises(BuilderError, match="already used"):
        Builder(None, cache, name=n).for_(CONFIGMAPS).build(lambda r: None)


async def test_workqueue_metrics_follow_the_queue(rig: Rig) -> None:
    for i in range(3):
        rig.src.add(cm(f"m{i}"))
    done: list[str] = []

    async def reconcile(req: Request) -> None:
        done.append(req.name)

    c = rig.controller(reconcile)
    rig.run(c)
    await eventually(lambda: len(done) == 3, rig.clock)
    labels = {"name": c.name, "controller": c.name}
    assert metric("workqueue_adds_total", **labels) == 3
    assert metric("workqueue_depth", **labels, priority=str(LOW_PRIORITY)) == 0
    assert metric("workqueue_work_duration_seconds_count", **labels) == 3
    assert metric("workqueue_queue_duration_seconds_count", **labels) == 3
    assert metric("controller_runtime_reconcile_time_seconds_count", controller=c.name) == 3
    assert metric("controller_runtime_active_workers", controller=c.name) == 0


async def test_cache_read_before_sync_times_out_in_virtual_time() -> None:
    clock = FakeClock()
    cache = InformerCache(FakeClient(), clock=clock, read_sync_timeout=5)
    cache.informer_for(CONFIGMAPS)  # declared, but the cache is never started
    task = asyncio.create_task(cache.get(CONFIGMAPS, "a", "ns"))
    await clock.advance(6)
    with pytest.raises(errors.Timeout, match="not synced"):
        await task


async def test_cache_shares_informers_per_scope_and_passes_selectors() -> None:
    client = FakeClient()
    cache = InformerCache(
        client, namespace="team-a", label_selectors={CONFIGMAPS: "app = web"}, clock=FakeClock()
    )
    a = cache.informer_for(CONFIGMAPS)
    b = cache.informer_for(CONFIGMAPS, label_selector="app=web")
    c = cache.informer_for(CONFIGMAPS, label_selector="app=db")
    d = cache.informer_for(CONFIGMAPS, metadata_only=True)
    assert a is b and a is not c and a is not d and len(cache.informers) == 3
    assert a.namespace == "team-a" and a.lw.label_selector == "app=web"  # type: ignore[attr-defined]
    nodes = cache.informer_for(Resource("", "v1", "nodes", "Node", False))
    assert nodes.namespace is None, "cluster-scoped resources ignore the namespace restriction"
