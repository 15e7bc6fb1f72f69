"""A cache on two node groups: a Pod is released only when a node of *its* group has the model, and is
narrowed to those nodes only (group membership is the group's PV node affinity on real Node objects)."""

from __future__ import annotations

from typing import Any

import pytest

from localcache.api.constants import ANNOTATION_NODE_GROUP
from localcache.controllers import LOCAL_MODEL_NODE_GROUPS
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES
from localcache.runtime.client import Client
from localcache.runtime.resources import EVENTS, NODES, PODS
from localcache.testing.webhooks import AdmissionHarness
from tests.integration.webhooks.conftest import cluster_cache, eventually, inference_service, seed, suffix
from tests.integration.webhooks.test_webhooks_pod import gated, predictor_pod, required_terms, set_node_status

pytestmark = pytest.mark.integration

Obj = dict[str, Any]


def node_group(name: str, gpu: str) -> Obj:
    group = seed("08")
    group["metadata"] = {"name": name}
    expression = group["spec"]["persistentVolumeSpec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
    expression["matchExpressions"][0]["values"] = [gpu]
    return group


def node(name: str, gpu: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu-product": gpu}},
    }


async def test_release_waits_for_a_node_of_the_pods_own_group(
    admin: Client, admission: AdmissionHarness, ns: str
) -> None:
    tag = suffix()
    a100, h100 = f"a100-{tag}", f"h100-{tag}"
    groups = [node_group(f"ga-{tag}", a100), node_group(f"gh-{tag}", h100)]
    nodes = [node(f"a-{tag}", a100), node(f"h1-{tag}", h100), node(f"h2-{tag}", h100)]
    cache, uri = f"c-{tag}", f"hf://org-{tag}/model"
    for g in groups:
        await admin.create(LOCAL_MODEL_NODE_GROUPS, g)
    for n in nodes:
        await admin.create(NODES, n)
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(cache, uri, [f"ga-{tag}", f"gh-{tag}"]))
    try:
        isvc = await admin.create(
            INFERENCE_SERVICES, inference_service("svc", ns, uri, {ANNOTATION_NODE_GROUP: f"gh-{tag}"})
        )
        pod_in = predictor_pod(isvc, "p")
        gpu = {"key": "nvidia.com/gpu-product", "operator": "Exists"}
        zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}
        pod_in["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [gpu]}, {"matchExpressions": [zone]}]
                }
            }
        }
        pod = await admin.create(PODS, pod_in)
        assert pod["spec"]["volumes"][-1]["persistentVolumeClaim"]["claimName"] == f"{cache}-gh-{tag}"
        assert gated(pod)

        # downloaded, but only on the other group's node: still held
        await set_node_status(admin, cache, {f"a-{tag}": "NodeDownloaded", f"h1-{tag}": "NodeDownloading"})
        await eventually(
            lambda: _has_event(admin, ns, "p", f"not downloaded on any node of group gh-{tag}"),
            "waiting event",
        )
        assert gated(await admin.get(PODS, "p", ns))

        await set_node_status(
            admin,
            cache,
            {f"a-{tag}": "NodeDownloaded", f"h1-{tag}": "NodeDownloading", f"h2-{tag}": "NodeDownloaded"},
        )

        async def released() -> Obj | None:
            current = await admin.get(PODS, "p", ns)
            return None if gated(current) else current

        pod = await eventually(released, "pod released")
        # the API server accepted narrowing a gated pod's existing terms (each term gets the requirement)
        host = {"key": "kubernetes.io/hostname", "operator": "In", "values": [f"h2-{tag}"]}
        assert required_terms(pod) == [{"matchExpressions": [gpu, host]}, {"matchExpressions": [zone, host]}]
    finally:
        await admin.delete(PODS, "p", ns, missing_ok=True, grace_period_seconds=0)
        await admin.delete(INFERENCE_SERVICES, "svc", ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, cache, missing_ok=True)
        for n in nodes:
            await admin.delete(NODES, n["metadata"]["name"], missing_ok=True)
        for g in groups:
            await admin.delete(LOCAL_MODEL_NODE_GROUPS, g["metadata"]["name"], missing_ok=True)


async def _has_event(client: Client, ns: str, pod: str, text: str) -> bool:
    events = (await client.list(EVENTS, ns, field_selector=f"involvedObject.name={pod}"))["items"]
    return any(text in e.get("message", "") for e in events)
