"""Informers and controllers on a real kube-apiserver: hammer, forced 410, dropped watch, e2e reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from localcache.runtime import (
    Builder,
    Client,
    InformerCache,
    Request,
    Result,
    SharedInformer,
    errors,
    label_selector,
)
from localcache.runtime.reflector import ClientListerWatcher
from localcache.runtime.resources import CONFIGMAPS, EVENTS, JOBS, LEASES, NAMESPACES, PODS, SECRETS, Resource

from .informer_helpers import EventLog, cm, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(cluster: Any) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        yield c


async def run_task(coro: Awaitable[None]) -> asyncio.Task[None]:
    return asyncio.ensure_future(coro)


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_hammer_store_equals_fresh_list_and_event_sequences_valid(
    client: Client, namespace: str
) -> None:
    inf = SharedInformer(client, CONFIGMAPS, namespace, label_selector="hammer=yes")
    log = EventLog()
    inf.add_event_handler(log.handler())
    task = await run_task(inf.start())
    try:
        assert await inf.wait_for_sync(30)
        names = [f"k{i}" for i in range(15)]

        async def writer(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(40):
                name = rnd.choice(names)
                op = rnd.random()
                obj = cm(name, namespace, v=str(rnd.random()))
                obj["metadata"]["labels"] = {"hammer": "yes"}
                with contextlib.suppress(errors.AlreadyExists, errors.NotFound, errors.Conflict):
                    if op < 0.4:
                        await client.create(CONFIGMAPS, obj)
                    elif op < 0.8:
                        await client.patch(CONFIGMAPS, name, {"data": obj["data"]}, namespace)
                    else:
                        await client.delete(CONFIGMAPS, name, namespace)

        await asyncio.gather(*(writer(s) for s in range(4)))
        items, _ = await client.list_all(CONFIGMAPS, namespace, label_selector="hammer=yes")
        truth = {f"{namespace}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in items}

        def store_view() -> dict[str, str]:
            return {k: o["metadata"]["resourceVersion"] for k, o in inf.store.items()}

        await wait_for(lambda: store_view() == truth, 30, "store to equal a fresh LIST")
        log.check_valid()
        assert log.final_present() == truth
        assert sum(len(s) for s in log.by_key.values()) > 40
    finally:
        await stop(task)


async def warm_up(client: Client) -> None:
    """A restarted API server answers 429 until each watch cache is filled: wait for the common
    resources, so later tests in this session meet a settled server."""
    for res in (CONFIGMAPS, NAMESPACES, SECRETS, PODS, LEASES, EVENTS, JOBS):

        async def ready(res: Resource = res) -> bool:
            try:
                await client.list(res, limit=1)
            except errors.TooManyRequests:
                return False
            return True

        await wait_for(ready, 60, f"{res} to be served after the restart")


class FaultyListerWatcher(ClientListerWatcher):
    """Real list/watch, plus: close the open stream on demand and hold re-watches until released."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gate = asyncio.Event()
        self.gate.set()
        self.current: Any = None
        self.watch_rvs: list[str | None] = []
        self.gone_seen = 0

    def watch(self, **kw: Any) -> Any:
        return self._watch(kw)

    @contextlib.asynccontextmanager
    async def _watch(self, kw: dict[str, Any]) -> AsyncIterator[Any]:
        await self.gate.wait()
        self.watch_rvs.append(kw["resource_version"])
        stream = super().watch(**kw)
        try:
            async with stream as s:
                self.current = stream
                yield self._count_gone(s)
        except errors.Gone:  # as the HTTP status of the watch request
            self.gone_seen += 1
            raise
        finally:
            self.current = None

    async def _count_gone(self, s: Any) -> AsyncIterator[Any]:
        try:
            async for ev in s:
                yield ev
        except errors.Gone:  # as an in-stream ERROR event
            self.gone_seen += 1
            raise

    async def drop(self) -> None:
        """Close the open watch (as a dropped connection would) and hold the next one."""
        self.gate.clear()
        if self.current is not None:
            self.current.abort()


