"""LocalModelNodeGroup: which nodes cache models, and the PV/PVC templates for their local disk.

The PV and PVC specs are core/v1 objects owned by Kubernetes, not by us: they are kept as plain dicts
so every field (including ones newer than this code) is copied verbatim into the PVs and PVCs the
controller creates. The CRD types the fields this project reads and preserves the rest.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, WithJsonSchema

from localcache.api.base import ApiModel, CrdInfo, KubeObject
from localcache.api.constants import API_GROUP, API_VERSION, GROUP_VERSION
from localcache.api.quantity import Quantity

__all__ = ["LocalModelNodeGroup", "LocalModelNodeGroupSpec", "LocalModelNodeGroupStatus"]

_QUANTITY_MAP = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
    },
}
_NODE_SELECTOR_REQUIREMENTS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["key", "operator"],
        "properties": {
            "key": {"type": "string"},
            "operator": {"type": "string", "description": "In, NotIn, Exists, DoesNotExist, Gt or Lt."},
            "values": {"type": "array", "items": {"type": "string"}},
        },
    },
}
_PV_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "core/v1 PersistentVolumeSpec: the template of every PV made for this group. Its "
    "nodeAffinity.required selects the member nodes; local.path (or hostPath.path) must be the host "
    "directory the agent mounts.",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "accessModes": {"type": "array", "items": {"type": "string"}},
        "capacity": _QUANTITY_MAP,
        "storageClassName": {"type": "string"},
        "volumeMode": {"type": "string"},
        "persistentVolumeReclaimPolicy": {"type": "string"},
        "local": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"path": {"type": "string", "description": "Host directory of the models root."}},
        },
        "hostPath": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"path": {"type": "string", "description": "Host directory of the models root."}},
        },
        "nodeAffinity": {
            "type": "object",
            "properties": {
                "required": {
                    "type": "object",
                    "description": "Nodes matching any of the terms belong to the group.",
                    "required": ["nodeSelectorTerms"],
                    "properties": {
                        "nodeSelectorTerms": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "x-kubernetes-map-type": "atomic",
                                "properties": {
                                    "matchExpressions": _NODE_SELECTOR_REQUIREMENTS,
                                    "matchFields": _NODE_SELECTOR_REQUIREMENTS,
                                },
                            },
                        }
                    },
                }
            },
        },
    },
}
_PVC_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "core/v1 PersistentVolumeClaimSpec: the template of every PVC made for this group "
    "(volumeName is set by the controller to pre-bind the PVC to its PV).",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "accessModes": {"type": "array", "items": {"type": "string"}},
        "resources": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"requests": _QUANTITY_MAP, "limits": _QUANTITY_MAP},
        },
        "storageClassName": {"type": "string"},
        "volumeMode": {"type": "string"},
        "volumeName": {"type": "string"},
    },
}

PersistentVolumeSpecDict = Annotated[dict[str, Any], WithJsonSchema(_PV_SPEC_SCHEMA)]
PersistentVolumeClaimSpecDict = Annotated[dict[str, Any], WithJsonSchema(_PVC_SPEC_SCHEMA)]


class LocalModelNodeGroupSpec(ApiModel):
    """The storage template and membership of a node group."""

    storage_limit: Quantity = Field(
        description="Maximum storage for cached models on each node of the group."
    )
    persistent_volume_spec: PersistentVolumeSpecDict = Field(description=_PV_SPEC_SCHEMA["description"])
    persistent_volume_claim_spec: PersistentVolumeClaimSpecDict = Field(
        description=_PVC_SPEC_SCHEMA["description"]
    )

    @property
    def host_path(self) -> str | None:
        """The host directory the group's PVs point at (``local.path`` or ``hostPath.path``)."""
        for source in ("local", "hostPath"):
            volume = self.persistent_volume_spec.get(source)
            if isinstance(volume, dict) and isinstance(volume.get("path"), str):
                return str(volume["path"])
        return None

    @property
    def node_selector_terms(self) -> list[dict[str, Any]]:
        """The terms of ``nodeAffinity.required``; empty means the group has no member nodes."""
        affinity = self.persistent_volume_spec.get("nodeAffinity") or {}
        required = affinity.get("required") or {} if isinstance(affinity, dict) else {}
        terms = required.get("nodeSelectorTerms") if isinstance(required, dict) else None
        return [t for t in terms or [] if isinstance(t, dict)]


class LocalModelNodeGroupStatus(ApiModel):
    """Storage use across the group (KServe defines these fields but never writes them)."""

    used: Quantity | None = Field(default=None, description="Storage used by cached models.")
    available: Quantity | None = Field(default=None, description="Storage still available for cached models.")


class LocalModelNodeGroup(KubeObject):
    """A set of nodes (picked by the PV template's node affinity) and the local storage caching models."""

    CRD: ClassVar[CrdInfo] = CrdInfo(
        group=API_GROUP,
        version=API_VERSION,
        kind="LocalModelNodeGroup",
        plural="localmodelnodegroups",
        singular="localmodelnodegroup",
        namespaced=False,
        status_subresource=False,
        short_names=("lmng",),
        categories=("localmodel",),
        printer_columns=(
            {"name": "Storage Limit", "type": "string", "jsonPath": ".spec.storageLimit"},
            {
                "name": "Storage Class",
                "type": "string",
                "jsonPath": ".spec.persistentVolumeSpec.storageClassName",
            },
            {"name": "Path", "type": "string", "jsonPath": ".spec.persistentVolumeSpec.local.path"},
            {
                "name": "Host Path",
                "type": "string",
                "jsonPath": ".spec.persistentVolumeSpec.hostPath.path",
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    )

    api_version: str = Field(default=GROUP_VERSION, description="serving.kserve.io/v1alpha1")
    kind: str = Field(default="LocalModelNodeGroup", description="LocalModelNodeGroup")
    spec: LocalModelNodeGroupSpec
    status: LocalModelNodeGroupStatus | None = None
