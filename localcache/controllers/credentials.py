"""Credentials for a download Job, by reference only: the Job's env names Secrets and keys, never values.

Precedence (reference §6, with the fixes of §9.2-12):

1. a ClusterStorageContainer with ``workloadType: localModelDownloadJob`` that serves the URI: its
   container (and whatever secret references the admin put in it) is used as is; nothing is added;
2. ``storage.key``: ``STORAGE_CONFIG`` from ``secretKeyRef`` to the storage secret (config
   ``credentials.storageSpecSecretName``, default ``storage-config``) and ``STORAGE_OVERRIDE_CONFIG``
   from ``storage.parameters``;
3. otherwise the ServiceAccount's secrets (``serviceAccountName``, or ``default`` when only
   ``storage.parameters`` are given): ``HF_TOKEN``, S3 keys, a GCS credentials file as a secret volume.

Unlike KServe, a missing Secret, key or ServiceAccount is a :class:`CredentialError` (the agent turns
it into ``ModelDownloadError`` naming the Secret and key) instead of a Job that runs unauthenticated
and fails with a bare auth error; ``storage.parameters`` without a key are honoured. Secret values are
read only to learn a storage entry's ``type`` and never leave this module: not in logs, status or
events. Everything is looked up in the job namespace, the only namespace the agent may read Secrets in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from localcache.api import ClusterStorageContainer, LocalModelInfo
from localcache.config import CredentialsConfig
from localcache.runtime import Client, NotFound
from localcache.runtime.resources import SECRETS, Resource

__all__ = [
    "GCS_MOUNT_PATH",
    "STORAGE_TYPES",
    "ClientSecretReader",
    "CredentialError",
    "CredentialInjection",
    "SecretReader",
    "resolve_credentials",
    "select_storage_container",
]

SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)

#: The ``type`` values the download program understands (``localcache.storage.settings``).
STORAGE_TYPES = ("s3", "hf", "gcs", "https", "http")
GCS_MOUNT_PATH = "/var/secrets"
HF_TOKEN_KEY = "HF_TOKEN"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
# KServe's per-secret S3 settings (annotations on the Secret), mapped to the download program's env.
S3_ANNOTATIONS = {
    "serving.kserve.io/s3-endpoint": "S3_ENDPOINT",
    "serving.kserve.io/s3-usehttps": "S3_USE_HTTPS",
    "serving.kserve.io/s3-region": "AWS_REGION",
    "serving.kserve.io/s3-verifyssl": "S3_VERIFY_SSL",
}


class CredentialError(Exception):
    """Credentials named by a cache entry cannot be used; ``message`` names the Secret/key, no values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SecretReader(Protocol):
    """Reads Secrets and ServiceAccounts in the job namespace; None when absent."""

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class ClientSecretReader:
    """Direct GETs (no informer): Secrets are read only when a Job is about to be created, so caching
    every Secret of the namespace in the agent's memory would buy nothing and hold values longer."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(SECRETS, name, namespace)
        except NotFound:
            return None

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(SERVICE_ACCOUNTS, name, namespace)
        except NotFound:
            return None


@dataclass
class CredentialInjection:
    """What to add to the download pod. ``source`` says where it came from (for logs)."""

    source: str = "none"
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    service_account_name: str | None = None

    def add_env(self, name: str, value: str | None = None, *, secret: str = "", key: str = "") -> None:
        self.env = [e for e in self.env if e.get("name") != name]
        if secret:
            self.env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        else:
            self.env.append({"name": name, "value": value or ""})


def select_storage_container(
    containers: Iterable[ClusterStorageContainer], uri: str
) -> ClusterStorageContainer | None:
    """The first (by name, as KServe's LIST order) enabled download-Job container serving ``uri``."""
    for csc in sorted(containers, key=lambda c: c.name):
        if csc.serves_download_jobs(uri):
            return csc
    return None


def _secret_keys(secret: Mapping[str, Any]) -> set[str]:
    return set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())


def _entry_type(secret: Mapping[str, Any], key: str) -> str | None:
    """The ``type`` field of one storage-secret entry (the only value this module ever decodes)."""
    raw = (secret.get("data") or {}).get(key)
    try:
        text = base64.b64decode(raw or "", validate=True).decode() if raw is not None else None
    except (binascii.Error, UnicodeDecodeError):
        return None
    if text is None:
        text = (secret.get("stringData") or {}).get(key)
    try:
        parsed = json.loads(text or "")
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    value = parsed.get("type")
    return str(value).lower() if value is not None else ""


def _describe(info: LocalModelInfo) -> str:
    return f"model {info.status_key}"


async def _from_storage_key(
    info: LocalModelInfo,
    key: str,
    params: Mapping[str, str],
    cfg: CredentialsConfig,
    namespace: str,
    reader: SecretReader,
) -> CredentialInjection:
    name = cfg.storage_spec_secret_name
    secret = await reader.get_secret(namespace, name)
    if secret is None:
        raise CredentialError(
            "StorageSecretNotFound",
            f"{_describe(info)}: storage secret {namespace}/{name} (credentials.storageSpecSecretName) "
            f"not found; it must hold the key {key!r} named by storage.key",
        )
    if key not in _secret_keys(secret):
        raise CredentialError(
            "StorageKeyNotFound",
            f"{_describe(info)}: storage key {key!r} not found in storage secret {namespace}/{name}",
        )
    kind = (params.get("type") or "").lower()
    if not kind:
        entry_type = _entry_type(secret, key)
        if entry_type is None:
            raise CredentialError(
                "StorageConfigInvalid",
                f"{_describe(info)}: key {key!r} of storage secret {namespace}/{name} is not a JSON object",
            )
        kind = entry_type
    if kind not in STORAGE_TYPES:
        raise CredentialError(
            "StorageConfigInvalid",
            f"{_describe(info)}: key {key!r} of storage secret {namespace}/{name} has type {kind!r}; "
            f"expected one of {', '.join(STORAGE_TYPES)} (or set storage.parameters.type)",
        )
    out = CredentialInjection(source=f"storage-secret {namespace}/{name}[{key}]")
    out.add_env("STORAGE_CONFIG", secret=name, key=key)
    if params:
        out.add_env("STORAGE_OVERRIDE_CONFIG", json.dumps(dict(params), sort_keys=True))
    return out


