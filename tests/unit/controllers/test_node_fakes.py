"""In-memory stand-ins for the agent's client and informer cache (unit tier only).

The client and the cache are separate on purpose: an object the agent creates through the client is
not in the cache until the test calls :meth:`FakeCache.sync`, which is exactly the informer lag the
agent must tolerate without creating a second Job.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import jsonpatch

from localcache.runtime import NotFound
from localcache.runtime.clock import FakeClock
from localcache.runtime.resources import Resource
from localcache.runtime.selectors import parse_selector

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace, name)


class FakeClient:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.objects: dict[Key, Obj] = {}
        self.kinds: dict[str, Resource] = {}
        self.calls: list[tuple[str, str, str]] = []  # (verb, plural, name)
        self._rv = itertools.count(1)
        self._suffix = itertools.count(1)
        self.create_errors: list[Exception] = []  # raised by the next creates, in order

    def _key(self, res: Resource, name: str, ns: str | None) -> Key:
        return (res.plural, (ns or "") if res.namespaced else "", name)

    def put(self, res: Resource, obj: Obj) -> Obj:
        """Seed an object as if it existed on the server."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("creationTimestamp", self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.kinds[res.plural] = res
        self.objects[self._key(res, meta["name"], meta.get("namespace"))] = obj
        return copy.deepcopy(obj)

    def verbs(self, verb: str, plural: str | None = None) -> list[str]:
        return [n for v, p, n in self.calls if v == verb and (plural is None or p == plural)]

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        self.calls.append(("get", res.plural, name))
        obj = self.objects.get(self._key(res, name, namespace))
        if obj is None:
            raise NotFound(f"{res.kind} {name} not found", reason="NotFound")
        return copy.deepcopy(obj)

    def items(
        self, res: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        sel = parse_selector(label_selector) if label_selector else None
        out = []
        for (plural, ns, _), obj in sorted(self.objects.items()):
            if plural != res.plural or (namespace and res.namespaced and ns != namespace):
                continue
            if sel is not None and not sel.matches_object(obj):
                continue
            out.append(copy.deepcopy(obj))
        return out

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None, **_: Any
    ) -> Obj:
        self.calls.append(("list", res.plural, namespace or ""))
        return {"items": self.items(res, namespace, label_selector), "metadata": {"resourceVersion": "1"}}

    async def list_all(self, res: Resource, namespace: str | None = None, **_: Any) -> tuple[list[Obj], str]:
        self.calls.append(("list", res.plural, namespace or ""))
        return self.items(res, namespace), "1"

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None, **_: Any) -> Obj:
        if self.create_errors:
            self.calls.append(("create", res.plural, "<refused>"))
            raise self.create_errors.pop(0)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = f"{meta['generateName']}{next(self._suffix):05d}"
        meta["namespace"] = namespace or meta.get("namespace")
        meta["uid"] = f"uid-{meta['name']}"
        self.calls.append(("create", res.plural, meta["name"]))
        return self.put(res, obj)

    async def delete(
        self, res: Resource, name: str, namespace: str | None = None, *, missing_ok: bool = False, **kw: Any
    ) -> Obj | None:
        self.calls.append(("delete", res.plural, name))
        self.last_delete_options = kw
        obj = self.objects.pop(self._key(res, name, namespace), None)
        if obj is None and not missing_ok:
            raise NotFound(f"{res.kind} {name} not found", reason="NotFound")
        return obj

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
        **_: Any,
    ) -> Obj:
        """JSON patches only (what the agent sends); on ``status``, only the status may change."""
        assert patch_type == "json", patch_type
        self.calls.append((f"patch_{subresource}" if subresource else "patch", res.plural, name))
        key = self._key(res, name, namespace)
        current = self.objects.get(key)
        if current is None:
            raise NotFound(f"{res.kind} {name} not found", reason="NotFound")
        updated = jsonpatch.apply_patch(current, patch)
        if subresource == "status":
            current["status"] = updated.get("status")
        else:
            updated["status"] = current.get("status")
            self.objects[key] = current = updated
        current["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(current)


class FakeInformer:
    def __init__(self, synced: bool = True) -> None:
        self.synced = synced

    def has_synced(self) -> bool:
        return self.synced


class FakeCache:
    """An informer cache whose contents change only when the test calls :meth:`sync`."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.objects: dict[Key, Obj] = {}
        self.informers: dict[tuple[str, str | None], FakeInformer] = {}

    def sync(self) -> None:
        self.objects = copy.deepcopy(self.client.objects)

    def informer_for(self, resource: Resource, *, namespace: str | None = None, **_: Any) -> FakeInformer:
        return self.informers.setdefault((resource.plural, namespace), FakeInformer())

    def get_cached(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        obj = self.objects.get((resource.plural, (namespace or "") if resource.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, resource: Resource, namespace: str | None = None, *, label_selector: Any = None
    ) -> list[Obj]:
        sel = parse_selector(label_selector) if label_selector else None
        out = []
        for (plural, ns, _), obj in sorted(self.objects.items()):
            if plural != resource.plural or (namespace and resource.namespaced and ns != namespace):
                continue
            if sel is not None and not sel.matches_object(obj):
                continue
            out.append(copy.deepcopy(obj))
        return out
