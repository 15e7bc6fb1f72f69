"""Predictor Pod admission: serve the model from the node's disk, and never start on an empty folder.

The rewrite is KServe's storage-initializer injector for a bound pod (reference §4.3): the source URI
becomes ``pvc://<pvc>/models/<key><subpath>``, the PVC is mounted at ``/mnt/models`` on the
``kserve-container`` (and the ``transformer-container`` if present) with that sub-path, read-only unless
``storage.kserve.io/readonly: "false"``, and no init container runs. The rewrite is idempotent: a pod
that another injector already touched (KServe's own, with or without local-model support) ends up
with exactly one ``kserve-pvc-source`` volume, one ``/mnt/models`` mount per container and no
``storage-initializer`` init container.

KServe stops there, so a pod whose model has not finished downloading starts on an empty directory
(kubelet creates the sub-path) and the model server fails. Here the pod is also placed:

* when the cache reports ``NodeDownloaded`` on at least one node of the pod's node group, a required
  node-affinity term restricts the pod to those nodes (``kubernetes.io/hostname In [...]``, the same
  label the download Jobs are pinned with);
* otherwise the pod gets the scheduling gate ``serving.kserve.io/localmodel-ready``; the pod-gate
  controller (:mod:`localcache.controllers.podgate`) narrows its affinity and lifts the gate once a
  node has the model. Kubernetes lets a gated pod's node affinity be narrowed, never widened, so the
  gate is the only safe moment to decide placement after creation.

Public interface::

    mutated = rewrite_pod(pod)                 # pure KServe rewrite; PodRewriteError on bad input
    narrow_node_affinity(pod_spec, nodes)      # add hostname-In to every required term
    readiness = ModelReadiness(client, caches) # await readiness.ready_nodes(pod) -> ReadyNodes
    mutator = PodMutator(readiness, gate=True) # await mutator.handle(admission_request)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from localcache.api.constants import (
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_NODE_GROUP,
    ANNOTATION_READONLY,
    ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI,
    DOWNLOAD_VOLUME_NAME,
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
    MOUNT_PATH,
)
from localcache.api.localmodelcache import NodeStatus
from localcache.api.naming import pvc_storage_uri, serving_pvc_name
from localcache.controllers import LOCAL_MODEL_NODE_GROUPS
from localcache.controllers.isvc import CacheReader
from localcache.controllers.membership import group_terms, match_node_selector_terms
from localcache.runtime import errors
from localcache.runtime.cache import InformerCache, ResourceNotCached
from localcache.runtime.resources import NODES, Resource
from localcache.runtime.webhook import AdmissionRequest, AdmissionResponse

__all__ = [
    "HOSTNAME_LABEL",
    "KSERVE_CONTAINER",
    "SCHEDULING_GATE",
    "STORAGE_INITIALIZER_CONTAINER",
    "TRANSFORMER_CONTAINER",
    "ModelReadiness",
    "PodMutator",
    "PodRewriteError",
    "ReadyNodes",
    "add_scheduling_gate",
    "has_scheduling_gate",
    "narrow_node_affinity",
    "remove_scheduling_gate",
    "rewrite_pod",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

SCHEDULING_GATE = "serving.kserve.io/localmodel-ready"
KSERVE_CONTAINER = "kserve-container"
TRANSFORMER_CONTAINER = "transformer-container"
STORAGE_INITIALIZER_CONTAINER = "storage-initializer"
#: KServe's emptyDir for a copied model; dropped when the PVC mount replaces its last user.
PROVISION_VOLUME = "kserve-provision-location"
HOSTNAME_LABEL = "kubernetes.io/hostname"


class PodRewriteError(ValueError):
    """The pod cannot be rewritten; the message names the pod's missing or wrong field."""


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _pod_ref(pod: Mapping[str, Any], namespace: str = "") -> str:
    meta = _meta(pod)
    ns = meta.get("namespace") or namespace
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "<unnamed>")
    return f"{ns}/{name}" if ns else str(name)


