"""The example controller of docs/runtime.md, run in-process by a Manager against the real API server.

It runs as a user without RBAC first, so the cache cannot sync and ``/readyz`` must say so; once
a Role is granted the informer syncs, ``/readyz`` turns 200 and the controller converges. ``/metrics``
is scraped for controller-runtime's names.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from localcache.runtime.client import Client
from localcache.runtime.manager import ManagerOptions
from localcache.runtime.resources import CONFIGMAPS, EVENTS, Resource
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration

ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True)
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "configmap_controller.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("configmap_controller_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def eventually(predicate: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Await an async or sync predicate until truthy, failing after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit:.0f}s")
        await asyncio.sleep(0.1)


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def sample(metrics_text: str, metric: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels must all match)."""
    for line in metrics_text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture
async def admin(cluster: TestCluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        yield c


async def test_example_controller_readiness_metrics_and_convergence(
    cluster: TestCluster, admin: Client, namespace: str, tmp_path: Path
) -> None:
    if cluster.plane is None:
        pytest.skip("needs the envtest control plane to mint a user certificate")
    example = load_example()
    user = "example-controller"
    kubeconfig = cluster.plane.user_kubeconfig(tmp_path / "user.kubeconfig", user)

    labels = {"example.localcache.io/count": "true", "team": "ml"}
    await admin.create(CONFIGMAPS, {"metadata": {"name": "counted", "namespace": namespace, "labels": labels},
                                    "data": {"a": "1", "b": "2"}})  # fmt: skip
    await admin.create(
        CONFIGMAPS, {"metadata": {"name": "ignored", "namespace": namespace}, "data": {"a": "1"}}
    )

    options = ManagerOptions(metrics_bind_address="127.0.0.1:0", health_probe_bind_address="127.0.0.1:0",
                             handle_signals=False, loop_lag_interval=0.1)  # fmt: skip
    async with await Client.from_kubeconfig(kubeconfig) as client:
        mgr = example.build_manager(client, namespace, options, name="example-it")
        run = asyncio.create_task(mgr.run())
        try:
            server = mgr.probe_server
            assert server is not None
            await asyncio.wait_for(server.wait_started(), 10)
            status, body = await fetch(f"{server.url}/readyz")
            assert status == 500 and "[-]informer-sync failed" in body, body
            assert (await fetch(f"{server.url}/healthz"))[0] == 200
            assert not mgr.is_leader, "leader-only work waits for the caches"

            await admin.create(ROLES, {"metadata": {"name": "example", "namespace": namespace}, "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            ]})  # fmt: skip
            await admin.create(ROLEBINDINGS, {
                "metadata": {"name": "example", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "example"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            })  # fmt: skip

            async def ready() -> bool:
                return (await fetch(f"{server.url}/readyz"))[0] == 200

            await eventually(ready, "readyz after RBAC is granted", limit=60)

            async def annotations(name: str) -> dict[str, str]:
                cm = await admin.get(CONFIGMAPS, name, namespace)
                return cm["metadata"].get("annotations") or {}

            async def counted(expect: dict[str, str]) -> bool:
                got = await annotations("counted")
                return {k: v for k, v in got.items() if k.startswith("example.localcache.io/")} == expect

            await eventually(lambda: counted({example.COUNT: "2", example.TEAM: "ml"}), "first convergence")
            change = {"metadata": {"labels": {"team": None}}, "data": {"c": "3"}}
            await admin.patch(CONFIGMAPS, "counted", change, namespace)
            await eventually(lambda: counted({example.COUNT: "3"}), "convergence after an update")
            assert await annotations("ignored") == {}, "outside the label selector"

            async def event_recorded() -> list[dict[str, Any]]:
                events = (await admin.list(EVENTS, namespace))["items"]
                return [
                    e
                    for e in events
                    if e["reason"] == "KeysCounted" and e["involvedObject"]["name"] == "counted"
                ]

            events = await eventually(event_recorded, "KeysCounted event")
            assert events[0]["source"]["component"] == "example-it" and events[0]["type"] == "Normal"

            async def queue_drained() -> str | None:
                text = (await fetch(f"{server.url}/metrics"))[1]
                depth = sample(text, "workqueue_depth", name="example-it")
                return text if depth == 0 else None

            text = await eventually(queue_drained, "workqueue drained")
            ok = sample(text, "controller_runtime_reconcile_total", controller="example-it", result="success")
            assert (ok or 0) >= 2
            assert (
                sample(text, "controller_runtime_reconcile_total", controller="example-it", result="error")
                == 0
            )
            assert sample(text, "controller_runtime_max_concurrent_reconciles", controller="example-it") == 1
            assert (
                sample(text, "controller_runtime_informer_cached_objects", gvk="core/v1/ConfigMap")
                is not None
            )
            assert (sample(text, "rest_client_requests_total", method="PATCH") or 0) >= 2
            assert sample(text, "asyncio_event_loop_lag_seconds") is not None
            assert (sample(text, "process_resident_memory_bytes") or 0) > 0
            assert sample(text, "python_info") == 1
        finally:
            mgr.stop()
            await asyncio.wait_for(run, 30)
