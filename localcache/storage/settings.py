"""Credentials, endpoints and tunables from the environment, with KServe's storage-initializer names.

Precedence: STORAGE_CONFIG (the storage secret's JSON, overlaid by STORAGE_OVERRIDE_CONFIG, exactly as
KServe merges them) wins over the plain variables, because the agent only sets it when a cache names
`storage.key` explicitly.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from localcache.storage.errors import DownloadError, FailureReason

MiB = 1024 * 1024
STORAGE_TYPES = ("s3", "hf", "gcs", "https", "http")


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DownloadError(FailureReason.INVALID_REQUEST, f"env {name}={raw!r}: not a number") from None
    if value < minimum:
        raise DownloadError(FailureReason.INVALID_REQUEST, f"env {name}={raw!r}: must be >= {minimum}")
    return value


def _json_env(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        # Never echo the value: it holds secrets.
        raise DownloadError(
            FailureReason.INVALID_REQUEST, f"env {name}: not valid JSON ({exc.msg} at {exc.pos})"
        ) from None
    if not isinstance(data, dict):
        raise DownloadError(FailureReason.INVALID_REQUEST, f"env {name}: must be a JSON object")
    return data


@dataclass
class S3Settings:
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    verify: bool | str = True
    anonymous: bool = False


@dataclass
class Settings:
    """Everything a download needs besides the URI and the destination."""

    hf_token: str | None = None
    hf_endpoint: str | None = None
    s3: S3Settings = field(default_factory=S3Settings)
    gcs_credentials: dict[str, Any] | str | None = None
    gcs_endpoint: str | None = None
    http_headers: dict[str, str] = field(default_factory=dict)
    # 32: where a CDN or a far object store caps each stream, throughput is connections x cap; against
    # boto3's 10 connections that is 0.31x the time in theory, 0.43x measured at a 10 MB/s cap (16 gave
    # 0.69x). The number of requests does not change (bytes / range_size); memory: see WRITE_BLOCK.
    connections: int = 32
    range_size: int = 32 * MiB
    stall_timeout: float = 30.0
    retries: int = 5
    progress_interval: float = 5.0
    fsync: bool = True
    storage_type: str | None = None

    def redacted(self) -> dict[str, Any]:
        """What may be logged: whether secrets are present, never their values."""
        return {
            "hf_token": self.hf_token is not None,
            "hf_endpoint": self.hf_endpoint,
            "s3_endpoint": self.s3.endpoint_url,
            "s3_keys": self.s3.access_key_id is not None,
            "gcs_credentials": self.gcs_credentials is not None,
            "connections": self.connections,
            "range_size": self.range_size,
            "stall_timeout": self.stall_timeout,
            "retries": self.retries,
            "storage_type": self.storage_type,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        s = cls()
        s.hf_token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None
        s.hf_endpoint = env.get("HF_ENDPOINT") or None

        s3 = s.s3
        s3.access_key_id = env.get("AWS_ACCESS_KEY_ID") or None
        s3.secret_access_key = env.get("AWS_SECRET_ACCESS_KEY") or None
        s3.session_token = env.get("AWS_SESSION_TOKEN") or None
        s3.region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        s3.endpoint_url = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or None
        if not s3.endpoint_url and env.get("S3_ENDPOINT"):
            # KServe's S3_ENDPOINT is a host[:port]; S3_USE_HTTPS picks the scheme (default https).
            endpoint = env["S3_ENDPOINT"]
            if "://" not in endpoint:
                scheme = "https" if _truthy(env.get("S3_USE_HTTPS"), True) else "http"
                endpoint = f"{scheme}://{endpoint}"
            s3.endpoint_url = endpoint
        s3.verify = _truthy(env.get("S3_VERIFY_SSL"), True)
        if s3.verify and env.get("AWS_CA_BUNDLE"):
            s3.verify = env["AWS_CA_BUNDLE"]
        s3.anonymous = _truthy(env.get("awsAnonymousCredential"), False)

        if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            s.gcs_credentials = env["GOOGLE_APPLICATION_CREDENTIALS"]
        s.gcs_endpoint = env.get("STORAGE_EMULATOR_HOST") or None

        s.connections = int(_number(env, "LOCALCACHE_CONNECTIONS", s.connections, 1))
        s.range_size = int(_number(env, "LOCALCACHE_RANGE_SIZE", s.range_size, 64 * 1024))
        s.stall_timeout = _number(env, "LOCALCACHE_STALL_TIMEOUT", s.stall_timeout, 0.1)
        s.retries = int(_number(env, "LOCALCACHE_RETRIES", s.retries, 0))
        s.progress_interval = _number(env, "LOCALCACHE_PROGRESS_INTERVAL", s.progress_interval, 0.05)
        s.fsync = _truthy(env.get("LOCALCACHE_FSYNC"), True)

        config = _json_env(env, "STORAGE_CONFIG")
        config.update(_json_env(env, "STORAGE_OVERRIDE_CONFIG"))
        if config:
            s._apply_storage_config(config)
        return s

    def _apply_storage_config(self, config: dict[str, Any]) -> None:
        kind = str(config.get("type", "")).lower()
        if kind not in STORAGE_TYPES:
            raise DownloadError(
                FailureReason.INVALID_REQUEST,
                f"STORAGE_CONFIG field 'type': {kind!r} is not one of {', '.join(STORAGE_TYPES)}",
            )
        self.storage_type = kind
        if kind == "hf":
            token = config.get("token") or config.get("hf_token") or config.get("HF_TOKEN")
            if token:
                self.hf_token = str(token)
            if config.get("endpoint"):
                self.hf_endpoint = str(config["endpoint"])
        elif kind == "s3":
            s3 = self.s3
            s3.access_key_id = config.get("access_key_id", s3.access_key_id)
            s3.secret_access_key = config.get("secret_access_key", s3.secret_access_key)
            s3.session_token = config.get("session_token", s3.session_token)
            s3.endpoint_url = config.get("endpoint_url", s3.endpoint_url)
            s3.region = config.get("region", s3.region)
            if "verify_ssl" in config:
                s3.verify = _truthy(str(config["verify_ssl"]), True)
            if "anonymous" in config:
                s3.anonymous = _truthy(str(config["anonymous"]), False)
        elif kind == "gcs":
            if config.get("base64_service_account"):
                try:
                    raw = base64.b64decode(config["base64_service_account"])
                    self.gcs_credentials = json.loads(raw)
                except (ValueError, json.JSONDecodeError):
                    raise DownloadError(
                        FailureReason.INVALID_REQUEST,
                        "STORAGE_CONFIG field 'base64_service_account': not base64-encoded JSON",
                    ) from None
            elif isinstance(config.get("service_account"), dict):
                self.gcs_credentials = config["service_account"]
            if config.get("endpoint"):
                self.gcs_endpoint = str(config["endpoint"])
        else:  # https / http
            headers = config.get("headers", {})
            if not isinstance(headers, dict):
                raise DownloadError(
                    FailureReason.INVALID_REQUEST, "STORAGE_CONFIG field 'headers': must be an object"
                )
            self.http_headers.update({str(k): str(v) for k, v in headers.items()})
            if config.get("token"):
                self.http_headers["Authorization"] = f"Bearer {config['token']}"
