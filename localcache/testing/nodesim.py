"""Simulated nodes: Node objects, a directory per node standing for its disk, and a kubelet that runs the
pods of download Jobs as local processes.

Why it exists: nothing on a laptop or in CI has a container runtime, yet the agent's whole contract is
"create a Job pinned to a node, read the Job's status, trust the files the Job wrote". The simulator keeps
that contract real: the real kube-controller-manager's Job controller creates the pods (and owns Job
conditions, backoff, ``activeDeadlineSeconds`` and the TTL), the simulator plays scheduler + kubelet only:

- it binds a Job's pod to one of its nodes (``spec.nodeName``, ``nodeSelector``, required node affinity,
  and the local PV's node affinity, as the scheduler checks them) through ``pods/binding``;
- it runs each container as a process: known images map to a local program (the download images run
  ``cmd/download.py``), unknown images fail the pod with ``ErrImagePull`` and a message naming the image;
- env ``value`` / ``secretKeyRef`` / ``configMapKeyRef`` / ``fieldRef`` / ``envFrom`` are resolved from the
  API; volumes are mapped PVC → bound PV → ``local.path``/``hostPath.path`` → ``<root>/<node>/<path>``,
  ``subPath`` honoured, secrets and config maps written to files; the process sees the mapped paths in its
  args and env wherever the container path appeared;
- as root it runs the process as the pod's user (``runAsUser``, default 1000 like the download image),
  with ``fsGroup`` as a supplementary group, through ``setpriv`` (keeping only the right to *read* any
  file, which stands in for the image's own filesystem); so a host directory not writable by uid 1000
  fails exactly as the guide's troubleshooting section says;
- it writes pod status as the kubelet does (Pending → Running/Ready → Succeeded/Failed, terminated
  exit code, ``FallbackToLogsOnError`` termination message), enforces ``limits.memory`` (``OOMKilled``)
  and the pod's ``activeDeadlineSeconds``, kills the processes of deleted pods and confirms the deletion;
- it binds pre-bound PVCs (``spec.volumeName``) as the PV controller would, so ``kubectl get pvc`` says
  ``Bound``.

Each process's peak RSS (``VmHWM``) is recorded in :class:`PodRun`, which the e2e suite uses to prove
bounded memory. Nothing is left running: processes run in their own session with a parent-death signal,
and :meth:`NodeSimulator.stop` kills what is still alive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from localcache.api.quantity import QuantityError, parse_quantity
from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import (
    CONFIGMAPS,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    SECRETS,
    Resource,
)
from localcache.testing.processes import die_with_parent

__all__ = [
    "DOWNLOAD_COMMAND",
    "DOWNLOAD_IMAGES",
    "GPU_LABEL",
    "NodeSimulator",
    "PodRun",
    "SimNode",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The download program every known download image runs.
DOWNLOAD_COMMAND: tuple[str, ...] = (sys.executable, str(REPO_ROOT / "cmd" / "download.py"))
#: Image repositories (tag and registry ignored) that run the download program: KServe's
#: storage-initializer (the guide's default and ClusterStorageContainer image) and ours (docker/).
DOWNLOAD_IMAGES: tuple[str, ...] = ("kserve/storage-initializer", "localcache/download")
#: The image's own user (docker/download.Dockerfile: USER 1000:1000; KServe's docs say the same).
IMAGE_DEFAULT_UID = 1000
GPU_LABEL = "nvidia.com/gpu-product"
HOSTNAME_LABEL = "kubernetes.io/hostname"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
TERMINATION_LOG = "/dev/termination-log"
#: kubelet's FallbackToLogsOnError limits (MaxContainerTerminationMessageLogLines / ...LogLength).
TERMINATION_LINES = 80
TERMINATION_BYTES = 2048
KILL_GRACE_S = 5.0
RSS_POLL_S = 0.05
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodFailure(Exception):
    """The pod cannot run; ``reason`` is what a kubelet would put in the container's waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class SimNode:
    """One simulated node: its Node object's name and labels, and the directory standing for its disk."""

    name: str
    labels: dict[str, str]
    disk: Path
    ready: bool = True

    def host_path(self, path: str | os.PathLike[str]) -> Path:
        """Where host path ``path`` (e.g. ``/mnt/models``) lives on this node's disk."""
        rel = str(path).lstrip("/")
        return self.disk / rel if rel else self.disk


@dataclass
class PodRun:
    """What happened to one pod on a simulated node: the e2e suite's window into the 'kubelet'."""

    namespace: str
    name: str
    uid: str
    node: str
    job: str | None
    log_path: Path
    argv: list[str] = field(default_factory=list)
    uid_gid: tuple[int, int] | None = None
    phase: str = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    peak_rss_bytes: int = 0
    memory_limit_bytes: int | None = None
    pids: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class _Mount:
    container_path: str
    host_path: Path


