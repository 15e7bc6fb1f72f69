"""The informer cache: one shared informer per (resource, namespace, selectors), and reads from them.

Controllers and readers ask the cache for informers; however many ask for the same scope, one
watch serves them all. Reads (``get``/``list``/``by_index``) come from the informer's store and never
hit the API server. With ``fail_on_missing_informer=True`` (the default, unlike controller-runtime)
reading a resource nobody declared raises instead of silently starting a cluster-wide informer.

Cache-wide options mirror controller-runtime's ``cache.Options``: a namespace restriction, per-resource
label/field selectors, a transform (default: strip ``managedFields``), storage mode, and the resync
period (10 h, multiplied per informer by a random factor in [0.9, 1.1)).

Runnable protocol (used by the manager): ``await cache.start()`` runs every informer until cancelled,
starting informers created later at once; ``needs_leader_election = False`` (informers warm up on
every replica); ``await cache.wait_for_sync(timeout) -> bool``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from localcache.runtime import errors
from localcache.runtime.clock import SYSTEM_CLOCK, Clock
from localcache.runtime.informer import SharedInformer, Transform, strip_managed_fields
from localcache.runtime.resources import Resource
from localcache.runtime.selectors import parse_selector
from localcache.runtime.store import IndexFunc, StorageMode

__all__ = ["DEFAULT_SYNC_PERIOD", "Cache", "InformerCache", "ResourceNotCached"]

log = logging.getLogger(__name__)

DEFAULT_SYNC_PERIOD = 10 * 3600.0
Obj = dict[str, Any]
InformerKey = tuple[Resource, str | None, str | None, str | None, bool]


def _informer_name(key: InformerKey) -> str:
    resource, ns, ls, fs, meta = key
    name = f"{resource}"
    name += f"@{ns}" if ns else ""
    name += f"?{ls}" if ls else ""
    name += f"?{fs}" if fs else ""
    return name + ("[metadata]" if meta else "")


class ResourceNotCached(errors.ApiError):
    """A read of a resource the cache has no informer for (``fail_on_missing_informer``)."""


class InformerCache:
    needs_leader_election = False

    def __init__(
        self,
        client: Any,
        *,
        namespace: str | None = None,
        label_selectors: Mapping[Resource, str] | None = None,
        field_selectors: Mapping[Resource, str] | None = None,
        transform: Transform | None = strip_managed_fields,
        storage: StorageMode = "compact",
        sync_period: float | None = DEFAULT_SYNC_PERIOD,
        use_watch_list: bool = False,
        fail_on_missing_informer: bool = True,
        read_sync_timeout: float = 120.0,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.label_selectors = dict(label_selectors or {})
        self.field_selectors = dict(field_selectors or {})
        self.transform = transform
        self.storage: StorageMode = storage
        self.sync_period = sync_period
        self.use_watch_list = use_watch_list
        self.fail_on_missing_informer = fail_on_missing_informer
        self.read_sync_timeout = read_sync_timeout
        self.clock = clock
        self._rng = rng or random.Random()
        self._informers: dict[InformerKey, SharedInformer] = {}
        self._tasks: dict[InformerKey, asyncio.Task[None]] = {}
        self._running = False
        self._stopped = asyncio.Event()

    # --- informers -----------------------------------------------------------------------------------
    def _key(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        metadata_only: bool = False,
    ) -> InformerKey:
        ns = namespace if namespace is not None else self.namespace
        if not resource.namespaced:
            ns = None
        ls = label_selector if label_selector is not None else self.label_selectors.get(resource)
        fs = field_selector if field_selector is not None else self.field_selectors.get(resource)
        ls = str(parse_selector(ls)) or None if ls else None  # canonical form: equal selectors share
        return resource, ns or None, ls, fs or None, metadata_only

    def informer_for(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, IndexFunc] | None = None,
        metadata_only: bool = False,
    ) -> SharedInformer:
        """The shared informer for that scope, created (and started, if the cache runs) on first use.

        ``metadata_only`` informers (``PartialObjectMetadata``) are separate from full ones.
        """
        key = self._key(resource, namespace, label_selector, field_selector, metadata_only)
        inf = self._informers.get(key)
        if inf is None:
            _, ns, ls, fs, _ = key
            resync = self.sync_period * (0.9 + 0.2 * self._rng.random()) if self.sync_period else None
            inf = SharedInformer(
                self.client,
                resource,
                ns,
                label_selector=ls,
                field_selector=fs,
                transform=self.transform,
                indexers=indexers,
                storage=self.storage,
                resync_period=resync,
                clock=self.clock,
                use_watch_list=self.use_watch_list,
                rng=self._rng,
                metadata_only=metadata_only,
                name=_informer_name(key),
            )
            self._informers[key] = inf
            log.info("cache: new informer %s", inf.name, extra={"informer": inf.name})
            if self._running:
                self._start_informer(key, inf)
        elif indexers:
            new = {k: v for k, v in indexers.items() if k not in inf.store._indexers}
            if new:
                inf.store.add_indexers(new)
        return inf

    get_informer = informer_for

    @property
    def informers(self) -> list[SharedInformer]:
        return list(self._informers.values())

    def _reader(
        self, resource: Resource, namespace: str | None, metadata_only: bool = False
    ) -> SharedInformer:
        key = self._key(resource, None, None, None, metadata_only)
        inf = self._informers.get(key)
        if inf is None:
            # any informer on that resource covering the namespace will do
            for (res, ns, _, _, meta), candidate in self._informers.items():
                if res == resource and meta == metadata_only and (ns is None or ns == namespace):
                    return candidate
            if self.fail_on_missing_informer:
                raise ResourceNotCached(
                    f"no informer for {resource} in the cache; declare it (informer_for / a controller watch)"
                )
            inf = self.informer_for(resource, metadata_only=metadata_only)
        return inf

    # --- reads ---------------------------------------------------------------------------------------
    async def get(
        self, resource: Resource, name: str, namespace: str | None = None, *, metadata_only: bool = False
    ) -> Obj:
        """The cached object (a dict the caller may mutate in compact storage); raises NotFound."""
        inf = self._reader(resource, namespace, metadata_only)
        if not inf.has_synced() and not await inf.wait_for_sync(self.read_sync_timeout):
            raise errors.Timeout(
                f"cache: informer {inf.name} not synced in {self.read_sync_timeout}s (cache not started?)",
                status=0,
            )
        obj = inf.store.get_by_name(namespace if resource.namespaced else None, name)
        if obj is None:
            where = f" in namespace {namespace}" if namespace else ""
            raise errors.NotFound(f'{resource.kind} "{name}" not found{where} (cache)', reason="NotFound")
        return obj

    def get_cached(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        """Like :meth:`get` but synchronous and None when absent (or not yet synced)."""
        return self._reader(resource, namespace).store.get_by_name(
            namespace if resource.namespaced else None, name
        )

    def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | Mapping[str, Any] | None = None,
        metadata_only: bool = False,
    ) -> list[Obj]:
        inf = self._reader(resource, namespace, metadata_only)
        items = inf.store.list(namespace if resource.namespaced else None)
        if label_selector:
            sel = parse_selector(label_selector)
            items = [o for o in items if sel.matches_object(o)]
        return items

    def by_index(self, resource: Resource, index_name: str, value: str) -> list[Obj]:
        return self._reader(resource, None).store.by_index(index_name, value)

    def get_shared(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        """:meth:`Store.shared`: the cached object without a private copy; callers must not mutate it."""
        ns = namespace if resource.namespaced else None
        return self._reader(resource, namespace).store.shared(f"{ns}/{name}" if ns else name)

    def index_keys(self, resource: Resource, index_name: str, value: str) -> list[str]:
        """The store keys (``namespace/name``, or ``name``) of an index value, decoding nothing."""
        return self._reader(resource, None).store.index_keys(index_name, value)

    def project(self, resource: Resource, index_name: str, value: str, fn: Callable[[Obj], Any]) -> list[Any]:
        """:meth:`Store.project`: ``fn`` of each indexed object, recomputed only for changed ones."""
        return self._reader(resource, None).store.project(index_name, value, fn)

    # --- running -------------------------------------------------------------------------------------
    def _start_informer(self, key: InformerKey, inf: SharedInformer) -> None:
        self._tasks[key] = asyncio.get_running_loop().create_task(inf.start(), name=f"informer:{inf.name}")

    async def start(self) -> None:
        """Run every informer (present and future) until cancelled."""
        if self._running:
            raise RuntimeError("informer cache is already running")
        self._running = True
        self._stopped.clear()
        try:
            for key, inf in list(self._informers.items()):
                self._start_informer(key, inf)
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._running = False
            tasks = list(self._tasks.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()
            self._stopped.set()

    run = start

    def has_synced(self) -> bool:
        return all(inf.has_synced() for inf in self._informers.values())

    async def wait_for_sync(self, timeout: float | None = 120.0) -> bool:  # noqa: ASYNC109
        """True once every informer created so far has synced; False after ``timeout`` seconds."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        for inf in list(self._informers.values()):
            remaining = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
            if not await inf.wait_for_sync(remaining):
                return False
        return True


#: the name the manager looks for
Cache = InformerCache
