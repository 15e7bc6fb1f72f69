"""Status mapping shared by the agent and the cache controller: Job → model → node state → copies.

Kept here, once, so the agent's view of a download and the cache's view of a node cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping

from localcache.api.core import JobStatus
from localcache.api.localmodelcache import ModelCopies, NodeStatus
from localcache.api.localmodelnode import ModelStatus

__all__ = ["copies_from_node_status", "model_status_from_job", "node_status_from_model_status"]

_MODEL_TO_NODE = {
    ModelStatus.DOWNLOAD_PENDING: NodeStatus.DOWNLOAD_PENDING,
    ModelStatus.DOWNLOADING: NodeStatus.DOWNLOADING,
    ModelStatus.DOWNLOADED: NodeStatus.DOWNLOADED,
    ModelStatus.DOWNLOAD_ERROR: NodeStatus.DOWNLOAD_ERROR,
}


def model_status_from_job(status: JobStatus | None) -> ModelStatus:
    """A download Job's state as a model state.

    The Job's terminal conditions (``Complete``/``Failed``) win; otherwise KServe's counter order
    succeeded > failed > ready > pending, except that failed pods inside the backoff limit (the Job
    still active, no ``Failed`` condition) count as downloading rather than as an error (§8.B-13).
    """
    if status is None:
        return ModelStatus.DOWNLOAD_PENDING
    if status.condition_true("Complete") or status.condition_true("SuccessCriteriaMet"):
        return ModelStatus.DOWNLOADED
    if status.condition_true("Failed") or status.condition_true("FailureTarget"):
        return ModelStatus.DOWNLOAD_ERROR
    if status.succeeded:
        return ModelStatus.DOWNLOADED
    if status.failed and not status.active:
        return ModelStatus.DOWNLOAD_ERROR
    if status.ready or status.active:
        return ModelStatus.DOWNLOADING if status.ready or status.failed else ModelStatus.DOWNLOAD_PENDING
    return ModelStatus.DOWNLOAD_PENDING


def node_status_from_model_status(status: ModelStatus | str | None) -> NodeStatus:
    """How the cache reports a node given the agent's model state; missing or "" → pending (KServe)."""
    if not status:
        return NodeStatus.DOWNLOAD_PENDING
    return _MODEL_TO_NODE.get(ModelStatus(status), NodeStatus.DOWNLOAD_PENDING)


def copies_from_node_status(node_status: Mapping[str, NodeStatus | str]) -> ModelCopies:
    """``{available, total, failed}`` over every node listed, as KServe counts them."""
    values = [NodeStatus(v) for v in node_status.values()]
    return ModelCopies(
        available=sum(v == NodeStatus.DOWNLOADED for v in values),
        total=len(values),
        failed=sum(v == NodeStatus.DOWNLOAD_ERROR for v in values),
    )
