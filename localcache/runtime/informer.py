"""The shared informer: one reflector + one store + any number of event handlers.

What client-go's ``sharedIndexInformer`` does, on one event loop:

* The reflector feeds the informer synchronously; the store and its indexes are updated *before*
  any handler hears of the change, so a handler reading the store sees at least that state.
* Every handler has its own buffer and task: a slow handler delays only itself, never the watch
  nor other handlers. Buffer depth is exported as ``informer_handler_queue_depth``.
* ``on_add(obj, is_in_initial_list)``, ``on_update(old, new)``, ``on_delete(obj)``; on a delete missed
  across a relist ``obj`` is a :class:`DeletedFinalStateUnknown` tombstone. A relisted object whose
  stored form is unchanged produces no event (client-go counts it as a resync, which only goes to
  handlers whose resync is due).
* Resync (local, no API call): every ``resync_period`` (≥ 1 s) each handler that asked for it gets
  ``on_update(obj, obj)`` for every cached object: same resourceVersion, so controllers know it is
  a resync.
* ``has_synced()`` once the first list is in the store; each registration's ``has_synced()`` once
  that handler has also processed every initial-list notification. A handler added after start
  first gets synthetic ``on_add(obj, True)`` for every cached object.
* A transform runs on each object before it is stored; the default drops ``metadata.managedFields``.

Handler methods may be plain functions or coroutines. Exceptions are logged and the notification is
skipped, as client-go does for a recovered panic.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from localcache.runtime import metrics
from localcache.runtime.clock import SYSTEM_CLOCK, Clock, wait_event
from localcache.runtime.reflector import Backoff, ClientListerWatcher, ListerWatcher, Reflector
from localcache.runtime.store import (
    DeletedFinalStateUnknown,
    IndexFunc,
    StorageMode,
    Store,
    object_key,
)

__all__ = [
    "EventHandler",
    "FuncHandler",
    "HandlerRegistration",
    "SharedInformer",
    "strip_managed_fields",
    "wait_event",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Transform = Callable[[Obj], Obj]
MIN_RESYNC_PERIOD = 1.0
#: a handler this far behind gets a warning in the log (and again at each further multiple)
BACKLOG_WARNING = 10_000


def _rv(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


def strip_managed_fields(obj: Obj) -> Obj:
    """The default transform: ``metadata.managedFields`` is large and no controller reads it."""
    meta = obj.get("metadata")
    if meta is not None:
        meta.pop("managedFields", None)
    return obj


class EventHandler(Protocol):
    def on_add(self, obj: Obj, is_in_initial_list: bool) -> Any: ...

    def on_update(self, old: Obj, new: Obj) -> Any: ...

    def on_delete(self, obj: Obj | DeletedFinalStateUnknown) -> Any: ...


class FuncHandler:
    """An :class:`EventHandler` from optional callables."""

    def __init__(
        self,
        on_add: Callable[[Obj, bool], Any] | None = None,
        on_update: Callable[[Obj, Obj], Any] | None = None,
        on_delete: Callable[[Obj | DeletedFinalStateUnknown], Any] | None = None,
    ) -> None:
        self._add, self._update, self._delete = on_add, on_update, on_delete

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> Any:
        return self._add(obj, is_in_initial_list) if self._add else None

    def on_update(self, old: Obj, new: Obj) -> Any:
        return self._update(old, new) if self._update else None

    def on_delete(self, obj: Obj | DeletedFinalStateUnknown) -> Any:
        return self._delete(obj) if self._delete else None


_ADD, _UPDATE, _DELETE = 0, 1, 2


class HandlerRegistration:
    """One handler's buffer, task and sync state; returned by :meth:`SharedInformer.add_event_handler`."""

    def __init__(
        self, informer: SharedInformer, handler: EventHandler, resync_period: float | None, name: str
    ) -> None:
        self.informer = informer
        self.handler = handler
        self.name = name
        self.resync_period = None if not resync_period else max(MIN_RESYNC_PERIOD, resync_period)
        self.next_resync: float | None = None
        self._buf: deque[tuple[int, Any, Any]] = deque()
        self._wake = asyncio.Event()
        self._enqueued = 0
        self._done = 0
        self._initial_target: int | None = None
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._depth = metrics.informer_handler_queue_depth.labels(informer.gvk, name)
        self._calls = [
            (fn, inspect.iscoroutinefunction(fn))
            for fn in (handler.on_add, handler.on_update, handler.on_delete)
        ]

    def _push(self, kind: int, a: Any, b: Any = None) -> None:
        buf = self._buf
        buf.append((kind, a, b))
        self._enqueued += 1
        n = len(buf)
        if n == 1:
            self._wake.set()
        elif n % BACKLOG_WARNING == 0:
            # client-go's buffers grow "until we OOM"; we at least say so, with the depth in metrics
            log.warning(
                "informer %s: handler %s has %d notifications waiting; it is slower than the watch",
                self.informer.name,
                self.name,
                n,
                extra={"informer": self.informer.name, "handler": self.name, "pending": n},
            )

    def _mark_initial(self) -> None:
        self._initial_target = self._enqueued
        self._check_synced()

    def _check_synced(self) -> None:
        if (
            self._initial_target is not None
            and self._done >= self._initial_target
            and not self._synced.is_set()
        ):
            self._synced.set()

    def has_synced(self) -> bool:
        return self._synced.is_set() and self.informer.has_synced()

    async def wait_for_sync(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        return await wait_event(self._synced, timeout, self.informer.clock)

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"handler:{self.name}")

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        buf = self._buf
        calls = self._calls
        while True:
            if not buf:
                self._depth.set(0)
                while not buf:
                    self._wake.clear()
                    await self._wake.wait()
            if len(buf) > 1:
                self._depth.set(len(buf))
            while buf:
                kind, a, b = buf.popleft()
                fn, is_async = calls[kind]
                try:
                    result = fn(a, b) if kind != _DELETE else fn(a)
                    if is_async or inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "informer %s: event handler %s failed; notification skipped",
                        self.informer.name,
                        self.name,
                        extra={"informer": self.informer.name, "handler": self.name},
                    )
                self._done += 1
                if self._initial_target is not None and not self._synced.is_set():
                    self._check_synced()
                if not is_async and self._done % 1024 == 0:
                    await asyncio.sleep(0)  # let other tasks run while a big backlog drains


