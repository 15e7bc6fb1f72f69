"""ClusterStorageContainer: KServe's admin-provided download container, the first credential source.

Only containers with ``workloadType: localModelDownloadJob`` are used for download Jobs (reference
§1.5, §6). KServe owns this CRD on real clusters; ours is installed only where KServe is absent.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, WithJsonSchema

from localcache.api.base import ApiModel, CrdInfo, KubeObject
from localcache.api.constants import API_GROUP, API_VERSION, GROUP_VERSION

__all__ = ["ClusterStorageContainer", "StorageContainerSpec", "SupportedUriFormat", "WorkloadType"]


class WorkloadType(StrEnum):
    """Where the container runs: as a serving pod's init container, or as a download Job."""

    INIT_CONTAINER = "initContainer"
    LOCAL_MODEL_DOWNLOAD_JOB = "localModelDownloadJob"


class SupportedUriFormat(ApiModel):
    """A URI form the container can download: a string prefix, or (when prefix is empty) a regex."""

    prefix: str | None = Field(default=None, description="A URI prefix, e.g. hf://.")
    regex: str | None = Field(default=None, description="A regular expression the URI must match.")

    def matches(self, uri: str) -> bool:
        if self.prefix:
            return uri.startswith(self.prefix)
        if self.regex:
            try:
                return re.search(self.regex, uri) is not None
            except re.error:
                return False
        return False


ContainerDict = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "description": "core/v1 Container for the download (its args and volumeMounts are replaced).",
            "x-kubernetes-preserve-unknown-fields": True,
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "image": {"type": "string"}},
        }
    ),
]


class StorageContainerSpec(ApiModel):
    """The container and the URIs it supports."""

    container: ContainerDict = Field(description="The container spec.")
    supported_uri_formats: list[SupportedUriFormat] = Field(description="URI forms the container supports.")
    workload_type: WorkloadType | None = Field(
        default=None, description="initContainer (default) or localModelDownloadJob."
    )
    supports_multi_model_download: bool | None = Field(
        default=None, description="Whether one container can download several models."
    )


class ClusterStorageContainer(KubeObject):
    """A storage-initializer container for a set of URI forms, shared across the cluster."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group=API_GROUP,
        version=API_VERSION,
        kind="ClusterStorageContainer",
        plural="clusterstoragecontainers",
        singular="clusterstoragecontainer",
        namespaced=False,
        status_subresource=False,
    )

    api_version: str = Field(default=GROUP_VERSION, description="serving.kserve.io/v1alpha1")
    kind: str = Field(default="ClusterStorageContainer", description="ClusterStorageContainer")
    spec: StorageContainerSpec
    disabled: bool | None = Field(default=None, description="Ignore this container when true.")

    def supports(self, uri: str) -> bool:
        """Whether any supported format matches ``uri`` (KServe's ``IsStorageUriSupported``)."""
        return any(f.matches(uri) for f in self.spec.supported_uri_formats)

    def serves_download_jobs(self, uri: str) -> bool:
        """Whether download Jobs for ``uri`` use this container (enabled, Job type, URI supported)."""
        return (
            not self.disabled
            and self.spec.workload_type == WorkloadType.LOCAL_MODEL_DOWNLOAD_JOB
            and self.supports(uri)
        )
