"""The cache reconciler: one implementation for LocalModelCache and LocalModelNamespaceCache.

Instantiated once per scope (:data:`CLUSTER` and :data:`NAMESPACE`). Given a cache key it reads
everything from the informer cache, computes the desired state from scratch and converges:

1. **Finalizer** (``localmodel.kserve.io/finalizer`` / ``localmodelnamespacecache.kserve.io/finalizer``).
2. **Placement**: membership is recomputed from *every* listed node group on every pass (a group's PV
   ``nodeAffinity.required`` selects its nodes, :mod:`.membership`). A node selected by two groups
   takes the first in ``spec.nodeGroups`` order, so its entry never flips. Groups the cache does not
   fit on (``storageLimit``, :func:`.nodegroup.plan_group_storage`) get no new entries and an
   ``InsufficientStorage`` condition instead of a download that would fail (copies already there
   are kept, not evicted).
3. **LocalModelNode entries** ``(modelName, namespace)``: added on Ready member nodes (the
   LocalModelNode, named after the Node, is created with an ownerReference to the Node so garbage
   collection removes it with the Node), kept but not added on NotReady members (removing it would
   make the agent delete a good copy the moment the node comes back), removed everywhere else: nodes
   that left a group, groups dropped from the spec, deleted Nodes. Entries are written with a merge
   patch carrying ``resourceVersion``; on 409 the object is re-read from the API server and the change
   re-applied, so concurrent writers (two caches, two scopes) never lose each other's entries. Nothing
   is written unless the entry list actually changes.
4. **Volumes**: the download PV and PVC (in ``jobNamespace``) per group, and a serving PV and PVC per
   (consumer namespace, group); names from :mod:`localcache.api.naming` (collision-free between a
   cluster and a namespace cache of one name), specs copied from the node group, the PVC pre-bound
   with ``volumeName``. Owner references as KServe sets them (a cluster cache owns all of them, a
   namespace cache only the PVCs in its own namespace), plus a label set naming the cache so every
   volume can be found and pruned without owner references. Serving volumes of a namespace without
   consumers are deleted **both**, PVC first and the PV only once no PVC refers to it, so a PV never
   outlives its claim with a stale ``claimRef`` (KServe's §8.B-1); a desired PV found ``Released``
   (its claim gone) is deleted and made again, and no PVC is created against a terminating PV.
5. **Status** through the status subresource with ``resourceVersion``, only when it changed: ``nodeStatus``
   (pruned to current members; NotReady members keep their last value, or ``NodeNotReady`` if new),
   ``copies``, ``inferenceServices`` (live label queries), ``nodeStatusDetails``, ``observedGeneration``
   and the conditions ``Ready``, ``Downloading``, ``Degraded`` and ``InsufficientStorage``. Conflicts
   re-read and retry, then raise; they are never swallowed. Events mark transitions.
6. **Deletion** needs no node group: the entry is removed from every LocalModelNode that has it, the
   cache's volumes are deleted (PVCs first), then the finalizer goes.

``disableVolumeManagement: true`` skips serving volumes and consumer tracking (KServe's behaviour);
download volumes are still made. The ``inferenceservice-config`` ConfigMap is read through an informer;
an invalid one gets a Warning event and the last good one stays in force.

Every reconcile ends with ``requeue_after`` (the resync period, jittered), so nothing depends on a
lucky event, and a converged cluster makes no writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from localcache.api.base import format_time
from localcache.api.conditions import Condition, ConditionType, set_condition
from localcache.api.constants import (
    ANNOTATION_NODE_GROUP,
    FINALIZER_LOCAL_MODEL_CACHE,
    FINALIZER_LOCAL_MODEL_NAMESPACE_CACHE,
    GROUP_VERSION,
    INFERENCE_SERVICE_CONFIG_NAME,
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
)
from localcache.api.localmodelcache import NodeStatus
from localcache.api.naming import (
    download_pv_name,
    download_pvc_name,
    label_value,
    parse_status_key,
    serving_pv_name,
    serving_pvc_name,
    status_key,
)
from localcache.api.statusmap import copies_from_node_status, node_status_from_model_status
from localcache.config import ConfigError, InferenceServiceConfig, parse_config
from localcache.controllers import (
    INFERENCE_SERVICES,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    LOCAL_MODEL_NODES,
)
from localcache.controllers.membership import group_terms, is_node_ready, match_node_selector_terms
from localcache.controllers.nodegroup import (
    INDEX_GROUPS,
    Fit,
    cache_groups,
    cache_identity,
    cache_order,
    caches_on_group,
    declare_cache_informers,
    format_bytes,
    plan_group_storage,
    planning_view,
)
from localcache.runtime import errors, jsoncodec
from localcache.runtime.clock import SYSTEM_CLOCK, Clock
from localcache.runtime.handlers import EnqueueRequestForOwner, EnqueueRequestsFromMapFunc
from localcache.runtime.predicates import Funcs, Predicate
from localcache.runtime.ratelimit import LatencyPacer
from localcache.runtime.reconcile import Request, Result
from localcache.runtime.resources import (
    CONFIGMAPS,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    Resource,
)

__all__ = [
    "CLUSTER",
    "CONDITION_INSUFFICIENT_STORAGE",
    "DEFAULT_MAX_CONCURRENT_RECONCILES",
    "LABEL_CACHE",
    "LABEL_CACHE_NAMESPACE",
    "LABEL_NODE_GROUP",
    "LABEL_VOLUME_PURPOSE",
    "NAMESPACE",
    "CacheReconciler",
    "CacheScope",
    "ConfigSource",
    "Placement",
    "build_status",
    "compute_node_status",
    "compute_placement",
    "consumers_of",
    "desired_entry",
    "desired_volumes",
    "setup_cache_controllers",
    "upsert_entry",
]

log = logging.getLogger(__name__)
#: Per-node fields copied from the agent's LocalModelNode ``modelStatusDetails`` to the cache's
#: ``nodeStatusDetails`` (they have the same names in both).
AGENT_INT_DETAILS = ("bytes", "totalBytes", "attempt")
AGENT_TEXT_DETAILS = ("message", "reason", "startTime", "completionTime", "nextAttemptTime")

Obj = dict[str, Any]

#: Labels on every PV/PVC this controller makes, so they are found (and pruned) without owner refs.
LABEL_CACHE = "localcache.serving.kserve.io/cache"
LABEL_CACHE_NAMESPACE = "localcache.serving.kserve.io/cache-namespace"
LABEL_NODE_GROUP = "localcache.serving.kserve.io/node-group"
LABEL_VOLUME_PURPOSE = "localcache.serving.kserve.io/volume"
PURPOSE_DOWNLOAD = "download"
PURPOSE_SERVING = "serving"

CONDITION_INSUFFICIENT_STORAGE = "InsufficientStorage"

INDEX_ENTRIES = "localcache.entries"  # LocalModelNode -> status keys of its entries
INDEX_VOLUME_OWNER = "localcache.volume-owner"  # PV/PVC -> status key of the cache that made it
INDEX_CONSUMER = "localcache.consumer"  # InferenceService -> status key of the cache it uses
INDEX_CLAIMED_VOLUME = "localcache.claimed-volume"  # PVC -> the PV it is bound to (spec.volumeName)

DEFAULT_RESYNC_PERIOD = 600.0
WAIT_REQUEUE = 2.0  # while a volume we need is terminating
MAX_WRITE_ATTEMPTS = 8
#: A cache whose entry or status changed on a LocalModelNode is reconciled this long after the first
#: such change, with every other node's change meanwhile: fifty agents reporting the same model one
#: after another cost one status computation and write, not fifty (17 -> 3.5 reconciles a cache at
#: 1,000 caches x 50 nodes; see bench/README.md).
NODE_REPORT_COALESCE = 0.5
#: Cache reconciles in flight: one waiting on a paced LocalModelNode write is a parked coroutine,
#: and more of them make each node's batch larger (bench/README.md).
DEFAULT_MAX_CONCURRENT_RECONCILES = 256


# ---- scope -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CacheScope:
    """What differs between the two cache kinds."""

    resource: Resource
    finalizer: str
    namespaced: bool

    @property
    def kind(self) -> str:
        return self.resource.kind

    def _holds(self, namespace: str) -> bool:
        return bool(namespace) == self.namespaced

    def request_for(self, name: str, namespace: str) -> Request | None:
        """The request of a cache identity in this scope, or None if it belongs to the other scope."""
        return Request(namespace, name) if self._holds(namespace) else None

    def request_for_key(self, key: str) -> Request | None:
        """The request of a LocalModelNode status key (``name`` or ``namespace/name``) in this scope."""
        namespace, name = parse_status_key(key)
        return self.request_for(name, namespace)

    def owns_key(self, key: str) -> bool:
        return self._holds(parse_status_key(key)[0])


CLUSTER = CacheScope(LOCAL_MODEL_CACHES, FINALIZER_LOCAL_MODEL_CACHE, False)
NAMESPACE = CacheScope(LOCAL_MODEL_NAMESPACE_CACHES, FINALIZER_LOCAL_MODEL_NAMESPACE_CACHE, True)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name") or "")


def _ns(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("namespace") or "")


def _deleting(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj and _meta(obj).get("deletionTimestamp"))


# ---- configuration ---------------------------------------------------------------------------------
class ConfigSource:
    """The ``inferenceservice-config`` ConfigMap through an informer, parsed once per resourceVersion.

    An invalid ConfigMap gets one Warning event (``InvalidConfig``, on the ConfigMap) per version and
    the last good configuration stays in force; with none yet, :meth:`current` raises so reconciles
    retry. A missing ConfigMap means the defaults (logged once).
    """

    def __init__(
        self, cache: Any, namespace: str, recorder: Any = None, name: str = INFERENCE_SERVICE_CONFIG_NAME
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.recorder = recorder
        self.informer = cache.informer_for(
            CONFIGMAPS, namespace=namespace, field_selector=f"metadata.name={name}"
        )
        self._parsed_rv: str | None = None
        self._good: InferenceServiceConfig | None = None
        self._error: ConfigError | None = None
        self._warned_missing = False

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.name}"

    def current(self) -> InferenceServiceConfig:
        cm = self.informer.store.get_by_name(self.namespace, self.name)
        if cm is None:
            if not self._warned_missing:
                log.warning("config map not found; using defaults", extra={"configmap": self.source})
                self._warned_missing = True
            self._parsed_rv, self._good, self._error = None, parse_config({}, source=self.source), None
            return self._good
        self._warned_missing = False
        rv = _meta(cm).get("resourceVersion")
        if rv != self._parsed_rv:
            self._parsed_rv = rv
            try:
                self._good, self._error = parse_config(cm.get("data") or {}, source=self.source), None
            except ConfigError as exc:
                self._error = exc
                kept = "keeping the last good configuration" if self._good else "no good one yet"
                log.warning("invalid config: %s; %s", exc, kept, extra={"configmap": self.source})
                if self.recorder is not None:
                    ref = {**cm, "apiVersion": "v1", "kind": "ConfigMap"}
                    self.recorder.warning(ref, "InvalidConfig", f"{exc}; {kept}")
        if self._good is None:
            assert self._error is not None
            raise self._error
        return self._good


# ---- LocalModelNode entries ------------------------------------------------------------------------
def desired_entry(cache: Mapping[str, Any], group: str) -> Obj:
    """The ``spec.localModels[]`` entry a cache wants on a node of ``group`` (KServe's fields)."""
    spec = cache.get("spec") or {}
    entry: Obj = {"sourceModelUri": spec.get("sourceModelUri") or "", "modelName": _name(cache)}
    if _ns(cache):
        entry["namespace"] = _ns(cache)
    entry["nodeGroup"] = group
    if spec.get("serviceAccountName"):
        entry["serviceAccountName"] = spec["serviceAccountName"]
    if spec.get("storage"):
        entry["storage"] = spec["storage"]
    return entry


def _entry_id(entry: Mapping[str, Any]) -> tuple[str, str]:
    return str(entry.get("modelName") or ""), str(entry.get("namespace") or "")


def _entry_key(entry: Mapping[str, Any]) -> str:
    name, ns = _entry_id(entry)
    return status_key(name, ns or None)


def upsert_entry(models: list[Obj], identity: tuple[str, str], want: Obj | None) -> tuple[list[Obj], bool]:
    """``models`` with the entry for ``identity`` (modelName, namespace) set to ``want`` (None removes
    it); duplicates of that identity collapse into one. Returns the new list and whether it changed."""
    out: list[Obj] = []
    placed = False
    for entry in models:
        if _entry_id(entry) != identity:
            out.append(entry)
        elif want is not None and not placed:
            out.append(want)
            placed = True
    if want is not None and not placed:
        out.append(want)
    return out, out != models


# ---- placement -------------------------------------------------------------------------------------
@dataclass
class Placement:
    """Where a cache belongs right now; see the module docstring (step 2)."""

    ready: dict[str, str] = field(default_factory=dict)  # Ready member node -> group
    not_ready: dict[str, str] = field(default_factory=dict)  # NotReady member node -> group
    missing_groups: list[str] = field(default_factory=list)
    insufficient: dict[str, Fit] = field(default_factory=dict)  # group -> why it does not fit
    # members of groups the cache does not fit on: node -> (group, Ready?)
    held: dict[str, tuple[str, bool]] = field(default_factory=dict)

    @property
    def members(self) -> dict[str, str]:
        return {**self.ready, **self.not_ready}

    def keep_existing(self, holders: Iterable[str]) -> None:
        """Keep copies already placed on groups the cache no longer fits on (a lowered
        ``storageLimit`` or a grown ``modelSize``): no new download starts there, but no good copy is
        deleted either."""
        for node in holders:
            if node in self.held and node not in self.ready and node not in self.not_ready:
                group, ready = self.held[node]
                (self.ready if ready else self.not_ready)[node] = group


def compute_placement(
    cache: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, Any] | None],
    nodes: Iterable[Mapping[str, Any]],
    fits: Mapping[str, Fit] | None = None,
) -> Placement:
    """Node → group for every member node, first group in ``spec.nodeGroups`` order winning.

    ``groups`` maps each listed group name to its object (None when it does not exist); ``fits``
    maps group name → this cache's :class:`Fit` there (missing: fits).
    """
    placement = Placement()
    nodes = list(nodes)
    for g in (cache.get("spec") or {}).get("nodeGroups") or []:
        group = groups.get(g)
        if group is None:
            if g not in placement.missing_groups:
                placement.missing_groups.append(g)
            continue
        fit = (fits or {}).get(g)
        fits_here = fit is None or fit.fits
        if not fits_here:
            assert fit is not None
            placement.insufficient[g] = fit
        terms = group_terms(group)
        if not terms:
            continue
        for node in nodes:
            name = _name(node)
            if name in placement.ready or name in placement.not_ready:
                continue
            if match_node_selector_terms(node, terms):
                if not fits_here:
                    placement.held.setdefault(name, (g, is_node_ready(node)))
                else:
                    (placement.ready if is_node_ready(node) else placement.not_ready)[name] = g
    for name in list(placement.held):
        if name in placement.ready or name in placement.not_ready:
            del placement.held[name]  # a later group the model fits on takes it
    return placement


