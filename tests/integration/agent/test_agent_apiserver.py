"""The node agent in-process against the real kube-apiserver, with a temp dir as its models root.

Nothing runs the download Jobs (no kubelet): the test plays the download program by writing the
folder and its completion marker, and plays the Job controller by setting the Job's terminal
conditions through the ``jobs/status`` subresource. The envtest kube-controller-manager, when present,
creates Pods for the Jobs that stay Pending forever, which changes nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from localcache.api import storage_key
from localcache.controllers.node import (
    LOCAL_MODEL_NODES,
    NODE_GROUPS,
    STORAGE_READY,
    AgentOptions,
    agent_cache,
    build_agent,
)
from localcache.runtime import Conflict
from localcache.runtime.client import Client
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.resources import CONFIGMAPS, JOBS, NODES, SECRETS
from localcache.storage.marker import Marker, MarkerFile, write_marker
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.wait import eventually

pytestmark = pytest.mark.integration

HOST_PATH = "/var/lib/models"
URI = "hf://org/model-a"
URI_B = "s3://bucket/model-b"


def parse_ts(raw: str) -> datetime:
    return datetime.strptime(raw, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def now_ts(delta: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Env:
    client: Client
    namespace: str
    node: str
    group: str
    root: Path
    managers: list[tuple[Manager, asyncio.Task[None]]] = field(default_factory=list)

    def entry(self, name: str, uri: str = URI, **extra: Any) -> dict[str, Any]:
        return {"sourceModelUri": uri, "modelName": name, "nodeGroup": self.group, **extra}

    async def create_lmn(self, *entries: dict[str, Any]) -> None:
        await self.client.create(
            LOCAL_MODEL_NODES,
            {
                "apiVersion": "serving.kserve.io/v1alpha1",
                "kind": "LocalModelNode",
                "metadata": {"name": self.node},
                "spec": {"localModels": list(entries)},
            },
        )

    async def set_spec(self, *entries: dict[str, Any]) -> None:
        await self.client.patch(LOCAL_MODEL_NODES, self.node, {"spec": {"localModels": list(entries)}})

    async def start(self, host_path: str = HOST_PATH, *, record_events: bool = False, **opts: Any) -> None:
        options = AgentOptions(
            node_name=self.node,
            models_root=self.root,
            host_path=host_path,
            config_namespace=self.namespace,
            **opts,
        )
        manager = Manager(
            self.client,
            ManagerOptions(
                metrics_bind_address="0",
                health_probe_bind_address="0",
                handle_signals=False,
                loop_lag_interval=0,
            ),
            cache=agent_cache(self.client, options),
        )
        recorder = manager.event_recorder("localcache-agent") if record_events else None
        build_agent(manager, options, initial_job_namespace=self.namespace, recorder=recorder)
        self.managers.append((manager, asyncio.create_task(manager.run())))

    async def stop(self) -> None:
        for manager, task in self.managers:
            manager.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 30)
        self.managers.clear()

    async def lmn(self) -> dict[str, Any]:
        return await self.client.get(LOCAL_MODEL_NODES, self.node)

    async def status(self) -> dict[str, Any]:
        return (await self.lmn()).get("status") or {}

    async def jobs(self) -> list[dict[str, Any]]:
        page = await self.client.list(JOBS, self.namespace, label_selector=f"node={self.node}")
        return [j for j in page["items"] if not j["metadata"].get("deletionTimestamp")]

    async def model_state(self, key: str) -> str | None:
        return ((await self.status()).get("modelStatus") or {}).get(key)

    async def detail(self, key: str) -> dict[str, Any]:
        return ((await self.status()).get("modelStatusDetails") or {}).get(key) or {}

    async def condition(self, type_: str) -> dict[str, Any]:
        for cond in (await self.status()).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return {}

    def write_model(self, uri: str = URI, *, marker: bool = True) -> Path:
        folder = self.root / "models" / storage_key(uri)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"w" * 4096)
        if marker:
            now = datetime.now(UTC)
            write_marker(
                folder,
                Marker(
                    uri=uri,
                    files=[MarkerFile(path="model.safetensors", size=4096, digests={})],
                    total_bytes=4096,
                    started_at=now - timedelta(seconds=3),
                    completed_at=now,
                    duration_s=3.0,
                ),
                fsync=False,
            )
        return folder

    async def finish_job(self, job: dict[str, Any], *, ok: bool, message: str = "") -> None:
        """Set the terminal conditions the Job controller would (status subresource).

        The envtest Job controller, when running, updates the same status (pods it created); a
        conflict means re-read and try again, as any controller would.
        """
        for _ in range(20):
            try:
                await self._finish_job(job, ok=ok, message=message)
                return
            except Conflict:
                continue
        raise AssertionError(f"Job {job['metadata']['name']}: status kept conflicting")

    async def _finish_job(self, job: dict[str, Any], *, ok: bool, message: str = "") -> None:
        name = job["metadata"]["name"]
        current = await self.client.get(JOBS, name, self.namespace)
        status = dict(current.get("status") or {})
        status.setdefault("startTime", now_ts(-5))
        status["active"] = 0
        status["ready"] = 0
        status.pop("uncountedTerminatedPods", None)
        if ok:
            status["succeeded"] = 1
            status["completionTime"] = now_ts()
            status["conditions"] = [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastTransitionTime": now_ts()},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastTransitionTime": now_ts()},
            ]  # fmt: skip
        else:
            status["failed"] = 1
            status["conditions"] = [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": message, "lastTransitionTime": now_ts()},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": message, "lastTransitionTime": now_ts()},
            ]  # fmt: skip
        current["status"] = status
        await self.client.update_status(JOBS, current)


def only_m1_for(env: Env) -> Any:
    async def probe() -> bool:
        return set((await env.status()).get("modelStatus") or {}) == {"m1"}

    return probe


async def _delete_quietly(client: Client, resource: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        await client.delete(resource, name, missing_ok=True)


@pytest.fixture
async def env(cluster: TestCluster, namespace: str, tmp_path: Path) -> AsyncIterator[Env]:
    suffix = secrets.token_hex(3)
    node, group = f"worker-{suffix}", f"gpu-{suffix}"
    async with await Client.from_kubeconfig(cluster.kubeconfig) as client:
        await client.create(NODES, {"metadata": {"name": node, "labels": {"pool": f"pool-{suffix}"}}})
        await client.create(
            NODE_GROUPS,
            {
                "apiVersion": "serving.kserve.io/v1alpha1",
                "kind": "LocalModelNodeGroup",
                "metadata": {"name": group},
                "spec": {
                    "storageLimit": "10Gi",
                    "persistentVolumeSpec": {
                        "accessModes": ["ReadWriteOnce"],
                        "capacity": {"storage": "10Gi"},
                        "storageClassName": "local",
                        "local": {"path": HOST_PATH},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": "pool", "operator": "In", "values": [f"pool-{suffix}"]}
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                    "persistentVolumeClaimSpec": {"accessModes": ["ReadWriteOnce"]},
                },
            },
        )
        await client.create(
            CONFIGMAPS,
            {
                "metadata": {"name": "inferenceservice-config", "namespace": namespace},
                "data": {
                    "localModel": json.dumps(
                        {"jobNamespace": namespace, "fsGroup": 1000, "reconcilationFrequencyInSecs": 1}
                    ),
                    "storageInitializer": json.dumps({"image": "localcache/download:test"}),
                },
            },
        )
        e = Env(client, namespace, node, group, tmp_path / "mnt-models")
        e.root.mkdir()
        try:
            yield e
        finally:
            await e.stop()
            await _delete_quietly(client, LOCAL_MODEL_NODES, node)
            await _delete_quietly(client, NODE_GROUPS, group)
            await _delete_quietly(client, NODES, node)


async def test_one_job_per_model_and_node_with_dedup_and_downloaded_only_after_marker(env: Env) -> None:
    await env.create_lmn(env.entry("m1"), env.entry("m2"), env.entry("b", URI_B))
    await env.start()

    async def two_jobs() -> list[dict[str, Any]]:
        jobs = await env.jobs()
        return jobs if len(jobs) == 2 else []

    jobs = await eventually(two_jobs, within=30, what="two download Jobs")
    by_uri = {j["spec"]["template"]["spec"]["containers"][0]["args"][0]: j for j in jobs}
    assert set(by_uri) == {URI, URI_B}
    job = by_uri[URI]
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["labels"] == {"model": "m1", "node": env.node}
    assert job["metadata"]["name"].startswith(f"m1-{env.node}")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "LocalModelNode"
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": env.node}
    assert pod["containers"][0]["volumeMounts"][0]["subPath"] == f"models/{storage_key(URI)}"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"m1-{env.group}"
    assert pod["securityContext"] == {"fsGroup": 1000}
    assert job["spec"]["backoffLimit"] >= 0 and job["spec"]["activeDeadlineSeconds"] > 0

    async def pending_shared() -> bool:
        s = (await env.status()).get("modelStatus") or {}
        return s.get("m1") == s.get("m2") == "ModelDownloadPending"

    await eventually(pending_shared, within=30, what="m1 and m2 pending together")

    # The Job "succeeds" but the folder has no marker: never Downloaded.
    env.write_model(marker=False)
    await env.finish_job(job, ok=True)

    async def marker_missing() -> bool:
        return (await env.detail("m1")).get("message", "").startswith("MarkerMissing")

    await eventually(marker_missing, within=30, what="MarkerMissing error")
    assert await env.model_state("m1") == "ModelDownloadError"
    assert (await env.detail("m1"))["reason"] == "MarkerMissing"

    # With the marker the model is Downloaded, for both entries of the same URI.
    env.write_model()

    async def downloaded() -> bool:
        s = (await env.status()).get("modelStatus") or {}
        return s.get("m1") == s.get("m2") == "ModelDownloaded"

    await eventually(downloaded, within=30, what="Downloaded after the marker")
    detail = await env.detail("m2")
    # A downloaded model's detail is its bytes and times only, and they survive the API server's
    # schema (pruning would drop unknown fields).
    assert set(detail) == {"bytes", "startTime", "completionTime"} and detail["bytes"] == 4096
    completed, started = parse_ts(detail["completionTime"]), parse_ts(detail["startTime"])
    assert completed - started == timedelta(seconds=3)
    assert abs(datetime.now(UTC) - completed) < timedelta(minutes=2)
    assert "reason" not in detail and "nextAttemptTime" not in detail
    capacity = (await env.status())["capacity"]
    assert 0 < capacity["usedBytes"] <= capacity["totalBytes"]
    assert 0 < capacity["availableBytes"] <= capacity["totalBytes"]
    # Still exactly one Job per storage key ever created for this node (the retry replaced nothing).
    created = {j["spec"]["template"]["spec"]["containers"][0]["args"][0] for j in await env.jobs()}
    assert created == {URI, URI_B} and len(await env.jobs()) == 2


async def test_failed_job_is_retried_with_backoff_and_reason_in_status(env: Env) -> None:
    await env.create_lmn(env.entry("m1"))
    await env.start(retry_base_seconds=2.0, retry_max_seconds=4.0)

    async def one_job() -> dict[str, Any] | None:
        jobs = await env.jobs()
        return jobs[0] if len(jobs) == 1 else None

    first = await eventually(one_job, within=30, what="first Job")
    line = (
        "localcache-download error: reason=AuthFailed exit_code=10 message=hf://org/model-a: 401 Unauthorized"
    )
    await env.finish_job(first, ok=False, message=line)

    async def error_reported() -> dict[str, Any] | None:
        d = await env.detail("m1")
        return d if d.get("status") == "ModelDownloadError" and "AuthFailed" in d.get("message", "") else None

    detail = await eventually(error_reported, within=30, what="AuthFailed in status")
    assert "401 Unauthorized" in detail["message"] and "attempt 1" in detail["message"]
    assert detail["reason"] == "AuthFailed" and detail["attempt"] == 1
    retry_at = parse_ts(detail["nextAttemptTime"])
    assert abs(retry_at - datetime.now(UTC)) < timedelta(seconds=10)  # base backoff is 2 s
    assert "completionTime" not in detail and "startTime" in detail
    assert (await env.condition("Degraded"))["status"] == "True"

    async def replaced() -> dict[str, Any] | None:
        jobs = await env.jobs()
        fresh = [j for j in jobs if j["metadata"]["uid"] != first["metadata"]["uid"]]
        return fresh[0] if fresh and len(jobs) == 1 else None

    second = await eventually(replaced, within=30, what="a new Job after the backoff")
    assert second["metadata"]["annotations"]["localcache.kserve.io/download-attempt"] == "2"

    async def previous_reason_shown() -> bool:
        return "previous attempt failed: AuthFailed" in (await env.detail("m1")).get("message", "")

    await eventually(
        previous_reason_shown, within=30, what="the previous failure in the new attempt's status"
    )
    detail = await env.detail("m1")
    assert detail["attempt"] == 2
    assert "reason" not in detail and "nextAttemptTime" not in detail


async def test_host_path_mismatch_sets_a_condition_and_creates_no_jobs(env: Env) -> None:
    await env.create_lmn(env.entry("m1"))
    await env.start(host_path="/mnt/somewhere-else")

    async def condition() -> dict[str, Any]:
        cond = await env.condition(STORAGE_READY)
        return cond if cond.get("status") == "False" else {}

    cond = await eventually(condition, within=30, what="StorageReady=False")
    assert cond["reason"] == "HostPathMismatch"
    assert HOST_PATH in cond["message"] and "/mnt/somewhere-else" in cond["message"]
    assert env.group in cond["message"]
    assert (await env.condition("Ready"))["status"] == "False"
    # The reconcile that wrote this condition is the one that would have created the Job.
    assert await env.jobs() == []


async def test_missing_secret_is_a_status_error_and_no_job(env: Env) -> None:
    await env.create_lmn(env.entry("m1", storage={"key": "hf"}))
    await env.start()

    async def error() -> str:
        d = await env.detail("m1")
        return d.get("message", "") if d.get("status") == "ModelDownloadError" else ""

    message = await eventually(error, within=30, what="credential error")
    assert "StorageSecretNotFound" in message and f"{env.namespace}/storage-config" in message
    assert (await env.detail("m1"))["reason"] == "StorageSecretNotFound"
    assert await env.jobs() == []
    secret = {"type": "hf", "token": "hf_INTEGRATIONSECRET"}
    await env.client.create(
        SECRETS,
        {
            "metadata": {"name": "storage-config", "namespace": env.namespace},
            "stringData": {"hf": json.dumps(secret)},
        },
    )

    async def one_job() -> dict[str, Any] | None:
        jobs = await env.jobs()
        return jobs[0] if jobs else None

    job = await eventually(one_job, within=30, what="Job once the secret exists")
    env_vars = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env_vars == [
        {"name": "STORAGE_CONFIG", "valueFrom": {"secretKeyRef": {"name": "storage-config", "key": "hf"}}}
    ]
    assert "INTEGRATIONSECRET" not in json.dumps(job) + json.dumps(await env.status())


async def test_gc_deletes_only_our_orphaned_folders_after_grace(env: Env) -> None:
    await env.create_lmn(env.entry("m1"), env.entry("b", URI_B))
    env.write_model()
    orphan_to_be = env.write_model(URI_B)
    foreign = env.root / "models" / "lost+found"
    foreign.mkdir()
    await env.start(gc_grace_seconds=2.0)

    async def both_downloaded() -> bool:
        s = (await env.status()).get("modelStatus") or {}
        return s == {"m1": "ModelDownloaded", "b": "ModelDownloaded"}

    await eventually(both_downloaded, within=30, what="both models downloaded from their markers")
    assert await env.jobs() == []
    await env.set_spec(env.entry("m1"))
    removed_at = asyncio.get_running_loop().time()

    async def gone() -> bool:
        return not orphan_to_be.exists()

    await eventually(gone, within=30, what="orphan deleted")
    # Not before the grace period (less a margin: the timer may start a moment before removed_at).
    assert asyncio.get_running_loop().time() - removed_at >= 1.9
    assert foreign.exists() and (env.root / "models" / storage_key(URI)).exists()
    await eventually(only_m1_for(env), within=30, what="the removed entry's status dropped")


async def test_job_of_a_removed_entry_is_deleted(env: Env) -> None:
    await env.create_lmn(env.entry("m1"), env.entry("b", URI_B))
    await env.start()

    async def two_jobs() -> list[dict[str, Any]]:
        jobs = await env.jobs()
        return jobs if len(jobs) == 2 else []

    jobs = await eventually(two_jobs, within=30, what="two Jobs")
    keep = next(j for j in jobs if j["spec"]["template"]["spec"]["containers"][0]["args"][0] == URI)
    await env.set_spec(env.entry("m1"))

    async def only_kept() -> bool:
        names = [j["metadata"]["name"] for j in await env.jobs()]
        return names == [keep["metadata"]["name"]]

    await eventually(only_kept, within=30, what="the removed entry's Job deleted")
    await eventually(only_m1_for(env), within=30, what="the removed entry's status dropped")
