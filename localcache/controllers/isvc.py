"""InferenceService admission: bind a service to the cache that holds its model (reference §4.1).

KServe's defaulter lists every cache with a fresh client on every admission. Here the caches come from
the manager's shared informers, so an admission costs no API call once they have synced; until then
(start-up, or an informer that lost its watch) the reader falls back to a live LIST, so an answer is
never built from an empty store.

The matching rules are KServe's, byte for byte, because users' tooling reads the labels and
annotations: namespace caches of the service's namespace first, then cluster caches, each in name
order; the first cache whose ``sourceModelUri`` matches (:func:`localcache.api.naming.match_storage_uri`)
and that serves the requested node group wins. Deliberate differences: a cache that is being deleted
is skipped (its volumes are about to go away), and a service that is being deleted is left as it is (its
binding is what keeps its cache from being deleted under it).

Public interface::

    binding = match_cache(uri, node_group, namespace_caches, cluster_caches)   # pure, unit-tested
    mutated = default_inference_service(isvc, enabled=..., namespace_caches=..., cluster_caches=...)
    defaulter = InferenceServiceDefaulter(client, caches=CacheReader(...), config=ConfigReader(...))
    response = await defaulter.handle(admission_request)
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from localcache.api.constants import (
    ANNOTATION_DISABLE_LOCAL_MODEL,
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_NODE_GROUP,
    INFERENCE_SERVICE_CONFIG_NAME,
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
)
from localcache.api.inferenceservice import InferenceService
from localcache.api.naming import match_storage_uri, serving_pvc_name
from localcache.config import KEY_LOCAL_MODEL, ConfigError, LocalModelConfig, parse_config
from localcache.controllers import (
    INFERENCE_SERVICES,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    LOCAL_MODEL_NODES,
)
from localcache.runtime import errors
from localcache.runtime.cache import InformerCache
from localcache.runtime.informer import SharedInformer
from localcache.runtime.resources import CONFIGMAPS, Resource
from localcache.runtime.webhook import AdmissionRequest, AdmissionResponse

__all__ = [
    "INFERENCE_SERVICES",
    "LOCAL_MODEL_CACHES",
    "LOCAL_MODEL_NAMESPACE_CACHES",
    "LOCAL_MODEL_NODES",
    "LOCAL_MODEL_NODE_GROUPS",
    "Binding",
    "CacheReader",
    "ConfigReader",
    "InferenceServiceDefaulter",
    "default_inference_service",
    "match_cache",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Binding:
    """The cache a service is bound to, and what the defaulter writes for it."""

    cache_name: str
    cache_namespace: str | None  # None for a cluster cache
    source_uri: str
    node_group: str
    pvc_name: str


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _sorted_live(caches: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Caches in LIST order (by name), without those being deleted."""
    live = [c for c in caches if not _meta(c).get("deletionTimestamp")]
    return sorted(live, key=lambda c: str(_meta(c).get("name") or ""))


def _match_in(
    uri: str, node_group: str | None, caches: Iterable[Mapping[str, Any]], namespaced: bool
) -> Binding | None:
    for cache in _sorted_live(caches):
        spec = cache.get("spec") or {}
        source = spec.get("sourceModelUri")
        groups = [g for g in spec.get("nodeGroups") or [] if isinstance(g, str)]
        if not isinstance(source, str) or not source or not groups:
            continue
        if not match_storage_uri(source, uri):
            continue
        if node_group is not None:
            if node_group not in groups:
                continue  # KServe: the requested group must be one of the cache's; try the next cache
            group = node_group
        else:
            group = groups[0]
        name = str(_meta(cache).get("name") or "")
        namespace = str(_meta(cache).get("namespace") or "") if namespaced else ""
        return Binding(
            cache_name=name,
            cache_namespace=namespace or None,
            source_uri=source,
            node_group=group,
            pvc_name=serving_pvc_name(name, namespace or None, group),
        )
    return None


def match_cache(
    storage_uri: str,
    node_group: str | None,
    namespace_caches: Iterable[Mapping[str, Any]],
    cluster_caches: Iterable[Mapping[str, Any]],
) -> Binding | None:
    """The cache serving ``storage_uri``: namespace caches first, then cluster caches; None if none.

    ``namespace_caches`` must already be those of the service's namespace. ``node_group`` is the value
    of the ``serving.kserve.io/nodegroup`` annotation (None when absent; an empty value is a group name
    like any other, as in KServe).
    """
    return _match_in(storage_uri, node_group, namespace_caches, True) or _match_in(
        storage_uri, node_group, cluster_caches, False
    )