@pytest.mark.parametrize("mode", ["expired", "dropped"])
async def test_forced_410_and_dropped_watch_miss_no_deletes(
    client: Client, cluster: Any, namespace: str, mode: str
) -> None:
    for i in range(6):
        await client.create(CONFIGMAPS, cm(f"c{i}", namespace, v="1"))
    lw = FaultyListerWatcher(client, CONFIGMAPS, namespace)
    inf = SharedInformer(lw, name=f"faulty-{mode}")
    log = EventLog()
    inf.add_event_handler(log.handler())
    task = await run_task(inf.start())
    try:
        assert await inf.wait_for_sync(30)
        await wait_for(lambda: lw.current is not None, 10, "watch open")
        # a watch that ends within 1 s without events counts as failed (and relists): outlive that
        await asyncio.sleep(1.1)
        await lw.drop()
        # changes while nobody watches
        await client.delete(CONFIGMAPS, "c0", namespace)
        await client.delete(CONFIGMAPS, "c1", namespace)
        await client.patch(CONFIGMAPS, "c2", {"data": {"v": "2"}}, namespace)
        await client.create(CONFIGMAPS, cm("new", namespace, v="1"))
        if mode == "expired":
            if cluster.plane is None:
                pytest.skip("needs an envtest control plane to compact etcd")
            # history before now is gone, and a restarted API server has no watch cache to serve
            # old RVs from: the re-watch at the informer's last RV gets a real 410
            await asyncio.to_thread(cluster.plane.compact)
            await asyncio.to_thread(cluster.plane.restart_apiserver)
            await warm_up(client)
        lists_before = inf.reflector.lists
        lw.gate.set()
        items, _ = await client.list_all(CONFIGMAPS, namespace)
        truth = {f"{namespace}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in items}
        await wait_for(
            lambda: {k: o["metadata"]["resourceVersion"] for k, o in inf.store.items()} == truth, 60, "resync"
        )
        await wait_for(lambda: log.final_present() == truth, 10, "handlers to catch up")
        log.check_valid()
        ends = {k: seq[-1][0] for k, seq in log.by_key.items()}
        if mode == "expired":
            assert lw.gone_seen >= 1, "the server answered 410 Gone in the stream"
            assert inf.reflector.lists > lists_before, "a 410 relists"
            assert ends[f"{namespace}/c0"] == ends[f"{namespace}/c1"] == "tombstone"
        else:
            assert inf.reflector.lists == lists_before, "a dropped watch resumes without a relist"
            assert ends[f"{namespace}/c0"] == ends[f"{namespace}/c1"] == "delete"
        assert log.by_key[f"{namespace}/c2"][-1][2] == {"v": "2"}
    finally:
        await stop(task)


async def test_controller_mirrors_configmaps_end_to_end(client: Client, namespace: str) -> None:
    cache = InformerCache(client, namespace=namespace)
    reconciled: list[str] = []

    async def reconcile(req: Request) -> Result | None:
        reconciled.append(req.name)
        try:
            src = await cache.get(CONFIGMAPS, req.name, req.namespace)
        except errors.NotFound:
            return None  # deleted: the garbage collector removes the mirror
        desired = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"{req.name}-mirror",
                "namespace": req.namespace,
                "labels": {"app": "mirror"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": req.name,
                     "uid": src["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
                ],
            },
            "data": src.get("data") or {},
        }  # fmt: skip
        current = cache.get_cached(CONFIGMAPS, f"{req.name}-mirror", req.namespace)
        if current is None:
            with contextlib.suppress(errors.AlreadyExists):
                await client.create(CONFIGMAPS, desired)
        elif (current.get("data") or {}) != desired["data"]:
            current["data"] = desired["data"]
            await client.update(CONFIGMAPS, current)
        return None

    ctl = (
        Builder(client, cache, name=f"mirror-{namespace}")
        .for_(CONFIGMAPS, predicates=[label_selector("app=src")])
        .owns(CONFIGMAPS)
        .with_options(max_concurrent_reconciles=2)
        .build(reconcile)
    )
    tasks = [await run_task(cache.start()), await run_task(ctl.start())]

    async def mirror_data() -> dict[str, str] | None:
        try:
            return (await client.get(CONFIGMAPS, "one-mirror", namespace)).get("data") or {}
        except errors.NotFound:
            return None

    try:
        src = cm("one", namespace, a="1")
        src["metadata"]["labels"] = {"app": "src"}
        await client.create(CONFIGMAPS, src)

        async def mirror_is(expected: dict[str, str] | None) -> bool:
            return await mirror_data() == expected

        await wait_for(lambda: mirror_is({"a": "1"}), 30, "mirror created")
        await client.patch(CONFIGMAPS, "one", {"data": {"a": "2"}}, namespace)
        await wait_for(lambda: mirror_is({"a": "2"}), 30, "mirror follows the source")
        # someone edits the owned object: owns() brings it back
        await client.patch(CONFIGMAPS, "one-mirror", {"data": {"a": "tampered"}}, namespace)
        await wait_for(lambda: mirror_is({"a": "2"}), 30, "owned object reconciled back")
        assert "one-mirror" not in reconciled, "the mirror itself is not a source (label predicate)"
        await client.delete(CONFIGMAPS, "one", namespace, propagation_policy="Foreground")
        await wait_for(lambda: mirror_is(None), 60, "garbage collection of the mirror")
    finally:
        await stop(*tasks)


async def test_watch_list_and_metadata_only_informers(client: Client, namespace: str) -> None:
    for i in range(3):
        await client.create(CONFIGMAPS, cm(f"w{i}", namespace, big="x" * 1000))
    streamed = SharedInformer(client, CONFIGMAPS, namespace, use_watch_list=True, name="watch-list")
    meta = SharedInformer(client, CONFIGMAPS, namespace, metadata_only=True, name="metadata-only")
    lists: list[dict[str, Any]] = []
    orig = client.list

    async def spy(*a: Any, **kw: Any) -> Any:
        lists.append(kw)
        return await orig(*a, **kw)

    client.list = spy  # type: ignore[method-assign]
    tasks = [await run_task(streamed.start()), await run_task(meta.start())]
    try:
        assert await streamed.wait_for_sync(30) and await meta.wait_for_sync(30)
        assert not streamed.reflector._watch_list_unsupported
        assert [kw.get("metadata_only") for kw in lists] == [True], "watch-list synced without a LIST"
        assert sorted(streamed.store.keys()) == [f"{namespace}/w{i}" for i in range(3)]
        assert streamed.store.get(f"{namespace}/w0")["data"]["big"] == "x" * 1000
        m = meta.store.get(f"{namespace}/w0")
        assert m["kind"] == "PartialObjectMetadata" and "data" not in m and m["metadata"]["name"] == "w0"
        await client.create(CONFIGMAPS, cm("w3", namespace))
        await client.delete(CONFIGMAPS, "w0", namespace)
        want = sorted(f"{namespace}/w{i}" for i in (1, 2, 3))
        await wait_for(
            lambda: sorted(streamed.store.keys()) == want and sorted(meta.store.keys()) == want, 30
        )
    finally:
        client.list = orig  # type: ignore[method-assign]
        await stop(*tasks)
