"""The CRDs and install manifests against a real kube-apiserver: the user guide's YAML applies unchanged,
kubectl shows printer columns and field docs, bad objects are rejected naming the field, and the models
round-trip what the server stores."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from localcache.api import (
    ConditionType,
    LocalModelCache,
    LocalModelNamespaceCache,
    LocalModelNode,
    LocalModelNodeGroup,
    NodeStatus,
    Quantity,
    copies_from_node_status,
    set_condition,
)
from localcache.testing.envtest import assets_dir
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SEED_DIR = Path(os.environ.get("LOCALCACHE_SEED_DIR", REPO.parent / "shared" / "seed"))
EXAMPLES = SEED_DIR / "examples"
GROUP, VERSION = "serving.kserve.io", "v1alpha1"
MERGE = {"_content_type": "application/merge-patch+json"}


# ---- helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crds(cluster: TestCluster) -> TestCluster:
    """Our CRDs, current as of this checkout (the session's plane may have started before they existed)."""
    if cluster.plane is not None:
        cluster.plane.install_crds([REPO / "manifests" / "crds", REPO / "localcache" / "testing" / "crds"])
    return cluster


def kubectl_binary(cluster: TestCluster) -> str:
    if cluster.plane is not None:
        candidate = assets_dir() / "kubectl"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found in the envtest assets or on PATH; run `make envtest`")
    return found


def kubectl(
    cluster: TestCluster,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    kubeconfig: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    command = [kubectl_binary(cluster), "--kubeconfig", str(kubeconfig or cluster.kubeconfig), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def ensure_namespaces(cluster: TestCluster, *names: str) -> None:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names]
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def seed_files() -> list[Path]:
    if not EXAMPLES.is_dir():
        pytest.fail(f"seed examples not found at {EXAMPLES}; set LOCALCACHE_SEED_DIR")
    return sorted(EXAMPLES.glob("*.yaml"))


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def cache_body(
    name: str, uri: str = "hf://org/model", size: Any = "10Gi", groups: list[str] | None = None
) -> dict:
    """A raw cache object (not validated here, so invalid ones can be sent to the server)."""
    return {
        "apiVersion": LocalModelCache.CRD.api_version,
        "kind": LocalModelCache.CRD.kind,
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": ["g"] if groups is None else groups},
    }


@pytest.fixture
def custom(api_client: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client)


@pytest.fixture
def cluster_caches(crds: TestCluster, custom: k8s.CustomObjectsApi) -> Iterator[list[str]]:
    """Names of LocalModelCaches a test creates; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        kubectl(crds, "delete", "localmodelcache", name, "--ignore-not-found", "--wait=false", check=False)


async def expect_invalid(call: Any, *fragments: str) -> str:
    with pytest.raises(k8s.ApiException) as info:
        await call
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---- the user guide's YAML --------------------------------------------------------------------------
def test_every_seed_example_applies_unchanged(crds: TestCluster) -> None:
    ensure_namespaces(crds, "kserve", "kserve-localmodel-jobs", "my-team")
    files = seed_files()
    assert len(files) >= 13
    try:
        for path in files:
            result = kubectl(crds, "apply", "-f", str(path), check=False)
            assert result.returncode == 0, f"{path.name}: {result.stderr}"
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc["apiVersion"].split("/")[0] != GROUP:
                    continue
                ref = [doc["kind"].lower(), doc["metadata"]["name"], "-o", "json"]
                if "namespace" in doc["metadata"]:
                    ref += ["-n", doc["metadata"]["namespace"]]
                stored = json.loads(kubectl(crds, "get", *ref).stdout)
                # nothing the user wrote was pruned or rewritten by the schema
                assert stored["spec"] == doc["spec"], f"{path.name}: {doc['kind']} spec changed on the server"
    finally:
        for path in reversed(files):
            kubectl(crds, "delete", "-f", str(path), "--ignore-not-found", "--wait=false", check=False)


def test_expected_status_shapes_are_accepted_by_the_status_subresource(crds: TestCluster) -> None:
    path = EXAMPLES / "13-expected-status.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    try:
        kubectl(crds, "apply", "-f", str(path))
        for doc in docs:
            kind, name = doc["kind"].lower(), doc["metadata"]["name"]
            patch = json.dumps({"status": doc["status"]})
            kubectl(crds, "patch", kind, name, "--subresource=status", "--type=merge", "-p", patch)
            stored = json.loads(kubectl(crds, "get", kind, name, "-o", "json").stdout)
            assert stored["status"] == doc["status"]
            model = {"localmodelcache": LocalModelCache, "localmodelnode": LocalModelNode}[kind]
            parsed = model.model_validate(stored)
            assert parsed.to_dict() == stored  # lossless, server metadata included
    finally:
        kubectl(crds, "delete", "-f", str(path), "--ignore-not-found", "--wait=false", check=False)


# ---- kubectl UX -----------------------------------------------------------------------------------
def test_kubectl_get_shows_printer_columns(crds: TestCluster, cluster_caches: list[str]) -> None:
    name = unique("cols")
    cluster_caches.append(name)
    kubectl(crds, "create", "-f", "-", stdin=json.dumps(cache_body(name, "hf://org/cols", "1.7T")))
    conditions, _ = set_condition(None, ConditionType.READY, True, reason="Downloaded", message="1/1")
    status = {
        "nodeStatus": {"n1": "NodeDownloaded"},
        "copies": copies_from_node_status({"n1": NodeStatus.DOWNLOADED}).to_dict(),
        "conditions": [c.to_dict() for c in conditions],
    }
    kubectl(
        crds,
        "patch",
        "localmodelcache",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )

    out = kubectl(crds, "get", "localmodelcache", name).stdout.splitlines()
    assert out[0].split() == ["NAME", "URI", "SIZE", "AVAILABLE", "TOTAL", "READY", "AGE"]
    assert out[1].split()[:6] == [name, "hf://org/cols", "1.7T", "1", "1", "True"]
    wide = kubectl(crds, "get", "lmc", name, "-o", "wide").stdout.splitlines()
    assert "FAILED" in wide[0].split() and "GROUPS" in wide[0].split()
    # the short name and the category reach the same objects
    assert name in kubectl(crds, "get", "localmodel", "-o", "name").stdout


def test_kubectl_explain_shows_field_docs(crds: TestCluster) -> None:
    spec = kubectl(crds, "explain", "localmodelcache.spec").stdout
    assert "sourceModelUri" in spec and "Immutable" in spec
    assert "nodeGroups" in spec and "serving.kserve.io/nodegroup" in spec
    status = kubectl(crds, "explain", "localmodelnamespacecache.status.conditions").stdout
    assert "observedGeneration" in status
    node = kubectl(crds, "explain", "localmodelnode.spec.localModels").stdout
    assert "modelName" in node and "sourceModelUri" in node


# ---- validation -----------------------------------------------------------------------------------
async def test_source_model_uri_is_immutable(
    crds: TestCluster, custom: k8s.CustomObjectsApi, cluster_caches: list[str], namespace: str
) -> None:
    name = unique("immut")
    cluster_caches.append(name)
    await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", cache_body(name))
    patch = {"spec": {"sourceModelUri": "hf://org/other"}}
    await expect_invalid(
        custom.patch_cluster_custom_object(GROUP, VERSION, "localmodelcaches", name, patch, **MERGE),
        "spec.sourceModelUri",
        "StorageUri is immutable",
    )
    # other fields stay mutable
    await custom.patch_cluster_custom_object(
        GROUP, VERSION, "localmodelcaches", name, {"spec": {"modelSize": "11Gi"}}, **MERGE
    )

    ns_body = cache_body("nscache")
    ns_body["kind"] = LocalModelNamespaceCache.CRD.kind
    await custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "localmodelnamespacecaches", ns_body
    )
    await expect_invalid(
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "localmodelnamespacecaches", "nscache", patch, **MERGE
        ),
        "spec.sourceModelUri",
        "StorageUri is immutable",
    )


async def test_empty_node_groups_rejected(crds: TestCluster, custom: k8s.CustomObjectsApi) -> None:
    await expect_invalid(
        custom.create_cluster_custom_object(
            GROUP, VERSION, "localmodelcaches", cache_body(unique("empty"), groups=[])
        ),
        "spec.nodeGroups",
        "at least 1 items",
    )


@pytest.mark.parametrize("size", ["10 GB", "lots", "1.5.2Gi", "10gi"])
async def test_bad_model_size_rejected(crds: TestCluster, custom: k8s.CustomObjectsApi, size: str) -> None:
    await expect_invalid(
        custom.create_cluster_custom_object(
            GROUP, VERSION, "localmodelcaches", cache_body(unique("size"), size=size)
        ),
        "spec.modelSize",
    )


async def test_unknown_status_values_rejected(
    crds: TestCluster, custom: k8s.CustomObjectsApi, cluster_caches: list[str]
) -> None:
    name = unique("status")
    cluster_caches.append(name)
    await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", cache_body(name))
    bad = {"status": {"nodeStatus": {"node-a": "NodeExploded"}}}
    await expect_invalid(
        custom.patch_cluster_custom_object_status(GROUP, VERSION, "localmodelcaches", name, bad, **MERGE),
        "status.nodeStatus.node-a",
        "NodeExploded",
    )
    node_name = unique("node")
    node = LocalModelNode(metadata={"name": node_name}, spec={"local_models": []}).to_dict()
    await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelnodes", node)
    try:
        await expect_invalid(
            custom.patch_cluster_custom_object_status(
                GROUP,
                VERSION,
                "localmodelnodes",
                node_name,
                {"status": {"modelStatus": {"m": "Downloaded"}}},
                **MERGE,
            ),
            "status.modelStatus.m",
        )
        bad_condition = {"status": {"conditions": [{"type": "Ready", "status": "Yes"}]}}
        await expect_invalid(
            custom.patch_cluster_custom_object_status(
                GROUP, VERSION, "localmodelnodes", node_name, bad_condition, **MERGE
            ),
            "status.conditions[0].status",
        )
    finally:
        await custom.delete_cluster_custom_object(GROUP, VERSION, "localmodelnodes", node_name)


async def test_over_long_cache_name_rejected(
    crds: TestCluster, custom: k8s.CustomObjectsApi, cluster_caches: list[str], namespace: str
) -> None:
    await expect_invalid(
        custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", cache_body("a" * 64)),
        "metadata.name",
        "63",
    )
    body = cache_body("b" * 64)
    body["kind"] = "LocalModelNamespaceCache"
    await expect_invalid(
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "localmodelnamespacecaches", body),
        "metadata.name",
    )
    # exactly at the limit is fine
    cluster_caches.append("c" * 63)
    await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", cache_body("c" * 63))


# ---- round trips through the server ---------------------------------------------------------------
@pytest.mark.parametrize("size", ["1.7T", "1700G", "10Gi", "500M", "1e3", "500m", 1073741824])
async def test_quantities_round_trip(
    crds: TestCluster, custom: k8s.CustomObjectsApi, cluster_caches: list[str], size: str | int
) -> None:
    name = unique("qty")
    cluster_caches.append(name)
    await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", cache_body(name, size=size))
    stored = await custom.get_cluster_custom_object(GROUP, VERSION, "localmodelcaches", name)
    assert stored["spec"]["modelSize"] == size
    assert LocalModelCache.model_validate(stored).spec.model_size == Quantity(size)


async def test_status_read_modify_write_keeps_everything(
    crds: TestCluster, custom: k8s.CustomObjectsApi, cluster_caches: list[str]
) -> None:
    name = unique("rmw")
    cluster_caches.append(name)
    created = await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", cache_body(name))
    cache = LocalModelCache.model_validate(created)
    status = cache.ensure_status()
    status.node_status = {"n1": NodeStatus.DOWNLOADING, "n2": NodeStatus.DOWNLOAD_ERROR}
    status.copies = copies_from_node_status(status.node_status)
    status.conditions, _ = set_condition(
        None, "Ready", False, reason="Downloading", message="0/2", observed_generation=cache.generation
    )
    status.node_status_details = {
        "n2": {"status": "NodeDownloadError", "message": "403 from hub", "bytes": 0}
    }
    written = await custom.replace_cluster_custom_object_status(
        GROUP, VERSION, "localmodelcaches", name, cache.to_dict()
    )
    again = LocalModelCache.model_validate(
        await custom.get_cluster_custom_object(GROUP, VERSION, "localmodelcaches", name)
    )
    assert again.to_dict() == written
    assert again.status is not None and again.status.conditions is not None
    ready = again.status.conditions[0]
    assert ready.observed_generation == created["metadata"]["generation"]
    assert ready.last_transition_time is not None
    assert again.status.copies is not None and again.status.copies.failed == 1
    assert again.status.node_status_details is not None
    assert again.status.node_status_details["n2"].message == "403 from hub"
    assert again.spec == cache.spec


async def test_node_group_templates_are_stored_verbatim(
    crds: TestCluster, custom: k8s.CustomObjectsApi
) -> None:
    name = unique("ng")
    pv_spec = {
        "accessModes": ["ReadWriteOnce"],
        "capacity": {"storage": "1700G"},
        "local": {"path": "/mnt/models", "fsType": "xfs"},
        "mountOptions": ["noatime"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "local-storage",
        "volumeMode": "Filesystem",
        "nodeAffinity": {
            "required": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]
            }
        },
    }
    pvc_spec = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1700G"}},
        "storageClassName": "local-storage",
        "dataSourceRef": {"kind": "VolumeSnapshot", "name": "snap", "apiGroup": "snapshot.storage.k8s.io"},
    }
    body = LocalModelNodeGroup(
        metadata={"name": name},
        spec={
            "storage_limit": "1.7T",
            "persistent_volume_spec": pv_spec,
            "persistent_volume_claim_spec": pvc_spec,
        },
    ).to_dict()
    await custom.create_cluster_custom_object(GROUP, VERSION, "localmodelnodegroups", body)
    try:
        stored = await custom.get_cluster_custom_object(GROUP, VERSION, "localmodelnodegroups", name)
        group = LocalModelNodeGroup.model_validate(stored)
        assert group.spec.persistent_volume_spec == pv_spec
        assert group.spec.persistent_volume_claim_spec == pvc_spec
        assert group.spec.host_path == "/mnt/models"
    finally:
        await custom.delete_cluster_custom_object(GROUP, VERSION, "localmodelnodegroups", name)


async def test_inference_service_crd_preserves_kserve_fields(
    crds: TestCluster, custom: k8s.CustomObjectsApi, namespace: str
) -> None:
    body = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "isvc", "annotations": {"serving.kserve.io/nodegroup": "workers"}},
        "spec": {
            "predictor": {
                "minReplicas": 2,
                "model": {
                    "modelFormat": {"name": "huggingface"},
                    "storageUri": "hf://org/model",
                    "args": ["--x"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                },
                "nodeSelector": {"gpu": "a100"},
            },
            "transformer": {"containers": [{"name": "t", "image": "img"}]},
        },
    }
    created = await custom.create_namespaced_custom_object(
        GROUP, "v1beta1", namespace, "inferenceservices", body
    )
    assert created["spec"] == body["spec"]
    status = await custom.patch_namespaced_custom_object_status(
        GROUP,
        "v1beta1",
        namespace,
        "inferenceservices",
        "isvc",
        {"status": {"url": "http://x", "anything": {"a": 1}}},
        **MERGE,
    )
    assert status["status"] == {"url": "http://x", "anything": {"a": 1}}


# ---- install manifests ----------------------------------------------------------------------------
def rendered(cluster: TestCluster, target: str) -> list[dict[str, Any]]:
    out = kubectl(cluster, "kustomize", str(REPO / target)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_manifests_render_and_pass_server_side_validation(crds: TestCluster) -> None:
    docs = rendered(crds, "manifests")
    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "Service",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ClusterRole",
        "ConfigMap",
    } <= kinds
    # cert-manager's kinds need cert-manager's CRDs, which a bare API server does not have
    checkable = [d for d in docs if not d["apiVersion"].startswith("cert-manager.io/")]
    ensure_namespaces(crds, "kserve", "kserve-localmodel-jobs")
    result = kubectl(
        crds, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(checkable), check=False
    )
    assert result.returncode == 0, result.stderr

    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    paths = {
        w["clientConfig"]["service"]["path"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for d in docs
        if d["kind"] == kind
        for w in d["webhooks"]
    }
    assert paths == {
        "/mutate-serving-kserve-io-v1beta1-inferenceservice",
        "/mutate-pods",
        "/validate-serving-kserve-io-v1alpha1-localmodelcache",
        "/validate-serving-kserve-io-v1alpha1-localmodelnamespacecache",
    }
    service = by_kind[("Service", "localcache-webhook-service")]
    assert service["spec"]["ports"][0]["port"] == 443 and service["spec"]["ports"][0]["targetPort"] == 9443
    manager = by_kind[("Deployment", "localcache-controller-manager")]["spec"]["template"]["spec"]
    assert "--config-namespace=$(POD_NAMESPACE)" in manager["containers"][0]["args"]
    assert manager["volumes"][0]["secret"]["secretName"] == "localcache-webhook-server-cert"
    agent = by_kind[("DaemonSet", "localcache-agent")]["spec"]["template"]["spec"]
    assert agent["containers"][0]["resources"]["limits"] == {"cpu": "100m", "memory": "300Mi"}
    assert agent["volumes"][0]["hostPath"]["path"] == "/mnt/models"


def test_models_host_path_is_one_setting(crds: TestCluster) -> None:
    docs = rendered(crds, "manifests/overlays/example")
    setting = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "localcache-settings"
    )
    path = setting["data"]["modelsHostPath"]
    assert path == "/mnt/nvme/models"
    agent = next(d for d in docs if d["kind"] == "DaemonSet")
    volume = next(v for v in agent["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    group = next(d for d in docs if d["kind"] == "LocalModelNodeGroup")
    assert volume["hostPath"]["path"] == path
    assert group["spec"]["persistentVolumeSpec"]["local"]["path"] == path
    assert LocalModelNodeGroup.model_validate(group).spec.host_path == path


def test_kserve_overlay_leaves_kserves_configmap_alone(crds: TestCluster) -> None:
    docs = rendered(crds, "manifests/overlays/kserve")
    assert not any(
        d["kind"] == "ConfigMap" and d["metadata"]["name"] == "inferenceservice-config" for d in docs
    )
    assert not any(d["kind"] == "Namespace" and d["metadata"]["name"] == "kserve" for d in docs)
    assert any(d["kind"] == "DaemonSet" for d in docs)


def test_agent_reads_secrets_only_in_the_job_namespace(crds: TestCluster, tmp_path: Path) -> None:
    if crds.plane is None:
        pytest.skip("needs the envtest CA to mint a service-account identity")
    rbac = [
        d
        for d in rendered(crds, "manifests")
        if d["apiVersion"].startswith("rbac.") or d["kind"] == "ServiceAccount"
    ]
    ensure_namespaces(crds, "kserve", "kserve-localmodel-jobs")
    kubectl(crds, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    try:
        check_rbac(crds, tmp_path)
    finally:
        kubectl(crds, "delete", "--ignore-not-found", "-f", "-", stdin=yaml.safe_dump_all(rbac), check=False)


def check_rbac(crds: TestCluster, tmp_path: Path) -> None:

    def can(user: str, *args: str) -> bool:
        config = crds.plane.user_kubeconfig(  # type: ignore[union-attr]
            tmp_path / f"{user.rsplit(':', 1)[-1]}.kubeconfig",
            user,
            groups=("system:serviceaccounts", "system:serviceaccounts:kserve", "system:authenticated"),
        )
        result = kubectl(crds, "auth", "can-i", *args, kubeconfig=config, check=False)
        return result.stdout.strip() == "yes"

    agent = "system:serviceaccount:kserve:localcache-agent"
    assert can(agent, "get", "secrets", "-n", "kserve-localmodel-jobs")
    assert not can(agent, "get", "secrets", "-n", "kserve")
    assert not can(agent, "get", "secrets", "-n", "default")
    assert not can(agent, "list", "secrets", "--all-namespaces")
    assert can(agent, "create", "jobs", "-n", "kserve-localmodel-jobs")
    assert not can(agent, "create", "jobs", "-n", "default")
    assert can(agent, "patch", "localmodelnodes", "--subresource=status")
    assert not can(agent, "patch", "localmodelnodes")  # the spec is the manager's
    assert not can(agent, "create", "localmodelnodes")
    assert not can(agent, "delete", "localmodelcaches")

    manager = "system:serviceaccount:kserve:localcache-controller-manager"
    assert can(manager, "create", "localmodelnodes")
    assert can(manager, "create", "persistentvolumeclaims", "-n", "any-namespace")
    assert can(manager, "update", "localmodelcaches", "--subresource=status")
    assert can(manager, "create", "leases", "-n", "kserve")
    assert not can(manager, "get", "secrets", "-n", "kserve-localmodel-jobs")
    assert not can(manager, "create", "jobs", "-n", "kserve-localmodel-jobs")


async def test_node_status_maps_are_one_field_to_the_field_manager(
    crds: TestCluster, custom: k8s.CustomObjectsApi
) -> None:
    """managedFields must not list every model of a node: at 1,000 models that was a third of the
    object, written and re-encoded by the API server on every status write."""
    name = unique("lmn-atomic")
    await custom.create_cluster_custom_object(
        GROUP, VERSION, "localmodelnodes",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalModelNode", "metadata": {"name": name},
         "spec": {"localModels": []}},
    )  # fmt: skip
    try:
        models = [f"m{i}" for i in range(5)]
        status = {
            "modelStatus": {m: "ModelDownloaded" for m in models},
            "modelStatusDetails": {m: {"bytes": 1} for m in models},
        }
        await custom.patch_cluster_custom_object_status(
            GROUP, VERSION, "localmodelnodes", name, [{"op": "add", "path": "/status", "value": status}],
            _content_type="application/json-patch+json",
        )  # fmt: skip
        stored = await custom.get_cluster_custom_object(GROUP, VERSION, "localmodelnodes", name)
        assert stored["status"] == status
        owned = [
            f["fieldsV1"]["f:status"]
            for f in stored["metadata"]["managedFields"]
            if f.get("subresource") == "status"
        ]
        assert owned == [{".": {}, "f:modelStatus": {}, "f:modelStatusDetails": {}}], owned
    finally:
        await custom.delete_cluster_custom_object(GROUP, VERSION, "localmodelnodes", name)
