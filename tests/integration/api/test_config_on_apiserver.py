"""load_config against a real API server: the ConfigMap as KServe stores it, and the failure modes."""

from __future__ import annotations

import json

import pytest
from kubernetes_asyncio import client as k8s

from localcache.config import ConfigError, load_config

pytestmark = pytest.mark.integration


async def put_config(api_client: k8s.ApiClient, namespace: str, data: dict[str, str]) -> None:
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="inferenceservice-config"), data=data)
    await k8s.CoreV1Api(api_client).create_namespaced_config_map(namespace, body)


async def test_loads_the_configmap(api_client: k8s.ApiClient, namespace: str) -> None:
    local = {"enabled": True, "jobNamespace": "jobs-here", "fsGroup": 2000, "reconcilationFrequencyInSecs": 5}
    await put_config(
        api_client, namespace, {"localModel": json.dumps(local), "storageInitializer": '{"image": "img:1"}'}
    )
    config = await load_config(api_client, namespace)
    assert config.local_model.job_namespace == "jobs-here"
    assert config.local_model.fs_group == 2000
    assert config.local_model.reconcilation_frequency_in_secs == 5
    assert config.storage_initializer.job_image == "img:1"
    assert config.source == f"{namespace}/inferenceservice-config"


async def test_namespace_comes_from_pod_namespace(
    api_client: k8s.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_config(api_client, namespace, {"localModel": '{"jobNamespace": "from-env"}'})
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    assert (await load_config(api_client)).local_model.job_namespace == "from-env"


async def test_missing_configmap_is_a_config_error(api_client: k8s.ApiClient, namespace: str) -> None:
    with pytest.raises(ConfigError, match=f"configmap {namespace}/inferenceservice-config: -: not found"):
        await load_config(api_client, namespace)


async def test_bad_json_is_a_config_error(api_client: k8s.ApiClient, namespace: str) -> None:
    await put_config(api_client, namespace, {"localModel": '{"jobNamespace": "x",}'})
    with pytest.raises(ConfigError) as info:
        await load_config(api_client, namespace)
    assert info.value.key == "localModel"
    assert "invalid JSON" in str(info.value)
