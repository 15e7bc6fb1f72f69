"""Cache validating webhooks: KServe's rules and messages, with live consumer queries (§2.4, §9.2-9)."""

from __future__ import annotations

from localcache.api.constants import LABEL_LOCAL_MODEL, LABEL_LOCAL_MODEL_NAMESPACE
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES, LOCAL_MODEL_NODE_GROUPS
from localcache.controllers.validation import ADMITTED_MEMORY_SECONDS, CacheValidator, NamespaceCacheValidator
from localcache.runtime.resources import Resource
from localcache.runtime.store import Store
from tests.unit.controllers.test_admission_fakes import FakeClient, cache_obj, isvc_obj, review

LLMISVC = Resource("serving.kserve.io", "v1alpha1", "llminferenceservices", "LLMInferenceService", True)


def bound(name: str, ns: str, cache: str, cache_ns: str | None = None) -> dict:
    labels = {LABEL_LOCAL_MODEL: cache}
    if cache_ns:
        labels[LABEL_LOCAL_MODEL_NAMESPACE] = cache_ns
    return isvc_obj(name, ns, "s3://foo", labels=labels)


async def test_duplicate_uri_is_rejected_on_create_and_update_with_kserves_message() -> None:
    client = FakeClient()
    client.put(LOCAL_MODEL_CACHES, cache_obj("first", "s3://foo", ["g"]))
    validator = CacheValidator(client)
    resp = await validator.handle(review("CREATE", cache_obj("second", "s3://foo", ["g"])))
    assert not resp.allowed and resp.message == "LocalModelCache first has the same StorageURI s3://foo"
    resp = await validator.handle(
        review("UPDATE", cache_obj("second", "s3://foo", ["g"]), old=cache_obj("second", "s3://bar", ["g"]))
    )
    assert not resp.allowed


async def test_update_that_keeps_the_uri_is_allowed_without_listing_every_cache() -> None:
    """The URI is immutable, so an update (a finalizer, a label) cannot create a duplicate; listing all
    caches for it made the control plane O(caches^2). KServe checks anyway, which can also block the
    finalizer of a duplicate that slipped in while the webhook was down."""
    client = FakeClient()
    client.put(LOCAL_MODEL_CACHES, cache_obj("first", "s3://foo", ["g"]))

    async def no_list(*_args: object, **_kw: object) -> object:
        raise AssertionError("an update that keeps the URI must not LIST caches")

    client.list_all = no_list  # type: ignore[method-assign]
    resp = await CacheValidator(client).handle(
        review(
            "UPDATE", cache_obj("second", "s3://foo", ["g", "h"]), old=cache_obj("second", "s3://foo", ["g"])
        )
    )
    assert resp.allowed


async def test_overlaps_trailing_slashes_and_itself_are_allowed() -> None:
    client = FakeClient()
    client.put(LOCAL_MODEL_CACHES, cache_obj("first", "s3://foo", ["g"]))
    validator = CacheValidator(client)
    for uri in ("s3://foo/", "s3://foo/sub", "s3://fo"):
        assert (await validator.handle(review("CREATE", cache_obj("other", uri, ["g"])))).allowed, uri
    assert (await validator.handle(review("UPDATE", cache_obj("first", "s3://foo", ["g", "h"])))).allowed


async def test_update_while_deleting_is_always_allowed() -> None:
    client = FakeClient()
    client.put(LOCAL_MODEL_CACHES, cache_obj("first", "s3://foo", ["g"]))
    resp = await CacheValidator(client).handle(
        review("UPDATE", cache_obj("second", "s3://foo", ["g"], deleting=True))
    )
    assert resp.allowed and client.count("list") == 0


async def test_cluster_cache_delete_is_blocked_by_a_live_consumer_only() -> None:
    client = FakeClient()
    validator = CacheValidator(client)
    c = cache_obj("c", "s3://foo", ["g"])
    # a consumer of a namespace cache that happens to have the same name does not hold the cluster cache
    client.put(INFERENCE_SERVICES, bound("ns-user", "team", "c", cache_ns="team"))
    assert (await validator.handle(review("DELETE", None, old=c))).allowed
    client.put(INFERENCE_SERVICES, bound("user", "prod", "c"))
    resp = await validator.handle(review("DELETE", None, old=c))
    assert (
        not resp.allowed and resp.message == "LocalModelCache c is being used by InferenceService prod/user"
    )
    # status listing a consumer that is gone plays no part: only the live query counts
    del client.objects[("inferenceservices", "prod", "user")]
    c["status"] = {"inferenceServices": [{"namespace": "prod", "name": "user"}]}
    assert (await validator.handle(review("DELETE", None, old=c))).allowed


