"""Hostile edits to a converged system: a LocalModelNode edited by hand and a malformed ConfigMap.

Expected: a cache on a node group that does not exist says so in its status, naming the group; the
manager restores its entries in the LocalModelNodes (an admin's deletion or garbling of an
entry is undone, an entry it did not write is not trusted), the agents keep running, and with broken
``inferenceservice-config`` JSON every component keeps running on its last good config and logs why
(the error names the ConfigMap and the key). Nothing already downloaded is lost meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chaos.harness import ChaosSystem
from chaos.invariants import CacheSpec, Monitor
from localcache.runtime import errors
from localcache.runtime.resources import CONFIGMAPS
from localcache.testing.system import CONFIG_NAMESPACE, LOCAL_MODEL_CACHES, LOCAL_MODEL_NODES, apply_documents

log = logging.getLogger("chaos.hostile")

CONFIG_NAME = "inferenceservice-config"
GHOST = {"modelName": "ghost-not-a-cache", "sourceModelUri": "hf://ghost/model", "nodeGroup": "workers"}


async def _until(probe: Callable[[], Awaitable[Any]], within: float) -> Any:
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        try:
            value = await probe()
        except errors.ApiError:
            value = None
        if value:
            return value
        await asyncio.sleep(0.5)
    return value


async def _edit_node(chaos: ChaosSystem, node: str, caches: list[CacheSpec], monitor: Monitor | None) -> None:
    """Remove one entry, garble another's URI, add one the manager never wrote: in one update."""
    assert chaos.system is not None and chaos.system.client is not None
    client = chaos.system.client
    if monitor is not None:
        monitor.removed_by_hand(caches[1].status_key, node)
    for _ in range(10):
        lmn = await client.get(LOCAL_MODEL_NODES, node)
        entries = list(lmn["spec"].get("localModels") or [])
        removed = caches[1].name
        kept = [e for e in entries if not (e.get("modelName") == removed and not e.get("namespace"))]
        for e in kept:
            if e.get("modelName") == caches[2].name and not e.get("namespace"):
                e["sourceModelUri"] = "../../../etc/passwd"
        lmn["spec"]["localModels"] = [*kept, dict(GHOST)]
        try:
            await client.update(LOCAL_MODEL_NODES, lmn)
            return
        except errors.Conflict:
            continue


async def hostile_edits(
    chaos: ChaosSystem, caches: list[CacheSpec], within: float = 60.0, monitor: Monitor | None = None
) -> list[str]:
    """Returns violations (sentences); empty when everything recovered as documented."""
    assert chaos.system is not None and chaos.system.client is not None
    client = chaos.system.client
    out: list[str] = []
    node = caches[0].nodes[0]

    # ---- a LocalModelNode edited by hand ---------------------------------------------------------
    await _edit_node(chaos, node, caches, monitor)

    async def restored() -> bool:
        lmn = await client.get(LOCAL_MODEL_NODES, node)
        entries = {
            (e.get("modelName"), e.get("namespace") or None, e.get("sourceModelUri"))
            for e in lmn["spec"].get("localModels") or []
        }
        return all((c.name, c.namespace, c.uri) in entries for c in caches)

    if not await _until(restored, within):
        lmn = await client.get(LOCAL_MODEL_NODES, node)
        out.append(
            f"LocalModelNode {node} edited by hand: the manager did not restore its entries within "
            f"{within:.0f}s: {lmn['spec'].get('localModels')}"
        )
    for process in [*chaos.managers, *chaos.system.agents.values()]:
        if not process.alive:
            out.append(f"{process.name} exited after a hand edit of {node}: {process.log_tail(5)}")

    # ---- a cache on a node group that does not exist ----------------------------------------------
    ghost_cache = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": "chaos-unknown-group"},
        "spec": {
            "sourceModelUri": "hf://ghost/unknown-group",
            "modelSize": "1Mi",
            "nodeGroups": ["no-such-group"],
        },
    }
    await apply_documents(client, [ghost_cache])

    async def says_which_group() -> str | None:
        obj = await client.get(LOCAL_MODEL_CACHES, "chaos-unknown-group")
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("status") == "False" and "no-such-group" in (c.get("message") or ""):
                return str(c.get("message"))
        return None

    try:
        if not await _until(says_which_group, 30):
            obj = await client.get(LOCAL_MODEL_CACHES, "chaos-unknown-group")
            out.append(
                f"a cache on an unknown node group does not name it in its status: {obj.get('status')}"
            )
    finally:
        await client.delete(LOCAL_MODEL_CACHES, "chaos-unknown-group", missing_ok=True)

    # ---- malformed inferenceservice-config -------------------------------------------------------
    cm = await client.get(CONFIGMAPS, CONFIG_NAME, CONFIG_NAMESPACE)
    good = cm["data"]["localModel"]
    broken = {"data": {"localModel": '{"enabled": true,'}}
    await client.patch(CONFIGMAPS, CONFIG_NAME, broken, CONFIG_NAMESPACE)
    marker = f"{CONFIG_NAMESPACE}/{CONFIG_NAME}"

    async def said_why() -> list[str]:
        procs = [*[m for m in chaos.managers if m.alive], *chaos.system.agents.values()]
        return [p.name for p in procs if marker in p.log_tail(300) and "localModel" in p.log_tail(300)]

    try:
        named = await _until(said_why, 30)
        if not named:
            out.append(
                f"malformed {marker} localModel JSON: no manager or agent log names the ConfigMap and key"
            )
        for process in [*chaos.managers, *chaos.system.agents.values()]:
            if not process.alive:
                out.append(f"{process.name} exited on a malformed {marker}: {process.log_tail(5)}")
    finally:
        await client.patch(CONFIGMAPS, CONFIG_NAME, {"data": {"localModel": good}}, CONFIG_NAMESPACE)
    log.info("hostile edits done violations=%d", len(out))
    return out