def _gcs_volume_name(secret_name: str) -> str:
    return f"gcs-credentials-{hashlib.sha256(secret_name.encode()).hexdigest()[:10]}"


def _add_secret(
    out: CredentialInjection,
    secret: Mapping[str, Any],
    cfg: CredentialsConfig,
    info: LocalModelInfo,
    where: str,
) -> bool:
    """Add what one ServiceAccount secret provides; False when it carries nothing we use."""
    meta = secret.get("metadata") or {}
    name = meta.get("name") or ""
    keys = _secret_keys(secret)
    used = False
    s3 = cfg.s3
    secret_key = next((k for k in (s3.s3_secret_access_key_name, AWS_SECRET_ACCESS_KEY) if k in keys), None)
    if secret_key is not None:
        id_key = s3.s3_access_key_id_name if secret_key == s3.s3_secret_access_key_name else AWS_ACCESS_KEY_ID
        if id_key not in keys:
            raise CredentialError(
                "SecretKeyNotFound",
                f"{_describe(info)}: secret {where}/{name} has S3 key {secret_key!r} but not {id_key!r}",
            )
        out.add_env(AWS_ACCESS_KEY_ID, secret=name, key=id_key)
        out.add_env(AWS_SECRET_ACCESS_KEY, secret=name, key=secret_key)
        settings = {
            "S3_ENDPOINT": s3.s3_endpoint,
            "S3_USE_HTTPS": s3.s3_use_https,
            "AWS_REGION": s3.s3_region,
            "S3_VERIFY_SSL": s3.s3_verify_ssl,
        }
        annotations = meta.get("annotations") or {}
        for annotation, env_name in S3_ANNOTATIONS.items():
            if annotations.get(annotation):
                settings[env_name] = annotations[annotation]
        for env_name, value in settings.items():
            if value:
                out.add_env(env_name, str(value))
        used = True
    gcs_file = cfg.gcs.gcs_credential_file_name
    if gcs_file in keys:
        volume = _gcs_volume_name(name)
        out.volumes.append({"name": volume, "secret": {"secretName": name}})
        out.volume_mounts.append({"name": volume, "mountPath": GCS_MOUNT_PATH, "readOnly": True})
        out.add_env("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_MOUNT_PATH}/{gcs_file}")
        used = True
    if HF_TOKEN_KEY in keys:
        out.add_env(HF_TOKEN_KEY, secret=name, key=HF_TOKEN_KEY)
        used = True
    return used


async def _from_service_account(
    info: LocalModelInfo, cfg: CredentialsConfig, namespace: str, reader: SecretReader
) -> CredentialInjection:
    named = info.service_account_name or ""
    sa_name = named or "default"
    out = CredentialInjection(source=f"serviceaccount {namespace}/{sa_name}")
    sa = await reader.get_service_account(namespace, sa_name)
    if sa is None:
        if named:
            raise CredentialError(
                "ServiceAccountNotFound",
                f"{_describe(info)}: service account {namespace}/{named} (serviceAccountName) not found "
                "in the job namespace",
            )
        return CredentialInjection()
    for ref in sa.get("secrets") or []:
        secret_name = (ref or {}).get("name")
        if not secret_name:
            continue
        secret = await reader.get_secret(namespace, secret_name)
        if secret is None:
            raise CredentialError(
                "SecretNotFound",
                f"{_describe(info)}: secret {namespace}/{secret_name} listed by service account "
                f"{namespace}/{sa_name} not found",
            )
        _add_secret(out, secret, cfg, info, namespace)
    if named:
        # §9.2-12: run under the named account, so IRSA / Workload Identity bindings apply too.
        out.service_account_name = named
    return out


async def resolve_credentials(
    info: LocalModelInfo,
    cfg: CredentialsConfig,
    namespace: str,
    reader: SecretReader,
) -> CredentialInjection:
    """The env, volumes and account for ``info``'s download Job (the CSC case is handled by the caller).

    Raises :class:`CredentialError` when something the entry names is missing or unusable.
    """
    storage = info.storage
    params = dict(storage.parameters or {}) if storage is not None else {}
    key = storage.key if storage is not None else None
    if key:
        return await _from_storage_key(info, key, params, cfg, namespace, reader)
    if params:
        kind = (params.get("type") or "").lower()
        if kind not in STORAGE_TYPES:
            raise CredentialError(
                "StorageConfigInvalid",
                f"{_describe(info)}: storage.parameters without storage.key need a type, one of "
                f"{', '.join(STORAGE_TYPES)}; got {kind!r}",
            )
    if not info.service_account_name and storage is None:
        return CredentialInjection()
    out = await _from_service_account(info, cfg, namespace, reader)
    if params:
        out.add_env("STORAGE_OVERRIDE_CONFIG", json.dumps(params, sort_keys=True))
    return out
