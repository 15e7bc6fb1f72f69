"""In-memory stand-ins for the admission code's client and informers (unit tier only).

Objects are raw dicts, as the webhook handlers receive and read them; label selectors are evaluated
with the runtime's own selector parser, so a handler's query is checked, not just its call.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

from localcache.runtime import Conflict, NotFound
from localcache.runtime.resources import Resource
from localcache.runtime.selectors import parse_selector
from localcache.runtime.webhook import AdmissionRequest

Obj = dict[str, Any]


class FakeClient:
    """get / list_all / update / resource_for over a dict, counting calls by verb."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[tuple[str, str]] = []
        self.served: dict[tuple[str, str], Resource] = {}
        self.conflicts_to_raise = 0
        self._rv = itertools.count(1)

    @staticmethod
    def _key(res: Resource, name: str, namespace: str | None) -> tuple[str, str, str]:
        return (res.plural, (namespace or "") if res.namespaced else "", name)

    def put(self, res: Resource, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[self._key(res, meta["name"], meta.get("namespace"))] = obj
        self.served[(res.api_version, res.kind)] = res
        return copy.deepcopy(obj)

    def count(self, verb: str, plural: str | None = None) -> int:
        return sum(1 for v, p in self.calls if v == verb and (plural is None or p == plural))

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        self.calls.append(("get", res.plural))
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
            if plural != res.plural or (namespace and ns != namespace):
                continue
            if sel is not None and not sel.matches_object(obj):
                continue
            out.append(copy.deepcopy(obj))
        return out

    async def list_all(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None, **_: Any
    ) -> tuple[list[Obj], str]:
        self.calls.append(("list", res.plural))
        return self.items(res, namespace, label_selector), str(next(self._rv))

    async def update(self, res: Resource, obj: Obj) -> Obj:
        self.calls.append(("update", res.plural))
        meta = obj["metadata"]
        key = self._key(res, meta["name"], meta.get("namespace"))
        current = self.objects.get(key)
        if current is None:
            raise NotFound(f"{res.kind} {meta['name']} not found", reason="NotFound")
        if self.conflicts_to_raise > 0:
            self.conflicts_to_raise -= 1
            current["metadata"]["resourceVersion"] = str(next(self._rv))  # someone else wrote it
            raise Conflict(f"{res.kind} {meta['name']}: the object has been modified", reason="Conflict")
        if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(f"{res.kind} {meta['name']}: stale resourceVersion", reason="Conflict")
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def resource_for(self, api_version: str, kind: str) -> Resource:
        res = self.served.get((api_version, kind))
        if res is None:
            raise NotFound(f"no resource for kind {kind!r} in {api_version}", reason="NotFound")
        return res


class FakeStore:
    def __init__(self, objs: Iterable[Obj] = ()) -> None:
        self.objs = [copy.deepcopy(o) for o in objs]

    def list(self, namespace: str | None = None) -> list[Obj]:
        return [
            copy.deepcopy(o)
            for o in self.objs
            if namespace is None or o["metadata"].get("namespace") == namespace
        ]

    def get_by_name(self, namespace: str | None, name: str) -> Obj | None:
        for o in self.objs:
            m = o["metadata"]
            if m["name"] == name and (m.get("namespace") or None) == (namespace or None):
                return copy.deepcopy(o)
        return None


class FakeInformer:
    """A synced (or not) informer: what CacheReader and ConfigReader read from."""

    def __init__(self, objs: Iterable[Obj] = (), synced: bool = True) -> None:
        self.store = FakeStore(objs)
        self.synced = synced

    def has_synced(self) -> bool:
        return self.synced


def review(operation: str, obj: Obj | None, old: Obj | None = None, namespace: str = "") -> AdmissionRequest:
    meta = (obj or old or {}).get("metadata") or {}
    return AdmissionRequest(
        {
            "uid": "u-1",
            "operation": operation,
            "name": meta.get("name", ""),
            "namespace": namespace or meta.get("namespace", ""),
            "object": obj,
            "oldObject": old,
        }
    )


def cache_obj(
    name: str,
    uri: str,
    groups: list[str],
    namespace: str | None = None,
    node_status: dict[str, str] | None = None,
    deleting: bool = False,
) -> Obj:
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obj: Obj = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNamespaceCache" if namespace else "LocalModelCache",
        "metadata": meta,
        "spec": {"sourceModelUri": uri, "modelSize": "1Gi", "nodeGroups": groups},
    }
    if node_status is not None:
        obj["status"] = {"nodeStatus": node_status}
    return obj


def isvc_obj(
    name: str,
    namespace: str,
    uri: str | None,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Obj:
    model: Obj = {"modelFormat": {"name": "huggingface"}}
    if uri is not None:
        model["storageUri"] = uri
    meta: Obj = {"name": name, "namespace": namespace}
    if labels is not None:
        meta["labels"] = dict(labels)
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": {"model": model}},
    }
