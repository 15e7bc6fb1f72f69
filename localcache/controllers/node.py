"""The node agent: the LocalModelNode reconciler that puts this node's models on its disk.

One agent runs per node (a DaemonSet) and works only the LocalModelNode named after its node. What it
does on each pass (reference §3, with the fixes of §9.2):

1. reads the ``inferenceservice-config`` ConfigMap (watched, one object) and its LocalModelNode
   (watched with a ``metadata.name`` field selector; never the whole cluster's);
2. pre-flight (:mod:`~localcache.controllers.hostpath`): its host directory must be the one its node
   groups' PVs point at, and the models directory must be writable. Otherwise a ``StorageReady=False``
   condition names both paths (or the owner and mode bits), and no Job is created;
3. per storage key (entries with the same URI share one folder, one Job and one status): a folder
   counts as downloaded only with a valid completion marker; otherwise the newest download Job of that
   key decides, from its *conditions* (``Complete``/``Failed``), not its pod counts. No Job → create one.
   A failed Job (or one that "succeeded" without writing the marker) is reported as
   ``ModelDownloadError`` with the download program's reason (auth, not found, disk full, checksum,
   timeout), then deleted and replaced after an exponential backoff (1 min doubling to 1 h by default);
   the attempt number rides on the Job so the backoff survives restarts;
4. deletes Jobs whose storage key no spec entry wants (background propagation), and, after a grace
   period, our orphaned folders (:mod:`~localcache.controllers.diskgc`);
5. writes ``status`` (the subresource, one JSON-patch replace: the agent is its only writer) only when
   it changed:
   ``modelStatus`` (KServe's enum), ``modelStatusDetails`` (failure ``reason``, ``attempt``,
   ``nextAttemptTime``, ``startTime``/``completionTime``, ``bytes``/``totalBytes``, Job name,
   transition time and a human-readable message; for a downloaded model only bytes and times),
   ``capacity`` (the disk's total/used/available bytes)
   and conditions ``Ready``, ``Downloading``, ``Degraded`` and ``StorageReady``. Bytes are
   rate-limited: a new figure is published at most every 30 s, and only when it moved by at least 5 %.

Duplicate Jobs are impossible by construction: the one reconcile worker sees the Job informer, and a
Job it created is remembered until the informer shows it (the informer may lag the create by a few
milliseconds, which is why KServe's agent ignores status-only updates and still needed a job-count
guard). Jobs the agent deleted are likewise ignored until the informer drops them.

Idle cost: no loop runs faster than ``reconcilationFrequencyInSecs`` (60 s) unless a download is in
flight (progress every 30 s) or a retry or a folder deletion is due sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from localcache.api import (
    ClusterStorageContainer,
    ConditionType,
    LocalModelInfo,
    LocalModelNode,
    LocalModelNodeGroup,
    LocalModelNodeStatus,
    ModelStatus,
    ModelStatusDetail,
    download_pvc_name,
    label_value,
    model_status_from_job,
    set_condition,
)
from localcache.api.base import format_time, parse_time
from localcache.api.constants import (
    DEFAULT_CONFIG_NAMESPACE,
    INFERENCE_SERVICE_CONFIG_NAME,
    JOB_LABEL_NODE,
    MODELS_DIR,
)
from localcache.api.core import JobStatus
from localcache.api.localmodelnode import DownloadFailureReason, NodeCapacity
from localcache.api.naming import job_status_key
from localcache.config import ConfigError, InferenceServiceConfig, parse_config
from localcache.controllers.credentials import (
    ClientSecretReader,
    CredentialError,
    SecretReader,
    resolve_credentials,
    select_storage_container,
)
from localcache.controllers.diskgc import DEFAULT_GRACE_SECONDS, DiskGC
from localcache.controllers.downloadjob import (
    JobOptions,
    build_download_job,
    job_attempt,
    job_storage_key,
)
from localcache.controllers.hostpath import PreflightResult, groups_for_node, preflight
from localcache.runtime import (
    SYSTEM_CLOCK,
    ApiError,
    BadRequest,
    Clock,
    Forbidden,
    Invalid,
    NotFound,
)
from localcache.runtime.ratelimit import LatencyPacer
from localcache.runtime.reconcile import Request, Result
from localcache.runtime.resources import CONFIGMAPS, JOBS, NODES, PODS, Resource
from localcache.storage import FailureReason, MarkerCache, parse_error_line
from localcache.storage.layout import STAGING_NAME, STATE_DIR

__all__ = [
    "CLUSTER_STORAGE_CONTAINERS",
    "LOCAL_MODEL_NODES",
    "NODE_GROUPS",
    "STORAGE_READY",
    "AgentOptions",
    "NodeAgent",
    "build_agent",
]

log = logging.getLogger(__name__)


def _resource(model: Any) -> Resource:
    crd = model.CRD
    return Resource(crd.group, crd.version, crd.plural, crd.kind, crd.namespaced)


LOCAL_MODEL_NODES = _resource(LocalModelNode)
NODE_GROUPS = _resource(LocalModelNodeGroup)
CLUSTER_STORAGE_CONTAINERS = _resource(ClusterStorageContainer)
# Agent metrics (default registry, served on --metrics-bind-address). No per-model labels: a node's
# model count is unbounded, reasons and states are a closed set.
JOBS_CREATED = Counter("localcache_agent_download_jobs_created_total", "Download Jobs created by the agent.")
DOWNLOAD_FAILURES = Counter(
    "localcache_agent_download_failures_total", "Failed download Jobs seen, by reason.", ["reason"]
)
GC_DELETED = Counter("localcache_agent_gc_deleted_folders_total", "Unreferenced model folders deleted.")
MODELS = Gauge("localcache_agent_models", "Models on this node's spec, by status.", ["status"])
DISK_BYTES = Gauge("localcache_agent_disk_bytes", "The models root's file system.", ["kind"])
STORAGE_READY_GAUGE = Gauge("localcache_agent_storage_ready", "1 when the pre-flight checks pass.")

#: Condition type added by the agent: the pre-flight outcome, with the disk's capacity in its message.
STORAGE_READY = ConditionType.STORAGE_READY
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: How soon a Job the API server refused is tried again.
JOB_REJECTED_RETRY_SECONDS = 60.0
#: A Job pending longer than this gets its pod's scheduling / image-pull problem in the status message.
PENDING_GRACE_SECONDS = 60.0
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class AgentOptions:
    """The agent's flags. ``models_root`` is the agent's mount of ``host_path``."""

    node_name: str
    models_root: Path
    host_path: str
    config_namespace: str = DEFAULT_CONFIG_NAMESPACE
    config_name: str = INFERENCE_SERVICE_CONFIG_NAME
    gc_grace_seconds: float = DEFAULT_GRACE_SECONDS
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    progress_interval_seconds: float = 30.0
    progress_min_change: float = 0.05
    created_job_memory_seconds: float = 300.0
    #: At most one status write per interval: while the manager adds hundreds of models, each of its
    #: spec writes would otherwise cost a status write of the whole (large) object too. On a loaded
    #: API server the interval stretches to ``status_latency_factor`` times the last write's answer
    #: time (at most ``status_max_interval_seconds``): see :class:`LatencyPacer`.
    status_min_interval_seconds: float = 1.0
    status_latency_factor: float = 2.0
    status_max_interval_seconds: float = 10.0
    job: JobOptions = field(default_factory=JobOptions)

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ValueError("agent option node_name is empty: set --node-name or the NODE_NAME env")
        if not self.host_path:
            raise ValueError("agent option host_path is empty: set --host-path")
        if self.retry_base_seconds <= 0 or self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("agent options: need 0 < retry_base_seconds <= retry_max_seconds")

    @property
    def models_dir(self) -> Path:
        return Path(self.models_root) / MODELS_DIR

    @property
    def job_label_selector(self) -> str:
        return f"{JOB_LABEL_NODE}={label_value(self.node_name)}"


class AgentCache(Protocol):
    """The reads the agent makes (satisfied by :class:`localcache.runtime.cache.InformerCache`)."""

    def get_cached(self, resource: Resource, name: str, namespace: str | None = None) -> Any: ...

    def list(
        self, resource: Resource, namespace: str | None = None, *, label_selector: Any = None
    ) -> Any: ...

    def informer_for(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Any: ...


@dataclass
class _Outcome:
    status: ModelStatus
    message: str
    job_name: str | None = None
    bytes: int | None = None
    active: bool = False
    wake_in: float | None = None
    reason: str | None = None
    total_bytes: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    attempt: int | None = None
    next_attempt_time: datetime | None = None


@dataclass
class _Published:
    value: int
    at: float
    total: int | None = None


def _parse(raw: Any) -> datetime | None:
    if isinstance(raw, datetime):
        return raw
    with contextlib.suppress(TypeError, ValueError):
        return parse_time(raw) if raw else None
    return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)}B" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}PiB"


def _folder_bytes(path: Path) -> int:
    """Allocated bytes under ``path`` (staging included): what the download has written so far."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _state_progress(state_dir: Path) -> tuple[int, int] | None:
    """``(bytes transferred, bytes of the files whose size is known)`` from the download program's
    per-file resume state (docs/download.md, "Resume"), or None when there is none yet.

    The program preallocates every file to its full size before transferring, so bytes on disk say
    how big the model is, not how far the download got; the resume state records completed ranges and
    bytes written into unfinished ones. It is saved when a range completes, so the figure trails the
    truth by at most one range per connection. Read defensively: the format is the program's own.
    """
    try:
        paths = [p for p in state_dir.iterdir() if p.suffix == ".json"]
    except OSError:
        return None
    done = known = 0
    found = False
    for path in paths:
        try:
            state = json.loads(path.read_text())
            ranges = [(int(a), None if b is None else int(b)) for a, b in state.get("range_size") or []]
            size = state.get("size")
            if state.get("verified") is not None:
                file_done = int(state.get("final_size") or size or 0)
            else:
                finished = {int(i) for i in state.get("done") or []}
                file_done = sum(b - a for i, (a, b) in enumerate(ranges) if i in finished and b is not None)
                file_done += sum(int(v) for v in (state.get("partial") or {}).values())
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        found = True
        done += max(0, file_done)
        if isinstance(size, int) and size >= 0:
            known += size
    return (done, known) if found else None