# --- the KServe rewrite ----------------------------------------------------------------------------
def _split_pvc_uri(uri: str) -> tuple[str, str]:
    """KServe's ParsePvcURI: ``pvc://name/a/b`` → ``("name", "a/b")``."""
    name, _, path = uri.removeprefix("pvc://").partition("/")
    return name, path


def rewrite_pod(pod: Mapping[str, Any]) -> Obj:
    """A copy of ``pod`` reading its model from the cache's PVC instead of downloading it.

    Pods without the ``internal.serving.kserve.io/localmodel`` label or without the storage-initializer
    source-URI annotation are returned unchanged.
    """
    out: Obj = copy.deepcopy(dict(pod))
    meta = out.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    src = annotations.get(ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI)
    if LABEL_LOCAL_MODEL not in labels or not src:
        return out
    ref = _pod_ref(out)
    source_uri = annotations.get(ANNOTATION_LOCAL_MODEL_SOURCE_URI)
    if not source_uri:
        raise PodRewriteError(
            f"Pod {ref}: annotation {ANNOTATION_LOCAL_MODEL_SOURCE_URI} not found; the pod carries label "
            f"{LABEL_LOCAL_MODEL}={labels[LABEL_LOCAL_MODEL]} but not the cache's source URI"
        )
    pvc_name = annotations.get(ANNOTATION_LOCAL_MODEL_PVC_NAME)
    if not pvc_name:
        raise PodRewriteError(
            f"Pod {ref}: annotation {ANNOTATION_LOCAL_MODEL_PVC_NAME} not found; the pod carries label "
            f"{LABEL_LOCAL_MODEL}={labels[LABEL_LOCAL_MODEL]} but not the cache's PVC name"
        )
    claim, sub_path = _split_pvc_uri(pvc_storage_uri(pvc_name, source_uri, src))
    spec = out.setdefault("spec", {})
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    targets = [c for c in containers if c.get("name") in (KSERVE_CONTAINER, TRANSFORMER_CONTAINER)]
    if not targets:
        raise PodRewriteError(
            f"Pod {ref}: spec.containers has no container named {KSERVE_CONTAINER} to mount the model into"
        )
    read_only = annotations.get(ANNOTATION_READONLY) != "false"
    mount = {
        "name": DOWNLOAD_VOLUME_NAME,
        "mountPath": MOUNT_PATH,
        "subPath": sub_path,
        "readOnly": read_only,
    }
    for container in targets:
        mounts = [
            m
            for m in container.get("volumeMounts") or []
            if m.get("mountPath") != MOUNT_PATH and m.get("name") != DOWNLOAD_VOLUME_NAME
        ]
        mounts.append(dict(mount))
        container["volumeMounts"] = mounts
    inits = [c for c in spec.get("initContainers") or [] if c.get("name") != STORAGE_INITIALIZER_CONTAINER]
    if inits:
        spec["initContainers"] = inits
    else:
        spec.pop("initContainers", None)
    used = {
        m.get("name") for c in [*(spec.get("containers") or []), *inits] for m in c.get("volumeMounts") or []
    }
    volumes = [
        v
        for v in spec.get("volumes") or []
        if v.get("name") != DOWNLOAD_VOLUME_NAME and (v.get("name") != PROVISION_VOLUME or v["name"] in used)
    ]
    volumes.append({"name": DOWNLOAD_VOLUME_NAME, "persistentVolumeClaim": {"claimName": claim}})
    spec["volumes"] = volumes
    return out


