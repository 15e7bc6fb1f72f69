"""The node-group controller and storage admission against the real API server: ``status.used`` /
``status.available`` from what agents report, and a cache that does not fit gets InsufficientStorage
(and no download) until room is made."""

from __future__ import annotations

from typing import Any

import pytest

from localcache.controllers import LOCAL_MODEL_CACHES, LOCAL_MODEL_NODE_GROUPS
from localcache.runtime.resources import EVENTS
from localcache.testing.wait import eventually
from tests.integration.controllers.cache_support import CacheEnv, cond

pytestmark = pytest.mark.integration

GI = 2**30


async def test_group_usage_and_insufficient_storage(env: CacheEnv) -> None:
    await env.start()
    a1 = await env.make_node("a1", "a")
    ga = await env.make_group("ga", "a", limit="15Gi")
    first, second = env.n("m1"), env.n("m2")
    await env.make_cache(first, [ga], size="10Gi")
    await eventually(lambda: _has_entry(env, a1, first), 20, what="first cache placed")

    async def group_status(want: dict[str, str]) -> bool:
        group = await env.get(LOCAL_MODEL_NODE_GROUPS, ga)
        return (group or {}).get("status") == want

    await eventually(lambda: group_status({"used": "10Gi", "available": "5Gi"}), 20, what="declared use")

    await env.make_cache(second, [ga], size="10Gi")

    async def short() -> dict[str, Any] | None:
        s = await env.status(second)
        return s if cond(s, "InsufficientStorage").get("status") == "True" else None

    status = await eventually(short, 20, what="second cache short of storage")
    message = cond(status, "InsufficientStorage")["message"]
    assert ga in message and "needs 10Gi" in message and "5Gi free of 15Gi" in message, message
    assert cond(status, "Ready")["reason"] == "InsufficientStorage"
    assert second not in await env.entries(a1), "no download is started that cannot fit"
    assert cond(await env.status(first), "InsufficientStorage")["status"] == "False"

    async def warned() -> bool:
        items = (await env.admin.list(EVENTS, "default"))["items"]
        return any(
            e["involvedObject"]["name"] == second and e["reason"] == "InsufficientStorage" for e in items
        )

    await eventually(warned, 20, what="InsufficientStorage event")

    # the agent reports what the download really takes on disk
    await env.report(a1, first, "ModelDownloaded", size=3 * GI)
    await eventually(lambda: group_status({"used": "3Gi", "available": "12Gi"}), 20, what="reported use")

    # room is made: the second cache is placed and its condition clears
    await env.admin.delete(LOCAL_MODEL_CACHES, first)
    await eventually(lambda: _has_entry(env, a1, second), 20, what="second cache placed after the first left")

    async def fits() -> bool:
        return cond(await env.status(second), "InsufficientStorage").get("status") == "False"

    await eventually(fits, 20, what="InsufficientStorage cleared")

    async def first_gone() -> bool:
        return await env.get(LOCAL_MODEL_CACHES, first) is None

    await eventually(first_gone, 20, what="first cache deleted")
    assert first not in await env.entries(a1)

    # the limit is lowered under the model: reported, but the copy already there is not deleted
    await env.admin.patch(LOCAL_MODEL_NODE_GROUPS, ga, {"spec": {"storageLimit": "5Gi"}})
    await eventually(short, 20, what="short of storage after the limit was lowered")
    await env.idle()
    assert second in await env.entries(a1)


async def _has_entry(env: CacheEnv, node: str, name: str) -> bool:
    return name in await env.entries(node)


async def test_group_without_nodes_reports_reserved_storage(env: CacheEnv) -> None:
    await env.start()
    ga = await env.make_group("ga", "nobody", limit="100Gi")
    await env.make_cache(env.n("m1"), [ga], size="30Gi")
    await env.make_cache(env.n("m2"), [ga], size="20Gi", uri="hf://shared/model")
    await env.make_cache(env.n("m3"), [ga], size="20Gi", uri="hf://shared/model")  # same folder

    async def reserved() -> bool:
        group = await env.get(LOCAL_MODEL_NODE_GROUPS, ga)
        return (group or {}).get("status") == {"used": "50Gi", "available": "50Gi"}

    await eventually(reserved, 20, what="reserved use without member nodes")

    async def no_nodes() -> dict[str, Any] | None:
        s = await env.status(env.n("m1"))
        return s if cond(s, "Ready").get("reason") == "NoNodes" else None

    status = await eventually(no_nodes, 20, what="Ready=False NoNodes")
    assert status["copies"]["total"] == 0 and cond(status, "InsufficientStorage")["status"] == "False"
