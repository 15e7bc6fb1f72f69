"""The cache controllers against the real API server: placement across groups, membership changes,
deletion, scopes that share a name, consumers and serving volumes, many caches at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from localcache.api.naming import download_pv_name, download_pvc_name, serving_pv_name, serving_pvc_name
from localcache.controllers import (
    INFERENCE_SERVICES,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
)
from localcache.controllers import LOCAL_MODEL_NODES as LMN
from localcache.runtime.resources import (
    CONFIGMAPS,
    EVENTS,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
)
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.wait import eventually
from tests.integration.controllers.cache_support import CacheEnv, CountingClient, cond

pytestmark = pytest.mark.integration

MODEL = "internal.serving.kserve.io/localmodel"
MODEL_NS = "internal.serving.kserve.io/localmodel-namespace"


async def test_two_groups_nodes_joining_and_agents_reporting(env: CacheEnv) -> None:
    await env.start()
    a1 = await env.make_node("a1", "a")
    b1 = await env.make_node("b1", "b")
    a2 = await env.make_node("a2", "a", ready=False)
    ga, gb = await env.make_group("ga", "a"), await env.make_group("gb", "b")
    name = env.n("m")
    await env.make_cache(name, [ga, gb])

    async def placed() -> bool:
        return (await env.entries(a1)).get(name, {}).get("nodeGroup") == ga and (await env.entries(b1)).get(
            name, {}
        ).get("nodeGroup") == gb

    await eventually(placed, 20, what="entries on both groups' Ready nodes")
    assert await env.entries(a2) == {}, "a NotReady node gets no entry"
    status = await eventually(lambda: _status_with(env, name, 3), 20, what="nodeStatus of 3 nodes")
    assert status["nodeStatus"] == {a1: "NodeDownloadPending", b1: "NodeDownloadPending", a2: "NodeNotReady"}
    assert status["copies"] == {"available": 0, "total": 3, "failed": 0}
    obj = await env.get(LOCAL_MODEL_CACHES, name)
    assert obj is not None and obj["metadata"]["finalizers"] == ["localmodel.kserve.io/finalizer"]

    lmn = await env.get(LMN, a1)
    assert lmn is not None
    (owner,) = lmn["metadata"]["ownerReferences"]
    node = await env.get(NODES, a1)
    assert node is not None and (owner["kind"], owner["name"], owner["uid"]) == (
        "Node",
        a1,
        node["metadata"]["uid"],
    )

    for g in (ga, gb):
        pv = await eventually(lambda g=g: env.get(PERSISTENT_VOLUMES, download_pv_name(name, None, g)), 20)
        pvc = await eventually(
            lambda g=g: env.get(PERSISTENT_VOLUME_CLAIMS, download_pvc_name(name, None, g), env.ns), 20
        )
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pv["spec"]["local"] == {"path": "/models"}
        assert pv["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    # a node joins; the NotReady one recovers
    b2 = await env.make_node("b2", "b")
    await env.set_ready(a2, True)

    async def four() -> bool:
        return all([name in await env.entries(n) for n in (a1, a2, b1, b2)])

    await eventually(four, 20, what="entries after join and recovery")

    # the agents report; the cache becomes Ready with every copy available
    for n in (a1, a2, b1, b2):
        await env.report(n, name, "ModelDownloaded")

    async def ready() -> dict[str, Any] | None:
        s = await env.status(name)
        c = s.get("copies") or {}
        ok = c.get("available") == c.get("total") == 4 and cond(s, "Ready").get("status") == "True"
        return s if ok else None

    status = await eventually(ready, 20, what="copies.available == total and Ready")
    assert cond(status, "Ready")["observedGeneration"] == obj["metadata"]["generation"]
    assert cond(status, "Downloading")["status"] == "False"

    async def events() -> set[str]:
        items = (await env.admin.list(EVENTS, "default"))["items"]
        reasons = {e["reason"] for e in items if e["involvedObject"]["name"] == name}
        return reasons if {"NodeAdded", "Downloaded", "Ready"} <= reasons else set()

    await eventually(events, 20, what="transition events")

    # a node goes NotReady: its entry stays (the copy is good) and so does its last status
    await env.set_ready(a1, False)

    async def degraded() -> dict[str, Any] | None:
        s = await env.status(name)
        return s if cond(s, "Degraded").get("reason") == "NodeNotReady" else None

    status = await eventually(degraded, 20, what="Degraded: node not ready")
    assert status["nodeStatus"][a1] == "NodeDownloaded" and name in await env.entries(a1)


async def _status_with(
    env: CacheEnv, name: str, nodes: int, namespace: str | None = None
) -> dict[str, Any] | None:
    s = await env.status(name, namespace)
    return s if len(s.get("nodeStatus") or {}) == nodes else None


async def test_failure_reported_then_pruning_on_relabel_node_delete_and_group_removal(env: CacheEnv) -> None:
    await env.start()
    a1, a2 = await env.make_node("a1", "a"), await env.make_node("a2", "a")
    b1 = await env.make_node("b1", "b")
    ga, gb = await env.make_group("ga", "a"), await env.make_group("gb", "b")
    name = env.n("m")
    await env.make_cache(name, [ga, gb])
    await eventually(lambda: _status_with(env, name, 3), 20, what="three nodes")
    await env.report(a1, name, "ModelDownloadError", "401 unauthorized")

    async def degraded() -> dict[str, Any] | None:
        s = await env.status(name)
        return s if cond(s, "Degraded").get("reason") == "DownloadFailed" else None

    status = await degraded_status(degraded)
    assert (
        "401 unauthorized" in cond(status, "Degraded")["message"]
        and a1 in cond(status, "Degraded")["message"]
    )
    assert status["copies"]["failed"] == 1

    # relabelled out of every group: entry and nodeStatus go
    await env.relabel(a2, "elsewhere")

    async def a2_pruned() -> bool:
        return name not in await env.entries(a2) and a2 not in (
            (await env.status(name)).get("nodeStatus") or {}
        )

    await eventually(a2_pruned, 20, what="relabelled node pruned")

    # the Node is deleted: its LocalModelNode goes (GC via the owner reference) and nodeStatus forgets it
    await env.admin.delete(NODES, b1)

    async def b1_gone() -> bool:
        return await env.get(LMN, b1) is None and b1 not in ((await env.status(name)).get("nodeStatus") or {})

    await eventually(b1_gone, 90, what="deleted node's LocalModelNode collected (the GC)")

    # group b dropped from the spec: its download PV/PVC go too (PVC first)
    await env.admin.patch(LOCAL_MODEL_CACHES, name, {"spec": {"nodeGroups": [ga]}})

    async def gb_volumes_gone() -> bool:
        await env.release_pvcs(env.ns)
        pv = await env.get(PERSISTENT_VOLUMES, download_pv_name(name, None, gb))
        pvc = await env.get(PERSISTENT_VOLUME_CLAIMS, download_pvc_name(name, None, gb), env.ns)
        return (pv is None or bool(pv["metadata"].get("deletionTimestamp"))) and pvc is None

    await eventually(gb_volumes_gone, 20, what="dropped group's volumes deleted")
    assert (await env.status(name))["nodeStatus"] == {a1: "NodeDownloadError"}


async def degraded_status(probe: Any) -> dict[str, Any]:
    result: dict[str, Any] = await eventually(probe, 20, what="Degraded with DownloadFailed")
    return result


async def test_deletion_finishes_after_the_group_was_deleted(env: CacheEnv) -> None:
    await env.start()
    a1 = await env.make_node("a1", "a")
    ga = await env.make_group("ga", "a")
    cluster_name, ns_name = env.n("c"), "m"
    await env.make_cache(cluster_name, [ga])
    await env.make_cache(ns_name, [ga], namespace=env.ns)
    key = f"{env.ns}/{ns_name}"

    async def both() -> bool:
        e = await env.entries(a1)
        return cluster_name in e and key in e

    await eventually(both, 20, what="both caches placed")
    ns_pv = download_pv_name(ns_name, env.ns, ga)
    await eventually(lambda: env.get(PERSISTENT_VOLUMES, ns_pv), 20, what="namespace cache's download PV")

    await env.admin.delete(LOCAL_MODEL_NODE_GROUPS, ga)
    await eventually(lambda: _gone(env, LOCAL_MODEL_NODE_GROUPS, ga), 20)
    await env.admin.delete(LOCAL_MODEL_CACHES, cluster_name)
    await env.admin.delete(LOCAL_MODEL_NAMESPACE_CACHES, ns_name, env.ns)

    await eventually(lambda: _gone(env, LOCAL_MODEL_CACHES, cluster_name), 20, what="cluster cache deleted")
    await eventually(
        lambda: _gone(env, LOCAL_MODEL_NAMESPACE_CACHES, ns_name, env.ns), 20, what="ns cache deleted"
    )
    assert await env.entries(a1) == {}
    # the namespace cache's cluster-scoped PV has no owner: it was deleted explicitly
    pv = await env.get(PERSISTENT_VOLUMES, ns_pv)
    assert pv is None or pv["metadata"].get("deletionTimestamp")


async def test_a_local_model_node_deleted_by_hand_comes_back_with_its_entries(env: CacheEnv) -> None:
    """Deleting a LocalModelNode (the Node stays) wakes every cache it held at once, not at the next
    resync ten minutes later: the manager recreates it with both scopes' entries."""
    await env.start()
    a1 = await env.make_node("a1", "a")
    ga = await env.make_group("ga", "a")
    cluster_name = env.n("c")
    await env.make_cache(cluster_name, [ga])
    await env.make_cache("m", [ga], namespace=env.ns)
    wanted = {cluster_name, f"{env.ns}/m"}

    async def placed() -> bool:
        return set(await env.entries(a1)) == wanted

    await eventually(placed, 20, what="both caches placed")
    for key in wanted:  # downloaded: nothing is pending, so no reconcile is scheduled for later
        await env.report(a1, key, "ModelDownloaded")
    for name, ns in ((cluster_name, None), ("m", env.ns)):
        await eventually(lambda name=name, ns=ns: _copies(env, name, ns, 1), 20, what=f"{name} downloaded")
    before = await env.get(LMN, a1)
    assert before is not None
    await env.admin.delete(LMN, a1)

    async def recreated() -> bool:
        lmn = await env.get(LMN, a1)
        return lmn is not None and lmn["metadata"]["uid"] != before["metadata"]["uid"] and await placed()

    await eventually(recreated, 20, what="the LocalModelNode recreated with both entries")


