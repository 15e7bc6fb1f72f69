from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localcache.api import crdgen
from localcache.api.localmodelcache import LocalModelCache, LocalModelNamespaceCache
from localcache.api.localmodelnode import LocalModelNode
from localcache.api.localmodelnodegroup import LocalModelNodeGroup

REPO = Path(__file__).resolve().parents[3]


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, child in node.get("properties", {}).items():
            out += walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("model", crdgen.INSTALL_KINDS + crdgen.TESTING_KINDS, ids=lambda m: m.__name__)
def test_schema_is_structural(model: type) -> None:
    schema = crdgen.crd_for(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "default" not in node and "title" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        else:
            assert "type" in node, f"{model.__name__}{path} has no type"
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path


def test_cache_crds_carry_kserves_validation() -> None:
    for model in (LocalModelCache, LocalModelNamespaceCache):
        crd = crdgen.crd_for(model)
        version = crd["spec"]["versions"][0]
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert spec["required"] == ["sourceModelUri", "modelSize", "nodeGroups"]
        assert spec["properties"]["sourceModelUri"]["x-kubernetes-validations"] == [
            {"message": "StorageUri is immutable", "rule": "self == oldSelf"}
        ]
        assert spec["properties"]["nodeGroups"]["minItems"] == 1
        assert spec["properties"]["modelSize"]["x-kubernetes-int-or-string"] is True
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert status["nodeStatus"]["additionalProperties"]["enum"] == [
            "",
            "NodeNotReady",
            "NodeDownloadPending",
            "NodeDownloading",
            "NodeDownloaded",
            "NodeDownloadError",
        ]
        assert version["subresources"] == {"status": {}}
        meta = version["schema"]["openAPIV3Schema"]["properties"]["metadata"]
        assert meta["properties"]["name"]["maxLength"] == 63
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert columns[:4] == ["URI", "Size", "Available", "Total"] and columns[-1] == "Age"
        assert crd["spec"]["scope"] == ("Namespaced" if model is LocalModelNamespaceCache else "Cluster")


def test_node_crd_enums_and_scopes() -> None:
    crd = crdgen.crd_for(LocalModelNode)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    model_status = schema["properties"]["status"]["properties"]["modelStatus"]["additionalProperties"]
    assert model_status["enum"] == [
        "",
        "ModelDownloadPending",
        "ModelDownloading",
        "ModelDownloaded",
        "ModelDownloadError",
    ]
    info = schema["properties"]["spec"]["properties"]["localModels"]["items"]
    assert info["required"] == ["sourceModelUri", "modelName"]
    assert crd["spec"]["names"]["shortNames"] == ["lmn"]


def test_node_group_has_no_status_subresource_and_preserves_templates() -> None:
    version = crdgen.crd_for(LocalModelNodeGroup)["spec"]["versions"][0]
    assert "subresources" not in version
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["persistentVolumeSpec"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["persistentVolumeClaimSpec"]["x-kubernetes-preserve-unknown-fields"] is True


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    for model in crdgen.INSTALL_KINDS:
        schema = crdgen.crd_for(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in walk(schema["properties"]["spec"]):
            if path.count(".") == 1 and "[" not in path and "{" not in path:  # every direct spec field
                assert node.get("description"), f"{model.__name__}.spec{path} has no description"


def test_checked_in_crds_are_current() -> None:
    assert crdgen.check(REPO / "manifests" / "crds") == []


def test_generate_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "crds"
    assert crdgen.main([str(target)]) == 0
    files = sorted(p.name for p in target.iterdir())
    assert files == [
        "kustomization.yaml",
        "serving.kserve.io_localmodelcaches.yaml",
        "serving.kserve.io_localmodelnamespacecaches.yaml",
        "serving.kserve.io_localmodelnodegroups.yaml",
        "serving.kserve.io_localmodelnodes.yaml",
    ]
    assert crdgen.main(["--check", str(target)]) == 0
    kustomization = yaml.safe_load((target / "kustomization.yaml").read_text())
    assert kustomization["resources"] == files[1:]

    stale = target / "serving.kserve.io_localmodelnodes.yaml"
    stale.write_text(stale.read_text().replace("lmn", "xyz"))
    (target / "serving.kserve.io_localmodelcaches.yaml").unlink()
    capsys.readouterr()
    assert crdgen.main(["--check", str(target)]) == 1
    err = capsys.readouterr().err
    assert "run `make manifests`" in err
    assert "serving.kserve.io_localmodelnodes.yaml: differs" in err
    assert "serving.kserve.io_localmodelcaches.yaml: missing" in err

    assert crdgen.main([str(target)]) == 0
    assert crdgen.check(target) == []


def test_rendering_is_deterministic() -> None:
    assert crdgen.render(LocalModelCache) == crdgen.render(LocalModelCache)
