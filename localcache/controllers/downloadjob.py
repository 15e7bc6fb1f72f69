"""The download Job of one (model, node): KServe's shape (reference §3.4, §9.1-12), made explicit.

Kept from KServe, byte for byte: namespace = ``jobNamespace``; ``generateName`` ``<model>-<node>``;
labels ``model``, ``node`` (and ``modelNamespace``); a controller owner reference to the
LocalModelNode; ``nodeSelector kubernetes.io/hostname=<node>``; ``restartPolicy: Never``;
``ttlSecondsAfterFinished``; pod ``fsGroup``; container args ``[uri, /mnt/models]``; volume
``kserve-pvc-source`` from the download PVC mounted at ``/mnt/models`` with ``subPath models/<key>``;
container from a matching ClusterStorageContainer, else ``kserve-localmodel-download`` with
``storageInitializer.image``.

Added: an explicit ``backoffLimit`` and ``activeDeadlineSeconds`` (KServe leaves the 6-pod default and
no deadline), ``storageInitializer`` resources applied (documented by KServe, never applied), the pod
template carries the Job's labels (so the failed pod can be found for its termination message), the
attempt number as an annotation (the agent's retry backoff survives restarts), tolerations only when
configured, and the credentials of :mod:`localcache.controllers.credentials`. Names come from
:mod:`localcache.api.naming`, never built here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from localcache.api import ClusterStorageContainer, LocalModelInfo, job_generate_name, job_labels
from localcache.api.constants import (
    DOWNLOAD_CONTAINER_NAME,
    DOWNLOAD_VOLUME_NAME,
    GROUP_VERSION,
    MOUNT_PATH,
)
from localcache.api.naming import model_dir
from localcache.config import InferenceServiceConfig
from localcache.controllers.credentials import CredentialInjection

__all__ = [
    "ANNOTATION_ATTEMPT",
    "DEFAULT_ACTIVE_DEADLINE_SECONDS",
    "DEFAULT_BACKOFF_LIMIT",
    "HOSTNAME_LABEL",
    "JobOptions",
    "build_download_job",
    "job_attempt",
    "job_storage_key",
]

HOSTNAME_LABEL = "kubernetes.io/hostname"
ANNOTATION_ATTEMPT = "localcache.kserve.io/download-attempt"
DEFAULT_BACKOFF_LIMIT = 2
DEFAULT_ACTIVE_DEADLINE_SECONDS = 6 * 3600


@dataclass(frozen=True)
class JobOptions:
    """Agent-level knobs of the Job (flags), as opposed to the per-cluster ConfigMap."""

    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int = DEFAULT_ACTIVE_DEADLINE_SECONDS
    tolerations: tuple[dict[str, Any], ...] = ()


def _container(
    csc: ClusterStorageContainer | None, cfg: InferenceServiceConfig, credentials: CredentialInjection
) -> dict[str, Any]:
    if csc is not None:
        container = copy.deepcopy(csc.spec.container)
        container.setdefault("name", DOWNLOAD_CONTAINER_NAME)
        return container
    container: dict[str, Any] = {
        "name": DOWNLOAD_CONTAINER_NAME,
        "image": cfg.storage_initializer.job_image,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = cfg.storage_initializer.job_resources()
    if resources:
        container["resources"] = resources
    if credentials.env:
        container["env"] = copy.deepcopy(credentials.env)
    return container


def build_download_job(
    *,
    info: LocalModelInfo,
    node_name: str,
    node_uid: str,
    job_namespace: str,
    pvc_name: str,
    config: InferenceServiceConfig,
    credentials: CredentialInjection | None = None,
    storage_container: ClusterStorageContainer | None = None,
    options: JobOptions | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """The Job to POST for ``info`` on ``node_name`` (the LocalModelNode with uid ``node_uid``).

    ``pvc_name`` is the download PVC (``localcache.api.naming.download_pvc_name``). With a
    ``storage_container`` the credentials are the container's own and ``credentials`` is ignored.
    """
    options = options or JobOptions()
    credentials = (
        credentials if storage_container is None and credentials is not None else CredentialInjection()
    )
    labels = job_labels(info.model_name, info.namespace, node_name)
    container = _container(storage_container, config, credentials)
    container["args"] = [info.source_model_uri, MOUNT_PATH]
    container["volumeMounts"] = [
        {
            "name": DOWNLOAD_VOLUME_NAME,
            "mountPath": MOUNT_PATH,
            "readOnly": False,
            "subPath": model_dir(info.source_model_uri),
        },
        *copy.deepcopy(credentials.volume_mounts),
    ]
    pod_spec: dict[str, Any] = {
        "nodeSelector": {HOSTNAME_LABEL: node_name},
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": DOWNLOAD_VOLUME_NAME, "persistentVolumeClaim": {"claimName": pvc_name}},
            *copy.deepcopy(credentials.volumes),
        ],
    }
    fs_group = config.local_model.fs_group
    if fs_group is not None:
        pod_spec["securityContext"] = {"fsGroup": fs_group}
    if credentials.service_account_name:
        pod_spec["serviceAccountName"] = credentials.service_account_name
    if options.tolerations:
        pod_spec["tolerations"] = [copy.deepcopy(t) for t in options.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": job_generate_name(info.model_name, node_name),
            "namespace": job_namespace,
            "labels": dict(labels),
            "annotations": {ANNOTATION_ATTEMPT: str(attempt)},
            "ownerReferences": [
                {
                    "apiVersion": GROUP_VERSION,
                    "kind": "LocalModelNode",
                    "name": node_name,
                    "uid": node_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "ttlSecondsAfterFinished": config.local_model.job_ttl_seconds_after_finished,
            "backoffLimit": options.backoff_limit,
            "activeDeadlineSeconds": options.active_deadline_seconds,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def job_storage_key(job: dict[str, Any]) -> str | None:
    """The storage key a download Job writes (from its ``kserve-pvc-source`` subPath), or None."""
    spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in spec.get("containers") or []:
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") == DOWNLOAD_VOLUME_NAME:
                sub = str(mount.get("subPath") or "")
                head, _, key = sub.rpartition("/")
                if head.endswith("models") and key:
                    return key
    return None


def job_attempt(job: dict[str, Any]) -> int:
    """The attempt number written on the Job (1 for Jobs made by KServe or before this annotation)."""
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ATTEMPT)
    try:
        return max(1, int(raw or "1"))
    except ValueError:
        return 1
