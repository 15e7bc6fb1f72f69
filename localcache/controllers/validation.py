"""Validating webhooks for LocalModelCache and LocalModelNamespaceCache (reference §2.4, with fixes).

KServe's rules and messages are kept, because clients and tests match on them:

* a cluster cache whose ``sourceModelUri`` equals another cluster cache's is rejected on CREATE and
  UPDATE (``LocalModelCache <other> has the same StorageURI <uri>``); an UPDATE of a cache that is
  being deleted is always allowed, so finalizers can be removed;
* a namespace cache naming a node group that does not exist is rejected (``NodeGroup <g> not found``);
  on UPDATE only groups the update adds are checked, so a cache whose group was deleted can still get
  its finalizer or labels changed;
* a cache in use cannot be deleted (``LocalModelCache <c> is being used by InferenceService
  <ns>/<isvc>``, ``LocalModelNamespaceCache <ns>/<c> is being used by InferenceService <ns>/<isvc>``).

Fixed here: "in use" is a LIVE label query on InferenceServices (and LLMInferenceServices, when that
CRD is served), not KServe's walk over ``status.inferenceServices``, which may be stale and which
blocks the delete when a listed consumer is already gone (NotFound). A consumer that no longer exists
therefore never blocks, and one created a moment ago always does. A cluster cache only counts
consumers bound to *it*: a namespace cache of the same name (whose consumers carry the
``localmodel-namespace`` label) does not hold it (reference §8.B-2). Uniqueness reads the informer
plus what this webhook admitted a moment ago (:class:`CacheValidator`), so two caches created at once
cannot both pass an informer that has seen neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from localcache.api.constants import LABEL_LOCAL_MODEL, LABEL_LOCAL_MODEL_NAMESPACE
from localcache.controllers import INFERENCE_SERVICES, LOCAL_MODEL_CACHES, LOCAL_MODEL_NODE_GROUPS
from localcache.runtime import errors
from localcache.runtime.resources import Resource
from localcache.runtime.webhook import AdmissionRequest, AdmissionResponse

__all__ = [
    "LLM_INFERENCE_SERVICE_API_VERSION",
    "CacheValidator",
    "ConsumerFinder",
    "NamespaceCacheValidator",
]

log = logging.getLogger(__name__)

LLM_INFERENCE_SERVICE_API_VERSION = "serving.kserve.io/v1alpha1"
LLM_INFERENCE_SERVICE_KIND = "LLMInferenceService"

Obj = dict[str, Any]


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _name(req: AdmissionRequest, obj: Mapping[str, Any] | None) -> str:
    return str(_meta(obj).get("name") or req.name)


class ConsumerFinder:
    """Live label queries for the services bound to a cache."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._llm: Resource | bool | None = False  # False: not looked up yet; None: not served

    async def _llm_resource(self) -> Resource | None:
        if self._llm is False:
            try:
                self._llm = await self.client.resource_for(
                    LLM_INFERENCE_SERVICE_API_VERSION, LLM_INFERENCE_SERVICE_KIND
                )
            except errors.NotFound:
                self._llm = None
        return self._llm if isinstance(self._llm, Resource) else None

    async def consumers(self, cache_name: str, cache_namespace: str | None) -> list[tuple[str, str, str]]:
        """``(kind, namespace, name)`` of every service bound to the cache, InferenceServices first."""
        if cache_namespace:
            selector = f"{LABEL_LOCAL_MODEL}={cache_name},{LABEL_LOCAL_MODEL_NAMESPACE}={cache_namespace}"
        else:
            selector = f"{LABEL_LOCAL_MODEL}={cache_name},!{LABEL_LOCAL_MODEL_NAMESPACE}"
        found: list[tuple[str, str, str]] = []
        kinds: list[Resource] = [INFERENCE_SERVICES]
        llm = await self._llm_resource()
        if llm is not None:
            kinds.append(llm)
        for res in kinds:
            try:
                items, _ = await self.client.list_all(res, cache_namespace, label_selector=selector)
            except errors.NotFound:
                if res is not INFERENCE_SERVICES:
                    self._llm = False  # the CRD went away; look again next time
                continue
            for item in sorted(
                items, key=lambda o: (_meta(o).get("namespace", ""), _meta(o).get("name", ""))
            ):
                found.append(
                    (res.kind, str(_meta(item).get("namespace") or ""), str(_meta(item).get("name")))
                )
        return found