def _download_progress(folder: Path) -> tuple[int, int | None]:
    """``(bytes so far, total bytes or None)`` of an unfinished download into ``folder``.

    Total: the bytes allocated in the staging directory (the program preallocates each file), or the
    sizes its resume state knows, whichever is larger. So far: the resume state's figure when there
    is one, else the bytes on disk (a program that does not preallocate or keep state).
    """
    on_disk = _folder_bytes(folder)
    staging = [folder / STAGING_NAME, folder.parent / f".{folder.name}{STAGING_NAME}"]
    for root in staging:
        progress = _state_progress(root / STATE_DIR)
        if progress is None:
            continue
        done, known = progress
        allocated = _folder_bytes(root) - _folder_bytes(root / STATE_DIR)
        total = max(allocated, known, done)
        return done, total or None
    return on_disk, None


def _created(job: Mapping[str, Any]) -> tuple[str, str]:
    meta = job.get("metadata") or {}
    return (meta.get("creationTimestamp") or "", meta.get("name") or "")


def _job_name(job: Mapping[str, Any]) -> str:
    return str((job.get("metadata") or {}).get("name") or "")


def _job_uid(job: Mapping[str, Any]) -> str:
    return str((job.get("metadata") or {}).get("uid") or _job_name(job))


def _finished(status: JobStatus) -> bool:
    return any(
        status.condition_true(t) for t in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
    )


