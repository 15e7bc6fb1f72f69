"""An in-memory list/watch source like client-go's FakeControllerSource, with fault injection.

* ``add/modify/delete`` change state, bump the RV and send the event to open watches;
  the ``*_drop`` variants change state without sending anything (a missed event).
* ``reset_watch()`` closes every watch and forgets history: a re-watch from an old RV gets 410,
  which forces the reflector to relist (and emit tombstones for missed deletes).
* ``list_errors`` / ``watch_errors``: exceptions raised by the next calls, in order.
* ``calls`` records every list/watch with its parameters, for asserting the reflector's choices.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from localcache.runtime import errors

Obj = dict[str, Any]


def cm(name: str, ns: str = "ns", **data: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }


class FakeSource:
    def __init__(self, *, first_rv: int = 100) -> None:
        self.rv = first_rv
        self.objects: dict[str, Obj] = {}
        self.history: list[tuple[int, str, Obj]] = []
        self.oldest_rv = first_rv  # watches from before this get 410
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.list_errors: list[BaseException] = []
        self.watch_errors: list[BaseException] = []
        self.stream_errors: list[BaseException] = []  # raised mid-stream after the backlog
        self._watchers: list[asyncio.Queue[tuple[str, Obj] | None]] = []
        self.page_size_seen: list[int | None] = []
        self.watch_opened = asyncio.Event()

    # --- state changes ---------------------------------------------------------------------------
    def _key(self, obj: Obj) -> str:
        m = obj["metadata"]
        return f"{m.get('namespace', '')}/{m['name']}"

    def _commit(self, etype: str, obj: Obj, send: bool) -> Obj:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self._key(obj)
        if etype == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if send:
            self.history.append((self.rv, etype, obj))
            for q in self._watchers:
                q.put_nowait((etype, copy.deepcopy(obj)))
        return obj

    def add(self, obj: Obj, send: bool = True) -> Obj:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        obj["metadata"].setdefault("generation", 1)
        return self._commit("ADDED", obj, send)

    def modify(self, obj: Obj, send: bool = True) -> Obj:
        return self._commit("MODIFIED", obj, send)

    def delete(self, name: str, ns: str = "ns", send: bool = True) -> Obj:
        obj = self.objects[f"{ns}/{name}"]
        return self._commit("DELETED", obj, send)

    def bookmark(self) -> None:
        self.rv += 1
        for q in self._watchers:
            q.put_nowait(("BOOKMARK", {"kind": "ConfigMap", "metadata": {"resourceVersion": str(self.rv)}}))

    def send_error(self, code: int = 410, reason: str = "Expired") -> None:
        status = {"kind": "Status", "code": code, "reason": reason, "message": "too old resource version"}
        for q in self._watchers:
            q.put_nowait(("ERROR", status))

    def close_watches(self) -> None:
        for q in self._watchers:
            q.put_nowait(None)

    def reset_watch(self) -> None:
        """Close all watches and drop history: old RVs become 410."""
        self.close_watches()
        self.history.clear()
        self.oldest_rv = self.rv + 1

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # --- ListerWatcher ---------------------------------------------------------------------------
    async def list(self, *, resource_version: str | None, limit: int | None, continue_: str | None) -> Obj:
        self.calls.append(
            ("list", {"resource_version": resource_version, "limit": limit, "continue": continue_})
        )
        await asyncio.sleep(0)
        if self.list_errors:
            raise self.list_errors.pop(0)
        items = sorted(self.objects.values(), key=self._key)
        start = int(continue_.split(":")[0]) if continue_ else 0
        list_rv = continue_.split(":")[1] if continue_ else str(self.rv)
        if limit:
            page = items[start : start + limit]
            nxt = start + limit
            cont = f"{nxt}:{list_rv}" if nxt < len(items) else ""
        else:
            page, cont = items[start:], ""
        meta: Obj = {"resourceVersion": list_rv}
        if cont:
            meta["continue"] = cont
        return {"kind": "ConfigMapList", "metadata": meta, "items": copy.deepcopy(page)}

    def watch(self, **kw: Any) -> Any:
        self.calls.append(("watch", kw))
        return self._watch(kw)

    @asynccontextmanager
    async def _watch(self, kw: dict[str, Any]) -> AsyncIterator[AsyncIterator[tuple[str, Obj]]]:
        if self.watch_errors:
            raise self.watch_errors.pop(0)
        rv = int(kw.get("resource_version") or 0)
        q: asyncio.Queue[tuple[str, Obj] | None] = asyncio.Queue()
        if rv and rv < self.oldest_rv - 1:
            q.put_nowait(
                ("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})
            )
        else:
            for erv, etype, obj in self.history:
                if erv > rv:
                    q.put_nowait((etype, copy.deepcopy(obj)))
        self._watchers.append(q)
        self.watch_opened.set()

        async def events() -> AsyncIterator[tuple[str, Obj]]:
            while True:
                item = await q.get()
                if item is None:
                    return
                if item[0] == "ERROR":
                    raise errors.from_status(item[1]["code"], item[1])
                yield item
                if q.empty() and self.stream_errors:
                    raise self.stream_errors.pop(0)

        try:
            yield events()
        finally:
            self._watchers.remove(q)


class FakeClient:
    """Routes the Client's list/watch calls to one FakeSource per resource (for cache/builder tests)."""

    def __init__(self) -> None:
        self.sources: dict[Any, FakeSource] = {}
        self.scopes: list[tuple[Any, str | None, str | None]] = []

    def source(self, resource: Any) -> FakeSource:
        return self.sources.setdefault(resource, FakeSource())

    async def list(self, resource: Any, namespace: str | None = None, **kw: Any) -> Obj:
        self.scopes.append((resource, namespace, kw.get("label_selector")))
        return await self.source(resource).list(
            resource_version=kw.get("resource_version"), limit=kw.get("limit"), continue_=kw.get("continue_")
        )

    def watch(self, resource: Any, namespace: str | None = None, **kw: Any) -> Any:
        kw.pop("label_selector", None)
        kw.pop("field_selector", None)
        return self.source(resource).watch(**kw)
