"""The InferenceService defaulter: KServe's matching (§4.1) and the four keys it writes (§9.1.4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localcache.api.constants import (
    ANNOTATION_DISABLE_LOCAL_MODEL,
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_NODE_GROUP,
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
)
from localcache.api.naming import serving_pvc_name
from localcache.controllers.isvc import (
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    CacheReader,
    ConfigReader,
    InferenceServiceDefaulter,
    default_inference_service,
    match_cache,
)
from localcache.runtime.resources import CONFIGMAPS
from localcache.runtime.webhook import json_patch, review_response
from tests.unit.controllers.test_admission_fakes import (
    FakeClient,
    FakeInformer,
    cache_obj,
    isvc_obj,
    review,
)

FOUR = (
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
)


def keys(obj: dict[str, Any]) -> dict[str, str]:
    """The four local-model keys present on an object."""
    meta = obj.get("metadata") or {}
    both = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})}
    return {k: both[k] for k in FOUR if k in both}


# --- matching ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cached", "wanted", "matches"),
    [
        ("s3://foo", "s3://foo", True),
        ("s3://foo", "s3://foo/", True),
        ("s3://foo/", "s3://foo", True),
        ("s3://foo/", "s3://foo/model1", True),
        ("s3://foo", "s3://foo/bar/baz.pt", True),
        ("gs://b/model", "gs://b/model2", False),
        ("gs://b/model", "gs://b/model-evil", False),
        ("gs://b/model/x", "gs://b/model", False),
        ("foo:bar:baz", "foo:bar:baz", True),
    ],
)
def test_match_cache_uses_kserves_uri_rule(cached: str, wanted: str, matches: bool) -> None:
    binding = match_cache(wanted, None, [], [cache_obj("c", cached, ["g1"])])
    assert (binding is not None) is matches
    if binding is not None:
        assert binding.source_uri == cached  # the cache's URI, exactly as typed
        assert binding.pvc_name == "c-g1"


def test_namespace_cache_wins_over_cluster_cache() -> None:
    cluster = [cache_obj("aaa", "hf://org/m", ["g1"])]
    namespaced = [cache_obj("zzz", "hf://org/m", ["g2"], namespace="team")]
    binding = match_cache("hf://org/m", None, namespaced, cluster)
    assert binding is not None
    assert (binding.cache_name, binding.cache_namespace, binding.node_group) == ("zzz", "team", "g2")
    assert binding.pvc_name == serving_pvc_name("zzz", "team", "g2")


def test_first_match_in_name_order_wins_not_the_longest_prefix() -> None:
    # listed out of order on purpose: LIST order is name order, the reader must sort
    caches = [cache_obj("b-specific", "hf://org/m/sub", ["g"]), cache_obj("a-broad", "hf://org", ["g"])]
    binding = match_cache("hf://org/m/sub/file.bin", None, [], caches)
    assert binding is not None and binding.cache_name == "a-broad"


def test_node_group_annotation_selects_the_group_or_skips_the_cache() -> None:
    caches = [cache_obj("a", "hf://org/m", ["gpu1"]), cache_obj("b", "hf://org/m", ["gpu1", "gpu2"])]
    default = match_cache("hf://org/m", None, [], caches)
    assert default is not None and (default.cache_name, default.pvc_name) == ("a", "a-gpu1")
    chosen = match_cache("hf://org/m", "gpu2", [], caches)
    assert chosen is not None and (chosen.cache_name, chosen.node_group, chosen.pvc_name) == (
        "b",
        "gpu2",
        "b-gpu2",
    )
    assert match_cache("hf://org/m", "cpu", [], caches) is None


def test_a_cache_being_deleted_is_skipped() -> None:
    caches = [cache_obj("a", "hf://org/m", ["g"], deleting=True), cache_obj("b", "hf://org/m", ["g"])]
    binding = match_cache("hf://org/m", None, [], caches)
    assert binding is not None and binding.cache_name == "b"


# --- the four keys -----------------------------------------------------------------------------------
CLUSTER = [cache_obj("llama", "hf://meta-llama/meta-llama-3-8b-instruct", ["workers", "spare"])]
NAMESPACED = [
    cache_obj("llama-ns", "hf://meta-llama/meta-llama-3-8b-instruct", ["workers"], namespace="my-team")
]
STALE = {LABEL_LOCAL_MODEL: "old", LABEL_LOCAL_MODEL_NAMESPACE: "old-ns"}
STALE_ANN = {
    ANNOTATION_LOCAL_MODEL_SOURCE_URI: "s3://old",
    ANNOTATION_LOCAL_MODEL_PVC_NAME: "old-pvc",
    "keep": "me",
}


def test_cluster_match_sets_three_keys_and_removes_the_namespace_label() -> None:
    isvc = isvc_obj(
        "s",
        "default",
        "hf://meta-llama/meta-llama-3-8b-instruct",
        labels={**STALE, "app": "x"},
        annotations=STALE_ANN,
    )
    out, binding = default_inference_service(isvc, enabled=True, namespace_caches=[], cluster_caches=CLUSTER)
    assert binding is not None
    assert keys(out) == {
        LABEL_LOCAL_MODEL: "llama",
        ANNOTATION_LOCAL_MODEL_SOURCE_URI: "hf://meta-llama/meta-llama-3-8b-instruct",
        ANNOTATION_LOCAL_MODEL_PVC_NAME: "llama-workers",
    }
    assert out["metadata"]["labels"]["app"] == "x" and out["metadata"]["annotations"]["keep"] == "me"
    assert isvc["metadata"]["labels"] == {**STALE, "app": "x"}, "the input must not be mutated"


def test_namespace_match_sets_all_four_keys() -> None:
    isvc = isvc_obj("s", "my-team", "hf://meta-llama/meta-llama-3-8b-instruct/")
    out, _ = default_inference_service(
        isvc, enabled=True, namespace_caches=NAMESPACED, cluster_caches=CLUSTER
    )
    assert keys(out) == {
        LABEL_LOCAL_MODEL: "llama-ns",
        LABEL_LOCAL_MODEL_NAMESPACE: "my-team",
        ANNOTATION_LOCAL_MODEL_SOURCE_URI: "hf://meta-llama/meta-llama-3-8b-instruct",
        ANNOTATION_LOCAL_MODEL_PVC_NAME: serving_pvc_name("llama-ns", "my-team", "workers"),
    }


def test_node_group_annotation_changes_the_pvc() -> None:
    isvc = isvc_obj(
        "s",
        "default",
        "hf://meta-llama/meta-llama-3-8b-instruct",
        annotations={ANNOTATION_NODE_GROUP: "spare"},
    )
    out, _ = default_inference_service(isvc, enabled=True, namespace_caches=[], cluster_caches=CLUSTER)
    assert keys(out)[ANNOTATION_LOCAL_MODEL_PVC_NAME] == "llama-spare"


@pytest.mark.parametrize(
    ("uri", "annotations", "enabled"),
    [
        ("hf://other/model", {}, True),  # no match
        (
            "hf://meta-llama/meta-llama-3-8b-instruct",
            {ANNOTATION_DISABLE_LOCAL_MODEL: "false"},
            True,
        ),  # presence only
        ("hf://meta-llama/meta-llama-3-8b-instruct", {}, False),  # localModel.enabled false
        ("hf://meta-llama/meta-llama-3-8b-instruct", {ANNOTATION_NODE_GROUP: "nope"}, True),  # wrong group
    ],
    ids=["no-match", "disabled-annotation", "config-disabled", "wrong-node-group"],
)
def test_no_binding_removes_all_four_keys(uri: str, annotations: dict[str, str], enabled: bool) -> None:
    isvc = isvc_obj(
        "s", "my-team", uri, labels={**STALE, "app": "x"}, annotations={**STALE_ANN, **annotations}
    )
    out, binding = default_inference_service(
        isvc, enabled=enabled, namespace_caches=NAMESPACED, cluster_caches=CLUSTER
    )
    assert binding is None
    assert keys(out) == {}
    assert out["metadata"]["labels"] == {"app": "x"}
    assert out["metadata"]["annotations"] == {"keep": "me", **annotations}


def test_without_a_storage_uri_nothing_changes_even_stale_keys() -> None:
    isvc = isvc_obj("s", "default", None, labels=STALE, annotations=STALE_ANN)
    out, binding = default_inference_service(isvc, enabled=True, namespace_caches=[], cluster_caches=CLUSTER)
    assert binding is None and out == isvc


def test_custom_container_storage_uri_env_is_matched() -> None:
    isvc = isvc_obj("s", "default", None)
    isvc["spec"]["predictor"] = {
        "containers": [
            {
                "name": "kserve-container",
                "env": [{"name": "STORAGE_URI", "value": "hf://meta-llama/meta-llama-3-8b-instruct"}],
            }
        ]
    }
    out, _ = default_inference_service(isvc, enabled=True, namespace_caches=[], cluster_caches=CLUSTER)
    assert keys(out)[LABEL_LOCAL_MODEL] == "llama"


# --- the handler -------------------------------------------------------------------------------------
CONFIG = {
    "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
    "data": {"localModel": '{"enabled": true, "jobNamespace": "jobs"}', "credentials": "{not json"},
}


def defaulter(client: FakeClient) -> InferenceServiceDefaulter:
    return InferenceServiceDefaulter(CacheReader(client), ConfigReader(client, None, "kserve"))


def patched(resp: Any, original: dict[str, Any]) -> dict[str, Any]:
    """Apply the response's JSON patch the way the API server would (only add/replace/remove)."""
    body = review_response("u", resp, original, "admission.k8s.io/v1")["response"]
    assert body["allowed"], body
    ops = json_patch(original, resp.patched) if resp.patched is not None else resp.patch or []
    out = copy.deepcopy(original)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = out
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if op["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        else:
            target[last] = op["value"]
    return out


async def test_handler_reads_live_until_informers_sync_then_only_the_informers() -> None:
    client = FakeClient()
    client.put(CONFIGMAPS, CONFIG)
    client.put(LOCAL_MODEL_CACHES, CLUSTER[0])
    handler = defaulter(client)
    isvc = isvc_obj("s", "default", "hf://meta-llama/meta-llama-3-8b-instruct")
    resp = await handler.handle(review("CREATE", isvc))
    assert keys(patched(resp, isvc))[LABEL_LOCAL_MODEL] == "llama"
    assert client.count("list") == 2 and handler.caches.live_reads == 2

    # synced informers answer without any API call
    client.calls.clear()
    handler.caches._informers = {
        LOCAL_MODEL_CACHES: FakeInformer(
            [cache_obj("other", "hf://meta-llama/meta-llama-3-8b-instruct", ["g"])]
        ),
        LOCAL_MODEL_NAMESPACE_CACHES: FakeInformer([]),
    }
    handler.config._informer = FakeInformer([CONFIG])
    resp = await handler.handle(review("UPDATE", isvc))
    assert keys(patched(resp, isvc))[LABEL_LOCAL_MODEL] == "other"
    assert client.calls == []


async def test_handler_denies_when_the_config_is_missing_or_bad() -> None:
    client = FakeClient()
    isvc = isvc_obj("s", "default", "hf://x")
    resp = await defaulter(client).handle(review("CREATE", isvc))
    assert not resp.allowed and resp.code == 500
    assert "InferenceService default/s" in resp.message and "kserve/inferenceservice-config" in resp.message
    client.put(CONFIGMAPS, {**CONFIG, "data": {"localModel": '{"enabled": "maybe"}'}})
    resp = await defaulter(client).handle(review("CREATE", isvc))
    assert not resp.allowed and "localModel.enabled" in resp.message


async def test_handler_disabled_config_skips_listing_and_cleans_keys() -> None:
    client = FakeClient()
    client.put(CONFIGMAPS, {**CONFIG, "data": {"localModel": '{"enabled": false}'}})
    client.put(LOCAL_MODEL_CACHES, CLUSTER[0])
    isvc = isvc_obj(
        "s", "default", "hf://meta-llama/meta-llama-3-8b-instruct", labels=STALE, annotations=STALE_ANN
    )
    resp = await defaulter(client).handle(review("CREATE", isvc))
    assert keys(patched(resp, isvc)) == {}
    assert client.count("list") == 0


async def test_handler_rejects_an_unreadable_predictor_naming_the_field() -> None:
    client = FakeClient()
    client.put(CONFIGMAPS, CONFIG)
    isvc = isvc_obj("s", "default", "hf://x")
    isvc["spec"]["predictor"]["model"]["storageUri"] = {"not": "a string"}
    resp = await defaulter(client).handle(review("CREATE", isvc))
    assert not resp.allowed and resp.code == 400
    assert "InferenceService default/s" in resp.message and "model.storageUri" in resp.message


async def test_handler_ignores_delete_and_objectless_requests() -> None:
    resp = await defaulter(FakeClient()).handle(review("DELETE", None, old=isvc_obj("s", "d", "hf://x")))
    assert resp.allowed and resp.patched is None and resp.patch is None


async def test_a_miss_in_the_informers_is_confirmed_live_once() -> None:
    """kubectl apply of a cache and its service together: the informer may not have the cache yet."""
    client = FakeClient()
    client.put(CONFIGMAPS, CONFIG)
    client.put(LOCAL_MODEL_CACHES, CLUSTER[0])  # on the server, not yet in the informer
    handler = defaulter(client)
    handler.caches._informers = {
        LOCAL_MODEL_CACHES: FakeInformer([]),
        LOCAL_MODEL_NAMESPACE_CACHES: FakeInformer([]),
    }
    isvc = isvc_obj("s", "default", "hf://meta-llama/meta-llama-3-8b-instruct")
    resp = await handler.handle(review("CREATE", isvc))
    assert keys(patched(resp, isvc))[LABEL_LOCAL_MODEL] == "llama"
    assert handler.confirmed_misses == 1 and client.count("list") == 2

    client.calls.clear()
    handler.confirm_misses = False
    resp = await handler.handle(review("CREATE", isvc))
    assert keys(patched(resp, isvc)) == {} and client.count("list") == 0


async def test_a_service_without_storage_uri_costs_nothing() -> None:
    client = FakeClient()  # no ConfigMap either: it is not needed
    isvc = isvc_obj("s", "default", None, labels=STALE)
    resp = await defaulter(client).handle(review("CREATE", isvc))
    assert resp.allowed and resp.patched is None and client.calls == []


async def test_a_service_being_deleted_keeps_its_binding() -> None:
    client = FakeClient()
    client.put(CONFIGMAPS, {**CONFIG, "data": {"localModel": '{"enabled": false}'}})
    isvc = isvc_obj(
        "s", "default", "hf://meta-llama/meta-llama-3-8b-instruct", labels=STALE, annotations=STALE_ANN
    )
    isvc["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    resp = await defaulter(client).handle(review("UPDATE", isvc, old=isvc))
    assert resp.allowed and resp.patched is None and client.calls == []