async def _gone(env: CacheEnv, res: Any, name: str, ns: str | None = None) -> bool:
    return await env.get(res, name, ns) is None


async def test_cluster_and_namespace_cache_with_one_name_never_collide(env: CacheEnv) -> None:
    await env.start()
    apps = await env.make_namespace("apps")
    a1 = await env.make_node("a1", "a")
    ga = await env.make_group("ga", "a")
    name = env.n("m")
    await env.make_cache(name, [ga], uri="hf://org/cluster-model")
    await env.make_cache(name, [ga], namespace=apps, uri="hf://org/ns-model")
    # one consumer each, in the namespace cache's namespace
    await env.make_isvc("uses-cluster", apps, {MODEL: name})
    await env.make_isvc("uses-ns", apps, {MODEL: name, MODEL_NS: apps})
    ns_key = f"{apps}/{name}"

    async def both() -> dict[str, Any] | None:
        e = await env.entries(a1)
        return e if name in e and ns_key in e else None

    entries = await eventually(both, 20, what="both entries on one node")
    assert entries[name]["sourceModelUri"] == "hf://org/cluster-model" and "namespace" not in entries[name]
    assert entries[ns_key]["sourceModelUri"] == "hf://org/ns-model" and entries[ns_key]["namespace"] == apps

    async def consumers(ns: str | None, want: str) -> bool:
        return (await env.status(name, ns)).get("inferenceServices") == [{"namespace": apps, "name": want}]

    await eventually(lambda: consumers(None, "uses-cluster"), 20, what="cluster cache's consumer")
    await eventually(lambda: consumers(apps, "uses-ns"), 20, what="namespace cache's consumer")

    volumes = {
        ("pv", "", serving_pv_name(name, None, ga, apps)),
        ("pv", "", serving_pv_name(name, apps, ga, apps)),
        ("pvc", apps, serving_pvc_name(name, None, ga)),
        ("pvc", apps, serving_pvc_name(name, apps, ga)),
        ("pv", "", download_pv_name(name, None, ga)),
        ("pv", "", download_pv_name(name, apps, ga)),
        ("pvc", env.ns, download_pvc_name(name, None, ga)),
        ("pvc", env.ns, download_pvc_name(name, apps, ga)),
    }
    assert len(volumes) == 8, "every volume is distinct"

    async def all_volumes() -> bool:
        for kind, ns, n in volumes:
            got = await (
                env.get(PERSISTENT_VOLUMES, n) if kind == "pv" else env.get(PERSISTENT_VOLUME_CLAIMS, n, ns)
            )
            if got is None:
                return False
        return True

    await eventually(all_volumes, 20, what="eight distinct volumes")
    pvc = await env.get(PERSISTENT_VOLUME_CLAIMS, serving_pvc_name(name, apps, ga), apps)
    assert pvc is not None and pvc["spec"]["volumeName"] == serving_pv_name(name, apps, ga, apps)
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "LocalModelNamespaceCache"
    pvc = await env.get(PERSISTENT_VOLUME_CLAIMS, serving_pvc_name(name, None, ga), apps)
    assert pvc is not None and pvc["spec"]["volumeName"] == serving_pv_name(name, None, ga, apps)
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "LocalModelCache"

    # agents report only the namespace model: the cluster cache does not read its status
    await env.report(a1, ns_key, "ModelDownloaded")
    ns_status = await eventually(lambda: _copies(env, name, apps, 1), 20, what="namespace cache available")
    assert ns_status["nodeStatus"] == {a1: "NodeDownloaded"}
    assert (await env.status(name))["nodeStatus"] == {a1: "NodeDownloadPending"}

    # deleting the namespace cache leaves the cluster cache's entry and volumes
    await env.admin.delete(LOCAL_MODEL_NAMESPACE_CACHES, name, apps)
    await eventually(lambda: _gone(env, LOCAL_MODEL_NAMESPACE_CACHES, name, apps), 20)
    assert set(await env.entries(a1)) == {name}
    assert await env.get(PERSISTENT_VOLUMES, download_pv_name(name, None, ga)) is not None
    assert await env.get(PERSISTENT_VOLUME_CLAIMS, serving_pvc_name(name, None, ga), apps) is not None


