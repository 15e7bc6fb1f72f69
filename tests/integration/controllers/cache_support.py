"""Support for the cache-controller integration tests (no tests here; imported by the others).

A cache-controller test bed on the real API server: the manager's controllers in-process, Nodes
written directly (with a Ready condition through nodes/status), agents simulated by writing
LocalModelNode status, and every API write the controllers make counted.

Every name a test makes (Nodes, groups, caches, the group label key) carries the test's namespace,
so tests sharing the session's cluster never select each other's objects.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from localcache.controllers import (
    INFERENCE_SERVICES,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    LOCAL_MODEL_NODES,
)
from localcache.controllers.cache import setup_cache_controllers
from localcache.controllers.nodegroup import setup_nodegroup_controller
from localcache.runtime import AlreadyExists, Client, Conflict, NotFound
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.reconcile import Request
from localcache.runtime.resources import CONFIGMAPS, NAMESPACES, NODES, PERSISTENT_VOLUME_CLAIMS, Resource
from localcache.testing.wait import eventually

WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


class CountingClient(Client):
    """The manager's client: counts every write (method, path) it sends."""

    writes: Counter[tuple[str, str]]

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        if method in WRITE_VERBS:
            if not hasattr(self, "writes"):
                self.writes = Counter()
                self.conflicts = Counter()
            self.writes[(method, path)] += 1
            try:
                return await super().request(method, path, **kw)
            except (Conflict, AlreadyExists):
                self.conflicts[(method, path)] += 1
                raise
        return await super().request(method, path, **kw)

    def breakdown(self) -> dict[str, int]:
        """Writes by verb and resource (the path's last collection segment), plus refused ones."""
        out: Counter[str] = Counter()
        for (method, path), n in getattr(self, "writes", Counter()).items():
            parts = path.rstrip("/").split("/")
            res = (
                parts[-1]
                if parts[-1] == "status"
                else next(
                    (p for p in reversed(parts[:-1]) if p.endswith("s") and p not in ("namespaces",)),
                    parts[-1],
                )
            )
            out[
                f"{method} {res}{'/status' if parts[-1] == 'status' else ''}".replace(
                    "status/status", "status"
                )
            ] += n
        out["refused (409)"] = sum(getattr(self, "conflicts", Counter()).values())
        return dict(sorted(out.items()))

    def total_writes(self, *, events: bool = True) -> int:
        counts = getattr(self, "writes", Counter())
        return sum(n for (_, p), n in counts.items() if events or "/events" not in p)


