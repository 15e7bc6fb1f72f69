"""The ``inferenceservice-config`` ConfigMap, parsed and validated (reference §5).

KServe reads three keys here: ``localModel`` (with the misspelt ``reconcilationFrequencyInSecs``, kept
byte for byte so existing ConfigMaps keep working), ``storageInitializer`` and ``credentials``. KServe
panics on bad JSON in the agent and silently runs with an empty ``jobNamespace``; here every problem is
a :class:`ConfigError` that names the ConfigMap, the key and the field, and the caller decides whether
to keep the previous configuration.

Defaults differ from Go's zero values in one place on purpose: a missing ``jobNamespace`` means the
shipped ``kserve-localmodel-jobs`` (an explicitly empty one is an error), because the zero value only
makes every Job and PVC create fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from localcache.api.constants import (
    DEFAULT_CONFIG_NAMESPACE,
    DEFAULT_JOB_IMAGE,
    DEFAULT_JOB_NAMESPACE,
    INFERENCE_SERVICE_CONFIG_NAME,
)
from localcache.api.quantity import Quantity

__all__ = [
    "KEY_CREDENTIALS",
    "KEY_LOCAL_MODEL",
    "KEY_STORAGE_INITIALIZER",
    "ConfigError",
    "CredentialsConfig",
    "GCSCredentialsConfig",
    "InferenceServiceConfig",
    "LocalModelConfig",
    "S3CredentialsConfig",
    "StorageInitializerConfig",
    "config_namespace",
    "load_config",
    "parse_config",
]

KEY_LOCAL_MODEL = "localModel"
KEY_STORAGE_INITIALIZER = "storageInitializer"
KEY_CREDENTIALS = "credentials"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """A configuration problem, naming the ConfigMap (``source``), the key and the field."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"configmap {source}: {key}: {message}")
        self.source = source
        self.key = key
        self.message = message


def _empty_to_none(value: Any) -> Any:
    return None if value == "" else value


OptionalQuantity = Annotated[Quantity | None, BeforeValidator(_empty_to_none)]


