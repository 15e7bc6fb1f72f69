"""``make demo``: the Local Model Cache guide, end to end, on this machine.

A real kube-apiserver (envtest), three simulated nodes (two in the guide's A100 node group), a local
Hugging Face hub serving the real all-MiniLM-L6-v2 behind a token, a local S3 server, and the real
manager and one real agent per node. The guide's YAML is applied step by step with the model URIs and
tokens pointed at the local sources (``localcache.testing.system.GUIDE_SUBSTITUTIONS``); progress is
printed as it happens, then the ``kubectl get`` tables, the mutated InferenceServices and the files on
each simulated node's disk, checked against the completion marker's digests.

    python -m localcache.testing.demo [--keep] [--timeout 300] [--verbose]

``--keep`` leaves everything running after the flow and prints a ``KUBECONFIG`` to explore with
``kubectl`` until Ctrl-C. Exit codes: 0 done, 1 the flow failed (diagnostics printed), 2 a component of
the system is missing (named).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcache.runtime.resources import JOBS
from localcache.storage.layout import MARKER_NAME
from localcache.testing.envtest import EnvtestError
from localcache.testing.system import (
    CACHE_NAME,
    GUIDE_SUBSTITUTIONS,
    INFERENCE_SERVICES,
    ISVC_NAME,
    ISVC_NAMESPACE,
    JOB_NAMESPACE,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODES,
    S3_CACHE_NAME,
    TEAM_NAMESPACE,
    ComponentMissing,
    LocalSystem,
    apply_documents,
    guide_example,
    storage_config_secret,
)

LABEL_PREFIX = "internal.serving.kserve.io/localmodel"


class FlowFailed(RuntimeError):
    """A step of the guide did not reach its expected state in time."""


class Demo:
    def __init__(self, system: LocalSystem, timeout: float, out: Callable[[str], None] = print) -> None:
        self.system = system
        self.timeout = timeout
        self.out = out
        self.started = time.monotonic()

    def say(self, text: str = "") -> None:
        self.out(text)

    def step(self, number: str, title: str, files: str) -> None:
        self.say()
        self.say(f"== Step {number}: {title}  [{files}]")

    def progress(self, text: str) -> None:
        self.say(f"  +{time.monotonic() - self.started:6.1f}s  {text}")

    async def apply(self, docs: list[dict[str, Any]]) -> None:
        assert self.system.client is not None
        for doc in await apply_documents(self.system.client, docs):
            meta = doc["metadata"]
            where = f"{meta['namespace']}/" if meta.get("namespace") else ""
            self.progress(f"applied {doc['kind']} {where}{meta['name']}")

    async def wait_cache(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        """Print one line per change of copies/nodeStatus until every copy is available."""
        deadline = time.monotonic() + self.timeout
        last = None
        kind = res.kind
        while True:
            self.system.check_processes()
            obj = await self.system.get(res, name, namespace) or {}
            status = obj.get("status") or {}
            copies = status.get("copies") or {}
            nodes = status.get("nodeStatus") or {}
            seen = (json.dumps(copies, sort_keys=True), json.dumps(nodes, sort_keys=True))
            if seen != last:
                last = seen
                per_node = "  ".join(f"{n}={s}" for n, s in sorted(nodes.items())) or "(no nodes yet)"
                counts = f"{copies.get('available', 0)}/{copies.get('total', '?')}"
                self.progress(f"{kind} {name}: copies {counts}  {per_node}")
            total = copies.get("total")
            if total and copies.get("available") == total:
                return obj
            if time.monotonic() > deadline:
                raise FlowFailed(
                    f"{kind} {name} not cached on every node within {self.timeout:.0f}s: {status}"
                )
            await asyncio.sleep(0.3)

    async def apply_isvc(self, example: str, name: str, namespace: str) -> None:
        """Apply an InferenceService and show what admission added. The API server loads webhook
        configurations asynchronously, so an unlabelled result is applied again for a few seconds."""
        deadline = time.monotonic() + 15
        await self.apply(guide_example(example))
        while self.system.webhooks_served and time.monotonic() < deadline:
            isvc = await self.system.get(INFERENCE_SERVICES, name, namespace) or {}
            if any(k.startswith(LABEL_PREFIX) for k in (isvc.get("metadata") or {}).get("labels") or {}):
                break
            await asyncio.sleep(0.5)
            assert self.system.client is not None
            await apply_documents(self.system.client, guide_example(example))
        await self.show_isvc(name, namespace)

    async def show_isvc(self, name: str, namespace: str) -> None:
        isvc = await self.system.get(INFERENCE_SERVICES, name, namespace) or {}
        meta = isvc.get("metadata") or {}
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(LABEL_PREFIX)}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(LABEL_PREFIX)}
        self.say(f"  InferenceService {namespace}/{name} after admission:")
        if not labels and not annotations:
            if not self.system.webhooks_served:
                self.say("    (unchanged: this manager build serves no admission webhooks yet)")
            else:
                self.say("    (unchanged: no local-model labels; the webhook matched no cache)")
            return
        for key, value in sorted(labels.items()):
            self.say(f"    label      {key}={value}")
        for key, value in sorted(annotations.items()):
            self.say(f"    annotation {key}={value}")

    async def run(self) -> None:
        system = self.system
        self.say("The guide's YAML is applied with these substitutions (local sources, local token):")
        for old, new in GUIDE_SUBSTITUTIONS:
            shown = new if "token" not in new else "<local hub token>"
            self.say(f"    {old}  ->  {shown}")
        self.say(f"  Hugging Face hub {system.hub.url} (gated), S3 {system.s3.url if system.s3 else '-'}")
        self.say(f"  nodes: {', '.join(f'{n} {dict(s.labels)}' for n, s in system.node_specs.items())}")

        self.step("1", "Enable the Local Model Cache", "01")
        await self.apply(guide_example("01-inferenceservice-config-localmodel.yaml"))

        self.step("2", "Configure credentials for model downloads", "02, 04 (+ my-s3-key for 06)")
        await self.apply(guide_example("02-hf-secret-and-serviceaccount.yaml"))
        await self.apply(storage_config_secret(system.s3_storage_config() if system.s3 else None))

        self.step("3", "Create the LocalModelNodeGroup", "08")
        await self.apply(guide_example("08-local-model-node-group.yaml"))

        self.step(
            "4+5",
            "Create the LocalModelCaches, credentials on the cache",
            "03 (= 09 + serviceAccountName), 06",
        )
        await self.apply(guide_example("03-local-model-cache-sa.yaml"))
        if system.s3 is not None:
            await self.apply(guide_example("06-local-model-cache-s3.yaml"))

        self.step("6", "Check the status of cached models", "13")
        await self.wait_cache(LOCAL_MODEL_CACHES, CACHE_NAME)
        if system.s3 is not None:
            await self.wait_cache(LOCAL_MODEL_CACHES, S3_CACHE_NAME)

        self.step("7", "Deploy an InferenceService that uses the cached model", "10")
        await self.apply_isvc("10-inferenceservice.yaml", ISVC_NAME, ISVC_NAMESPACE)

        self.step("8", "LocalModelNamespaceCache and an InferenceService in its namespace", "11, 12")
        await self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEAM_NAMESPACE}}])
        await self.apply(guide_example("11-local-model-namespace-cache.yaml"))
        await self.wait_cache(LOCAL_MODEL_NAMESPACE_CACHES, CACHE_NAME, TEAM_NAMESPACE)
        await self.apply_isvc("12-inferenceservice-my-team.yaml", ISVC_NAME, TEAM_NAMESPACE)

        await self.final_report()

    async def final_report(self) -> None:
        system = self.system
        self.say()
        self.say("== What kubectl shows")
        for args in (
            ("get", "localmodelnodegroup"),
            ("get", "localmodelcache"),
            ("get", "localmodelnamespacecache", "-A"),
            ("get", "localmodelnode"),
            ("get", "jobs", "-n", JOB_NAMESPACE),
            ("get", "pvc", "-A"),
            ("get", "pv"),
        ):
            self.say(f"$ kubectl {' '.join(args)}")
            self.say(system.kubectl_run(*args).rstrip())
            self.say()
        first = next(iter(system.node_specs))
        node = await system.get(LOCAL_MODEL_NODES, first) or {}
        self.say(f"$ kubectl get localmodelnode {first} -o yaml   (spec and modelStatus)")
        self.say(
            json.dumps(
                {"spec": node.get("spec"), "modelStatus": (node.get("status") or {}).get("modelStatus")},
                indent=2,
            )
        )
        self.say()
        self.say("== The files on each simulated node's disk, checked against the completion marker")
        for name in system.node_specs:
            self.say(f"-- node {name}: {system.models_dir(name)}")
            for line in verify_node_disk(system.models_dir(name)):
                self.say(f"   {line}")
        assert system.client is not None
        jobs = (await system.client.list(JOBS, JOB_NAMESPACE))["items"]
        peaks = [r.peak_rss_bytes for r in system.sim.runs.values()] if system.sim else []
        self.say()
        self.say(
            f"Done in {time.monotonic() - self.started:.1f}s: {len(jobs)} download Jobs, "
            f"peak RSS of a download process {max(peaks, default=0) / 2**20:.0f} MiB."
        )


def verify_node_disk(models_dir: Path) -> list[str]:
    """One line per model folder: its files re-hashed and compared with the marker's sha256 digests."""
    if not models_dir.is_dir():
        return ["(no models directory: this node is not in the node group)"]
    lines = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        marker_file = folder / MARKER_NAME
        if not marker_file.is_file():
            lines.append(f"{folder.name}/  NO MARKER (incomplete)")
            continue
        marker = json.loads(marker_file.read_text())
        ok = 0
        bad = []
        for entry in marker.get("files") or []:
            digest = (entry.get("digests") or {}).get("sha256")
            data = (folder / entry["path"]).read_bytes()
            if len(data) != entry["size"] or (digest and hashlib.sha256(data).hexdigest() != digest):
                bad.append(entry["path"])
            else:
                ok += 1
        verdict = "all verified" if not bad else f"MISMATCH in {', '.join(bad)}"
        lines.append(
            f"{folder.name}/  {marker.get('uri')}  {ok} files, "
            f"{marker.get('total_bytes', 0) / 2**20:.1f} MiB, sha256 {verdict}"
        )
        for entry in sorted(marker.get("files") or [], key=lambda e: -int(e["size"]))[:3]:
            digest = (entry.get("digests") or {}).get("sha256", "")
            lines.append(f"    {entry['path']:<40} {entry['size']:>10}  sha256:{digest[:16]}…")
    return lines or ["(empty)"]


