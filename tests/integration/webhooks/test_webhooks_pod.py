"""The real API server calls the Pod webhook, and the pod-gate controller releases gated pods:
a predictor pod whose model is not downloaded is held, then narrowed to the Downloaded nodes and
released once the cache reports them; a pod created after the download is placed at once."""

from __future__ import annotations

from typing import Any

import pytest

from localcache.api.constants import (
    ANNOTATION_LOCAL_MODEL_PVC_NAME,
    ANNOTATION_LOCAL_MODEL_SOURCE_URI,
    ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI,
    LABEL_LOCAL_MODEL,
)
from localcache.api.naming import storage_key
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES
from localcache.controllers.pod import SCHEDULING_GATE
from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import EVENTS, PODS
from localcache.testing.webhooks import AdmissionHarness
from tests.integration.webhooks.conftest import cluster_cache, eventually, inference_service, suffix

pytestmark = pytest.mark.integration

Obj = dict[str, Any]


def predictor_pod(isvc: Obj, name: str) -> Obj:
    """The predictor pod KServe's controller would make: the service's labels and annotations (§4.2),
    the storage-initializer source URI, and the model server container."""
    meta = isvc["metadata"]
    annotations = dict(meta.get("annotations") or {})
    annotations[ANNOTATION_STORAGE_INITIALIZER_SOURCE_URI] = isvc["spec"]["predictor"]["model"]["storageUri"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": dict(meta.get("labels") or {}, **{"serving.kserve.io/inferenceservice": meta["name"]}),
            "annotations": annotations,
        },
        "spec": {
            "containers": [{"name": "kserve-container", "image": "kserve/huggingfaceserver:latest"}],
            "initContainers": [
                {
                    "name": "storage-initializer",
                    "image": "kserve/storage-initializer:latest",
                    "args": ["x", "/mnt/models"],
                }
            ],
        },
    }


def required_terms(pod: Obj) -> list[Obj]:
    affinity = (pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}
    return (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms"
    ) or []


def gated(pod: Obj) -> bool:
    return any(g["name"] == SCHEDULING_GATE for g in pod["spec"].get("schedulingGates") or [])


async def set_node_status(client: Client, cache: str, status: dict[str, str]) -> None:
    await client.patch(LOCAL_MODEL_CACHES, cache, {"status": {"nodeStatus": status}}, subresource="status")


