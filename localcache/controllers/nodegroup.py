"""The LocalModelNodeGroup reconciler, and the storage plan the cache reconciler shares with it.

KServe defines ``storageLimit`` and ``status.used/available`` but never reads or writes them (#6137):
a full disk shows up as a failed download Job with no hint. Here:

* :func:`plan_group_storage` decides, per group, which caches fit under its per-node ``storageLimit``.
  Caches are admitted first come, first served (``creationTimestamp``, then status key), each
  reserving its declared ``modelSize`` once per storage key (two caches of one URI share a folder).
  A cache that does not fit reserves nothing, and the cache reconciler reports it with the
  ``InsufficientStorage`` condition instead of placing it, so no download is started that the disk
  cannot hold. The plan is pure and level-based: admitting never depends on event order.
* :class:`NodeGroupReconciler` publishes ``status.used`` (the fullest member node) and
  ``status.available`` (``storageLimit - used``, or less if an agent reports less free disk). A node's
  use is what its agent reports: capacity fields on ``LocalModelNode.status`` if the agent publishes
  them, else the ``bytes`` of each model in ``status.modelStatusDetails``, else the declared
  ``modelSize`` of each entry. With no member node reporting anything, ``used`` is the sum of the
  declared sizes of the caches admitted to the group.

The group has no status subresource (KServe's CRD), so status is written with a merge patch carrying
``resourceVersion`` (optimistic), and only when a value changed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from localcache.api.naming import status_key, storage_key
from localcache.api.quantity import QuantityError, parse_quantity
from localcache.controllers import (
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    LOCAL_MODEL_NODES,
)
from localcache.controllers.membership import group_members
from localcache.runtime import errors
from localcache.runtime.predicates import Funcs, Predicate
from localcache.runtime.reconcile import Request, Result
from localcache.runtime.resources import NODES

__all__ = [
    "DEFAULT_RESYNC_PERIOD",
    "INDEX_GROUPS",
    "Fit",
    "NodeGroupReconciler",
    "cache_groups",
    "cache_identity",
    "cache_order",
    "caches_on_group",
    "declare_cache_informers",
    "format_bytes",
    "group_status",
    "node_usage",
    "plan_group_storage",
    "planning_view",
    "setup_nodegroup_controller",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
DEFAULT_RESYNC_PERIOD = 600.0
MAX_WRITE_ATTEMPTS = 5
_BINARY_SUFFIXES = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


INDEX_GROUPS = "localcache.node-groups"  # cache -> the node groups it lists


def cache_groups(cache: Mapping[str, Any]) -> list[str]:
    """``spec.nodeGroups`` of a cache (the index function of :data:`INDEX_GROUPS`)."""
    return list((cache.get("spec") or {}).get("nodeGroups") or [])


def declare_cache_informers(cache: Any) -> None:
    """Both cache kinds' informers, indexed by node group (idempotent; shared with the cache controllers)."""
    for res in (LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES):
        cache.informer_for(res, indexers={INDEX_GROUPS: cache_groups})


def planning_view(cache: Mapping[str, Any]) -> Obj:
    """The fields of a cache that :func:`plan_group_storage` and :func:`group_status` read."""
    meta = cache.get("metadata") or {}
    spec = cache.get("spec") or {}
    return {
        "metadata": {k: meta[k] for k in _PLANNING_META if k in meta},
        "spec": {k: spec[k] for k in _PLANNING_SPEC if k in spec},
    }


_PLANNING_META = ("name", "namespace", "creationTimestamp", "deletionTimestamp")
_PLANNING_SPEC = ("nodeGroups", "sourceModelUri", "modelSize")


def caches_on_group(cache: Any, group: str) -> list[Obj]:
    """Every cache (both scopes) listing ``group`` as its :func:`planning_view`, from the informer index.

    Every cache reconcile plans its group's storage over all of the group's caches: the projection is
    recomputed only for caches that changed, so a reconcile no longer decodes a thousand caches.
    """
    return cache.project(LOCAL_MODEL_CACHES, INDEX_GROUPS, group, planning_view) + cache.project(
        LOCAL_MODEL_NAMESPACE_CACHES, INDEX_GROUPS, group, planning_view
    )