class _ConfigModel(BaseModel):
    """Config sections: camelCase keys, unknown keys ignored but kept (KServe adds keys over time)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
    )


class LocalModelConfig(_ConfigModel):
    """The ``localModel`` key."""

    enabled: bool = False
    """Whether the InferenceService defaulter binds services to caches (the controllers run regardless)."""
    job_namespace: str = DEFAULT_JOB_NAMESPACE
    """Where download Jobs, download PVCs and credential Secrets live."""
    default_job_image: str | None = None
    """Parsed for compatibility; KServe never uses it (the image comes from storageInitializer.image)."""
    fs_group: int | None = Field(default=None, ge=0)
    """The download pod's securityContext.fsGroup; None sets none."""
    job_ttl_seconds_after_finished: int = Field(default=3600, ge=0, alias="jobTTLSecondsAfterFinished")
    reconcilation_frequency_in_secs: int = Field(default=60, gt=0)
    """The agent's resync period. The key's spelling is KServe's."""
    disable_volume_management: bool = False
    """Skip serving PVs/PVCs and consumer tracking (download PV/PVC are still made)."""
    # Seen in the user guide's ConfigMap; used by installers, validated here so typos surface early.
    local_model_agent_image: str | None = None
    local_model_agent_cpu_request: OptionalQuantity = None
    local_model_agent_memory_request: OptionalQuantity = None
    local_model_agent_cpu_limit: OptionalQuantity = None
    local_model_agent_memory_limit: OptionalQuantity = None

    @field_validator("job_namespace")
    @classmethod
    def _namespace_is_dns_label(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty: download Jobs and PVCs need a namespace")
        if len(value) > 63 or not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a valid namespace name (a DNS-1123 label)")
        return value


class StorageInitializerConfig(_ConfigModel):
    """The ``storageInitializer`` key (only what the download Job uses is typed)."""

    image: str | None = None
    cpu_request: OptionalQuantity = None
    cpu_limit: OptionalQuantity = None
    memory_request: OptionalQuantity = None
    memory_limit: OptionalQuantity = None
    cpu_modelcar: OptionalQuantity = None
    memory_modelcar: OptionalQuantity = None
    ca_bundle_config_map_name: str | None = None
    ca_bundle_volume_mount_path: str | None = None
    enable_direct_pvc_volume_mount: bool | None = None
    enable_modelcar: bool | None = None
    uid_modelcar: int | None = None

    @property
    def job_image(self) -> str:
        """The default download image: ``image`` or KServe's fallback."""
        return self.image or DEFAULT_JOB_IMAGE

    def job_resources(self) -> dict[str, dict[str, str]]:
        """Requests and limits for the download container (KServe documents but never applies them)."""
        resources: dict[str, dict[str, str]] = {}
        for section, cpu, memory in (
            ("requests", self.cpu_request, self.memory_request),
            ("limits", self.cpu_limit, self.memory_limit),
        ):
            values = {k: str(v) for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
            if values:
                resources[section] = values
        return resources


class S3CredentialsConfig(_ConfigModel):
    """``credentials.s3``: which Secret keys hold S3 credentials, and endpoint settings."""

    s3_access_key_id_name: str = Field(default="awsAccessKeyID", alias="s3AccessKeyIDName")
    s3_secret_access_key_name: str = Field(default="awsSecretAccessKey", alias="s3SecretAccessKeyName")
    s3_endpoint: str | None = Field(default=None, alias="s3Endpoint")
    s3_use_https: str | None = Field(default=None, alias="s3UseHttps")
    s3_region: str | None = Field(default=None, alias="s3Region")
    s3_verify_ssl: str | None = Field(default=None, alias="s3VerifySSL")
    s3_use_virtual_bucket: str | None = Field(default=None, alias="s3UseVirtualBucket")
    s3_use_anonymous_credential: str | None = Field(default=None, alias="s3UseAnonymousCredential")
    s3_ca_bundle_config_map: str | None = Field(default=None, alias="s3CABundleConfigMap")
    s3_ca_bundle: str | None = Field(default=None, alias="s3CABundle")


class GCSCredentialsConfig(_ConfigModel):
    """``credentials.gcs``."""

    gcs_credential_file_name: str = Field(
        default="gcloud-application-credentials.json", alias="gcsCredentialFileName"
    )


class CredentialsConfig(_ConfigModel):
    """The ``credentials`` key."""

    storage_spec_secret_name: str = "storage-config"
    storage_secret_name_annotation: str = "serving.kserve.io/secretName"
    s3: S3CredentialsConfig = Field(default_factory=S3CredentialsConfig)
    gcs: GCSCredentialsConfig = Field(default_factory=GCSCredentialsConfig)

    @field_validator("storage_spec_secret_name")
    @classmethod
    def _secret_name_not_empty(cls, value: str) -> str:
        return value or "storage-config"


class InferenceServiceConfig(BaseModel):
    """The three keys of ``inferenceservice-config`` this project reads."""

    model_config = ConfigDict(frozen=False)

    local_model: LocalModelConfig = Field(default_factory=LocalModelConfig)
    storage_initializer: StorageInitializerConfig = Field(default_factory=StorageInitializerConfig)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)
    source: str = f"{DEFAULT_CONFIG_NAMESPACE}/{INFERENCE_SERVICE_CONFIG_NAME}"


def _format_location(key: str, loc: tuple[int | str, ...]) -> str:
    parts = [key]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def _parse_section(source: str, key: str, raw: str | None, model: type[_ConfigModel]) -> Any:
    if raw is None or not raw.strip():
        return model()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, key, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(source, key, f"must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = _format_location(key, tuple(first["loc"]))
        message = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(source, location, f"{message}; got {first.get('input')!r}{more}") from None


def parse_config(
    data: Mapping[str, str] | None,
    *,
    source: str = f"{DEFAULT_CONFIG_NAMESPACE}/{INFERENCE_SERVICE_CONFIG_NAME}",
) -> InferenceServiceConfig:
    """Parse a ConfigMap's ``data``; a missing key gives that section's defaults.

    Raises :class:`ConfigError` (never anything else) for bad JSON or bad values.
    """
    data = data or {}
    return InferenceServiceConfig(
        local_model=_parse_section(source, KEY_LOCAL_MODEL, data.get(KEY_LOCAL_MODEL), LocalModelConfig),
        storage_initializer=_parse_section(
            source, KEY_STORAGE_INITIALIZER, data.get(KEY_STORAGE_INITIALIZER), StorageInitializerConfig
        ),
        credentials=_parse_section(source, KEY_CREDENTIALS, data.get(KEY_CREDENTIALS), CredentialsConfig),
        source=source,
    )


def config_namespace() -> str:
    """Where the ConfigMap lives: ``POD_NAMESPACE``, else ``kserve`` (KServe's rule)."""
    return os.environ.get("POD_NAMESPACE") or DEFAULT_CONFIG_NAMESPACE


async def load_config(
    api_client: Any,
    namespace: str | None = None,
    name: str = INFERENCE_SERVICE_CONFIG_NAME,
) -> InferenceServiceConfig:
    """Read and parse the ConfigMap with a kubernetes_asyncio ``ApiClient``.

    A missing ConfigMap is a :class:`ConfigError` (KServe fails the same way); other API errors propagate.
    """
    from kubernetes_asyncio import client as k8s

    namespace = namespace or config_namespace()
    source = f"{namespace}/{name}"
    try:
        configmap = await k8s.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            raise ConfigError(source, "-", "not found") from None
        raise
    return parse_config(configmap.data, source=source)