class CacheValidator:
    """``/validate-serving-kserve-io-v1alpha1-localmodelcache``: cluster caches.

    With an informer ``cache`` (the manager), a duplicate URI is looked up in an index of the
    informer plus a record of what this process admitted in the last :data:`ADMITTED_MEMORY_SECONDS`
    (so two creates at once through this webhook cannot both pass an informer that has seen
    neither). Without one (a CLI, unit tests), the API server is asked live, filtered by the
    selectable field ``spec.sourceModelUri``. The informer saves a consistent LIST per create: under
    a thousand creates that LIST waited about half a second each for the API server's watch cache.
    The one gap left: two webhook replicas admitting the same URI within the informer's lag; the
    two caches then share one folder per node (the agent deduplicates by storage key).
    """

    def __init__(
        self,
        client: Any,
        consumers: ConsumerFinder | None = None,
        cache: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.consumers = consumers or ConsumerFinder(client)
        self.cache = cache
        self.clock = clock
        self._admitted: dict[str, tuple[str, float]] = {}  # URI -> (cache name, until)
        if cache is not None:
            self._informer = cache.informer_for(LOCAL_MODEL_CACHES, indexers={INDEX_URI: _uri_index})

    async def handle(self, req: AdmissionRequest) -> AdmissionResponse:
        if req.operation == "DELETE":
            name = _name(req, req.old_object)
            users = await self.consumers.consumers(name, None)
            if users:
                kind, ns, user = users[0]
                return AdmissionResponse.deny(f"LocalModelCache {name} is being used by {kind} {ns}/{user}")
            return AdmissionResponse.allow()
        obj = req.object
        if req.operation not in ("CREATE", "UPDATE") or not isinstance(obj, dict):
            return AdmissionResponse.allow()
        if req.operation == "UPDATE" and _meta(obj).get("deletionTimestamp"):
            return AdmissionResponse.allow()
        name = _name(req, obj)
        uri = (obj.get("spec") or {}).get("sourceModelUri")
        if not isinstance(uri, str) or not uri:
            return AdmissionResponse.allow()  # the CRD schema rejects it with a better message
        old_uri = ((req.old_object or {}).get("spec") or {}).get("sourceModelUri")
        if req.operation == "UPDATE" and old_uri == uri:
            # The URI did not change (the CRD makes it immutable), so this update cannot create a
            # duplicate: skip the LIST of every cache, which made each finalizer or label write cost
            # O(caches) and the whole control plane O(caches^2) (bench/README.md, finding 5).
            return AdmissionResponse.allow()
        for other_name in await self._names_with_uri(uri):
            if other_name != name:
                return AdmissionResponse.deny(f"LocalModelCache {other_name} has the same StorageURI {uri}")
        if req.operation == "CREATE" and self.cache is not None:
            self._admitted[uri] = (name, self.clock() + ADMITTED_MEMORY_SECONDS)
        return AdmissionResponse.allow()

    async def _names_with_uri(self, uri: str) -> list[str]:
        if self.cache is not None and self._informer.has_synced():
            now = self.clock()
            self._admitted = {u: v for u, v in self._admitted.items() if v[1] > now}
            seen = self.cache.by_index(LOCAL_MODEL_CACHES, INDEX_URI, uri)
            names = {str(_meta(o).get("name")) for o in seen}
            if uri in self._admitted:
                admitted = self._admitted[uri][0]
                if admitted in names:
                    del self._admitted[uri]  # the informer knows it now, and will see it go
                else:
                    names.add(admitted)
            return sorted(names)
        items = await self._same_uri(uri)
        return sorted(
            str(_meta(o).get("name")) for o in items if (o.get("spec") or {}).get("sourceModelUri") == uri
        )

    async def _same_uri(self, uri: str) -> list[dict[str, Any]]:
        """The caches with this URI, from a live LIST filtered by the API server.

        The CRD declares ``spec.sourceModelUri`` a selectable field, so the answer holds only the
        matches; listing every cache on every create made creating n caches cost O(n^2) bytes.
        With KServe's own CRD installed (no selectable field: 400) every cache is listed.
        """
        selector = f"spec.sourceModelUri={escape_field_value(uri)}"
        try:
            items, _ = await self.client.list_all(LOCAL_MODEL_CACHES, field_selector=selector)
        except errors.BadRequest:
            items, _ = await self.client.list_all(LOCAL_MODEL_CACHES)
        return items


#: How long a URI this process admitted counts as taken before the informer shows its cache.
ADMITTED_MEMORY_SECONDS = 30.0
INDEX_URI = "localcache.sourceModelUri"


def _uri_index(obj: Mapping[str, Any]) -> list[str]:
    uri = (obj.get("spec") or {}).get("sourceModelUri")
    return [uri] if isinstance(uri, str) and uri else []


def escape_field_value(value: str) -> str:
    """A field selector value with ``\\``, ``,`` and ``=`` escaped (apimachinery's ``EscapeValue``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


class NamespaceCacheValidator:
    """``/validate-serving-kserve-io-v1alpha1-localmodelnamespacecache``: namespace caches."""

    def __init__(self, client: Any, consumers: ConsumerFinder | None = None) -> None:
        self.client = client
        self.consumers = consumers or ConsumerFinder(client)

    async def handle(self, req: AdmissionRequest) -> AdmissionResponse:
        if req.operation == "DELETE":
            name = _name(req, req.old_object)
            namespace = str(_meta(req.old_object).get("namespace") or req.namespace)
            users = await self.consumers.consumers(name, namespace)
            if users:
                kind, ns, user = users[0]
                return AdmissionResponse.deny(
                    f"LocalModelNamespaceCache {namespace}/{name} is being used by {kind} {ns}/{user}"
                )
            return AdmissionResponse.allow()
        obj = req.object
        if req.operation not in ("CREATE", "UPDATE") or not isinstance(obj, dict):
            return AdmissionResponse.allow()
        if req.operation == "UPDATE" and _meta(obj).get("deletionTimestamp"):
            return AdmissionResponse.allow()
        known: set[str] = set()
        if req.operation == "UPDATE":
            # Only groups this update adds: a metadata-only update (a finalizer, a label) of a cache whose
            # group was deleted meanwhile must not be blocked by something it does not change.
            known = set(((req.old_object or {}).get("spec") or {}).get("nodeGroups") or [])
        for group in (obj.get("spec") or {}).get("nodeGroups") or []:
            if not isinstance(group, str) or not group or group in known:
                continue  # the CRD schema reports malformed entries
            try:
                await self.client.get(LOCAL_MODEL_NODE_GROUPS, group)
            except errors.NotFound:
                return AdmissionResponse.deny(f"NodeGroup {group} not found")
        return AdmissionResponse.allow()