def compute_node_status(
    placement: Placement,
    lmns: Mapping[str, Mapping[str, Any]],
    key: str,
    previous: Mapping[str, str] | None,
) -> dict[str, NodeStatus]:
    """``status.nodeStatus``: Ready members from the agent's ``modelStatus[key]`` (missing → pending);
    NotReady members keep their last value or become ``NodeNotReady``; everything else is pruned."""
    previous = previous or {}
    result: dict[str, NodeStatus] = {}
    for node in sorted(placement.members):
        if node in placement.ready:
            lmn = lmns.get(node) or {}
            model_status = ((lmn.get("status") or {}).get("modelStatus") or {}).get(key)
            try:
                result[node] = node_status_from_model_status(model_status)
            except ValueError:
                result[node] = NodeStatus.DOWNLOAD_PENDING
        else:
            try:
                result[node] = NodeStatus(previous[node]) if previous.get(node) else NodeStatus.NOT_READY
            except ValueError:
                result[node] = NodeStatus.NOT_READY
    return result


# ---- consumers and volumes -------------------------------------------------------------------------
def consumer_key(isvc: Mapping[str, Any]) -> str | None:
    """The status key of the cache an InferenceService uses, from its labels (None: none).

    A namespace cache counts only services in its own namespace carrying both labels; a cluster cache
    only services *without* the namespace label, so same-named caches never share consumers.
    """
    labels = _meta(isvc).get("labels") or {}
    name = labels.get(LABEL_LOCAL_MODEL)
    if not name:
        return None
    ns_label = labels.get(LABEL_LOCAL_MODEL_NAMESPACE)
    if ns_label is None:
        return status_key(name, None)
    return status_key(name, ns_label) if ns_label == _ns(isvc) else None


