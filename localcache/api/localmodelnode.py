"""LocalModelNode: the per-node work list written by the cache controller and worked by the agent.

The object is named after the Kubernetes Node. ``spec.localModels`` has one entry per (cache, namespace);
``status.modelStatus`` is keyed by the status key (``name`` or ``namespace/name``). Added over KServe,
all optional: ``status.modelStatusDetails`` and ``status.conditions``.
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
    "LocalModelInfo",
    "LocalModelNode",
    "LocalModelNodeSpec",
    "LocalModelNodeStatus",
    "ModelStatus",
    "ModelStatusDetail",
]


class ModelStatus(StrEnum):
    """Download state of one model on this node, as the agent reports it."""

    UNKNOWN = ""
    DOWNLOAD_PENDING = "ModelDownloadPending"
    DOWNLOADING = "ModelDownloading"
    DOWNLOADED = "ModelDownloaded"
    DOWNLOAD_ERROR = "ModelDownloadError"


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
    bytes: int | None = Field(default=None, description="Bytes of the model on disk.", ge=0)
    message: str | None = Field(default=None, description="Why the download failed or is waiting, if it is.")
    job_name: str | None = Field(
        default=None, description="The download Job that produced this state, if any."
    )


class LocalModelNodeStatus(ApiModel):
    """Download state of every model on this node."""

    model_status: dict[str, ModelStatus] | None = Field(
        default=None, description="Download state per model, keyed by name (cluster) or namespace/name."
    )
    model_status_details: dict[str, ModelStatusDetail] | None = Field(
        default=None, description="Added over KServe: per-model transition time, bytes and error message."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Added over KServe: Ready, Downloading and Degraded conditions.",
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
