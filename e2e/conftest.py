"""The e2e suite's world: the whole system, started once per session.

On envtest (the default) the session starts :class:`localcache.testing.system.LocalSystem` on the
session's control plane: simulated nodes, local hub/S3/HTTP sources, the real manager and agents. With
``USE_EXISTING_CLUSTER=true`` and ``KUBECONFIG`` the suite talks to that cluster instead, where
localcache is installed from ``manifests/`` and nodes carry the guide's label
``nvidia.com/gpu-product=NVIDIA-A100-SXM4-80GB``; assertions that need the simulator (disk contents,
process memory, breaking a node's disk, local sources) are skipped there with the reason.

Settings for an existing cluster: ``E2E_MODEL_URI`` (default ``hf://sentence-transformers/all-MiniLM-L6-v2``)
and ``E2E_HF_TOKEN`` (default empty).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import JOBS, NODES, Resource
from localcache.testing.system import (
    GPU_PRODUCT,
    HUB_TOKEN,
    JOB_NAMESPACE,
    MODEL_URI,
    ComponentMissing,
    LocalSystem,
    apply_documents,
    guide_example,
)
from localcache.testing.wait import eventually

pytest_plugins = ["localcache.testing.pytest_plugin"]

GPU_LABEL = "nvidia.com/gpu-product"


def storage_key(uri: str) -> str:
    """KServe's on-disk folder name: the first 16 hex digits of sha256(uri). Computed here, independently
    of the implementation, because it is part of the wire contract."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


@dataclass
class E2E:
    """What every test needs: a client, which nodes the guide's group should cover, and the system
    (None on an existing cluster)."""

    client: Client
    system: LocalSystem | None
    group_nodes: list[str]
    other_nodes: list[str]
    model_uri: str
    hf_token: str

    @property
    def simulated(self) -> bool:
        return self.system is not None

    def require_simulator(self, what: str) -> LocalSystem:
        if self.system is None:
            pytest.skip(f"simulator-only assertion ({what}): not checkable through KUBECONFIG alone")
        return self.system

    def guide(self, name: str) -> list[dict[str, Any]]:
        """A guide example, adapted to this cluster's sources."""
        docs = guide_example(name)
        if self.system is None:
            for doc in docs:
                _replace_strings(doc, MODEL_URI, self.model_uri)
                _replace_strings(doc, HUB_TOKEN, self.hf_token)
        return docs

    async def apply(self, docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return await apply_documents(self.client, docs)

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.client.get(res, name, namespace)
        except errors.NotFound:
            return None

    async def wait_copies(
        self, res: Resource, name: str, namespace: str | None = None, *, within: float = 180
    ) -> dict[str, Any]:
        """Until ``status.copies.available == total == len(group_nodes)``; a failure shows the status."""
        want = len(self.group_nodes)

        async def ready() -> dict[str, Any] | None:
            if self.system is not None:
                self.system.check_processes()
            obj = await self.get(res, name, namespace) or {}
            copies = (obj.get("status") or {}).get("copies") or {}
            if copies.get("total") == want and copies.get("available") == want:
                return obj
            return None

        try:
            return await eventually(
                ready, within=within, interval=0.3, what=f"{res.kind} {name} on {want} nodes"
            )
        except AssertionError:
            obj = await self.get(res, name, namespace) or {}
            raise AssertionError(
                f"{res.kind} {name} not downloaded on {want} nodes; status: {obj.get('status')}"
            ) from None

    async def jobs(self, model: str, node: str | None = None) -> list[dict[str, Any]]:
        selector = f"model={model}" + (f",node={node}" if node else "")
        return list((await self.client.list(JOBS, JOB_NAMESPACE, label_selector=selector))["items"])

    def diagnostics(self) -> str:
        if self.system is None:
            return ""
        parts = []
        for name, proc in [("manager", self.system.manager), *self.system.agents.items()]:
            if proc is not None:
                parts.append(f"--- {name} ({proc.log_path}):\n{proc.log_tail(15)}")
        return "\n".join(parts)


def _use_existing_cluster() -> bool:
    """controller-runtime's switch (read here rather than imported, so the plugin module is imported
    by pytest first and its assertions get rewritten)."""
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


def _replace_strings(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _replace_strings(value, old, new)
    elif isinstance(obj, list):
        obj[:] = [_replace_strings(v, old, new) for v in obj]
    elif isinstance(obj, str):
        return obj.replace(old, new)
    return obj


@pytest.fixture(scope="session")
async def e2e(cluster: Any) -> AsyncIterator[E2E]:
    if _use_existing_cluster():
        client = await Client.from_kubeconfig(cluster.kubeconfig)
        async with client:
            nodes = (await client.list(NODES))["items"]
            group = sorted(
                n["metadata"]["name"]
                for n in nodes
                if n["metadata"].get("labels", {}).get(GPU_LABEL) == GPU_PRODUCT
            )
            others = sorted(n["metadata"]["name"] for n in nodes if n["metadata"]["name"] not in group)
            if not group:
                pytest.fail(
                    f"no node is labelled {GPU_LABEL}={GPU_PRODUCT}; label the nodes of the guide's group"
                )
            yield E2E(
                client,
                None,
                group,
                others,
                os.environ.get("E2E_MODEL_URI", MODEL_URI),
                os.environ.get("E2E_HF_TOKEN", ""),
            )
        return
    assert cluster.plane is not None
    system = LocalSystem(
        plane=cluster.plane,
        # Retries and folder GC in seconds rather than the production minutes, and a failed pod fails its
        # Job at once (no pod-level backoff of 10 s, 20 s, ...), so recovery is observable quickly.
        agent_args=[
            "--retry-backoff-base=2",
            "--retry-backoff-max=10",
            "--gc-grace-period=5",
            "--job-backoff-limit=0",
        ],
    )
    try:
        await system.start()
    except ComponentMissing as exc:
        pytest.fail(f"the whole system cannot start: {exc}", pytrace=False)
    try:
        assert system.client is not None
        specs = system.node_specs.values()
        yield E2E(
            system.client,
            system,
            [s.name for s in specs if s.labels.get(GPU_LABEL) == GPU_PRODUCT],
            [s.name for s in specs if s.labels.get(GPU_LABEL) != GPU_PRODUCT],
            MODEL_URI,
            HUB_TOKEN,
        )
    finally:
        await system.stop()


@pytest.fixture(scope="session")
async def guide_base(e2e: E2E) -> E2E:
    """Steps 1-3 of the guide applied (idempotent), for modules that run on their own."""
    await e2e.apply(e2e.guide("01-inferenceservice-config-localmodel.yaml"))
    await e2e.apply(e2e.guide("02-hf-secret-and-serviceaccount.yaml"))
    await e2e.apply(e2e.guide("08-local-model-node-group.yaml"))
    return e2e


def file_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".localcache-")
    }


async def no_new_jobs_for(e2e: E2E, model: str, seconds: float) -> None:
    """Observe for ``seconds`` that no Job for ``model`` appears (a negative needs a window, not a sleep
    standing in for a condition)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert not await e2e.jobs(model), f"unexpected download Job for {model}"
        await asyncio.sleep(0.5)
