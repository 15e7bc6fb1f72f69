"""The informer's indexed object store (client-go's ThreadSafeStore + Indexer, for one event loop).

Keys are ``namespace/name`` (or ``name`` for cluster-scoped objects). A ``namespace`` index is always
built; custom indexers (``name -> fn(obj) -> list[str]``) can be added at any time, also after the
store has items.

Two storage modes, chosen per store:

* ``"dict"``: objects are kept as the parsed dicts the informer received (dict keys shared, by
  orjson's key cache or by interning, so 10,000 copies share one ``"metadata"`` string). Reads
  return the stored object itself: callers must not mutate it (use :func:`deep_copy` first),
  exactly client-go's contract.
* ``"compact"`` (the default): objects are kept as compact JSON bytes and decoded on every read.
  Memory is about the objects' JSON size, and every read returns a fresh dict the caller owns, so a
  reconciler cannot corrupt the cache by mutating what it read (controller-runtime deep-copies on
  read for the same reason). Reads cost a decode (~10-30 µs for a 1 KiB object).

Tombstones: :class:`DeletedFinalStateUnknown` wraps the last known state of an object whose deletion
was not observed (it vanished across a relist).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from localcache.runtime import jsoncodec

__all__ = [
    "NAMESPACE_INDEX",
    "DeletedFinalStateUnknown",
    "IndexFunc",
    "Store",
    "deep_copy",
    "intern_keys",
    "object_key",
    "split_key",
]

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]
NAMESPACE_INDEX = "namespace"
StorageMode = Literal["dict", "compact"]


@dataclass(frozen=True, slots=True)
class DeletedFinalStateUnknown:
    """An object deleted while we were not watching: ``obj`` is its last known (possibly stale) state."""

    key: str
    obj: Obj


def object_key(obj: Mapping[str, Any] | DeletedFinalStateUnknown) -> str:
    """``namespace/name`` or ``name``; tombstones yield their key (DeletionHandlingMetaNamespaceKeyFunc)."""
    if isinstance(obj, DeletedFinalStateUnknown):
        return obj.key
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValueError(f"object of kind {obj.get('kind')!r} has no metadata.name: cannot key it")
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else meta["name"]


def split_key(key: str) -> tuple[str | None, str]:
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


def _namespace_of_key(key: str) -> str:
    ns, sep, _ = key.partition("/")
    return ns if sep else ""


def _whole(obj: Obj) -> Obj:
    """The object as :meth:`Store.shared` keeps it: its short string values interned in place.

    Shared objects live as long as their version, and large ones repeat the same values across
    objects (fifty LocalModelNodes list the same thousand model names and URIs, the same states
    and timestamps): interned, each is stored once (fifty nodes of 1,000 models: 45 -> 25 MiB).
    The object is this memo's own decode (compact storage) or the stored dict (dict storage); either
    way replacing values by equal ones is invisible to every reader.
    """
    stack: list[Any] = [obj]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in pairs:
            if isinstance(v, str):
                if len(v) <= _INTERN_MAX:
                    node[k] = _intern(v)
            elif isinstance(v, dict | list):
                stack.append(v)
    return obj


def deep_copy(value: Any) -> Any:
    """A deep copy of a JSON value; several times faster than ``copy.deepcopy`` on dict trees."""
    if isinstance(value, dict):
        return {k: deep_copy(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) if isinstance(v, dict | list) else v for v in value]
    return value


_intern = sys.intern
_INTERN_MAX = 256  # longer strings are rarely repeated (messages), and interning costs a hash


def intern_keys(value: Any) -> Any:
    """Rebuild a JSON tree with every dict key ``sys.intern``ed: identical keys share one string."""
    if isinstance(value, dict):
        return {_intern(k): intern_keys(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        return [intern_keys(v) if isinstance(v, dict | list) else v for v in value]
    return value


class Store:
    """An indexed key → object map; see the module docstring for the storage modes."""

    def __init__(
        self,
        indexers: Mapping[str, IndexFunc] | None = None,
        *,
        mode: StorageMode = "compact",
        encode: Callable[[Obj], bytes] = jsoncodec.dumps_exact,
        decode: Callable[[bytes], Obj] = jsoncodec.loads,
    ) -> None:
        if mode not in ("dict", "compact"):
            raise ValueError(f"storage mode must be 'dict' or 'compact', not {mode!r}")
        self.mode: StorageMode = mode
        self._encode = encode
        self._decode = decode
        self._items: dict[str, Any] = {}
        self._indexers: dict[str, IndexFunc] = {}
        # index name -> value -> set of keys; the namespace index is derived from keys
        self._indices: dict[str, dict[str, set[str]]] = {NAMESPACE_INDEX: {}}
        # key -> index name -> values, kept for custom indexers so deletes need no decode
        self._indexed: dict[str, dict[str, tuple[str, ...]]] = {}
        self.resource_version = ""
        # projection function -> key -> (stored form it was computed from, its value)
        self._projections: dict[Callable[[Obj], Any], dict[str, tuple[Any, Any]]] = {}
        if indexers:
            self.add_indexers(indexers)

    # --- storage ---------------------------------------------------------------------------------
    def _pack(self, obj: Obj) -> Any:
        if self.mode == "compact":
            return self._encode(obj)
        return obj if jsoncodec.BACKEND == "orjson" else intern_keys(obj)  # orjson already shares keys

    def _unpack(self, stored: Any) -> Obj:
        return self._decode(stored) if self.mode == "compact" else stored

    def pack(self, obj: Obj) -> Any:
        """The stored form of ``obj`` (lets the informer compare a relisted object without decoding)."""
        return self._pack(obj)

    def stored(self, key: str) -> Any:
        return self._items.get(key)

    # --- indexes ---------------------------------------------------------------------------------
    def add_indexers(self, indexers: Mapping[str, IndexFunc]) -> None:
        for name, fn in indexers.items():
            if name in self._indexers or name == NAMESPACE_INDEX:
                raise ValueError(f"indexer {name!r} already exists")
            self._indexers[name] = fn
            self._indices[name] = {}
            for key, stored in self._items.items():
                values = tuple(fn(self._unpack(stored)))
                self._indexed.setdefault(key, {})[name] = values
                idx = self._indices[name]
                for v in values:
                    idx.setdefault(v, set()).add(key)

    def _index_add(self, key: str, obj: Obj, old_existed: bool) -> None:
        if not old_existed:
            self._indices[NAMESPACE_INDEX].setdefault(_namespace_of_key(key), set()).add(key)
        if not self._indexers:
            return
        prev = self._indexed.get(key) or {}
        now: dict[str, tuple[str, ...]] = {}
        for name, fn in self._indexers.items():
            values = tuple(fn(obj))
            now[name] = values
            old_values = prev.get(name, ())
            if values == old_values:
                continue
            idx = self._indices[name]
            for v in old_values:
                keys = idx.get(v)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del idx[v]
            for v in values:
                idx.setdefault(v, set()).add(key)
        self._indexed[key] = now

    def _index_remove(self, key: str) -> None:
        ns = _namespace_of_key(key)
        keys = self._indices[NAMESPACE_INDEX].get(ns)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._indices[NAMESPACE_INDEX][ns]
        for name, values in (self._indexed.pop(key, None) or {}).items():
            idx = self._indices[name]
            for v in values:
                keys = idx.get(v)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del idx[v]

    # --- writes ----------------------------------------------------------------------------------
    def put(self, key: str, obj: Obj, stored: Any = None) -> Any:
        """Insert or replace; returns the previous stored form (or None). ``stored`` skips re-packing."""
        old = self._items.get(key)
        self._items[key] = self._pack(obj) if stored is None else stored
        self._index_add(key, obj, old is not None)
        return old

    def add(self, obj: Obj) -> None:
        self.put(object_key(obj), obj)

    update = add

    def remove(self, key: str) -> Any:
        """Delete by key; returns the previous stored form (or None)."""
        old = self._items.pop(key, None)
        if old is not None:
            self._index_remove(key)
            for memo in self._projections.values():
                memo.pop(key, None)
        return old

    def delete(self, obj: Obj | DeletedFinalStateUnknown) -> None:
        self.remove(object_key(obj))

    def replace(self, objs: Iterable[Obj], resource_version: str) -> None:
        """Swap the whole content (no events: the informer computes those itself)."""
        self._items.clear()
        self._indexed.clear()
        self._projections.clear()
        for name in self._indices:
            self._indices[name] = {}
        for obj in objs:
            self.put(object_key(obj), obj)
        self.resource_version = resource_version

    def bookmark(self, resource_version: str) -> None:
        self.resource_version = resource_version

    # --- reads -----------------------------------------------------------------------------------
    def get(self, key: str) -> Obj | None:
        stored = self._items.get(key)
        return None if stored is None else self._unpack(stored)

    def get_by_name(self, namespace: str | None, name: str) -> Obj | None:
        return self.get(f"{namespace}/{name}" if namespace else name)

    def unpack(self, stored: Any) -> Obj:
        return self._unpack(stored)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, Obj]]:
        for key, stored in list(self._items.items()):
            yield key, self._unpack(stored)

    def list(self, namespace: str | None = None) -> list[Obj]:
        if namespace is None:
            return [self._unpack(s) for s in self._items.values()]
        return self.by_index(NAMESPACE_INDEX, namespace)

    def index_keys(self, index_name: str, value: str) -> list[str]:
        try:
            idx = self._indices[index_name]
        except KeyError:
            raise KeyError(f"no indexer named {index_name!r}") from None
        return sorted(idx.get(value, ()))

    def by_index(self, index_name: str, value: str) -> list[Obj]:
        return [self._unpack(self._items[k]) for k in self.index_keys(index_name, value)]

    def project(self, index_name: str, value: str, fn: Callable[[Obj], Any]) -> list[Any]:
        """``fn(obj)`` for each object of an index value, computed once per stored version.

        For readers that need a few fields of every object again and again (a controller planning
        over all the caches of a group on each reconcile): an object is decoded and ``fn`` applied
        only when it changed since the last call, instead of decoding every object every time.
        ``fn`` must be pure, and callers must not mutate what it returns (it is shared).
        """
        return [self._projected(fn, key) for key in self.index_keys(index_name, value)]

    def shared(self, key: str) -> Obj | None:
        """The object, decoded once per stored version and shared by every caller: read-only.

        For hot paths reading the same large objects many times between their changes (the cache
        controller reads each LocalModelNode, hundreds of KiB at a thousand models, on every
        reconcile). :meth:`get` returns a private copy instead.
        """
        return self._projected(_whole, key) if key in self._items else None

    def _projected(self, fn: Callable[[Obj], Any], key: str) -> Any:
        """``fn`` of the stored object under ``key``, memoized until that object changes."""
        stored = self._items[key]
        memo = self._projections.setdefault(fn, {})
        hit = memo.get(key)
        if hit is None or hit[0] is not stored:
            hit = (stored, fn(self._unpack(stored)))
            memo[key] = hit
        return hit[1]

    def list_index_values(self, index_name: str) -> list[str]:
        try:
            return sorted(self._indices[index_name])
        except KeyError:
            raise KeyError(f"no indexer named {index_name!r}") from None

    def index(self, index_name: str, obj: Obj) -> list[Obj]:
        """Objects sharing any index value with ``obj`` (client-go ``Index``)."""
        if index_name == NAMESPACE_INDEX:
            values: Iterable[str] = [(obj.get("metadata") or {}).get("namespace") or ""]
        else:
            values = self._indexers[index_name](obj)
        keys: set[str] = set()
        for v in values:
            keys |= self._indices[index_name].get(v, set())
        return [self._unpack(self._items[k]) for k in sorted(keys)]
