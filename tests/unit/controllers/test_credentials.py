"""Credential precedence and errors: CSC, storage.key, ServiceAccount secrets; never values."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from localcache.api import ClusterStorageContainer, LocalModelInfo
from localcache.config import CredentialsConfig, parse_config
from localcache.controllers.credentials import (
    CredentialError,
    resolve_credentials,
    select_storage_container,
)

NS = "jobs"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class Reader:
    def __init__(
        self, secrets: dict[str, dict[str, Any]] | None = None, sas: dict[str, dict[str, Any]] | None = None
    ):
        self.secrets = secrets or {}
        self.sas = sas or {}
        self.reads: list[tuple[str, str]] = []

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append((namespace, name))
        assert namespace == NS  # only the job namespace, ever
        secret = self.secrets.get(name)
        if secret is None:
            return None
        return {**secret, "metadata": {"name": name, "namespace": namespace, **secret.get("metadata", {})}}

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert namespace == NS
        sa = self.sas.get(name)
        return {"metadata": {"name": name}, **sa} if sa is not None else None


def info(**kw: Any) -> LocalModelInfo:
    return LocalModelInfo(source_model_uri=kw.pop("uri", "hf://org/m"), model_name="m", **kw)


CFG = CredentialsConfig()


def env_map(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


async def test_no_credentials_named_means_nothing_injected_and_nothing_read() -> None:
    reader = Reader()
    out = await resolve_credentials(info(), CFG, NS, reader)
    assert out.env == [] and out.volumes == [] and reader.reads == []


async def test_storage_key_hf_entry_from_the_guide() -> None:
    reader = Reader({"storage-config": {"data": {"hf": b64(json.dumps({"type": "hf", "token": "hf_abc"}))}}})
    out = await resolve_credentials(info(storage={"key": "hf"}), CFG, NS, reader)
    assert out.env == [
        {"name": "STORAGE_CONFIG", "valueFrom": {"secretKeyRef": {"name": "storage-config", "key": "hf"}}}
    ]
    assert "hf_abc" not in json.dumps(out.__dict__)


@pytest.mark.parametrize("kind", ["s3", "gcs", "https", "hf"])
async def test_storage_key_types_and_overrides(kind: str) -> None:
    reader = Reader({"custom-secret": {"data": {"k": b64(json.dumps({"type": kind}))}}})
    cfg = parse_config({"credentials": json.dumps({"storageSpecSecretName": "custom-secret"})}).credentials
    out = await resolve_credentials(
        info(storage={"key": "k", "parameters": {"bucket": "b", "region": "eu"}}), cfg, NS, reader
    )
    env = env_map(out.env)
    assert env["STORAGE_CONFIG"] == {"secretKeyRef": {"name": "custom-secret", "key": "k"}}
    assert json.loads(env["STORAGE_OVERRIDE_CONFIG"]) == {"bucket": "b", "region": "eu"}


async def test_storage_key_errors_name_the_secret_and_key() -> None:
    with pytest.raises(CredentialError) as missing:
        await resolve_credentials(info(storage={"key": "hf"}), CFG, NS, Reader())
    assert missing.value.reason == "StorageSecretNotFound"
    assert "jobs/storage-config" in missing.value.message and "'hf'" in missing.value.message

    reader = Reader({"storage-config": {"data": {"other": b64("{}")}}})
    with pytest.raises(CredentialError) as no_key:
        await resolve_credentials(info(storage={"key": "hf"}), CFG, NS, reader)
    assert no_key.value.reason == "StorageKeyNotFound"
    assert "storage key 'hf' not found in storage secret jobs/storage-config" in no_key.value.message

    reader = Reader(
        {"storage-config": {"data": {"k": b64(json.dumps({"type": "azure", "key": "SECRETVAL"}))}}}
    )
    with pytest.raises(CredentialError) as bad_type:
        await resolve_credentials(info(storage={"key": "k"}), CFG, NS, reader)
    assert "'azure'" in bad_type.value.message and "SECRETVAL" not in bad_type.value.message

    reader = Reader({"storage-config": {"data": {"k": b64("not json SECRETVAL")}}})
    with pytest.raises(CredentialError) as not_json:
        await resolve_credentials(info(storage={"key": "k"}), CFG, NS, reader)
    assert "not a JSON object" in not_json.value.message and "SECRETVAL" not in not_json.value.message


async def test_parameters_type_wins_over_the_entry() -> None:
    reader = Reader({"storage-config": {"data": {"k": b64("{}")}}})
    out = await resolve_credentials(info(storage={"key": "k", "parameters": {"type": "s3"}}), CFG, NS, reader)
    assert env_map(out.env)["STORAGE_OVERRIDE_CONFIG"] == '{"type": "s3"}'


async def test_parameters_without_key_are_honoured_and_need_a_type() -> None:
    out = await resolve_credentials(info(storage={"parameters": {"type": "https"}}), CFG, NS, Reader())
    assert env_map(out.env) == {"STORAGE_OVERRIDE_CONFIG": '{"type": "https"}'}
    with pytest.raises(CredentialError, match="need a type"):
        await resolve_credentials(info(storage={"parameters": {"region": "x"}}), CFG, NS, Reader())


async def test_service_account_secrets_hf_s3_gcs() -> None:
    reader = Reader(
        secrets={
            "hf": {"data": {"HF_TOKEN": b64("hf_x")}},
            "s3": {
                "data": {"AWS_ACCESS_KEY_ID": b64("a"), "AWS_SECRET_ACCESS_KEY": b64("b")},
                "metadata": {"annotations": {"serving.kserve.io/s3-endpoint": "minio:9000"}},
            },
            "gcs": {"data": {"gcloud-application-credentials.json": b64("{}")}},
            "unrelated": {"data": {"foo": b64("bar")}},
        },
        sas={
            "downloader": {
                "secrets": [{"name": "hf"}, {"name": "s3"}, {"name": "gcs"}, {"name": "unrelated"}]
            }
        },
    )
    out = await resolve_credentials(info(service_account_name="downloader"), CFG, NS, reader)
    env = env_map(out.env)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["S3_ENDPOINT"] == "minio:9000"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/gcloud-application-credentials.json"
    assert out.volumes == [{"name": out.volume_mounts[0]["name"], "secret": {"secretName": "gcs"}}]
    assert out.volume_mounts[0]["mountPath"] == "/var/secrets" and out.volume_mounts[0]["readOnly"] is True
    assert out.service_account_name == "downloader"
    for value in ("hf_x", b64("hf_x"), b64("a"), b64("b")):
        assert value not in json.dumps(out.__dict__)


async def test_kserve_s3_key_names_from_config() -> None:
    reader = Reader(
        secrets={"s3": {"data": {"awsAccessKeyID": b64("a"), "awsSecretAccessKey": b64("b")}}},
        sas={"sa": {"secrets": [{"name": "s3"}]}},
    )
    cfg = parse_config(
        {"credentials": json.dumps({"s3": {"s3Endpoint": "s3.local", "s3UseHttps": "0"}})}
    ).credentials
    env = env_map((await resolve_credentials(info(service_account_name="sa"), cfg, NS, reader)).env)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "awsAccessKeyID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "awsSecretAccessKey"}}
    assert env["S3_ENDPOINT"] == "s3.local" and env["S3_USE_HTTPS"] == "0"


async def test_service_account_errors() -> None:
    with pytest.raises(CredentialError) as no_sa:
        await resolve_credentials(info(service_account_name="ghost"), CFG, NS, Reader())
    assert no_sa.value.reason == "ServiceAccountNotFound" and "jobs/ghost" in no_sa.value.message

    reader = Reader(sas={"sa": {"secrets": [{"name": "gone"}]}})
    with pytest.raises(CredentialError) as no_secret:
        await resolve_credentials(info(service_account_name="sa"), CFG, NS, reader)
    assert no_secret.value.reason == "SecretNotFound" and "jobs/gone" in no_secret.value.message

    reader = Reader(
        secrets={"s3": {"data": {"AWS_SECRET_ACCESS_KEY": b64("x")}}},
        sas={"sa": {"secrets": [{"name": "s3"}]}},
    )
    with pytest.raises(CredentialError) as half:
        await resolve_credentials(info(service_account_name="sa"), CFG, NS, reader)
    assert "'AWS_ACCESS_KEY_ID'" in half.value.message and "jobs/s3" in half.value.message


async def test_default_service_account_is_optional() -> None:
    out = await resolve_credentials(info(storage={"parameters": {"type": "hf"}}), CFG, NS, Reader())
    assert out.service_account_name is None


def csc(
    name: str,
    *,
    prefix: str = "",
    regex: str = "",
    workload: str = "localModelDownloadJob",
    disabled: bool = False,
) -> ClusterStorageContainer:
    fmt = {"prefix": prefix} if prefix else {"regex": regex}
    return ClusterStorageContainer.from_dict(
        {
            "metadata": {"name": name},
            "spec": {
                "container": {"name": name, "image": "i"},
                "supportedUriFormats": [fmt],
                "workloadType": workload,
            },
            "disabled": disabled,
        }
    )


def test_storage_container_selection() -> None:
    containers = [
        csc("b-hf", prefix="hf://"),
        csc("a-init", prefix="hf://", workload="initContainer"),
        csc("a-off", prefix="hf://", disabled=True),
        csc("c-regex", regex=r"^s3://models-\d+/"),
    ]
    assert select_storage_container(containers, "hf://org/m").name == "b-hf"  # type: ignore[union-attr]
    assert select_storage_container(containers, "s3://models-42/x").name == "c-regex"  # type: ignore[union-attr]
    assert select_storage_container(containers, "s3://other/x") is None
    assert (
        select_storage_container([csc("z", prefix="hf://"), csc("y", prefix="hf://")], "hf://a").name == "y"
    )  # type: ignore[union-attr]
