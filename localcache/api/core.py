"""Subsets of the core objects the controllers write: PersistentVolume, PersistentVolumeClaim, Job.

Typed where the controllers read or set a field; everything else (the node group's PV/PVC templates,
a ClusterStorageContainer's container) is carried as dicts and sent back verbatim.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from localcache.api.base import ApiModel, CrdInfo, KubeObject, ObjectMeta

__all__ = [
    "Container",
    "Job",
    "JobCondition",
    "JobSpec",
    "JobStatus",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodSpec",
    "PodTemplateSpec",
    "VolumeMount",
]


class PersistentVolume(KubeObject):
    """A core/v1 PersistentVolume; ``spec`` is the node group's template, copied verbatim."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group="",
        version="v1",
        kind="PersistentVolume",
        plural="persistentvolumes",
        singular="persistentvolume",
        namespaced=False,
        status_subresource=True,
    )

    api_version: str = "v1"
    kind: str = "PersistentVolume"
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] | None = None

    @property
    def phase(self) -> str | None:
        return (self.status or {}).get("phase")


class PersistentVolumeClaim(KubeObject):
    """A core/v1 PersistentVolumeClaim; ``spec`` is the node group's template plus ``volumeName``."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group="",
        version="v1",
        kind="PersistentVolumeClaim",
        plural="persistentvolumeclaims",
        singular="persistentvolumeclaim",
        namespaced=True,
        status_subresource=True,
    )

    api_version: str = "v1"
    kind: str = "PersistentVolumeClaim"
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] | None = None

    @property
    def volume_name(self) -> str | None:
        return self.spec.get("volumeName")

    @property
    def phase(self) -> str | None:
        return (self.status or {}).get("phase")


class VolumeMount(ApiModel):
    name: str
    mount_path: str
    sub_path: str | None = None
    read_only: bool | None = None


class Container(ApiModel):
    """A container; ``env``, ``envFrom`` and ``resources`` stay dicts (credentials come pre-shaped)."""

    name: str
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[dict[str, Any]] | None = None
    env_from: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    volume_mounts: list[VolumeMount] | None = None
    termination_message_policy: str | None = None
    security_context: dict[str, Any] | None = None


class PodSpec(ApiModel):
    containers: list[Container]
    restart_policy: str | None = None
    node_selector: dict[str, str] | None = None
    node_name: str | None = None
    volumes: list[dict[str, Any]] | None = None
    security_context: dict[str, Any] | None = None
    service_account_name: str | None = None
    tolerations: list[dict[str, Any]] | None = None
    priority_class_name: str | None = None


class PodTemplateSpec(ApiModel):
    metadata: ObjectMeta | None = None
    spec: PodSpec


class JobSpec(ApiModel):
    template: PodTemplateSpec
    ttl_seconds_after_finished: int | None = Field(default=None, alias="ttlSecondsAfterFinished")
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    completions: int | None = None
    parallelism: int | None = None
    selector: dict[str, Any] | None = None


class JobCondition(ApiModel):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None
    last_probe_time: str | None = None


class JobStatus(ApiModel):
    active: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    ready: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    conditions: list[JobCondition] | None = None

    def condition_true(self, type_: str) -> JobCondition | None:
        for condition in self.conditions or ():
            if condition.type == type_ and condition.status == "True":
                return condition
        return None


class Job(KubeObject):
    """A batch/v1 Job (the download Job)."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group="batch",
        version="v1",
        kind="Job",
        plural="jobs",
        singular="job",
        namespaced=True,
        status_subresource=True,
    )

    api_version: str = "batch/v1"
    kind: str = "Job"
    spec: JobSpec
    status: JobStatus | None = None