class CacheEnv:
    """Helpers bound to one test: ``ns`` is both the config namespace and the job namespace."""

    def __init__(self, admin: Client, client: CountingClient, ns: str) -> None:
        self.admin = admin
        self.client = client
        self.ns = ns
        self.label = f"{ns}.localcache.test/pool"
        self.manager: Manager | None = None
        self.controllers: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._made: list[tuple[Resource, str, str | None]] = []

    def n(self, short: str) -> str:
        """A cluster-unique name for this test."""
        return f"{self.ns}-{short}"

    # ---- running the manager ---------------------------------------------------------------------
    async def start(
        self,
        local_model: dict[str, Any] | None = None,
        *,
        config: bool = True,
        prefix: str = "",
        **options: Any,
    ) -> None:
        if config:
            data = {"localModel": json.dumps({"jobNamespace": self.ns, **(local_model or {})})}
            await self.admin.create(
                CONFIGMAPS,
                {"metadata": {"name": "inferenceservice-config", "namespace": self.ns}, "data": data},
                self.ns,
            )
        opts = ManagerOptions(
            metrics_bind_address="0", health_probe_bind_address="0", handle_signals=False, loop_lag_interval=0
        )
        self.manager = Manager(self.client, opts)
        self.controllers = setup_cache_controllers(
            self.manager, config_namespace=self.ns, name_prefix=f"{self.ns}{prefix}-", **options
        )
        self.controllers.append(
            setup_nodegroup_controller(self.manager, name=f"{self.ns}{prefix}-localmodelnodegroup")
        )
        self._task = asyncio.create_task(self.manager.run())
        manager = self.manager
        await eventually(
            lambda: _true(manager.elected.is_set() or self._task.done()), 30, what="manager start"
        )
        if self._task.done():
            self._task.result()

    async def stop(self) -> None:
        if self.manager is not None and self._task is not None:
            self.manager.stop()
            await asyncio.wait_for(self._task, 30)

    async def idle(self) -> None:
        """Until every controller queue is empty and nothing is reconciling (delayed requeues aside)."""

        async def quiet() -> bool:
            return all(len(c.queue) == 0 and c.queue.processing == 0 for c in self.controllers)

        await eventually(quiet, 30, what="controllers idle")

    async def reconcile_everything(self) -> int:
        """Enqueue every cache and group once and wait until each was reconciled; returns the count."""
        assert len(self.controllers) == 3
        cluster, namespaced, groups = self.controllers
        targets = [
            (cluster, [Request("", o["metadata"]["name"]) for o in await self.list(LOCAL_MODEL_CACHES)]),
            (namespaced, [Request.for_object(o) for o in await self.list(LOCAL_MODEL_NAMESPACE_CACHES)]),
            (groups, [Request("", o["metadata"]["name"]) for o in await self.list(LOCAL_MODEL_NODE_GROUPS)]),
        ]
        before = [c.reconciles for c, _ in targets]
        total = 0
        for ctl, reqs in targets:
            for r in reqs:
                ctl.enqueue(r)
            total += len(reqs)

        async def done() -> bool:
            return all(c.reconciles - b >= len(r) for (c, r), b in zip(targets, before, strict=True))

        await eventually(done, 30, what="forced reconciles")
        await self.idle()
        return total

    # ---- objects ---------------------------------------------------------------------------------
    async def list(self, res: Resource) -> list[dict[str, Any]]:
        items = (await self.admin.list(res))["items"]
        return [
            o
            for o in items
            if o["metadata"]["name"].startswith(self.ns) or o["metadata"].get("namespace") == self.ns
        ]

    async def make_namespace(self, short: str) -> str:
        """A second namespace (consumers away from the job namespace), deleted at cleanup."""
        name = self.n(short)
        await self.admin.create(NAMESPACES, {"metadata": {"name": name}})
        self._made.append((NAMESPACES, name, None))
        return name

    async def make_node(self, short: str, pool: str | None, ready: bool = True) -> str:
        name = self.n(short)
        labels = {self.label: pool} if pool else {}
        await self.admin.create(
            NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        )
        self._made.append((NODES, name, None))
        await self.set_ready(name, ready)
        return name

    async def set_ready(self, name: str, ready: bool) -> None:
        cond = {"type": "Ready", "status": "True" if ready else "False", "reason": "Test"}
        await self.admin.patch(NODES, name, {"status": {"conditions": [cond]}}, subresource="status")

    async def relabel(self, name: str, pool: str | None) -> None:
        await self.admin.patch(NODES, name, {"metadata": {"labels": {self.label: pool}}})

    async def make_group(self, short: str, pool: str, limit: str = "100Gi") -> str:
        name = self.n(short)
        spec = {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "capacity": {"storage": limit},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "local-storage",
                "local": {"path": "/models"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": self.label, "operator": "In", "values": [pool]}]}
                        ]
                    }
                },
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-storage",
                "resources": {"requests": {"storage": limit}},
            },
        }
        body = {"apiVersion": LOCAL_MODEL_NODE_GROUPS.api_version, "kind": "LocalModelNodeGroup",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
        await self.admin.create(LOCAL_MODEL_NODE_GROUPS, body)
        self._made.append((LOCAL_MODEL_NODE_GROUPS, name, None))
        return name

    async def make_cache(
        self,
        name: str,
        groups: list[str],
        *,
        namespace: str | None = None,
        size: str = "1Gi",
        uri: str | None = None,
    ) -> dict[str, Any]:
        res = LOCAL_MODEL_NAMESPACE_CACHES if namespace else LOCAL_MODEL_CACHES
        meta: dict[str, Any] = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        body = {
            "apiVersion": res.api_version,
            "kind": res.kind,
            "metadata": meta,
            "spec": {
                "sourceModelUri": uri or f"hf://{self.ns}/{name}",
                "modelSize": size,
                "nodeGroups": groups,
            },
        }
        obj: dict[str, Any] = await self.admin.create(res, body, namespace)
        self._made.append((res, name, namespace))
        return obj

    async def make_isvc(
        self, name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None
    ) -> None:
        body = {
            "apiVersion": INFERENCE_SERVICES.api_version,
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations or {},
            },
            "spec": {"predictor": {"model": {"storageUri": "hf://x/y"}}},
        }
        await self.admin.create(INFERENCE_SERVICES, body, namespace)

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.admin.get(res, name, namespace)
            return obj
        except NotFound:
            return None

    async def entries(self, node: str) -> dict[str, dict[str, Any]]:
        """status key → entry on a node's LocalModelNode ({} when it has none)."""
        lmn = await self.get(LOCAL_MODEL_NODES, node)
        out = {}
        for e in ((lmn or {}).get("spec") or {}).get("localModels") or []:
            key = f"{e['namespace']}/{e['modelName']}" if e.get("namespace") else e["modelName"]
            out[key] = e
        return out

    async def status(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        res = LOCAL_MODEL_NAMESPACE_CACHES if namespace else LOCAL_MODEL_CACHES
        obj = await self.get(res, name, namespace)
        return (obj or {}).get("status") or {}

    async def report(
        self, node: str, key: str, state: str, message: str | None = None, size: int | None = None
    ) -> None:
        """Be the node's agent: set modelStatus[key] (and details) on its LocalModelNode's status."""
        lmn = await self.admin.get(LOCAL_MODEL_NODES, node)
        status = lmn.get("status") or {}
        status.setdefault("modelStatus", {})[key] = state
        if message or size is not None:
            detail: dict[str, Any] = {"status": state}
            if message:
                detail["message"] = message
            if size is not None:
                detail["bytes"] = size
            status.setdefault("modelStatusDetails", {})[key] = detail
        lmn["status"] = status
        await self.admin.update_status(LOCAL_MODEL_NODES, lmn)

    async def release_pvcs(self, namespace: str) -> None:
        """Be kube-controller-manager's pvc-protection controller (envtest does not run it): let
        terminating PVCs that no pod uses go, by dropping their ``kubernetes.io/pvc-protection``."""
        for pvc in (await self.admin.list(PERSISTENT_VOLUME_CLAIMS, namespace))["items"]:
            if pvc["metadata"].get("deletionTimestamp") and pvc["metadata"].get("finalizers"):
                patch = {"metadata": {"finalizers": None}}
                try:
                    await self.admin.patch(
                        PERSISTENT_VOLUME_CLAIMS, pvc["metadata"]["name"], patch, namespace
                    )
                except NotFound:
                    pass

    async def cleanup(self) -> None:
        """Delete what the test made (caches first, while the controllers still run), then stop."""
        try:
            for res, name, ns in reversed(self._made):
                if res in (LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES):
                    await self.admin.delete(res, name, ns, missing_ok=True)
            for res, name, ns in reversed(self._made):
                if (
                    res in (LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES)
                    and self._task
                    and not self._task.done()
                ):
                    await eventually(
                        lambda r=res, n=name, s=ns: _gone(self, r, n, s), 30, what=f"{name} deleted"
                    )
        finally:
            await self.stop()
            for res, name, ns in reversed(self._made):
                if res in (NODES, LOCAL_MODEL_NODE_GROUPS, NAMESPACES):
                    await self.admin.delete(res, name, ns, missing_ok=True)
                elif res in (LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES):
                    obj = await self.get(res, name, ns)
                    if obj is not None and obj["metadata"].get("finalizers"):
                        await self.admin.patch(res, name, {"metadata": {"finalizers": None}}, ns)


async def _true(value: bool) -> bool:
    return value


async def _gone(env: CacheEnv, res: Resource, name: str, ns: str | None) -> bool:
    return await env.get(res, name, ns) is None


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})
