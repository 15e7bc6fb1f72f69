"""Shared helpers for the informer integration tests."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from localcache.runtime import DeletedFinalStateUnknown, FuncHandler


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], limit: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + limit
    while True:
        r = cond()
        if asyncio.iscoroutine(r) or isinstance(r, Awaitable):
            r = await r  # type: ignore[misc]
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.05)


def cm(name: str, ns: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }


class EventLog:
    """Per-key event sequences, checked for validity against the store's own transitions."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)

    def handler(self) -> FuncHandler:
        def key(o: dict[str, Any]) -> str:
            return f"{o['metadata']['namespace']}/{o['metadata']['name']}"

        def on_add(o: dict[str, Any], initial: bool) -> None:
            self.by_key[key(o)].append(("add", o["metadata"]["resourceVersion"], o.get("data") or {}))

        def on_update(old: dict[str, Any], new: dict[str, Any]) -> None:
            self.by_key[key(new)].append(
                ("update", new["metadata"]["resourceVersion"], new.get("data") or {})
            )

        def on_delete(o: Any) -> None:
            if isinstance(o, DeletedFinalStateUnknown):
                self.by_key[o.key].append(("tombstone", o.obj["metadata"]["resourceVersion"], {}))
            else:
                self.by_key[key(o)].append(("delete", o["metadata"]["resourceVersion"], {}))

        return FuncHandler(on_add, on_update, on_delete)

    def check_valid(self) -> None:
        for key, seq in self.by_key.items():
            present = False
            last_rv = 0
            for kind, rv, _ in seq:
                if kind == "add":
                    assert not present, f"{key}: add while present: {seq}"
                    present = True
                elif kind == "update":
                    assert present, f"{key}: update while absent: {seq}"
                else:
                    assert present, f"{key}: delete while absent: {seq}"
                    present = False
                assert int(rv) >= last_rv, f"{key}: resourceVersion went backwards: {seq}"
                last_rv = int(rv)

    def final_present(self) -> dict[str, str]:
        out = {}
        for key, seq in self.by_key.items():
            if seq and seq[-1][0] in ("add", "update"):
                out[key] = seq[-1][1]
        return out
