"""The real API server calls the InferenceService webhook: the seed's services are bound as KServe
binds them, the namespace cache wins, and unmatched, disabled or wrong-group services stay clean."""

from __future__ import annotations

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
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES
from localcache.runtime.client import Client
from localcache.runtime.resources import NAMESPACES
from localcache.testing.webhooks import AdmissionHarness
from tests.integration.webhooks.conftest import cluster_cache, inference_service, make_namespace, seed, suffix

pytestmark = pytest.mark.integration

FOUR = (
    LABEL_LOCAL_MODEL,
    LABEL_LOCAL_MODEL_NAMESPACE,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
)


def keys(obj: dict) -> dict[str, str]:
    meta = obj["metadata"]
    both = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})}
    return {k: both[k] for k in FOUR if k in both}


async def test_seed_inference_services_are_bound_like_kserve_binds_them(
    admin: Client, admission: AdmissionHarness, node_group: str, ns: str
) -> None:
    team = await make_namespace(admin)  # stands in for the seed's "my-team"
    cache = seed("09")
    ns_cache = seed("11")
    ns_cache["metadata"]["namespace"] = team
    isvc = seed("10")
    isvc["metadata"]["namespace"] = ns
    team_isvc = seed("12")
    team_isvc["metadata"]["namespace"] = team
    name, uri = cache["metadata"]["name"], cache["spec"]["sourceModelUri"]
    await admin.create(LOCAL_MODEL_CACHES, cache)
    try:
        await admin.create(LOCAL_MODEL_NAMESPACE_CACHES, ns_cache)
        created = await admin.create(INFERENCE_SERVICES, isvc)
        created_team = await admin.create(INFERENCE_SERVICES, team_isvc)

        # cluster cache: KServe's names byte for byte, no namespace label
        assert keys(created) == {
            LABEL_LOCAL_MODEL: "meta-llama3-8b-instruct",
            ANNOTATION_LOCAL_MODEL_SOURCE_URI: "hf://meta-llama/meta-llama-3-8b-instruct",
            ANNOTATION_LOCAL_MODEL_PVC_NAME: "meta-llama3-8b-instruct-workers",
        }
        # the namespace cache of the same name and URI wins in its own namespace
        team_pvc = keys(created_team)[ANNOTATION_LOCAL_MODEL_PVC_NAME]
        assert keys(created_team) == {
            LABEL_LOCAL_MODEL: name,
            LABEL_LOCAL_MODEL_NAMESPACE: team,
            ANNOTATION_LOCAL_MODEL_SOURCE_URI: uri,
            ANNOTATION_LOCAL_MODEL_PVC_NAME: serving_pvc_name(name, team, node_group),
        }
        assert (
            team_pvc.startswith("meta-llama3-8b-instruct-workers-")
            and team_pvc != "meta-llama3-8b-instruct-workers"
        )
        # what was stored is what was returned, and the user's spec is untouched
        stored = await admin.get(INFERENCE_SERVICES, "huggingface-llama3", team)
        assert keys(stored) == keys(created_team)
        assert stored["spec"]["predictor"] == team_isvc["spec"]["predictor"]
    finally:
        for namespace in (ns, team):
            await admin.delete(INFERENCE_SERVICES, "huggingface-llama3", namespace, missing_ok=True)
        await admin.delete(LOCAL_MODEL_NAMESPACE_CACHES, ns_cache["metadata"]["name"], team, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)
        await admin.delete(NAMESPACES, team, missing_ok=True)


@pytest.mark.parametrize(
    ("uri_tail", "annotations"),
    [
        ("/other-model", {}),
        ("", {ANNOTATION_DISABLE_LOCAL_MODEL: "false"}),
        ("", {ANNOTATION_NODE_GROUP: "not-a-group-of-the-cache"}),
    ],
    ids=["no-match", "disabled-annotation", "wrong-node-group"],
)
async def test_unbound_services_stay_clean_even_when_created_with_stale_keys(
    admin: Client, admission: AdmissionHarness, ns: str, uri_tail: str, annotations: dict[str, str]
) -> None:
    tag = suffix()
    uri = f"s3://bucket-{tag}/model"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(f"c-{tag}", uri, ["g1", "g2"]))
    try:
        isvc = inference_service("svc", ns, (uri + "-sibling" if uri_tail else uri), annotations)
        isvc["metadata"]["labels"] = {
            LABEL_LOCAL_MODEL: "stale",
            LABEL_LOCAL_MODEL_NAMESPACE: "stale",
            "app": "a",
        }
        isvc["metadata"].setdefault("annotations", {}).update(
            {ANNOTATION_LOCAL_MODEL_PVC_NAME: "stale", ANNOTATION_LOCAL_MODEL_SOURCE_URI: "stale"}
        )
        created = await admin.create(INFERENCE_SERVICES, isvc)
        assert keys(created) == {}
        assert created["metadata"]["labels"] == {"app": "a"}
        assert created["metadata"].get("annotations", {}) == annotations
    finally:
        await admin.delete(INFERENCE_SERVICES, "svc", ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, f"c-{tag}", missing_ok=True)


async def test_updates_rebind_the_node_group_and_unbind_on_disable(
    admin: Client, admission: AdmissionHarness, ns: str
) -> None:
    tag = suffix()
    uri = f"gs://bucket-{tag}/model"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(f"c-{tag}", uri, ["g1", "g2"]))
    try:
        created = await admin.create(INFERENCE_SERVICES, inference_service("svc", ns, uri + "/sub/file.bin"))
        assert keys(created) == {
            LABEL_LOCAL_MODEL: f"c-{tag}",
            ANNOTATION_LOCAL_MODEL_SOURCE_URI: uri,
            ANNOTATION_LOCAL_MODEL_PVC_NAME: f"c-{tag}-g1",
        }
        moved = await admin.patch(
            INFERENCE_SERVICES, "svc", {"metadata": {"annotations": {ANNOTATION_NODE_GROUP: "g2"}}}, ns
        )
        assert keys(moved)[ANNOTATION_LOCAL_MODEL_PVC_NAME] == f"c-{tag}-g2"
        off = await admin.patch(
            INFERENCE_SERVICES, "svc", {"metadata": {"annotations": {ANNOTATION_DISABLE_LOCAL_MODEL: ""}}}, ns
        )
        assert keys(off) == {}
    finally:
        await admin.delete(INFERENCE_SERVICES, "svc", ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, f"c-{tag}", missing_ok=True)
