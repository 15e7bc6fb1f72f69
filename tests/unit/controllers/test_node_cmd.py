"""cmd/agent.py: flag defaults from the DaemonSet's downward-API env, and option validation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from localcache.controllers.node import AgentOptions

AGENT = Path(__file__).resolve().parents[3] / "cmd" / "agent.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("localcache_cmd_agent", AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_come_from_the_pod_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-node-7")
    monkeypatch.setenv("POD_NAMESPACE", "kserve-system")
    monkeypatch.delenv("LOCALCACHE_MODELS_HOST_PATH", raising=False)
    args = load().parse_args([])
    assert args.node_name == "gpu-node-7"
    assert args.config_namespace == "kserve-system"
    assert args.models_root == "/mnt/models" and args.host_path == "/mnt/models"
    assert args.health_probe_bind_address == ":8081" and args.metrics_bind_address == ":8080"
    assert args.kubeconfig is None


def test_config_namespace_falls_back_to_kserve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("NODE_NAME", raising=False)
    args = load().parse_args(["--node-name=n1", "--host-path=/models", "--models-root=/mnt/m"])
    assert args.config_namespace == "kserve" and args.host_path == "/models" and args.models_root == "/mnt/m"


def test_missing_node_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert load().main(["--kubeconfig=/nonexistent"]) == 2
    with pytest.raises(ValueError, match="--node-name or the NODE_NAME env"):
        AgentOptions(node_name="", models_root=Path("/m"), host_path="/m")
    with pytest.raises(ValueError, match="retry"):
        AgentOptions(
            node_name="n", models_root=Path("/m"), host_path="/m", retry_base_seconds=10, retry_max_seconds=5
        )


def test_host_path_from_the_daemonsets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALCACHE_MODELS_HOST_PATH", "/var/lib/models")
    assert load().parse_args([]).host_path == "/var/lib/models"
    assert load().parse_args(["--host-path=/x"]).host_path == "/x"