# ---- pure planning ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fit:
    """Whether one cache fits on one group, with the numbers for the condition message."""

    group: str
    fits: bool
    needed: Decimal
    free: Decimal
    limit: Decimal


def cache_identity(cache: Mapping[str, Any]) -> str:
    """The status key of a cache dict: ``name`` (cluster) or ``namespace/name``; unique across scopes."""
    meta = cache.get("metadata") or {}
    return status_key(meta.get("name") or "", meta.get("namespace") or None)


def cache_order(cache: Mapping[str, Any]) -> tuple[str, str]:
    """First come, first served: creation time (RFC 3339 sorts as text), then the status key."""
    meta = cache.get("metadata") or {}
    return meta.get("creationTimestamp") or "", cache_identity(cache)


def _quantity(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return parse_quantity(value)
    except (QuantityError, TypeError, ValueError):
        return None


def model_size(cache: Mapping[str, Any]) -> Decimal:
    """The declared ``spec.modelSize`` in bytes (0 when missing or unparsable; the CRD validates it)."""
    return _quantity((cache.get("spec") or {}).get("modelSize")) or Decimal(0)


def plan_group_storage(group: Mapping[str, Any], caches: Iterable[Mapping[str, Any]]) -> dict[str, Fit]:
    """Cache identity → :class:`Fit` for every live cache that lists ``group``; see the module docstring."""
    name = (group.get("metadata") or {}).get("name") or ""
    limit = _quantity((group.get("spec") or {}).get("storageLimit"))
    candidates = [
        c
        for c in caches
        if name in ((c.get("spec") or {}).get("nodeGroups") or [])
        and not (c.get("metadata") or {}).get("deletionTimestamp")
    ]
    candidates.sort(key=cache_order)
    plan: dict[str, Fit] = {}
    reserved: set[str] = set()
    used = Decimal(0)
    for cache in candidates:
        ident = cache_identity(cache)
        uri = (cache.get("spec") or {}).get("sourceModelUri") or ""
        key = storage_key(uri)
        size = model_size(cache)
        if limit is None:  # no limit given (the CRD requires one): everything fits
            plan[ident] = Fit(name, True, size, Decimal(-1), Decimal(-1))
            continue
        free = max(limit - used, Decimal(0))
        if key in reserved:
            plan[ident] = Fit(name, True, Decimal(0), free, limit)
        elif size <= free:
            plan[ident] = Fit(name, True, size, free, limit)
            reserved.add(key)
            used += size
        else:
            plan[ident] = Fit(name, False, size, free, limit)
    return plan


def planned_use(plan: Mapping[str, Fit]) -> Decimal:
    """Bytes reserved on each node of the group by the admitted caches."""
    return sum((f.needed for f in plan.values() if f.fits), Decimal(0))


def format_bytes(value: Decimal | int) -> str:
    """A byte count as a quantity string: the largest exact binary suffix (``10Gi``), else plain bytes."""
    n = int(value)
    if n <= 0:
        return "0"
    for suffix, factor in _BINARY_SUFFIXES:
        if n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def _reported(status: Mapping[str, Any], names: tuple[str, ...]) -> Decimal | None:
    """A capacity figure an agent may publish on LocalModelNode.status, read defensively."""
    for holder in (status, status.get("storage"), status.get("capacity")):
        if not isinstance(holder, Mapping):
            continue
        for n in names:
            value = _quantity(holder.get(n)) if not isinstance(holder.get(n), Mapping) else None
            if value is not None:
                return value
    return None


_USED_FIELDS = ("used", "usedBytes", "storageUsed")
_AVAILABLE_FIELDS = ("available", "availableBytes", "storageAvailable", "free")


def node_usage(
    lmn: Mapping[str, Any], group_name: str, declared: Mapping[str, Decimal]
) -> tuple[Decimal, Decimal | None]:
    """``(used, reported available or None)`` on one node for the entries of ``group_name``.

    ``declared`` maps a cache status key to its declared size, the fallback when the agent reports
    no bytes for a model.
    """
    status = lmn.get("status") or {}
    reported_used = _reported(status, _USED_FIELDS)
    reported_available = _reported(status, _AVAILABLE_FIELDS)
    if reported_used is not None:
        return reported_used, reported_available
    details = status.get("modelStatusDetails") or {}
    seen: set[str] = set()
    used = Decimal(0)
    for entry in (lmn.get("spec") or {}).get("localModels") or []:
        if (entry.get("nodeGroup") or group_name) != group_name:
            continue
        skey = storage_key(entry.get("sourceModelUri") or "")
        if skey in seen:
            continue
        seen.add(skey)
        key = status_key(entry.get("modelName") or "", entry.get("namespace") or None)
        detail = details.get(key) if isinstance(details, Mapping) else None
        size = detail.get("bytes") if isinstance(detail, Mapping) else None
        if isinstance(size, int) and size >= 0:
            used += Decimal(size)
        else:
            used += declared.get(key, Decimal(0))
    return used, reported_available


def group_status(
    group: Mapping[str, Any],
    caches: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    lmns: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """The ``status`` a node group should have: ``{used, available}`` as quantity strings."""
    caches = list(caches)
    name = (group.get("metadata") or {}).get("name") or ""
    limit = _quantity((group.get("spec") or {}).get("storageLimit")) or Decimal(0)
    plan = plan_group_storage(group, caches)
    declared = {cache_identity(c): model_size(c) for c in caches}
    per_node = [
        node_usage(lmns[n["metadata"]["name"]], name, declared)
        for n in group_members(group, nodes)
        if n["metadata"]["name"] in lmns
    ]
    if per_node:
        used = max(u for u, _ in per_node)
        available = max(limit - used, Decimal(0))
        reported = [a for _, a in per_node if a is not None]
        if reported:
            available = min(available, *reported)
    else:
        used = planned_use(plan)
        available = max(limit - used, Decimal(0))
    return {"used": format_bytes(used), "available": format_bytes(available)}


def _same_quantities(current: Mapping[str, Any] | None, desired: Mapping[str, str]) -> bool:
    current = current or {}
    return all(_quantity(current.get(k)) == _quantity(v) for k, v in desired.items())


# ---- the reconciler ------------------------------------------------------------------------------
#: Group statuses are recomputed at most this often per group.
MIN_INTERVAL_SECONDS = 2.0


class NodeGroupReconciler:
    """Publishes ``status.used/available`` of each LocalModelNodeGroup; see the module docstring."""

    def __init__(
        self,
        client: Any,
        cache: Any,
        *,
        resync_period: float = DEFAULT_RESYNC_PERIOD,
        min_interval: float = MIN_INTERVAL_SECONDS,
    ) -> None:
        self.client = client
        self.cache = cache
        self.resync_period = resync_period
        self.min_interval = min_interval
        self._last_run: dict[str, float] = {}
        self._rng = random.Random()
        cache.informer_for(LOCAL_MODEL_NODE_GROUPS)
        declare_cache_informers(cache)
        cache.informer_for(LOCAL_MODEL_NODES)
        cache.informer_for(NODES)

    def _resync(self) -> Result:
        return Result(requeue_after=self.resync_period * (0.9 + 0.2 * self._rng.random()))

    async def reconcile(self, request: Request) -> Result | None:
        group = self.cache.get_cached(LOCAL_MODEL_NODE_GROUPS, request.name)
        if group is None or (group.get("metadata") or {}).get("deletionTimestamp"):
            self._last_run.pop(request.name, None)
            return None
        # Every cache and LocalModelNode change of the group triggers this, and one pass reads all
        # of them: while a thousand caches are being created that is a pass after every change, and
        # it starved the cache workers (bench/README.md). The status is a summary; once per interval
        # is enough, the caches plan their storage themselves.
        now = time.monotonic()
        since = now - self._last_run.get(request.name, -self.min_interval)
        if since < self.min_interval:
            return Result(requeue_after=self.min_interval - since)
        self._last_run[request.name] = now
        lmns = {o["metadata"]["name"]: o for o in self.cache.list(LOCAL_MODEL_NODES)}
        caches, nodes = caches_on_group(self.cache, request.name), self.cache.list(NODES)
        for _ in range(MAX_WRITE_ATTEMPTS):
            desired = group_status(group, caches, nodes, lmns)
            if _same_quantities(group.get("status"), desired):
                return self._resync()
            meta = group["metadata"]
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": desired}
            extra = {"nodegroup": request.name, **desired}
            try:
                await self.client.patch(LOCAL_MODEL_NODE_GROUPS, request.name, patch)
            except errors.Conflict:
                # usually our own previous write, not yet in the informer: re-read and recompute
                try:
                    group = await self.client.get(LOCAL_MODEL_NODE_GROUPS, request.name)
                except errors.NotFound:
                    return None
                continue
            except errors.NotFound:
                return None
            log.info("node group status updated", extra=extra)
            return self._resync()
        raise errors.Conflict(
            f"LocalModelNodeGroup {request.name}: still conflicting after {MAX_WRITE_ATTEMPTS} attempts"
        )

    # ---- watches ---------------------------------------------------------------------------------
    def groups_of_cache(self, cache: Obj) -> list[Request]:
        return [Request("", g) for g in (cache.get("spec") or {}).get("nodeGroups") or []]

    def groups_of_lmn(self, lmn: Obj) -> list[Request]:
        names = {e.get("nodeGroup") for e in (lmn.get("spec") or {}).get("localModels") or []}
        if None in names or "" in names:
            return self.all_groups(lmn)
        return [Request("", g) for g in sorted(n for n in names if n)]

    def all_groups(self, _obj: Obj) -> list[Request]:
        return [Request("", g["metadata"]["name"]) for g in self.cache.list(LOCAL_MODEL_NODE_GROUPS)]


def _spec_or_status_changed() -> Predicate:
    return Funcs(
        update=lambda e: (e.old.get("spec"), e.old.get("status")) != (e.new.get("spec"), e.new.get("status"))
    )


def _cache_placement_changed() -> Predicate:
    def changed(e: Any) -> bool:
        old, new = e.old.get("metadata") or {}, e.new.get("metadata") or {}
        return e.old.get("spec") != e.new.get("spec") or old.get("deletionTimestamp") != new.get(
            "deletionTimestamp"
        )

    return Funcs(update=changed)


def _node_membership_changed() -> Predicate:
    def changed(e: Any) -> bool:
        return (e.old.get("metadata") or {}).get("labels") != (e.new.get("metadata") or {}).get("labels")

    return Funcs(update=changed)


def setup_nodegroup_controller(
    manager: Any,
    *,
    resync_period: float = DEFAULT_RESYNC_PERIOD,
    name: str = "localmodelnodegroup",
    **options: Any,
) -> Any:
    """Build the node-group controller on ``manager`` (a runtime Manager); returns the Controller."""
    reconciler = NodeGroupReconciler(manager.client, manager.cache, resync_period=resync_period)
    spec_or_status = _spec_or_status_changed()
    placement = _cache_placement_changed()
    builder = (
        manager.controller(name)
        .for_(LOCAL_MODEL_NODE_GROUPS)
        .watches(LOCAL_MODEL_CACHES, reconciler.groups_of_cache, predicates=[placement])
        .watches(LOCAL_MODEL_NAMESPACE_CACHES, reconciler.groups_of_cache, predicates=[placement])
        .watches(LOCAL_MODEL_NODES, reconciler.groups_of_lmn, predicates=[spec_or_status])
        .watches(NODES, reconciler.all_groups, predicates=[_node_membership_changed()])
    )
    if options:
        builder = builder.with_options(**options)
    return builder.build(reconciler)