async def _copies(env: CacheEnv, name: str, ns: str | None, available: int) -> dict[str, Any] | None:
    s = await env.status(name, ns)
    return s if (s.get("copies") or {}).get("available") == available else None


async def test_serving_volumes_follow_consumers_and_go_in_pairs(env: CacheEnv) -> None:
    await env.start()
    namespace = await env.make_namespace("apps")
    await env.make_node("a1", "a")
    ga, gb = await env.make_group("ga", "a"), await env.make_group("gb", "b")
    name = env.n("m")
    await env.make_cache(name, [ga, gb])
    await env.make_isvc("svc", namespace, {MODEL: name})
    await env.make_isvc("svc-b", namespace, {MODEL: name}, {"serving.kserve.io/nodegroup": gb})
    pv_a, pv_b = serving_pv_name(name, None, ga, namespace), serving_pv_name(name, None, gb, namespace)
    pvc_a, pvc_b = serving_pvc_name(name, None, ga), serving_pvc_name(name, None, gb)

    async def made() -> bool:
        got = [
            await env.get(PERSISTENT_VOLUMES, pv_a),
            await env.get(PERSISTENT_VOLUMES, pv_b),
            await env.get(PERSISTENT_VOLUME_CLAIMS, pvc_a, namespace),
            await env.get(PERSISTENT_VOLUME_CLAIMS, pvc_b, namespace),
        ]
        return all(got)

    await eventually(made, 20, what="serving volumes for both groups")

    async def tracked(want: list[str]) -> bool:
        got = (await env.status(name)).get("inferenceServices")
        return got == [{"namespace": namespace, "name": n} for n in want]

    await eventually(lambda: tracked(["svc", "svc-b"]), 20, what="both consumers tracked")

    # the group-b consumer drops the cache label: group b's serving PVC and PV both go; a's stay
    await env.admin.patch(
        INFERENCE_SERVICES,
        "svc-b",
        {"metadata": {"labels": {MODEL: None}}},
        namespace,
    )

    async def b_gone() -> bool:
        await env.release_pvcs(namespace)
        pvc = await env.get(PERSISTENT_VOLUME_CLAIMS, pvc_b, namespace)
        pv = await env.get(PERSISTENT_VOLUMES, pv_b)
        return pvc is None and (pv is None or bool(pv["metadata"].get("deletionTimestamp")))

    await eventually(b_gone, 20, what="serving PVC and PV of group b deleted")
    assert await env.get(PERSISTENT_VOLUME_CLAIMS, pvc_a, namespace) is not None
    assert await env.get(PERSISTENT_VOLUMES, pv_a) is not None
    await eventually(lambda: tracked(["svc"]), 20, what="one consumer left")


