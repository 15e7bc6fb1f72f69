"""The chaos runner: the e2e flow under seeded faults, invariants checked at the end of every run.

    python -m chaos.run --runs 3 --seed 1 --window 90 --faults 12

Each run starts a fresh system (:class:`chaos.harness.ChaosSystem`: control plane, local hub/S3/HTTP
sources, three simulated nodes, two leader-electing managers and three agents, all talking to the API
server through a fault proxy), creates caches for the hub, S3 and HTTP models (and a namespace cache),
and, at seeded random moments within ``--window`` seconds, injects faults. Then every process is
brought back, the caches must converge, and the invariants (:mod:`chaos.invariants`) are checked.
The last lines printed are the counts: faults injected by kind, runs, invariant violations.
Exit code 0 only when there were none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.harness import ChaosSystem
from chaos.hostile import hostile_edits
from chaos.invariants import (
    CacheSpec,
    Monitor,
    file_digests,
    final_checks,
    not_ours_intact,
    processes_left,
    secrets_by_value,
)
from localcache.testing.envtest import ControlPlane
from localcache.testing.faultproxy import Status, WatchError
from localcache.testing.hfhub import Fault as HubFault
from localcache.testing.httpsource import Fault as HttpFault
from localcache.testing.models import generate_model, minilm_dir
from localcache.testing.system import (
    CACHE_NAME,
    HUB_TOKEN,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODES,
    MINILM_REPO,
    MODEL_URI,
    S3_CACHE_NAME,
    S3_MODEL_URI,
    TEAM_NAMESPACE,
    apply_documents,
    guide_example,
    storage_config_secret,
)

log = logging.getLogger("chaos")

GROUP_NODES = ("kind-worker", "kind-worker2")
HTTP_CACHE = "http-model"
HTTP_CSC = "chaos-http"
MiB = 1024 * 1024
AGENT_UID = 1000

#: Every fault kind; ``disk_full`` needs a tmpfs (root), else it is skipped and said so.
FAULT_KINDS = (
    "apiserver_restart",
    "watch_drop",
    "api_error",
    "watch_410",
    "manager_kill",
    "leader_change",
    "agent_kill",
    "download_kill",
    "source_corrupt",
    "source_truncate",
    "disk_full",
)


@dataclass
class RunResult:
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    proxy_injected: Counter[str] = field(default_factory=Counter)
    converge_s: float = 0.0
    samples: int = 0
    leader_changes: int = 0
    unconsumed: int = 0
    logs_scanned: int = 0
    own_exits: dict[str, list[int | None]] = field(default_factory=dict)


def _csc() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterStorageContainer",
        "metadata": {"name": HTTP_CSC},
        "spec": {
            "container": {
                "name": "storage-initializer",
                "image": "kserve/storage-initializer:latest",
                "env": [{"name": "LOCALCACHE_RETRIES", "value": "1"}],
                "resources": {"requests": {"memory": "16Mi", "cpu": "100m"}, "limits": {"memory": "256Mi"}},
            },
            "supportedUriFormats": [{"prefix": "http://127.0.0.1"}],
            "workloadType": "localModelDownloadJob",
        },
    }


def _http_cache(uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": HTTP_CACHE},
        "spec": {"sourceModelUri": uri, "modelSize": "100Mi", "nodeGroups": ["workers"]},
    }


class Run:
    """One seeded run."""

    def __init__(
        self,
        seed: int,
        window: float,
        faults: int,
        converge_within: float,
        plane: Any,
        *,
        hostile_edits: bool = True,
        keep_logs: Path | None = None,
    ) -> None:
        self.seed = seed
        self.hostile_edits = hostile_edits
        self.rng = random.Random(seed)
        self.window = window
        self.n_faults = faults
        self.converge_within = converge_within
        self.chaos = ChaosSystem(plane=plane, seed=seed, keep_logs=keep_logs)
        self.result = RunResult(seed)
        self.caches: list[CacheSpec] = []
        self.sources: dict[str, dict[str, str]] = {}
        self.planted: dict[Path, bytes] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        self._apiserver = asyncio.Lock()

    # ---- setup -----------------------------------------------------------------------------
    async def setup(self) -> None:
        await self.chaos.start()
        system = self.chaos.system
        assert system is not None and system.client is not None
        system.hub.rate = 4 * MiB  # slow enough that kills and faults land mid-file
        http_dir = system.http_root / "chaos"
        generate_model(http_dir, shards=1, shard_bytes=12 * MiB, seed=self.seed)
        http_file = next(p for p in http_dir.iterdir() if p.is_file() and p.suffix == ".safetensors")
        http_uri = f"{system.http.url}/chaos/{http_file.name}"
        self.http_file = f"chaos/{http_file.name}"
        self.sources = {
            MODEL_URI: file_digests(minilm_dir()),
            S3_MODEL_URI: file_digests(system.workdir / "s3-model"),
            http_uri: {http_file.name: file_digests(http_dir)[http_file.name]},
        }
        # Files an admin left in the cache roots: never ours to delete.
        # Owned by the agent's user, so only its own rules (not permissions) keep them alive.
        for node in GROUP_NODES:
            root = system.models_dir(node)
            for rel in (
                "README-admin.txt",
                "admin-notes/keep.bin",
                "0123456789ABCDEF/upper-case-is-not-a-key.txt",  # storage keys are lower-case hex
                "0123456789abcde/fifteen-digits.txt",
                ".0123456789abcdef.backup/dot-name.txt",
            ):
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                content = f"{node}:{rel}:{self.seed}".encode()
                path.write_bytes(content)
                self.planted[path] = content
                for owned in (root, path.parent, path):
                    _chown_agent(owned)
        docs = [
            *guide_example("01-inferenceservice-config-localmodel.yaml"),
            *guide_example("02-hf-secret-and-serviceaccount.yaml"),
            *storage_config_secret(system.s3_storage_config()),
            *guide_example("08-local-model-node-group.yaml"),
            _csc(),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEAM_NAMESPACE}},
        ]
        await apply_documents(system.client, docs)
        self.caches = [
            CacheSpec(LOCAL_MODEL_CACHES, CACHE_NAME, None, MODEL_URI, minilm_dir(), GROUP_NODES),
            CacheSpec(LOCAL_MODEL_CACHES, S3_CACHE_NAME, None, S3_MODEL_URI, system.workdir, GROUP_NODES),
            CacheSpec(LOCAL_MODEL_CACHES, HTTP_CACHE, None, http_uri, http_dir, GROUP_NODES),
            CacheSpec(
                LOCAL_MODEL_NAMESPACE_CACHES, CACHE_NAME, TEAM_NAMESPACE, MODEL_URI, minilm_dir(), GROUP_NODES
            ),
        ]

    async def create_caches(self) -> None:
        """Each cache at a seeded moment in the first half of the window, so faults meet downloads."""
        system = self.chaos.system
        assert system is not None and system.client is not None
        docs = [
            *guide_example("03-local-model-cache-sa.yaml"),
            *guide_example("06-local-model-cache-s3.yaml"),
            _http_cache(self.caches[2].uri),
            *guide_example("11-local-model-namespace-cache.yaml"),
        ]
        at = sorted(self.rng.uniform(0, self.window / 2) for _ in docs)
        t0 = time.monotonic()
        for when, doc in zip(at, docs, strict=True):
            await asyncio.sleep(max(0.0, t0 + when - time.monotonic()))
            # The API server may be restarting: retry each apply until it lands.
            try:
                await _retry(
                    lambda d=doc: apply_documents(system.client, [d]), what=f"apply {doc['kind']}", within=120
                )
            except Exception as exc:
                self.result.violations.append(
                    f"could not create {doc['kind']} {doc['metadata']['name']}: {exc}"
                )
            log.info("cache created kind=%s name=%s at=%.1fs", doc["kind"], doc["metadata"]["name"], when)

    # ---- faults ----------------------------------------------------------------------------
    def _later(self, delay: float, fn: Callable[[], Any]) -> None:
        async def go() -> None:
            await asyncio.sleep(delay)
            result = fn()
            if asyncio.iscoroutine(result):
                await result

        task = asyncio.create_task(go())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def inject(self, kind: str, rng: random.Random) -> bool:
        """Apply one fault; False when it could not apply now (nothing to hit), so it is not counted.
        ``rng`` is the fault's own generator, drawn from the run's seed, so faults that overlap in time
        still make the same choices in every run with that seed."""
        chaos, system, proxy = self.chaos, self.chaos.system, self.chaos.proxy
        assert system is not None and proxy is not None and chaos.plane is not None
        if kind == "apiserver_restart":
            async with self._apiserver:  # one restart at a time: two would race on one process
                await asyncio.to_thread(chaos.plane.restart_apiserver)
        elif kind == "watch_drop":
            return await proxy.drop_connections() > 0
        elif kind == "api_error":
            code = rng.choice([409, 429, 500, 503])
            proxy.add(
                Status(code, retry_after=1 if code == 429 else None), times=rng.randint(2, 6), watch=False
            )
        elif kind == "watch_410":
            proxy.add(WatchError(410), watch=True, times=rng.randint(1, 3))
        elif kind == "manager_kill":
            pick = rng.random()
            alive = await _alive(lambda: chaos.managers, within=15)
            if not alive or not chaos.kill(alive[int(pick * len(alive))], down_for=rng.uniform(0.5, 4)):
                return False
        elif kind == "leader_change":
            holder, victim = await _live_leader(chaos, within=30)
            if holder is None or victim is None or not chaos.kill(victim, down_for=rng.uniform(1, 4)):
                return False
            self._later(0, lambda: self._observe_new_leader(holder))
        elif kind == "agent_kill":
            pick = rng.random()
            alive = await _alive(lambda: [system.agents[n] for n in sorted(system.agents)], within=15)
            if not alive or not chaos.kill(alive[int(pick * len(alive))], down_for=rng.uniform(0.5, 4)):
                return False
        elif kind == "download_kill":
            runs = await _wait_for_downloads(chaos, within=30)
            if not runs:
                return False
            await asyncio.sleep(rng.uniform(0, 1))  # mid-file, not at its first byte
            return chaos.kill_download(rng.choice(runs))
        elif kind == "source_corrupt":
            system.hub.faults[(MINILM_REPO, "model.safetensors")] = HubFault(
                "corrupt", after=rng.randint(0, 20 * MiB), times=rng.randint(1, 2)
            )
        elif kind == "source_truncate":
            system.http.faults[self.http_file] = HttpFault(
                "truncate", after=rng.randint(0, 8 * MiB), times=rng.randint(1, 2)
            )
        elif kind == "disk_full":
            if chaos.tmpfs is None:
                self.result.skipped[kind] += 1
                return False
            filler = chaos.tmpfs / "filler-not-ours.bin"
            await asyncio.to_thread(_fill, filler)
            self._later(rng.uniform(3, 8), lambda: filler.unlink(missing_ok=True))
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return True

    async def _observe_new_leader(self, old: str, within: float = 45.0) -> None:
        """Count a leader change once another manager holds the lease (the lease must expire first)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                holder = await self.chaos.leader()
            except Exception:
                holder = None
            if holder and holder != old:
                self.result.leader_changes += 1
                return
            await asyncio.sleep(0.5)

    async def faults_phase(self) -> None:
        kinds = list(FAULT_KINDS)
        times = sorted(self.rng.uniform(0, self.window) for _ in range(self.n_faults))
        # Every kind at least once when there are enough faults, the rest drawn at random.
        if self.n_faults >= len(kinds):
            plan = [kinds[i % len(kinds)] for i in range(self.n_faults)]
        else:
            plan = [self.rng.choice(kinds) for _ in range(self.n_faults)]
        self.rng.shuffle(plan)
        seeds = [self.rng.random() for _ in plan]
        # Source faults only bite a download that starts after them: arm them before most caches exist.
        early = ("source_corrupt", "source_truncate")
        times = [at * 0.25 if kind in early else at for at, kind in zip(times, plan, strict=True)]
        t0 = time.monotonic()

        async def one(at: float, kind: str, seed: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            try:
                applied = await self.inject(kind, random.Random(seed))
            except Exception as exc:  # a fault that could not be applied is reported, not fatal
                log.warning("fault failed kind=%s error=%s", kind, exc)
                applied = False
            if applied:
                self.result.faults[kind] += 1
            log.info("fault kind=%s at=%.1fs applied=%s", kind, time.monotonic() - t0, applied)

        # Each fault on its own task: a slow one (an API server restart) does not push the others back.
        await asyncio.gather(*(one(at, k, sd) for at, k, sd in zip(times, plan, seeds, strict=True)))
        await asyncio.sleep(max(0.0, t0 + self.window - time.monotonic()))

    # ---- the run ---------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        try:
            await self.setup()
            system = self.chaos.system
            assert system is not None and system.client is not None
            self.chaos.supervise()
            monitor = Monitor(system.client, self.caches, system.models_dir)
            monitor.start()
            creator = asyncio.create_task(self.create_caches())
            await self.faults_phase()
            await creator
            await asyncio.gather(*self._pending, return_exceptions=True)
            self.chaos.proxy.clear()  # type: ignore[union-attr]
            self.result.unconsumed = len(system.hub.faults) + len(system.http.faults)
            system.hub.faults.clear()
            system.http.faults.clear()
            self.chaos.ensure_running()
            t0 = time.monotonic()
            not_converged = await self.converge()
            self.result.converge_s = time.monotonic() - t0
            if not not_converged and self.hostile_edits:
                self.result.violations += await hostile_edits(self.chaos, self.caches, monitor=monitor)
                self.result.violations += await self.converge()
            await monitor.stop()
            self.result.samples = monitor.samples
            self.result.violations += not_converged + monitor.violations
            self.result.violations += await final_checks(
                system.client, self.caches, system.models_dir, self.sources
            )
            self.result.violations += not_ours_intact(self.planted)
            s3_secret = system.s3_storage_config()["secret_access_key"]
            pod_logs = sorted({Path(r.log_path) for r in system.sim.runs.values()} if system.sim else set())
            logs = sorted((system.workdir / "logs").glob("*.log")) + pod_logs
            if not pod_logs or not any(p.is_file() for p in pod_logs):
                self.result.violations.append(
                    "no download pod logs to scan for secrets: the scan proves nothing"
                )
            self.result.logs_scanned = len(logs)
            self.result.violations += await secrets_by_value(
                system.client,
                {"HF_TOKEN": HUB_TOKEN, "S3 secret_access_key": s3_secret},
                logs,
                [LOCAL_MODEL_CACHES, LOCAL_MODEL_NAMESPACE_CACHES, LOCAL_MODEL_NODES],
            )
            self.result.proxy_injected = Counter(self.chaos.proxy.injected)  # type: ignore[union-attr]
            self.result.own_exits = dict(self.chaos.own_exits)
        finally:
            for task in self._pending:
                task.cancel()
            pids = self.chaos.all_pids()
            await self.chaos.stop()
            self.result.violations += processes_left(pids)
        return self.result

    async def converge(self) -> list[str]:
        system = self.chaos.system
        assert system is not None and system.client is not None
        deadline = time.monotonic() + self.converge_within
        pending: list[str] = []
        while time.monotonic() < deadline:
            self.chaos.ensure_running()
            pending = []
            for cache in self.caches:
                try:
                    obj = await system.client.get(cache.resource, cache.name, cache.namespace)
                except Exception as exc:
                    pending.append(f"{cache}: {exc}")
                    continue
                copies = (obj.get("status") or {}).get("copies") or {}
                if not (copies.get("total") == copies.get("available") == len(cache.nodes)):
                    pending.append(f"{cache}: status {json.dumps(obj.get('status'))[:400]}")
            if not pending:
                return []
            await asyncio.sleep(1)
        return [f"did not converge within {self.converge_within:.0f}s: {p}" for p in pending]


def _chown_agent(path: Path) -> None:
    """Give ``path`` to the agent's user (uid/gid 1000, the DaemonSet's) when we run as root."""
    import os

    if os.geteuid() == 0:
        os.chown(path, AGENT_UID, AGENT_UID)


async def _alive(processes: Callable[[], list[Any]], within: float) -> list[Any]:
    """The running ones among ``processes()``, waiting up to ``within`` seconds for one (a process may
    be in its crash back-off right now)."""
    deadline = time.monotonic() + within
    alive = [p for p in processes() if p.alive]
    while not alive and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        alive = [p for p in processes() if p.alive]
    return alive


async def _live_leader(chaos: ChaosSystem, within: float) -> tuple[str | None, Any]:
    """The lease holder and its process, once the holder is a running manager (after a kill the lease
    may still name the dead one until it expires)."""
    deadline = time.monotonic() + within
    while True:
        holder = await chaos.leader()
        victim = next((m for m in chaos.managers if m.alive and _identity(m) == holder), None)
        if (holder and victim) or time.monotonic() > deadline:
            return holder, victim
        await asyncio.sleep(0.5)


async def _wait_for_downloads(chaos: ChaosSystem, within: float) -> list[Any]:
    """Running download pods, waiting up to ``within`` seconds for one to start."""
    deadline = time.monotonic() + within
    runs = chaos.running_downloads()
    while not runs and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        runs = chaos.running_downloads()
    return runs


def _identity(process: Any) -> str | None:
    """The leader-election identity a manager logged last (it changes with every start)."""
    found = re.findall(r"attempting to acquire lease .*?identity=(\S+)", process.log_tail(2000))
    return found[-1] if found else None


def _fill(path: Path) -> None:
    """Fill the file system of ``path`` up to its last 64 KiB."""
    import shutil

    free = shutil.disk_usage(path.parent).free
    with open(path, "wb") as fh:
        remaining = max(0, free - 64 * 1024)
        block = b"\0" * MiB
        try:
            while remaining > 0:
                fh.write(block[: min(len(block), remaining)])
                remaining -= min(len(block), remaining)
        except OSError:
            pass


async def _retry(fn: Callable[[], Awaitable[Any]], *, what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.info("retrying what=%s error=%s", what, exc)
            await asyncio.sleep(1)


def summary(results: list[RunResult]) -> list[str]:
    """The run's last lines: faults by kind, runs, invariant violations."""
    faults: Counter[str] = Counter()
    proxy: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
        proxy.update(r.proxy_injected)
        skipped.update(r.skipped)
    violations = sum(len(r.violations) for r in results)
    leader_changes = sum(r.leader_changes for r in results)
    unconsumed = sum(r.unconsumed for r in results)
    exits: Counter[str] = Counter()
    for r in results:
        for name, codes in r.own_exits.items():
            exits[name.split("-kind-")[0]] += len(codes)
    lines = [f"  fault {k}: {faults[k]}" for k in FAULT_KINDS]
    lines.append(f"  leader changes observed: {leader_changes}")
    lines += [f"  exited on their own and restarted ({k}): {v}" for k, v in sorted(exits.items())]
    lines.append(f"  source faults armed but never hit (no download asked): {unconsumed}")
    lines += [f"  proxy injected {k}: {v}" for k, v in sorted(proxy.items())]
    if skipped:
        lines += [f"  skipped {k}: {v} (no tmpfs: needs root and mount)" for k, v in sorted(skipped.items())]
    lines += [
        f"runs: {len(results)}",
        f"faults injected: {sum(faults.values())}",
        f"invariant violations: {violations}",
    ]
    return lines


async def main_async(args: argparse.Namespace) -> list[RunResult]:
    results = []
    plane: ControlPlane | None = None
    for i in range(args.runs):
        seed = args.seed + i
        keep = Path(args.keep_logs) / f"seed-{seed}" if args.keep_logs else None
        run = Run(seed, args.window, args.faults, args.converge_within, plane, keep_logs=keep)
        result = await run.execute()
        results.append(result)
        print(
            f"run {i + 1}/{args.runs} seed={seed} faults={sum(result.faults.values())} "
            f"converged_in={result.converge_s:.1f}s samples={result.samples} "
            f"logs_scanned={result.logs_scanned} "
            f"violations={len(result.violations)}",
            flush=True,
        )
        for name, codes in sorted(result.own_exits.items()):
            print(f"  {name} exited on its own (exit codes {codes}) and was restarted", flush=True)
        for v in result.violations:
            print(f"  VIOLATION: {v}", flush=True)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=float, default=90.0, help="seconds during which faults hit")
    parser.add_argument("--faults", type=int, default=14, help="faults per run")
    parser.add_argument("--converge-within", type=float, default=240.0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--keep-logs", default="", help="copy every process log of each run here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Sources and the proxy log every connection a killed client leaves behind: expected here.
    for noisy in ("aiohttp.server", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    results = asyncio.run(main_async(args))
    for line in summary(results):
        print(line, flush=True)
    return 0 if all(not r.violations for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
