"""Control-plane benchmark: how the manager's and the agents' cost grows with caches x nodes.

    make bench-controlplane                            # the full matrix (BENCH_SCALE=full)
    BENCH_SCALE=small .venv/bin/python bench/controlplane_bench.py     # 10 caches x 10 nodes
    BENCH_SCALE=100x10,1000x1 .venv/bin/python bench/controlplane_bench.py

Each scenario gets a fresh world, so counters and peak RSS belong to it alone: a real kube-apiserver
(envtest) with an audit log, simulated nodes (all in the guide's node group ``workers``), and the real
``cmd/manager.py`` and one real ``cmd/agent.py`` per node as subprocesses
(:class:`localcache.testing.system.LocalSystem`). Then ``C`` LocalModelCaches are created at once and
the clock runs until every cache reports ``copies.available == copies.total == N``.

Downloads are taken out of the timing so only the control plane is measured. In the default ``seeded``
mode each node's disk already holds every model's folder with a valid completion marker (written the
way the download program writes it), so each agent reports ``ModelDownloaded`` from the marker without
a Job: the measured path is cache → LocalModelNode entries → agent status → cache status. The ``jobs``
mode (``BENCH_SCALE=10x10:jobs``) keeps the download Jobs: the simulated kubelet runs the real download
program on a 16-byte file from a local HTTP server, so Job creation, the Job controller and the agent's
Job handling are in the figure too (it is bounded by the simulator's 4 concurrent pods and by
Python start-up on this machine, not by the control plane).

What is measured, per scenario:

* times from the first cache create: all LocalModelNode specs complete, all agents report every model
  ``ModelDownloaded``, all caches converged; and converged minus agents-reported (the goal: ≤ 60 s);
* API requests, counted twice independently: by the API server's audit log (per user: the manager's
  and the agents' ServiceAccounts; reads = get/list/watch, writes = create/update/patch/delete) and by
  the processes' own ``rest_client_requests_total`` scraped from their ``/metrics``; the two must
  agree, which checks the metrics users will see;
* manager and agent peak RSS (``VmHWM``), manager and agent CPU seconds (``utime + stime``);
* idle: every write in a quiet window (30 s by default) after convergence, and the agents' CPU there.
* the manager's ``controller_runtime_reconcile_total`` and the agents' ``localcache_agent_models``
  gauge, checked against what the benchmark observed through its own watches.

After the matrix, the scaling exponents: least-squares slopes of log(time) and log(requests) against
log(caches x nodes). Results go to ``bench/results/controlplane.json`` (``BENCH_OUT`` overrides),
rewritten after every scenario so a partial run keeps what it measured.

Settings (environment):

* ``BENCH_SCALE``: ``small`` | ``medium`` | ``full`` (default) | ``CxN[:jobs],...``;
* ``BENCH_IDLE_S`` (30) and ``BENCH_SETTLE_S`` (5: the pause between convergence and the idle window);
* ``BENCH_TIMEOUT_S`` (900): how long one scenario may take to converge; one that does not is recorded
  with its partial progress (pairs reported, rate) and no idle figures;
* ``BENCH_BUDGET_S``: the whole run; each scenario's timeout is cut to what is left, and scenarios that
  cannot start in time are skipped (and listed as not run);
* ``BENCH_KEEP=1``: keep the work directories (logs, audit log);
* ``BENCH_MERGE=1``: keep the scenarios of the existing result file that this run does not repeat (each
  scenario records its own start time and load average).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS_DIR, Results, loglog_slope, proc_cpu_seconds
from prometheus_client.parser import text_string_to_metric_families

from localcache.api.naming import storage_key
from localcache.runtime.client import Client
from localcache.runtime.resources import EVENTS, Resource
from localcache.storage.marker import Marker, MarkerFile, write_marker
from localcache.testing.envtest import K8S_VERSION, ControlPlane
from localcache.testing.nodesim import GPU_LABEL
from localcache.testing.system import (
    GPU_PRODUCT,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NODES,
    LocalSystem,
    ManagedProcess,
    NodeSpec,
    apply_documents,
    guide_example,
)

log = logging.getLogger("bench.controlplane")

MANAGER_USER = "system:serviceaccount:kserve:localcache-controller-manager"
AGENT_USER = "system:serviceaccount:kserve:localcache-agent"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})
HTTP_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DOWNLOADED = "ModelDownloaded"
MODEL_BYTES = b"localcache-bench"  # 16 bytes: what a no-op model weighs
MODEL_FILE = "model.bin"
CACHE_PREFIX = "bench-"
MIB = 1024 * 1024

SCALES: dict[str, list[str]] = {
    "small": ["10x10"],
    "medium": ["10x10", "100x10", "10x50", "100x50", "10x10:jobs"],
    "full": [
        "10x10",
        "100x10",
        "1000x10",
        "10x50",
        "100x50",
        "1000x50",
        "1000x1",
        "10x10:jobs",
    ],
}

AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["{MANAGER_USER}", "{AGENT_USER}"]
- level: None
"""


@dataclass(frozen=True)
class Scenario:
    caches: int
    nodes: int
    mode: str = "seeded"  # or "jobs"

    @property
    def name(self) -> str:
        base = f"{self.caches}caches-x-{self.nodes}nodes"
        return base if self.mode == "seeded" else f"{base}-{self.mode}"

    @property
    def pairs(self) -> int:
        return self.caches * self.nodes


