"""Shared model machinery: camelCase wire names, lossless round trips, object metadata.

Every model accepts both the JSON name (``sourceModelUri``) and the Python name
(``source_model_uri``), keeps fields it does not know (``extra="allow"``) and dumps with
``exclude_none`` so that parse → dump returns what the API server sent, byte for byte in JSON terms.
Optional fields therefore default to ``None`` rather than to an empty value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.functional_validators import BeforeValidator

__all__ = [
    "ApiModel",
    "CrdInfo",
    "KubeObject",
    "KubeTime",
    "ObjectMeta",
    "OwnerReference",
    "format_time",
    "parse_time",
]


def parse_time(value: Any) -> datetime:
    """An RFC 3339 timestamp as the API server writes it, as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"invalid timestamp {value!r}: expected RFC 3339, e.g. 2026-01-02T03:04:05Z"
            ) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"invalid timestamp {value!r}: expected an RFC 3339 string")


def format_time(value: datetime) -> str:
    """Second precision, ``Z`` suffix: the form ``metav1.Time`` serialises to."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


KubeTime = Annotated[
    datetime,
    BeforeValidator(parse_time),
    PlainSerializer(format_time, return_type=str, when_used="json-unless-none"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A ``metav1.Time``: parsed to an aware datetime, written back as ``2026-01-02T03:04:05Z``."""


class ApiModel(BaseModel):
    """Base of every wire model; see the module docstring for the round-trip contract."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
        validate_assignment=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to send to the API server (camelCase keys, no nulls, unknown fields kept)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Parse an API object as the server sends it (a camelCase dict, e.g. from CustomObjectsApi)."""
        return cls.model_validate(data)


class OwnerReference(ApiModel):
    """The owner of an object, for garbage collection."""

    api_version: str = Field(description="API version of the referent.")
    kind: str = Field(description="Kind of the referent.")
    name: str = Field(description="Name of the referent.")
    uid: str = Field(description="UID of the referent.")
    controller: bool | None = Field(
        default=None, description="True if the referent is the managing controller."
    )
    block_owner_deletion: bool | None = Field(
        default=None,
        description="If true, the owner cannot be deleted until this reference is removed.",
    )


class ObjectMeta(ApiModel):
    """The subset of ``metav1.ObjectMeta`` the controllers read and write; the rest is kept as is.

    Timestamps stay strings here: the controllers never compute with them and must not reformat them.
    """

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    finalizers: list[str] | None = None
    owner_references: list[OwnerReference] | None = None


class CrdInfo:
    """How a kind is served: read by ``crdgen`` and by clients that build REST paths."""

    def __init__(
        self,
        *,
        group: str,
        version: str,
        kind: str,
        plural: str,
        singular: str,
        namespaced: bool,
        status_subresource: bool,
        short_names: tuple[str, ...] = (),
        categories: tuple[str, ...] = (),
        printer_columns: tuple[dict[str, Any], ...] = (),
        name_max_length: int | None = None,
        selectable_fields: tuple[str, ...] = (),
    ) -> None:
        self.group = group
        self.version = version
        self.kind = kind
        self.plural = plural
        self.singular = singular
        self.namespaced = namespaced
        self.status_subresource = status_subresource
        self.short_names = short_names
        self.categories = categories
        self.printer_columns = printer_columns
        self.name_max_length = name_max_length
        self.selectable_fields = selectable_fields  # JSON paths a field selector may name

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    def path(
        self, name: str | None = None, namespace: str | None = None, subresource: str | None = None
    ) -> str:
        """The REST path of the collection, or of one object (and subresource)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


class KubeObject(ApiModel):
    """A top-level API object. Subclasses set ``CRD`` and default ``apiVersion``/``kind``."""

    CRD: ClassVar[CrdInfo]

    api_version: str = Field(
        description="APIVersion defines the versioned schema of this representation of an object."
    )
    kind: str = Field(
        description="Kind is a string value representing the REST resource this object represents."
    )
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str:
        """The namespace, or "" for cluster-scoped objects."""
        return self.metadata.namespace or ""

    @property
    def generation(self) -> int | None:
        return self.metadata.generation

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels or {}

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.annotations or {}

    @property
    def is_deleting(self) -> bool:
        return self.metadata.deletion_timestamp is not None