# --- placement -------------------------------------------------------------------------------------
def has_scheduling_gate(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    return any(g.get("name") == SCHEDULING_GATE for g in spec.get("schedulingGates") or [])


def add_scheduling_gate(spec: dict[str, Any]) -> None:
    gates = list(spec.get("schedulingGates") or [])
    if not any(g.get("name") == SCHEDULING_GATE for g in gates):
        gates.append({"name": SCHEDULING_GATE})
    spec["schedulingGates"] = gates


def remove_scheduling_gate(spec: dict[str, Any]) -> None:
    gates = [g for g in spec.get("schedulingGates") or [] if g.get("name") != SCHEDULING_GATE]
    if gates:
        spec["schedulingGates"] = gates
    else:
        spec.pop("schedulingGates", None)


def narrow_node_affinity(spec: dict[str, Any], nodes: Iterable[str]) -> None:
    """Restrict the pod to ``nodes``: ``kubernetes.io/hostname In nodes`` in every required term.

    Terms are ORed, so the requirement goes into each one (or into a new single term when there are
    none); adding requirements to existing terms is the only change Kubernetes allows on a gated pod.
    """
    values = sorted(set(nodes))
    if not values:
        raise ValueError("narrow_node_affinity: no nodes to restrict the pod to")
    requirement = {"key": HOSTNAME_LABEL, "operator": "In", "values": values}
    affinity = spec.setdefault("affinity", {}) or {}
    spec["affinity"] = affinity
    node_affinity = affinity.setdefault("nodeAffinity", {}) or {}
    affinity["nodeAffinity"] = node_affinity
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        required["nodeSelectorTerms"] = [{"matchExpressions": [requirement]}]
        return
    for term in terms:
        expressions = term.setdefault("matchExpressions", []) or []
        term["matchExpressions"] = expressions
        if requirement not in expressions:
            expressions.append(dict(requirement, values=list(values)))


@dataclass(frozen=True, slots=True)
class ReadyNodes:
    """Where a bound pod may run: ``nodes`` (empty while it must wait) and why, for events and logs."""

    nodes: tuple[str, ...]
    cache: str
    node_group: str
    reason: str


class ModelReadiness:
    """Which nodes of a bound pod's node group hold its model (``NodeDownloaded`` in the cache status).

    With a single node group every node in ``status.nodeStatus`` belongs to it (the cache controller
    only lists group members). With several, membership is the group's PV ``nodeAffinity.required``
    evaluated on the Node (:mod:`localcache.controllers.membership`, as the cache controller decides it),
    reading Nodes and groups from the manager's informers when present.
    """

    def __init__(self, client: Any, caches: CacheReader, cache: InformerCache | None = None) -> None:
        self.client = client
        self.caches = caches
        self.cache = cache

    async def _get(self, res: Resource, name: str) -> Obj | None:
        """From the manager's informers when some controller declared them (the cache controller
        watches Nodes and node groups), else a live GET; None when absent."""
        if self.cache is not None:
            try:
                obj = self.cache.get_cached(res, name)
            except ResourceNotCached:
                obj = None
            if obj is not None:
                return obj
        try:
            return dict(await self.client.get(res, name))
        except errors.NotFound:
            return None

    @staticmethod
    def cache_of(pod: Mapping[str, Any]) -> tuple[str, str | None] | None:
        labels = _meta(pod).get("labels") or {}
        name = labels.get(LABEL_LOCAL_MODEL)
        if not name:
            return None
        return name, labels.get(LABEL_LOCAL_MODEL_NAMESPACE) or None

    @staticmethod
    def node_group_of(pod: Mapping[str, Any], cache: Mapping[str, Any]) -> str | None:
        """The group whose serving PVC the pod mounts; else its node-group annotation; else the first."""
        meta = _meta(cache)
        groups = [g for g in (cache.get("spec") or {}).get("nodeGroups") or [] if isinstance(g, str)]
        annotations = _meta(pod).get("annotations") or {}
        pvc = annotations.get(ANNOTATION_LOCAL_MODEL_PVC_NAME)
        for group in groups:
            if serving_pvc_name(str(meta.get("name")), meta.get("namespace") or None, group) == pvc:
                return group
        wanted = annotations.get(ANNOTATION_NODE_GROUP)
        if wanted in groups:
            return wanted
        return groups[0] if groups else None

    async def _members(self, group: str, candidates: list[str]) -> set[str]:
        node_group = await self._get(LOCAL_MODEL_NODE_GROUPS, group)
        terms = group_terms(node_group) if node_group is not None else []
        members: set[str] = set()
        for name in candidates if terms else []:
            node = await self._get(NODES, name)
            if node is not None and match_node_selector_terms(node, terms):
                members.add(name)
        return members

    async def ready_nodes(self, pod: Mapping[str, Any]) -> ReadyNodes:
        ref = self.cache_of(pod)
        if ref is None:
            return ReadyNodes((), "", "", "the pod is not bound to a cache")
        name, namespace = ref
        label = f"{namespace}/{name}" if namespace else name
        kind = "LocalModelNamespaceCache" if namespace else "LocalModelCache"
        cache = await self.caches.get(name, namespace)
        if cache is None:
            return ReadyNodes((), label, "", f"{kind} {label} not found")
        group = self.node_group_of(pod, cache)
        if group is None:
            return ReadyNodes((), label, "", f"{kind} {label} has no node groups")
        node_status = ((cache.get("status") or {}).get("nodeStatus")) or {}
        downloaded = sorted(n for n, s in node_status.items() if s == NodeStatus.DOWNLOADED.value)
        groups = (cache.get("spec") or {}).get("nodeGroups") or []
        if downloaded and len(groups) > 1:
            members = await self._members(group, downloaded)
            downloaded = [n for n in downloaded if n in members]
        if not downloaded:
            return ReadyNodes(
                (), label, group, f"{kind} {label}: not downloaded on any node of group {group} yet"
            )
        return ReadyNodes(
            tuple(downloaded), label, group, f"{kind} {label}: downloaded on {', '.join(downloaded)}"
        )


# --- the webhook -----------------------------------------------------------------------------------
class PodMutator:
    """The mutating webhook for predictor Pods (CREATE).

    ``gate=False`` (the pod-gate controller stood down) never adds the gate, since nothing would lift
    it; pods are still narrowed to ready nodes when there are some.
    """

    def __init__(self, readiness: ModelReadiness, *, gate: bool = True) -> None:
        self.readiness = readiness
        self.gate = gate

    async def handle(self, req: AdmissionRequest) -> AdmissionResponse:
        pod = req.object
        if req.operation != "CREATE" or not isinstance(pod, dict):
            return AdmissionResponse.allow()
        meta = pod.get("metadata") or {}
        if LABEL_LOCAL_MODEL not in (meta.get("labels") or {}) or not (meta.get("annotations") or {}).get(
            ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI
        ):
            return AdmissionResponse.allow()
        if not meta.get("namespace") and req.namespace:
            pod = dict(pod, metadata=dict(meta, namespace=req.namespace))
        try:
            mutated = rewrite_pod(pod)
        except PodRewriteError as exc:
            return AdmissionResponse.deny(str(exc), code=400, reason="BadRequest")
        if not meta.get("namespace"):
            mutated["metadata"].pop("namespace", None)  # the API server fills it in; keep the patch minimal
        ref = _pod_ref(pod, req.namespace)
        preassigned = bool((pod.get("spec") or {}).get("nodeName"))
        try:
            if preassigned:
                ready = ReadyNodes((), "", "", "spec.nodeName is set")
            else:
                ready = await self.readiness.ready_nodes(pod)
        except errors.ApiError as exc:
            # Cannot tell: hold the pod and let the gate controller decide once the API answers.
            ready = ReadyNodes((), "", "", f"cache status unreadable: {exc}")
            log.warning("pod admission: cache status unreadable", extra={"pod": ref, "error": str(exc)})
        spec = mutated.setdefault("spec", {})
        if preassigned:
            # Bound to a node already: the API forbids gates then, and affinity would only make the
            # kubelet reject it. The mount is rewritten; placement is the creator's.
            placement = "preassigned"
        elif ready.nodes:
            narrow_node_affinity(spec, ready.nodes)
            placement = "narrowed"
        elif self.gate:
            add_scheduling_gate(spec)
            placement = "gated"
        else:
            placement = "unplaced"
        log.info(
            "pod admitted",
            extra={"pod": ref, "cache": ready.cache, "node_group": ready.node_group,
                   "placement": placement, "detail": ready.reason},
        )  # fmt: skip
        return AdmissionResponse.mutate(mutated)