def _image_repo(image: str) -> str:
    """``docker.io/kserve/storage-initializer:v0.15@sha256:…`` → ``kserve/storage-initializer``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if parts[:1] == ["library"]:
        parts = parts[1:]
    return "/".join(parts)


def _match_expression(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            lhs, rhs = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return lhs > rhs if op == "Gt" else lhs < rhs
    return False


def node_selector_matches(selector: Mapping[str, Any] | None, node: SimNode) -> bool:
    """A ``NodeSelector`` (terms ORed, expressions ANDed; ``matchFields`` on ``metadata.name``)."""
    terms = (selector or {}).get("nodeSelectorTerms") or []
    if not terms:
        return True
    for term in terms:
        exprs = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not exprs and not fields:
            continue  # an empty term matches nothing, as in the scheduler
        if all(_match_expression(e, node.labels) for e in exprs) and all(
            _match_expression(f, {"metadata.name": node.name}) for f in fields
        ):
            return True
    return False


def _pod_fits(pod: Mapping[str, Any], node: SimNode) -> bool:
    spec = pod.get("spec") or {}
    if spec.get("nodeName") and spec["nodeName"] != node.name:
        return False
    for key, value in (spec.get("nodeSelector") or {}).items():
        if node.labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    return node_selector_matches(required, node)


def _job_owner(pod: Mapping[str, Any]) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return str(ref.get("name"))
    return None


def _field_path(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    raise PodFailure("CreateContainerConfigError", f"unsupported fieldRef.fieldPath {path!r}")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes), as for args and env values."""
    out = value.replace("$$", "\0")
    out = _VAR_REF.sub(lambda m: env.get(m[1], m[0]), out)
    return out.replace("\0", "$")


def _map_path(value: str, mounts: Sequence[_Mount]) -> str:
    for mount in mounts:  # longest container path first
        cp = mount.container_path.rstrip("/") or "/"
        if value == cp:
            return str(mount.host_path)
        if value.startswith(cp + "/"):
            return str(mount.host_path / value[len(cp) + 1 :])
    return value


def _termination_tail(text: str) -> str:
    lines = text.splitlines()[-TERMINATION_LINES:]
    tail = "\n".join(lines)
    return tail[-TERMINATION_BYTES:]


def _read_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in bytes; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