def _clip(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


class NodeAgent:
    """The reconciler (``await agent.reconcile(Request("", node))``); see the module docstring."""

    def __init__(
        self,
        client: Any,
        cache: AgentCache,
        options: AgentOptions,
        *,
        clock: Clock = SYSTEM_CLOCK,
        secrets: SecretReader | None = None,
        recorder: Any = None,
        watch_jobs: Callable[[Any], None] | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.options = options
        self.clock = clock
        self.secrets = secrets or ClientSecretReader(client)
        self.recorder = recorder
        self.watch_jobs = watch_jobs
        self.gc = DiskGC(options.models_dir, grace_seconds=options.gc_grace_seconds, clock=clock)
        self._watched_job_namespaces: set[str] = set()
        self._created: dict[str, tuple[dict[str, Any], float]] = {}  # storage key → (Job, created at)
        self._deleted: set[str] = set()  # uids of Jobs we deleted, until the informer drops them
        self._failed_seen: dict[str, float] = {}  # failed Job uid → monotonic time the failure began
        # storage key → (attempt, retry due (monotonic), outcome): the backoff outlives the failed Job
        # if something else (its TTL, a person) deletes it before the retry is due.
        self._backoff: dict[str, tuple[int, float, _Outcome]] = {}
        self._previous_failure: dict[str, str] = {}  # storage key → why the attempt before this one failed
        self._pending_since: dict[str, float] = {}  # pending Job uid → first seen pending (monotonic)
        self._pending_text: dict[str, tuple[float, str]] = {}  # pending Job uid → (looked at, why)
        self._failure_text: dict[str, tuple[str, str]] = {}  # failed Job uid → (reason, message)
        self._retry_at: dict[str, datetime] = {}  # failed Job uid → when it is retried (wall clock)
        self._progress: dict[str, _Published] = {}
        self._disk: tuple[_Published, int, int] | None = None  # (used, total, available), as published
        self._preflight_key: tuple[Any, ...] | None = None
        self._preflight: PreflightResult | None = None
        self.last_preflight: PreflightResult | None = None
        # (resourceVersion the status was computed from, status written): skips a rewrite while the
        # informer still shows the object from before our own write
        self._last_write: tuple[str, dict[str, Any]] | None = None
        self._status_pacer = LatencyPacer(
            min_interval=options.status_min_interval_seconds,
            max_interval=max(options.status_min_interval_seconds, options.status_max_interval_seconds),
            factor=options.status_latency_factor,
            clock=clock,
        )
        self._marker_cache = MarkerCache()

    @property
    def node_name(self) -> str:
        return self.options.node_name

    # --- reads ---------------------------------------------------------------------------------------
    def _config(self) -> InferenceServiceConfig:
        ns, name = self.options.config_namespace, self.options.config_name
        source = f"{ns}/{name}"
        cm = self.cache.get_cached(CONFIGMAPS, name, ns)
        if cm is None:
            raise ConfigError(source, "-", "not found")
        return parse_config(cm.get("data") or {}, source=source)

    def _jobs_synced(self, namespace: str) -> bool:
        """Make sure Jobs of this node in ``namespace`` are watched; True once that informer synced."""
        informer = self.cache.informer_for(
            JOBS, namespace=namespace, label_selector=self.options.job_label_selector
        )
        if namespace not in self._watched_job_namespaces:
            self._watched_job_namespaces.add(namespace)
            if self.watch_jobs is not None:
                self.watch_jobs(informer)
        return bool(informer.has_synced())

    def _groups(self) -> list[LocalModelNodeGroup]:
        out = []
        for raw in self.cache.list(NODE_GROUPS):
            try:
                out.append(LocalModelNodeGroup.from_dict(raw))
            except ValueError as exc:
                name = (raw.get("metadata") or {}).get("name")
                log.warning("ignoring invalid LocalModelNodeGroup %s: %s", name, exc, extra={"group": name})
        return out

    async def _storage_containers(self) -> list[ClusterStorageContainer]:
        """Read directly when a Job is about to be made (rare); a missing CRD means none."""
        try:
            items, _ = await self.client.list_all(CLUSTER_STORAGE_CONTAINERS)
        except NotFound:
            return []
        out = []
        for raw in items:
            try:
                out.append(ClusterStorageContainer.from_dict(raw))
            except ValueError as exc:
                log.warning("ignoring invalid ClusterStorageContainer: %s", exc)
        return out

    # --- pre-flight ----------------------------------------------------------------------------------
    def _run_preflight(self, groups: list[LocalModelNodeGroup], config_version: str = "") -> PreflightResult:
        """Re-run when the groups, their paths or the config change, or while it fails."""
        key = (config_version, *sorted((g.name, g.spec.host_path or "") for g in groups))
        if self._preflight is not None and self._preflight.ok and key == self._preflight_key:
            return self._preflight
        result = preflight(self.options.models_root, self.options.host_path, groups)
        if not result.ok and (self._preflight is None or self._preflight.message != result.message):
            log.error(
                "pre-flight failed: %s",
                result.message,
                extra={"node": self.node_name, "reason": result.reason},
            )
        self._preflight, self._preflight_key = result, key
        return result

    async def _markers(self, entries: Mapping[str, list[LocalModelInfo]]) -> dict[str, Any]:
        """Every folder's valid marker (or None), read in one worker-thread hop for the whole node."""
        root = self.options.models_dir
        wanted = {sk: infos[0].source_model_uri for sk, infos in entries.items()}

        def read_all() -> dict[str, Any]:
            self._marker_cache.forget({root / sk for sk in wanted})
            return {sk: self._marker_cache.read(root / sk, uri) for sk, uri in wanted.items()}

        return await asyncio.to_thread(read_all) if wanted else {}

    # --- the reconcile -------------------------------------------------------------------------------
    async def reconcile(self, request: Request) -> Result | None:
        if request.name != self.node_name:
            return None
        obj = self.cache.get_cached(LOCAL_MODEL_NODES, self.node_name)
        if obj is None:
            return None
        lmn = LocalModelNode.from_dict(obj)
        entries: dict[str, list[LocalModelInfo]] = {}
        for info in lmn.spec.local_models:
            entries.setdefault(info.storage_key, []).append(info)

        try:
            cfg = self._config()
        except ConfigError as exc:
            blocked = PreflightResult(False, "ConfigInvalid", str(exc))
            markers = await self._markers(entries)
            outcomes = {sk: self._blocked(markers[sk], blocked) for sk in entries}
            held = await self._write_status(obj, lmn, outcomes, blocked)
            return Result(requeue_after=held or 60.0)
        freq = float(cfg.local_model.reconcilation_frequency_in_secs)
        namespace = cfg.local_model.job_namespace
        if not self._jobs_synced(namespace):
            return Result(requeue_after=1.0)

        groups = self._groups()
        node = self.cache.get_cached(NODES, self.node_name)
        members = groups_for_node(node, groups)
        named = {info.node_group for info in lmn.spec.local_models if info.node_group}
        checked = {g.name: g for g in [*members, *(g for g in groups if g.name in named)]}
        cm = self.cache.get_cached(CONFIGMAPS, self.options.config_name, self.options.config_namespace) or {}
        version = str((cm.get("metadata") or {}).get("resourceVersion") or "")
        pre = self._run_preflight(list(checked.values()), version)
        self.last_preflight = pre

        wake = freq
        outcomes: dict[str, _Outcome] = {}
        markers = await self._markers(entries)
        if not pre.ok:
            for sk in entries:
                outcomes[sk] = self._blocked(markers[sk], pre)
        else:
            jobs = self._jobs_by_key(namespace, lmn)
            await self._delete_unwanted(jobs, set(entries), namespace)
            for sk, infos in entries.items():
                outcome = await self._model(
                    sk, infos[0], markers[sk], jobs.get(sk, []), cfg, namespace, lmn, members, obj
                )
                outcomes[sk] = outcome
                if outcome.wake_in is not None:
                    wake = min(wake, outcome.wake_in)
                if outcome.active:
                    wake = min(wake, self.options.progress_interval_seconds)
            gc = await self.gc.collect(entries)
            GC_DELETED.inc(len(gc.deleted))
            if gc.deleted and self.recorder is not None:
                self.recorder.normal(
                    obj,
                    "ModelFolderDeleted",
                    f"deleted unreferenced folders {gc.deleted}",
                    resource=LOCAL_MODEL_NODES,
                )
            if gc.next_due is not None:
                wake = min(wake, gc.next_due)
        held = await self._write_status(obj, lmn, outcomes, pre)
        if held is not None:
            return Result(requeue_after=held)
        return Result(requeue_after=max(wake, 1.0))

    def _blocked(self, marker: Any, pre: PreflightResult) -> _Outcome:
        if marker is not None:
            return self._downloaded(marker)
        return _Outcome(ModelStatus.DOWNLOAD_ERROR, _clip(f"{pre.reason}: {pre.message}"), reason=pre.reason)

    def _jobs_by_key(self, namespace: str, lmn: LocalModelNode) -> dict[str, list[dict[str, Any]]]:
        listed = self.cache.list(JOBS, namespace, label_selector=self.options.job_label_selector)
        present_uids = {_job_uid(j) for j in listed}
        self._deleted &= present_uids
        for memory in (
            self._failed_seen,
            self._failure_text,
            self._retry_at,
            self._pending_since,
            self._pending_text,
        ):
            for uid in [u for u in memory if u not in present_uids]:
                del memory[uid]
        by_status_key = {info.status_key: info.storage_key for info in lmn.spec.local_models}
        out: dict[str, list[dict[str, Any]]] = {}
        names = set()
        for job in listed:
            meta = job.get("metadata") or {}
            names.add(meta.get("name"))
            if meta.get("deletionTimestamp") or _job_uid(job) in self._deleted:
                continue
            sk = job_storage_key(job) or by_status_key.get(job_status_key(meta.get("labels") or {}) or "")
            if sk is None:
                continue
            out.setdefault(sk, []).append(job)
        now = self.clock.monotonic()
        for sk, (job, at) in list(self._created.items()):
            if _job_name(job) in names or now - at > self.options.created_job_memory_seconds:
                del self._created[sk]  # the informer has it (or it vanished long ago)
            else:
                out.setdefault(sk, []).append(job)
        return out

    async def _delete_job(self, job: Mapping[str, Any], namespace: str, why: str) -> None:
        name = _job_name(job)
        try:
            await self.client.delete(JOBS, name, namespace, propagation_policy="Background", missing_ok=True)
        except NotFound:
            pass
        self._deleted.add(_job_uid(job))
        for sk, (created, _) in list(self._created.items()):
            if _job_name(created) == name:
                del self._created[sk]
        log.info("deleted download Job %s/%s: %s", namespace, name, why, extra={"job": name, "why": why})

    async def _delete_unwanted(
        self, jobs: dict[str, list[dict[str, Any]]], wanted: set[str], namespace: str
    ) -> None:
        for sk in [k for k in jobs if k not in wanted]:
            for job in jobs.pop(sk):
                await self._delete_job(job, namespace, f"storage key {sk} is no longer in the spec")
        for sk in [k for k in (*self._progress, *self._backoff, *self._previous_failure) if k not in wanted]:
            self._progress.pop(sk, None)
            self._backoff.pop(sk, None)
            self._previous_failure.pop(sk, None)

    @staticmethod
    def _downloaded(marker: Any) -> _Outcome:
        """From the marker alone: a downloaded model's status detail is its bytes and times only."""
        return _Outcome(
            ModelStatus.DOWNLOADED,
            "",
            bytes=marker.total_bytes,
            start_time=marker.started_at,
            completion_time=marker.completed_at,
        )

    def _published_bytes(self, sk: str, measured: int, total: int | None) -> tuple[int, int | None]:
        """Rate limit: a new ``(bytes, total)`` at most every interval, and only after a 5 % move
        (of the total when known, else of the last figure)."""
        now = self.clock.monotonic()
        last = self._progress.get(sk)
        if last is None:
            self._progress[sk] = _Published(measured, now, total)
            return measured, total
        base = last.total or max(1, last.value)
        moved = abs(measured - last.value) >= base * self.options.progress_min_change
        if now - last.at >= self.options.progress_interval_seconds and (moved or total != last.total):
            self._progress[sk] = _Published(measured, now, total)
            return measured, total
        return last.value, last.total

    async def _model(
        self,
        sk: str,
        info: LocalModelInfo,
        marker: Any,
        jobs: list[dict[str, Any]],
        cfg: InferenceServiceConfig,
        namespace: str,
        lmn: LocalModelNode,
        members: list[LocalModelNodeGroup],
        obj: dict[str, Any],
    ) -> _Outcome:
        folder = self.options.models_dir / sk
        jobs = sorted(jobs, key=_created)
        latest = jobs[-1] if jobs else None
        for extra in jobs[:-1]:  # never two live downloads into one folder
            if not _finished(JobStatus.from_dict(extra.get("status") or {})):
                await self._delete_job(extra, namespace, f"a newer download Job exists for {sk}")
        if marker is not None:
            self._progress.pop(sk, None)
            self._backoff.pop(sk, None)
            self._previous_failure.pop(sk, None)
            return self._downloaded(marker)
        if latest is None:
            attempt, due, waiting = self._backoff.get(sk, (0, 0.0, None))
            due_in = due - self.clock.monotonic()
            if waiting is not None and due_in > 0:
                return replace(waiting, wake_in=due_in)
            previous = waiting.message.split(" (Job ", 1)[0] if waiting is not None else None
            return await self._start(
                sk, info, cfg, namespace, lmn, members, obj, attempt=attempt + 1, previous=previous
            )

        name = _job_name(latest)
        status = JobStatus.from_dict(latest.get("status") or {})
        state = model_status_from_job(status)
        if not _finished(status):
            # A failed pod inside the backoff limit is the Job retrying, not a failed download (§8.B-13).
            if state != ModelStatus.DOWNLOAD_PENDING:
                state = ModelStatus.DOWNLOADING
            measured, total = await asyncio.to_thread(_download_progress, folder)
            shown, total = self._published_bytes(sk, measured, total)
            since = status.start_time or (latest.get("metadata") or {}).get("creationTimestamp") or "?"
            verb = "running" if state == ModelStatus.DOWNLOADING else "pending"
            done = (
                f"{_human(shown)} of {_human(total)} ({100.0 * shown / total:.0f}%)"
                if total
                else (f"{_human(shown)} on disk")
            )
            message = f"download Job {name} {verb} since {since} (attempt {job_attempt(latest)}); {done}"
            if state == ModelStatus.DOWNLOAD_PENDING:
                stuck = await self._pending_reason(latest, namespace)
                if stuck:
                    message += f"; {stuck}"
            if sk in self._previous_failure:
                message += f"; previous attempt failed: {self._previous_failure[sk]}"
            return _Outcome(
                state,
                _clip(message),
                job_name=name,
                bytes=shown,
                active=True,
                total_bytes=total,
                start_time=_parse(since),
                attempt=job_attempt(latest),
            )
        if state == ModelStatus.DOWNLOADED:  # Complete, yet no marker: not a finished model
            reason, detail = (
                "MarkerMissing",
                f"download Job {name} succeeded but {folder.name} has no valid completion marker; "
                "the folder is incomplete (is the Job image localcache's download program?)",
            )
        else:
            reason, detail = await self._failure_of(latest, status, namespace)
        return await self._after_failure(sk, info, latest, reason, detail, cfg, namespace, lmn, members, obj)

    async def _after_failure(
        self,
        sk: str,
        info: LocalModelInfo,
        job: dict[str, Any],
        reason: str,
        detail: str,
        cfg: InferenceServiceConfig,
        namespace: str,
        lmn: LocalModelNode,
        members: list[LocalModelNodeGroup],
        obj: dict[str, Any],
    ) -> _Outcome:
        uid, name = _job_uid(job), _job_name(job)
        attempt = job_attempt(job)
        now = self.clock.monotonic()
        if uid not in self._failed_seen:
            elapsed = 0.0
            failed_at = self._failure_time(job)
            if failed_at is not None:
                elapsed = max(0.0, (self.clock.now() - failed_at).total_seconds())
            self._failed_seen[uid] = now - elapsed
            DOWNLOAD_FAILURES.labels(reason).inc()
            log.warning(
                "download failed: %s: %s",
                reason,
                detail,
                extra={"job": name, "storage_key": sk, "reason": reason, "attempt": attempt},
            )
            if self.recorder is not None:
                self.recorder.warning(
                    obj,
                    "DownloadFailed",
                    _clip(f"{info.status_key}: {reason}: {detail}"),
                    resource=LOCAL_MODEL_NODES,
                )
        delay = min(self.options.retry_base_seconds * 2 ** (attempt - 1), self.options.retry_max_seconds)
        due_in = self._failed_seen[uid] + delay - now
        if due_in > 0:
            # Fixed once per failed Job: recomputing it from two clocks on every pass would let the
            # rounded second wobble and rewrite the status for nothing.
            retry_time = self._retry_at.setdefault(
                uid, (self.clock.now() + timedelta(seconds=due_in)).replace(microsecond=0)
            )
            retry_at = format_time(retry_time)
            job_status = job.get("status") or {}
            outcome = _Outcome(
                ModelStatus.DOWNLOAD_ERROR,
                _clip(f"{reason}: {detail} (Job {name}, attempt {attempt}; next attempt at {retry_at})"),
                job_name=name,
                wake_in=due_in,
                reason=reason,
                start_time=_parse(
                    job_status.get("startTime") or (job.get("metadata") or {}).get("creationTimestamp")
                ),
                attempt=attempt,
                next_attempt_time=retry_time,
            )
            self._backoff[sk] = (attempt, now + due_in, outcome)
            return outcome
        self._backoff.pop(sk, None)
        await self._delete_job(job, namespace, f"retrying after {reason} (attempt {attempt})")
        self._failed_seen.pop(uid, None)
        self._failure_text.pop(uid, None)
        self._retry_at.pop(uid, None)
        return await self._start(
            sk, info, cfg, namespace, lmn, members, obj, attempt=attempt + 1, previous=f"{reason}: {detail}"
        )

    @staticmethod
    def _failure_time(job: Mapping[str, Any]) -> datetime | None:
        for cond in (job.get("status") or {}).get("conditions") or []:
            if cond.get("type") in ("Failed", "FailureTarget", "Complete") and cond.get("status") == "True":
                raw = cond.get("lastTransitionTime")
                if raw:
                    with contextlib.suppress(ValueError):
                        return parse_time(raw)
        return None

    async def _failure_of(self, job: dict[str, Any], status: JobStatus, namespace: str) -> tuple[str, str]:
        """The download program's reason: Job condition message, else the pod's termination message."""
        uid = _job_uid(job)
        if uid in self._failure_text:
            return self._failure_text[uid]
        name = _job_name(job)
        cond = status.condition_true("Failed") or status.condition_true("FailureTarget")
        result: tuple[str, str] | None = None
        if cond is not None:
            parsed = parse_error_line(cond.message or "")
            if parsed is not None:
                result = (parsed.reason.value, parsed.message)
            elif cond.reason == "DeadlineExceeded":
                result = (
                    FailureReason.TIMEOUT.value,
                    f"download Job {name} exceeded activeDeadlineSeconds "
                    f"({(job.get('spec') or {}).get('activeDeadlineSeconds')}s)",
                )
        if result is None:
            result = await self._pod_failure(name, namespace)
        if result is None:
            why = (cond.reason or "Failed") if cond is not None else "Failed"
            text = (cond.message if cond is not None else None) or f"download Job {name} failed"
            result = (why, text)
        self._failure_text[uid] = result
        return result

    async def _pending_reason(self, job: Mapping[str, Any], namespace: str) -> str:
        """Why a Job's pod is not running yet (unschedulable, image pull, missing secret), looked up at
        most once per progress interval per Job, and only after the Job has been pending a while."""
        uid, name = _job_uid(job), _job_name(job)
        now = self.clock.monotonic()
        first_seen = self._pending_since.setdefault(uid, now)
        if now - first_seen < PENDING_GRACE_SECONDS:
            return ""
        cached = self._pending_text.get(uid)
        if cached is not None and now - cached[0] < self.options.progress_interval_seconds:
            return cached[1]
        text = ""
        try:
            page = await self.client.list(PODS, namespace, label_selector=f"{JOB_NAME_LABEL}={name}")
        except ApiError as exc:
            log.info("cannot read pods of Job %s/%s: %s", namespace, name, exc)
            page = {}
        for pod in sorted(page.get("items") or [], key=_created, reverse=True):
            status = pod.get("status") or {}
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    text = f"pod {cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}".strip()
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
                    text = f"container {waiting['reason']}: {waiting.get('message') or ''}".strip()
            if text:
                break
        self._pending_text[uid] = (now, text)
        return text

    async def _pod_failure(self, job_name: str, namespace: str) -> tuple[str, str] | None:
        try:
            page = await self.client.list(PODS, namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}")
        except ApiError as exc:
            log.info("cannot read pods of Job %s/%s: %s", namespace, job_name, exc)
            return None
        pods = sorted(page.get("items") or [], key=_created)
        for pod in reversed(pods):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                    term = state.get("terminated")
                    if not term or term.get("exitCode") in (None, 0):
                        continue
                    parsed = parse_error_line(term.get("message") or "")
                    if parsed is not None:
                        return parsed.reason.value, parsed.message
                    reason = FailureReason.from_exit_code(int(term["exitCode"]))
                    label = reason.value if reason else "Unknown"
                    return (
                        label,
                        f"container exited with code {term['exitCode']} ({term.get('reason') or ''})",
                    )
        return None

    async def _start(
        self,
        sk: str,
        info: LocalModelInfo,
        cfg: InferenceServiceConfig,
        namespace: str,
        lmn: LocalModelNode,
        members: list[LocalModelNodeGroup],
        obj: dict[str, Any],
        *,
        attempt: int,
        previous: str | None = None,
    ) -> _Outcome:
        group = info.node_group or (members[0].name if members else None)
        if not group:
            return _Outcome(
                ModelStatus.DOWNLOAD_ERROR,
                f"NodeGroupNotFound: the entry names no nodeGroup and no LocalModelNodeGroup's PV "
                f"nodeAffinity matches node {self.node_name}",
                reason="NodeGroupNotFound",
            )
        csc = select_storage_container(await self._storage_containers(), info.source_model_uri)
        credentials = None
        if csc is None:
            try:
                credentials = await resolve_credentials(info, cfg.credentials, namespace, self.secrets)
            except CredentialError as exc:
                log.warning(
                    "credentials for %s unusable: %s",
                    info.status_key,
                    exc.message,
                    extra={"model": info.status_key, "reason": exc.reason},
                )
                return _Outcome(
                    ModelStatus.DOWNLOAD_ERROR, _clip(f"{exc.reason}: {exc.message}"), reason=exc.reason
                )
        body = build_download_job(
            info=info,
            node_name=self.node_name,
            node_uid=lmn.metadata.uid or "",
            job_namespace=namespace,
            pvc_name=download_pvc_name(info.model_name, info.namespace, group),
            config=cfg,
            credentials=credentials,
            storage_container=csc,
            options=self.options.job,
            attempt=attempt,
        )
        try:
            created = await self.client.create(JOBS, body, namespace)
        except (BadRequest, Forbidden, Invalid, NotFound) as exc:
            # Not transient: retrying at the workqueue's pace would hammer the API server and leave
            # the model Pending with no word of why. Say why, and try again after a while (the
            # namespace may be created, the policy or the ConfigMap fixed).
            reason = DownloadFailureReason.JOB_REJECTED.value
            cause = "; ".join(f"{c.field}: {c.message}" for c in exc.causes) or exc.message
            message = _clip(
                f"{reason}: the API server refused the download Job in namespace {namespace} "
                f"({exc.status} {exc.reason or type(exc).__name__}): {cause}"
            )
            log.warning(message, extra={"model": info.status_key, "reason": reason})
            if self.recorder is not None:
                self.recorder.warning(obj, reason, message, resource=LOCAL_MODEL_NODES)
            return _Outcome(
                ModelStatus.DOWNLOAD_ERROR, message, reason=reason, wake_in=JOB_REJECTED_RETRY_SECONDS
            )
        self._created[sk] = (created, self.clock.monotonic())
        JOBS_CREATED.inc()
        name = _job_name(created)
        source = (
            f"cluster storage container {csc.name}" if csc else (credentials.source if credentials else "")
        )
        log.info(
            "created download Job %s/%s for %s",
            namespace,
            name,
            info.source_model_uri,
            extra={"job": name, "storage_key": sk, "attempt": attempt, "credentials": source},
        )
        if self.recorder is not None:
            self.recorder.normal(
                obj,
                "DownloadStarted",
                f"{info.status_key}: Job {namespace}/{name}",
                resource=LOCAL_MODEL_NODES,
            )
        message = f"download Job {name} created (attempt {attempt})"
        if previous:
            self._previous_failure[sk] = previous
            message += f"; previous attempt failed: {previous}"
        return _Outcome(
            ModelStatus.DOWNLOAD_PENDING,
            _clip(message),
            job_name=name,
            bytes=None,
            active=True,
            start_time=_parse((created.get("metadata") or {}).get("creationTimestamp"))
            or self.clock.now().replace(microsecond=0),
            attempt=attempt,
        )

    # --- status --------------------------------------------------------------------------------------
    def _capacity(self) -> tuple[NodeCapacity | None, str]:
        """The models disk's capacity as published (rate-limited like progress) and as text."""
        try:
            st = os.statvfs(self.options.models_root)
        except OSError as exc:
            self._disk = None
            return None, f"disk capacity unknown ({exc.strerror or exc})"
        total = st.f_blocks * st.f_frsize
        available = st.f_bavail * st.f_frsize
        used = total - st.f_bfree * st.f_frsize
        for kind, value in (("total", total), ("used", used), ("available", available)):
            DISK_BYTES.labels(kind).set(value)
        now = self.clock.monotonic()
        last = self._disk
        if last is None or (
            now - last[0].at >= self.options.progress_interval_seconds
            and abs(used - last[0].value) >= max(1, total) * self.options.progress_min_change
        ):
            self._disk = (_Published(used, now), total, available)
        published, total, available = self._disk  # type: ignore[misc]
        pct = 100.0 * published.value / total if total else 0.0
        capacity = NodeCapacity(total_bytes=total, used_bytes=published.value, available_bytes=available)
        return capacity, (
            f"disk: {_human(published.value)} used of {_human(total)} ({pct:.0f}%), "
            f"{_human(available)} available"
        )

    def _new_status(
        self, lmn: LocalModelNode, outcomes: dict[str, _Outcome], pre: PreflightResult
    ) -> LocalModelNodeStatus:
        now = self.clock.now()
        old = lmn.status or LocalModelNodeStatus()
        old_details = old.model_status_details or {}
        model_status: dict[str, ModelStatus] = {}
        details: dict[str, ModelStatusDetail] = {}
        for info in lmn.spec.local_models:
            key, sk = info.status_key, info.storage_key
            outcome = outcomes.get(sk)
            if outcome is None:
                continue
            model_status[key] = outcome.status
            if outcome.status == ModelStatus.DOWNLOADED:
                # The steady state of every model, and what a LocalModelNode mostly holds: only what
                # ``modelStatus`` cannot say. The API server's cost per write grows with the object
                # (about 1 ms of CPU per KiB), and the full detail made a node with 1,000 models a
                # 680 KiB object (bench/README.md).
                details[key] = ModelStatusDetail(
                    bytes=outcome.bytes,
                    start_time=outcome.start_time,
                    completion_time=outcome.completion_time,
                )
                continue
            prev = old_details.get(key)
            since = (
                prev.last_transition_time
                if prev is not None and prev.status == outcome.status and prev.last_transition_time
                else now
            )
            details[key] = ModelStatusDetail(
                status=outcome.status,
                last_transition_time=since,
                storage_key=sk,
                bytes=outcome.bytes,
                total_bytes=outcome.total_bytes,
                message=outcome.message or None,
                reason=outcome.reason if outcome.status == ModelStatus.DOWNLOAD_ERROR else None,
                job_name=outcome.job_name,
                start_time=outcome.start_time,
                attempt=outcome.attempt,
                next_attempt_time=outcome.next_attempt_time,
            )
        values = list(model_status.values())
        for state in (m for m in ModelStatus if m):
            MODELS.labels(state.value).set(sum(v == state for v in values))
        STORAGE_READY_GAUGE.set(1 if pre.ok else 0)
        errors = sum(v == ModelStatus.DOWNLOAD_ERROR for v in values)
        busy = sum(v in (ModelStatus.DOWNLOAD_PENDING, ModelStatus.DOWNLOADING) for v in values)
        done = sum(v == ModelStatus.DOWNLOADED for v in values)
        gen = lmn.generation
        conditions = old.conditions
        capacity, capacity_text = self._capacity()
        storage_msg = pre.message if not pre.ok else f"{pre.message}; {capacity_text}"
        conditions, _ = set_condition(
            conditions,
            STORAGE_READY,
            pre.ok,
            reason=pre.reason,
            message=storage_msg,
            observed_generation=gen,
            now=now,
        )
        if not pre.ok:
            ready_reason, ready_msg = pre.reason, pre.message
        elif done == len(values):
            ready_reason, ready_msg = "ModelsDownloaded", f"{done} of {len(values)} models downloaded"
        else:
            ready_reason = "DownloadFailed" if errors else "Downloading"
            ready_msg = f"{done} of {len(values)} downloaded, {busy} in progress, {errors} failed"
        conditions, _ = set_condition(
            conditions,
            ConditionType.READY,
            pre.ok and done == len(values),
            reason=ready_reason,
            message=ready_msg,
            observed_generation=gen,
            now=now,
        )
        conditions, _ = set_condition(
            conditions,
            ConditionType.DOWNLOADING,
            busy > 0,
            reason="DownloadsInProgress" if busy else "NoDownloads",
            message=f"{busy} downloads pending or running",
            observed_generation=gen,
            now=now,
        )
        degraded = errors > 0 or not pre.ok
        conditions, _ = set_condition(
            conditions,
            ConditionType.DEGRADED,
            degraded,
            reason=(pre.reason if not pre.ok else "DownloadFailed") if degraded else "AsExpected",
            message=pre.message if not pre.ok else f"{errors} models failed to download",
            observed_generation=gen,
            now=now,
        )
        return LocalModelNodeStatus(
            model_status=model_status, model_status_details=details, capacity=capacity, conditions=conditions
        )

    async def _write_status(
        self, obj: dict[str, Any], lmn: LocalModelNode, outcomes: dict[str, _Outcome], pre: PreflightResult
    ) -> float | None:
        """Replace ``status`` with one JSON-patch ``add`` on the subresource, without a resourceVersion.

        The agent is the only writer of this status, so there is nothing to lose and no reason to
        trade 409s with the manager, whose spec writes bump the resourceVersion many times a second
        while caches are being created (a PUT would conflict, re-read the whole object, and retry).
        The patch carries only the status, not the spec the manager owns. A change that comes sooner
        than the pacer allows after the last write (``status_min_interval_seconds``, longer while the
        API server answers slowly) is held back: the seconds until it may go are returned, for the
        caller to come back then (by which time more may have changed).
        """
        status = self._new_status(lmn, outcomes, pre).to_dict()
        if status == (obj.get("status") or {}):
            return None
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if self._last_write == (rv, status):
            return None  # the informer has not caught up with the status we just wrote
        wait = self._status_pacer.delay()
        if wait > 0:
            return wait
        started = self.clock.monotonic()
        await self.client.patch(
            LOCAL_MODEL_NODES,
            self.node_name,
            [{"op": "add", "path": "/status", "value": status}],
            patch_type="json",
            subresource="status",
        )
        self._status_pacer.wrote(started)  # answers only: a failure is retried with backoff anyway
        self._last_write = (rv, status)
        return None


def build_agent(
    manager: Any, options: AgentOptions, *, initial_job_namespace: str, recorder: Any = None
) -> NodeAgent:
    """Wire the agent into a :class:`~localcache.runtime.manager.Manager` whose cache is scoped to
    this node (see :func:`agent_cache`): one controller, watching only this node's objects."""
    from localcache.runtime.builder import Builder
    from localcache.runtime.handlers import EnqueueRequestsFromMapFunc
    from localcache.runtime.predicates import annotations_changed, generation_changed, labels_changed

    cache = manager.cache
    request = Request("", options.node_name)

    def to_node(_obj: dict[str, Any]) -> list[Request]:
        return [request]

    holder: dict[str, Any] = {}

    def watch_jobs(informer: Any) -> None:
        controller = holder.get("controller")
        if controller is not None:
            controller.watch(informer, EnqueueRequestsFromMapFunc(to_node))

    agent = NodeAgent(
        manager.client, cache, options, clock=manager.clock, recorder=recorder, watch_jobs=watch_jobs
    )
    controller = (
        Builder(manager.client, cache, name="localmodelnode-agent")
        .for_(LOCAL_MODEL_NODES, predicates=[generation_changed() | annotations_changed()])
        .watches(NODE_GROUPS, to_node)
        .with_options(skip_name_validation=True)  # simulated nodes run several agents in one process
        .build(agent)
    )
    holder["controller"] = controller
    controller.watch(
        cache.informer_for(CONFIGMAPS, namespace=options.config_namespace),
        EnqueueRequestsFromMapFunc(to_node),
    )
    controller.watch(cache.informer_for(NODES), EnqueueRequestsFromMapFunc(to_node), labels_changed())
    agent._jobs_synced(initial_job_namespace)
    manager.add(controller)
    return agent


def agent_cache(client: Any, options: AgentOptions, *, clock: Clock = SYSTEM_CLOCK) -> Any:
    """An informer cache that sees only this node's LocalModelNode, Node, Jobs and the one ConfigMap."""
    from localcache.runtime.cache import InformerCache

    return InformerCache(
        client,
        field_selectors={
            LOCAL_MODEL_NODES: f"metadata.name={options.node_name}",
            NODES: f"metadata.name={options.node_name}",
            CONFIGMAPS: f"metadata.name={options.config_name}",
        },
        label_selectors={JOBS: options.job_label_selector},
        clock=clock,
    )


async def initial_job_namespace(client: Any, options: AgentOptions) -> str:
    """The job namespace to watch from the start (the config's, else the default)."""
    from localcache.api.constants import DEFAULT_JOB_NAMESPACE

    try:
        cm = await client.get(CONFIGMAPS, options.config_name, options.config_namespace)
        return parse_config(cm.get("data") or {}).local_model.job_namespace
    except (ApiError, ConfigError) as exc:
        log.warning("cannot read the job namespace from the config yet (%s); watching the default", exc)
        return DEFAULT_JOB_NAMESPACE
