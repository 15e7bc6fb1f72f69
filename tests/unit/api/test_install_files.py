"""Static checks of the Dockerfiles and kustomize sources (the rendered manifests are checked against a real
API server in tests/integration/api)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
IMAGES = ("manager", "agent", "download")


def dockerfile(name: str) -> str:
    return (REPO / "docker" / f"{name}.Dockerfile").read_text()


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_entrypoint(name: str) -> None:
    text = dockerfile(name)
    assert f'ENTRYPOINT ["python", "/app/cmd/{name}.py"]' in text
    assert "COPY cmd /app/cmd" in text
    assert re.search(r"^USER 1000", text, re.MULTILINE)


def test_one_base_image_and_identical_install_layers() -> None:
    bases = {re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile(n), re.MULTILINE)[1] for n in IMAGES}  # type: ignore[index]
    assert len(bases) == 1 and next(iter(bases)).startswith("python:3.11")

    # everything but the comments and the entrypoint is the same, so the layer cache is shared
    def body(name: str) -> list[str]:
        return [
            line
            for line in dockerfile(name).splitlines()
            if line and not line.startswith(("#", "ENTRYPOINT"))
        ]

    assert body("manager") == body("agent") == body("download")


def test_agent_daemonset_takes_the_host_path_from_the_setting() -> None:
    daemonset = yaml.safe_load((REPO / "manifests" / "base" / "agent" / "daemonset.yaml").read_text())
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["args"] == [
        "--node-name=$(NODE_NAME)",
        "--models-root=/mnt/models",
        "--health-probe-bind-address=:8081",
    ]
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["LOCALCACHE_MODELS_HOST_PATH"]["configMapKeyRef"] == {
        "name": "localcache-settings",
        "key": "modelsHostPath",
    }
    component = yaml.safe_load(
        (REPO / "manifests" / "components" / "models-host-path" / "kustomization.yaml").read_text()
    )
    (replacement,) = component["replacements"]
    assert replacement["source"]["fieldPath"] == "data.modelsHostPath"
    targets = {t["select"]["kind"]: t["fieldPaths"] for t in replacement["targets"]}
    assert targets == {
        "DaemonSet": ["spec.template.spec.volumes.[name=models].hostPath.path"],
        "LocalModelNodeGroup": ["spec.persistentVolumeSpec.local.path"],
    }