class NodeSimulator:
    """Simulated nodes and their kubelet, for one API server.

    ``images`` maps extra image repositories to a command (``None``: run the container's own command on the
    host); ``extra_env`` is added to every process (the demo points ``HF_ENDPOINT``/``AWS_ENDPOINT_URL`` at
    the local sources with it, standing in for the cluster's DNS); ``namespaces`` limits which pods it
    considers (``None``: all). Pods of Jobs only; the Job controller must be running (envtest runs it).
    """

    def __init__(
        self,
        client: Client,
        root: Path | str,
        *,
        namespaces: Iterable[str] | None = None,
        images: Mapping[str, Sequence[str] | None] | None = None,
        extra_env: Mapping[str, str] | None = None,
        max_concurrent: int = 4,
        bind_volumes: bool = True,
        run_as_pod_user: bool | None = None,
    ) -> None:
        self.client = client
        self.root = Path(root).resolve()
        self.namespaces = sorted(set(namespaces)) if namespaces is not None else None
        self.images: dict[str, tuple[str, ...] | None] = {repo: DOWNLOAD_COMMAND for repo in DOWNLOAD_IMAGES}
        for repo, command in (images or {}).items():
            self.images[_image_repo(repo)] = tuple(command) if command is not None else None
        self.extra_env = dict(extra_env or {})
        self.bind_volumes = bind_volumes
        can_switch = os.geteuid() == 0 and shutil.which("setpriv") is not None
        self.run_as_pod_user = can_switch if run_as_pod_user is None else run_as_pod_user and can_switch
        self.nodes: dict[str, SimNode] = {}
        self.runs: dict[str, PodRun] = {}  # by pod uid
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pod_tasks: dict[str, asyncio.Task[Any]] = {}
        self._procs: dict[str, set[asyncio.subprocess.Process]] = {}
        self._deleting: set[str] = set()
        self._binding: set[str] = set()
        self._workdir = self.root / ".kubelet"
        self._running = False

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> NodeSimulator:
        self.root.mkdir(parents=True, exist_ok=True)
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._running = True
        self._spawn(self._watch_loop(PODS, self._on_pod_event), "pods")
        if self.bind_volumes:
            self._spawn(self._watch_loop(PERSISTENT_VOLUME_CLAIMS, self._on_pvc_event), "pvcs")
        log.info("node simulator started root=%s run_as_pod_user=%s", self.root, self.run_as_pod_user)
        return self

    async def stop(self) -> None:
        """Stop watching, kill every process still running, wait for them; nothing is left behind."""
        self._running = False
        for task in list(self._tasks) + list(self._pod_tasks.values()):
            task.cancel()
        for procs in list(self._procs.values()):
            for proc in list(procs):
                self._signal(proc, signal.SIGKILL)
        pending = [*self._tasks, *self._pod_tasks.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for procs in list(self._procs.values()):
            for proc in list(procs):
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
        self._procs.clear()
        log.info("node simulator stopped")

    async def __aenter__(self) -> NodeSimulator:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"nodesim-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- nodes ---------------------------------------------------------------------------------
    async def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        ready: bool = True,
        host_paths: Iterable[str] = (),
        owner: tuple[int, int] | None = (IMAGE_DEFAULT_UID, IMAGE_DEFAULT_UID),
    ) -> SimNode:
        """Create (or adopt) Node ``name`` and its disk directory ``<root>/<name>/``.

        ``host_paths`` are created on the node's disk and, when running as root, ``chown``ed to ``owner``,
        which is the guide's ``sudo chown -R 1000:1000 /mnt/models``; pass ``owner=None`` to leave them
        owned by root (the guide's permission problem).
        """
        all_labels = {HOSTNAME_LABEL: name, "kubernetes.io/os": "linux", **(labels or {})}
        node = SimNode(name, all_labels, self.root / name, ready)
        node.disk.mkdir(parents=True, exist_ok=True)
        for path in host_paths:
            self.prepare_host_path(node, path, owner=owner)
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": all_labels}}
        try:
            await self.client.create(NODES, body)
        except errors.AlreadyExists:
            await self.client.patch(NODES, name, {"metadata": {"labels": all_labels}})
        self.nodes[name] = node
        await self._write_node_status(node)
        log.info("node added node=%s labels=%s", name, all_labels)
        return node

    def prepare_host_path(
        self, node: SimNode, path: str, *, owner: tuple[int, int] | None, mode: int = 0o755
    ) -> Path:
        host = node.host_path(path)
        host.mkdir(parents=True, exist_ok=True)
        host.chmod(mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(host, *owner)
        return host

    def make_unwritable(self, node: str, path: str) -> Path:
        """Make host path ``path`` unwritable for pod processes: owned by root with 0755 when the simulator
        can switch users (pods run as uid 1000), else mode 0555. The guide's permission problem."""
        host = self.nodes[node].host_path(path)
        host.mkdir(parents=True, exist_ok=True)
        if self.run_as_pod_user:
            os.chown(host, 0, 0)
            host.chmod(0o755)
        else:
            host.chmod(0o555)
        return host

    async def set_ready(self, name: str, ready: bool) -> None:
        node = self.nodes[name]
        node.ready = ready
        await self._write_node_status(node)
        log.info("node readiness changed node=%s ready=%s", name, ready)

    async def delete_node(self, name: str) -> None:
        """Delete the Node; its running pods are killed and removed, as the pod GC would."""
        self.nodes.pop(name, None)
        await self.client.delete(NODES, name, missing_ok=True)
        for uid, run in list(self.runs.items()):
            if run.node == name and not run.done.is_set():
                await self._kill(uid)
                await self.client.delete(
                    PODS, run.name, run.namespace, grace_period_seconds=0, missing_ok=True
                )
        log.info("node deleted node=%s", name)

    async def _write_node_status(self, node: SimNode) -> None:
        now = _now()
        status = "True" if node.ready else "Unknown"
        reason = "KubeletReady" if node.ready else "NodeStatusUnknown"
        message = "kubelet is posting ready status" if node.ready else "Kubelet stopped posting node status."
        conditions = [
            {
                "type": "Ready",
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ]
        usage = shutil.disk_usage(node.disk)
        body = {
            "status": {
                "conditions": conditions,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": node.name},
                ],
                "capacity": {
                    "cpu": "8",
                    "memory": "64Gi",
                    "pods": "110",
                    "ephemeral-storage": str(usage.total),
                },
                "allocatable": {
                    "cpu": "8",
                    "memory": "64Gi",
                    "pods": "110",
                    "ephemeral-storage": str(usage.free),
                },
                "nodeInfo": {
                    "kubeletVersion": "v1.36.3-localcache-nodesim",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "localcache-nodesim://processes",
                    "kernelVersion": os.uname().release,
                    "osImage": "simulated",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }
        await self.client.patch(NODES, node.name, body, subresource="status")

    # ---- queries for tests ---------------------------------------------------------------------
    def runs_for_job(self, job: str, namespace: str | None = None) -> list[PodRun]:
        return [
            r for r in self.runs.values() if r.job == job and (namespace is None or r.namespace == namespace)
        ]

    # ---- watching ------------------------------------------------------------------------------
    async def _watch_loop(self, resource: Resource, handler: Callable[[str, dict[str, Any]], None]) -> None:
        """LIST then WATCH, re-listing after any error; the handler sees every object at least once."""
        scopes: list[str | None] = list(self.namespaces) if self.namespaces is not None else [None]
        await asyncio.gather(*(self._watch_scope(resource, ns, handler) for ns in scopes))

    async def _watch_scope(
        self, resource: Resource, namespace: str | None, handler: Callable[[str, dict[str, Any]], None]
    ) -> None:
        backoff = 0.2
        while self._running:
            try:
                items, rv = await self.client.list_all(resource, namespace)
                for item in items:
                    handler("ADDED", item)
                async with self.client.watch(
                    resource, namespace, resource_version=rv, timeout_seconds=300
                ) as events:
                    backoff = 0.2
                    async for etype, obj in events:
                        if etype in ("ADDED", "MODIFIED", "DELETED"):
                            handler(etype, obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server restarting, a 410, a timeout: list again
                log.debug("watch restarting resource=%s error=%s", resource.plural, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # ---- volumes (the PV controller's part) ----------------------------------------------------
    def _on_pvc_event(self, etype: str, pvc: dict[str, Any]) -> None:
        if etype == "DELETED":
            return
        volume = (pvc.get("spec") or {}).get("volumeName")
        if volume and (pvc.get("status") or {}).get("phase") != "Bound":
            self._spawn(self._bind_pvc(pvc, volume), "bind-pvc")

    async def _bind_pvc(self, pvc: dict[str, Any], volume: str) -> None:
        meta = pvc["metadata"]
        try:
            pv = await self.client.get(PERSISTENT_VOLUMES, volume)
        except errors.NotFound:
            return  # the binder runs again when the PVC changes; the pod stays Pending meanwhile
        claim = (pv.get("spec") or {}).get("claimRef")
        if claim and (claim.get("namespace"), claim.get("name")) != (meta["namespace"], meta["name"]):
            log.warning("pv bound elsewhere pv=%s pvc=%s/%s", volume, meta["namespace"], meta["name"])
            return
        try:
            if not claim:
                ref = {
                    "kind": "PersistentVolumeClaim",
                    "apiVersion": "v1",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
                await self.client.patch(PERSISTENT_VOLUMES, volume, {"spec": {"claimRef": ref}})
            await self.client.patch(
                PERSISTENT_VOLUMES, volume, {"status": {"phase": "Bound"}}, subresource="status"
            )
            status = {
                "phase": "Bound",
                "accessModes": (pv.get("spec") or {}).get("accessModes") or [],
                "capacity": (pv.get("spec") or {}).get("capacity") or {},
            }
            await self.client.patch(
                PERSISTENT_VOLUME_CLAIMS,
                meta["name"],
                {"status": status},
                meta["namespace"],
                subresource="status",
            )
            log.info("pvc bound pvc=%s/%s pv=%s", meta["namespace"], meta["name"], volume)
        except errors.NotFound:
            return

    # ---- pods (the scheduler's and the kubelet's part) -----------------------------------------
    def _on_pod_event(self, etype: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName")
        if etype == "DELETED":
            if uid in self._pod_tasks:
                self._spawn(self._kill(uid), "kill")
            return
        if meta.get("deletionTimestamp"):
            if node_name in self.nodes and uid not in self._deleting:
                self._deleting.add(uid)
                self._spawn(self._confirm_deletion(pod), "delete")
            return
        if _job_owner(pod) is None:
            return
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase in ("Succeeded", "Failed"):
            return
        if not node_name:
            if uid not in self._binding and any(_pod_fits(pod, n) for n in self.nodes.values()):
                self._binding.add(uid)
                self._spawn(self._schedule(pod), "schedule")
            return
        if node_name in self.nodes and uid not in self._pod_tasks and uid not in self.runs:
            task = asyncio.create_task(self._run_pod(pod, self.nodes[node_name]), name=f"nodesim-pod-{uid}")
            self._pod_tasks[uid] = task
            task.add_done_callback(lambda _t, u=uid: self._pod_tasks.pop(u, None))

    async def _confirm_deletion(self, pod: dict[str, Any]) -> None:
        """A bound pod being deleted: stop its processes, then confirm with a zero grace period."""
        meta = pod["metadata"]
        try:
            await self._kill(meta["uid"])
            await self.client.delete(
                PODS,
                meta["name"],
                meta["namespace"],
                uid=meta["uid"],
                grace_period_seconds=0,
                missing_ok=True,
            )
        except errors.Conflict:
            pass  # already gone and recreated under the same name
        finally:
            self._deleting.discard(meta["uid"])

    async def _schedule(self, pod: dict[str, Any]) -> None:
        """Bind the pod to the first fitting Ready node whose volumes allow it, retrying until one does."""
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        last_reason = ""
        try:
            while self._running:
                try:
                    current = await self.client.get(PODS, name, ns)
                except errors.NotFound:
                    return
                if current["metadata"].get("uid") != uid or current["metadata"].get("deletionTimestamp"):
                    return
                if (current.get("spec") or {}).get("nodeName"):
                    return
                chosen, reason = await self._pick_node(current)
                if chosen is not None:
                    await self.client.request(
                        "POST",
                        PODS.path(ns, name, "binding"),
                        body={
                            "apiVersion": "v1",
                            "kind": "Binding",
                            "metadata": {"name": name, "uid": uid},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": chosen.name},
                        },
                    )
                    log.info("pod bound pod=%s/%s node=%s", ns, name, chosen.name)
                    return
                if reason != last_reason:
                    last_reason = reason
                    await self._patch_pod_status(
                        ns,
                        name,
                        {
                            "phase": "Pending",
                            "conditions": [
                                {
                                    "type": "PodScheduled",
                                    "status": "False",
                                    "reason": "Unschedulable",
                                    "message": reason,
                                    "lastTransitionTime": _now(),
                                }
                            ],
                        },
                    )
                    log.info("pod unschedulable pod=%s/%s reason=%s", ns, name, reason)
                await asyncio.sleep(0.5)
        except errors.NotFound:
            return
        finally:
            self._binding.discard(uid)

    async def _pick_node(self, pod: dict[str, Any]) -> tuple[SimNode | None, str]:
        fitting = [n for n in self.nodes.values() if _pod_fits(pod, n)]
        if not fitting:
            return None, "0/1 nodes are available: node(s) didn't match Pod's node affinity/selector"
        ready = [n for n in fitting if n.ready]
        if not ready:
            return (
                None,
                "0/1 nodes are available: node(s) had untolerated taint {node.kubernetes.io/unreachable}",
            )
        ns = pod["metadata"]["namespace"]
        for node in ready:
            problem = ""
            for volume in (pod.get("spec") or {}).get("volumes") or []:
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if not claim:
                    continue
                try:
                    pvc = await self.client.get(PERSISTENT_VOLUME_CLAIMS, claim, ns)
                except errors.NotFound:
                    problem = f'persistentvolumeclaim "{claim}" not found'
                    break
                pv_name = (pvc.get("spec") or {}).get("volumeName")
                if not pv_name:
                    problem = "pod has unbound immediate PersistentVolumeClaims"
                    break
                try:
                    pv = await self.client.get(PERSISTENT_VOLUMES, pv_name)
                except errors.NotFound:
                    problem = f'persistentvolume "{pv_name}" not found'
                    break
                required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required")
                if required and not node_selector_matches(required, node):
                    problem = "node(s) had volume node affinity conflict"
                    break
            if not problem:
                return node, ""
        return None, f"0/1 nodes are available: {problem}"

    async def _patch_pod_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(errors.NotFound):
            await self.client.patch(PODS, name, {"status": status}, ns, subresource="status")

    async def _run_pod(self, pod: dict[str, Any], node: SimNode) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        logs = self._workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        run = PodRun(ns, name, uid, node.name, _job_owner(pod), logs / f"{ns}_{name}_{uid[:8]}.log")
        self.runs[uid] = run
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
        started = _now()
        containers = spec.get("containers") or []
        try:
            async with self._slots:
                if not node.ready or node.name not in self.nodes:
                    return
                try:
                    plans = [await self._plan(pod, c, node, run) for c in containers]
                except PodFailure as failure:
                    await self._fail_unstarted(run, pod, failure, scheduled)
                    return
                await self._patch_pod_status(
                    ns,
                    name,
                    {
                        "phase": "Running",
                        "startTime": started,
                        "hostIP": "127.0.0.1",
                        "podIP": "127.0.0.1",
                        "conditions": [
                            scheduled,
                            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": _now()},
                            {"type": "Ready", "status": "True", "lastTransitionTime": _now()},
                        ],
                        "containerStatuses": [
                            {
                                "name": c["name"],
                                "image": c.get("image", ""),
                                "imageID": "",
                                "ready": True,
                                "started": True,
                                "restartCount": 0,
                                "state": {"running": {"startedAt": started}},
                            }
                            for c in containers
                        ],
                    },
                )
                run.phase = "Running"
                log.info("pod running pod=%s/%s node=%s argv=%s", ns, name, node.name, run.argv)
                deadline = spec.get("activeDeadlineSeconds")
                results = asyncio.gather(*(self._exec(run, plan) for plan in plans))
                try:
                    outcomes = await asyncio.wait_for(results, deadline) if deadline else await results
                    reason_pod = None
                except TimeoutError:
                    outcomes = [(137, "DeadlineExceeded", "") for _ in plans]
                    reason_pod = "DeadlineExceeded"
                finished = _now()
                statuses = []
                failed = False
                for c, (code, reason, message) in zip(containers, outcomes, strict=True):
                    failed = failed or code != 0
                    statuses.append(
                        {
                            "name": c["name"],
                            "image": c.get("image", ""),
                            "imageID": "",
                            "ready": False,
                            "started": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": code,
                                    "reason": reason,
                                    "message": message,
                                    "startedAt": started,
                                    "finishedAt": finished,
                                }
                            },
                        }
                    )
                phase = "Failed" if failed else "Succeeded"
                code, reason, message = outcomes[0] if outcomes else (0, "Completed", "")
                run.exit_code, run.reason, run.message, run.phase = code, reason, message, phase
                status: dict[str, Any] = {
                    "phase": phase,
                    "conditions": [
                        scheduled,
                        {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                        {
                            "type": "ContainersReady",
                            "status": "False",
                            "reason": "PodCompleted",
                            "lastTransitionTime": finished,
                        },
                        {
                            "type": "Ready",
                            "status": "False",
                            "reason": "PodCompleted",
                            "lastTransitionTime": finished,
                        },
                    ],
                    "containerStatuses": statuses,
                }
                if reason_pod:
                    status["reason"] = reason_pod
                    status["message"] = (
                        f"Pod was active on the node longer than the specified deadline ({deadline}s)"
                    )
                await self._patch_pod_status(ns, name, status)
                log.info(
                    "pod finished pod=%s/%s node=%s phase=%s exit_code=%s reason=%s peak_rss_bytes=%d",
                    ns,
                    name,
                    node.name,
                    phase,
                    code,
                    reason,
                    run.peak_rss_bytes,
                )
        finally:
            run.done.set()

    async def _fail_unstarted(
        self, run: PodRun, pod: dict[str, Any], failure: PodFailure, scheduled: dict[str, Any]
    ) -> None:
        """A pod that cannot start (unknown image, missing secret): failed, with the kubelet's reason."""
        meta = pod["metadata"]
        run.phase, run.reason, run.message = "Failed", failure.reason, failure.message
        now = _now()
        await self._patch_pod_status(
            meta["namespace"],
            meta["name"],
            {
                "phase": "Failed",
                "reason": failure.reason,
                "message": failure.message,
                "conditions": [
                    scheduled,
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "ContainersNotReady",
                        "lastTransitionTime": now,
                    },
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": failure.reason, "message": failure.message}},
                    }
                    for c in (pod.get("spec") or {}).get("containers") or []
                ],
            },
        )
        log.warning(
            "pod failed to start pod=%s/%s reason=%s message=%s",
            meta["namespace"],
            meta["name"],
            failure.reason,
            failure.message,
        )

    # ---- turning a container into a process ----------------------------------------------------
    async def _plan(
        self, pod: dict[str, Any], container: dict[str, Any], node: SimNode, run: PodRun
    ) -> dict[str, Any]:
        image = container.get("image", "")
        repo = _image_repo(image)
        if repo not in self.images:
            raise PodFailure(
                "ErrImagePull",
                f'Failed to pull image "{image}": the simulated node {node.name} has no local program for '
                f"image {repo!r} (known: {', '.join(sorted(self.images))})",
            )
        entry = self.images[repo]
        scratch = self._workdir / "pods" / run.uid[:8] / container["name"]
        scratch.mkdir(parents=True, exist_ok=True)
        mounts = await self._mounts(pod, container, node, scratch)
        termination = scratch / "termination-log"
        termination.write_text("")
        mounts.append(_Mount(container.get("terminationMessagePath") or TERMINATION_LOG, termination))
        mounts.sort(key=lambda m: len(m.container_path), reverse=True)
        env = await self._env(pod, container)
        home = scratch / "home"
        home.mkdir(exist_ok=True)
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HOME": str(home),
            "TMPDIR": str(home),
            "HOSTNAME": pod["metadata"]["name"],
            "LOCALCACHE_TERMINATION_LOG": str(termination),
        }
        full_env = {**base, **self.extra_env, **{k: _map_path(v, mounts) for k, v in env.items()}}
        args = [_map_path(_expand(a, env), mounts) for a in container.get("args") or []]
        if entry is None:
            command = [_map_path(_expand(a, env), mounts) for a in container.get("command") or []]
            if not command:
                raise PodFailure("CreateContainerConfigError", f"image {repo!r} needs an explicit command")
        else:
            command = list(entry)
        uid_gid = self._user(pod, container)
        if uid_gid is not None:
            for path in (scratch, home, termination):
                os.chown(path, *uid_gid)
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        memory_limit = None
        if limit is not None:
            try:
                memory_limit = int(parse_quantity(limit))
            except QuantityError as exc:
                raise PodFailure("CreateContainerConfigError", f"limits.memory: {exc}") from None
        run.argv = command + args
        run.uid_gid = uid_gid
        run.memory_limit_bytes = memory_limit
        groups = [
            int(g)
            for g in ((pod.get("spec") or {}).get("securityContext") or {}).get("supplementalGroups") or []
        ]
        fs_group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
        if fs_group is not None:
            groups.append(int(fs_group))
        return {
            "name": container["name"],
            "argv": command + args,
            "env": full_env,
            "cwd": str(scratch),
            "termination": termination,
            "policy": container.get("terminationMessagePolicy") or "File",
            "memory_limit": memory_limit,
            "user": uid_gid,
            "groups": groups,
        }

    def _user(self, pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, int] | None:
        if not self.run_as_pod_user:
            return None
        pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
        c_sc = container.get("securityContext") or {}
        uid = c_sc.get("runAsUser", pod_sc.get("runAsUser", IMAGE_DEFAULT_UID))
        gid = c_sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
        return int(uid), int(gid)

    async def _mounts(
        self, pod: dict[str, Any], container: dict[str, Any], node: SimNode, scratch: Path
    ) -> list[_Mount]:
        ns = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        mounts: list[_Mount] = []
        for vm in container.get("volumeMounts") or []:
            volume = volumes.get(vm["name"])
            if volume is None:
                raise PodFailure("CreateContainerConfigError", f"volumeMount {vm['name']!r}: no such volume")
            base = await self._volume_root(ns, volume, node, scratch)
            host = base
            sub = vm.get("subPath") or ""
            if sub:
                if sub.startswith("/") or ".." in Path(sub).parts:
                    raise PodFailure(
                        "CreateContainerConfigError", f"volumeMount {vm['name']!r}: bad subPath {sub!r}"
                    )
                host = base / sub
                self._make_subpath(base, host)
            mounts.append(_Mount(vm["mountPath"], host))
        return mounts

    @staticmethod
    def _make_subpath(base: Path, target: Path) -> None:
        """Create a missing subPath as the kubelet does, owned like the volume's root (fsGroup-ish)."""
        if target.exists():
            return
        try:
            st = base.stat()
            missing = []
            p = target
            while not p.exists():
                missing.append(p)
                p = p.parent
            for d in reversed(missing):
                d.mkdir()
                if os.geteuid() == 0:
                    os.chown(d, st.st_uid, st.st_gid)
        except OSError as exc:
            raise PodFailure(
                "CreateContainerConfigError", f"failed to create subPath directory {target}: {exc}"
            ) from None

    async def _volume_root(self, ns: str, volume: dict[str, Any], node: SimNode, scratch: Path) -> Path:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            try:
                pvc = await self.client.get(PERSISTENT_VOLUME_CLAIMS, claim, ns)
                pv_name = (pvc.get("spec") or {}).get("volumeName") or ""
                pv = await self.client.get(PERSISTENT_VOLUMES, pv_name) if pv_name else {}
            except errors.NotFound:
                raise PodFailure(
                    "FailedMount", f"volume {name!r}: PersistentVolumeClaim {claim!r} or its PV not found"
                ) from None
            spec = pv.get("spec") or {}
            path = (spec.get("local") or {}).get("path") or (spec.get("hostPath") or {}).get("path")
            if not path:
                raise PodFailure(
                    "FailedMount",
                    f"volume {name!r}: PV {pv_name!r} of claim {claim!r} is not a local or hostPath volume",
                )
            host = node.host_path(path)
            if not host.is_dir():
                raise PodFailure(
                    "FailedMount",
                    f'MountVolume.NewMounter initialization failed for volume "{pv_name}" : '
                    f'path "{path}" does not exist',
                )
            return host
        if "hostPath" in volume:
            hp = volume["hostPath"]
            host = node.host_path(hp["path"])
            if hp.get("type") in ("DirectoryOrCreate",) and not host.exists():
                host.mkdir(parents=True, mode=0o755)
            return host
        if "emptyDir" in volume:
            host = scratch / "volumes" / name
            host.mkdir(parents=True, exist_ok=True)
            host.chmod(0o777)
            return host
        if "secret" in volume or "configMap" in volume:
            kind, res = ("secret", SECRETS) if "secret" in volume else ("configMap", CONFIGMAPS)
            src = volume[kind]
            obj_name = src.get("secretName") or src.get("name")
            try:
                obj = await self.client.get(res, obj_name, ns)
            except errors.NotFound:
                if src.get("optional"):
                    obj = {}
                else:
                    raise PodFailure("FailedMount", f'{kind} "{obj_name}" not found') from None
            data = (
                {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                if kind == "secret"
                else {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            )
            host = scratch / "volumes" / name
            host.mkdir(parents=True, exist_ok=True)
            items = src.get("items")
            selected = (
                [(i["key"], i.get("path", i["key"])) for i in items] if items else [(k, k) for k in data]
            )
            for key, rel in selected:
                if key not in data:
                    raise PodFailure("FailedMount", f'{kind} "{obj_name}": key {key!r} not found')
                target = host / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[key])
                target.chmod(0o644)
            return host
        raise PodFailure("FailedMount", f"volume {name!r}: this volume type is not simulated")

    async def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source or "configMapRef" in source:
                kind, res = ("secretRef", SECRETS) if "secretRef" in source else ("configMapRef", CONFIGMAPS)
                ref = source[kind]
                data = await self._object_data(res, ns, ref["name"], optional=bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = _expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                env[name] = _field_path(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind, res = (
                    ("secretKeyRef", SECRETS) if "secretKeyRef" in vf else ("configMapKeyRef", CONFIGMAPS)
                )
                ref = vf[kind]
                optional = bool(ref.get("optional"))
                data = await self._object_data(res, ns, ref["name"], optional=optional)
                if ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not optional:
                    what = "secret" if kind == "secretKeyRef" else "configmap"
                    raise PodFailure(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {what.title()} {ns}/{ref['name']}",
                    )
            elif "resourceFieldRef" in vf:
                resource = vf["resourceFieldRef"].get("resource", "")
                kind_, _, what = resource.partition(".")
                env[name] = str(((container.get("resources") or {}).get(kind_) or {}).get(what, "0"))
            else:
                raise PodFailure(
                    "CreateContainerConfigError", f"env {name}: unsupported valueFrom {sorted(vf)}"
                )
        return env

    async def _object_data(self, res: Resource, ns: str, name: str, *, optional: bool) -> dict[str, str]:
        try:
            obj = await self.client.get(res, name, ns)
        except errors.NotFound:
            if optional:
                return {}
            what = "secret" if res is SECRETS else "configmap"
            raise PodFailure("CreateContainerConfigError", f'{what} "{name}" not found') from None
        data = obj.get("data") or {}
        if res is SECRETS:
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return {k: str(v) for k, v in data.items()}

    async def _exec(self, run: PodRun, plan: dict[str, Any]) -> tuple[int, str, str]:
        """Run one container's process to its end: (exit code, terminated reason, termination message)."""
        argv = list(plan["argv"])
        if plan["user"] is not None:
            uid, gid = plan["user"]
            groups = ",".join(str(g) for g in dict.fromkeys([gid, *plan["groups"]]))
            argv = [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                f"--groups={groups}",
                "--inh-caps=+dac_read_search",
                "--ambient-caps=+dac_read_search",
                "--pdeathsig=SIGKILL",
                "--",
                *argv,
            ]
        out = os.open(run.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=plan["env"],
                    cwd=plan["cwd"],
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                return 128, "StartError", f"failed to start {argv[0]}: {exc}"
        finally:
            os.close(out)
        self._procs.setdefault(run.uid, set()).add(proc)
        run.pids.append(proc.pid)
        oom = False
        try:
            waiter = asyncio.create_task(proc.wait())
            while not waiter.done():
                rss, hwm = _read_rss(proc.pid)
                run.peak_rss_bytes = max(run.peak_rss_bytes, hwm, rss)
                limit = plan["memory_limit"]
                if limit is not None and rss > limit and not oom:
                    oom = True
                    log.warning("oom kill pod=%s/%s rss=%d limit=%d", run.namespace, run.name, rss, limit)
                    self._signal(proc, signal.SIGKILL)
                await asyncio.wait({waiter}, timeout=RSS_POLL_S)
            code = waiter.result()
        except asyncio.CancelledError:
            self._signal(proc, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            raise
        finally:
            self._procs.get(run.uid, set()).discard(proc)
        exit_code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal, as a runtime reports
        if oom:
            return 137, "OOMKilled", ""
        message = ""
        with contextlib.suppress(OSError):
            message = plan["termination"].read_text(errors="replace")[-4096:]
        if exit_code != 0 and not message.strip() and plan["policy"] == "FallbackToLogsOnError":
            message = _termination_tail(run.log_text())
        return exit_code, "Completed" if exit_code == 0 else "Error", message

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _kill(self, uid: str) -> None:
        """Stop a pod's processes (SIGTERM, then SIGKILL after a grace period) and its task."""
        procs = list(self._procs.get(uid, ()))
        for proc in procs:
            self._signal(proc, signal.SIGTERM)
        if procs:
            done = asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
            try:
                await asyncio.wait_for(done, KILL_GRACE_S)
            except TimeoutError:
                for proc in procs:
                    self._signal(proc, signal.SIGKILL)
        task = self._pod_tasks.get(uid)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        run = self.runs.get(uid)
        if run is not None and not run.done.is_set():
            run.phase, run.reason = "Failed", "Killed"
            run.done.set()


def temp_root(prefix: str = "localcache-nodes-") -> Path:
    """A fresh directory for node disks, traversable by the pods' user."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