async def diagnostics(system: LocalSystem, say: Callable[[str], None]) -> None:
    """What to look at when the flow failed: the objects' status, the Jobs, the process logs."""
    say("== Diagnostics")
    for args in (
        ("get", "localmodelcache,localmodelnode", "-o", "yaml"),
        ("get", "jobs,pods", "-n", JOB_NAMESPACE),
    ):
        say(f"$ kubectl {' '.join(args)}")
        say(system.kubectl_run(*args).rstrip()[-6000:])
    for name, process in [("manager", system.manager), *system.agents.items()]:
        if process is not None:
            say(f"-- last log lines of {name} ({process.log_path}):")
            say(process.log_tail(25))
    if system.sim is not None:
        for run in list(system.sim.runs.values())[-4:]:
            say(f"-- download pod {run.namespace}/{run.name} on {run.node}: {run.phase} {run.reason or ''}")
            say("\n".join(run.log_text().splitlines()[-10:]))


async def wait_for_interrupt() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def main_async(args: argparse.Namespace) -> int:
    system = LocalSystem(agent_args=["--retry-backoff-base=5", "--gc-grace-period=30"])
    print("Starting: kube-apiserver + etcd + kube-controller-manager, local hub and S3, 3 simulated nodes,")
    print("          the manager and one agent per node …", flush=True)
    try:
        await system.start()
    except ComponentMissing as exc:
        print(f"demo: cannot run the whole system: {exc}", file=sys.stderr)
        return 2
    except EnvtestError as exc:
        print(f"demo: the control plane did not start: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # a source's data missing, a process that died at start
        print(f"demo: the system did not start: {exc}", file=sys.stderr)
        return 2
    code = 0
    try:
        demo = Demo(system, args.timeout)
        demo.progress(f"system up (API server {system.plane.url if system.plane else '?'})")
        try:
            await demo.run()
        except Exception as exc:  # any failure of the flow: say what, show where to look
            print(f"\ndemo: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            await diagnostics(system, print)
            code = 1
        if args.keep:
            print()
            print("Everything keeps running. In another terminal:")
            print(f"    export KUBECONFIG={system.kubeconfig}")
            if system.kubectl:
                print(f"    {system.kubectl} get localmodelcache,localmodelnode")
            print(f"Node disks are under {system.workdir / 'nodes'}. Ctrl-C stops everything.", flush=True)
            await wait_for_interrupt()
    finally:
        print("Stopping everything …", flush=True)
        await system.stop()
    print("Stopped; nothing left running.")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcache.testing.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--keep", action="store_true", help="leave the system running until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each step may take")
    parser.add_argument("--verbose", action="store_true", help="log what the simulator and harness do")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