async def test_llm_inference_services_block_when_the_kind_is_served() -> None:
    client = FakeClient()
    c = cache_obj("c", "s3://foo", ["g"])
    assert (await CacheValidator(client).handle(review("DELETE", None, old=c))).allowed  # kind not served
    client.put(
        LLMISVC, {"metadata": {"name": "llm", "namespace": "prod", "labels": {LABEL_LOCAL_MODEL: "c"}}}
    )
    resp = await CacheValidator(client).handle(review("DELETE", None, old=c))
    assert (
        not resp.allowed and resp.message == "LocalModelCache c is being used by LLMInferenceService prod/llm"
    )


async def test_namespace_cache_needs_existing_node_groups() -> None:
    client = FakeClient()
    client.put(LOCAL_MODEL_NODE_GROUPS, {"metadata": {"name": "workers"}})
    validator = NamespaceCacheValidator(client)
    ok = cache_obj("c", "s3://foo", ["workers"], namespace="team")
    assert (await validator.handle(review("CREATE", ok))).allowed
    bad = cache_obj("c", "s3://foo", ["workers", "gpus"], namespace="team")
    resp = await validator.handle(review("UPDATE", bad, old=ok))
    assert not resp.allowed and resp.message == "NodeGroup gpus not found"
    # a group deleted after the cache was made does not block updates that leave it as it is
    relabelled = cache_obj("c", "s3://foo", ["workers", "gpus"], namespace="team")
    relabelled["metadata"]["finalizers"] = ["localmodelnamespacecache.kserve.io/finalizer"]
    assert (await validator.handle(review("UPDATE", relabelled, old=bad))).allowed
    assert (
        await validator.handle(
            review("UPDATE", cache_obj("c", "s3://foo", ["gpus"], namespace="team", deleting=True))
        )
    ).allowed


async def test_namespace_cache_delete_is_blocked_by_consumers_in_its_namespace() -> None:
    client = FakeClient()
    validator = NamespaceCacheValidator(client)
    c = cache_obj("c", "s3://foo", ["g"], namespace="team")
    client.put(INFERENCE_SERVICES, bound("cluster-user", "team", "c"))  # bound to the cluster cache "c"
    client.put(INFERENCE_SERVICES, bound("elsewhere", "other", "c", cache_ns="other"))
    assert (await validator.handle(review("DELETE", None, old=c))).allowed
    client.put(INFERENCE_SERVICES, bound("user", "team", "c", cache_ns="team"))
    resp = await validator.handle(review("DELETE", None, old=c))
    assert not resp.allowed
    assert resp.message == "LocalModelNamespaceCache team/c is being used by InferenceService team/user"


class InformerOnly:
    """An informer cache holding cluster caches in a real Store (with the validator's indexer)."""

    def __init__(self) -> None:
        self.store = Store()
        self.synced = True

    def informer_for(self, _res: object, *, indexers: dict | None = None) -> InformerOnly:
        self.store.add_indexers(indexers or {})
        return self

    def has_synced(self) -> bool:
        return self.synced

    def by_index(self, _res: object, index: str, value: str) -> list:
        return self.store.by_index(index, value)


async def test_with_an_informer_duplicates_are_found_without_any_list_even_before_it_sees_them() -> None:
    client, informer, now = FakeClient(), InformerOnly(), [0.0]
    validator = CacheValidator(client, cache=informer, clock=lambda: now[0])
    assert (await validator.handle(review("CREATE", cache_obj("a", "s3://x", ["g"])))).allowed
    # the informer has not seen "a" yet: what this webhook admitted a moment ago still counts
    resp = await validator.handle(review("CREATE", cache_obj("b", "s3://x", ["g"])))
    assert resp.message == "LocalModelCache a has the same StorageURI s3://x"
    assert (await validator.handle(review("CREATE", cache_obj("a", "s3://x", ["g"])))).allowed, "a retry"
    informer.store.add(cache_obj("a", "s3://x", ["g"]))
    assert not (await validator.handle(review("CREATE", cache_obj("b", "s3://x", ["g"])))).allowed
    informer.store.delete(cache_obj("a", "s3://x", ["g"]))  # seen, then deleted: the URI is free
    assert (await validator.handle(review("CREATE", cache_obj("c", "s3://x", ["g"])))).allowed
    now[0] += ADMITTED_MEMORY_SECONDS + 1  # "c" was never seen (rejected further on): forgotten
    assert (await validator.handle(review("CREATE", cache_obj("d", "s3://x", ["g"])))).allowed
    assert client.count("list") == 0, "no LIST: the informer answers"
