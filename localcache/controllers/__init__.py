"""The reconcilers: cache (both scopes), node group, node agent, InferenceService admission.

This package module only names the REST resources the controllers share, derived from the API
models' ``CRD`` info so a plural or group is spelt once (in ``localcache.api``). Submodules are not
imported here: ``cmd/`` binaries import only what they run.
"""

from __future__ import annotations

from typing import Any

from localcache.runtime.resources import Resource

__all__ = [
    "INFERENCE_SERVICES",
    "LOCAL_MODEL_CACHES",
    "LOCAL_MODEL_NAMESPACE_CACHES",
    "LOCAL_MODEL_NODES",
    "LOCAL_MODEL_NODE_GROUPS",
    "resource_of",
]


def resource_of(model: Any) -> Resource:
    """The runtime :class:`Resource` of an API model class (anything with a ``CRD`` CrdInfo)."""
    crd = model.CRD
    return Resource(crd.group, crd.version, crd.plural, crd.kind, crd.namespaced)


def _resources() -> tuple[Resource, ...]:
    from localcache.api import (
        InferenceService,
        LocalModelCache,
        LocalModelNamespaceCache,
        LocalModelNode,
        LocalModelNodeGroup,
    )

    return tuple(
        resource_of(m)
        for m in (
            LocalModelCache,
            LocalModelNamespaceCache,
            LocalModelNodeGroup,
            LocalModelNode,
            InferenceService,
        )
    )


(
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    LOCAL_MODEL_NODES,
    INFERENCE_SERVICES,
) = _resources()
