"""Standard ``status.conditions`` (the ``metav1.Condition`` shape), added over KServe's status.

KServe's cache status has no conditions, so ``kubectl wait --for=condition=Ready`` and generic tooling
cannot follow it. The helpers keep ``lastTransitionTime`` stable unless the status really flips, so a
reconciler can call :func:`set_condition` on every pass and only write when something changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from localcache.api.base import ApiModel, KubeTime

__all__ = [
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "find_condition",
    "is_condition_true",
    "remove_condition",
    "set_condition",
]


class ConditionStatus(StrEnum):
    """The status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType:
    """Condition types this project writes (other types are kept untouched)."""

    READY = "Ready"
    """Caches: every selected node holds the model. Nodes: every listed model is on disk."""
    DOWNLOADING = "Downloading"
    """At least one download is pending or running."""
    DEGRADED = "Degraded"
    """At least one download failed or a node is not ready."""
    STORAGE_READY = "StorageReady"
    """Nodes: the agent's pre-flight passed (its host path is its node groups' PV path and the models
    directory is writable); the message carries the disk's used and available bytes."""


class Condition(ApiModel):
    """One aspect of the object's state, in the standard Kubernetes condition shape."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready.", max_length=316)
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str | None = Field(
        default=None,
        description="A programmatic identifier (CamelCase) for the last transition.",
        max_length=1024,
    )
    message: str | None = Field(
        default=None,
        description="A human readable message with details about the last transition.",
        max_length=32768,
    )
    last_transition_time: KubeTime | None = Field(
        default=None, description="Last time the condition's status changed."
    )
    observed_generation: int | None = Field(
        default=None,
        description="The .metadata.generation the condition was computed from; older than the object's "
        "generation means the condition is out of date.",
        ge=0,
    )


def find_condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    for condition in conditions or ():
        if condition.type == type_:
            return condition
    return None


def is_condition_true(conditions: list[Condition] | None, type_: str) -> bool:
    condition = find_condition(conditions, type_)
    return condition is not None and condition.status == ConditionStatus.TRUE


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: ConditionStatus | bool | str,
    *,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> tuple[list[Condition], bool]:
    """Return the list with ``type_`` set, and whether anything changed.

    ``lastTransitionTime`` moves only when ``status`` changes; reason, message and generation are
    updated in place. The input list is not modified.
    """
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    status = ConditionStatus(status)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    result = [c.model_copy() for c in conditions or ()]
    existing = find_condition(result, type_)
    if existing is None:
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=observed_generation,
            )
        )
        return result, True
    changed = False
    if existing.status != status:
        existing.status = status
        existing.last_transition_time = now
        changed = True
    elif existing.last_transition_time is None:
        existing.last_transition_time = now
        changed = True
    for attr, value in (
        ("reason", reason),
        ("message", message),
        ("observed_generation", observed_generation),
    ):
        if getattr(existing, attr) != value:
            setattr(existing, attr, value)
            changed = True
    return result, changed


def remove_condition(conditions: list[Condition] | None, type_: str) -> tuple[list[Condition], bool]:
    result = [c for c in conditions or () if c.type != type_]
    return result, len(result) != len(conditions or ())
