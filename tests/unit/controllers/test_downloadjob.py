"""The download Job's shape, field by field (reference §3.4 and §9.1-12)."""

from __future__ import annotations

import json
from typing import Any

from localcache.api import ClusterStorageContainer, LocalModelInfo, storage_key
from localcache.config import parse_config
from localcache.controllers.credentials import CredentialInjection
from localcache.controllers.downloadjob import (
    JobOptions,
    build_download_job,
    job_attempt,
    job_storage_key,
)

URI = "hf://meta-llama/Llama-3.1-8B"


def config(**local_model: Any) -> Any:
    data = {"localModel": json.dumps({"jobNamespace": "jobs", **local_model})}
    data["storageInitializer"] = json.dumps(
        {"image": "registry.example/localcache-download:v1", "memoryLimit": "1Gi", "cpuRequest": "100m"}
    )
    return parse_config(data)


def build(info: LocalModelInfo | None = None, **kw: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "info": info or LocalModelInfo(source_model_uri=URI, model_name="llama", node_group="gpu"),
        "node_name": "worker-1",
        "node_uid": "uid-worker-1",
        "job_namespace": "jobs",
        "pvc_name": "llama-gpu",
        "config": config(fsGroup=1000, jobTTLSecondsAfterFinished=900),
    }
    kwargs.update(kw)
    return build_download_job(**kwargs)


def test_every_field_of_the_default_job() -> None:
    job = build()
    meta = job["metadata"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert meta["generateName"] == "llama-worker-1"
    assert "name" not in meta
    assert meta["namespace"] == "jobs"
    assert meta["labels"] == {"model": "llama", "node": "worker-1"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "LocalModelNode",
            "name": "worker-1",
            "uid": "uid-worker-1",
            "controller": True,
        }
    ]
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] == 900
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 6 * 3600
    template = spec["template"]
    assert template["metadata"]["labels"] == {"model": "llama", "node": "worker-1"}
    pod = template["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "worker-1"}
    assert "nodeName" not in pod  # §5502: the scheduler must place it
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {"fsGroup": 1000}
    assert "tolerations" not in pod and "serviceAccountName" not in pod
    assert pod["volumes"] == [
        {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": "llama-gpu"}}
    ]
    (container,) = pod["containers"]
    assert container["name"] == "kserve-localmodel-download"
    assert container["image"] == "registry.example/localcache-download:v1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["args"] == [URI, "/mnt/models"]
    assert container["volumeMounts"] == [
        {
            "name": "kserve-pvc-source",
            "mountPath": "/mnt/models",
            "readOnly": False,
            "subPath": f"models/{storage_key(URI)}",
        }
    ]
    assert container["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}
    assert "env" not in container
    assert job_storage_key(job) == storage_key(URI)
    assert job_attempt(job) == 1


def test_namespace_cache_labels_and_no_fs_group_when_unset() -> None:
    info = LocalModelInfo(source_model_uri=URI, model_name="llama", namespace="team-a", node_group="gpu")
    job = build(info, config=config())
    assert job["metadata"]["labels"] == {"model": "llama", "node": "worker-1", "modelNamespace": "team-a"}
    assert "securityContext" not in job["spec"]["template"]["spec"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600  # KServe's default


def test_default_image_when_storage_initializer_has_none() -> None:
    job = build(config=parse_config({"localModel": json.dumps({"jobNamespace": "jobs"})}))
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "kserve/storage-initializer:latest"


def test_long_names_are_bounded() -> None:
    info = LocalModelInfo(source_model_uri=URI, model_name="m" * 63, node_group="gpu")
    job = build(info, node_name="n" * 63)
    assert len(job["metadata"]["generateName"]) <= 58
    assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "n" * 63}


def test_options_and_attempt() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    job = build(
        options=JobOptions(backoff_limit=0, active_deadline_seconds=600, tolerations=(toleration,)), attempt=3
    )
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["template"]["spec"]["tolerations"] == [toleration]
    assert job_attempt(job) == 3


def test_credentials_are_added_by_reference() -> None:
    creds = CredentialInjection(source="sa")
    creds.add_env("HF_TOKEN", secret="hf", key="HF_TOKEN")
    creds.volumes.append({"name": "gcs", "secret": {"secretName": "gcs"}})
    creds.volume_mounts.append({"name": "gcs", "mountPath": "/var/secrets", "readOnly": True})
    creds.service_account_name = "downloader"
    pod = build(credentials=creds)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}
    ]
    assert container["volumeMounts"][0]["name"] == "kserve-pvc-source"
    assert container["volumeMounts"][1] == {"name": "gcs", "mountPath": "/var/secrets", "readOnly": True}
    assert pod["volumes"][1] == {"name": "gcs", "secret": {"secretName": "gcs"}}
    assert pod["serviceAccountName"] == "downloader"


def test_cluster_storage_container_replaces_the_container_but_not_args_or_mounts() -> None:
    csc = ClusterStorageContainer.from_dict(
        {
            "metadata": {"name": "hf-downloader"},
            "spec": {
                "workloadType": "localModelDownloadJob",
                "supportedUriFormats": [{"prefix": "hf://"}],
                "container": {
                    "name": "custom",
                    "image": "custom:1",
                    "args": ["ignored"],
                    "env": [
                        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "admin", "key": "t"}}}
                    ],
                    "volumeMounts": [{"name": "x", "mountPath": "/x"}],
                    "resources": {"limits": {"memory": "2Gi"}},
                },
            },
        }
    )
    creds = CredentialInjection()
    creds.add_env("STORAGE_CONFIG", secret="storage-config", key="k")
    container = build(storage_container=csc, credentials=creds)["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "custom" and container["image"] == "custom:1"
    assert container["args"] == [URI, "/mnt/models"]
    assert [m["name"] for m in container["volumeMounts"]] == ["kserve-pvc-source"]
    assert container["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "admin", "key": "t"}}}
    ]
    assert container["resources"] == {"limits": {"memory": "2Gi"}}
    # the CSC object itself is not modified
    assert csc.spec.container["args"] == ["ignored"]


def test_job_storage_key_of_foreign_jobs_is_none() -> None:
    assert job_storage_key({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}) is None
    assert job_attempt({"metadata": {"annotations": {"localcache.kserve.io/download-attempt": "x"}}}) == 1
