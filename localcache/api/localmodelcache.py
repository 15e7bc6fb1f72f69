"""LocalModelCache (cluster-scoped) and LocalModelNamespaceCache (namespaced): the user's request.

Field names, required fields, enums and the ``sourceModelUri`` immutability rule are KServe's
(reference §1.1, §1.2). Added over KServe, all optional in status: ``conditions``,
``observedGeneration`` and ``nodeStatusDetails`` (per-node time, bytes, failure reason and message).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from localcache.api.base import ApiModel, CrdInfo, KubeObject, KubeTime
from localcache.api.conditions import Condition
from localcache.api.constants import (
    API_GROUP,
    API_VERSION,
    FINALIZER_LOCAL_MODEL_CACHE,
    FINALIZER_LOCAL_MODEL_NAMESPACE_CACHE,
    GROUP_VERSION,
)
from localcache.api.naming import CACHE_NAME_MAX_LENGTH, status_key, storage_key
from localcache.api.quantity import Quantity

__all__ = [
    "CACHE_PRINTER_COLUMNS",
    "LocalModelCache",
    "LocalModelCacheSpec",
    "LocalModelCacheStatus",
    "LocalModelNamespaceCache",
    "LocalModelStorageSpec",
    "ModelCopies",
    "NamespacedName",
    "NodeStatus",
    "NodeStatusDetail",
]


class NodeStatus(StrEnum):
    """Download state of a cached model on one node, as the cache reports it."""

    UNKNOWN = ""
    NOT_READY = "NodeNotReady"
    DOWNLOAD_PENDING = "NodeDownloadPending"
    DOWNLOADING = "NodeDownloading"
    DOWNLOADED = "NodeDownloaded"
    DOWNLOAD_ERROR = "NodeDownloadError"


class LocalModelStorageSpec(ApiModel):
    """Credentials for the download, as on an InferenceService's storage spec."""

    key: str | None = Field(
        default=None,
        description="The key in the storage-config Secret (in the job namespace) that holds the credentials.",
    )
    parameters: dict[str, str] | None = Field(
        default=None,
        description="Parameters overriding the ones stored under the key, e.g. type: s3, region: us-west-2.",
    )


class LocalModelCacheSpec(ApiModel):
    """Which model to cache, how big it is, and on which node groups."""

    source_model_uri: str = Field(
        description="Original storage URI of the model (hf://, s3://, gs://, https://, ...). Immutable. "
        "The on-disk folder is the first 16 hex digits of the SHA-256 of this exact string, so a "
        "trailing '/' makes a different folder. InferenceServices whose storageUri equals this URI, "
        "or starts with it followed by '/', use the cache.",
        min_length=1,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "StorageUri is immutable"}]
        },
    )
    model_size: Quantity = Field(
        description="Size of the model, e.g. 10Gi; checked against the node group's storageLimit."
    )
    node_groups: list[str] = Field(
        min_length=1,
        description="Names of the LocalModelNodeGroups whose nodes cache the model. The first one is the "
        "default for InferenceServices without the serving.kserve.io/nodegroup annotation.",
    )
    service_account_name: str | None = Field(
        default=None,
        description="A ServiceAccount in the job namespace whose Secrets hold the download credentials.",
    )
    storage: LocalModelStorageSpec | None = Field(
        default=None, description="Credentials from a key of the storage-config Secret in the job namespace."
    )

    @property
    def storage_key(self) -> str:
        """The folder name under ``<root>/models``: shared by every cache with the same URI."""
        return storage_key(self.source_model_uri)


class ModelCopies(ApiModel):
    """Counts over ``nodeStatus``. KServe omits zero counts; a missing count means 0."""

    available: int | None = Field(default=None, description="Nodes where the model is downloaded.")
    total: int | None = Field(default=None, description="Nodes listed in nodeStatus.")
    failed: int | None = Field(default=None, description="Nodes where the download failed.")


class NamespacedName(ApiModel):
    """A reference to a namespaced object."""

    namespace: str | None = None
    name: str | None = None


