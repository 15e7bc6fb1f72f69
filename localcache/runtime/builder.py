"""Declaring a controller: what it is *for*, what it *owns*, what else it *watches*.

Like controller-runtime's builder, without needing a manager::

    ctrl = (
        Builder(client, cache, name="widget")
        .for_(WIDGETS, predicates=[generation_changed()])
        .owns(CONFIGMAPS)                                  # controller ownerRefs pointing at a Widget
        .watches(SECRETS, lambda s: [Request(...)])        # any mapping, sync or async
        .with_event_filter(label_selector("team=a"))       # applies to every watch
        .with_options(max_concurrent_reconciles=4)
        .build(reconciler)
    )

Rules: ``for_`` at most once; ``owns`` needs ``for_``; at least one watch; names are unique per
process (they label metrics) unless ``skip_name_validation``; the default name is the lowercase kind
of ``for_``. Informers come from the cache, so controllers watching the same resource share one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from localcache.runtime.cache import InformerCache
from localcache.runtime.controller import Controller
from localcache.runtime.handlers import (
    EnqueueHandler,
    EnqueueRequestForObject,
    EnqueueRequestForOwner,
    EnqueueRequestsFromMapFunc,
    MapFunc,
)
from localcache.runtime.predicates import Predicate
from localcache.runtime.reconcile import Reconciler, ReconcilerFunc
from localcache.runtime.resources import Resource

__all__ = ["Builder", "BuilderError"]

_NAMES: set[str] = set()


class BuilderError(ValueError):
    """The controller declaration is incomplete or contradictory; the message says what."""


class Builder:
    def __init__(self, client: Any, cache: InformerCache, *, name: str | None = None) -> None:
        self.client = client
        self.cache = cache
        self._name = name
        self._for: tuple[Resource, tuple[Predicate, ...]] | None = None
        self._owns: list[tuple[Resource, tuple[Predicate, ...], bool, bool]] = []
        self._watches: list[tuple[Resource, EnqueueHandler, tuple[Predicate, ...], bool]] = []
        self._filters: list[Predicate] = []
        self._options: dict[str, Any] = {}
        self._skip_name_validation = False

    def for_(self, resource: Resource, *, predicates: Iterable[Predicate] = ()) -> Builder:
        if self._for is not None:
            raise BuilderError("for_() may only be called once")
        self._for = (resource, tuple(predicates))
        return self

    def owns(
        self,
        resource: Resource,
        *,
        predicates: Iterable[Predicate] = (),
        match_every_owner: bool = False,
        metadata_only: bool = False,
    ) -> Builder:
        """Reconcile the owner when an object it (controller-)owns changes; ``match_every_owner`` for all.

        ``metadata_only`` caches only the owned objects' metadata (owner references are all it needs).
        """
        self._owns.append((resource, tuple(predicates), match_every_owner, metadata_only))
        return self

    def watches(
        self,
        resource: Resource,
        handler: MapFunc | EnqueueHandler,
        *,
        predicates: Iterable[Predicate] = (),
        metadata_only: bool = False,
    ) -> Builder:
        """Watch ``resource``; ``handler`` is a map function ``obj -> [Request]`` or an enqueue handler."""
        is_handler = hasattr(handler, "requests")
        h: EnqueueHandler = handler if is_handler else EnqueueRequestsFromMapFunc(handler)  # type: ignore[assignment,arg-type]
        self._watches.append((resource, h, tuple(predicates), metadata_only))
        return self

    def watches_metadata(
        self, resource: Resource, handler: MapFunc | EnqueueHandler, *, predicates: Iterable[Predicate] = ()
    ) -> Builder:
        """:meth:`watches` over a metadata-only informer (``PartialObjectMetadata``)."""
        return self.watches(resource, handler, predicates=predicates, metadata_only=True)

    def with_event_filter(self, *predicates: Predicate) -> Builder:
        self._filters.extend(predicates)
        return self

    def with_options(self, **options: Any) -> Builder:
        """Controller options: max_concurrent_reconciles, rate_limiter, reconcile_timeout,
        recover_panic, cache_sync_timeout, needs_leader_election, skip_name_validation."""
        self._skip_name_validation = bool(options.pop("skip_name_validation", self._skip_name_validation))
        self._options.update(options)
        return self

    def named(self, name: str) -> Builder:
        self._name = name
        return self

    def build(self, reconciler: Reconciler | ReconcilerFunc | Callable[..., Any]) -> Controller:
        if self._for is None and not self._watches and not self._owns:
            raise BuilderError("a controller needs for_(), owns() or watches()")
        if self._owns and self._for is None:
            raise BuilderError("owns() needs for_(): owner references point at the for_() kind")
        name = self._name or (self._for[0].kind.lower() if self._for else None)
        if not name:
            raise BuilderError("controllers without for_() need a name: use named() or Builder(name=...)")
        if not self._skip_name_validation:
            if name in _NAMES:
                raise BuilderError(f"controller name {name!r} is already used (names label metrics)")
            _NAMES.add(name)
        ctrl = Controller(name, reconciler, clock=self.cache.clock, **self._options)
        filters = tuple(self._filters)
        if self._for is not None:
            res, preds = self._for
            ctrl.watch(self.cache.informer_for(res), EnqueueRequestForObject(), *preds, *filters)
            for owned, opreds, every, meta in self._owns:
                handler = EnqueueRequestForOwner(
                    res.group, res.kind, only_controller=not every, owner_namespaced=res.namespaced
                )
                ctrl.watch(self.cache.informer_for(owned, metadata_only=meta), handler, *opreds, *filters)
        for res, h, wpreds, meta in self._watches:
            ctrl.watch(self.cache.informer_for(res, metadata_only=meta), h, *wpreds, *filters)
        return ctrl


def _forget_name(name: str) -> None:
    """For tests that build the same controller twice."""
    _NAMES.discard(name)


def registered_names() -> Sequence[str]:
    return sorted(_NAMES)
