"""The guide's troubleshooting section, each bullet provoked on purpose and then fixed as the guide says:

- duplicate download Jobs from a host-path mismatch → the agent refuses with a condition naming both
  paths, creates no Job, and downloads once the paths agree;
- permission denied on the host directory → a condition naming the owner and mode, then the guide's
  ``chown 1000:1000`` fixes it;
- ``Init:OOMKilled`` → a download process over its limit is killed, and raising the limit in the
  ClusterStorageContainer fixes it; within a sane limit a download's memory stays bounded;
- a failed download (missing file, or a source answering 5xx) recovers by itself once the source is fixed;
- after a swap from KServe, the models it left on the disks are verified in place, not downloaded again.

These need the local system (node disks, process memory, sources we can break): on an existing cluster
they are skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from localcache.runtime.resources import PODS
from localcache.testing.httpsource import Fault
from localcache.testing.system import (
    CLUSTER_STORAGE_CONTAINERS,
    JOB_NAMESPACE,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NODES,
    NODE_GROUP,
    LocalSystem,
    NodeSpec,
)
from localcache.testing.wait import eventually

from .conftest import E2E, no_new_jobs_for, storage_key

pytestmark = pytest.mark.timeout(240)

MiB = 1024 * 1024
GROUP_LABEL = "localcache.e2e/group"
#: Download containers for http:// sources: the guide's ClusterStorageContainer shape (07), with a memory
#: limit the simulator enforces and one in-program retry so a broken source fails fast.
HTTP_CSC = "e2e-http"
HTTP_LIMIT = "192Mi"
#: A second container for http://localhost sources with a limit no Python process fits in.
OOM_CSC = "e2e-oom"


@pytest.fixture(scope="module")
async def system(guide_base: E2E) -> AsyncIterator[LocalSystem]:
    system = guide_base.require_simulator("the troubleshooting scenarios break local disks and sources")
    await guide_base.apply([_csc(HTTP_CSC, "http://127.0.0.1", HTTP_LIMIT)])
    yield system
    assert system.client is not None
    await system.client.delete(CLUSTER_STORAGE_CONTAINERS, HTTP_CSC, missing_ok=True)


def _csc(name: str, prefix: str, memory_limit: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterStorageContainer",
        "metadata": {"name": name},
        "spec": {
            "container": {
                "name": "storage-initializer",
                "image": "kserve/storage-initializer:latest",
                "env": [{"name": "LOCALCACHE_RETRIES", "value": "1"}],
                "resources": {
                    "requests": {"memory": "16Mi", "cpu": "100m"},
                    "limits": {"memory": memory_limit, "cpu": "1"},
                },
            },
            "supportedUriFormats": [{"prefix": prefix}],
            "workloadType": "localModelDownloadJob",
        },
    }


def _node_group(name: str, label_value: str, path: str = "/mnt/models") -> dict[str, Any]:
    """The guide's 08 for a group of one test node."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": name},
        "spec": {
            "storageLimit": "10Gi",
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "local-storage",
                "volumeMode": "Filesystem",
            },
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Filesystem",
                "capacity": {"storage": "10Gi"},
                "local": {"path": path},
                "storageClassName": "local-storage",
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": GROUP_LABEL, "operator": "In", "values": [label_value]}
                                ]
                            }
                        ]
                    }
                },
            },
        },
    }


def _cache(name: str, uri: str, group: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": "300Mi", "nodeGroups": [group]},
    }


def _serve(system: LocalSystem, rel: str, size: int) -> str:
    path = system.http_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(secrets.token_bytes(size))
    return f"{system.http.url}/{rel}"


async def _storage_condition(e2e: E2E, node: str, reason: str) -> dict[str, Any]:
    async def condition() -> dict[str, Any] | None:
        lmn = await e2e.get(LOCAL_MODEL_NODES, node) or {}
        for c in (lmn.get("status") or {}).get("conditions") or []:
            if c.get("type") == "StorageReady" and c.get("status") == "False" and c.get("reason") == reason:
                return c
        return None

    try:
        return await eventually(
            condition, within=60, interval=0.3, what=f"StorageReady=False/{reason} on {node}"
        )
    except AssertionError:
        lmn = await e2e.get(LOCAL_MODEL_NODES, node) or {}
        raise AssertionError(
            f"{node}: no StorageReady=False/{reason}; status={lmn.get('status')}\n{e2e.diagnostics()}"
        ) from None


async def _node_status(e2e: E2E, cache: str, node: str, wanted: str, within: float = 90) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        obj = await e2e.get(LOCAL_MODEL_CACHES, cache) or {}
        status = obj.get("status") or {}
        return obj if (status.get("nodeStatus") or {}).get(node) == wanted else None

    try:
        return await eventually(reached, within=within, interval=0.3, what=f"{cache} {wanted} on {node}")
    except AssertionError:
        obj = await e2e.get(LOCAL_MODEL_CACHES, cache) or {}
        raise AssertionError(
            f"{cache}: {node} never {wanted}; status={obj.get('status')}\n{e2e.diagnostics()}"
        ) from None


