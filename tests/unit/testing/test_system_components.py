"""The whole-system launcher names what is missing instead of failing half-way."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcache.testing import system


def _fake_repo(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")


def test_missing_components_names_each_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_repo(tmp_path, ["cmd/download.py", "cmd/agent.py"])
    monkeypatch.setattr(system, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(system, "MANIFESTS", tmp_path / "manifests")
    missing = system.missing_components()
    assert any(m.startswith("cmd/manager.py (the controller manager") for m in missing), missing
    assert any("manifests/crds" in m for m in missing), missing
    assert not any("cmd/agent.py" in m or "cmd/download.py" in m for m in missing)
    assert system.missing_components(manager=False) == [m for m in missing if "manager" not in m]


async def test_start_refuses_with_component_missing_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(system, "MANIFESTS", tmp_path / "manifests")
    local = system.LocalSystem(workdir=tmp_path / "work")
    with pytest.raises(system.ComponentMissing, match=r"cmd/download\.py"):
        await local.start()
    assert local.plane is None and local.sim is None and not local.agents


def test_current_checkout_has_every_component() -> None:
    assert system.missing_components() == []
