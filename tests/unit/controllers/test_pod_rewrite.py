"""The predictor Pod webhook: KServe's PVC rewrite (§4.3, every test-backed example) and placement."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localcache.api.constants import (
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_NODE_GROUP,
    ANNOTATION_READONLY,
    ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI,
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
)
from localcache.api.naming import serving_pvc_name, storage_key
from localcache.controllers.isvc import (
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    CacheReader,
)
from localcache.controllers.pod import (
    SCHEDULING_GATE,
    ModelReadiness,
    PodMutator,
    PodRewriteError,
    has_scheduling_gate,
    narrow_node_affinity,
    remove_scheduling_gate,
    rewrite_pod,
)
from localcache.runtime.resources import NODES
from tests.unit.controllers.test_admission_fakes import FakeClient, cache_obj, review

Obj = dict[str, Any]


def pod(
    src: str,
    cache_uri: str,
    *,
    pvc: str | None = "c-g",
    cache: str = "c",
    extra_annotations: dict[str, str] | None = None,
    containers: list[Obj] | None = None,
) -> Obj:
    annotations = {
        ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI: src,
        ANNOTATION_LOCAL_MODEL_SOURCE_URI: cache_uri,
    }
    if pvc is not None:
        annotations[ANNOTATION_LOCAL_MODEL_PVC_NAME] = pvc
    annotations.update(extra_annotations or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": {LABEL_LOCAL_MODEL: cache},
            "annotations": annotations,
        },
        "spec": {
            "containers": containers
            if containers is not None
            else [{"name": "kserve-container", "image": "srv"}]
        },
    }


def model_mount(p: Obj, container: str = "kserve-container") -> Obj:
    (c,) = [c for c in p["spec"]["containers"] if c["name"] == container]
    mounts = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/mnt/models"]
    assert len(mounts) == 1, mounts
    return mounts[0]


# KServe's TestLocalModelPVC cases, plus a deeper sub-folder.
@pytest.mark.parametrize(
    ("isvc_uri", "cache_uri", "sub_path"),
    [
        ("s3://foo", "s3://foo", f"models/{storage_key('s3://foo')}/"),
        ("s3://foo/", "s3://foo", f"models/{storage_key('s3://foo')}/"),
        ("s3://foo/model1", "s3://foo/", f"models/{storage_key('s3://foo/')}/model1"),
        ("s3://foo/bar/baz.pt", "s3://foo", f"models/{storage_key('s3://foo')}/bar/baz.pt"),
    ],
)
def test_rewrite_mounts_the_cache_pvc_with_kserves_sub_path(
    isvc_uri: str, cache_uri: str, sub_path: str
) -> None:
    original = pod(isvc_uri, cache_uri)
    out = rewrite_pod(original)
    assert out["spec"]["volumes"] == [
        {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": "c-g"}}
    ]
    assert model_mount(out) == {
        "name": "kserve-pvc-source",
        "mountPath": "/mnt/models",
        "subPath": sub_path,
        "readOnly": True,
    }
    assert "initContainers" not in out["spec"]
    assert out["metadata"] == original["metadata"], "labels and annotations are KServe's, left as they are"
    assert original["spec"] == pod(isvc_uri, cache_uri)["spec"], "the input must not be mutated"


def test_readonly_false_annotation_makes_the_mount_writable() -> None:
    out = rewrite_pod(pod("s3://foo", "s3://foo", extra_annotations={ANNOTATION_READONLY: "false"}))
    assert model_mount(out)["readOnly"] is False
    out = rewrite_pod(pod("s3://foo", "s3://foo", extra_annotations={ANNOTATION_READONLY: "False"}))
    assert model_mount(out)["readOnly"] is True, 'only the exact string "false" turns read-only off'


def test_transformer_container_gets_the_mount_too_and_other_containers_do_not() -> None:
    containers = [{"name": "kserve-container"}, {"name": "transformer-container"}, {"name": "sidecar"}]
    out = rewrite_pod(pod("s3://foo/m", "s3://foo", containers=containers))
    assert model_mount(out, "transformer-container")["subPath"] == f"models/{storage_key('s3://foo')}/m"
    assert model_mount(out)["subPath"] == f"models/{storage_key('s3://foo')}/m"
    assert "volumeMounts" not in out["spec"]["containers"][2]


def test_a_storage_initializer_already_injected_is_replaced() -> None:
    p = pod("s3://foo", "s3://foo")
    p["spec"]["initContainers"] = [
        {"name": "storage-initializer", "image": "kserve/storage-initializer"},
        {"name": "keep"},
    ]
    p["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True},
        {"name": "cfg", "mountPath": "/etc/cfg"},
    ]
    p["spec"]["volumes"] = [
        {"name": "kserve-provision-location", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "x"}},
    ]
    out = rewrite_pod(p)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["keep"]
    assert [v["name"] for v in out["spec"]["volumes"]] == ["cfg", "kserve-pvc-source"]
    assert [m["name"] for m in out["spec"]["containers"][0]["volumeMounts"]] == ["cfg", "kserve-pvc-source"]
    assert rewrite_pod(out) == out, "the rewrite is idempotent"


def test_missing_annotations_are_errors_naming_the_pod_and_the_annotation() -> None:
    with pytest.raises(
        PodRewriteError, match=rf"Pod ns/p: annotation {ANNOTATION_LOCAL_MODEL_PVC_NAME} not found"
    ):
        rewrite_pod(pod("s3://foo", "s3://foo", pvc=None))
    p = pod("s3://foo", "s3://foo")
    del p["metadata"]["annotations"][ANNOTATION_LOCAL_MODEL_SOURCE_URI]
    with pytest.raises(PodRewriteError, match=ANNOTATION_LOCAL_MODEL_SOURCE_URI):
        rewrite_pod(p)
    with pytest.raises(PodRewriteError, match="no container named kserve-container"):
        rewrite_pod(pod("s3://foo", "s3://foo", containers=[{"name": "other"}]))


def test_unbound_pods_are_left_alone() -> None:
    p = pod("s3://foo", "s3://foo")
    del p["metadata"]["labels"][LABEL_LOCAL_MODEL]
    assert rewrite_pod(p) == p
    q = pod("s3://foo", "s3://foo")
    del q["metadata"]["annotations"][ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI]
    assert rewrite_pod(q) == q


# --- placement -----------------------------------------------------------------------------------------
HOST_IN = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1", "n2"]}


def test_narrow_creates_a_term_when_there_is_none() -> None:
    spec: Obj = {}
    narrow_node_affinity(spec, ["n2", "n1", "n2"])
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [HOST_IN]}]
    }


def test_narrow_adds_the_requirement_to_every_existing_term_once() -> None:
    gpu = {"key": "gpu", "operator": "Exists"}
    spec: Obj = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [gpu]},
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {}}],
            }
        }
    }
    narrow_node_affinity(spec, ["n1", "n2"])
    once = copy.deepcopy(spec)
    narrow_node_affinity(spec, ["n1", "n2"])
    assert spec == once
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms[0]["matchExpressions"] == [gpu, HOST_IN]
    assert terms[1]["matchExpressions"] == [HOST_IN] and terms[1]["matchFields"][0]["values"] == ["n1"]
    assert spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    with pytest.raises(ValueError, match="no nodes"):
        narrow_node_affinity(spec, [])


def test_gate_removal_keeps_other_gates() -> None:
    spec: Obj = {"schedulingGates": [{"name": "other"}, {"name": SCHEDULING_GATE}]}
    assert has_scheduling_gate({"spec": spec})
    remove_scheduling_gate(spec)
    assert spec["schedulingGates"] == [{"name": "other"}]
    remove_scheduling_gate(spec := {"schedulingGates": [{"name": SCHEDULING_GATE}]})
    assert "schedulingGates" not in spec


def readiness_with(
    *caches: Obj, nodes: list[Obj] = (), groups: list[Obj] = ()
) -> tuple[ModelReadiness, FakeClient]:
    client = FakeClient()
    for c in caches:
        client.put(LOCAL_MODEL_NAMESPACE_CACHES if c["metadata"].get("namespace") else LOCAL_MODEL_CACHES, c)
    for n in nodes:
        client.put(NODES, n)
    for g in groups:
        client.put(LOCAL_MODEL_NODE_GROUPS, g)
    return ModelReadiness(client, CacheReader(client)), client


def group(name: str, gpu: str) -> Obj:
    affinity = {
        "required": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": [gpu]}]}]
        }
    }
    return {"metadata": {"name": name}, "spec": {"persistentVolumeSpec": {"nodeAffinity": affinity}}}


async def test_ready_nodes_of_a_single_group_cache_are_the_downloaded_ones() -> None:
    status = {
        "n1": "NodeDownloaded",
        "n2": "NodeDownloading",
        "n3": "NodeDownloaded",
        "n4": "NodeDownloadError",
    }
    readiness, client = readiness_with(cache_obj("c", "s3://foo", ["g"], node_status=status))
    ready = await readiness.ready_nodes(pod("s3://foo", "s3://foo"))
    assert ready.nodes == ("n1", "n3") and ready.node_group == "g"
    assert client.count("get", "nodes") == 0, "one group: no Node reads"


async def test_ready_nodes_with_several_groups_are_those_of_the_pods_group() -> None:
    status = {"a1": "NodeDownloaded", "h1": "NodeDownloaded", "h2": "NodeDownloadPending"}
    nodes = [
        {"metadata": {"name": "a1", "labels": {"gpu": "a100"}}},
        {"metadata": {"name": "h1", "labels": {"gpu": "h100"}}},
        {"metadata": {"name": "h2", "labels": {"gpu": "h100"}}},
    ]
    readiness, _ = readiness_with(
        cache_obj("c", "s3://foo", ["ga", "gh"], node_status=status),
        nodes=nodes,
        groups=[group("ga", "a100"), group("gh", "h100")],
    )
    # the PVC annotation names the group
    ready = await readiness.ready_nodes(pod("s3://foo", "s3://foo", pvc="c-gh"))
    assert (ready.node_group, ready.nodes) == ("gh", ("h1",))
    ready = await readiness.ready_nodes(pod("s3://foo", "s3://foo", pvc="c-ga"))
    assert (ready.node_group, ready.nodes) == ("ga", ("a1",))


async def test_ready_nodes_of_a_namespace_cache_and_of_missing_caches() -> None:
    ns_cache = cache_obj("c", "s3://foo", ["g"], namespace="ns", node_status={"n1": "NodeDownloaded"})
    cluster_cache = cache_obj("c", "s3://foo", ["g"], node_status={"n9": "NodeDownloaded"})
    readiness, _ = readiness_with(ns_cache, cluster_cache)
    p = pod("s3://foo", "s3://foo", pvc=serving_pvc_name("c", "ns", "g"))
    p["metadata"]["labels"][LABEL_LOCAL_MODEL_NAMESPACE] = "ns"
    assert (await readiness.ready_nodes(p)).nodes == ("n1",)
    missing = await readiness.ready_nodes(pod("s3://foo", "s3://foo", cache="gone"))
    assert missing.nodes == () and "LocalModelCache gone not found" in missing.reason


async def test_node_group_falls_back_to_the_annotation_then_the_first_group() -> None:
    cache = cache_obj("c", "s3://foo", ["g1", "g2"])
    p = pod("s3://foo", "s3://foo", pvc="unknown", extra_annotations={ANNOTATION_NODE_GROUP: "g2"})
    assert ModelReadiness.node_group_of(p, cache) == "g2"
    assert ModelReadiness.node_group_of(pod("s3://foo", "s3://foo", pvc="unknown"), cache) == "g1"


# --- the webhook -----------------------------------------------------------------------------------------
async def test_webhook_gates_a_pod_whose_model_is_not_downloaded() -> None:
    readiness, _ = readiness_with(cache_obj("c", "s3://foo", ["g"], node_status={"n1": "NodeDownloading"}))
    resp = await PodMutator(readiness).handle(review("CREATE", pod("s3://foo/m", "s3://foo")))
    assert resp.allowed and resp.patched is not None
    assert resp.patched["spec"]["schedulingGates"] == [{"name": SCHEDULING_GATE}]
    assert "affinity" not in resp.patched["spec"]
    assert model_mount(resp.patched)["subPath"] == f"models/{storage_key('s3://foo')}/m"


async def test_webhook_narrows_a_pod_whose_model_is_downloaded_and_does_not_gate_it() -> None:
    readiness, _ = readiness_with(
        cache_obj("c", "s3://foo", ["g"], node_status={"n2": "NodeDownloaded", "n1": "NodeDownloaded"})
    )
    resp = await PodMutator(readiness).handle(review("CREATE", pod("s3://foo", "s3://foo")))
    assert resp.patched is not None and not has_scheduling_gate(resp.patched)
    terms = resp.patched["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [HOST_IN]}]


async def test_webhook_without_the_gate_controller_never_gates() -> None:
    readiness, _ = readiness_with(cache_obj("c", "s3://foo", ["g"]))
    resp = await PodMutator(readiness, gate=False).handle(review("CREATE", pod("s3://foo", "s3://foo")))
    assert resp.patched is not None and not has_scheduling_gate(resp.patched)
    assert model_mount(resp.patched)["name"] == "kserve-pvc-source"


async def test_webhook_denies_a_bound_pod_without_pvc_annotation() -> None:
    readiness, _ = readiness_with()
    resp = await PodMutator(readiness).handle(review("CREATE", pod("s3://foo", "s3://foo", pvc=None)))
    assert not resp.allowed and resp.code == 400
    assert (
        f"annotation {ANNOTATION_LOCAL_MODEL_PVC_NAME} not found" in resp.message
        and "Pod ns/p" in resp.message
    )


async def test_webhook_leaves_unbound_pods_and_generate_name_pods_minimal() -> None:
    readiness, client = readiness_with(cache_obj("c", "s3://foo", ["g"]))
    plain = {"metadata": {"name": "x", "namespace": "ns"}, "spec": {"containers": [{"name": "a"}]}}
    resp = await PodMutator(readiness).handle(review("CREATE", plain))
    assert resp.allowed and resp.patched is None and resp.patch is None and client.calls == []
    gen = pod("s3://foo", "s3://foo")
    gen["metadata"] = {k: v for k, v in gen["metadata"].items() if k not in ("name", "namespace")} | {
        "generateName": "p-"
    }
    resp = await PodMutator(readiness).handle(review("CREATE", gen, namespace="ns"))
    assert resp.patched is not None and "namespace" not in resp.patched["metadata"]
    assert has_scheduling_gate(resp.patched)


async def test_webhook_leaves_placement_of_a_preassigned_pod_alone() -> None:
    readiness, client = readiness_with(cache_obj("c", "s3://foo", ["g"]))
    p = pod("s3://foo", "s3://foo")
    p["spec"]["nodeName"] = "n7"
    resp = await PodMutator(readiness).handle(review("CREATE", p))
    assert resp.patched is not None and model_mount(resp.patched)["name"] == "kserve-pvc-source"
    assert not has_scheduling_gate(resp.patched) and "affinity" not in resp.patched["spec"]
    assert client.count("get") == 0
