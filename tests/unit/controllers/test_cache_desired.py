"""Desired-state computation of the cache reconciler, with plain dicts: placement, entries, node
status, consumers, volumes, status and conditions, storage planning."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from localcache.api.localmodelcache import NodeStatus
from localcache.api.naming import download_pv_name, download_pvc_name, serving_pv_name, serving_pvc_name
from localcache.controllers import LOCAL_MODEL_CACHES
from localcache.controllers import cache as cache_module
from localcache.controllers.cache import (
    CLUSTER,
    NAMESPACE,
    CacheReconciler,
    build_status,
    compute_node_status,
    compute_placement,
    consumer_key,
    consumers_of,
    desired_entry,
    desired_volumes,
    status_events,
    upsert_entry,
)
from localcache.controllers.nodegroup import (
    format_bytes,
    group_status,
    node_usage,
    plan_group_storage,
    planning_view,
)

NOW = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC)


def node(name: str, labels: dict[str, str], ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def group(name: str, key: str, value: str, limit: str = "100Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "capacity": {"storage": limit},
                "accessModes": ["ReadWriteOnce"],
                "local": {"path": "/models"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}
                        ]
                    }
                },
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": limit}},
            },
        },
    }


def cache(
    name: str,
    groups: list[str],
    namespace: str = "",
    size: str = "10Gi",
    uri: str | None = None,
    created: str = "2026-11-28T00:00:00Z",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "generation": 3, "creationTimestamp": created}
    if namespace:
        meta["namespace"] = namespace
    return {
        "metadata": meta,
        "spec": {"sourceModelUri": uri or f"hf://org/{name}", "modelSize": size, "nodeGroups": groups},
    }


def isvc(
    name: str, ns: str, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations or {}}}


NODES = [
    node("a1", {"pool": "a"}),
    node("a2", {"pool": "a", "zone": "z"}),
    node("b1", {"pool": "b", "zone": "z"}),
    node("a3", {"pool": "a"}, ready=False),
]
GROUPS = {"ga": group("ga", "pool", "a"), "gz": group("gz", "zone", "z")}


# ---- placement -------------------------------------------------------------------------------------
def test_placement_uses_every_group_and_the_first_listed_wins() -> None:
    p = compute_placement(cache("m", ["ga", "gz"]), GROUPS, NODES)
    assert p.ready == {"a1": "ga", "a2": "ga", "b1": "gz"}
    assert p.not_ready == {"a3": "ga"}
    p = compute_placement(cache("m", ["gz", "ga"]), GROUPS, NODES)
    assert p.ready == {"a2": "gz", "b1": "gz", "a1": "ga"}


def test_placement_reports_missing_groups_and_skips_groups_without_room() -> None:
    groups = {"ga": GROUPS["ga"], "gone": None}
    p = compute_placement(cache("m", ["gone", "ga"]), groups, NODES)
    assert p.missing_groups == ["gone"] and set(p.ready) == {"a1", "a2"}
    fits = plan_group_storage(group("ga", "pool", "a", limit="5Gi"), [cache("m", ["ga"])])
    p = compute_placement(cache("m", ["ga", "gz"]), GROUPS, NODES, {"ga": fits["m"]})
    assert "ga" in p.insufficient and p.ready == {"a2": "gz", "b1": "gz"} and set(p.held) == {"a1", "a3"}


def test_copies_on_a_group_the_model_no_longer_fits_are_kept_not_added() -> None:
    c = cache("m", ["ga"], size="200Gi")
    fits = {"ga": plan_group_storage(GROUPS["ga"], [c])["m"]}
    p = compute_placement(c, GROUPS, NODES, fits)
    assert p.ready == {} and p.not_ready == {} and set(p.held) == {"a1", "a2", "a3"}
    p.keep_existing(["a2", "a3", "b1"])  # a2 and a3 already hold it (b1 is not a member)
    assert p.ready == {"a2": "ga"} and p.not_ready == {"a3": "ga"} and "ga" in p.insufficient
    # a later group the model fits on still takes the shared node
    p = compute_placement(cache("m", ["ga", "gz"]), GROUPS, NODES, fits)
    assert p.ready == {"a2": "gz", "b1": "gz"} and set(p.held) == {"a1", "a3"}


def test_relabelled_node_leaves_the_placement() -> None:
    moved = [node("a1", {"pool": "c"}), *NODES[1:]]
    p = compute_placement(cache("m", ["ga"]), GROUPS, moved)
    assert "a1" not in p.members


# ---- entries ---------------------------------------------------------------------------------------
def test_desired_entry_fields_per_scope() -> None:
    c = cache("m", ["ga"])
    c["spec"]["serviceAccountName"] = "sa"
    assert desired_entry(c, "ga") == {
        "sourceModelUri": "hf://org/m",
        "modelName": "m",
        "nodeGroup": "ga",
        "serviceAccountName": "sa",
    }
    assert desired_entry(cache("m", ["ga"], namespace="team"), "ga")["namespace"] == "team"


def test_upsert_entry_adds_replaces_removes_and_reports_change() -> None:
    other = {"modelName": "x", "sourceModelUri": "s3://x"}
    same_name_ns = {"modelName": "m", "namespace": "team", "sourceModelUri": "s3://y"}
    mine = {"modelName": "m", "sourceModelUri": "hf://org/m", "nodeGroup": "ga"}
    models, changed = upsert_entry([other, same_name_ns], ("m", ""), mine)
    assert changed and models == [other, same_name_ns, mine]
    models, changed = upsert_entry(models, ("m", ""), mine)
    assert not changed
    moved = {**mine, "nodeGroup": "gz"}
    models, changed = upsert_entry(models, ("m", ""), moved)
    assert changed and models[-1]["nodeGroup"] == "gz" and len(models) == 3
    # duplicates of one identity collapse; removal leaves the namespace cache of the same name alone
    models, changed = upsert_entry([mine, other, mine], ("m", ""), None)
    assert changed and models == [other]
    models, _ = upsert_entry([mine, same_name_ns], ("m", "team"), None)
    assert models == [mine]


# ---- node status -----------------------------------------------------------------------------------
def test_node_status_from_agents_not_ready_kept_and_pruned() -> None:
    p = compute_placement(cache("m", ["ga", "gz"]), GROUPS, NODES)
    lmns = {
        "a1": {"status": {"modelStatus": {"m": "ModelDownloaded"}}},
        "a2": {"status": {"modelStatus": {"m": "ModelDownloadError", "team/m": "ModelDownloaded"}}},
    }
    previous = {"a3": "NodeDownloaded", "gone": "NodeDownloaded"}
    ns = compute_node_status(p, lmns, "m", previous)
    assert ns == {
        "a1": NodeStatus.DOWNLOADED,
        "a2": NodeStatus.DOWNLOAD_ERROR,
        "b1": NodeStatus.DOWNLOAD_PENDING,  # no LocalModelNode yet
        "a3": NodeStatus.DOWNLOADED,  # NotReady keeps its last value
    }
    assert compute_node_status(p, lmns, "m", {})["a3"] == NodeStatus.NOT_READY


# ---- consumers and volumes -------------------------------------------------------------------------
def test_consumer_labels_never_cross_scopes() -> None:
    cluster = isvc("s", "team", {"internal.serving.kserve.io/localmodel": "m"})
    namespaced = isvc(
        "s2",
        "team",
        {
            "internal.serving.kserve.io/localmodel": "m",
            "internal.serving.kserve.io/localmodel-namespace": "team",
        },
    )
    foreign = isvc(
        "s3",
        "other",
        {
            "internal.serving.kserve.io/localmodel": "m",
            "internal.serving.kserve.io/localmodel-namespace": "team",
        },
    )
    assert consumer_key(cluster) == "m"
    assert consumer_key(namespaced) == "team/m"
    assert consumer_key(foreign) is None
    refs, pairs = consumers_of(cache("m", ["ga", "gz"]), [cluster, namespaced, foreign])
    assert refs == [{"namespace": "team", "name": "s"}] and pairs == {("team", "ga")}
    refs, pairs = consumers_of(cache("m", ["ga"], namespace="team"), [cluster, namespaced, foreign])
    assert refs == [{"namespace": "team", "name": "s2"}]


def test_consumer_node_group_annotation() -> None:
    labels = {"internal.serving.kserve.io/localmodel": "m"}
    on_gz = isvc("a", "n1", labels, {"serving.kserve.io/nodegroup": "gz"})
    unknown = isvc("b", "n2", labels, {"serving.kserve.io/nodegroup": "elsewhere"})
    refs, pairs = consumers_of(cache("m", ["ga", "gz"]), [on_gz, unknown])
    assert len(refs) == 2 and pairs == {("n1", "gz")}  # counted, but no volume for an unlisted group


def test_cluster_cache_volumes_names_specs_and_owners() -> None:
    c = cache("m", ["ga", "gone"])
    vols = desired_volumes(c, CLUSTER, {"ga": GROUPS["ga"], "gone": None}, "jobs", {("team", "ga")})
    names = sorted(vols)
    assert names == sorted(
        [
            ("PersistentVolume", "", download_pv_name("m", None, "ga")),
            ("PersistentVolumeClaim", "jobs", download_pvc_name("m", None, "ga")),
            ("PersistentVolume", "", serving_pv_name("m", None, "ga", "team")),
            ("PersistentVolumeClaim", "team", serving_pvc_name("m", None, "ga")),
        ]
    )
    assert ("PersistentVolume", "", "m-ga-download") in vols  # KServe's names for cluster caches
    pvc = vols[("PersistentVolumeClaim", "team", "m-ga")]
    assert pvc["spec"]["volumeName"] == "m-ga-team"
    assert pvc["spec"]["resources"] == GROUPS["ga"]["spec"]["persistentVolumeClaimSpec"]["resources"]
    pv = vols[("PersistentVolume", "", "m-ga-team")]
    assert pv["spec"] == GROUPS["ga"]["spec"]["persistentVolumeSpec"]
    assert pv["spec"] is not GROUPS["ga"]["spec"]["persistentVolumeSpec"]  # a copy
    for v in vols.values():
        (ref,) = v["metadata"]["ownerReferences"]
        assert ref["kind"] == "LocalModelCache" and ref["controller"] and ref["uid"] == "uid-m"
        assert v["metadata"]["labels"]["localcache.serving.kserve.io/cache"] == "m"


def test_namespace_cache_owns_only_pvcs_in_its_namespace_and_never_collides() -> None:
    ns_cache = cache("m", ["ga"], namespace="team")
    vols = desired_volumes(ns_cache, NAMESPACE, GROUPS, "jobs", {("team", "ga")})
    owned = {k for k, v in vols.items() if v["metadata"].get("ownerReferences")}
    assert owned == {("PersistentVolumeClaim", "team", serving_pvc_name("m", "team", "ga"))}
    cluster_vols = desired_volumes(cache("m", ["ga"]), CLUSTER, GROUPS, "jobs", {("team", "ga")})
    assert not set(vols) & set(cluster_vols)
    assert (
        vols[next(iter(owned))]["metadata"]["labels"]["localcache.serving.kserve.io/cache-namespace"]
        == "team"
    )


def test_disabled_serving_volumes() -> None:
    vols = desired_volumes(cache("m", ["ga"]), CLUSTER, GROUPS, "jobs", None)
    assert {k[0] for k in vols} == {"PersistentVolume", "PersistentVolumeClaim"} and len(vols) == 2


# ---- status and conditions -------------------------------------------------------------------------
def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_ready_when_all_copies_available_and_stable_when_unchanged() -> None:
    c = cache("m", ["ga"])
    p = compute_placement(c, GROUPS, NODES[:2])
    lmns = {n: {"status": {"modelStatus": {"m": "ModelDownloaded"}}} for n in ("a1", "a2")}
    status = build_status(c, p, compute_node_status(p, lmns, "m", {}), lmns, [], NOW)
    assert status["copies"] == {"available": 2, "total": 2, "failed": 0}
    assert conds(status)["Ready"] == ("True", "ModelCached")
    assert conds(status)["Downloading"][0] == "False" and conds(status)["Degraded"][0] == "False"
    assert status["observedGeneration"] == 3 and "inferenceServices" not in status
    # rebuilt on itself later: identical, so no write
    c["status"] = status
    again = build_status(
        c, p, compute_node_status(p, lmns, "m", status["nodeStatus"]), lmns, [], NOW.replace(hour=5)
    )
    assert again == status
    assert status_events({}, status)[-1][1] == "Ready"


RETRY_AT = "2026-01-01T00:02:00Z"


def test_status_failed_nodes_named_with_reason_and_pruned_nodes_gone() -> None:
    c = cache("m", ["ga"])
    c["status"] = {"nodeStatus": {"old-node": "NodeDownloaded"}, "llmInferenceServices": [{"name": "x"}]}
    p = compute_placement(c, GROUPS, NODES)
    lmns = {
        "a1": {"status": {"modelStatus": {"m": "ModelDownloadError"},
                          "modelStatusDetails": {"m": {"message": "401 unauthorized", "reason": "AuthFailed",
                                                       "attempt": 2, "nextAttemptTime": RETRY_AT}}}},
        "a2": {"status": {"modelStatus": {"m": "ModelDownloading"}}},
    }  # fmt: skip
    status = build_status(c, p, compute_node_status(p, lmns, "m", c["status"]["nodeStatus"]), lmns, None, NOW)
    assert set(status["nodeStatus"]) == {"a1", "a2", "a3"}
    assert status["copies"] == {"available": 0, "total": 3, "failed": 1}
    assert status["llmInferenceServices"] == [{"name": "x"}]  # untouched
    failed = status["nodeStatusDetails"]["a1"]
    assert (failed["reason"], failed["attempt"], failed["nextAttemptTime"]) == ("AuthFailed", 2, RETRY_AT)
    c_ = conds(status)
    assert c_["Ready"] == ("False", "DownloadFailed") and c_["Downloading"][0] == "True"
    degraded = next(x for x in status["conditions"] if x["type"] == "Degraded")
    assert degraded["status"] == "True" and "a1 (401 unauthorized)" in degraded["message"]
    assert "a3" in degraded["message"]
    events = status_events(c["status"], status)
    assert ("Warning", "DownloadFailed", "download failed on node a1: 401 unauthorized") in events
    assert ("Normal", "NodeRemoved", "node old-node no longer holding the model") in events


def test_status_events_group_nodes_with_the_same_transition() -> None:
    old = {"nodeStatus": {"a": "NodeDownloading", "b": "NodeDownloading", "c": "NodeDownloading"}}
    new = {
        "nodeStatus": {"a": "NodeDownloaded", "b": "NodeDownloaded", "c": "NodeDownloadError"},
        "nodeStatusDetails": {"c": {"message": "disk full"}},
    }
    assert status_events(old, new) == [
        ("Normal", "Downloaded", "model downloaded on 2 nodes: a, b"),
        ("Warning", "DownloadFailed", "download failed on node c: disk full"),
    ]


def test_status_insufficient_storage() -> None:
    big = cache("big", ["ga"], size="200Gi")
    fits = {"ga": plan_group_storage(GROUPS["ga"], [big])["big"]}
    p = compute_placement(big, GROUPS, NODES, fits)
    status = build_status(big, p, compute_node_status(p, {}, "big", {}), {}, None, NOW)
    c_ = conds(status)
    assert c_["InsufficientStorage"] == ("True", "InsufficientStorage")
    assert c_["Ready"] == ("False", "InsufficientStorage")
    msg = next(x for x in status["conditions"] if x["type"] == "InsufficientStorage")["message"]
    assert "ga" in msg and "200Gi" in msg and "100Gi" in msg
    assert ("Warning", "InsufficientStorage", msg) in status_events({}, status)


# ---- storage plan ----------------------------------------------------------------------------------
def test_storage_plan_first_come_first_served_and_shared_uris() -> None:
    g = group("ga", "pool", "a", limit="25Gi")
    first = cache("first", ["ga"], size="10Gi", created="2026-11-28T00:00:01Z")
    twin = cache("twin", ["ga"], size="10Gi", uri="hf://org/first", created="2026-11-28T00:00:02Z")
    second = cache("second", ["ga"], size="10Gi", created="2026-11-28T00:00:03Z")
    third = cache("third", ["ga"], size="10Gi", created="2026-11-28T00:00:04Z")
    small = cache("small", ["ga"], size="5Gi", created="2026-11-28T00:00:05Z")
    plan = plan_group_storage(g, [third, small, second, twin, first])
    assert {k: f.fits for k, f in plan.items()} == {
        "first": True, "twin": True, "second": True, "third": False, "small": True,
    }  # fmt: skip
    assert plan["twin"].needed == 0  # same folder
    assert plan["third"].free == Decimal(5 * 2**30)
    deleting = {**second, "metadata": {**second["metadata"], "deletionTimestamp": "2026-11-28T01:00:00Z"}}
    plan = plan_group_storage(g, [first, twin, deleting, third])
    assert plan["third"].fits and "second" not in plan


def test_group_status_from_agents_or_declared_sizes() -> None:
    g = group("ga", "pool", "a", limit="100Gi")
    caches = [cache("m", ["ga"], size="10Gi"), cache("n", ["ga"], size="20Gi")]
    assert group_status(g, caches, [], {}) == {"used": "30Gi", "available": "70Gi"}
    lmn = {
        "spec": {"localModels": [desired_entry(caches[0], "ga"), desired_entry(caches[1], "ga")]},
        "status": {"modelStatusDetails": {"m": {"bytes": 5 * 2**30}}},
    }
    # m reports 5Gi on disk; n is not downloaded yet and counts with its declared 20Gi
    assert node_usage(lmn, "ga", {"m": Decimal(10 * 2**30), "n": Decimal(20 * 2**30)})[0] == 25 * 2**30
    status = group_status(g, caches, NODES[:1], {"a1": lmn})
    assert status == {"used": "25Gi", "available": "75Gi"}
    reported = {**lmn, "status": {"storage": {"used": "90Gi", "available": "3Gi"}}}
    assert group_status(g, caches, NODES[:1], {"a1": reported}) == {"used": "90Gi", "available": "3Gi"}


def test_format_bytes() -> None:
    assert format_bytes(0) == "0"
    assert format_bytes(10 * 2**30) == "10Gi"
    assert format_bytes(1536 * 2**20) == "1536Mi"
    assert format_bytes(1000) == "1000"


class ProjectingCache:
    """The informer cache as storage planning reads it: shared planning views per cache."""

    def __init__(self, caches: list[dict[str, Any]]) -> None:
        self.views = [planning_view(c) for c in caches]
        self.projections = 0

    def project(self, resource: Any, index: str, value: str, fn: Any) -> list[dict[str, Any]]:
        self.projections += 1
        return list(self.views) if resource is LOCAL_MODEL_CACHES else []


def planner(informer: ProjectingCache) -> CacheReconciler:
    reconciler = object.__new__(CacheReconciler)  # only the planning state: no informers to declare
    reconciler.cache, reconciler._plans = informer, {}
    return reconciler


def test_storage_plan_is_reused_until_a_cache_changes_and_a_newer_copy_is_planned_as_is(
    monkeypatch: Any,
) -> None:
    g = group("ga", "pool", "a", limit="25Gi")
    first = cache("first", ["ga"], size="10Gi", created="2026-11-28T00:00:01Z")
    second = cache("second", ["ga"], size="10Gi", created="2026-11-28T00:00:02Z")
    third = cache("third", ["ga"], size="10Gi", created="2026-11-28T00:00:03Z")
    informer = ProjectingCache([first, second, third])
    reconciler = planner(informer)
    planned: list[int] = []
    real = cache_module.plan_group_storage

    def counted(grp: dict[str, Any], caches: list[dict[str, Any]]) -> Any:
        planned.append(len(caches))
        return real(grp, caches)

    monkeypatch.setattr(cache_module, "plan_group_storage", counted)
    assert not reconciler.storage_fits(third, {"ga": g})["ga"].fits
    assert reconciler.storage_fits(first, {"ga": g})["ga"].fits
    assert len(planned) == 1, "one plan serves every cache of the group while none changes"
    # our copy of "second" is newer than the informer's (it shrank): planned with ours, memo kept
    smaller = cache("second", ["ga"], size="5Gi", created="2026-11-28T00:00:02Z")
    assert reconciler.storage_fits(smaller, {"ga": g})["ga"].needed == Decimal(5 * 2**30)
    assert len(planned) == 2
    # the informer catches up: "third" now fits, and the plan is recomputed once
    informer.views[1] = planning_view(smaller)
    assert reconciler.storage_fits(third, {"ga": g})["ga"].fits
    assert reconciler.storage_fits(first, {"ga": g})["ga"].fits
    assert len(planned) == 3
    assert not reconciler.storage_fits(third, {"ga": group("ga", "pool", "a", limit="20Gi")})["ga"].fits
    assert len(planned) == 4, "a changed group is planned again"


def test_status_is_built_on_our_last_status_write_until_the_informer_shows_it() -> None:
    reconciler = object.__new__(CacheReconciler)
    reconciler._status_written = {}
    seen = {**cache("m", ["ga"]), "status": {"copies": {"available": 0}}}
    seen["metadata"]["resourceVersion"] = "10"
    assert reconciler._newest(seen) is seen
    reconciler._status_written["m"] = ("11", b'{"copies":{"available":1}}')
    ours = reconciler._newest(seen)
    assert ours["metadata"]["resourceVersion"] == "11", "the informer still shows version 10"
    assert ours["status"] == {"copies": {"available": 1}} and ours["spec"] == seen["spec"]
    assert seen["metadata"]["resourceVersion"] == "10", "the informer's copy is not touched"
    later = {**seen, "metadata": {**seen["metadata"], "resourceVersion": "12"}}
    assert reconciler._newest(later) is later and reconciler._status_written == {}, "caught up: forgotten"