async def _cleanup_cache(e2e: E2E, name: str) -> None:
    await e2e.client.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def test_host_path_mismatch_is_reported_and_creates_no_jobs(e2e: E2E, system: LocalSystem) -> None:
    # The guide's warning: the group's local.path is /mnt/models, the agent's DaemonSet mounts /models
    # (the kustomize default). KServe would create download Jobs forever.
    node = "ts-mismatch"
    spec = NodeSpec(node, {GROUP_LABEL: "mismatch"}, agent_host_path="/models", mount_host_path="/models")
    await system.add_node(spec)
    await e2e.apply([_node_group("ts-mismatch", "mismatch")])
    uri = _serve(system, "ts/mismatch.bin", 2 * MiB)
    await e2e.apply([_cache("ts-mismatch-model", uri, "ts-mismatch")])

    condition = await _storage_condition(e2e, node, "HostPathMismatch")
    assert "/mnt/models" in condition["message"] and "/models" in condition["message"]
    assert "ts-mismatch" in condition["message"], "the message should name the node group"
    await no_new_jobs_for(e2e, "ts-mismatch-model", 3.0)

    # The fix the guide gives: make the DaemonSet's hostPath and local.path agree.
    system.node_specs[node] = dataclasses.replace(
        spec, agent_host_path="/mnt/models", mount_host_path="/mnt/models"
    )
    assert system.sim is not None
    system.sim.prepare_host_path(system.node(node), "/mnt/models", owner=(1000, 1000))
    await system.restart_agent(node)
    await _node_status(e2e, "ts-mismatch-model", node, "NodeDownloaded")
    assert (system.models_dir(node) / storage_key(uri) / "mismatch.bin").is_file()
    assert len(await e2e.jobs("ts-mismatch-model")) == 1, "exactly one download Job, no duplicates"
    await _cleanup_cache(e2e, "ts-mismatch-model")


async def test_permission_problem_is_reported_then_fixed_by_chown(e2e: E2E, system: LocalSystem) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the agent as uid 1000 against a root-owned directory")
    node = "ts-perm"
    # The node's /mnt/models is root-owned 0755: the guide's "group is not 1000" situation.
    await system.add_node(NodeSpec(node, {GROUP_LABEL: "perm"}), owner=None)
    await e2e.apply([_node_group("ts-perm", "perm")])
    uri = _serve(system, "ts/perm.bin", 2 * MiB)
    await e2e.apply([_cache("ts-perm-model", uri, "ts-perm")])

    condition = await _storage_condition(e2e, node, "StorageNotWritable")
    assert "/mnt/models" in condition["message"]
    assert "uid 0" in condition["message"] and "uid 1000" in condition["message"], condition["message"]
    await no_new_jobs_for(e2e, "ts-perm-model", 2.0)

    # sudo chown -R 1000:1000 /mnt/models on the node, then restart its agent.
    host = system.node(node).host_path("/mnt/models")
    for path in [host, *host.rglob("*")]:
        os.chown(path, 1000, 1000)
    await system.restart_agent(node)
    await _node_status(e2e, "ts-perm-model", node, "NodeDownloaded")
    assert (system.models_dir(node) / storage_key(uri) / "perm.bin").stat().st_uid == 1000
    await _cleanup_cache(e2e, "ts-perm-model")


async def test_download_memory_stays_bounded(e2e: E2E, system: LocalSystem) -> None:
    size = 256 * MiB
    from localcache.testing.models import generate_model

    generate_model(system.http_root / "big", shards=1, shard_bytes=size, seed=3)
    uri = f"{system.http.url}/big/model-00001-of-00001.safetensors"
    await e2e.apply([_cache("ts-big", uri, NODE_GROUP)])
    await e2e.wait_copies(LOCAL_MODEL_CACHES, "ts-big", within=180)
    assert system.sim is not None
    for node in e2e.group_nodes:
        (job,) = await e2e.jobs("ts-big", node)
        (run,) = system.sim.runs_for_job(job["metadata"]["name"], JOB_NAMESPACE)
        assert run.exit_code == 0 and run.reason == "Completed"
        assert run.memory_limit_bytes == 192 * MiB, "the ClusterStorageContainer's limit reached the pod"
        # The whole 256 MiB file went through a process whose peak RSS stayed well below it.
        assert 20 * MiB < run.peak_rss_bytes < size // 2, (
            f"{node}: peak RSS {run.peak_rss_bytes / MiB:.0f} MiB"
        )
        path = system.models_dir(node) / storage_key(uri) / "model-00001-of-00001.safetensors"
        assert path.stat().st_size == size
    await _cleanup_cache(e2e, "ts-big")


