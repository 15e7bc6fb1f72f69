"""The pod-gate controller: release predictor pods once their model is on a node's disk.

The pod webhook (:mod:`localcache.controllers.pod`) holds a bound pod with the scheduling gate
``serving.kserve.io/localmodel-ready`` when no node of its group has the model yet. This controller
watches those pods (a label-selected informer: only pods bound to a cache are cached) and the caches;
when a cache reports ``NodeDownloaded`` on at least one node of the pod's group it narrows the pod's
required node affinity to those nodes and removes the gate, in one update guarded by the pod's
resourceVersion (a conflict re-reads and retries). It never widens placement and never touches pods
without the gate.

Level-based: the key is the pod; the cache's status is read on every reconcile. A cache change maps
to the gated pods bound to it through an index on the pod informer. While waiting, the pod is looked
at again every ``recheck_after`` seconds as a safety net for what no watch reports (Node label changes
that move a node into a group).

Events on the pod: ``WaitingForModel`` (once per pod and process) and ``ModelReady`` when released.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from localcache.api.constants import LABEL_LOCAL_MODEL, LABEL_LOCAL_MODEL_NAMESPACE
from localcache.controllers import LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES
from localcache.controllers.pod import (
    SCHEDULING_GATE,
    ModelReadiness,
    has_scheduling_gate,
    narrow_node_affinity,
    remove_scheduling_gate,
)
from localcache.runtime import errors
from localcache.runtime.cache import InformerCache
from localcache.runtime.controller import Controller
from localcache.runtime.events import EventRecorder
from localcache.runtime.handlers import EnqueueRequestForObject, EnqueueRequestsFromMapFunc
from localcache.runtime.informer import SharedInformer
from localcache.runtime.predicates import new_predicate_funcs
from localcache.runtime.reconcile import Request, Result
from localcache.runtime.resources import PODS

__all__ = ["CACHE_INDEX", "CONTROLLER_NAME", "PodGateReconciler", "build_pod_gate_controller"]

log = logging.getLogger(__name__)

CONTROLLER_NAME = "localmodel-podgate"
#: pod informer index: the cache a pod is bound to, ``<name>`` or ``<namespace>/<name>``
CACHE_INDEX = "localcache.cache"
UPDATE_ATTEMPTS = 5

Obj = dict[str, Any]


def _cache_key(obj: Mapping[str, Any]) -> list[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get(LABEL_LOCAL_MODEL)
    if not name:
        return []
    namespace = labels.get(LABEL_LOCAL_MODEL_NAMESPACE)
    return [f"{namespace}/{name}" if namespace else name]


class PodGateReconciler:
    """Reconciles one gated pod; see the module docstring."""

    def __init__(
        self,
        client: Any,
        pods: SharedInformer,
        readiness: ModelReadiness,
        recorder: EventRecorder | None = None,
        *,
        recheck_after: float = 60.0,
    ) -> None:
        self.client = client
        self.pods = pods
        self.readiness = readiness
        self.recorder = recorder
        self.recheck_after = recheck_after
        self._told_waiting: OrderedDict[str, None] = OrderedDict()
        self.released = 0

    def requests_for_cache(self, cache: Mapping[str, Any]) -> list[Request]:
        """Gated pods bound to this cache (a cluster cache never maps to namespace-cache pods)."""
        meta = cache.get("metadata") or {}
        name = meta.get("name")
        if not name:
            return []
        namespace = meta.get("namespace")
        key = f"{namespace}/{name}" if namespace else name
        return [
            Request.for_object(pod)
            for pod in self.pods.store.by_index(CACHE_INDEX, key)
            if has_scheduling_gate(pod)
        ]

    def _event(self, pod: Obj, kind: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event(pod, kind, reason, message, resource=PODS)

    def _waiting(self, pod: Obj, message: str) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if uid in self._told_waiting:
            return
        self._told_waiting[uid] = None
        while len(self._told_waiting) > 10000:
            self._told_waiting.popitem(last=False)
        self._event(pod, "Normal", "WaitingForModel", f"scheduling gate {SCHEDULING_GATE} held: {message}")

    async def reconcile(self, req: Request) -> Result | None:
        pod = self.pods.store.get_by_name(req.namespace, req.name)
        if (
            pod is None
            or not has_scheduling_gate(pod)
            or (pod.get("metadata") or {}).get("deletionTimestamp")
        ):
            return None
        ready = await self.readiness.ready_nodes(pod)
        if not ready.nodes:
            self._waiting(pod, ready.reason)
            log.debug("pod gate held", extra={"pod": req.key, "detail": ready.reason})
            return Result(requeue_after=self.recheck_after)
        uid = (pod.get("metadata") or {}).get("uid")
        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            try:
                live = await self.client.get(PODS, req.name, req.namespace)
            except errors.NotFound:
                return None
            meta = live.get("metadata") or {}
            if meta.get("uid") != uid or not has_scheduling_gate(live) or meta.get("deletionTimestamp"):
                return None
            spec = live.setdefault("spec", {})
            narrow_node_affinity(spec, ready.nodes)
            remove_scheduling_gate(spec)
            try:
                await self.client.update(PODS, live)
            except errors.Conflict:
                log.info("pod gate: conflict, retrying", extra={"pod": req.key, "attempt": attempt})
                continue
            except errors.Invalid as exc:
                self._event(
                    live, "Warning", "GateLiftFailed", f"cannot narrow placement and lift the gate: {exc}"
                )
                raise
            self.released += 1
            self._told_waiting.pop(str(uid), None)
            done = f"{ready.reason}; affinity narrowed to them, gate {SCHEDULING_GATE} removed"
            self._event(live, "Normal", "ModelReady", done)
            log.info(
                "pod gate lifted", extra={"pod": req.key, "cache": ready.cache, "nodes": list(ready.nodes)}
            )
            return None
        raise errors.Conflict(f"pod {req.key}: still conflicting after {UPDATE_ATTEMPTS} attempts")


def build_pod_gate_controller(
    client: Any,
    cache: InformerCache,
    readiness: ModelReadiness,
    recorder: EventRecorder | None = None,
    *,
    name: str = CONTROLLER_NAME,
    recheck_after: float = 60.0,
    max_concurrent_reconciles: int = 2,
) -> Controller:
    """The controller (a leader-only runnable): gated bound pods, plus both cache kinds mapped to them."""
    pods = cache.informer_for(PODS, label_selector=LABEL_LOCAL_MODEL, indexers={CACHE_INDEX: _cache_key})
    reconciler = PodGateReconciler(client, pods, readiness, recorder, recheck_after=recheck_after)
    ctrl = Controller(
        name, reconciler, clock=cache.clock, max_concurrent_reconciles=max_concurrent_reconciles
    )
    ctrl.watch(pods, EnqueueRequestForObject(), new_predicate_funcs(has_scheduling_gate))
    mapper = EnqueueRequestsFromMapFunc(reconciler.requests_for_cache)
    for res in (LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES):
        ctrl.watch(cache.informer_for(res), mapper)
    return ctrl
