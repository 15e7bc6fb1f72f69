"""How a kind of object is addressed on the API server: :class:`Resource`.

A ``Resource`` is the REST coordinate (group, version, plural) plus what the runtime needs to know
about it (kind, namespaced). It is hashable, so it keys shared informers and discovery caches.
Well-known core resources are provided as constants; CRDs are declared the same way or looked up
through discovery with :meth:`localcache.runtime.client.Client.resource_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "CONFIGMAPS",
    "CRDS",
    "EVENTS",
    "JOBS",
    "LEASES",
    "NAMESPACES",
    "NODES",
    "PERSISTENT_VOLUMES",
    "PERSISTENT_VOLUME_CLAIMS",
    "PODS",
    "SECRETS",
    "SERVICES",
    "Resource",
    "split_api_version",
]


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` → ``("apps", "v1")``; ``"v1"`` → ``("", "v1")``."""
    if not api_version:
        raise ValueError("apiVersion is empty")
    group, _, version = api_version.rpartition("/")
    return group, version


@dataclass(frozen=True, slots=True)
class Resource:
    """A REST resource: ``Resource("apps", "v1", "deployments", "Deployment", True)``."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvk(self) -> str:
        """``group/version/Kind`` (``core`` for the legacy group): the metrics label."""
        return f"{self.group or 'core'}/{self.version}/{self.kind}"

    def base_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path; ``namespace=None`` on a namespaced resource means all namespaces (list/watch)."""
        if self.namespaced and namespace:
            p = f"{self.base_path()}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        elif not self.namespaced and namespace:
            raise ValueError(f"{self.kind} is cluster-scoped; got namespace {namespace!r}")
        else:
            p = f"{self.base_path()}/{self.plural}"
        if name is not None:
            if not name:
                raise ValueError(f"{self.kind}: empty object name")
            p += "/" + quote(name, safe="")
            if subresource:
                p += "/" + subresource
        elif subresource:
            raise ValueError(f"{self.kind}: subresource {subresource!r} needs an object name")
        return p

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}/{self.version}" if self.group else f"{self.plural}/{self.version}"


CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
PODS = Resource("", "v1", "pods", "Pod", True)
SERVICES = Resource("", "v1", "services", "Service", True)
EVENTS = Resource("", "v1", "events", "Event", True)
NODES = Resource("", "v1", "nodes", "Node", False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
PERSISTENT_VOLUMES = Resource("", "v1", "persistentvolumes", "PersistentVolume", False)
PERSISTENT_VOLUME_CLAIMS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True)
JOBS = Resource("batch", "v1", "jobs", "Job", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