async def test_fifty_caches_at_once_lose_no_entry_and_go_quiet(env: CacheEnv) -> None:
    await env.start(max_concurrent_reconciles=8)
    nodes = [await env.make_node(f"n{i}", "a") for i in range(3)]
    ga = await env.make_group("ga", "a")
    names = [env.n(f"m{i:02d}") for i in range(40)]
    ns_names = [f"m{i:02d}" for i in range(10)]
    await asyncio.gather(
        *(env.make_cache(n, [ga]) for n in names),
        *(env.make_cache(n, [ga], namespace=env.ns) for n in ns_names),
    )
    want = set(names) | {f"{env.ns}/{n}" for n in ns_names}

    async def complete() -> bool:
        for n in nodes:
            if set(await env.entries(n)) != want:
                return False
        return True

    await eventually(complete, 60, what="all 50 entries on all 3 nodes")

    async def statuses() -> bool:
        for n in names:
            if len((await env.status(n)).get("nodeStatus") or {}) != 3:
                return False
        return all([len((await env.status(n, env.ns)).get("nodeStatus") or {}) == 3 for n in ns_names])

    await eventually(statuses, 60, what="every cache's status lists 3 nodes")
    await env.idle()
    converge_writes = env.client.total_writes()
    converge_reconciles = sum(c.reconciles for c in env.controllers)
    own = {
        k: n
        for k, n in env.client.conflicts.items()
        if "/localmodelcaches/" in k[1] or "namespacecaches/" in k[1]
    }
    assert own == {}, f"a cache conflicted with our own earlier write of it (stale informer): {own}"

    # converged: reconciling every cache and group again writes nothing
    forced = await env.reconcile_everything()
    assert forced == 51
    assert env.client.total_writes() == converge_writes, [k for k, v in env.client.writes.items() if v][-10:]
    print(
        f"\n50 caches x 3 nodes: {converge_writes} writes over {converge_reconciles} reconciles "
        f"to converge; 0 writes over {forced} forced reconciles; {env.client.breakdown()}"
    )


