"""The node simulator against the real kube-apiserver and kube-controller-manager's Job controller:
a hand-made download Job runs the real download program on a simulated node and becomes Complete, and
an unknown image fails its pod with a clear reason."""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import (
    JOBS,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    SECRETS,
    Resource,
)
from localcache.testing.httpsource import HttpFileServer
from localcache.testing.nodesim import GPU_LABEL, NodeSimulator, temp_root
from localcache.testing.wait import eventually

pytestmark = pytest.mark.timeout(180)

MARKER = ".localcache-complete.json"


@pytest.fixture
async def client(api_client: Any) -> Client:
    return Client(api_client)


@pytest.fixture
async def sim(client: Client, namespace: str, cluster: Any) -> AsyncIterator[NodeSimulator]:
    if cluster.plane is None or not cluster.plane.has_controller_manager:
        pytest.skip("the node simulator needs envtest's kube-controller-manager (Job controller)")
    root = temp_root()
    simulator = NodeSimulator(client, root, namespaces=[namespace])
    async with simulator:
        yield simulator
    for name in list(simulator.nodes):
        await client.delete(NODES, name, missing_ok=True)


async def _local_pv(client: Client, name: str, node: str, claim_ns: str) -> None:
    await client.create(
        PERSISTENT_VOLUMES,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-storage",
                "local": {"path": "/mnt/models"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": GPU_LABEL, "operator": "In", "values": ["A100"]}]}
                        ]
                    }
                },
            },
        },
    )
    await client.create(
        PERSISTENT_VOLUME_CLAIMS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": claim_ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-storage",
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": name,
            },
        },
    )