def parse_scale(value: str) -> list[Scenario]:
    """``small``/``medium``/``full`` or a comma list of ``CxN`` / ``CxN:jobs`` (download Jobs instead of
    seeded disks)."""
    specs = SCALES.get(value.strip()) or [s for s in value.split(",") if s.strip()]
    out = []
    for spec in specs:
        shape, *flags = spec.strip().split(":")
        try:
            caches, nodes = (int(p) for p in shape.lower().split("x"))
        except ValueError:
            raise SystemExit(f"BENCH_SCALE entry {spec!r}: want CxN or CxN:jobs, e.g. 100x10") from None
        unknown = set(flags) - {"seeded", "jobs"}
        if unknown or caches < 1 or nodes < 1:
            raise SystemExit(f"BENCH_SCALE entry {spec!r}: unknown flags {sorted(unknown)} or a size < 1")
        mode = "jobs" if "jobs" in flags else "seeded"
        out.append(Scenario(caches, nodes, mode))
    return out


# ---- process figures ---------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes of a live process ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return out


def metrics_port(process: ManagedProcess) -> int:
    for arg in process.argv:
        if arg.startswith("--metrics-bind-address="):
            return int(arg.rsplit(":", 1)[1])
    raise RuntimeError(f"{process.name}: no --metrics-bind-address on its command line")


@dataclass
class Scrape:
    """The figures taken from one process's ``/metrics``."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, code) → count
    reconciles: Counter[tuple[str, str]] = field(default_factory=Counter)  # (controller, result)
    reconcile_errors: Counter[str] = field(default_factory=Counter)
    agent_models: Counter[str] = field(default_factory=Counter)  # status → gauge
    jobs_created: float = 0.0
    request_bytes: float = 0.0  # rest_client_request_size_bytes_sum over verbs
    queue_depth: float = 0.0  # workqueue_depth over controllers
    response_bytes: float = 0.0  # rest_client_response_size_bytes_sum over verbs

    def reads(self) -> int:
        return int(sum(v for (m, _), v in self.requests.items() if m not in HTTP_WRITES))

    def writes(self) -> int:
        return int(sum(v for (m, _), v in self.requests.items() if m in HTTP_WRITES))


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "rest_client_requests_total":
                out.requests[(labels.get("method", ""), labels.get("code", ""))] += sample.value
            elif sample.name == "controller_runtime_reconcile_total":
                out.reconciles[(labels.get("controller", ""), labels.get("result", ""))] += sample.value
            elif sample.name == "controller_runtime_reconcile_errors_total":
                out.reconcile_errors[labels.get("controller", "")] += sample.value
            elif sample.name == "localcache_agent_models":
                out.agent_models[labels.get("status", "")] += sample.value
            elif sample.name == "localcache_agent_download_jobs_created_total":
                out.jobs_created += sample.value
            elif sample.name == "workqueue_depth":
                out.queue_depth += sample.value
            elif sample.name == "rest_client_request_size_bytes_sum":
                out.request_bytes += sample.value
            elif sample.name == "rest_client_response_size_bytes_sum":
                out.response_bytes += sample.value
    return out


def merge(scrapes: Iterable[Scrape]) -> Scrape:
    out = Scrape()
    for s in scrapes:
        out.requests.update(s.requests)
        out.reconciles.update(s.reconciles)
        out.reconcile_errors.update(s.reconcile_errors)
        out.agent_models.update(s.agent_models)
        out.jobs_created += s.jobs_created
        out.request_bytes += s.request_bytes
        out.response_bytes += s.response_bytes
    return out


def delta(after: Scrape, before: Scrape) -> Scrape:
    out = Scrape()
    out.requests = Counter({k: after.requests[k] - before.requests.get(k, 0) for k in after.requests})
    out.reconciles = Counter({k: after.reconciles[k] - before.reconciles.get(k, 0) for k in after.reconciles})
    out.reconcile_errors = Counter(
        {k: after.reconcile_errors[k] - before.reconcile_errors.get(k, 0) for k in after.reconcile_errors}
    )
    out.agent_models = after.agent_models
    out.jobs_created = after.jobs_created - before.jobs_created
    out.request_bytes = after.request_bytes - before.request_bytes
    out.response_bytes = after.response_bytes - before.response_bytes
    return out


@dataclass
class Snapshot:
    """Metrics, CPU and memory of the manager and every agent at one moment."""

    at: float  # wall clock (time.time), comparable with audit timestamps
    manager: Scrape
    agents: dict[str, Scrape]
    manager_cpu: float
    agent_cpu: dict[str, float]
    manager_mem: dict[str, int]
    agent_mem: dict[str, dict[str, int]]
    plane_cpu: dict[str, float] = field(default_factory=dict)  # etcd / kube-apiserver / ...
    apiserver: dict[str, tuple[float, float]] = field(default_factory=dict)  # verb+resource → (sum s, count)

    @property
    def agents_total(self) -> Scrape:
        return merge(self.agents.values())


def plane_cpu(plane: ControlPlane) -> dict[str, float]:
    out = {}
    for pid in plane.pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        out[name] = proc_cpu_seconds(pid) or 0.0
    return out


def apiserver_latency(plane: ControlPlane) -> dict[str, tuple[float, float]]:
    """The API server's own ``apiserver_request_duration_seconds`` for our kinds: the server side of
    every request's latency, whoever sent it."""
    out: dict[str, tuple[float, float]] = {}
    try:
        text = plane.request("GET", "/metrics")
    except OSError as exc:  # a busy API server: this figure is a detail, not worth the scenario
        log.warning("API server /metrics not read: %s", exc)
        return out
    for family in text_string_to_metric_families(text if isinstance(text, str) else ""):
        if family.name != "apiserver_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("group") != "serving.kserve.io" or sample.name.endswith("_bucket"):
                continue
            key = f"{labels.get('verb')} {labels.get('resource')}" + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            total, count = out.get(key, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            out[key] = (total, count)
    return out


async def snapshot(system: LocalSystem) -> Snapshot:
    assert system.manager is not None and system.manager.popen is not None
    assert system.plane is not None
    manager = system.manager
    agents = dict(system.agents)
    at = time.time()
    m_scrape = await asyncio.to_thread(scrape, metrics_port(manager))
    a_scrapes = {}
    for node, proc in agents.items():
        a_scrapes[node] = await asyncio.to_thread(scrape, metrics_port(proc))
    m_pid = manager.popen.pid
    a_pids = {n: p.popen.pid for n, p in agents.items() if p.popen is not None}
    return Snapshot(
        at=at,
        manager=m_scrape,
        agents=a_scrapes,
        manager_cpu=proc_cpu_seconds(m_pid) or 0.0,
        agent_cpu={n: proc_cpu_seconds(pid) or 0.0 for n, pid in a_pids.items()},
        manager_mem=proc_status(m_pid),
        agent_mem={n: proc_status(pid) for n, pid in a_pids.items()},
        plane_cpu=plane_cpu(system.plane),
        apiserver=await asyncio.to_thread(apiserver_latency, system.plane),
    )


# ---- the audit log (the independent count) -----------------------------------------------------------
@dataclass
class AuditEvent:
    at: float
    user: str
    verb: str
    resource: str
    code: int


def _parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path) -> list[AuditEvent]:
    """One event per request (by auditID): watches are logged when they start, others when they end."""
    seen: set[str] = set()
    out = []
    if not path.is_file():
        return out
    with open(path) as fh:
        for line in fh:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            audit_id = ev.get("auditID", "")
            if audit_id in seen:
                continue
            seen.add(audit_id)
            ref = ev.get("objectRef") or {}
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            out.append(
                AuditEvent(
                    _parse_ts(ev.get("requestReceivedTimestamp") or ev.get("stageTimestamp")),
                    (ev.get("user") or {}).get("username", ""),
                    ev.get("verb", ""),
                    resource or ev.get("requestURI", ""),
                    int((ev.get("responseStatus") or {}).get("code") or 0),
                )
            )
    return out


