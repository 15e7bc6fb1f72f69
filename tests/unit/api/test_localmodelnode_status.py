"""The status fields added over KServe for the agent: capacity and per-model reason, times, attempt, bytes.

Wire names are camelCase, every field is optional (a KServe-written status still parses), and the
schema the CRD generator emits carries them (so the apiserver does not prune them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from localcache.api import LocalModelCache, LocalModelNode
from localcache.api.conditions import ConditionType
from localcache.api.crdgen import crd_for
from localcache.api.localmodelcache import NodeStatusDetail
from localcache.api.localmodelnode import DownloadFailureReason, ModelStatusDetail, NodeCapacity
from localcache.storage import FailureReason

DETAIL_WIRE = {
    "status": "ModelDownloadError",
    "lastTransitionTime": "2026-03-01T12:00:00Z",
    "storageKey": "0123456789abcdef",
    "bytes": 10,
    "totalBytes": 100,
    "message": "AuthFailed: 401 (Job j, attempt 2; next attempt at 2026-03-01T12:02:00Z)",
    "reason": "AuthFailed",
    "jobName": "m1-node-a-x",
    "startTime": "2026-03-01T11:59:00Z",
    "attempt": 2,
    "nextAttemptTime": "2026-03-01T12:02:00Z",
}


def node_doc(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNode",
        "metadata": {"name": "node-a"},
        "spec": {"localModels": [{"sourceModelUri": "hf://o/m", "modelName": "m1"}]},
        "status": status,
    }


def test_detail_round_trips_in_camel_case() -> None:
    detail = ModelStatusDetail.model_validate(DETAIL_WIRE)
    assert detail.reason == DownloadFailureReason.AUTH
    assert detail.next_attempt_time == datetime(2026, 3, 1, 12, 2, tzinfo=UTC)
    assert detail.attempt == 2 and detail.total_bytes == 100
    assert detail.to_dict() == DETAIL_WIRE


def test_capacity_round_trips_and_is_what_node_groups_read() -> None:
    wire = {"totalBytes": 1000, "usedBytes": 400, "availableBytes": 550}
    lmn = LocalModelNode.model_validate(node_doc(capacity=wire, modelStatus={"m1": "ModelDownloaded"}))
    assert lmn.status is not None and lmn.status.capacity == NodeCapacity(
        total_bytes=1000, used_bytes=400, available_bytes=550
    )
    assert lmn.to_dict()["status"]["capacity"] == wire


def test_kserve_status_without_the_new_fields_still_parses() -> None:
    lmn = LocalModelNode.model_validate(node_doc(modelStatus={"m1": "ModelDownloading"}))
    assert lmn.status is not None and lmn.status.capacity is None
    assert "capacity" not in lmn.to_dict()["status"]
    assert ModelStatusDetail.model_validate({"status": "ModelDownloaded"}).to_dict() == {
        "status": "ModelDownloaded"
    }


@pytest.mark.parametrize(
    ("field", "value"), [("bytes", -1), ("totalBytes", -1), ("attempt", 0), ("startTime", "yesterday")]
)
def test_bad_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        ModelStatusDetail.model_validate({field: value})
    assert field in str(err.value) or field.replace("T", "_t") in str(err.value)


def test_capacity_rejects_negative_bytes() -> None:
    with pytest.raises(ValidationError, match=r"usedBytes|used_bytes"):
        NodeCapacity.model_validate({"usedBytes": -5})


def test_every_download_program_reason_is_a_known_value() -> None:
    known = {r.value for r in DownloadFailureReason}
    assert {r.value for r in FailureReason} <= known
    for agent_reason in ("MarkerMissing", "StorageSecretNotFound", "HostPathMismatch", "NodeGroupNotFound"):
        assert agent_reason in known


def test_cache_node_detail_carries_the_same_fields() -> None:
    """The cache controller copies these from the node's modelStatusDetails by wire name."""
    shared = {"bytes", "totalBytes", "message", "reason", "startTime", "completionTime", "attempt"}
    shared |= {"nextAttemptTime", "lastTransitionTime"}
    node_fields = {f.alias or n for n, f in ModelStatusDetail.model_fields.items()}
    cache_fields = {f.alias or n for n, f in NodeStatusDetail.model_fields.items()}
    assert shared <= node_fields and shared <= cache_fields
    wire = {k: v for k, v in DETAIL_WIRE.items() if k in shared}
    wire["completionTime"] = "2026-03-01T12:05:00Z"
    assert NodeStatusDetail.model_validate(wire).to_dict() == wire


def schema(model: Any) -> dict[str, Any]:
    return crd_for(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_crd_schemas_carry_the_new_fields() -> None:
    node_status = schema(LocalModelNode)["properties"]["status"]["properties"]
    detail = node_status["modelStatusDetails"]["additionalProperties"]["properties"]
    for name in ("reason", "startTime", "completionTime", "attempt", "nextAttemptTime", "totalBytes"):
        assert name in detail and detail[name].get("description")
    assert set(node_status["capacity"]["properties"]) == {"totalBytes", "usedBytes", "availableBytes"}
    cache_detail = schema(LocalModelCache)["properties"]["status"]["properties"]["nodeStatusDetails"]
    assert "reason" in cache_detail["additionalProperties"]["properties"]


def test_storage_ready_condition_type() -> None:
    assert ConditionType.STORAGE_READY == "StorageReady"