def _download_job(name: str, node: str, image: str, uri: str, claim: str, key: str) -> dict[str, Any]:
    """The Job the agent builds (reference §3.4), by hand."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "securityContext": {"fsGroup": 1000},
                    "containers": [
                        {
                            "name": "kserve-localmodel-download",
                            "image": image,
                            "args": [uri, "/mnt/models"],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "env": [
                                {
                                    "name": "HF_TOKEN",
                                    "valueFrom": {"secretKeyRef": {"name": "tok", "key": "HF_TOKEN"}},
                                },
                                {
                                    "name": "MY_NODE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                },
                            ],
                            "volumeMounts": [
                                {
                                    "name": "kserve-pvc-source",
                                    "mountPath": "/mnt/models",
                                    "subPath": f"models/{key}",
                                }
                            ],
                        }
                    ],
                    "volumes": [{"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": claim}}],
                }
            },
        },
    }


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _condition(job: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


async def test_download_job_runs_on_its_node_and_completes(
    sim: NodeSimulator, client: Client, namespace: str, tmp_path: Path
) -> None:
    payload = secrets.token_bytes(3 * 1024 * 1024 + 17)
    (tmp_path / "model.bin").write_bytes(payload)
    suffix = namespace[2:]
    gpu = await sim.add_node(f"gpu-{suffix}", {GPU_LABEL: "A100"}, host_paths=["/mnt/models"])
    other = await sim.add_node(f"cpu-{suffix}", host_paths=["/mnt/models"])
    node = await client.get(NODES, gpu.name)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["metadata"]["labels"][GPU_LABEL] == "A100"
    await client.create(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tok"},
            "stringData": {"HF_TOKEN": "t0k"},
        },
        namespace,
    )
    pv = f"pv-{suffix}"
    await _local_pv(client, pv, gpu.name, namespace)

    async with HttpFileServer(tmp_path) as http:
        job = _download_job(
            "dl", gpu.name, "kserve/storage-initializer:latest", f"{http.url}/model.bin", pv, "k1"
        )
        await client.create(JOBS, job, namespace)

        async def complete() -> dict[str, Any] | None:
            current = await client.get(JOBS, "dl", namespace)
            assert not _condition(current, "Failed"), f"job failed: {current.get('status')}"
            return current if _condition(current, "Complete") else None

        await eventually(complete, within=90, interval=0.2, what="download Job Complete")

    dest = gpu.host_path("/mnt/models") / "models" / "k1"
    assert (dest / "model.bin").read_bytes() == payload
    marker = json.loads((dest / MARKER).read_text())
    assert [f["path"] for f in marker["files"]] == ["model.bin"]
    assert hashlib.sha256(payload).hexdigest() in json.dumps(marker)
    assert not (other.host_path("/mnt/models") / "models").exists(), "written on the wrong node"

    (run,) = sim.runs_for_job("dl", namespace)
    assert run.node == gpu.name and run.exit_code == 0
    assert str(dest) in run.argv, run.argv
    assert run.peak_rss_bytes > 10 * 1024 * 1024  # a python process was measured
    pvc = await client.get(PERSISTENT_VOLUME_CLAIMS, pv, namespace)
    assert pvc["status"]["phase"] == "Bound"
    pods = (await client.list(PODS, namespace, label_selector="batch.kubernetes.io/job-name=dl"))["items"]
    assert pods[0]["spec"]["nodeName"] == gpu.name
    assert pods[0]["status"]["phase"] == "Succeeded"
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    await client.delete(PERSISTENT_VOLUMES, pv, missing_ok=True)


async def test_unknown_image_fails_the_pod_with_a_clear_reason(
    sim: NodeSimulator, client: Client, namespace: str
) -> None:
    node = await sim.add_node(f"n-{namespace[2:]}", host_paths=["/mnt/models"])
    job = _download_job("bad", node.name, "example.com/no-such-image:1", "hf://a/b", "none", "k")
    job["spec"]["template"]["spec"]["volumes"] = [{"name": "kserve-pvc-source", "emptyDir": {}}]
    await client.create(JOBS, job, namespace)

    async def failed_pod() -> dict[str, Any] | None:
        pods = (await client.list(PODS, namespace, label_selector="batch.kubernetes.io/job-name=bad"))[
            "items"
        ]
        return next((p for p in pods if p["status"].get("phase") == "Failed"), None)

    pod = await eventually(failed_pod, within=60, interval=0.2, what="pod of the bad image Failed")
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"
    assert "example.com/no-such-image:1" in waiting["message"]
    assert "no local program" in waiting["message"]

    async def job_failed() -> bool:
        return _condition(await client.get(JOBS, "bad", namespace), "Failed")

    await eventually(job_failed, within=60, interval=0.2, what="Job Failed after backoffLimit 0")


async def test_deleting_a_running_job_kills_its_process(
    sim: NodeSimulator, client: Client, namespace: str
) -> None:
    sim.images["sim/shell"] = None
    node = await sim.add_node(f"s-{namespace[2:]}")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sleeper"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeName": node.name,
                    "containers": [{"name": "c", "image": "sim/shell", "command": ["sleep", "300"]}],
                }
            },
        },
    }
    await client.create(JOBS, job, namespace)

    async def running() -> Any:
        runs = sim.runs_for_job("sleeper", namespace)
        return runs[0] if runs and runs[0].pids and runs[0].phase == "Running" else None

    run = await eventually(running, within=60, interval=0.1, what="sleeper running")
    pid = run.pids[0]
    await client.delete(JOBS, "sleeper", namespace, propagation_policy="Background")

    async def gone() -> bool:
        pods = (await client.list(PODS, namespace, label_selector="batch.kubernetes.io/job-name=sleeper"))[
            "items"
        ]
        return not pods and not _alive(pid)

    await eventually(gone, within=60, interval=0.2, what="pod deleted and its process gone")
    with pytest.raises(errors.NotFound):
        await client.get(JOBS, "sleeper", namespace)


def _shell_job(name: str, node: str, command: list[str], **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "securityContext": {"runAsUser": 0},
                    "containers": [{"name": "c", "image": "sim/shell", "command": command, **container}],
                    "volumes": [
                        {"name": "data", "hostPath": {"path": "/var/data", "type": "DirectoryOrCreate"}},
                        {"name": "creds", "secret": {"secretName": "creds"}},
                    ],
                }
            },
        },
    }


async def _job_condition(client: Client, name: str, namespace: str, kind: str) -> None:
    async def reached() -> bool:
        job = await client.get(JOBS, name, namespace)
        other = "Failed" if kind == "Complete" else "Complete"
        assert not _condition(job, other), f"Job {name} is {other}: {job.get('status')}"
        return _condition(job, kind)

    await eventually(reached, within=60, interval=0.2, what=f"Job {name} {kind}")


async def test_env_and_volumes_from_the_api_and_a_not_ready_node(
    sim: NodeSimulator, client: Client, namespace: str
) -> None:
    sim.images["sim/shell"] = None
    node = await sim.add_node(f"r-{namespace[2:]}", ready=False)
    await client.create(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"token": "s3cr3t"},
        },
        namespace,
    )
    await client.create(
        Resource("", "v1", "configmaps", "ConfigMap", True),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}},
        namespace,
    )
    # Paths reach the process mapped when they are whole arguments (or env values), as here.
    script = 'echo "$GREETING $POD $(cat "$2/token")" > "$1/out.txt"'
    job = _shell_job(
        "envjob",
        node.name,
        ["sh", "-c", script, "sh", "/data", "/creds"],
        env=[
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        volumeMounts=[{"name": "data", "mountPath": "/data"}, {"name": "creds", "mountPath": "/creds"}],
    )
    await client.create(JOBS, job, namespace)

    async def unschedulable() -> str | None:
        pods = (await client.list(PODS, namespace, label_selector="batch.kubernetes.io/job-name=envjob"))[
            "items"
        ]
        for pod in pods:
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return str(c.get("message"))
        return None

    message = await eventually(unschedulable, within=60, interval=0.2, what="pod Pending on a NotReady node")
    assert "unreachable" in message
    assert not sim.runs_for_job("envjob", namespace), "a NotReady node ran a pod"

    await sim.set_ready(node.name, True)
    await _job_condition(client, "envjob", namespace, "Complete")
    (run,) = sim.runs_for_job("envjob", namespace)
    out = (node.host_path("/var/data") / "out.txt").read_text().split()
    assert out == ["hello", run.name, "s3cr3t"]


async def test_memory_limit_kills_with_oomkilled(sim: NodeSimulator, client: Client, namespace: str) -> None:
    sim.images["sim/shell"] = None
    node = await sim.add_node(f"m-{namespace[2:]}")
    hog = "import time; x = bytearray(400 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)"
    job = _shell_job("hog", node.name, [sys.executable, "-c", hog], resources={"limits": {"memory": "100Mi"}})
    job["spec"]["template"]["spec"]["volumes"] = []
    await client.create(JOBS, job, namespace)
    await _job_condition(client, "hog", namespace, "Failed")
    (run,) = sim.runs_for_job("hog", namespace)
    assert run.reason == "OOMKilled" and run.exit_code == 137
    assert run.peak_rss_bytes > 100 * 1024 * 1024
    pods = (await client.list(PODS, namespace, label_selector="batch.kubernetes.io/job-name=hog"))["items"]
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137


async def test_deleting_a_node_kills_and_removes_its_pods(
    sim: NodeSimulator, client: Client, namespace: str
) -> None:
    sim.images["sim/shell"] = None
    node = await sim.add_node(f"d-{namespace[2:]}")
    job = _shell_job("longrun", node.name, ["sleep", "300"])
    job["spec"]["template"]["spec"]["volumes"] = []
    await client.create(JOBS, job, namespace)

    async def running() -> Any:
        runs = sim.runs_for_job("longrun", namespace)
        return runs[0] if runs and runs[0].pids and runs[0].phase == "Running" else None

    run = await eventually(running, within=60, interval=0.1, what="longrun running")
    await sim.delete_node(node.name)
    assert not _alive(run.pids[0])
    with pytest.raises(errors.NotFound):
        await client.get(NODES, node.name)

    async def pod_gone() -> bool:  # the Job controller removes its tracking finalizer, then it is gone
        try:
            await client.get(PODS, run.name, namespace)
        except errors.NotFound:
            return True
        return False

    await eventually(pod_gone, within=30, interval=0.2, what="pod of the deleted node removed")


async def test_job_active_deadline_stops_the_process(
    sim: NodeSimulator, client: Client, namespace: str
) -> None:
    """The real Job controller enforces activeDeadlineSeconds by deleting the pod; the simulated kubelet
    must stop the process for it."""
    sim.images["sim/shell"] = None
    node = await sim.add_node(f"a-{namespace[2:]}")
    job = _shell_job("deadline", node.name, ["sleep", "300"])
    job["spec"]["template"]["spec"]["volumes"] = []
    job["spec"]["activeDeadlineSeconds"] = 3
    await client.create(JOBS, job, namespace)
    await _job_condition(client, "deadline", namespace, "Failed")
    reasons = [
        c.get("reason") for c in (await client.get(JOBS, "deadline", namespace))["status"]["conditions"]
    ]
    assert "DeadlineExceeded" in reasons, reasons
    (run,) = sim.runs_for_job("deadline", namespace)

    async def stopped() -> bool:
        return run.done.is_set() and not any(_alive(pid) for pid in run.pids)

    await eventually(stopped, within=30, interval=0.2, what="the deadline-exceeded pod's process stopped")
