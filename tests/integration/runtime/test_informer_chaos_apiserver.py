"""An informer behind a fault proxy in front of the real kube-apiserver converges after every fault.

Writers change ConfigMaps directly on the API server while the informer's list/watch traffic goes
through the proxy, which injects, one round at a time: a watch ERROR 410, 429 with Retry-After, 500s
on LIST, dropped connections mid-watch, a stalled watch (the inactivity watchdog), a truncated LIST
body and a corrupted watch stream. After each round the informer's store must equal a fresh LIST,
and every key's event sequence must be valid (no missed deletes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from localcache.runtime import Client, SharedInformer, errors
from localcache.runtime.reflector import Backoff
from localcache.runtime.resources import CONFIGMAPS
from localcache.testing.faultproxy import Corrupt, FaultProxy, Stall, Status, Truncate, WatchError
from localcache.testing.pytest_plugin import TestCluster, use_existing_cluster

from .informer_helpers import EventLog, cm, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(use_existing_cluster(), reason="needs the envtest CA to terminate TLS"),
]


@pytest.fixture
async def proxy(cluster: TestCluster) -> AsyncIterator[FaultProxy]:
    assert cluster.plane is not None
    async with FaultProxy(cluster.plane.url, tls=cluster.plane.proxy_tls(), seed=11) as p:
        yield p


async def test_informer_converges_through_every_fault(
    cluster: TestCluster, proxy: FaultProxy, namespace: str, tmp_path: Path
) -> None:
    assert cluster.plane is not None
    via_proxy = cluster.plane.user_kubeconfig(
        tmp_path / "proxied.kubeconfig", "chaos-admin", ("system:masters",), server=proxy.url
    )
    direct = await Client.from_kubeconfig(cluster.kubeconfig)
    proxied = await Client.from_kubeconfig(via_proxy, watch_idle_timeout=3.0, request_timeout=10.0)
    # client-go's backoff (0.8 s doubling to 30 s, reset after 2 min quiet) would make six faults in a
    # row take minutes; the same algorithm with short steps keeps the test quick
    backoff = Backoff(initial=0.1, cap=1.0)
    inf = SharedInformer(proxied, CONFIGMAPS, namespace, name="chaos", backoff=backoff)
    log = EventLog()
    inf.add_event_handler(log.handler())
    rnd = random.Random(3)
    names = [f"c{i}" for i in range(10)]
    task = None
    base = f"/api/v1/namespaces/{namespace}/configmaps$"

    async def churn(n: int) -> None:
        for _ in range(n):
            name = rnd.choice(names)
            with contextlib.suppress(errors.AlreadyExists, errors.NotFound, errors.Conflict):
                op = rnd.random()
                if op < 0.45:
                    await direct.create(CONFIGMAPS, cm(name, namespace, v=str(rnd.random())))
                elif op < 0.8:
                    await direct.patch(CONFIGMAPS, name, {"data": {"v": str(rnd.random())}}, namespace)
                else:
                    await direct.delete(CONFIGMAPS, name, namespace)

    async def converged(what: str) -> None:
        items, _ = await direct.list_all(CONFIGMAPS, namespace)
        truth = {f"{namespace}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in items}

        def view() -> dict[str, Any]:
            return {k: o["metadata"]["resourceVersion"] for k, o in inf.store.items()}

        await wait_for(lambda: view() == truth and log.final_present() == truth, 90, what)
        log.check_valid()

    rounds: list[tuple[str, Any, dict[str, Any]]] = [
        ("watch ERROR 410", WatchError(410), {"path": base, "watch": True}),
        ("429 with Retry-After on watch", Status(429, retry_after=1), {"path": base, "watch": True}),
        ("500 on LIST", Status(500), {"path": base, "watch": False, "times": 2}),
        ("stalled watch", Stall(30), {"path": base, "watch": True}),
        ("truncated LIST", Truncate(after_bytes=200), {"path": base, "watch": False}),
        ("corrupted watch stream", Corrupt(offset=5), {"path": base, "watch": True}),
    ]
    try:
        await churn(15)
        task = asyncio.ensure_future(inf.start())
        assert await inf.wait_for_sync(60)
        await converged("initial sync")
        for what, action, match in rounds:
            rule = proxy.add(action, **match)
            if what in ("500 on LIST", "truncated LIST"):
                # make the informer list again: a 410 on its watch forces the relist the fault hits
                proxy.add(WatchError(410), path=base, watch=True)
            await proxy.drop_connections()  # the open watch ends; the next request meets the fault
            await churn(12)
            await wait_for(lambda rule=rule: rule.hits > 0, 60, f"fault '{what}' to be hit")
            await converged(f"convergence after {what}")
        # and a plain network blip, with changes while disconnected
        await proxy.drop_connections()
        await churn(12)
        await converged("convergence after dropped connections")
        assert proxy.injected, "faults were injected"
        assert inf.reflector.lists >= 3, "the 410 and LIST faults caused relists"
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await proxied.close()
        await direct.close()