def _clear(meta: dict[str, Any]) -> None:
    labels = meta.get("labels")
    if isinstance(labels, dict):
        labels.pop(LABEL_LOCAL_MODEL, None)
        labels.pop(LABEL_LOCAL_MODEL_NAMESPACE, None)
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(ANNOTATION_LOCAL_MODEL_SOURCE_URI, None)
        annotations.pop(ANNOTATION_LOCAL_MODEL_PVC_NAME, None)


def _apply(meta: dict[str, Any], binding: Binding) -> None:
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        labels = meta["labels"] = {}
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        annotations = meta["annotations"] = {}
    labels[LABEL_LOCAL_MODEL] = binding.cache_name
    if binding.cache_namespace:
        labels[LABEL_LOCAL_MODEL_NAMESPACE] = binding.cache_namespace
    else:
        labels.pop(LABEL_LOCAL_MODEL_NAMESPACE, None)
    annotations[ANNOTATION_LOCAL_MODEL_SOURCE_URI] = binding.source_uri
    annotations[ANNOTATION_LOCAL_MODEL_PVC_NAME] = binding.pvc_name


def storage_uri_of(isvc: Mapping[str, Any]) -> str | None:
    """The predictor's storage URI as KServe's defaulter reads it; raises ValidationError on a bad spec."""
    return InferenceService.from_dict(
        {"metadata": {}, "spec": {"predictor": (isvc.get("spec") or {}).get("predictor")}}
    ).storage_uri


def default_inference_service(
    isvc: Mapping[str, Any],
    *,
    enabled: bool,
    namespace_caches: Iterable[Mapping[str, Any]],
    cluster_caches: Iterable[Mapping[str, Any]],
) -> tuple[Obj, Binding | None]:
    """KServe's ``setLocalModelLabel`` on a copy of the raw object: ``(mutated, binding)``.

    Disabled (config off, or the ``serving.kserve.io/disable-localmodel`` annotation present with any
    value) means no cache can match, so the four keys are removed. A predictor without a storage URI
    leaves the object exactly as it is (KServe returns early there, keeping stale keys).
    """
    out: Obj = copy.deepcopy(dict(isvc))
    meta = out.setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    if ANNOTATION_DISABLE_LOCAL_MODEL in annotations or not enabled:
        namespace_caches, cluster_caches = (), ()
    uri = storage_uri_of(out)
    if not uri:
        return out, None
    node_group = annotations.get(ANNOTATION_NODE_GROUP)
    binding = match_cache(uri, node_group, namespace_caches, cluster_caches)
    if binding is None:
        _clear(meta)
    else:
        _apply(meta, binding)
    return out, binding


# --- reading caches and config -----------------------------------------------------------------------
class CacheReader:
    """Caches from the shared informers when synced, else from a live LIST/GET.

    Without a cache (``cache=None``) every read is live: what a one-shot CLI or a unit test wants.
    """

    def __init__(self, client: Any, cache: InformerCache | None = None) -> None:
        self.client = client
        self._informers: dict[Resource, SharedInformer] = {}
        if cache is not None:
            for res in (LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES):
                self._informers[res] = cache.informer_for(res)
        self.live_reads = 0

    def _synced(self, res: Resource) -> SharedInformer | None:
        inf = self._informers.get(res)
        return inf if inf is not None and inf.has_synced() else None

    def cached(self, res: Resource) -> bool:
        """Whether reads of ``res`` are answered by a synced informer (no API call)."""
        return self._synced(res) is not None

    async def list(self, res: Resource, namespace: str | None = None, *, live: bool = False) -> list[Obj]:
        inf = None if live else self._synced(res)
        if inf is not None:
            return list(inf.store.list(namespace if res.namespaced else None))
        self.live_reads += 1
        items, _ = await self.client.list_all(res, namespace if res.namespaced else None)
        return list(items)

    async def cluster_caches(self, *, live: bool = False) -> list[Obj]:
        return await self.list(LOCAL_MODEL_CACHES, live=live)

    async def namespace_caches(self, namespace: str, *, live: bool = False) -> list[Obj]:
        return await self.list(LOCAL_MODEL_NAMESPACE_CACHES, namespace, live=live)

    async def get(self, name: str, namespace: str | None) -> Obj | None:
        """The cache ``name`` (a namespace cache when ``namespace`` is set); None when absent."""
        res = LOCAL_MODEL_NAMESPACE_CACHES if namespace else LOCAL_MODEL_CACHES
        inf = self._synced(res)
        if inf is not None:
            return inf.store.get_by_name(namespace or None, name)
        self.live_reads += 1
        try:
            return dict(await self.client.get(res, name, namespace or None))
        except errors.NotFound:
            return None


