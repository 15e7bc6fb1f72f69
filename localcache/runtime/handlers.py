"""Turning informer events into reconcile requests (controller-runtime ``pkg/handler``).

An enqueue handler maps an event to zero or more :class:`Request` keys and adds them to the
controller's workqueue; the queue's dedup is what collapses ten quick updates into one reconcile.

* :class:`EnqueueRequestForObject`: the object's own key (``for_``);
* :class:`EnqueueRequestForOwner`: the owner named in ``metadata.ownerReferences`` of a given
  group/kind; by default only the ``controller: true`` owner (``owns``), or every owner;
* :class:`EnqueueRequestsFromMapFunc`: any keys a function derives from the object (``watches``);
  the function may be sync or async.

Initial-list creates and resync updates are enqueued at :data:`LOW_PRIORITY` so a restart with
10,000 cached objects does not starve real changes. :class:`InformerAdapter` glues an enqueue handler
and its predicates onto a :class:`SharedInformer`, unwrapping tombstones into
``DeleteEvent(delete_state_unknown=True)``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from localcache.runtime.predicates import CreateEvent, DeleteEvent, GenericEvent, Predicate, UpdateEvent
from localcache.runtime.reconcile import Request
from localcache.runtime.resources import split_api_version
from localcache.runtime.store import DeletedFinalStateUnknown
from localcache.runtime.workqueue import LOW_PRIORITY, WorkQueue

__all__ = [
    "EnqueueHandler",
    "EnqueueRequestForObject",
    "EnqueueRequestForOwner",
    "EnqueueRequestsFromMapFunc",
    "InformerAdapter",
    "MapFunc",
]

Obj = dict[str, Any]
Queue = WorkQueue[Request]
MapFunc = Callable[[Obj], Iterable[Request] | Awaitable[Iterable[Request]]]


class EnqueueHandler(Protocol):
    def requests(self, obj: Obj) -> Iterable[Request] | Awaitable[Iterable[Request]]: ...


class EnqueueRequestForObject:
    def requests(self, obj: Obj) -> Iterable[Request]:
        return (Request.for_object(obj),)


class EnqueueRequestForOwner:
    """Enqueue the owner(s) of kind ``owner_kind`` in ``owner_group``; namespaced like the object."""

    def __init__(
        self,
        owner_group: str,
        owner_kind: str,
        *,
        only_controller: bool = True,
        owner_namespaced: bool = True,
    ) -> None:
        self.group = owner_group
        self.kind = owner_kind
        self.only_controller = only_controller
        self.owner_namespaced = owner_namespaced

    def requests(self, obj: Obj) -> Iterable[Request]:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "" if self.owner_namespaced else ""
        out = []
        for ref in meta.get("ownerReferences") or []:
            if self.only_controller and not ref.get("controller"):
                continue
            if ref.get("kind") != self.kind:
                continue
            group, _ = split_api_version(ref.get("apiVersion") or "v1")
            if group != self.group:
                continue
            out.append(Request(ns, ref["name"]))
        return out


class EnqueueRequestsFromMapFunc:
    """Requests from a map function.

    ``coalesce`` > 0 enqueues each request that many seconds later instead of at once, and every
    further event for the same request meanwhile joins it (the delaying queue keeps the earliest
    time): for a watched kind whose objects change in bursts that each concern many reconcile keys
    (fifty node agents reporting the same thousand models one after another), so each key is
    reconciled once per burst instead of once per event.
    """

    def __init__(self, fn: MapFunc, *, coalesce: float = 0.0) -> None:
        if coalesce < 0:
            raise ValueError("coalesce must be >= 0 seconds")
        self.fn = fn
        self.coalesce = coalesce

    def requests(self, obj: Obj) -> Iterable[Request] | Awaitable[Iterable[Request]]:
        return self.fn(obj)


class InformerAdapter:
    """An informer event handler that filters with predicates and enqueues mapped requests."""

    def __init__(self, handler: EnqueueHandler, predicates: Sequence[Predicate], queue: Queue) -> None:
        self.handler = handler
        self.predicates = tuple(predicates)
        self.queue = queue
        self._delay = float(getattr(handler, "coalesce", 0.0))
        self._pending: set[asyncio.Future[None]] = set()
        self._async = inspect.iscoroutinefunction(
            getattr(handler, "fn", None)
        ) or inspect.iscoroutinefunction(handler.requests)
        if self._async:
            self.on_add = self._on_add_async  # type: ignore[method-assign]
            self.on_update = self._on_update_async  # type: ignore[method-assign]
            self.on_delete = self._on_delete_async  # type: ignore[method-assign]

    def _enqueue(self, reqs: Iterable[Request] | Awaitable[Iterable[Request]], priority: int) -> None:
        if inspect.isawaitable(reqs):
            # a plain function that returned a coroutine: finish it without blocking the handler
            task = asyncio.ensure_future(self._enqueue_later(reqs, priority))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        self._add(reqs, priority)

    async def _enqueue_later(self, reqs: Awaitable[Iterable[Request]], priority: int) -> None:
        self._add(await reqs, priority)

    def _add(self, reqs: Iterable[Request], priority: int) -> None:
        for r in reqs:
            if self._delay > 0:
                self.queue.add_after(r, self._delay, priority)
            else:
                self.queue.add(r, priority)

    # events -> (pass?, object, priority)
    def _create(self, obj: Obj, initial: bool) -> int | None:
        e = CreateEvent(obj, initial)
        if all(p.create(e) for p in self.predicates):
            return LOW_PRIORITY if initial else 0
        return None

    def _update(self, old: Obj, new: Obj) -> int | None:
        e = UpdateEvent(old, new)
        if all(p.update(e) for p in self.predicates):
            return LOW_PRIORITY if e.is_resync else 0
        return None

    def _delete(self, obj: Obj | DeletedFinalStateUnknown) -> tuple[Obj, int | None]:
        if isinstance(obj, DeletedFinalStateUnknown):
            e = DeleteEvent(obj.obj, True)
        else:
            e = DeleteEvent(obj, False)
        return e.obj, (0 if all(p.delete(e) for p in self.predicates) else None)

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> None:
        prio = self._create(obj, is_in_initial_list)
        if prio is not None:
            self._enqueue(self.handler.requests(obj), prio)  # type: ignore[arg-type]

    def on_update(self, old: Obj, new: Obj) -> None:
        prio = self._update(old, new)
        if prio is not None:
            reqs = list(self.handler.requests(new))  # type: ignore[arg-type]
            if isinstance(self.handler, EnqueueRequestForOwner):
                reqs += list(self.handler.requests(old))  # an owner removed from the object hears too
            self._enqueue(reqs, prio)

    def on_delete(self, obj: Obj | DeletedFinalStateUnknown) -> None:
        o, prio = self._delete(obj)
        if prio is not None:
            self._enqueue(self.handler.requests(o), prio)  # type: ignore[arg-type]

    def generic(self, obj: Obj) -> None:
        if all(p.generic(GenericEvent(obj)) for p in self.predicates):
            self._enqueue(self.handler.requests(obj), 0)  # type: ignore[arg-type]

    async def _reqs(self, obj: Obj) -> Iterable[Request]:
        r = self.handler.requests(obj)
        return await r if inspect.isawaitable(r) else r

    async def _on_add_async(self, obj: Obj, is_in_initial_list: bool) -> None:
        prio = self._create(obj, is_in_initial_list)
        if prio is not None:
            self._enqueue(await self._reqs(obj), prio)

    async def _on_update_async(self, old: Obj, new: Obj) -> None:
        prio = self._update(old, new)
        if prio is not None:
            self._enqueue(await self._reqs(new), prio)

    async def _on_delete_async(self, obj: Obj | DeletedFinalStateUnknown) -> None:
        o, prio = self._delete(obj)
        if prio is not None:
            self._enqueue(await self._reqs(o), prio)
