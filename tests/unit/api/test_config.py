from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from localcache.api import Quantity
from localcache.config import ConfigError, config_namespace, parse_config

SEED_CONFIG = (
    Path(os.environ.get("LOCALCACHE_SEED_DIR", Path(__file__).resolve().parents[4] / "shared" / "seed"))
    / "examples"
    / "01-inferenceservice-config-localmodel.yaml"
)
SAMPLE_CONFIG = (
    Path(__file__).resolve().parents[3] / "manifests" / "base" / "config" / "inferenceservice-config.yaml"
)


def test_guide_configmap_parses() -> None:
    if not SEED_CONFIG.exists():
        pytest.fail(f"{SEED_CONFIG} missing; set LOCALCACHE_SEED_DIR")
    data = yaml.safe_load(SEED_CONFIG.read_text())["data"]
    config = parse_config(data)
    local = config.local_model
    assert local.enabled is True
    assert local.job_namespace == "kserve-localmodel-jobs"
    assert local.fs_group == 1000
    assert local.default_job_image == "kserve/storage-initializer:latest"
    assert local.local_model_agent_memory_limit == Quantity("300Mi")
    # absent keys take KServe's shipped values
    assert local.job_ttl_seconds_after_finished == 3600
    assert local.reconcilation_frequency_in_secs == 60
    assert local.disable_volume_management is False
    assert config.storage_initializer.job_image == "kserve/storage-initializer:latest"
    assert config.credentials.storage_spec_secret_name == "storage-config"


def test_sample_configmap_in_manifests_parses() -> None:
    config = parse_config(yaml.safe_load(SAMPLE_CONFIG.read_text())["data"])
    assert config.local_model.enabled
    assert config.local_model.job_namespace == "kserve-localmodel-jobs"
    assert config.credentials.s3.s3_secret_access_key_name == "AWS_SECRET_ACCESS_KEY"
    assert config.storage_initializer.memory_limit == Quantity("1Gi")


def test_misspelt_key_is_kserves() -> None:
    config = parse_config(
        {"localModel": json.dumps({"reconcilationFrequencyInSecs": 15, "jobTTLSecondsAfterFinished": 5})}
    )
    assert config.local_model.reconcilation_frequency_in_secs == 15
    assert config.local_model.job_ttl_seconds_after_finished == 5
    # the correctly spelt key is not KServe's and is ignored (kept as an unknown key)
    config = parse_config({"localModel": json.dumps({"reconciliationFrequencyInSecs": 15})})
    assert config.local_model.reconcilation_frequency_in_secs == 60


def test_missing_sections_give_defaults() -> None:
    config = parse_config(None)
    assert config.local_model.enabled is False
    assert config.local_model.job_namespace == "kserve-localmodel-jobs"
    assert config.local_model.fs_group is None
    assert config.credentials.s3.s3_access_key_id_name == "awsAccessKeyID"
    assert config.credentials.gcs.gcs_credential_file_name == "gcloud-application-credentials.json"
    assert parse_config({"localModel": "  "}).local_model.enabled is False


def test_unknown_keys_are_ignored() -> None:
    config = parse_config(
        {"localModel": json.dumps({"enabled": True, "somethingNew": [1]}), "other": "{bad json"}
    )
    assert config.local_model.enabled is True


@pytest.mark.parametrize(
    ("key", "raw", "field", "fragment"),
    [
        ("localModel", '{"jobNamespace": ""}', "localModel.jobNamespace", "must not be empty"),
        (
            "localModel",
            '{"jobNamespace": "Not_A_Namespace"}',
            "localModel.jobNamespace",
            "not a valid namespace",
        ),
        ("localModel", '{"fsGroup": -1}', "localModel.fsGroup", "greater than or equal to 0"),
        (
            "localModel",
            '{"reconcilationFrequencyInSecs": 0}',
            "localModel.reconcilationFrequencyInSecs",
            "greater than 0",
        ),
        (
            "localModel",
            '{"jobTTLSecondsAfterFinished": "soon"}',
            "localModel.jobTTLSecondsAfterFinished",
            "integer",
        ),
        ("localModel", '{"enabled": "perhaps"}', "localModel.enabled", "boolean"),
        (
            "localModel",
            '{"localModelAgentMemoryLimit": "300MB"}',
            "localModel.localModelAgentMemoryLimit",
            "invalid quantity",
        ),
        ("localModel", '{"enabled": true,', "localModel", "invalid JSON at line 1"),
        ("localModel", "[1, 2]", "localModel", "must be a JSON object"),
        (
            "storageInitializer",
            '{"memoryLimit": "lots"}',
            "storageInitializer.memoryLimit",
            "invalid quantity 'lots'",
        ),
        ("storageInitializer", "not json", "storageInitializer", "invalid JSON"),
        ("credentials", '{"s3": {"s3Endpoint": 5}}', "credentials.s3.s3Endpoint", "string"),
    ],
)
def test_bad_config_names_the_key(key: str, raw: str, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({key: raw}, source="ns1/inferenceservice-config")
    error = info.value
    assert error.key == field
    assert fragment in str(error)
    assert str(error).startswith(f"configmap ns1/inferenceservice-config: {field}: ")


def test_empty_quantity_strings_mean_unset() -> None:
    config = parse_config({"storageInitializer": json.dumps({"cpuRequest": "", "memoryLimit": "1Gi"})})
    assert config.storage_initializer.cpu_request is None
    assert config.storage_initializer.job_resources() == {"limits": {"memory": "1Gi"}}


def test_config_namespace_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert config_namespace() == "kserve"
    monkeypatch.setenv("POD_NAMESPACE", "elsewhere")
    assert config_namespace() == "elsewhere"
