"""What must hold after (and while) faults hit the system; each check returns violations as sentences.

The checks read the API and the node disks independently of the controllers' code: the storage key is
recomputed from the URI, file digests are recomputed from the bytes and compared with the source's own
files, so a controller that agrees with itself but not with reality is still caught.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import EVENTS, JOBS, Resource

MARKER = ".localcache-complete.json"
JOB_NAMESPACE = "kserve-localmodel-jobs"
LOCAL_MODEL_NODES = Resource("serving.kserve.io", "v1alpha1", "localmodelnodes", "LocalModelNode", False)


def storage_key(uri: str) -> str:
    """KServe's folder name (sha256 of the URI, 16 hex digits), recomputed here on purpose."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except our own bookkeeping (``.localcache-*``)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(part.startswith(".localcache-") for part in rel.split("/")):
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while block := fh.read(4 * 1024 * 1024):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out


@dataclass(frozen=True)
class CacheSpec:
    """One cache of the run and where its bytes really come from."""

    resource: Resource
    name: str
    namespace: str | None
    uri: str
    source_dir: Path  # the source's files, to compare digests with
    nodes: tuple[str, ...]  # the group's nodes

    @property
    def status_key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def __str__(self) -> str:
        return f"{self.resource.kind} {self.status_key}"


def marker_ok(folder: Path, uri: str) -> bool:
    """Cheap check (no hashing): a marker for ``uri`` and every listed file present at its size."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("uri") != uri:
        return False
    for f in marker.get("files") or []:
        try:
            if (folder / f["path"]).stat().st_size != f["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def verified_folder(folder: Path, uri: str, source: Mapping[str, str]) -> str | None:
    """None if ``folder`` is a complete, verified copy of ``source``; else why not."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as exc:
        return f"no readable completion marker ({exc})"
    if marker.get("uri") != uri:
        return f"marker is for {marker.get('uri')!r}, not {uri!r}"
    disk = file_digests(folder)
    if disk != dict(source):
        missing = sorted(set(source) - set(disk))
        extra = sorted(set(disk) - set(source))
        differ = sorted(k for k in set(source) & set(disk) if source[k] != disk[k])
        return f"files differ from the source: missing={missing} extra={extra} wrong bytes={differ}"
    listed = {f.get("path"): (f.get("digests") or {}).get("sha256") for f in marker.get("files") or []}
    if listed != disk:
        return "the marker's file list or digests do not match the files"
    return None


def _unfinished(job: Mapping[str, Any]) -> bool:
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (job.get("status") or {}).get("conditions") or []
    return not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