class SharedInformer:
    """List-watch one resource scope into a :class:`Store` and fan changes out to handlers."""

    needs_leader_election = False

    def __init__(
        self,
        source: ListerWatcher | Any,
        resource: Any = None,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Transform | None = strip_managed_fields,
        indexers: Mapping[str, IndexFunc] | None = None,
        storage: StorageMode = "compact",
        resync_period: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
        use_watch_list: bool = False,
        rng: random.Random | None = None,
        metadata_only: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        """``source`` is a :class:`ListerWatcher`, or a ``Client`` (then ``resource`` is required).

        ``metadata_only``: cache ``PartialObjectMetadata`` (apiVersion, kind, metadata) instead of
        whole objects; enough for owner/label mapping at a fraction of the memory.
        """
        if hasattr(source, "list") and hasattr(source, "watch") and resource is None:
            self.lw: ListerWatcher = source
        else:
            if resource is None:
                raise ValueError("SharedInformer over a Client needs a resource")
            self.lw = ClientListerWatcher(
                source,
                resource,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                metadata_only=metadata_only,
            )
        self.resource = resource
        self.namespace = namespace
        self.metadata_only = metadata_only
        self.gvk = getattr(resource, "gvk", None) or (name or "unknown")
        self.name = name or (
            (f"{resource}" + (f"@{namespace}" if namespace else "")) if resource else "informer"
        )
        self.clock = clock
        self.transform = transform
        self.store = Store(indexers, mode=storage)
        self.resync_period = None if not resync_period else max(MIN_RESYNC_PERIOD, resync_period)
        self._handlers: list[HandlerRegistration] = []
        self._synced = asyncio.Event()
        self._running = False
        self._started_at: float | None = None
        self._resync_wake = asyncio.Event()
        self._m_cached = metrics.informer_cached_objects.labels(self.gvk)
        self.reflector = Reflector(
            self.lw,
            self,
            name=self.name,
            gvk=self.gvk,
            clock=clock,
            use_watch_list=use_watch_list,
            rng=rng,
            backoff=backoff,
        )
        self.reflector.on_flush = lambda: self._m_cached.set(len(self.store))

    # --- handlers ------------------------------------------------------------------------------------
    def add_event_handler(
        self, handler: EventHandler, *, resync_period: float | None = None, name: str | None = None
    ) -> HandlerRegistration:
        reg = HandlerRegistration(
            self,
            handler,
            resync_period if resync_period is not None else self.resync_period,
            name or f"{type(handler).__name__}-{len(self._handlers)}",
        )
        self._handlers.append(reg)
        if self.has_synced():
            for _, obj in self.store.items():
                reg._push(_ADD, obj, True)
            reg._mark_initial()
        if reg.resync_period:
            reg.next_resync = self.clock.monotonic() + reg.resync_period
            self._resync_wake.set()
        if self._running:
            reg._start()
        return reg

    def remove_event_handler(self, reg: HandlerRegistration) -> None:
        if reg in self._handlers:
            self._handlers.remove(reg)
            reg._stop()

    # --- state ---------------------------------------------------------------------------------------
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_for_sync(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        return await wait_event(self._synced, timeout, self.clock)

    @property
    def last_sync_resource_version(self) -> str:
        return self.reflector.last_sync_resource_version

    # --- running -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Run until cancelled: the reflector, every handler's task and the resync timer."""
        if self._running:
            raise RuntimeError(f"informer {self.name} is already running")
        self._running = True
        self._started_at = self.clock.monotonic()
        for reg in self._handlers:
            reg._start()
        resync = asyncio.get_running_loop().create_task(self._resync_loop(), name=f"resync:{self.name}")
        try:
            await self.reflector.run()
        finally:
            resync.cancel()
            for reg in self._handlers:
                reg._stop()
            self._running = False

    run = start

    async def _resync_loop(self) -> None:
        while True:
            due = [r.next_resync for r in self._handlers if r.next_resync is not None]
            self._resync_wake.clear()
            if not due:
                await self._resync_wake.wait()
                continue
            delay = min(due) - self.clock.monotonic()
            if delay > 0:
                await wait_event(self._resync_wake, delay, self.clock)
                continue
            now = self.clock.monotonic()
            regs = [r for r in self._handlers if r.next_resync is not None and r.next_resync <= now]
            if self.has_synced():
                for _, obj in self.store.items():
                    for r in regs:
                        r._push(_UPDATE, obj, obj)
            for r in regs:
                assert r.resync_period is not None
                r.next_resync = now + r.resync_period

    # --- the reflector sink --------------------------------------------------------------------------
    def _on_synced(self) -> None:
        if not self._synced.is_set():
            self._synced.set()
            if self._started_at is not None:
                metrics.informer_sync_duration_seconds.labels(self.gvk).observe(
                    self.clock.monotonic() - self._started_at
                )
            for reg in self._handlers:
                reg._mark_initial()

    def _prepare(self, obj: Obj) -> Obj:
        return self.transform(obj) if self.transform is not None else obj

    def replace(self, items: list[Obj], resource_version: str) -> None:
        store = self.store
        initial = not self._synced.is_set()
        handlers = self._handlers
        seen: set[str] = set()
        compact = store.mode == "compact"
        for raw in items:
            obj = self._prepare(raw)
            key = object_key(obj)
            seen.add(key)
            packed = store.pack(obj)
            old = store.put(key, obj, packed)
            if old is None:
                for r in handlers:
                    r._push(_ADD, obj, initial)
                continue
            if compact:
                unchanged = old == packed
            else:
                unchanged = (old.get("metadata") or {}).get("resourceVersion") == (
                    obj.get("metadata") or {}
                ).get("resourceVersion")
            if not unchanged:
                old_obj = store.unpack(old)
                for r in handlers:
                    r._push(_UPDATE, old_obj, obj)
        for key in [k for k in store.keys() if k not in seen]:  # noqa: SIM118 (snapshot)
            old = store.remove(key)
            tomb = DeletedFinalStateUnknown(key, store.unpack(old))
            for r in handlers:
                r._push(_DELETE, tomb)
        store.resource_version = resource_version
        self._m_cached.set(len(store))
        self._on_synced()

    def add(self, obj: Obj) -> None:
        obj = self._prepare(obj)
        key = object_key(obj)
        old = self.store.put(key, obj)
        if old is None:
            for r in self._handlers:
                r._push(_ADD, obj, False)
        elif self._handlers:
            old_obj = self.store.unpack(old)
            for r in self._handlers:
                r._push(_UPDATE, old_obj, obj)

    update = add

    def delete(self, obj: Obj) -> None:
        obj = self._prepare(obj)
        self.store.remove(object_key(obj))
        for r in self._handlers:
            r._push(_DELETE, obj)

    def bookmark(self, resource_version: str) -> None:
        self.store.bookmark(resource_version)