@dataclass
class AuditCount:
    reads: int = 0
    writes: int = 0
    conflicts: int = 0  # 409 answers: optimistic-concurrency writes that lost a race
    refused: int = 0  # 401/403 answers
    by_key: Counter[str] = field(default_factory=Counter)  # "verb resource"

    @property
    def total(self) -> int:
        return self.reads + self.writes


def count_audit(events: Sequence[AuditEvent], user: str, start: float, end: float) -> AuditCount:
    out = AuditCount()
    for ev in events:
        if ev.user != user or not start <= ev.at < end:
            continue
        if ev.code == 409:
            out.conflicts += 1
        elif ev.code in (401, 403):
            out.refused += 1
        if ev.verb in WRITE_VERBS:
            out.writes += 1
        else:
            out.reads += 1
        out.by_key[f"{ev.verb} {ev.resource}"] += 1
    return out


# ---- world setup -------------------------------------------------------------------------------------
def model_uri(base: str, index: int) -> str:
    return f"{base}/models/{CACHE_PREFIX}{index:04d}.bin"


def cache_name(index: int) -> str:
    return f"{CACHE_PREFIX}{index:04d}"


def seed_disks(system: LocalSystem, uris: Sequence[str]) -> int:
    """Write every model's folder and completion marker on every node, as the download program leaves
    them: a file, then ``.localcache-complete.json`` naming it with its size and digest."""
    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    now = datetime.now(UTC)
    chown = os.geteuid() == 0
    written = 0
    for node in system.node_specs:
        models = system.models_dir(node)
        models.mkdir(parents=True, exist_ok=True)
        if chown:
            os.chown(models, 1000, 1000)
        for uri in uris:
            folder = models / storage_key(uri)
            folder.mkdir(exist_ok=True)
            (folder / MODEL_FILE).write_bytes(MODEL_BYTES)
            marker = Marker(
                uri=uri,
                files=[MarkerFile(path=MODEL_FILE, size=len(MODEL_BYTES), digests={"sha256": digest})],
                total_bytes=len(MODEL_BYTES),
                started_at=now,
                completed_at=now,
                duration_s=0.0,
            )
            write_marker(folder, marker, fsync=False)
            if chown:
                for path in (folder, folder / MODEL_FILE, folder / ".localcache-complete.json"):
                    os.chown(path, 1000, 1000)
            written += 1
    return written


def serve_models(system: LocalSystem, uris: Sequence[str]) -> None:
    (system.http_root / "models").mkdir(parents=True, exist_ok=True)
    for uri in uris:
        (system.http_root / "models" / uri.rsplit("/", 1)[1]).write_bytes(MODEL_BYTES)