async def test_disable_volume_management_and_turning_it_back_on_without_restart(env: CacheEnv) -> None:
    await env.start(local_model={"disableVolumeManagement": True})
    apps = await env.make_namespace("apps")
    await env.make_node("a1", "a")
    ga = await env.make_group("ga", "a")
    name = env.n("m")
    await env.make_cache(name, [ga])
    await env.make_isvc("svc", apps, {MODEL: name})
    download = download_pvc_name(name, None, ga)
    await eventually(lambda: env.get(PERSISTENT_VOLUME_CLAIMS, download, env.ns), 20, what="download PVC")
    await eventually(lambda: _status_with(env, name, 1), 20, what="status written")
    await env.idle()
    assert await env.get(PERSISTENT_VOLUME_CLAIMS, serving_pvc_name(name, None, ga), apps) is None
    assert "inferenceServices" not in await env.status(name)

    # the ConfigMap is watched: switching volume management on needs no restart
    data = {"localModel": json.dumps({"jobNamespace": env.ns, "disableVolumeManagement": False})}
    await env.admin.patch(CONFIGMAPS, "inferenceservice-config", {"data": data}, env.ns)
    await eventually(
        lambda: env.get(PERSISTENT_VOLUME_CLAIMS, serving_pvc_name(name, None, ga), apps),
        20,
        what="serving PVC",
    )

    async def tracked() -> bool:
        return (await env.status(name)).get("inferenceServices") == [{"namespace": apps, "name": "svc"}]

    await eventually(tracked, 20, what="consumer tracked")


async def test_two_managers_writing_at_once_lose_no_entry(env: CacheEnv, cluster: TestCluster) -> None:
    """Two processes' writers (no shared in-process batching, e.g. a leader hand-over) racing on the
    same LocalModelNodes: optimistic concurrency alone keeps every entry."""
    await env.start()
    async with await CountingClient.from_kubeconfig(cluster.kubeconfig) as client_b:
        other = CacheEnv(env.admin, client_b, env.ns)
        await other.start(config=False, prefix="-b")
        try:
            nodes = [await env.make_node(f"n{i}", "a") for i in range(2)]
            ga = await env.make_group("ga", "a")
            names = [env.n(f"m{i:02d}") for i in range(20)]
            await asyncio.gather(*(env.make_cache(n, [ga]) for n in names))

            async def complete() -> bool:
                return all([set(await env.entries(n)) == set(names) for n in nodes])

            await eventually(complete, 60, what="all 20 entries on both nodes, two writers")
            await env.idle()
            await other.idle()
            refused = sum(sum(getattr(c, "conflicts", {}).values()) for c in (env.client, client_b))
            print(f"\ntwo managers, 20 caches x 2 nodes: {refused} writes refused (409) and retried")
            assert all([set(await env.entries(n)) == set(names) for n in nodes])
        finally:
            await other.stop()