@dataclass
class Monitor:
    """Samples the cluster and the disks during the run: duplicate Jobs, lost entries, deleted folders,
    'Downloaded' without a complete folder. Violations are kept with the first time they were seen."""

    client: Client
    caches: list[CacheSpec]
    models_dir: Any  # Callable[[str], Path]
    interval: float = 1.0
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    _seen_entries: set[tuple[str, str]] = field(default_factory=set)
    _removed_by_hand: set[tuple[str, str]] = field(default_factory=set)
    _complete: set[tuple[str, str]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    def _violate(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    def removed_by_hand(self, status_key: str, node: str) -> None:
        """The harness is about to delete this entry itself (a hostile edit): its absence is not the
        manager's doing until it has been restored once. How fast it comes back is checked there."""
        self._removed_by_hand.add((status_key, node))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except (TimeoutError, errors.ApiError, OSError):
                pass  # the API server may be restarting: sample again later
            await asyncio.sleep(self.interval)

    async def sample(self) -> None:
        jobs = (await self.client.list(JOBS, JOB_NAMESPACE))["items"]
        active = Counter(
            (
                (j["metadata"].get("labels") or {}).get("modelNamespace", ""),
                (j["metadata"].get("labels") or {}).get("model", ""),
                (j["metadata"].get("labels") or {}).get("node", ""),
            )
            for j in jobs
            if _unfinished(j)
        )
        for (ns, model, node), n in active.items():
            if n > 1:
                self._violate(f"duplicate download Jobs: {n} unfinished for model {ns}/{model} on {node}")
        nodes = {n["metadata"]["name"]: n for n in (await self.client.list(LOCAL_MODEL_NODES))["items"]}
        for cache in self.caches:
            for node in cache.nodes:
                lmn = nodes.get(node) or {}
                entries = {
                    (m.get("modelName"), m.get("namespace") or None)
                    for m in (lmn.get("spec") or {}).get("localModels") or []
                }
                key = (cache.status_key, node)
                if (cache.name, cache.namespace) in entries:
                    self._seen_entries.add(key)
                    self._removed_by_hand.discard(key)
                elif key in self._seen_entries and key not in self._removed_by_hand:
                    self._violate(f"{cache}: the LocalModelNode {node} entry was lost while the cache exists")
                folder = self.models_dir(node) / storage_key(cache.uri)
                complete = await asyncio.to_thread(marker_ok, folder, cache.uri)
                if complete:
                    self._complete.add(key)
                elif key in self._complete and not folder.exists():
                    self._violate(f"{cache}: folder {folder} of a model in use was deleted on {node}")
                status = ((lmn.get("status") or {}).get("modelStatus") or {}).get(cache.status_key)
                # Re-check once: the status may be newer than a folder being published right now.
                if (
                    status == "ModelDownloaded"
                    and not complete
                    and not await asyncio.to_thread(marker_ok, folder, cache.uri)
                ):
                    self._violate(f"{cache}: {node} reports ModelDownloaded without a complete folder")
        self.samples += 1


async def final_checks(
    client: Client,
    caches: Iterable[CacheSpec],
    models_dir: Any,
    sources: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """The end-of-run state: every entry present, every Downloaded copy complete and verified."""
    out = []
    nodes = {n["metadata"]["name"]: n for n in (await client.list(LOCAL_MODEL_NODES))["items"]}
    for cache in caches:
        for node in cache.nodes:
            lmn = nodes.get(node) or {}
            entries = {
                (m.get("modelName"), m.get("namespace") or None, m.get("sourceModelUri"))
                for m in (lmn.get("spec") or {}).get("localModels") or []
            }
            if (cache.name, cache.namespace, cache.uri) not in entries:
                out.append(f"{cache}: no entry in LocalModelNode {node}: {sorted(map(str, entries))}")
            status = ((lmn.get("status") or {}).get("modelStatus") or {}).get(cache.status_key)
            folder = models_dir(node) / storage_key(cache.uri)
            if status == "ModelDownloaded":
                why = await asyncio.to_thread(verified_folder, folder, cache.uri, sources[cache.uri])
                if why:
                    out.append(f"{cache}: {node} reports ModelDownloaded but {folder}: {why}")
    return out


async def secrets_by_value(
    client: Client, canaries: Mapping[str, str], logs: Iterable[Path], resources: Iterable[Resource]
) -> list[str]:
    """Where a secret's value appears: Job specs, Events, the statuses of ``resources``, and ``logs``."""
    out = []

    def scan(where: str, text: str) -> None:
        for name, value in canaries.items():
            if value and value in text:
                out.append(f"the secret value {name!r} appears in {where}")

    for job in (await client.list(JOBS, None))["items"]:
        scan(f"Job {job['metadata'].get('namespace')}/{job['metadata']['name']}", json.dumps(job))
    for event in (await client.list(EVENTS, None))["items"]:
        scan(f"Event {event['metadata'].get('namespace')}/{event['metadata']['name']}", json.dumps(event))
    for res in resources:
        for obj in (await client.list(res, None))["items"]:
            scan(f"{res.kind} {obj['metadata']['name']} status", json.dumps(obj.get("status") or {}))
    for path in logs:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        scan(f"log {path.name}", text)
    return out


def processes_left(pids: Iterable[int]) -> list[str]:
    """Processes of the run still alive (zombies count as gone)."""
    out = []
    for pid in sorted(set(pids)):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"process {pid} still running: {cmd[:160]}")
    return out


def not_ours_intact(planted: Mapping[Path, bytes]) -> list[str]:
    """Files an admin put in a cache root: never deleted or changed."""
    out = []
    for path, content in planted.items():
        try:
            if path.read_bytes() != content:
                out.append(f"{path} (not ours) was changed")
        except OSError:
            out.append(f"{path} (not ours) was deleted")
    return out


__all__ = [
    "CacheSpec",
    "Monitor",
    "file_digests",
    "final_checks",
    "marker_ok",
    "not_ours_intact",
    "processes_left",
    "secrets_by_value",
    "storage_key",
    "verified_folder",
]