def cache_body(name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": "1Mi", "nodeGroups": ["workers"]},
    }


class Progress:
    """The benchmark's own view through two watches: when did each milestone first hold?"""

    def __init__(self, caches: int, nodes: int) -> None:
        self.caches = caches
        self.nodes = nodes
        self.converged: set[str] = set()
        self.lmn_complete: set[str] = set()
        self.lmn_reported: set[str] = set()
        self.lmn_downloaded: dict[str, int] = {}
        self.lmn_entries: dict[str, int] = {}
        self.at: dict[str, float] = {}  # milestone → wall clock
        self.changed = asyncio.Event()

    def _mark(self, milestone: str, done: bool) -> None:
        if done and milestone not in self.at:
            self.at[milestone] = time.time()
            self.changed.set()

    def on_cache(self, etype: str, obj: Mapping[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        if not name.startswith(CACHE_PREFIX):
            return
        copies = (obj.get("status") or {}).get("copies") or {}
        if etype != "DELETED" and copies.get("total") == self.nodes and copies.get("available") == self.nodes:
            self.converged.add(name)
        else:
            self.converged.discard(name)
        self._mark("converged", len(self.converged) == self.caches)

    def on_lmn(self, etype: str, obj: Mapping[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        models = (obj.get("spec") or {}).get("localModels") or []
        statuses = (obj.get("status") or {}).get("modelStatus") or {}
        downloaded = sum(1 for k, v in statuses.items() if v == DOWNLOADED and k.startswith(CACHE_PREFIX))
        self.lmn_downloaded[name] = downloaded
        self.lmn_entries[name] = len(models)
        if etype != "DELETED" and len(models) == self.caches:
            self.lmn_complete.add(name)
        else:
            self.lmn_complete.discard(name)
        if etype != "DELETED" and downloaded == self.caches:
            self.lmn_reported.add(name)
        else:
            self.lmn_reported.discard(name)
        self._mark("lmn_specs_complete", len(self.lmn_complete) == self.nodes)
        self._mark("agents_reported", len(self.lmn_reported) == self.nodes)


async def watch_forever(client: Client, resource: Resource, handler: Any) -> None:
    """LIST then WATCH, re-listing after any error, like an informer without the cache."""
    while True:
        try:
            items, rv = await client.list_all(resource)
            for item in items:
                handler("ADDED", item)
            async with client.watch(resource, resource_version=rv, timeout_seconds=290) as events:
                async for etype, obj in events:
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        handler(etype, obj)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("bench watch restarting resource=%s error=%s", resource.plural, exc)
            await asyncio.sleep(0.5)


async def count_events(client: Client) -> dict[str, int]:
    """Events in the cluster by ``source.component`` and reason (each Event object once, with its count)."""
    try:
        items, _ = await client.list_all(EVENTS)
    except Exception as exc:  # a detail: never worth the scenario
        log.warning("events not listed: %s", exc)
        return {}
    counts: Counter[str] = Counter()
    for ev in items:
        component = (ev.get("source") or {}).get("component") or ev.get("reportingComponent") or "?"
        counts[f"{component} {ev.get('reason')} objects"] += 1
        counts[f"{component} {ev.get('reason')} count"] += int(ev.get("count") or 1)
    return dict(counts.most_common())


async def create_caches(client: Client, uris: Sequence[str], concurrency: int = 8) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int, uri: str) -> None:
        async with slots:
            await client.create(LOCAL_MODEL_CACHES, cache_body(cache_name(i), uri))

    await asyncio.gather(*(one(i, uri) for i, uri in enumerate(uris)))


# ---- one scenario ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: Scenario
    figures: dict[str, tuple[float | int | None, str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def put(self, metric: str, value: float | int | None, unit: str) -> None:
        self.figures[metric] = (value, unit)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"scenario": self.scenario.name, "check": name, "ok": ok, "detail": detail})
        (log.info if ok else log.warning)("check %s %s: %s", name, "ok" if ok else "FAILED", detail)


def say(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", flush=True)


def prepare_workdir(sc: Scenario) -> tuple[Path, Path]:
    """A fresh directory traversable by the agents' user, holding the audit policy."""
    workdir = Path(tempfile.mkdtemp(prefix=f"localcache-bench-{sc.name}-"))
    workdir.chmod(0o755)
    (workdir / "system").mkdir()
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    return workdir, policy


async def run_scenario(sc: Scenario, timeout_s: float, idle_s: float, settle_s: float, keep: bool) -> Outcome:
    out = Outcome(sc)
    workdir, policy = prepare_workdir(sc)
    audit_log = workdir / "audit.log"
    plane = ControlPlane(
        workdir=workdir / "envtest",
        extra_apiserver_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-maxsize=0",
            "--audit-log-format=json",
        ],
    )
    nodes = [NodeSpec(f"bench-node-{i:03d}", {GPU_LABEL: GPU_PRODUCT}) for i in range(sc.nodes)]
    # Seeded folders stand for downloads that finish at once; the agents' disk GC must not take them for
    # orphans (its default grace is 10 min) while a slow run has not yet put their entries in the spec.
    agent_args = ["--gc-grace-period=86400"] if sc.mode == "seeded" else []
    system = LocalSystem(
        plane=plane, workdir=workdir / "system", nodes=nodes, s3=False, agent_args=agent_args
    )
    bench_client: Client | None = None
    watchers: list[asyncio.Task[None]] = []
    t_start = time.monotonic()
    out.put("loadavg_1m_at_start", os.getloadavg()[0], "load")
    out.put("started_at_unix", int(time.time()), "s")
    try:
        await asyncio.to_thread(plane.start)
        say(f"{sc.name}: control plane up at {plane.url}; starting the manager and {sc.nodes} agents")
        await system.start()
        assert system.client is not None and system.http is not None
        out.put("setup_s", time.monotonic() - t_start, "s")
        await apply_documents(system.client, guide_example("01-inferenceservice-config-localmodel.yaml"))
        await apply_documents(system.client, guide_example("08-local-model-node-group.yaml"))
        uris = [model_uri(system.http.url, i) for i in range(sc.caches)]
        # The source serves every model in both modes, so a Job made in seeded mode (which the check
        # below reports) would still succeed instead of looping on failures.
        await asyncio.to_thread(serve_models, system, uris)
        if sc.mode == "seeded":
            t_seed = time.monotonic()
            folders = await asyncio.to_thread(seed_disks, system, uris)
            say(f"{sc.name}: seeded {folders} model folders in {time.monotonic() - t_seed:.1f}s")
        bench_client = await Client.from_kubeconfig(system.kubeconfig)
        progress = Progress(sc.caches, sc.nodes)
        watchers = [
            asyncio.create_task(watch_forever(bench_client, LOCAL_MODEL_CACHES, progress.on_cache)),
            asyncio.create_task(watch_forever(bench_client, LOCAL_MODEL_NODES, progress.on_lmn)),
        ]
        # Let the agents and the manager digest the config and the group, so the baseline is quiet.
        await asyncio.sleep(3.0)
        base = await snapshot(system)
        t0 = time.time()
        await create_caches(bench_client, uris)
        out.put("create_s", time.time() - t0, "s")
        say(f"{sc.name}: {sc.caches} caches created in {time.time() - t0:.1f}s; waiting for convergence")
        deadline = time.monotonic() + timeout_s
        last_report = 0.0
        while "converged" not in progress.at and time.monotonic() < deadline:
            system.check_processes()
            progress.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.changed.wait(), 2.0)
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                say(
                    f"{sc.name}: +{time.time() - t0:.0f}s caches converged {len(progress.converged)}/"
                    f"{sc.caches}, LMN specs complete {len(progress.lmn_complete)}/{sc.nodes}, "
                    f"models reported {sum(progress.lmn_downloaded.values())}/{sc.pairs}"
                )
        converged = "converged" in progress.at
        t_end = progress.at.get("converged", time.time())
        conv = await snapshot(system)
        for milestone in ("lmn_specs_complete", "agents_reported", "converged"):
            at = progress.at.get(milestone)
            out.put(f"{milestone}_s", None if at is None else at - t0, "s")
        if "agents_reported" in progress.at and converged:
            out.put(
                "converged_after_agents_s", progress.at["converged"] - progress.at["agents_reported"], "s"
            )
        out.put("converged", int(converged), "bool")
        out.put("caches_converged", len(progress.converged), "caches")
        out.put("entries_written", sum(progress.lmn_entries.values()), "(cache,node) pairs")
        out.put("models_reported", sum(progress.lmn_downloaded.values()), "(cache,node) pairs")
        out.put(
            "pairs_reported_per_s", sum(progress.lmn_downloaded.values()) / max(1e-3, t_end - t0), "pairs/s"
        )
        say(
            f"{sc.name}: converged={converged} in {t_end - t0:.1f}s "
            f"(specs {progress.at.get('lmn_specs_complete', 0) - t0:.1f}s, "
            f"agents {progress.at.get('agents_reported', 0) - t0:.1f}s)"
        )

        # Quiet period: nothing changes, so nothing may be written (skipped if it never converged:
        # the system is still working, and the idle figures would say nothing).
        idle0 = idle1 = conv
        if converged:
            await asyncio.sleep(settle_s)
            idle0 = await snapshot(system)
            await asyncio.sleep(idle_s)
            idle1 = await snapshot(system)
        system.check_processes()
        out.details["events_by_component_reason"] = await count_events(bench_client)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        watchers = []
        await bench_client.close()
        bench_client = None
        await system.stop()  # stops manager + agents (flushes nothing we need; figures are taken)
        await asyncio.to_thread(plane.stop)  # the audit log is complete once the API server stopped
        events = read_audit(audit_log)
        record(out, sc, base, conv, idle0, idle1, events, t0, t_end)
        out.put("loadavg_1m_at_end", os.getloadavg()[0], "load")
        out.put("wall_s", time.monotonic() - t_start, "s")
        return out
    finally:
        for task in watchers:
            task.cancel()
        if watchers:
            await asyncio.gather(*watchers, return_exceptions=True)
        if bench_client is not None:
            await bench_client.close()
        with contextlib.suppress(Exception):
            await system.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(plane.stop)
        if keep:
            say(f"{sc.name}: work directory kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def record(
    out: Outcome,
    sc: Scenario,
    base: Snapshot,
    conv: Snapshot,
    idle0: Snapshot,
    idle1: Snapshot,
    events: Sequence[AuditEvent],
    t0: float,
    t_end: float,
) -> None:
    c, pairs = sc.caches, sc.pairs
    # Requests from creation to convergence, counted by the API server (audit) and by the processes.
    m_audit = count_audit(events, MANAGER_USER, base.at, conv.at)
    a_audit = count_audit(events, AGENT_USER, base.at, conv.at)
    m_metrics = delta(conv.manager, base.manager)
    a_metrics = delta(conv.agents_total, base.agents_total)
    for who, audit, metrics in (("manager", m_audit, m_metrics), ("agents", a_audit, a_metrics)):
        out.put(f"{who}_reads", audit.reads, "requests")
        out.put(f"{who}_writes", audit.writes, "requests")
        out.put(f"{who}_reads_per_cache", audit.reads / c, "requests/cache")
        out.put(f"{who}_writes_per_cache", audit.writes / c, "requests/cache")
        out.put(f"{who}_conflicts", audit.conflicts, "requests")
        out.put(f"{who}_refused", audit.refused, "requests")
        out.put(f"{who}_requests_metrics", metrics.reads() + metrics.writes(), "requests")
        out.put(f"{who}_request_mib", metrics.request_bytes / MIB, "MiB")
        out.put(f"{who}_response_mib", metrics.response_bytes / MIB, "MiB")
        agree = abs((metrics.reads() + metrics.writes()) - audit.total) <= max(2, 0.01 * audit.total)
        out.check(
            f"{who}_requests_metrics_match_audit",
            agree,
            f"rest_client_requests_total delta {metrics.reads()}+{metrics.writes()} (reads+writes) vs "
            f"audit log {audit.reads}+{audit.writes}",
        )
        out.details[f"{who}_requests_by_verb_resource"] = dict(audit.by_key.most_common())
    total = m_audit.total + a_audit.total
    out.put("requests_total", total, "requests")
    out.put("requests_per_cache", total / c, "requests/cache")
    out.put("requests_per_cache_node", total / pairs, "requests/(cache*node)")
    out.put("writes_per_cache_node", (m_audit.writes + a_audit.writes) / pairs, "requests/(cache*node)")

    # CPU and memory.
    out.put("manager_cpu_s", conv.manager_cpu - base.manager_cpu, "cpu-s")
    out.put("manager_cpu_total_s", idle1.manager_cpu, "cpu-s")
    out.put("manager_peak_rss_mib", idle1.manager_mem.get("VmHWM", 0) / MIB, "MiB")
    agent_hwm = [m.get("VmHWM", 0) / MIB for m in idle1.agent_mem.values()]
    out.put("agent_peak_rss_mib_max", max(agent_hwm, default=0.0), "MiB")
    out.put("agent_peak_rss_mib_mean", sum(agent_hwm) / max(1, len(agent_hwm)), "MiB")
    agent_cpu = sum(conv.agent_cpu.values()) - sum(base.agent_cpu.values())
    out.put("agents_cpu_s", agent_cpu, "cpu-s")
    for name, short in (("kube-apiserver", "apiserver"), ("etcd", "etcd")):
        if name in conv.plane_cpu:
            out.put(f"{short}_cpu_s", conv.plane_cpu[name] - base.plane_cpu.get(name, 0.0), "cpu-s")
    latency = {}
    for key, (total, count) in conv.apiserver.items():
        t0_, c0_ = base.apiserver.get(key, (0.0, 0.0))
        if count - c0_ > 0 and not key.startswith(("WATCH", "LIST")):
            latency[key] = {
                "count": int(count - c0_),
                "mean_ms": round(1000 * (total - t0_) / (count - c0_), 1),
            }
    out.details["apiserver_latency_serving_kserve_io"] = latency
    for key, metric in (
        ("PATCH localmodelnodes", "lmn_patch"),
        ("PUT localmodelnodes/status", "lmn_status_put"),
    ):
        if key in latency:
            out.put(f"apiserver_{metric}_mean_ms", latency[key]["mean_ms"], "ms")
    writes_after = [
        ev.at
        for ev in events
        if ev.at >= t_end and ev.verb in WRITE_VERBS and ev.user in (MANAGER_USER, AGENT_USER)
    ]
    out.put("last_write_after_converged_s", (max(writes_after) - t_end) if writes_after else 0.0, "s")

    # Idle window: zero writes wanted, from either count.
    window = idle1.at - idle0.at
    if window <= 0:
        out.put("idle_window_s", None, "s")
        record_metrics_checks(out, sc, base, conv, idle1, a_metrics)
        return
    m_idle = count_audit(events, MANAGER_USER, idle0.at, idle1.at)
    a_idle = count_audit(events, AGENT_USER, idle0.at, idle1.at)
    m_idle_metrics = delta(idle1.manager, idle0.manager)
    a_idle_metrics = delta(idle1.agents_total, idle0.agents_total)
    out.put("idle_window_s", window, "s")
    out.put("idle_manager_writes", m_idle.writes, "requests")
    out.put("idle_agents_writes", a_idle.writes, "requests")
    out.put("idle_manager_reads", m_idle.reads, "requests")
    out.put("idle_agents_reads", a_idle.reads, "requests")
    out.put("idle_writes_metrics", m_idle_metrics.writes() + a_idle_metrics.writes(), "requests")
    out.details["idle_writes_by_verb_resource"] = {
        "manager": {k: v for k, v in m_idle.by_key.items() if k.split()[0] in WRITE_VERBS},
        "agents": {k: v for k, v in a_idle.by_key.items() if k.split()[0] in WRITE_VERBS},
    }
    m_settle = count_audit(events, MANAGER_USER, conv.at, idle0.at)
    a_settle = count_audit(events, AGENT_USER, conv.at, idle0.at)
    out.put("settle_writes", m_settle.writes + a_settle.writes, "requests")
    out.details["settle_writes_by_verb_resource"] = {
        "manager": {k: v for k, v in m_settle.by_key.items() if k.split()[0] in WRITE_VERBS},
        "agents": {k: v for k, v in a_settle.by_key.items() if k.split()[0] in WRITE_VERBS},
    }
    out.check(
        "idle_zero_writes",
        m_idle.writes + a_idle.writes == 0,
        f"audit: manager {m_idle.writes}, agents {a_idle.writes} writes in {window:.0f}s; "
        f"metrics: {m_idle_metrics.writes() + a_idle_metrics.writes()}",
    )
    idle_cpu = {n: idle1.agent_cpu.get(n, 0.0) - idle0.agent_cpu.get(n, 0.0) for n in idle1.agent_cpu}
    out.put("idle_agent_cpu_percent_max", 100 * max(idle_cpu.values(), default=0.0) / window, "%")
    out.put("idle_agent_cpu_percent_mean", 100 * sum(idle_cpu.values()) / max(1, len(idle_cpu)) / window, "%")
    out.put("idle_manager_cpu_percent", 100 * (idle1.manager_cpu - idle0.manager_cpu) / window, "%")
    idle_reconciles = sum(delta(idle1.manager, idle0.manager).reconciles.values())
    out.put("idle_manager_reconciles", idle_reconciles, "reconciles")
    out.put("manager_queue_depth_at_convergence", conv.manager.queue_depth, "items")
    out.put("manager_queue_depth_after_idle", idle1.manager.queue_depth, "items")

    record_metrics_checks(out, sc, base, conv, idle1, a_metrics)


def record_metrics_checks(
    out: Outcome, sc: Scenario, base: Snapshot, conv: Snapshot, last: Snapshot, a_metrics: Scrape
) -> None:
    """The manager's and agents' own metrics against what the benchmark saw."""
    c, pairs = sc.caches, sc.pairs
    reconciles = delta(conv.manager, base.manager).reconciles
    by_controller: Counter[str] = Counter()
    for (controller, _result), value in reconciles.items():
        by_controller[controller] += int(value)
    out.details["manager_reconciles_by_controller"] = dict(by_controller)
    cache_ctrl = max(
        (k for k in by_controller if "namespace" not in k.lower() and "cache" in k.lower()),
        key=lambda k: by_controller[k],
        default=None,
    )
    cache_reconciles = by_controller.get(cache_ctrl, 0) if cache_ctrl else 0
    out.put("manager_cache_reconciles", cache_reconciles, "reconciles")
    out.put("manager_cache_reconciles_per_cache", cache_reconciles / c, "reconciles/cache")
    out.check(
        "manager_reconciled_every_cache",
        cache_reconciles >= c,
        f"controller_runtime_reconcile_total[{cache_ctrl}] grew by {cache_reconciles} for {c} caches",
    )
    reconcile_errors = delta(conv.manager, base.manager).reconcile_errors
    out.details["manager_reconcile_errors_by_controller"] = {k: int(v) for k, v in reconcile_errors.items()}
    out.details["manager_requests_by_method_code"] = {
        f"{m} {code}": int(v) for (m, code), v in delta(conv.manager, base.manager).requests.items() if v
    }
    errors = sum(reconcile_errors.values())
    out.put("manager_reconcile_errors", errors, "errors")
    out.put("agent_jobs_created", a_metrics.jobs_created, "jobs")
    if sc.mode == "seeded":
        out.check(
            "seeded_no_jobs",
            a_metrics.jobs_created == 0,
            f"agents created {a_metrics.jobs_created:.0f} download Jobs for models already on disk",
        )
    downloaded = int(last.agents_total.agent_models.get(DOWNLOADED, 0))
    seen = int(out.figures.get("models_reported", (pairs, ""))[0] or 0)
    if not out.figures.get("converged", (0, ""))[0]:
        out.details["agent_models_gauge"] = {"downloaded": downloaded, "watch_saw": seen}
        return
    out.check(
        "agent_models_gauge_matches",
        downloaded == seen,
        f"sum of localcache_agent_models{{status=ModelDownloaded}} over agents = {downloaded}, "
        f"the benchmark's watch saw {seen} (cache, node) pairs reported",
    )


# ---- the matrix --------------------------------------------------------------------------------------
def add_rows(results: Results, outcome: Outcome) -> None:
    for metric, (value, unit) in outcome.figures.items():
        results.add(outcome.scenario.name, metric, value, unit)


def previous_outcomes(path: Path, skip: set[str]) -> list[Outcome]:
    """``BENCH_MERGE=1``: scenarios of an earlier run kept in the file (each carries its own start time
    and load average), except those this run measures again."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    kept: dict[str, Outcome] = {}
    for spec in doc.get("parameters", {}).get("scenario_specs", []):
        sc = Scenario(spec["caches"], spec["nodes"], spec["mode"])
        if sc.name not in skip:
            kept[sc.name] = Outcome(sc)
    for row in doc.get("results", []):
        outcome = kept.get(row["scenario"])
        if outcome is not None:
            outcome.put(row["metric"], row["value"], row["unit"])
    for chk in doc.get("checks", []):
        if chk["scenario"] in kept:
            kept[chk["scenario"]].checks.append(chk)
    for name, details in (doc.get("details") or {}).items():
        if name in kept:
            kept[name].details = details
    return list(kept.values())


def add_scaling(results: Results, outcomes: Sequence[Outcome]) -> dict[str, float | None]:
    """Slopes of log(figure) vs log(caches x nodes) over the seeded scenarios that converged."""
    done = [o for o in outcomes if o.scenario.mode == "seeded" and o.figures.get("converged", (0, ""))[0]]
    xs = [float(o.scenario.pairs) for o in done]
    exponents: dict[str, float | None] = {}
    for metric in (
        "converged_s",
        "converged_after_agents_s",
        "requests_total",
        "manager_reads",
        "manager_writes",
        "agents_reads",
        "agents_writes",
        "manager_cpu_s",
        "agents_cpu_s",
        "manager_request_mib",
        "agents_request_mib",
    ):
        ys = [float(o.figures.get(metric, (0, ""))[0] or 0) for o in done]
        slope = loglog_slope(xs, ys) if len(done) >= 2 else None
        exponents[metric] = slope
        results.add("scaling", f"exponent_{metric}_vs_caches_x_nodes", slope, "log-log slope")
    return exponents


async def main() -> int:
    logging.basicConfig(
        level=os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    scale = os.environ.get("BENCH_SCALE", "full")
    scenarios = parse_scale(scale)
    idle_s = float(os.environ.get("BENCH_IDLE_S", "30"))
    settle_s = float(os.environ.get("BENCH_SETTLE_S", "5"))
    timeout_s = float(os.environ.get("BENCH_TIMEOUT_S", "900"))
    keep = os.environ.get("BENCH_KEEP", "") == "1"
    out_path = Path(os.environ.get("BENCH_OUT", str(RESULTS_DIR / "controlplane.json")))
    outcomes: list[Outcome] = []
    if os.environ.get("BENCH_MERGE", "") == "1":
        outcomes = previous_outcomes(out_path, {sc.name for sc in scenarios})
        say(f"merging with {len(outcomes)} scenarios kept from {out_path}")
    failures: list[str] = []
    started = time.monotonic()
    budget = float(os.environ.get("BENCH_BUDGET_S", "0")) or None
    for sc in scenarios:
        limit = timeout_s
        if budget is not None:
            # Leave room for start-up, the idle window and teardown of the scenario itself.
            remaining = budget - (time.monotonic() - started) - idle_s - settle_s - 60 - 2 * sc.nodes
            if remaining < 60:
                say(f"scenario {sc.name}: skipped, BENCH_BUDGET_S={budget:.0f} is spent")
                failures.append(f"{sc.name}: not run (BENCH_BUDGET_S spent)")
                continue
            limit = min(timeout_s, remaining)
        say(f"scenario {sc.name}: {sc.caches} caches x {sc.nodes} nodes ({sc.mode}), timeout {limit:.0f}s")
        try:
            outcomes.append(await run_scenario(sc, limit, idle_s, settle_s, keep))
        except Exception as exc:
            log.exception("scenario %s failed", sc.name)
            failures.append(f"{sc.name}: {type(exc).__name__}: {exc}")
            say(f"scenario {sc.name} FAILED: {exc}")
        write(out_path, outcomes, failures, scale, idle_s, started)
    results_path = write(out_path, outcomes, failures, scale, idle_s, started)
    say(f"results written to {results_path}")
    for o in outcomes:
        for chk in o.checks:
            if not chk["ok"]:
                say(f"check FAILED {chk['scenario']} {chk['check']}: {chk['detail']}")
    return 1 if failures else 0


def write(
    path: Path,
    outcomes: Sequence[Outcome],
    failures: Sequence[str],
    scale: str,
    idle_s: float,
    started: float,
) -> Path:
    results = Results()
    for o in outcomes:
        add_rows(results, o)
    exponents = add_scaling(results, outcomes)
    return results.write(
        path,
        version_extra={"kubernetes": K8S_VERSION},
        extra={
            "parameters": {
                "scale": scale,
                "scenarios": [o.scenario.name for o in outcomes],
                "scenario_specs": [asdict(o.scenario) for o in outcomes],
                "idle_window_s": idle_s,
                "wall_s": round(time.monotonic() - started, 1),
                "failed": list(failures),
            },
            "exponents": exponents,
            "checks": [c for o in outcomes for c in o.checks],
            "details": {o.scenario.name: o.details for o in outcomes},
        },
    )


async def main_cancellable() -> int:
    """SIGTERM/SIGINT cancel the run, so every scenario's ``finally`` stops what it started; the
    result file already holds the scenarios finished before."""
    import signal

    parse_scale(os.environ.get("BENCH_SCALE", "full"))  # a bad setting fails before anything starts
    task = asyncio.ensure_future(main())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        say("interrupted; stopped what this run started")
        return 130


if __name__ == "__main__":
    sys.exit(asyncio.run(main_cancellable()))
