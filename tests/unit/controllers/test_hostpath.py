"""The start-up check: host path vs the node groups' PV paths, and a writable models directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from localcache.api import LocalModelNodeGroup
from localcache.controllers.hostpath import (
    check_host_path,
    check_writable,
    groups_for_node,
    normalise_path,
    preflight,
)


def group(
    name: str, *, local: str | None = None, host: str | None = None, pool: str = "gpu"
) -> LocalModelNodeGroup:
    pv: dict[str, Any] = {
        "nodeAffinity": {
            "required": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": [pool]}]}
                ]
            }
        }
    }
    if local:
        pv["local"] = {"path": local}
    if host:
        pv["hostPath"] = {"path": host, "type": "DirectoryOrCreate"}
    if not local and not host:
        pv["csi"] = {"driver": "x", "volumeHandle": "y"}
    return LocalModelNodeGroup.from_dict(
        {
            "metadata": {"name": name},
            "spec": {"storageLimit": "1Gi", "persistentVolumeSpec": pv, "persistentVolumeClaimSpec": {}},
        }
    )


NODE = {"metadata": {"name": "n1", "labels": {"pool": "gpu"}}}


def test_normalise_path() -> None:
    assert normalise_path("/models/") == "/models"
    assert normalise_path("//models/./a/") == "//models/a"
    assert normalise_path("/mnt//models") == "/mnt/models"


def test_groups_for_node_by_pv_affinity_in_name_order() -> None:
    groups = [group("b", local="/m"), group("a", local="/m"), group("cpu", local="/m", pool="cpu")]
    assert [g.name for g in groups_for_node(NODE, groups)] == ["a", "b"]
    assert groups_for_node(None, groups) == []


def test_mismatch_names_both_paths() -> None:
    mismatches = check_host_path(
        "/mnt/models", [group("a", local="/models"), group("b", host="/mnt/models/")]
    )
    assert len(mismatches) == 1
    text = mismatches[0].describe()
    assert "node group a" in text and "/models" in text and "/mnt/models" in text


def test_groups_without_a_host_directory_are_not_compared() -> None:
    assert check_host_path("/mnt/models", [group("csi")]) == []


def test_preflight_mismatch_before_writability(tmp_path: Path) -> None:
    result = preflight(tmp_path, "/x", [group("a", local="/y")])
    assert not result.ok and result.reason == "HostPathMismatch"
    assert "/x" in result.message and "/y" in result.message
    ok = preflight(tmp_path, "/y", [group("a", local="/y/")])
    assert ok.ok and (tmp_path / "models").is_dir()
    assert list((tmp_path / "models").iterdir()) == []  # the probe file is removed again


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_reports_owner_and_mode(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o555)
    try:
        result = check_writable(tmp_path, "/host/models")
    finally:
        models.chmod(0o755)
    assert not result.ok and result.reason == "StorageNotWritable"
    assert "/host/models" in result.message and "0555" in result.message
    assert f"uid {os.getuid()}" in result.message


def test_unwritable_root_when_models_dir_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "root-is-a-file"
    blocker.write_bytes(b"")
    result = check_writable(blocker, "/host/models")
    assert not result.ok and result.reason == "StorageNotWritable"
    assert str(blocker) in result.message


def test_permission_error_message_has_owner_and_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root passes every permission check, so the kernel's refusal is simulated here."""
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o750)
    real_open = os.open

    def refuse(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).startswith(str(models)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    result = check_writable(tmp_path, "/host/models")
    st = models.stat()
    assert not result.ok and result.reason == "StorageNotWritable"
    assert "Permission denied" in result.message and "0750" in result.message
    assert f"owned by uid {st.st_uid} gid {st.st_gid}" in result.message
