"""Every model parses the user guide's YAML and dumps it back unchanged, unknown fields included."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcache.api import (
    ClusterStorageContainer,
    InferenceService,
    LocalModelCache,
    LocalModelNamespaceCache,
    LocalModelNode,
    LocalModelNodeGroup,
    ModelStatus,
    NodeStatus,
    Quantity,
)
from localcache.api.base import KubeObject

SEED_DIR = Path(
    os.environ.get("LOCALCACHE_SEED_DIR", Path(__file__).resolve().parents[4] / "shared" / "seed")
)
EXAMPLES = SEED_DIR / "examples"

KINDS: dict[str, type[KubeObject]] = {
    "LocalModelCache": LocalModelCache,
    "LocalModelNamespaceCache": LocalModelNamespaceCache,
    "LocalModelNode": LocalModelNode,
    "LocalModelNodeGroup": LocalModelNodeGroup,
    "ClusterStorageContainer": ClusterStorageContainer,
    "InferenceService": InferenceService,
}


def seed_documents() -> list[tuple[str, dict[str, Any]]]:
    if not EXAMPLES.is_dir():
        return []
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc.get("kind") in KINDS:
                docs.append((f"{path.name}#{index}", doc))
    return docs


SEED_DOCS = seed_documents()


def test_seed_examples_are_present() -> None:
    assert EXAMPLES.is_dir(), f"seed examples not found at {EXAMPLES}; set LOCALCACHE_SEED_DIR"
    kinds = {doc["kind"] for _, doc in SEED_DOCS}
    assert kinds == set(KINDS), f"expected every kind in the seed examples, got {sorted(kinds)}"


@pytest.mark.parametrize(("name", "doc"), SEED_DOCS, ids=[n for n, _ in SEED_DOCS])
def test_seed_document_round_trips(name: str, doc: dict[str, Any]) -> None:
    model = KINDS[doc["kind"]]
    obj = model.model_validate(doc)
    assert obj.to_dict() == doc
    # parsing the dump again is stable
    assert model.model_validate(obj.to_dict()).to_dict() == doc


def _expected_status() -> list[dict[str, Any]]:
    path = EXAMPLES / "13-expected-status.yaml"
    if not path.exists():
        pytest.fail(f"{path} missing")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_expected_cache_status_is_typed() -> None:
    doc = next(d for d in _expected_status() if d["kind"] == "LocalModelCache")
    cache = LocalModelCache.model_validate(doc)
    assert cache.status is not None and cache.status.copies is not None
    assert cache.status.copies.available == 1 and cache.status.copies.total == 1
    assert cache.status.copies.failed is None  # KServe omits zero counts; a round trip must not add them
    assert cache.status.node_status == {"kind-worker": NodeStatus.DOWNLOADED}
    assert cache.spec.model_size == Quantity("10Gi")
    assert cache.spec.node_groups == ["workers"]
    assert cache.status_key == "meta-llama3-8b-instruct"


def test_expected_node_status_keys() -> None:
    doc = next(d for d in _expected_status() if d["kind"] == "LocalModelNode")
    node = LocalModelNode.model_validate(doc)
    keys = [info.status_key for info in node.spec.local_models]
    assert keys == ["meta-llama3-8b-instruct", "my-team/meta-llama3-8b-instruct"]
    assert node.status is not None and node.status.model_status is not None
    assert set(node.status.model_status) == set(keys)
    assert all(v is ModelStatus.DOWNLOADED for v in node.status.model_status.values())
    assert node.find_model("meta-llama3-8b-instruct", "my-team") is node.spec.local_models[1]
    assert node.find_model("meta-llama3-8b-instruct", None) is node.spec.local_models[0]
    assert node.find_model("meta-llama3-8b-instruct", "other") is None


def _add_unknown(doc: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields at every level a newer server or client could add them."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["managedFields"] = [
        {"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}
    ]
    doc["metadata"]["resourceVersion"] = "42"
    doc["metadata"]["uid"] = "0b1c2d3e-0000-4000-8000-000000000000"
    doc["metadata"]["creationTimestamp"] = "2026-11-28T00:00:00Z"
    doc["spec"]["futureField"] = {"nested": [1, 2, {"x": True}]}
    doc["topLevelFuture"] = "kept"
    return doc


@pytest.mark.parametrize(("name", "doc"), SEED_DOCS, ids=[n for n, _ in SEED_DOCS])
def test_unknown_fields_survive_read_modify_write(name: str, doc: dict[str, Any]) -> None:
    model = KINDS[doc["kind"]]
    rich = _add_unknown(doc)
    obj = model.model_validate(rich)
    obj.metadata.labels = {**obj.labels, "touched": "yes"}
    out = obj.to_dict()
    assert out["metadata"]["labels"]["touched"] == "yes"
    del out["metadata"]["labels"]["touched"]
    if not out["metadata"]["labels"]:
        del out["metadata"]["labels"]
    assert out == rich


def test_node_group_templates_pass_through_verbatim() -> None:
    doc = next(d for _, d in SEED_DOCS if d["kind"] == "LocalModelNodeGroup")
    rich = copy.deepcopy(doc)
    rich["spec"]["persistentVolumeSpec"]["mountOptions"] = ["noatime"]
    rich["spec"]["persistentVolumeSpec"]["local"]["fsType"] = "xfs"
    rich["spec"]["persistentVolumeClaimSpec"]["dataSourceRef"] = {"kind": "VolumeSnapshot", "name": "s"}
    group = LocalModelNodeGroup.model_validate(rich)
    assert group.spec.persistent_volume_spec == rich["spec"]["persistentVolumeSpec"]
    assert group.spec.persistent_volume_claim_spec == rich["spec"]["persistentVolumeClaimSpec"]
    assert group.spec.host_path == "/mnt/models"
    assert group.spec.storage_limit == Quantity("1700G")
    terms = group.spec.node_selector_terms
    assert terms[0]["matchExpressions"][0]["key"] == "nvidia.com/gpu-product"
    assert group.to_dict() == rich


def test_node_group_without_affinity_has_no_terms_and_host_path_fallback() -> None:
    group = LocalModelNodeGroup.model_validate(
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "LocalModelNodeGroup",
            "metadata": {"name": "g"},
            "spec": {
                "storageLimit": "1Ti",
                "persistentVolumeSpec": {"hostPath": {"path": "/data/models"}},
                "persistentVolumeClaimSpec": {},
            },
        }
    )
    assert group.spec.node_selector_terms == []
    assert group.spec.host_path == "/data/models"


def test_storage_container_matching() -> None:
    doc = next(d for _, d in SEED_DOCS if d["kind"] == "ClusterStorageContainer")
    csc = ClusterStorageContainer.model_validate(doc)
    assert csc.serves_download_jobs("hf://org/model")
    assert not csc.serves_download_jobs("s3://bucket/model")
    csc.disabled = True
    assert not csc.serves_download_jobs("hf://org/model")
    regex = ClusterStorageContainer.model_validate(
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "ClusterStorageContainer",
            "metadata": {"name": "r"},
            "spec": {
                "container": {"name": "c", "image": "i"},
                "supportedUriFormats": [{"regex": r"https://.*\.example\.com/"}],
            },
        }
    )
    assert regex.supports("https://models.example.com/x")
    assert not regex.supports("https://example.org/x")
    assert not regex.serves_download_jobs("https://models.example.com/x")  # initContainer by default


def test_inference_service_storage_uri_and_binding() -> None:
    doc = next(d for n, d in SEED_DOCS if d["kind"] == "InferenceService" and "namespace" in d["metadata"])
    isvc = InferenceService.model_validate(doc)
    assert isvc.storage_uri == "hf://meta-llama/meta-llama-3-8b-instruct"
    assert isvc.local_model_cache is None
    isvc.set_local_model("llama", "my-team", "hf://meta-llama/meta-llama-3-8b-instruct", "llama-workers-abc")
    assert isvc.local_model_cache == ("my-team", "llama")
    isvc.set_local_model("llama", None, "hf://x", "llama-workers")
    assert isvc.local_model_cache == ("", "llama")
    assert "internal.serving.kserve.io/localmodel-namespace" not in isvc.labels
    assert isvc.annotations["internal.serving.kserve.io/localmodel-pvc-name"] == "llama-workers"
    isvc.clear_local_model()
    assert isvc.local_model_cache is None
    assert not any(k.startswith("internal.serving.kserve.io/localmodel") for k in isvc.annotations)
    # the rest of the spec is untouched
    assert isvc.to_dict()["spec"] == doc["spec"]


def test_inference_service_framework_and_custom_predictors() -> None:
    base = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "s"}}
    sklearn = InferenceService.model_validate(
        {**base, "spec": {"predictor": {"sklearn": {"storageUri": "gs://b/m"}}}}
    )
    assert sklearn.storage_uri == "gs://b/m"
    custom = InferenceService.model_validate(
        {
            **base,
            "spec": {
                "predictor": {
                    "containers": [
                        {"name": "kserve-container", "env": [{"name": "STORAGE_URI", "value": "s3://b/m"}]}
                    ]
                }
            },
        }
    )
    assert custom.storage_uri == "s3://b/m"
    none = InferenceService.model_validate(
        {**base, "spec": {"predictor": {"model": {"modelFormat": {"name": "x"}}}}}
    )
    assert none.storage_uri is None
    annotated = InferenceService.model_validate(
        {
            **base,
            "metadata": {"name": "s", "annotations": {"serving.kserve.io/disable-localmodel": "false"}},
            "spec": {},
        }
    )
    assert annotated.local_model_disabled  # presence only, whatever the value


def test_bad_model_size_names_the_field() -> None:
    doc = next(d for _, d in SEED_DOCS if d["kind"] == "LocalModelCache")
    bad = copy.deepcopy(doc)
    bad["spec"]["modelSize"] = "ten gigs"
    with pytest.raises(ValueError, match=r"spec\.modelSize[\s\S]*invalid quantity 'ten gigs'"):
        LocalModelCache.model_validate(bad)


def test_empty_node_groups_and_unknown_status_are_rejected() -> None:
    doc = next(d for _, d in SEED_DOCS if d["kind"] == "LocalModelCache")
    bad = copy.deepcopy(doc)
    bad["spec"]["nodeGroups"] = []
    with pytest.raises(ValueError, match=r"spec\.nodeGroups"):
        LocalModelCache.model_validate(bad)
    bad = copy.deepcopy(doc)
    bad["status"] = {"nodeStatus": {"n1": "NodeExploded"}}
    with pytest.raises(ValueError, match=r"status\.nodeStatus\.n1"):
        LocalModelCache.model_validate(bad)


def test_python_names_and_wire_names_both_accepted() -> None:
    by_python = LocalModelCache(
        metadata={"name": "m"},
        spec={"source_model_uri": "s3://b/m", "model_size": "1Gi", "node_groups": ["g"]},
    )
    by_wire = LocalModelCache.model_validate(
        {
            "metadata": {"name": "m"},
            "spec": {"sourceModelUri": "s3://b/m", "modelSize": "1Gi", "nodeGroups": ["g"]},
        }
    )
    assert by_python.to_dict() == by_wire.to_dict()
    assert by_python.to_dict() == {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": "m"},
        "spec": {"sourceModelUri": "s3://b/m", "modelSize": "1Gi", "nodeGroups": ["g"]},
    }


def test_integer_model_size_stays_an_integer() -> None:
    cache = LocalModelCache.model_validate(
        {
            "metadata": {"name": "m"},
            "spec": {"sourceModelUri": "s3://b/m", "modelSize": 1073741824, "nodeGroups": ["g"]},
        }
    )
    assert cache.to_dict()["spec"]["modelSize"] == 1073741824
    assert cache.spec.model_size == Quantity("1Gi")


def test_crd_paths() -> None:
    assert LocalModelCache.CRD.path("a") == "/apis/serving.kserve.io/v1alpha1/localmodelcaches/a"
    assert (
        LocalModelNamespaceCache.CRD.path("a", "ns", "status")
        == "/apis/serving.kserve.io/v1alpha1/namespaces/ns/localmodelnamespacecaches/a/status"
    )
    from localcache.api import PersistentVolumeClaim

    assert PersistentVolumeClaim.CRD.path("p", "ns") == "/api/v1/namespaces/ns/persistentvolumeclaims/p"