def consumers_of(
    cache: Mapping[str, Any], isvcs: Iterable[Mapping[str, Any]]
) -> tuple[list[Obj], set[tuple[str, str]]]:
    """``(status.inferenceServices, {(consumer namespace, group)})`` of a cache.

    A consumer without the ``serving.kserve.io/nodegroup`` annotation uses ``nodeGroups[0]``; one
    naming a group the cache does not list is counted but gets no volume (KServe).
    """
    groups = list((cache.get("spec") or {}).get("nodeGroups") or [])
    key = cache_identity(cache)
    refs: list[Obj] = []
    pairs: set[tuple[str, str]] = set()
    for isvc in isvcs:
        if consumer_key(isvc) != key:
            continue
        refs.append({"namespace": _ns(isvc), "name": _name(isvc)})
        wanted = (_meta(isvc).get("annotations") or {}).get(ANNOTATION_NODE_GROUP)
        group = wanted if wanted else (groups[0] if groups else None)
        if group and group in groups:
            pairs.add((_ns(isvc), group))
    refs.sort(key=lambda r: (r["namespace"], r["name"]))
    return refs, pairs


def volume_labels(cache: Mapping[str, Any], group: str, purpose: str) -> dict[str, str]:
    labels = {LABEL_CACHE: _name(cache), LABEL_NODE_GROUP: label_value(group), LABEL_VOLUME_PURPOSE: purpose}
    if _ns(cache):
        labels[LABEL_CACHE_NAMESPACE] = _ns(cache)
    return labels


def volume_owner_key(obj: Mapping[str, Any]) -> str | None:
    """The status key of the cache a PV/PVC was made for, from our labels."""
    labels = _meta(obj).get("labels") or {}
    name = labels.get(LABEL_CACHE)
    return status_key(name, labels.get(LABEL_CACHE_NAMESPACE) or None) if name else None


def owner_reference(cache: Mapping[str, Any], scope: CacheScope) -> Obj:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": scope.kind,
        "name": _name(cache),
        "uid": _meta(cache).get("uid") or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


VolumeKey = tuple[str, str, str]  # ("PersistentVolume" | "PersistentVolumeClaim", namespace, name)


def desired_volumes(
    cache: Mapping[str, Any],
    scope: CacheScope,
    groups: Mapping[str, Mapping[str, Any] | None],
    job_namespace: str,
    serving_pairs: Iterable[tuple[str, str]] | None,
) -> dict[VolumeKey, Obj]:
    """Every PV and PVC the cache should have; ``serving_pairs`` None skips serving volumes."""
    name, ns = _name(cache), _ns(cache)
    owner = owner_reference(cache, scope)
    out: dict[VolumeKey, Obj] = {}

    def pv(pv_name: str, group: Mapping[str, Any], g: str, purpose: str) -> None:
        meta: Obj = {"name": pv_name, "labels": volume_labels(cache, g, purpose)}
        if not scope.namespaced:  # a cluster-scoped PV cannot have a namespaced owner
            meta["ownerReferences"] = [owner]
        spec = json.loads(json.dumps((group.get("spec") or {}).get("persistentVolumeSpec") or {}))
        out[("PersistentVolume", "", pv_name)] = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": meta,
            "spec": spec,
        }

    def pvc(pvc_name: str, pvc_ns: str, pv_name: str, group: Mapping[str, Any], g: str, purpose: str) -> None:
        meta: Obj = {"name": pvc_name, "namespace": pvc_ns, "labels": volume_labels(cache, g, purpose)}
        if not scope.namespaced or pvc_ns == ns:
            meta["ownerReferences"] = [owner]
        spec = json.loads(json.dumps((group.get("spec") or {}).get("persistentVolumeClaimSpec") or {}))
        spec["volumeName"] = pv_name
        out[("PersistentVolumeClaim", pvc_ns, pvc_name)] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta,
            "spec": spec,
        }

    for g in (cache.get("spec") or {}).get("nodeGroups") or []:
        group = groups.get(g)
        if group is None:
            continue
        pv_name = download_pv_name(name, ns or None, g)
        pv(pv_name, group, g, PURPOSE_DOWNLOAD)
        pvc(download_pvc_name(name, ns or None, g), job_namespace, pv_name, group, g, PURPOSE_DOWNLOAD)
    for consumer_ns, g in sorted(serving_pairs or ()):
        group = groups.get(g)
        if group is None:
            continue
        if ("PersistentVolumeClaim", consumer_ns, serving_pvc_name(name, ns or None, g)) in out:
            # A cluster cache's consumers in the job namespace: KServe's serving PVC name equals the
            # download PVC's, so they share it (and its PV: same host path); no second PV.
            continue
        pv_name = serving_pv_name(name, ns or None, g, consumer_ns)
        pv(pv_name, group, g, PURPOSE_SERVING)
        pvc(serving_pvc_name(name, ns or None, g), consumer_ns, pv_name, group, g, PURPOSE_SERVING)
    return out


def stale_claim(pv: Mapping[str, Any]) -> bool:
    """A PV whose claim is gone (``Released``): a new PVC pre-bound to it would stay Pending."""
    return (pv.get("status") or {}).get("phase") == "Released"


# ---- status ----------------------------------------------------------------------------------------
def _conditions(status: Mapping[str, Any]) -> list[Condition]:
    return [Condition.from_dict(c) for c in status.get("conditions") or [] if isinstance(c, dict)]


def _condition_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == type_:
            return c.get("status") == "True"
    return False


def _fit_message(fits: Iterable[Fit]) -> str:
    return "; ".join(
        f"node group {f.group} has {format_bytes(f.free)} free of {format_bytes(f.limit)} per node, "
        f"model needs {format_bytes(f.needed)}"
        for f in fits
    )