class NodeStatusDetail(ApiModel):
    """Added over KServe: what ``nodeStatus`` cannot say about one node."""

    status: NodeStatus | None = Field(default=None, description="The same value as nodeStatus for this node.")
    last_transition_time: KubeTime | None = Field(
        default=None,
        description="When the status on this node last changed (e.g. when the download finished).",
    )
    bytes: int | None = Field(default=None, description="Bytes of the model on this node's disk.", ge=0)
    message: str | None = Field(default=None, description="Why the download failed or is waiting, if it is.")
    reason: str | None = Field(
        default=None,
        description="Why the download failed on this node, in CamelCase (AuthFailed, NotFound, DiskFull, "
        "ChecksumMismatch, Timeout, MarkerMissing, StorageSecretNotFound, ...; see "
        "LocalModelNode.status.modelStatusDetails.reason); empty unless NodeDownloadError.",
        max_length=1024,
    )
    total_bytes: int | None = Field(
        default=None, description="Size of the whole model, when the node's agent knows it.", ge=0
    )
    start_time: KubeTime | None = Field(
        default=None, description="When the current (or successful) download attempt on this node started."
    )
    completion_time: KubeTime | None = Field(
        default=None, description="When the download on this node completed."
    )
    attempt: int | None = Field(default=None, description="The download attempt on this node, from 1.", ge=1)
    next_attempt_time: KubeTime | None = Field(
        default=None, description="When the node's agent retries a failed download."
    )


class LocalModelCacheStatus(ApiModel):
    """Per-node download state, copy counts and the InferenceServices using the cache."""

    node_status: dict[str, NodeStatus] | None = Field(
        default=None, description="Download state of the model on each node, keyed by node name."
    )
    copies: ModelCopies | None = Field(default=None, description="How many nodes hold the model.")
    inference_services: list[NamespacedName] | None = Field(
        default=None, description="InferenceServices that use this cache."
    )
    llm_inference_services: list[NamespacedName] | None = Field(
        default=None, description="LLMInferenceServices that use this cache."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Added over KServe: Ready, Downloading and Degraded conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, description="Added over KServe: the .metadata.generation this status was computed from."
    )
    node_status_details: dict[str, NodeStatusDetail] | None = Field(
        default=None,
        description="Added over KServe: per-node transition time, bytes on disk, failure reason and message.",
    )


CACHE_PRINTER_COLUMNS: tuple[dict[str, object], ...] = (
    {"name": "URI", "type": "string", "jsonPath": ".spec.sourceModelUri"},
    {"name": "Size", "type": "string", "jsonPath": ".spec.modelSize"},
    {"name": "Available", "type": "integer", "jsonPath": ".status.copies.available"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.copies.total"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.copies.failed", "priority": 1},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Node Groups", "type": "string", "jsonPath": ".spec.nodeGroups", "priority": 1},
    {"name": "Nodes", "type": "string", "jsonPath": ".status.nodeStatus", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


class _CacheBase(KubeObject):
    FINALIZER: ClassVar[str]

    spec: LocalModelCacheSpec
    status: LocalModelCacheStatus | None = None

    @property
    def status_key(self) -> str:
        """The key of this cache in ``LocalModelNode.status.modelStatus``."""
        return status_key(self.name, self.namespace)

    @property
    def storage_key(self) -> str:
        return self.spec.storage_key

    def ensure_status(self) -> LocalModelCacheStatus:
        if self.status is None:
            self.status = LocalModelCacheStatus()
        return self.status


class LocalModelCache(_CacheBase):
    """A model to pre-download onto the local disks of node groups, for InferenceServices in any namespace."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group=API_GROUP,
        version=API_VERSION,
        kind="LocalModelCache",
        plural="localmodelcaches",
        singular="localmodelcache",
        namespaced=False,
        status_subresource=True,
        short_names=("lmc",),
        categories=("localmodel",),
        printer_columns=CACHE_PRINTER_COLUMNS,
        name_max_length=CACHE_NAME_MAX_LENGTH,
        # the validating webhook asks "which caches have this URI?" on every create
        selectable_fields=(".spec.sourceModelUri",),
    )
    FINALIZER: ClassVar[str] = FINALIZER_LOCAL_MODEL_CACHE

    api_version: str = Field(default=GROUP_VERSION, description="serving.kserve.io/v1alpha1")
    kind: str = Field(default="LocalModelCache", description="LocalModelCache")


class LocalModelNamespaceCache(_CacheBase):
    """A model to pre-download onto the local disks of node groups, for InferenceServices in its namespace."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group=API_GROUP,
        version=API_VERSION,
        kind="LocalModelNamespaceCache",
        plural="localmodelnamespacecaches",
        singular="localmodelnamespacecache",
        namespaced=True,
        status_subresource=True,
        short_names=("lmnc",),
        categories=("localmodel",),
        printer_columns=CACHE_PRINTER_COLUMNS,
        name_max_length=CACHE_NAME_MAX_LENGTH,
    )
    FINALIZER: ClassVar[str] = FINALIZER_LOCAL_MODEL_NAMESPACE_CACHE

    api_version: str = Field(default=GROUP_VERSION, description="serving.kserve.io/v1alpha1")
    kind: str = Field(default="LocalModelNamespaceCache", description="LocalModelNamespaceCache")