async def test_a_pod_is_gated_until_its_model_is_downloaded_then_narrowed_and_released(
    admin: Client, admission: AdmissionHarness, ns: str
) -> None:
    tag = suffix()
    name, uri = f"c-{tag}", f"hf://org-{tag}/model"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(name, uri, ["workers"]))
    try:
        await set_node_status(admin, name, {"node-a": "NodeDownloading", "node-b": "NodeDownloadPending"})
        isvc = await admin.create(INFERENCE_SERVICES, inference_service("svc", ns, uri + "/weights"))
        assert isvc["metadata"]["labels"][LABEL_LOCAL_MODEL] == name

        pod = await admin.create(PODS, predictor_pod(isvc, "svc-predictor-1"))
        # rewritten as KServe does: the cache's PVC at /mnt/models, read-only, no init container
        assert pod["spec"]["volumes"][-1] == {
            "name": "kserve-pvc-source",
            "persistentVolumeClaim": {"claimName": f"{name}-workers"},
        }
        (mount,) = [
            m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models"
        ]
        assert mount == {
            "name": "kserve-pvc-source",
            "mountPath": "/mnt/models",
            "subPath": f"models/{storage_key(uri)}/weights",
            "readOnly": True,
        }
        assert not pod["spec"].get("initContainers")
        # and held: nothing is downloaded yet
        assert gated(pod) and required_terms(pod) == []

        # a status change that is not a download keeps it held
        await set_node_status(admin, name, {"node-a": "NodeDownloadError", "node-b": "NodeDownloading"})
        await eventually(
            lambda: _event(admin, ns, "svc-predictor-1", "WaitingForModel"), "WaitingForModel event"
        )
        assert gated(await admin.get(PODS, "svc-predictor-1", ns))

        await set_node_status(
            admin,
            name,
            {"node-a": "NodeDownloadError", "node-b": "NodeDownloaded", "node-c": "NodeDownloaded"},
        )

        async def released() -> Obj | None:
            current = await admin.get(PODS, "svc-predictor-1", ns)
            return None if gated(current) else current

        pod = await eventually(released, "pod released from its scheduling gate")
        assert required_terms(pod) == [
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b", "node-c"]}
                ]
            }
        ]
        event = await eventually(
            lambda: _event(admin, ns, "svc-predictor-1", "ModelReady"), "ModelReady event"
        )
        assert "node-b, node-c" in event["message"]
    finally:
        await admin.delete(PODS, "svc-predictor-1", ns, missing_ok=True, grace_period_seconds=0)
        await admin.delete(INFERENCE_SERVICES, "svc", ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def _event(client: Client, ns: str, pod: str, reason: str) -> Obj | None:
    events = (await client.list(EVENTS, ns, field_selector=f"involvedObject.name={pod}"))["items"]
    return next((e for e in events if e["reason"] == reason), None)


async def test_a_pod_created_after_the_download_is_placed_at_admission(
    admin: Client, admission: AdmissionHarness, ns: str
) -> None:
    tag = suffix()
    name, uri = f"c-{tag}", f"s3://bucket-{tag}/"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(name, uri, ["workers"]))
    try:
        await set_node_status(admin, name, {"node-z": "NodeDownloaded", "node-y": "NodeDownloading"})
        isvc = await admin.create(
            INFERENCE_SERVICES, inference_service("svc", ns, f"s3://bucket-{tag}/model1")
        )
        pod_in = predictor_pod(isvc, "svc-predictor-2")
        pod_in["metadata"]["annotations"]["storage.kserve.io/readonly"] = "false"
        pod_in["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
                }
            }
        }

        async def placed() -> Obj | None:
            # the pod informer may lag the status patch by a moment: recreate until placed
            pod = await admin.create(PODS, pod_in)
            if required_terms(pod)[0]["matchExpressions"][1:]:
                return pod
            await admin.delete(PODS, "svc-predictor-2", ns, grace_period_seconds=0)
            await eventually(lambda: _gone(admin, ns, "svc-predictor-2"), "pod deleted")
            return None

        pod = await eventually(placed, "pod placed at admission")
        assert not gated(pod)
        assert required_terms(pod) == [
            {
                "matchExpressions": [
                    {"key": "gpu", "operator": "Exists"},
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-z"]},
                ]
            }
        ]
        (mount,) = [
            m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models"
        ]
        assert (
            mount["subPath"] == f"models/{storage_key(uri)}/model1" and "readOnly" not in mount
        )  # false is omitted on the wire
    finally:
        await admin.delete(PODS, "svc-predictor-2", ns, missing_ok=True, grace_period_seconds=0)
        await admin.delete(INFERENCE_SERVICES, "svc", ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def _gone(client: Client, ns: str, name: str) -> bool:
    try:
        await client.get(PODS, name, ns)
    except errors.NotFound:
        return True
    return False


async def test_a_bound_pod_without_its_pvc_annotation_is_denied(
    admin: Client, admission: AdmissionHarness, ns: str
) -> None:
    pod = predictor_pod(
        {
            "metadata": {
                "name": "svc",
                "namespace": ns,
                "labels": {LABEL_LOCAL_MODEL: "some-cache"},
                "annotations": {ANNOTATION_LOCAL_MODEL_SOURCE_URI: "s3://b"},
            },
            "spec": {"predictor": {"model": {"storageUri": "s3://b/m"}}},
        },
        "bad",
    )
    with pytest.raises(errors.ApiError) as denied:
        await admin.create(PODS, pod)
    assert denied.value.status == 400
    assert f"Pod {ns}/bad: annotation {ANNOTATION_LOCAL_MODEL_PVC_NAME} not found" in str(denied.value)
