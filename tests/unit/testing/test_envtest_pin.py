import re
from pathlib import Path

from localcache.testing.envtest import K8S_VERSION, REPO_ROOT


def test_harness_version_matches_the_go_module_that_builds_the_binaries() -> None:
    go_mod = (REPO_ROOT / "hack" / "envtest" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s.io/kubernetes v(\S+)$", go_mod, re.M)
    assert pinned, "hack/envtest/go.mod must require k8s.io/kubernetes"
    assert pinned.group(1) == K8S_VERSION
    staging = re.findall(r"^\s*(k8s.io/\S+) => \S+ v0\.(\S+)$", go_mod, re.M)
    assert staging, "every staging module needs a replace directive"
    assert {v for _, v in staging} == {K8S_VERSION.split(".", 1)[1]}, staging


def test_assets_dir_names_the_fix_when_binaries_are_missing(tmp_path: Path, monkeypatch) -> None:
    from localcache.testing.envtest import EnvtestError, assets_dir

    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    try:
        assets_dir()
    except EnvtestError as exc:
        assert "make envtest" in str(exc) and str(tmp_path) in str(exc)
    else:
        raise AssertionError("an empty KUBEBUILDER_ASSETS must be an error")
