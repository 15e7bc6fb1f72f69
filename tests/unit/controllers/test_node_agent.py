"""The agent's reconcile, against an in-memory client and cache, in virtual time.

The state machine: marker or not, crossed with Job absent / running / complete / failed; dedup by
storage key; no duplicate Job while the informer lags; retry with exponential backoff and the
failure reason in status; Jobs of removed entries deleted; status written only when it changed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from localcache.api import storage_key
from localcache.controllers.node import (
    LOCAL_MODEL_NODES,
    NODE_GROUPS,
    STORAGE_READY,
    AgentOptions,
    NodeAgent,
)
from localcache.runtime import Invalid
from localcache.runtime.clock import FakeClock
from localcache.runtime.reconcile import Request
from localcache.runtime.resources import CONFIGMAPS, JOBS, NODES, PODS, SECRETS
from localcache.storage.marker import Marker, MarkerFile, write_marker
from tests.unit.controllers.test_node_fakes import FakeCache, FakeClient

NODE = "node-a"
JOB_NS = "models-jobs"
HOST_PATH = "/models"
URI = "hf://org/model-a"
URI_B = "s3://bucket/model-b"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def group(name: str = "gpu", path: str = HOST_PATH) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": name},
        "spec": {
            "storageLimit": "100Gi",
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "100Gi"},
                "local": {"path": path},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
                        ]
                    }
                },
            },
            "persistentVolumeClaimSpec": {"accessModes": ["ReadWriteOnce"]},
        },
    }


def entry(name: str, uri: str = URI, **extra: Any) -> dict[str, Any]:
    return {"sourceModelUri": uri, "modelName": name, "nodeGroup": "gpu", **extra}


@dataclass
class World:
    clock: FakeClock
    client: FakeClient
    cache: FakeCache
    agent: NodeAgent
    root: Path

    async def reconcile(self, *, sync: bool = True) -> Any:
        if sync:
            self.cache.sync()
        return await self.agent.reconcile(Request("", NODE))

    def lmn(self) -> dict[str, Any]:
        return self.client.objects[("localmodelnodes", "", NODE)]

    def status(self, key: str) -> str:
        return self.lmn()["status"]["modelStatus"][key]

    def detail(self, key: str) -> dict[str, Any]:
        return self.lmn()["status"]["modelStatusDetails"][key]

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.lmn()["status"]["conditions"] if c["type"] == type_)

    def jobs(self) -> list[dict[str, Any]]:
        return self.client.items(JOBS, JOB_NS)

    def set_spec(self, *entries: dict[str, Any]) -> None:
        obj = self.lmn()
        obj["spec"]["localModels"] = list(entries)
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1

    def set_job_condition(self, job: dict[str, Any], type_: str, message: str = "", reason: str = "") -> None:
        stored = self.client.objects[("jobs", JOB_NS, job["metadata"]["name"])]
        cond = {"type": type_, "status": "True", "lastTransitionTime": ts(self.clock.now())}
        if message:
            cond["message"] = message
        if reason:
            cond["reason"] = reason
        status = stored.setdefault("status", {})
        status.setdefault("conditions", []).append(cond)
        if type_ == "Complete":
            status["succeeded"] = 1
        elif type_ == "Failed":
            status["failed"] = 1
        status.pop("active", None)

    def set_job_running(self, job: dict[str, Any]) -> None:
        stored = self.client.objects[("jobs", JOB_NS, job["metadata"]["name"])]
        stored["status"] = {"active": 1, "ready": 1, "startTime": ts(self.clock.now())}

    def write_model(
        self, uri: str = URI, files: dict[str, bytes] | None = None, *, marker: bool = True
    ) -> Path:
        folder = self.root / "models" / storage_key(uri)
        folder.mkdir(parents=True, exist_ok=True)
        files = files if files is not None else {"config.json": b"{}", "model.safetensors": b"x" * 1000}
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if marker:
            now = self.clock.now()
            write_marker(
                folder,
                Marker(
                    uri=uri,
                    files=[MarkerFile(path=n, size=len(d), digests={}) for n, d in files.items()],
                    total_bytes=sum(len(d) for d in files.values()),
                    started_at=now - timedelta(seconds=42),
                    completed_at=now,
                    duration_s=42.0,
                ),
                fsync=False,
            )
        return folder


def make_world(tmp_path: Path, *entries: dict[str, Any], host_path: str = HOST_PATH, **opts: Any) -> World:
    clock = FakeClock(start=T0)
    client = FakeClient(clock)
    client.put(
        CONFIGMAPS,
        {
            "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
            "data": {
                "localModel": json.dumps(
                    {"jobNamespace": JOB_NS, "fsGroup": 1000, "jobTTLSecondsAfterFinished": 600}
                ),
                "storageInitializer": json.dumps({"image": "example.com/localcache-download:1"}),
            },
        },
    )
    client.put(NODES, {"metadata": {"name": NODE, "labels": {"pool": "gpu"}}})
    client.put(NODE_GROUPS, group())
    client.put(
        LOCAL_MODEL_NODES,
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "LocalModelNode",
            "metadata": {"name": NODE, "generation": 1},
            "spec": {"localModels": list(entries)},
        },
    )
    cache = FakeCache(client)
    opts.setdefault("status_min_interval_seconds", 0.0)  # pacing has a test of its own
    options = AgentOptions(node_name=NODE, models_root=tmp_path, host_path=host_path, **opts)
    agent = NodeAgent(client, cache, options, clock=clock)
    return World(clock, client, cache, agent, tmp_path)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_creates_one_job_and_never_a_duplicate_while_the_informer_lags(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    created_before = sample("localcache_agent_download_jobs_created_total")
    await w.reconcile()
    assert sample("localcache_agent_download_jobs_created_total") == created_before + 1
    assert sample("localcache_agent_models", status="ModelDownloadPending") == 1
    assert len(w.jobs()) == 1
    assert w.status("m1") == "ModelDownloadPending"
    # The informer has not seen the Job yet: a reconcile now must not create another.
    await w.reconcile(sync=False)
    await w.reconcile(sync=False)
    assert len(w.client.verbs("create", "jobs")) == 1
    # Once the informer shows it, still one.
    await w.reconcile()
    assert len(w.client.verbs("create", "jobs")) == 1
    assert w.detail("m1")["jobName"] == w.jobs()[0]["metadata"]["name"]


async def test_same_uri_is_one_folder_one_job_and_a_shared_status(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"), entry("m2"), entry("m3", namespace="team"), entry("b", URI_B))
    await w.reconcile()
    jobs = w.jobs()
    assert len(jobs) == 2
    by_key = {j["spec"]["template"]["spec"]["containers"][0]["args"][0]: j for j in jobs}
    assert set(by_key) == {URI, URI_B}
    assert by_key[URI]["metadata"]["labels"]["model"] == "m1"  # the first entry in spec order owns it
    assert {w.status(k) for k in ("m1", "m2", "team/m3")} == {"ModelDownloadPending"}
    assert w.detail("m2")["jobName"] == w.detail("m1")["jobName"]
    assert w.detail("team/m3")["storageKey"] == storage_key(URI)


async def test_marker_means_downloaded_without_any_job(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.write_model()
    await w.reconcile()
    assert w.jobs() == []
    assert w.status("m1") == "ModelDownloaded"
    detail = w.detail("m1")
    assert detail["bytes"] == 1002
    assert detail["completionTime"] == "2026-03-01T12:00:00Z"
    assert w.condition("Ready")["status"] == "True"


async def test_partial_folder_is_not_downloaded_and_is_downloaded_again(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.write_model(marker=False)
    await w.reconcile()
    assert w.status("m1") == "ModelDownloadPending"
    assert len(w.jobs()) == 1


async def test_marker_for_another_uri_does_not_count(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    folder = w.write_model()
    marker = json.loads((folder / ".localcache-complete.json").read_text())
    marker["uri"] = "hf://someone/else"
    (folder / ".localcache-complete.json").write_text(json.dumps(marker))
    await w.reconcile()
    assert w.status("m1") != "ModelDownloaded"


async def test_running_job_reports_downloading_with_rate_limited_bytes(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    job = w.jobs()[0]
    w.set_job_running(job)
    staging = tmp_path / "models" / storage_key(URI) / ".localcache-staging"
    staging.mkdir(parents=True)
    (staging / "part").write_bytes(b"x" * 1000)
    result = await w.reconcile()
    assert w.status("m1") == "ModelDownloading"
    assert w.detail("m1")["bytes"] == 1000
    assert result.requeue_after == pytest.approx(30.0)  # progress while a download runs
    # 10 s later, much more on disk: not published yet (at most every 30 s).
    (staging / "part").write_bytes(b"x" * 5000)
    await w.clock.advance(10)
    await w.reconcile()
    assert w.detail("m1")["bytes"] == 1000
    await w.clock.advance(25)
    await w.reconcile()
    assert w.detail("m1")["bytes"] == 5000
    # A tiny change after another 30 s is below 5 %: not published.
    (staging / "part").write_bytes(b"x" * 5100)
    await w.clock.advance(31)
    await w.reconcile()
    assert w.detail("m1")["bytes"] == 5000


async def test_complete_job_with_marker_is_downloaded(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    job = w.jobs()[0]
    w.write_model()
    w.set_job_condition(job, "Complete")
    await w.reconcile()
    assert w.status("m1") == "ModelDownloaded"
    assert w.client.verbs("delete", "jobs") == []  # left for its TTL


async def test_complete_job_without_marker_is_an_error_then_retried(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    job = w.jobs()[0]
    w.write_model(marker=False)
    w.set_job_condition(job, "Complete")
    await w.reconcile()
    assert w.status("m1") == "ModelDownloadError"
    assert w.detail("m1")["message"].startswith("MarkerMissing")
    await w.clock.advance(61)
    await w.reconcile()
    assert w.client.verbs("delete", "jobs") == [job["metadata"]["name"]]
    assert (
        len(w.jobs()) == 1
        and w.jobs()[0]["metadata"]["annotations"]["localcache.kserve.io/download-attempt"] == "2"
    )


async def test_failed_job_reason_in_status_and_retry_with_exponential_backoff(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"), entry("m2"))
    await w.reconcile()
    first = w.jobs()[0]
    line = (
        "localcache-download error: reason=AuthFailed exit_code=10 message=hf://org/model-a: 401 Unauthorized"
    )
    w.set_job_condition(first, "Failed", message=line, reason="BackoffLimitExceeded")
    failures_before = sample("localcache_agent_download_failures_total", reason="AuthFailed")
    result = await w.reconcile()
    assert sample("localcache_agent_download_failures_total", reason="AuthFailed") == failures_before + 1
    assert w.status("m1") == "ModelDownloadError" and w.status("m2") == "ModelDownloadError"
    message = w.detail("m1")["message"]
    assert message.startswith("AuthFailed: hf://org/model-a: 401 Unauthorized")
    assert "attempt 1" in message and "next attempt at 2026-03-01T12:01:00Z" in message
    assert result.requeue_after == pytest.approx(60.0)
    assert w.condition("Degraded")["status"] == "True"
    # Before the backoff expires nothing is deleted or created.
    await w.clock.advance(59)
    await w.reconcile()
    assert len(w.client.verbs("create", "jobs")) == 1 and w.client.verbs("delete", "jobs") == []
    # After it: the failed Job is deleted (background) and a new one created.
    await w.clock.advance(2)
    await w.reconcile()
    assert w.client.verbs("delete", "jobs") == [first["metadata"]["name"]]
    assert w.client.last_delete_options["propagation_policy"] == "Background"
    second = w.jobs()[0]
    assert second["metadata"]["annotations"]["localcache.kserve.io/download-attempt"] == "2"
    assert w.status("m1") == "ModelDownloadPending"
    assert "previous attempt failed: AuthFailed" in w.detail("m1")["message"]
    w.set_job_running(second)
    await w.reconcile()
    assert w.status("m1") == "ModelDownloading"
    assert "previous attempt failed: AuthFailed" in w.detail("m1")["message"]  # kept while retrying
    # The second failure waits twice as long.
    w.set_job_condition(
        second, "Failed", message="localcache-download error: reason=NotFound exit_code=11 message=gone"
    )
    result = await w.reconcile()
    assert result.requeue_after == pytest.approx(60.0)  # the resync period caps the wait
    assert w.detail("m1")["message"].startswith("NotFound: gone")
    assert "attempt 2; next attempt at 2026-03-01T12:03:01Z" in w.detail("m1")["message"]
    await w.clock.advance(100)
    await w.reconcile()
    assert len(w.client.verbs("create", "jobs")) == 2
    await w.clock.advance(21)
    await w.reconcile()
    assert len(w.client.verbs("create", "jobs")) == 3


async def test_failure_reason_from_the_pods_termination_message(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    job = w.jobs()[0]
    name = job["metadata"]["name"]
    w.set_job_condition(
        job, "Failed", message="Job has reached the specified backoff limit", reason="BackoffLimitExceeded"
    )
    w.client.put(
        PODS,
        {
            "metadata": {
                "name": f"{name}-abcde",
                "namespace": JOB_NS,
                "labels": {"batch.kubernetes.io/job-name": name},
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "kserve-localmodel-download",
                        "state": {
                            "terminated": {
                                "exitCode": 12,
                                "message": "localcache-download error: reason=DiskFull exit_code=12 "
                                "message=no space left on /mnt/models",
                            }
                        },
                    }
                ]
            },
        },
    )
    await w.reconcile()
    assert w.detail("m1")["message"].startswith("DiskFull: no space left on /mnt/models")


async def test_deadline_exceeded_is_a_timeout(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    w.set_job_condition(
        w.jobs()[0],
        "Failed",
        message="Job was active longer than specified deadline",
        reason="DeadlineExceeded",
    )
    await w.reconcile()
    assert w.detail("m1")["message"].startswith("Timeout: ")


async def test_failed_pod_inside_backoff_limit_is_still_downloading(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    stored = w.client.objects[("jobs", JOB_NS, w.jobs()[0]["metadata"]["name"])]
    stored["status"] = {"failed": 1, "active": 1}
    await w.reconcile()
    assert w.status("m1") == "ModelDownloading"
    assert w.client.verbs("delete", "jobs") == []


async def test_jobs_of_removed_entries_are_deleted_and_shared_keys_kept(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"), entry("m2"), entry("b", URI_B))
    await w.reconcile()
    await w.reconcile()
    names = {
        j["spec"]["template"]["spec"]["containers"][0]["args"][0]: j["metadata"]["name"] for j in w.jobs()
    }
    # m1 owned URI's Job; m2 still wants the same folder, so that Job stays. b is gone: its Job goes.
    w.set_spec(entry("m2"))
    await w.reconcile()
    assert w.client.verbs("delete", "jobs") == [names[URI_B]]
    assert set(w.lmn()["status"]["modelStatus"]) == {"m2"}
    await w.reconcile()
    assert len(w.client.verbs("create", "jobs")) == 2


async def test_host_path_mismatch_is_a_condition_and_no_jobs(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"), host_path="/mnt/elsewhere")
    await w.reconcile()
    assert w.jobs() == []
    cond = w.condition(STORAGE_READY)
    assert cond["status"] == "False" and cond["reason"] == "HostPathMismatch"
    assert "/models" in cond["message"] and "/mnt/elsewhere" in cond["message"]
    assert w.condition("Ready")["status"] == "False"
    assert w.status("m1") == "ModelDownloadError"
    assert "HostPathMismatch" in w.detail("m1")["message"]
    # Fixing the group's path lets the agent proceed.
    w.client.put(NODE_GROUPS, group(path="/mnt/elsewhere/"))
    await w.reconcile()
    assert len(w.jobs()) == 1
    assert w.condition(STORAGE_READY)["status"] == "True"


async def test_missing_config_blocks_jobs(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    del w.client.objects[("configmaps", "kserve", "inferenceservice-config")]
    await w.reconcile()
    assert w.jobs() == []
    assert w.condition(STORAGE_READY)["reason"] == "ConfigInvalid"
    assert "kserve/inferenceservice-config" in w.condition(STORAGE_READY)["message"]


async def test_missing_secret_is_a_status_error_and_no_job(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1", storage={"key": "hf-token"}))
    await w.reconcile()
    assert w.jobs() == []
    assert w.status("m1") == "ModelDownloadError"
    message = w.detail("m1")["message"]
    assert "StorageSecretNotFound" in message and f"{JOB_NS}/storage-config" in message
    # Once the secret exists, the next reconcile creates the Job with a reference, never the value.
    w.client.put(
        SECRETS,
        {
            "metadata": {"name": "storage-config", "namespace": JOB_NS},
            "data": {"hf-token": base64.b64encode(b'{"type":"hf","token":"hf_TOPSECRETVALUE"}').decode()},
        },
    )
    await w.reconcile()
    (job,) = w.jobs()
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {
            "name": "STORAGE_CONFIG",
            "valueFrom": {"secretKeyRef": {"name": "storage-config", "key": "hf-token"}},
        }
    ]
    for where in (w.lmn()["status"], job):
        assert "hf_TOPSECRETVALUE" not in json.dumps(where)
        assert w.client.objects[("secrets", JOB_NS, "storage-config")]["data"]["hf-token"] not in json.dumps(
            where
        )


async def test_status_is_written_only_when_it_changes(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.write_model()
    await w.reconcile()
    writes = len(w.client.verbs("patch_status"))
    assert writes == 1
    await w.clock.advance(5)
    await w.reconcile()
    await w.reconcile()
    assert len(w.client.verbs("patch_status")) == writes


async def test_status_write_does_not_race_the_managers_spec_writes(tmp_path: Path) -> None:
    """The status patch carries no resourceVersion: a spec write in between neither fails it nor is lost."""
    w = make_world(tmp_path, entry("m1"))
    w.write_model()
    w.cache.sync()
    key = ("localmodelnodes", "", NODE)
    w.client.objects[key]["spec"]["localModels"].append(entry("m2"))  # the manager, after our read
    w.client.objects[key]["metadata"]["resourceVersion"] = "999"
    await w.agent.reconcile(Request("", NODE))
    assert w.status("m1") == "ModelDownloaded"
    assert len(w.client.verbs("patch_status")) == 1 and w.client.verbs("get") == []
    assert [m["modelName"] for m in w.client.objects[key]["spec"]["localModels"]] == ["m1", "m2"]


async def test_a_refused_job_is_a_download_error_with_the_api_servers_words(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.client.create_errors.append(
        Invalid(
            "Job is invalid",
            reason="Invalid",
            details={"causes": [{"field": "spec.template.spec.containers[0].resources", "message": "bad"}]},
        )
    )
    result = await w.reconcile()
    assert w.status("m1") == "ModelDownloadError"
    detail = w.detail("m1")
    assert detail["reason"] == "JobRejected"
    assert "422 Invalid" in detail["message"] and "containers[0].resources: bad" in detail["message"]
    assert result.requeue_after == 60.0, "tried again after a minute, not at the workqueue's pace"
    assert w.jobs() == []
    await w.clock.advance(60)
    await w.reconcile()
    assert len(w.jobs()) == 1 and w.status("m1") == "ModelDownloadPending", "recovers once accepted"


async def test_status_writes_are_paced_and_the_held_change_goes_out_later(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"), status_min_interval_seconds=1.0)
    w.write_model()
    await w.reconcile()
    assert len(w.client.verbs("patch_status")) == 1
    w.client.objects[("localmodelnodes", "", NODE)]["spec"]["localModels"].append(entry("m2", uri=URI + "-2"))
    result = await w.reconcile()
    assert len(w.client.verbs("patch_status")) == 1, "a second write within the interval is held back"
    assert 0 < result.requeue_after <= 1.0
    await w.clock.advance(1.0)
    await w.reconcile()
    assert len(w.client.verbs("patch_status")) == 2
    assert set(w.lmn()["status"]["modelStatus"]) == {"m1", "m2"}


async def test_other_nodes_requests_are_ignored(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.cache.sync()
    assert await w.agent.reconcile(Request("", "node-b")) is None
    assert w.client.verbs("create") == [] and w.client.verbs("patch_status") == []


async def test_no_jobs_before_the_job_informer_synced(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.cache.informer_for(JOBS, namespace=JOB_NS).synced = False
    result = await w.reconcile()
    assert w.jobs() == [] and result.requeue_after == pytest.approx(1.0)


async def test_orphaned_folder_collected_after_grace_only(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"), gc_grace_seconds=600)
    w.write_model()
    orphan = w.write_model(URI_B)
    foreign = tmp_path / "models" / "not-a-key"
    foreign.mkdir()
    await w.reconcile()
    assert orphan.exists()
    await w.clock.advance(599)
    await w.reconcile()
    assert orphan.exists()
    await w.clock.advance(2)
    await w.reconcile()
    assert not orphan.exists() and foreign.exists()
    assert (tmp_path / "models" / storage_key(URI)).exists()


async def test_backoff_survives_the_failed_job_being_deleted_early(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    first = w.jobs()[0]
    w.set_job_condition(
        first, "Failed", message="localcache-download error: reason=Timeout exit_code=14 message=stall"
    )
    await w.reconcile()
    # Its TTL (or a person) deletes the failed Job long before the retry is due.
    del w.client.objects[("jobs", JOB_NS, first["metadata"]["name"])]
    await w.clock.advance(10)
    await w.reconcile()
    assert len(w.client.verbs("create", "jobs")) == 1
    assert w.status("m1") == "ModelDownloadError" and w.detail("m1")["message"].startswith("Timeout: stall")
    await w.clock.advance(51)
    await w.reconcile()
    (second,) = w.jobs()
    assert second["metadata"]["annotations"]["localcache.kserve.io/download-attempt"] == "2"
    assert "previous attempt failed: Timeout: stall" in w.detail("m1")["message"]


async def test_writability_is_checked_again_when_the_config_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localcache.controllers import hostpath

    w = make_world(tmp_path)
    await w.reconcile()
    assert w.condition(STORAGE_READY)["status"] == "True"
    calls: list[Path] = []

    def unwritable(root: Path, host: str) -> hostpath.PreflightResult:
        calls.append(root)
        return hostpath.PreflightResult(False, "StorageNotWritable", f"{root} is not writable (test)")

    monkeypatch.setattr(hostpath, "check_writable", unwritable)
    w.set_spec(entry("m1"))
    await w.reconcile()
    assert calls == [] and len(w.jobs()) == 1  # nothing changed that could affect the check
    cm = w.client.objects[("configmaps", "kserve", "inferenceservice-config")]
    w.client.put(CONFIGMAPS, cm)  # any change to the ConfigMap (new resourceVersion)
    w.set_spec(entry("m1"), entry("b", URI_B))
    await w.reconcile()
    assert calls == [tmp_path]
    cond = w.condition(STORAGE_READY)
    assert cond["status"] == "False" and cond["reason"] == "StorageNotWritable"
    assert len(w.jobs()) == 1 and w.status("b") == "ModelDownloadError"


async def test_a_stuck_pending_job_says_why(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    name = w.jobs()[0]["metadata"]["name"]
    w.client.put(
        PODS,
        {
            "metadata": {
                "name": f"{name}-x1",
                "namespace": JOB_NS,
                "labels": {"batch.kubernetes.io/job-name": name},
            },
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: true}.",
                    }
                ],
            },
        },
    )
    await w.reconcile()
    assert "Unschedulable" not in w.detail("m1")["message"]  # young Jobs are left alone
    assert w.client.verbs("list", "pods") == []
    await w.clock.advance(61)
    await w.reconcile()
    assert w.status("m1") == "ModelDownloadPending"
    assert "pod Unschedulable: 0/3 nodes are available" in w.detail("m1")["message"]
    await w.clock.advance(5)
    await w.reconcile()
    assert len(w.client.verbs("list", "pods")) == 1  # looked up at most once per progress interval
