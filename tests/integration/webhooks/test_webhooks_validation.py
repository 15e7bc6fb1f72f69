"""The real API server calls the cache validating webhooks: duplicate URIs and missing node groups are
rejected with KServe's messages, and a cache in use cannot be deleted until its consumer is gone."""

from __future__ import annotations

import pytest

from localcache.controllers.isvc import (
    INFERENCE_SERVICES,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
)
from localcache.controllers.validation import escape_field_value
from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.testing.webhooks import AdmissionHarness
from tests.integration.webhooks.conftest import cluster_cache, inference_service, suffix

pytestmark = pytest.mark.integration


def namespace_cache(name: str, ns: str, uri: str, groups: list[str]) -> dict:
    obj = cluster_cache(name, uri, groups)
    obj["kind"] = "LocalModelNamespaceCache"
    obj["metadata"]["namespace"] = ns
    return obj


async def test_a_duplicate_source_uri_is_rejected_and_overlaps_are_not(
    admin: Client, admission: AdmissionHarness
) -> None:
    tag = suffix()
    uri = f"hf://org-{tag}/model"
    names = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[0], uri, ["workers"]))
    try:
        with pytest.raises(errors.ApiError) as denied:
            await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[1], uri, ["workers"]))
        assert denied.value.status == 403
        assert f"LocalModelCache {names[0]} has the same StorageURI {uri}" in str(denied.value)
        # KServe allows trailing-slash variants and prefixes: they are other folders
        await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[1], uri + "/", ["workers"]))
        await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[2], uri + "/sub", ["workers"]))
        # updating a cache itself is not a duplicate of itself
        await admin.patch(LOCAL_MODEL_CACHES, names[0], {"spec": {"nodeGroups": ["workers", "spare"]}})
    finally:
        for name in names:
            await admin.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def test_duplicates_are_found_by_field_selector_even_with_selector_syntax_in_the_uri(
    admin: Client, admission: AdmissionHarness
) -> None:
    """The webhook asks the API server for caches with this URI (a selectable field), escaping the
    selector's own syntax: a URI with ``,``, ``=`` and ``\\`` still finds its duplicate, and only it."""
    tag = suffix()
    uri = f"https://models-{tag}.example/get?name=a,b&rev=1\\x"
    names = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[0], uri, ["workers"]))
    try:
        found, _ = await admin.list_all(
            LOCAL_MODEL_CACHES, field_selector=f"spec.sourceModelUri={escape_field_value(uri)}"
        )
        assert [o["metadata"]["name"] for o in found] == [names[0]]
        with pytest.raises(errors.ApiError) as denied:
            await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[1], uri, ["workers"]))
        assert f"LocalModelCache {names[0]} has the same StorageURI {uri}" in str(denied.value)
        await admin.create(LOCAL_MODEL_CACHES, cluster_cache(names[2], uri.replace(",", ";"), ["workers"]))
    finally:
        for name in names:
            await admin.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def test_a_namespace_cache_needs_existing_node_groups(
    admin: Client, admission: AdmissionHarness, node_group: str, ns: str
) -> None:
    with pytest.raises(errors.ApiError) as denied:
        await admin.create(
            LOCAL_MODEL_NAMESPACE_CACHES, namespace_cache("m", ns, "s3://b/m", [node_group, "no-such-group"])
        )
    assert "NodeGroup no-such-group not found" in str(denied.value)
    await admin.create(LOCAL_MODEL_NAMESPACE_CACHES, namespace_cache("m", ns, "s3://b/m", [node_group]))
    with pytest.raises(errors.ApiError, match="NodeGroup gpus not found"):
        await admin.patch(
            LOCAL_MODEL_NAMESPACE_CACHES, "m", {"spec": {"nodeGroups": [node_group, "gpus"]}}, ns
        )


async def test_cluster_cache_delete_is_blocked_while_in_use_then_allowed(
    admin: Client, admission: AdmissionHarness, ns: str
) -> None:
    tag = suffix()
    name, uri = f"c-{tag}", f"s3://bucket-{tag}/m"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(name, uri, ["workers"]))
    try:
        await admin.create(INFERENCE_SERVICES, inference_service("user", ns, uri))
        with pytest.raises(errors.ApiError) as denied:
            await admin.delete(LOCAL_MODEL_CACHES, name)
        assert denied.value.status == 403
        assert f"LocalModelCache {name} is being used by InferenceService {ns}/user" in str(denied.value)
        await admin.get(LOCAL_MODEL_CACHES, name)  # still there
        # the consumer goes: nothing stale (no status, no 30 s wait) holds the cache any longer
        await admin.delete(INFERENCE_SERVICES, "user", ns)
        await admin.delete(LOCAL_MODEL_CACHES, name)
        with pytest.raises(errors.NotFound):
            await admin.get(LOCAL_MODEL_CACHES, name)
    finally:
        await admin.delete(INFERENCE_SERVICES, "user", ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def test_namespace_cache_delete_is_blocked_while_in_use_then_allowed(
    admin: Client, admission: AdmissionHarness, node_group: str, ns: str
) -> None:
    tag = suffix()
    uri = f"s3://bucket-{tag}/m"
    await admin.create(LOCAL_MODEL_NAMESPACE_CACHES, namespace_cache("m", ns, uri, [node_group]))
    isvc = await admin.create(INFERENCE_SERVICES, inference_service("user", ns, uri))
    assert isvc["metadata"]["labels"]["internal.serving.kserve.io/localmodel-namespace"] == ns
    with pytest.raises(errors.ApiError) as denied:
        await admin.delete(LOCAL_MODEL_NAMESPACE_CACHES, "m", ns)
    assert f"LocalModelNamespaceCache {ns}/m is being used by InferenceService {ns}/user" in str(denied.value)
    await admin.delete(INFERENCE_SERVICES, "user", ns)
    await admin.delete(LOCAL_MODEL_NAMESPACE_CACHES, "m", ns)
    with pytest.raises(errors.NotFound):
        await admin.get(LOCAL_MODEL_NAMESPACE_CACHES, "m", ns)
