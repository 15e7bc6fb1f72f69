from __future__ import annotations

import pytest

from localcache.api import (
    JobStatus,
    ModelStatus,
    NodeStatus,
    copies_from_node_status,
    model_status_from_job,
    node_status_from_model_status,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, ModelStatus.DOWNLOAD_PENDING),
        ({}, ModelStatus.DOWNLOAD_PENDING),
        ({"active": 1}, ModelStatus.DOWNLOAD_PENDING),
        ({"active": 1, "ready": 1}, ModelStatus.DOWNLOADING),
        ({"active": 1, "failed": 1}, ModelStatus.DOWNLOADING),  # retrying inside backoffLimit
        ({"failed": 1}, ModelStatus.DOWNLOAD_ERROR),
        ({"succeeded": 1}, ModelStatus.DOWNLOADED),
        ({"succeeded": 1, "failed": 2}, ModelStatus.DOWNLOADED),
        ({"active": 1, "conditions": [{"type": "Failed", "status": "True"}]}, ModelStatus.DOWNLOAD_ERROR),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, ModelStatus.DOWNLOADED),
        ({"active": 1, "conditions": [{"type": "Failed", "status": "False"}]}, ModelStatus.DOWNLOAD_PENDING),
    ],
)
def test_model_status_from_job(status: dict | None, expected: ModelStatus) -> None:
    job_status = None if status is None else JobStatus.model_validate(status)
    assert model_status_from_job(job_status) is expected


@pytest.mark.parametrize(
    ("model", "node"),
    [
        (None, NodeStatus.DOWNLOAD_PENDING),
        ("", NodeStatus.DOWNLOAD_PENDING),
        ("ModelDownloadPending", NodeStatus.DOWNLOAD_PENDING),
        ("ModelDownloading", NodeStatus.DOWNLOADING),
        ("ModelDownloaded", NodeStatus.DOWNLOADED),
        ("ModelDownloadError", NodeStatus.DOWNLOAD_ERROR),
    ],
)
def test_node_status_from_model_status(model: str | None, node: NodeStatus) -> None:
    assert node_status_from_model_status(model) is node


def test_copies_count_every_listed_node() -> None:
    copies = copies_from_node_status(
        {
            "a": NodeStatus.DOWNLOADED,
            "b": "NodeDownloadError",
            "c": NodeStatus.NOT_READY,
            "d": "NodeDownloaded",
        }
    )
    assert (copies.available, copies.total, copies.failed) == (2, 4, 1)
    assert copies_from_node_status({}).to_dict() == {"available": 0, "total": 0, "failed": 0}
