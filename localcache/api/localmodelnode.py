"""LocalModelNode: the per-node work list written by the cache controller and worked by the agent.

The object is named after the Kubernetes Node. ``spec.localModels`` has one entry per (cache, namespace);
``status.modelStatus`` is keyed by the status key (``name`` or ``namespace/name``). Added over KServe,
all optional: ``status.modelStatusDetails`` (per model: reason, times, attempt, bytes), ``status.capacity``
(the models disk) and ``status.conditions``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from localcache.api.base import ApiModel, CrdInfo, KubeObject, KubeTime
from localcache.api.conditions import Condition
from localcache.api.constants import API_GROUP, API_VERSION, GROUP_VERSION
from localcache.api.localmodelcache import LocalModelStorageSpec
from localcache.api.naming import status_key, storage_key

__all__ = [
    "DownloadFailureReason",
    "LocalModelInfo",
    "LocalModelNode",
    "LocalModelNodeSpec",
    "LocalModelNodeStatus",
    "ModelStatus",
    "ModelStatusDetail",
    "NodeCapacity",
]


class ModelStatus(StrEnum):
    """Download state of one model on this node, as the agent reports it."""

    UNKNOWN = ""
    DOWNLOAD_PENDING = "ModelDownloadPending"
    DOWNLOADING = "ModelDownloading"
    DOWNLOADED = "ModelDownloaded"
    DOWNLOAD_ERROR = "ModelDownloadError"


class DownloadFailureReason(StrEnum):
    """Well-known values of ``ModelStatusDetail.reason``: why a model is not (yet) on this node.

    The field stays a free string: a Job can fail for reasons nobody listed (e.g. a Kubernetes Job
    condition reason), and a newer agent may add values; clients should treat unknown values as
    "failed, see message". The first group is the download program's (``localcache.storage``
    ``FailureReason``, also its exit codes), the rest the agent's own.
    """

    # The download program (docs/download.md, "Failure reasons and exit codes").
    UNKNOWN = "Unknown"
    INVALID_REQUEST = "InvalidRequest"
    AUTH = "AuthFailed"
    NOT_FOUND = "NotFound"
    DISK_FULL = "DiskFull"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    TIMEOUT = "Timeout"
    UNSAFE_PATH = "UnsafePath"
    UNSUPPORTED = "Unsupported"
    PERMISSION_DENIED = "PermissionDenied"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    # The agent: a Job that succeeded without writing the completion marker.
    MARKER_MISSING = "MarkerMissing"
    # The agent: credentials named by the cache that cannot be used (no Job is created).
    STORAGE_SECRET_NOT_FOUND = "StorageSecretNotFound"
    STORAGE_KEY_NOT_FOUND = "StorageKeyNotFound"
    STORAGE_CONFIG_INVALID = "StorageConfigInvalid"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    # The agent: this node cannot download at all (no Job is created).
    NODE_GROUP_NOT_FOUND = "NodeGroupNotFound"
    HOST_PATH_MISMATCH = "HostPathMismatch"
    STORAGE_NOT_WRITABLE = "StorageNotWritable"
    CONFIG_INVALID = "ConfigInvalid"
    # The agent: the API server refused the download Job (e.g. 422 from a policy or a bad
    # ConfigMap value, 403, or a missing job namespace); retried every minute.
    JOB_REJECTED = "JobRejected"


class LocalModelInfo(ApiModel):
    """One model this node must hold, copied from a LocalModelCache or LocalModelNamespaceCache."""

    source_model_uri: str = Field(description="The cache's sourceModelUri.")
    model_name: str = Field(description="The cache's name.")
    namespace: str | None = Field(
        default=None, description="The LocalModelNamespaceCache's namespace; empty for a LocalModelCache."
    )
    node_group: str | None = Field(
        default=None, description="The LocalModelNodeGroup this entry came from; it names the download PVC."
    )
    service_account_name: str | None = Field(default=None, description="The cache's serviceAccountName.")
    storage: LocalModelStorageSpec | None = Field(default=None, description="The cache's storage spec.")

    @property
    def status_key(self) -> str:
        """``modelName`` for cluster caches, ``namespace/modelName`` for namespace caches."""
        return status_key(self.model_name, self.namespace)

    @property
    def storage_key(self) -> str:
        return storage_key(self.source_model_uri)


class LocalModelNodeSpec(ApiModel):
    """The models this node must hold."""

    local_models: list[LocalModelInfo] = Field(description="The models to cache on this node.")


class ModelStatusDetail(ApiModel):
    """Added over KServe: what ``modelStatus`` cannot say about one model on this node."""

    status: ModelStatus | None = Field(
        default=None, description="The same value as modelStatus for this key."
    )
    last_transition_time: KubeTime | None = Field(default=None, description="When the status last changed.")
    storage_key: str | None = Field(
        default=None, description="The folder under <root>/models holding the model."
    )
    bytes: int | None = Field(
        default=None,
        description="Bytes of the model on disk: the whole model once downloaded, the bytes transferred so "
        "far while downloading (published at most every 30 s, and only after a 5% move).",
        ge=0,
    )
    total_bytes: int | None = Field(
        default=None,
        description="Size of the whole model: exact once downloaded; while downloading, the download "
        "program's preallocated size (absent until known). Progress is bytes / totalBytes.",
        ge=0,
    )
    message: str | None = Field(
        default=None, description="Human-readable state: why the download failed or is waiting, if it is."
    )
    reason: str | None = Field(
        default=None,
        description="Why the model is in ModelDownloadError, in CamelCase; empty otherwise. From the "
        "download program: AuthFailed, NotFound, DiskFull, ChecksumMismatch, Timeout, UnsafePath, "
        "Unsupported, PermissionDenied, SourceUnavailable, InvalidRequest, Unknown. From the agent: "
        "MarkerMissing, StorageSecretNotFound, StorageKeyNotFound, StorageConfigInvalid, "
        "ServiceAccountNotFound, SecretNotFound, SecretKeyNotFound, NodeGroupNotFound, HostPathMismatch, "
        "StorageNotWritable, ConfigInvalid. Other values (e.g. a Job condition reason such as "
        "BackoffLimitExceeded) are possible: treat unknown ones as a failure and read message.",
        max_length=1024,
    )
    job_name: str | None = Field(
        default=None, description="The download Job that produced this state, if any."
    )
    start_time: KubeTime | None = Field(
        default=None,
        description="When the current (or, once downloaded, the successful) download attempt started.",
    )
    completion_time: KubeTime | None = Field(
        default=None, description="When the download completed; set only in ModelDownloaded."
    )
    attempt: int | None = Field(
        default=None,
        description="The download attempt this state belongs to, from 1; failed attempts are retried "
        "with exponential backoff.",
        ge=1,
    )
    next_attempt_time: KubeTime | None = Field(
        default=None,
        description="When the agent retries a failed download; set only in ModelDownloadError while a "
        "retry is scheduled.",
    )


class NodeCapacity(ApiModel):
    """Added over KServe: the file system holding the node's models directory, as statvfs sees it.

    Published at most every 30 s, and only after usedBytes moved by 5% of totalBytes.
    """

    total_bytes: int | None = Field(default=None, description="Size of the file system.", ge=0)
    used_bytes: int | None = Field(
        default=None,
        description="Bytes in use on the file system (by models and anything else stored there).",
        ge=0,
    )
    available_bytes: int | None = Field(
        default=None, description="Bytes an unprivileged writer (the download Job) can still use.", ge=0
    )


class LocalModelNodeStatus(ApiModel):
    """Download state of every model on this node."""

    # Both maps are atomic to the field manager: the agent is their only writer and always writes
    # them whole, and per-key ownership made managedFields list every model again (92 KiB of a
    # 314 KiB object at 1,000 models) and cost the API server ~45% more CPU per status write
    # (bench/lmn_write_bench.py). The JSON is the same; only server-side-apply granularity differs.
    model_status: dict[str, ModelStatus] | None = Field(
        default=None,
        description="Download state per model, keyed by name (cluster) or namespace/name.",
        json_schema_extra={"x-kubernetes-map-type": "atomic"},
    )
    model_status_details: dict[str, ModelStatusDetail] | None = Field(
        default=None,
        description="Added over KServe: per-model failure reason, message, start/completion times, attempt, "
        "next retry and bytes.",
        json_schema_extra={"x-kubernetes-map-type": "atomic"},
    )
    capacity: NodeCapacity | None = Field(
        default=None,
        description="Added over KServe: total, used and available bytes of the disk holding the models.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Added over KServe: Ready, Downloading, Degraded and StorageReady conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class LocalModelNode(KubeObject):
    """The models one node must cache (named after the Node) and their download state on it."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group=API_GROUP,
        version=API_VERSION,
        kind="LocalModelNode",
        plural="localmodelnodes",
        singular="localmodelnode",
        namespaced=False,
        status_subresource=True,
        short_names=("lmn",),
        categories=("localmodel",),
        printer_columns=(
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Models", "type": "string", "jsonPath": ".status.modelStatus", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    )

    api_version: str = Field(default=GROUP_VERSION, description="serving.kserve.io/v1alpha1")
    kind: str = Field(default="LocalModelNode", description="LocalModelNode")
    spec: LocalModelNodeSpec
    status: LocalModelNodeStatus | None = None

    def find_model(self, model_name: str, namespace: str | None) -> LocalModelInfo | None:
        """The entry for (name, namespace), the identity KServe's controller uses."""
        for info in self.spec.local_models:
            if info.model_name == model_name and (info.namespace or "") == (namespace or ""):
                return info
        return None

    def ensure_status(self) -> LocalModelNodeStatus:
        if self.status is None:
            self.status = LocalModelNodeStatus()
        return self.status