async def test_oom_killed_download_then_higher_limit_fixes_it(e2e: E2E, system: LocalSystem) -> None:
    await e2e.apply([_csc(OOM_CSC, "http://localhost", "24Mi")])
    try:
        _serve(system, "ts/oom.bin", 4 * MiB)
        uri = f"http://localhost:{system.http.port}/ts/oom.bin"
        await e2e.apply([_cache("ts-oom", uri, NODE_GROUP)])
        node = e2e.group_nodes[0]
        await _node_status(e2e, "ts-oom", node, "NodeDownloadError")
        pods = (await e2e.client.list(PODS, JOB_NAMESPACE, label_selector=f"model=ts-oom,node={node}"))[
            "items"
        ]
        reasons = {
            (cs.get("state") or {}).get("terminated", {}).get("reason")
            for p in pods
            for cs in (p.get("status") or {}).get("containerStatuses") or []
        }
        assert "OOMKilled" in reasons, reasons
        # "You can try increasing the memory limits in the ClusterStorageContainer."
        await e2e.apply([_csc(OOM_CSC, "http://localhost", "256Mi")])
        for node in e2e.group_nodes:
            await _node_status(e2e, "ts-oom", node, "NodeDownloaded", within=120)
    finally:
        await e2e.client.delete(CLUSTER_STORAGE_CONTAINERS, OOM_CSC, missing_ok=True)
        await _cleanup_cache(e2e, "ts-oom")


async def test_missing_file_download_recovers_once_the_file_exists(e2e: E2E, system: LocalSystem) -> None:
    uri = f"{system.http.url}/late/model.bin"
    await e2e.apply([_cache("ts-late", uri, NODE_GROUP)])
    for node in e2e.group_nodes:
        obj = await _node_status(e2e, "ts-late", node, "NodeDownloadError")
    details = (obj["status"].get("nodeStatusDetails") or {}).get(e2e.group_nodes[-1], {})
    assert "not found" in str(details.get("message", "")).lower() or "404" in str(details), details
    # The source is fixed: nobody touches the cluster, the agent retries by itself.
    _serve(system, "late/model.bin", 1 * MiB)
    await e2e.wait_copies(LOCAL_MODEL_CACHES, "ts-late", within=120)
    await _cleanup_cache(e2e, "ts-late")


async def test_source_5xx_download_recovers_once_the_source_is_healthy(e2e: E2E, system: LocalSystem) -> None:
    uri = _serve(system, "flaky/model.bin", 1 * MiB)
    system.http.faults["flaky/model.bin"] = Fault(kind="status", status=503)
    try:
        await e2e.apply([_cache("ts-flaky", uri, NODE_GROUP)])
        for node in e2e.group_nodes:
            await _node_status(e2e, "ts-flaky", node, "NodeDownloadError")
        assert system.http.requests["flaky/model.bin"] >= len(e2e.group_nodes)
    finally:
        system.http.faults.pop("flaky/model.bin", None)
    await e2e.wait_copies(LOCAL_MODEL_CACHES, "ts-flaky", within=120)
    await _cleanup_cache(e2e, "ts-flaky")


async def test_models_kserve_left_on_the_disks_are_verified_not_downloaded_again(
    e2e: E2E, system: LocalSystem
) -> None:
    # A swap from KServe: every node already holds the model in its storage-key folder, as KServe's
    # storage-initializer wrote it (the file, owned by 1000:1000, and no completion marker of ours).
    uri = _serve(system, "kserve/model.bin", 3 * MiB)
    data = (system.http_root / "kserve" / "model.bin").read_bytes()
    for node in e2e.group_nodes:
        folder = system.models_dir(node) / storage_key(uri)
        folder.mkdir(parents=True)
        (folder / "model.bin").write_bytes(data)
        if os.geteuid() == 0:
            for path in (system.models_dir(node), folder, folder / "model.bin"):
                os.chown(path, 1000, 1000)
    system.http.bytes_sent.clear()
    await e2e.apply([_cache("ts-kserve", uri, NODE_GROUP)])
    await e2e.wait_copies(LOCAL_MODEL_CACHES, "ts-kserve", within=120)
    for node in e2e.group_nodes:
        assert len(await e2e.jobs("ts-kserve", node)) == 1, "one Job per node checks the folder"
        folder = system.models_dir(node) / storage_key(uri)
        assert (folder / ".localcache-complete.json").is_file()
        assert (folder / "model.bin").read_bytes() == data
    assert system.http.bytes_sent["kserve/model.bin"] == 0, "no byte of the model was fetched again"
    await _cleanup_cache(e2e, "ts-kserve")