def build_status(
    cache: Mapping[str, Any],
    placement: Placement,
    node_status: Mapping[str, NodeStatus],
    lmns: Mapping[str, Mapping[str, Any]],
    consumers: list[Obj] | None,
    now: datetime,
) -> Obj:
    """The whole ``status`` the cache should have, built on its current one (unknown fields kept,
    condition transition times kept unless the status flips)."""
    old: Mapping[str, Any] = cache.get("status") or {}
    key = cache_identity(cache)
    generation = _meta(cache).get("generation")
    status: Obj = {k: v for k, v in old.items() if k not in ("nodeStatus", "nodeStatusDetails")}
    if node_status:
        status["nodeStatus"] = {n: str(v) for n, v in node_status.items()}
    copies = copies_from_node_status(node_status)
    status["copies"] = {"available": copies.available, "total": copies.total, "failed": copies.failed}
    if consumers is not None:
        if consumers:
            status["inferenceServices"] = consumers
        else:
            status.pop("inferenceServices", None)
    status["observedGeneration"] = generation

    # per-node details: transition time, bytes and the agent's message
    old_details = old.get("nodeStatusDetails") or {}
    old_nodes = old.get("nodeStatus") or {}
    details: Obj = {}
    for node, value in node_status.items():
        prev = old_details.get(node) or {}
        d: Obj = {"status": str(value)}
        if old_nodes.get(node) == str(value) and prev.get("lastTransitionTime"):
            d["lastTransitionTime"] = prev["lastTransitionTime"]
        else:
            d["lastTransitionTime"] = format_time(now)
        agent = ((lmns.get(node) or {}).get("status") or {}).get("modelStatusDetails") or {}
        agent_detail = agent.get(key) if isinstance(agent, dict) else None
        if node in placement.not_ready:
            d["message"] = "node is not Ready"
        elif isinstance(agent_detail, dict):
            # The agent's detail, same field names on the cache: what a user asks first is "why".
            for field_name in AGENT_INT_DETAILS:
                if isinstance(agent_detail.get(field_name), int):
                    d[field_name] = agent_detail[field_name]
            for field_name in AGENT_TEXT_DETAILS:
                if agent_detail.get(field_name):
                    d[field_name] = str(agent_detail[field_name])
        details[node] = d
    if details:
        status["nodeStatusDetails"] = details

    total, available, failed = copies.total or 0, copies.available or 0, copies.failed or 0
    failing = [n for n, v in node_status.items() if v == NodeStatus.DOWNLOAD_ERROR]
    busy = [n for n, v in node_status.items() if v in (NodeStatus.DOWNLOAD_PENDING, NodeStatus.DOWNLOADING)]
    not_ready = sorted(placement.not_ready)
    insufficient = [placement.insufficient[g] for g in sorted(placement.insufficient)]

    conds = _conditions(old)

    def put(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds, _ = set_condition(
            conds, type_, ok, reason=reason, message=message, observed_generation=generation, now=now
        )

    if total > 0 and available == total:
        put(ConditionType.READY, True, "ModelCached", f"model is on {available}/{total} nodes")
    elif insufficient and total == 0:
        put(ConditionType.READY, False, "InsufficientStorage", _fit_message(insufficient))
    elif total == 0 and placement.missing_groups:
        put(ConditionType.READY, False, "NodeGroupNotFound",
            f"node groups not found: {', '.join(placement.missing_groups)}")  # fmt: skip
    elif total == 0:
        put(ConditionType.READY, False, "NoNodes", "no node of the listed node groups exists")
    elif failed:
        put(ConditionType.READY, False, "DownloadFailed", f"model is on {available}/{total} nodes")
    else:
        put(ConditionType.READY, False, "Downloading", f"model is on {available}/{total} nodes")

    if busy:
        put(ConditionType.DOWNLOADING, True, "Downloading",
            f"{len(busy)} nodes pending or downloading: {', '.join(sorted(busy))}")  # fmt: skip
    else:
        put(ConditionType.DOWNLOADING, False, "Idle", "no download pending or running")

    problems: list[str] = []
    reason = "AsExpected"
    if failing:
        reason = "DownloadFailed"
        parts = []
        for n in sorted(failing):
            msg = details.get(n, {}).get("message")
            parts.append(f"{n} ({msg})" if msg else n)
        problems.append(f"download failed on {', '.join(parts)}")
    if not_ready:
        reason = reason if reason != "AsExpected" else "NodeNotReady"
        problems.append(f"nodes not Ready: {', '.join(not_ready)}")
    if placement.missing_groups:
        reason = reason if reason != "AsExpected" else "NodeGroupNotFound"
        problems.append(f"node groups not found: {', '.join(placement.missing_groups)}")
    put(ConditionType.DEGRADED, bool(problems), reason, "; ".join(problems) or "all nodes healthy")

    if insufficient:
        put(CONDITION_INSUFFICIENT_STORAGE, True, "InsufficientStorage", _fit_message(insufficient))
    else:
        put(CONDITION_INSUFFICIENT_STORAGE, False, "StorageAvailable", "the model fits on every node group")

    status["conditions"] = [c.to_dict() for c in conds]
    return status


def status_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(type, reason, message)`` Events for the transitions between two statuses.

    Nodes that made the same transition share one Event listing them: a cache on 50 nodes is one
    ``Downloaded`` Event per status write, not 50 (per-node Events made Event writes the largest
    share of all API requests at 100 caches x 10 nodes).
    """
    before = old.get("nodeStatus") or {}
    after = new.get("nodeStatus") or {}
    details = new.get("nodeStatusDetails") or {}
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for node in sorted(after):
        if before.get(node) == after[node]:
            continue
        if after[node] == NodeStatus.DOWNLOADED:
            grouped.setdefault(("Normal", "Downloaded", ""), []).append(node)
        elif after[node] == NodeStatus.DOWNLOAD_ERROR:
            msg = str((details.get(node) or {}).get("message") or "")
            grouped.setdefault(("Warning", "DownloadFailed", msg), []).append(node)
        elif after[node] == NodeStatus.NOT_READY:
            grouped.setdefault(("Warning", "NodeNotReady", ""), []).append(node)
    gone = sorted(set(before) - set(after))
    if gone:
        grouped[("Normal", "NodeRemoved", "")] = gone
    texts = {
        "Downloaded": "model downloaded on {nodes}",
        "DownloadFailed": "download failed on {nodes}",
        "NodeNotReady": "{nodes} not Ready",
        "NodeRemoved": "{nodes} no longer holding the model",
    }
    out: list[tuple[str, str, str]] = []
    for (type_, reason, detail), nodes in grouped.items():
        where = f"node {nodes[0]}" if len(nodes) == 1 else f"{len(nodes)} nodes: {_some(nodes)}"
        message = texts[reason].format(nodes=where)
        out.append((type_, reason, f"{message}: {detail}" if detail else message))
    for type_, reason, event_type in (
        (ConditionType.READY, "Ready", "Normal"),
        (CONDITION_INSUFFICIENT_STORAGE, "InsufficientStorage", "Warning"),
    ):
        if _condition_true(new, type_) and not _condition_true(old, type_):
            cond = next(c for c in new.get("conditions") or [] if c.get("type") == type_)
            out.append((event_type, reason, str(cond.get("message") or reason)))
    return out


# ---- the reconciler --------------------------------------------------------------------------------
def _entry_keys(lmn: Obj) -> list[str]:
    return sorted({_entry_key(e) for e in (lmn.get("spec") or {}).get("localModels") or []})


def declare_informers(cache: Any, track_consumers: bool) -> None:
    """Every informer the cache reconcilers read, with their indexes (idempotent)."""
    declare_cache_informers(cache)
    cache.informer_for(LOCAL_MODEL_NODE_GROUPS)
    cache.informer_for(NODES)
    cache.informer_for(LOCAL_MODEL_NODES, indexers={INDEX_ENTRIES: _entry_keys})
    owner = {INDEX_VOLUME_OWNER: lambda o: [k for k in [volume_owner_key(o)] if k]}
    cache.informer_for(PERSISTENT_VOLUMES, indexers=owner)
    claimed = {INDEX_CLAIMED_VOLUME: lambda o: [v for v in [(o.get("spec") or {}).get("volumeName")] if v]}
    cache.informer_for(PERSISTENT_VOLUME_CLAIMS, indexers={**owner, **claimed})
    if track_consumers:
        consumer = {INDEX_CONSUMER: lambda o: [k for k in [consumer_key(o)] if k]}
        cache.informer_for(INFERENCE_SERVICES, indexers=consumer)


def _some(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _older(a: Obj, b: Obj) -> bool:
    """Whether ``a`` is an older version of the object than ``b`` (False when that cannot be told)."""
    try:
        return int(_meta(a).get("resourceVersion") or "") < int(_meta(b).get("resourceVersion") or "")
    except ValueError:
        return False


@dataclass
class _Pending:
    identity: tuple[str, str]
    want: Obj | None
    future: asyncio.Future[str | None]
    fresh: bool = False


class EntryWriter:
    """Writes ``spec.localModels`` entries, batched per LocalModelNode, shared by both scopes.

    Every change is a JSON patch whose ``test`` operation holds the list as we read it (optimistic
    concurrency on the spec alone, so the agent's status writes never make it fail): if another writer
    changed the list, the object is re-read from the API server and the changes re-applied, so no
    writer ever loses another's entry. Within this process, changes for one node that arrive while a
    write to it is in flight are applied together in the next single patch (50 caches created at once
    cost a handful of writes per node, not 50 conflicting ones), and the object our last write
    returned is used while the informer still shows the version before it, so we do not conflict with
    ourselves.
    """

    def __init__(self, client: Any, cache: Any, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.client = client
        self.cache = cache
        self.clock = clock
        self._pending: dict[str, list[_Pending]] = {}
        self._in_flight: dict[str, set[tuple[str, str]]] = {}  # node -> identities being written
        self._locks: dict[str, asyncio.Lock] = {}
        self._pacers: dict[str, LatencyPacer] = {}
        self._written: dict[str, Obj] = {}  # node -> what our last write to it returned
        self._entry_maps: dict[str, tuple[str, dict[tuple[str, str], list[Obj]]]] = {}
        self._callers: dict[str, int] = {}  # node -> set() calls running: its lock is not ours to drop

    def forget(self, node: str) -> None:
        """The node's LocalModelNode is gone: drop what we keep for it (the entry index alone holds
        its last thousand entries alive). The lock and the pacer stay while a call still uses them."""
        self._entry_maps.pop(node, None)
        self._written.pop(node, None)
        if not self._callers.get(node):
            self._locks.pop(node, None)
            self._pacers.pop(node, None)

    def _unchanged(self, node: str, identity: tuple[str, str], want: Obj | None) -> bool:
        """Whether the entry already is ``want`` and no write of ours for it is queued or in flight.

        Such a call (every reconcile after the first, while agents report) returns at once instead of
        queueing behind the node's in-flight write and its pacing.
        """
        if identity in self._in_flight.get(node, ()) or any(
            p.identity == identity for p in self._pending.get(node, ())
        ):
            return False
        lmn = self._latest(node)
        if lmn is None:
            return want is None
        version = _meta(lmn).get("resourceVersion") or ""
        seen, by_identity = self._entry_maps.get(node, (None, {}))
        if not version or seen != version:  # an index per version: O(1) per call, not O(entries)
            by_identity = {}
            for entry in (lmn.get("spec") or {}).get("localModels") or []:
                by_identity.setdefault(_entry_id(entry), []).append(entry)
            self._entry_maps[node] = (version, by_identity)
        return by_identity.get(identity, []) == ([want] if want is not None else [])

    async def set(
        self, node: str, identity: tuple[str, str], want: Obj | None, *, fresh: bool = False
    ) -> str | None:
        """Set (``want``) or remove (None) one entry; "added"/"updated"/"removed", or None if unchanged.

        ``fresh`` reads the object from the API server instead of the informer first (deletion: a
        decision "nothing to remove" must not rest on a stale copy).
        """
        if not fresh and self._unchanged(node, identity, want):
            return None
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(node, []).append(_Pending(identity, want, fut, fresh))
        self._callers[node] = self._callers.get(node, 0) + 1
        try:
            return await self._set(node, fut)
        finally:
            if self._callers[node] == 1:
                del self._callers[node]
            else:
                self._callers[node] -= 1

    async def _set(self, node: str, fut: asyncio.Future[str | None]) -> str | None:
        lock = self._locks.setdefault(node, asyncio.Lock())
        pacer = self._pacers.get(node)
        if pacer is None:
            pacer = self._pacers[node] = LatencyPacer(max_interval=10.0, factor=2.0, clock=self.clock)
        async with lock:
            if not fut.done():
                await self.clock.sleep(pacer.delay())  # what arrives meanwhile joins this write
                batch = self._pending.pop(node, [])
                self._in_flight[node] = {p.identity for p in batch}
                started = self.clock.monotonic()
                try:
                    outcomes = await self._write(node, batch)
                except asyncio.CancelledError:
                    # hand the others' changes to whoever takes the lock next
                    others = [p for p in batch if p.future is not fut and not p.future.done()]
                    self._pending.setdefault(node, [])[:0] = others
                    raise
                except Exception as exc:
                    for p in batch:
                        p.future.set_exception(exc)
                else:
                    pacer.wrote(started)  # only answers set the pace: a request that hung in an
                    # outage says nothing about the load, and errors have the workqueue's backoff
                    for p, outcome in zip(batch, outcomes, strict=True):
                        p.future.set_result(outcome)
                finally:
                    del self._in_flight[node]
        return fut.result()

    def _latest(self, node: str) -> Obj | None:
        """The informer's copy, or what our last write returned while the informer has not caught up.

        Resource versions are compared as numbers (etcd revisions, as every API server issues them):
        the informer may show a newer object written by the agent (status) and still be older than
        our last spec write. Should a version ever not be a number, the informer's copy is used and a
        stale list only costs a failed ``test`` and a re-read.
        """
        cached = self.cache.get_shared(LOCAL_MODEL_NODES, node)  # read-only: never mutated here
        written = self._written.get(node)
        if written is not None:
            if cached is None or _older(cached, written):
                return written
            self._written.pop(node, None)  # the informer has caught up
        return cached

    def _remember(self, node: str, written: Obj) -> None:
        """Keep what a write returned, without its status: only metadata and the spec are read from
        it, and the status is half of a large object (fifty nodes' copies add up)."""
        self._written[node] = {k: v for k, v in written.items() if k != "status"}

    def _node_owner(self, node: str) -> Obj | None:
        n = self.cache.get_cached(NODES, node)
        if n is None or not _meta(n).get("uid"):
            return None
        return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": _meta(n)["uid"]}

    async def _fresh(self, node: str) -> Obj | None:
        try:
            obj: Obj = await self.client.get(LOCAL_MODEL_NODES, node)
            return obj
        except errors.NotFound:
            return None

    @staticmethod
    def _apply(models: list[Obj], batch: list[_Pending]) -> tuple[list[Obj], list[str | None]]:
        outcomes: list[str | None] = []
        for p in batch:
            had = any(_entry_id(e) == p.identity for e in models)
            models, changed = upsert_entry(models, p.identity, p.want)
            if not changed:
                outcomes.append(None)
            elif p.want is None:
                outcomes.append("removed")
            else:
                outcomes.append("updated" if had else "added")
        return models, outcomes

    async def _write(self, node: str, batch: list[_Pending]) -> list[str | None]:
        lmn = await self._fresh(node) if any(p.fresh for p in batch) else self._latest(node)
        for _ in range(MAX_WRITE_ATTEMPTS):
            if lmn is None:
                adds = [p for p in batch if p.want is not None]
                owner = self._node_owner(node)
                if not adds or owner is None:  # nothing to add, or the Node is gone / not yet seen
                    return [None] * len(batch)
                models, outcomes = self._apply([], batch)
                body = {
                    "apiVersion": GROUP_VERSION,
                    "kind": "LocalModelNode",
                    "metadata": {"name": node, "ownerReferences": [owner]},
                    "spec": {"localModels": models},
                }
                try:
                    created: Obj = await self.client.create(LOCAL_MODEL_NODES, body)
                except errors.AlreadyExists:
                    lmn = await self._fresh(node)
                    continue
                self._remember(node, created)
                log.info("local model node created", extra={"node": node, "entries": str(len(models))})
                return outcomes
            if _deleting(lmn):
                return [None] * len(batch)  # going away with its Node; a new one comes once it is gone
            meta = _meta(lmn)
            current = list((lmn.get("spec") or {}).get("localModels") or [])
            models, outcomes = self._apply(current, batch)
            if not any(outcomes):
                return outcomes
            # The precondition is the list itself, not the resourceVersion: the agent's status writes
            # bump the version all the time and must not make our spec write fail and re-read.
            spec = lmn.get("spec")
            if spec is None:
                ops: list[Obj] = [{"op": "add", "path": "/spec", "value": {}}]
            elif "localModels" not in spec:
                ops = [{"op": "test", "path": "/spec", "value": spec}]
            else:
                ops = [{"op": "test", "path": "/spec/localModels", "value": current}]
            ops.append({"op": "add", "path": "/spec/localModels", "value": models})
            owner = self._node_owner(node)
            refs = list(meta.get("ownerReferences") or [])
            if (
                owner is not None
                and any(p.want for p in batch)
                and not any(r.get("kind") == "Node" for r in refs)
            ):
                ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": [*refs, owner]})
            try:
                result: Obj = await self.client.patch(LOCAL_MODEL_NODES, node, ops, patch_type="json")
            except errors.Invalid:
                # a failed ``test`` (someone changed the list) is a 422 like any invalid object;
                # re-read, and only a 422 against the list as it stands is a real error
                fresh = await self._fresh(node)
                if fresh is not None and (fresh.get("spec") or {}).get("localModels") == current:
                    raise
                lmn = fresh
                continue
            except errors.NotFound:
                self._written.pop(node, None)
                lmn = None
                continue
            self._remember(node, result)
            changed: dict[str, list[str]] = {}
            for p, outcome in zip(batch, outcomes, strict=True):
                if outcome:
                    changed.setdefault(outcome, []).append(status_key(p.identity[0], p.identity[1] or None))
            log.info(
                "local model node entries written",
                extra={
                    "node": node,
                    "entries": str(len(models)),
                    **{outcome: _some(names) for outcome, names in changed.items()},
                },
            )
            return outcomes
        raise errors.Conflict(f"LocalModelNode {node}: still conflicting after {MAX_WRITE_ATTEMPTS} attempts")


@dataclass(frozen=True)
class _GroupPlan:
    group: Obj
    views: list[Obj]  # planning views of the group's caches, as the informer holds them
    views_by_identity: dict[str, Obj]
    plan: dict[str, Fit]


class CacheReconciler:
    """Reconciles one cache kind (``scope``); see the module docstring."""

    def __init__(
        self,
        client: Any,
        cache: Any,
        scope: CacheScope,
        config: ConfigSource,
        *,
        recorder: Any = None,
        track_consumers: bool = True,
        resync_period: float = DEFAULT_RESYNC_PERIOD,
        writer: EntryWriter | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.writer = writer or EntryWriter(client, cache)
        self.client = client
        self.cache = cache
        self.scope = scope
        self.config = config
        self.recorder = recorder
        self.track_consumers = track_consumers
        self.resync_period = resync_period
        self._now = now or (lambda: datetime.now(UTC))
        self._rng = random.Random()
        self._plans: dict[str, _GroupPlan] = {}
        # cache identity -> (resourceVersion, status as JSON) of our last write of the cache (status,
        # or the finalizer); the status alone and encoded: decoded objects were 80 KiB a cache at 50 nodes
        self._status_written: dict[str, tuple[str, bytes]] = {}
        declare_informers(cache, track_consumers)

    # ---- helpers ---------------------------------------------------------------------------------
    def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        if self.recorder is None:
            return
        ref = {**obj, "apiVersion": GROUP_VERSION, "kind": self.scope.kind}
        try:
            self.recorder.event(ref, type_, reason, message)
        except (ValueError, TypeError) as exc:  # a malformed object must not fail the reconcile
            log.warning("event not recorded: %s", exc)

    def _resync(self) -> Result:
        return Result(requeue_after=self.resync_period * (0.9 + 0.2 * self._rng.random()))

    def _extra(self, obj: Mapping[str, Any] | Request) -> dict[str, str]:
        if isinstance(obj, Request):
            return {"kind": self.scope.kind, "cache": obj.key}
        return {"kind": self.scope.kind, "cache": status_key(_name(obj), _ns(obj) or None)}

    def storage_fits(self, cache_obj: Obj, groups: Mapping[str, Obj | None]) -> dict[str, Fit]:
        ident = cache_identity(cache_obj)
        mine = planning_view(cache_obj)
        fits: dict[str, Fit] = {}
        for g, group in groups.items():
            if group is None:
                continue
            memo = self._group_plan(g, group)
            if memo.views_by_identity.get(ident) == mine:
                fit = memo.plan.get(ident)
            else:  # our copy is newer than the informer's (or not in it yet): plan with ours
                others = [c for c in memo.views if cache_identity(c) != ident]
                fit = plan_group_storage(group, [*others, mine]).get(ident)
            if fit is not None:
                fits[g] = fit
        return fits

    def _group_plan(self, g: str, group: Obj) -> _GroupPlan:
        """The group's storage plan over the informer's caches, recomputed only when one changed.

        Every cache reconcile needs its fit, and planning walks all the group's caches (parsing each
        size): at a thousand caches that was the manager's largest CPU cost. The projected views are
        shared objects replaced only when their cache changes, so identity tells what changed.
        """
        views = caches_on_group(self.cache, g)
        memo = self._plans.get(g)
        if (
            memo is None
            or memo.group != group
            or len(memo.views) != len(views)
            or any(a is not b for a, b in zip(memo.views, views, strict=True))
        ):
            by_identity = {cache_identity(v): v for v in views}
            memo = _GroupPlan(group, views, by_identity, plan_group_storage(group, views))
            self._plans[g] = memo
        return memo

    # ---- reconcile -------------------------------------------------------------------------------
    async def reconcile(self, request: Request) -> Result | None:
        obj = self.cache.get_cached(self.scope.resource, request.name, request.namespace or None)
        if obj is None:
            # Gone without our cleanup (finalizer removed by hand, or deleted while we were down).
            await self._cleanup(request.name, request.namespace, None)
            return None
        if _deleting(obj):
            if self.scope.finalizer in (_meta(obj).get("finalizers") or []):
                try:
                    job_ns: str | None = self.config.current().local_model.job_namespace
                except ConfigError:
                    job_ns = None  # deletion must not wait for a fixed ConfigMap
                await self._cleanup(request.name, request.namespace, obj, job_ns)
                await self._remove_finalizer(obj)
            return None
        config = self.config.current()
        job_ns = config.local_model.job_namespace
        if self.scope.finalizer not in (_meta(obj).get("finalizers") or []) and self._newest(obj) is obj:
            # (a newer write of ours than the informer's copy was made with the finalizer in place)
            obj = await self._add_finalizer(obj)

        groups: dict[str, Obj | None] = {
            g: self.cache.get_cached(LOCAL_MODEL_NODE_GROUPS, g) for g in cache_groups(obj)
        }
        fits = self.storage_fits(obj, groups)
        placement = compute_placement(obj, groups, self.cache.list(NODES), fits)
        if placement.held:
            key = cache_identity(obj)
            placement.keep_existing(self.cache.index_keys(LOCAL_MODEL_NODES, INDEX_ENTRIES, key))
        await self._converge_entries(obj, placement)

        consumers: list[Obj] | None = None
        pairs: set[tuple[str, str]] | None = None
        manage_serving = self.track_consumers and not config.local_model.disable_volume_management
        if manage_serving:
            isvcs = self.cache.by_index(INFERENCE_SERVICES, INDEX_CONSUMER, cache_identity(obj))
            consumers, pairs = consumers_of(obj, isvcs)
        waiting = await self._converge_volumes(obj, groups, job_ns, pairs, manage_serving)

        await self._converge_status(obj, placement, consumers)
        return Result(requeue_after=WAIT_REQUEUE) if waiting else self._resync()

    # ---- finalizer -------------------------------------------------------------------------------
    async def _add_finalizer(self, obj: Obj) -> Obj:
        meta = _meta(obj)
        finalizers = [*(meta.get("finalizers") or []), self.scope.finalizer]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        try:
            updated: Obj = await self.client.patch(self.scope.resource, _name(obj), patch, _ns(obj) or None)
        except errors.Conflict:
            fresh: Obj = await self.client.get(self.scope.resource, _name(obj), _ns(obj) or None)
            if self.scope.finalizer in (_meta(fresh).get("finalizers") or []) and not _deleting(fresh):
                return fresh  # someone (a previous leader) added it meanwhile
            raise
        self._remember_write(updated)  # the next reconcile may come before the informer has it
        log.info("finalizer added", extra=self._extra(obj))
        return updated

    async def _remove_finalizer(self, obj: Obj) -> None:
        meta = _meta(obj)
        finalizers = [f for f in meta.get("finalizers") or [] if f != self.scope.finalizer]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        try:
            await self.client.patch(self.scope.resource, _name(obj), patch, _ns(obj) or None)
        except errors.NotFound:
            return
        log.info("finalizer removed; cache deleted", extra=self._extra(obj))

    # ---- entries ---------------------------------------------------------------------------------
    async def _converge_entries(self, obj: Obj, placement: Placement) -> None:
        identity = (_name(obj), _ns(obj))
        key = cache_identity(obj)
        holders = set(self.cache.index_keys(LOCAL_MODEL_NODES, INDEX_ENTRIES, key))  # cluster-scoped: names
        wanted: dict[str, Obj] = {n: desired_entry(obj, g) for n, g in placement.ready.items()}
        for n, g in placement.not_ready.items():
            if n in holders:  # kept on a NotReady node, never added there
                wanted[n] = desired_entry(obj, g)
        nodes = sorted(set(wanted) | holders)
        outcomes = await asyncio.gather(*(self.writer.set(n, identity, wanted.get(n)) for n in nodes))
        added = [n for n, o in zip(nodes, outcomes, strict=True) if o == "added"]
        removed = [n for n, o in zip(nodes, outcomes, strict=True) if o == "removed"]
        if added:
            self._event(obj, "Normal", "NodeAdded", f"model added to nodes {_some(added)}")
        if removed:
            self._event(obj, "Normal", "NodeRemoved", f"model removed from nodes {_some(removed)}")

    # ---- volumes ---------------------------------------------------------------------------------
    def _existing(self, key: VolumeKey) -> Obj | None:
        kind, ns, name = key
        if kind == "PersistentVolume":
            return self.cache.get_cached(PERSISTENT_VOLUMES, name)
        return self.cache.get_cached(PERSISTENT_VOLUME_CLAIMS, name, ns)

    def _ours(self, key: str) -> tuple[list[Obj], list[Obj]]:
        pvs = self.cache.by_index(PERSISTENT_VOLUMES, INDEX_VOLUME_OWNER, key)
        pvcs = self.cache.by_index(PERSISTENT_VOLUME_CLAIMS, INDEX_VOLUME_OWNER, key)
        return pvs, pvcs

    async def _converge_volumes(
        self,
        obj: Obj,
        groups: Mapping[str, Obj | None],
        job_ns: str,
        pairs: set[tuple[str, str]] | None,
        manage_serving: bool,
    ) -> bool:
        """Create missing volumes, prune unwanted ones; True while waiting for one to terminate."""
        desired = desired_volumes(obj, self.scope, groups, job_ns, pairs)
        waiting = False
        pvs, pvcs = self._ours(cache_identity(obj))

        def prunable(o: Obj) -> bool:
            purpose = (_meta(o).get("labels") or {}).get(LABEL_VOLUME_PURPOSE)
            return manage_serving or purpose != PURPOSE_SERVING

        unwanted_pvcs = [
            c for c in pvcs
            if ("PersistentVolumeClaim", _ns(c), _name(c)) not in desired and prunable(c) and not _deleting(c)
        ]  # fmt: skip
        for c in unwanted_pvcs:
            await self._delete(PERSISTENT_VOLUME_CLAIMS, _name(c), _ns(c), obj)
        for v in pvs:
            if ("PersistentVolume", "", _name(v)) in desired or not prunable(v) or _deleting(v):
                continue
            if self.cache.index_keys(PERSISTENT_VOLUME_CLAIMS, INDEX_CLAIMED_VOLUME, _name(v)):
                waiting = True  # its PVC goes first; the PVC's delete event brings us back
                continue
            await self._delete(PERSISTENT_VOLUMES, _name(v), None, obj)

        # PVs before PVCs, so a PVC is never created against a PV we are about to replace
        for key in sorted(desired, key=lambda k: (k[0] != "PersistentVolume", k)):
            kind, _, name = key
            existing = self._existing(key)
            if existing is None:
                if kind == "PersistentVolumeClaim":
                    pv = self.cache.get_cached(PERSISTENT_VOLUMES, desired[key]["spec"]["volumeName"])
                    if pv is None or _deleting(pv) or stale_claim(pv):
                        waiting = True
                        continue
                await self._create(key, desired[key], obj)
            elif _deleting(existing):
                waiting = True
            elif kind == "PersistentVolume" and stale_claim(existing):
                claim = (existing.get("spec") or {}).get("claimRef") or {}
                live = None
                if claim.get("name") and claim.get("namespace"):
                    live = self.cache.get_cached(PERSISTENT_VOLUME_CLAIMS, claim["name"], claim["namespace"])
                if live is None or _meta(live).get("uid") != claim.get("uid"):
                    await self._delete(PERSISTENT_VOLUMES, name, None, obj)
                    waiting = True
        return waiting

    async def _create(self, key: VolumeKey, body: Obj, obj: Obj) -> None:
        kind, ns, name = key
        res = PERSISTENT_VOLUMES if kind == "PersistentVolume" else PERSISTENT_VOLUME_CLAIMS
        try:
            await self.client.create(res, body, ns or None)
        except errors.AlreadyExists:
            return
        log.info("%s created", kind, extra={**self._extra(obj), "volume": f"{ns}/{name}" if ns else name})

    async def _delete(self, res: Resource, name: str, ns: str | None, obj: Obj | None) -> None:
        result = await self.client.delete(res, name, ns, missing_ok=True)
        if result is not None:
            where = f"{ns}/{name}" if ns else name
            extra = {"kind": self.scope.kind, "volume": where}
            if obj is not None:
                extra.update(self._extra(obj))
            log.info("%s deleted", res.kind, extra=extra)

    # ---- status ----------------------------------------------------------------------------------
    def _remember_write(self, written: Obj) -> None:
        version = _meta(written).get("resourceVersion") or ""
        self._status_written[cache_identity(written)] = (
            version,
            jsoncodec.dumps_exact(written.get("status") or {}),
        )

    def _newest(self, obj: Obj) -> Obj:
        """``obj``, or what our last write of it (status or finalizer) returned while the informer shows
        an older version: a cache reconciled again right after our write would otherwise PUT with a
        stale resourceVersion, get a 409 and re-read it (a third of the status writes at 1,000 x 50)."""
        key = cache_identity(obj)
        written = self._status_written.get(key)
        if written is None:
            return obj
        version, status = written
        if _older(obj, {"metadata": {"resourceVersion": version}}):
            # our write changed only the status (and the version): the rest is what the informer has
            return {
                **obj,
                "metadata": {**_meta(obj), "resourceVersion": version},
                "status": jsoncodec.loads(status),
            }
        del self._status_written[key]  # the informer has caught up, or someone wrote after us
        return obj

    async def _converge_status(self, obj: Obj, placement: Placement, consumers: list[Obj] | None) -> None:
        obj = self._newest(obj)
        key = cache_identity(obj)
        # shared, read-only copies: a LocalModelNode with a thousand entries is decoded once per
        # version, not once per cache reconcile (that was most of the manager's CPU at 1,000 caches)
        lmns = {n: self.cache.get_shared(LOCAL_MODEL_NODES, n) or {} for n in placement.members}
        for attempt in range(MAX_WRITE_ATTEMPTS):
            old = obj.get("status") or {}
            node_status = compute_node_status(placement, lmns, key, old.get("nodeStatus"))
            new = build_status(obj, placement, node_status, lmns, consumers, self._now())
            if new == old:
                return
            body = {**obj, "apiVersion": GROUP_VERSION, "kind": self.scope.kind, "status": new}
            try:
                written: Obj = await self.client.update_status(self.scope.resource, body, _ns(obj) or None)
            except errors.Conflict:
                log.info("status conflict; re-reading", extra={**self._extra(obj), "attempt": str(attempt)})
                try:
                    obj = await self.client.get(self.scope.resource, _name(obj), _ns(obj) or None)
                except errors.NotFound:
                    return
                if _deleting(obj):
                    return
                continue
            self._remember_write(written)
            copies = new.get("copies") or {}
            log.info("status updated", extra={**self._extra(obj), "available": str(copies.get("available")),
                                               "total": str(copies.get("total"))})  # fmt: skip
            for type_, reason, message in status_events(old, new):
                self._event(obj, type_, reason, message)
            return
        raise errors.Conflict(
            f"{self.scope.kind} {key}: status still conflicting after {MAX_WRITE_ATTEMPTS} attempts"
        )

    # ---- deletion --------------------------------------------------------------------------------
    async def _cleanup(self, name: str, namespace: str, obj: Obj | None, job_ns: str | None = None) -> None:
        """Remove every trace of the cache: entries on every LocalModelNode, then PVCs, then PVs."""
        identity = (name, namespace)
        key = status_key(name, namespace or None)
        self._status_written.pop(key, None)
        holders = {_name(lmn) for lmn in self.cache.by_index(LOCAL_MODEL_NODES, INDEX_ENTRIES, key)}
        if obj is not None:
            # Before the finalizer goes, ask the API server itself: an entry written a moment ago may
            # not be in the informer yet, and would otherwise be left behind for good.
            items, _ = await self.client.list_all(LOCAL_MODEL_NODES)
            holders |= {_name(lmn) for lmn in items if key in _entry_keys(lmn)}
        nodes = sorted(holders)
        fresh = obj is not None
        outcomes = await asyncio.gather(*(self.writer.set(n, identity, None, fresh=fresh) for n in nodes))
        removed = [n for n, o in zip(nodes, outcomes, strict=True) if o == "removed"]
        if removed and obj is not None:
            self._event(obj, "Normal", "NodeRemoved", f"model removed from nodes {_some(removed)}")
        pvs, pvcs = self._ours(key)
        pvc_keys = {(_ns(c), _name(c)) for c in pvcs if not _deleting(c)}
        pv_names = {_name(v) for v in pvs if not _deleting(v)}
        if obj is not None and job_ns is not None:
            # volumes made before we labelled them (e.g. by KServe) are found by their names
            groups = {g: self.cache.get_cached(LOCAL_MODEL_NODE_GROUPS, g) or {} for g in cache_groups(obj)}
            pairs = {
                (ref.get("namespace") or "", g)
                for ref in (obj.get("status") or {}).get("inferenceServices") or []
                for g in groups
            }
            for kind, ns, vname in desired_volumes(obj, self.scope, groups, job_ns, pairs):
                found = self._existing((kind, ns, vname))
                if found is None or _deleting(found):
                    continue
                if kind == "PersistentVolume":
                    pv_names.add(vname)
                else:
                    pvc_keys.add((ns, vname))
        for ns, vname in sorted(pvc_keys):
            await self._delete(PERSISTENT_VOLUME_CLAIMS, vname, ns, obj)
        for vname in sorted(pv_names):
            await self._delete(PERSISTENT_VOLUMES, vname, None, obj)

    # ---- watch mapping ---------------------------------------------------------------------------
    def _requests(self, keys: Iterable[str]) -> list[Request]:
        return sorted({r for k in keys if (r := self.scope.request_for_key(k)) is not None})

    def caches_in_groups(self, group_names: Iterable[str]) -> list[Request]:
        keys: set[str] = set()
        for g in group_names:
            for c in self.cache.by_index(self.scope.resource, INDEX_GROUPS, g):
                keys.add(cache_identity(c))
        return self._requests(keys)

    def map_node(self, node: Obj) -> list[Request]:
        groups = [
            _name(g)
            for g in self.cache.list(LOCAL_MODEL_NODE_GROUPS)
            if match_node_selector_terms(node, group_terms(g))
        ]
        return self.caches_in_groups(groups)

    def map_group(self, group: Obj) -> list[Request]:
        return self.caches_in_groups([_name(group)])

    def map_volume(self, volume: Obj) -> list[Request]:
        key = volume_owner_key(volume)
        return self._requests([key] if key else [])

    def map_consumer(self, isvc: Obj) -> list[Request]:
        key = consumer_key(isvc)
        return self._requests([key] if key else [])

    def map_config(self, _cm: Obj) -> list[Request]:
        return sorted(Request.for_object(c) for c in self.cache.list(self.scope.resource))

    def map_fit(self, changed: Obj) -> list[Request]:
        """Caches whose storage fit may change with ``changed``: later ones on a shared group, and
        ones currently short of storage there."""
        me = cache_identity(changed)
        order = cache_order(changed)
        keys: set[str] = set()
        for g in cache_groups(changed):
            for c in self.cache.by_index(self.scope.resource, INDEX_GROUPS, g):
                if cache_identity(c) == me:
                    continue
                if cache_order(c) > order or _condition_true(c.get("status"), CONDITION_INSUFFICIENT_STORAGE):
                    keys.add(cache_identity(c))
        return self._requests(keys)


class EnqueueOldAndNew(EnqueueRequestForOwner):
    """Map both the old and the new object of an update (plain map functions see only the new one).

    When a label change moves a Node out of a group, or an InferenceService to another cache, the
    cache it *left* must hear of it too. The runtime's informer adapter maps old and new objects for
    owner handlers, so this handler is one, with a map function in place of owner references.
    """

    def __init__(self, map_fn: Callable[[Obj], list[Request]]) -> None:
        super().__init__("", "", only_controller=False)
        self.map_fn = map_fn

    def requests(self, obj: Obj) -> Iterable[Request]:
        return self.map_fn(obj)


class LocalModelNodeMapper:
    """LocalModelNode events → exactly the caches whose entry or reported status changed.

    Remembers, per LocalModelNode, a digest of each status key's (entry, modelStatus, details) for the
    keys of its own scope; a cache is enqueued only when its own digest differs, so one agent update
    does not wake every cache on the node, and our own entry writes wake only the cache written. At a
    thousand models on fifty nodes that memory is 16 bytes per (cache, node), not the whole triple.
    """

    def __init__(self, reconciler: CacheReconciler) -> None:
        self.reconciler = reconciler
        self._last: dict[str, dict[str, bytes]] = {}

    def signatures(self, lmn: Obj) -> dict[str, bytes]:
        scope = self.reconciler.scope
        status = lmn.get("status") or {}
        model_status = status.get("modelStatus") or {}
        details = status.get("modelStatusDetails") or {}
        entries = {_entry_key(e): e for e in (lmn.get("spec") or {}).get("localModels") or []}
        keys = {k for k in (*entries, *model_status) if scope.owns_key(k)}
        return {k: _digest([entries.get(k), model_status.get(k), details.get(k)]) for k in keys}

    def __call__(self, lmn: Obj) -> list[Request]:
        name = _name(lmn)
        now = self.signatures(lmn)
        before = self._last.pop(name, {})
        if self.reconciler.cache.get_shared(LOCAL_MODEL_NODES, name) is None:
            # Deleted (the informer's store is updated before its handlers run): every cache that had
            # an entry there is affected, and nothing about the node is worth keeping.
            self.reconciler.writer.forget(name)
            return self.reconciler._requests(set(now) | set(before))
        self._last[name] = now
        changed = {k for k in set(now) | set(before) if now.get(k) != before.get(k)}
        return self.reconciler._requests(changed)


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(jsoncodec.canonical(value), digest_size=16).digest()


# ---- predicates ------------------------------------------------------------------------------------
def _cache_changed() -> Predicate:
    """Our own status writes do not wake the cache again; spec, finalizers and deletion do."""

    def changed(e: Any) -> bool:
        if e.is_resync:
            return True
        old, new = _meta(e.old), _meta(e.new)
        return (
            old.get("generation") != new.get("generation")
            or old.get("deletionTimestamp") != new.get("deletionTimestamp")
            or old.get("finalizers") != new.get("finalizers")
            or e.old.get("spec") != e.new.get("spec")
        )

    return Funcs(update=changed)


def _placement_changed() -> Predicate:
    def changed(e: Any) -> bool:
        old, new = e.old.get("spec") or {}, e.new.get("spec") or {}
        return (old.get("modelSize"), old.get("nodeGroups")) != (
            new.get("modelSize"),
            new.get("nodeGroups"),
        ) or _meta(e.old).get("deletionTimestamp") != _meta(e.new).get("deletionTimestamp")

    return Funcs(create=lambda e: False, update=changed)


def _node_changed() -> Predicate:
    def changed(e: Any) -> bool:
        labels = (_meta(e.old).get("labels") or {}) != (_meta(e.new).get("labels") or {})
        return labels or is_node_ready(e.old) != is_node_ready(e.new)

    return Funcs(update=changed)


def _spec_changed() -> Predicate:
    return Funcs(update=lambda e: e.old.get("spec") != e.new.get("spec"))


def _consumer_changed() -> Predicate:
    def changed(e: Any) -> bool:
        old, new = _meta(e.old), _meta(e.new)
        return (old.get("labels"), (old.get("annotations") or {}).get(ANNOTATION_NODE_GROUP)) != (
            new.get("labels"),
            (new.get("annotations") or {}).get(ANNOTATION_NODE_GROUP),
        )

    return Funcs(update=changed)


def _not_resync() -> Predicate:
    return Funcs(update=lambda e: not e.is_resync)


# ---- wiring ----------------------------------------------------------------------------------------
async def consumers_available(client: Any, patience: float = 60.0) -> bool:
    """Whether the InferenceService API exists (KServe installed); without it there are no consumers.

    Asked once at start-up, when an API server that has just restarted may still answer discovery with
    500s or a 403 from a cold authorizer: those are retried with backoff for ``patience`` seconds rather
    than ending the process. Only NotFound means "not installed".
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception(
            lambda exc: isinstance(exc, errors.ApiError) and not isinstance(exc, errors.NotFound)
        ),
        wait=wait_exponential_jitter(initial=0.2, max=5.0),
        stop=stop_after_delay(patience),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await client.resource_for(INFERENCE_SERVICES.api_version, INFERENCE_SERVICES.kind)
    except errors.NotFound:
        return False
    return True


def setup_cache_controllers(
    manager: Any,
    *,
    config_namespace: str,
    track_consumers: bool = True,
    recorder: Any = None,
    resync_period: float = DEFAULT_RESYNC_PERIOD,
    max_concurrent_reconciles: int = DEFAULT_MAX_CONCURRENT_RECONCILES,
    name_prefix: str = "",
    **options: Any,
) -> list[Any]:
    """Build the LocalModelCache and LocalModelNamespaceCache controllers on a runtime Manager.

    ``track_consumers`` False (no InferenceService CRD) skips the InferenceService informer and
    consumer tracking. Returns the two Controllers (already added to the manager).
    """
    cache = manager.cache
    if recorder is None:
        recorder = manager.event_recorder("localmodel-controller")
    config = ConfigSource(cache, config_namespace, recorder)
    # one per process: both scopes batch into it
    writer = EntryWriter(manager.client, cache, clock=manager.clock)
    controllers = []
    for scope, name in ((CLUSTER, "localmodelcache"), (NAMESPACE, "localmodelnamespacecache")):
        reconciler = CacheReconciler(
            manager.client,
            cache,
            scope,
            config,
            recorder=recorder,
            track_consumers=track_consumers,
            resync_period=resync_period,
            writer=writer,
        )
        other = LOCAL_MODEL_NAMESPACE_CACHES if scope is CLUSTER else LOCAL_MODEL_CACHES
        builder = (
            manager.controller(name_prefix + name)
            .for_(scope.resource, predicates=[_cache_changed()])
            .watches(scope.resource, reconciler.map_fit, predicates=[_placement_changed()])
            .watches(other, reconciler.map_fit, predicates=[_placement_changed()])
            .watches(NODES, EnqueueOldAndNew(reconciler.map_node), predicates=[_node_changed()])
            .watches(LOCAL_MODEL_NODE_GROUPS, reconciler.map_group, predicates=[_spec_changed()])
            .watches(
                LOCAL_MODEL_NODES,
                EnqueueRequestsFromMapFunc(LocalModelNodeMapper(reconciler), coalesce=NODE_REPORT_COALESCE),
                predicates=[_not_resync()],
            )
            .watches(PERSISTENT_VOLUMES, reconciler.map_volume, predicates=[_not_resync()])
            .watches(PERSISTENT_VOLUME_CLAIMS, reconciler.map_volume, predicates=[_not_resync()])
        )
        if track_consumers:
            builder = builder.watches(
                INFERENCE_SERVICES,
                EnqueueOldAndNew(reconciler.map_consumer),
                predicates=[_consumer_changed()],
            )
        builder = builder.with_options(max_concurrent_reconciles=max_concurrent_reconciles, **options)
        controller = builder.build(reconciler)
        controller.watch(config.informer, EnqueueRequestsFromMapFunc(reconciler.map_config), _not_resync())
        controllers.append(controller)
    return controllers