class ConfigReader:
    """The ``localModel`` section of ``inferenceservice-config``, from an informer on that one ConfigMap.

    Only ``localModel`` is parsed: a typo in ``credentials`` must not stop every InferenceService.
    A missing ConfigMap or a bad ``localModel`` raises :class:`ConfigError` naming the ConfigMap.
    """

    def __init__(
        self,
        client: Any,
        cache: InformerCache | None,
        namespace: str,
        name: str = INFERENCE_SERVICE_CONFIG_NAME,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self._informer = (
            cache.informer_for(CONFIGMAPS, namespace=namespace, field_selector=f"metadata.name={name}")
            if cache is not None
            else None
        )

    async def local_model(self) -> LocalModelConfig:
        source = f"{self.namespace}/{self.name}"
        configmap: Obj | None
        if self._informer is not None and self._informer.has_synced():
            configmap = self._informer.store.get_by_name(self.namespace, self.name)
        else:
            try:
                configmap = await self.client.get(CONFIGMAPS, self.name, self.namespace)
            except errors.NotFound:
                configmap = None
        if configmap is None:
            raise ConfigError(source, "-", "not found")
        data = configmap.get("data") or {}
        return parse_config({KEY_LOCAL_MODEL: data.get(KEY_LOCAL_MODEL) or ""}, source=source).local_model


# --- the webhook -----------------------------------------------------------------------------------
def _object_ref(obj: Mapping[str, Any], req: AdmissionRequest) -> str:
    meta = _meta(obj)
    ns = meta.get("namespace") or req.namespace
    name = meta.get("name") or req.name or meta.get("generateName") or "<unnamed>"
    return f"{ns}/{name}" if ns else str(name)


class InferenceServiceDefaulter:
    """The mutating webhook for InferenceServices (CREATE and UPDATE).

    ``confirm_misses``: when the informers find no cache for a service that names a storage URI, list
    the caches live once before deciding. A hit costs no API call; a miss costs one LIST, which closes
    the one gap an informer opens: ``kubectl apply`` of a cache and its service together, where the
    service's admission can overtake the cache's watch event.
    """

    def __init__(self, caches: CacheReader, config: ConfigReader, *, confirm_misses: bool = True) -> None:
        self.caches = caches
        self.config = config
        self.confirm_misses = confirm_misses
        self.confirmed_misses = 0

    async def _bind(
        self, isvc: Obj, namespace: str, enabled: bool, *, live: bool = False
    ) -> tuple[Obj, Binding | None]:
        namespace_caches: list[Obj] = []
        cluster_caches: list[Obj] = []
        if enabled:
            namespace_caches, cluster_caches = await asyncio.gather(
                self.caches.namespace_caches(namespace, live=live), self.caches.cluster_caches(live=live)
            )
        return default_inference_service(
            isvc, enabled=enabled, namespace_caches=namespace_caches, cluster_caches=cluster_caches
        )

    async def handle(self, req: AdmissionRequest) -> AdmissionResponse:
        isvc = req.object
        if req.operation not in ("CREATE", "UPDATE") or not isinstance(isvc, dict):
            return AdmissionResponse.allow()
        if _meta(isvc).get("deletionTimestamp"):
            return AdmissionResponse.allow()  # finalizers coming off: keep the binding that blocks its cache
        ref = _object_ref(isvc, req)
        try:
            uri = storage_uri_of(isvc)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            return AdmissionResponse.deny(
                f"InferenceService {ref}: spec.predictor.{field}: {first['msg']}",
                code=400,
                reason="BadRequest",
            )
        if not uri:
            return AdmissionResponse.allow()  # KServe returns early: nothing to bind, nothing removed
        try:
            local_model = await self.config.local_model()
        except ConfigError as exc:
            message = f"InferenceService {ref}: cannot read the local model config: {exc}"
            return AdmissionResponse.deny(message, code=500, reason="InternalError")
        namespace = _meta(isvc).get("namespace") or req.namespace
        enabled = local_model.enabled and ANNOTATION_DISABLE_LOCAL_MODEL not in (
            _meta(isvc).get("annotations") or {}
        )
        mutated, binding = await self._bind(isvc, namespace, enabled)
        if (
            binding is None
            and enabled
            and self.confirm_misses
            and (self.caches.cached(LOCAL_MODEL_CACHES) or self.caches.cached(LOCAL_MODEL_NAMESPACE_CACHES))
        ):
            self.confirmed_misses += 1
            mutated, binding = await self._bind(isvc, namespace, enabled, live=True)
        log.info(
            "inferenceservice admitted",
            extra={
                "isvc": ref,
                "operation": req.operation,
                "cache": (
                    f"{binding.cache_namespace + '/' if binding.cache_namespace else ''}{binding.cache_name}"
                    if binding
                    else ""
                ),
                "pvc": binding.pvc_name if binding else "",
                "enabled": enabled,
            },
        )
        return AdmissionResponse.mutate(mutated)
