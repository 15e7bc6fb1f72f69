"""The whole system on one machine, shared by ``make demo`` and the e2e suite.

:class:`LocalSystem` starts, in order, and stops in reverse:

1. a real control plane (envtest: etcd, kube-apiserver, kube-controller-manager with the Job, GC and
   namespace controllers), or adopts one a test session already runs;
2. the install manifests that make sense without images: ``manifests/base/namespace.yaml`` and
   ``manifests/base/rbac`` (so the manager and the agents run under their real ServiceAccount RBAC,
   with client certificates naming those ServiceAccounts);
3. the local model sources: a Hugging Face hub serving the real all-MiniLM-L6-v2 (gated behind a token,
   so credentials are exercised), a moto S3 server with a small generated model, a plain HTTP server;
4. three simulated nodes (:mod:`localcache.testing.nodesim`), two of them in the guide's GPU node group,
   each with ``/mnt/models`` prepared as the guide asks (owned by uid/gid 1000);
5. the real ``cmd/manager.py`` (controllers + admission webhooks over TLS with a generated certificate,
   registered with the API server through the shipped webhook configurations pointed at
   ``https://127.0.0.1:<port>``) and one real ``cmd/agent.py`` per node, as subprocesses.

Components that are not in the checkout yet make :meth:`LocalSystem.start` fail with
:class:`ComponentMissing`, naming the file; nothing is started half-way and left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import Resource
from localcache.testing.certs import TinyCA
from localcache.testing.envtest import ControlPlane, assets_dir, free_port
from localcache.testing.nodesim import GPU_LABEL, NodeSimulator, SimNode
from localcache.testing.processes import die_with_parent

__all__ = [
    "CLUSTER_STORAGE_CONTAINERS",
    "DEFAULT_NODES",
    "HUB_TOKEN",
    "INFERENCE_SERVICES",
    "LOCAL_MODEL_CACHES",
    "LOCAL_MODEL_NAMESPACE_CACHES",
    "LOCAL_MODEL_NODES",
    "LOCAL_MODEL_NODE_GROUPS",
    "ComponentMissing",
    "LocalSystem",
    "ManagedProcess",
    "NodeSpec",
    "apply_documents",
    "guide_example",
    "load_yaml",
    "missing_components",
    "storage_config_secret",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
CONFIG_NAMESPACE = "kserve"
JOB_NAMESPACE = "kserve-localmodel-jobs"
MODELS_HOST_PATH = "/mnt/models"
#: The token the local hub's gated repos want; the demo writes it into the guide's secrets.
HUB_TOKEN = "hf_localcache_demo_token"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
S3_BUCKET = "mybucket"
S3_PREFIX = "mymodel/"
STOP_TIMEOUT_S = 15.0
FIELD_MANAGER = "localcache-system"
CONTROLLERS = ("garbagecollector", "job", "namespace", "ttl-after-finished")

LOCAL_MODEL_CACHES = Resource("serving.kserve.io", "v1alpha1", "localmodelcaches", "LocalModelCache", False)
LOCAL_MODEL_NAMESPACE_CACHES = Resource(
    "serving.kserve.io", "v1alpha1", "localmodelnamespacecaches", "LocalModelNamespaceCache", True
)
LOCAL_MODEL_NODE_GROUPS = Resource(
    "serving.kserve.io", "v1alpha1", "localmodelnodegroups", "LocalModelNodeGroup", False
)
LOCAL_MODEL_NODES = Resource("serving.kserve.io", "v1alpha1", "localmodelnodes", "LocalModelNode", False)
CLUSTER_STORAGE_CONTAINERS = Resource(
    "serving.kserve.io", "v1alpha1", "clusterstoragecontainers", "ClusterStorageContainer", False
)
INFERENCE_SERVICES = Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", True)


class ComponentMissing(RuntimeError):
    """A part of the system is not in this checkout (yet); the message names it."""


def missing_components(*, manager: bool = True, agent: bool = True) -> list[str]:
    """What the whole system needs that is absent, each as a sentence naming the file."""
    missing = []
    wanted = [("cmd/download.py", "the download program")]
    if manager:
        wanted.append(("cmd/manager.py", "the controller manager (cache controllers and admission webhooks)"))
    if agent:
        wanted.append(("cmd/agent.py", "the node agent"))
    for rel, what in wanted:
        if not (REPO_ROOT / rel).is_file():
            missing.append(f"{rel} ({what}) is missing")
    if not list((MANIFESTS / "crds").glob("*.yaml")):
        missing.append("manifests/crds/*.yaml (the CRDs) are missing")
    return missing


@dataclass(frozen=True)
class NodeSpec:
    """A simulated node and how its agent is started: ``agent_host_path`` is what the agent believes
    its host directory is (``--host-path``); the directory it really mounts is ``mount_host_path``."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    agent: bool = True
    agent_host_path: str = MODELS_HOST_PATH
    mount_host_path: str = MODELS_HOST_PATH


#: The guide's cluster: kind-like names, two nodes in the A100 node group, one outside it.
DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("kind-worker", {GPU_LABEL: GPU_PRODUCT}),
    NodeSpec("kind-worker2", {GPU_LABEL: GPU_PRODUCT}),
    NodeSpec("kind-worker3", {}),
)


def as_user_prefix(uid: int, gid: int, groups: Sequence[int] = ()) -> list[str]:
    """``setpriv`` arguments running a program as ``uid``/``gid`` that may still read any file (the
    interpreter lives under /root here; in a cluster it is in the image)."""
    group_list = ",".join(str(g) for g in dict.fromkeys([gid, *groups]))
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={group_list}",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--pdeathsig=SIGKILL",
        "--",
    ]


class ManagedProcess:
    """A subprocess with its own log file and session, that dies with us and stops on request."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=self.env,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        log.info("process started name=%s pid=%s log=%s", self.name, self.popen.pid, self.log_path)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.popen.returncode}; last log lines ({self.log_path}):\n"
                f"{self.log_tail()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("process did not stop in time name=%s; killing", self.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything it left in its session
        return self.popen.returncode


async def apply_documents(
    client: Client, docs: Iterable[Mapping[str, Any]], namespace: str | None = None
) -> list[dict[str, Any]]:
    """Server-side apply each document (creating it if absent), like ``kubectl apply --server-side``."""
    applied = []
    for doc in docs:
        if not doc:
            continue
        res = await client.resource_for(doc["apiVersion"], doc["kind"])
        meta = doc["metadata"]
        ns = (meta.get("namespace") or namespace or "default") if res.namespaced else None
        body = json.loads(json.dumps(doc))
        if ns:
            body["metadata"]["namespace"] = ns
        applied.append(
            await client.patch(
                res, meta["name"], body, ns, patch_type="apply", field_manager=FIELD_MANAGER, force=True
            )
        )
    return applied


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class LocalSystem:
    """The control plane, the local sources, simulated nodes, and the real manager and agents.

    ``plane``: adopt a running control plane (the e2e session's) instead of starting one.
    ``agent_args`` / ``manager_args`` are appended to every agent's / the manager's command line.
    """

    def __init__(
        self,
        *,
        plane: ControlPlane | None = None,
        workdir: Path | None = None,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        manager: bool = True,
        agents: bool = True,
        agent_args: Sequence[str] = (),
        manager_args: Sequence[str] = (),
        rbac: bool = True,
        s3: bool = True,
    ) -> None:
        self._own_plane = plane is None
        self.plane = plane
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="localcache-system-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.node_specs = {n.name: n for n in nodes}
        self.want_manager = manager
        self.want_agents = agents
        self.agent_args = list(agent_args)
        self.manager_args = list(manager_args)
        self.rbac = rbac
        self.want_s3 = s3
        self.client: Client | None = None
        self.sim: NodeSimulator | None = None
        self.hub: Any = None
        self.s3: Any = None
        self.http: Any = None
        self.http_root = self.workdir / "http"
        self.manager: ManagedProcess | None = None
        self.agents: dict[str, ManagedProcess] = {}
        self.webhook_port = 0
        self.webhooks_served = False
        self._webhook_ca: TinyCA | None = None
        self._stack = contextlib.AsyncExitStack()

    # ---- properties ----------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        assert self.plane is not None and self.plane.kubeconfig is not None
        return self.plane.kubeconfig

    @property
    def kubectl(self) -> Path | None:
        path = assets_dir() / "kubectl"
        return path if path.is_file() else None

    def node(self, name: str) -> SimNode:
        assert self.sim is not None
        return self.sim.nodes[name]

    def models_dir(self, node: str) -> Path:
        """Where the agent of ``node`` keeps models: ``<node disk>/<host path>/models``."""
        return self.node(node).host_path(self.node_specs[node].mount_host_path) / "models"

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> LocalSystem:
        missing = missing_components(manager=self.want_manager, agent=self.want_agents)
        if missing:
            raise ComponentMissing("; ".join(missing))
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        if self.plane is None:
            # The demo's own plane also runs the TTL controller, so finished download Jobs expire as
            # the agent's ttlSecondsAfterFinished asks.
            self.plane = ControlPlane(workdir=self.workdir / "envtest", controllers=CONTROLLERS)
            await asyncio.to_thread(self.plane.start)
        if not self.plane.has_controller_manager:
            raise ComponentMissing(
                "kube-controller-manager is not running (its binary is missing from the envtest assets); "
                "the simulated nodes need its Job controller: run `make envtest`"
            )
        self.client = await Client.from_kubeconfig(self.kubeconfig)
        await apply_documents(self.client, load_yaml(MANIFESTS / "base" / "namespace.yaml"))
        if self.rbac:
            for path in sorted((MANIFESTS / "base" / "rbac").glob("*.yaml")):
                if path.name != "kustomization.yaml":
                    await apply_documents(self.client, load_yaml(path))
        await self._start_sources()
        env = {"HF_ENDPOINT": self.hub.url}
        self.sim = NodeSimulator(self.client, self.workdir / "nodes", extra_env=env, max_concurrent=4)
        await self.sim.start()
        for spec in self.node_specs.values():
            await self.sim.add_node(spec.name, spec.labels, host_paths=[spec.mount_host_path])
        if self.want_manager:
            await self._start_manager()
        if self.want_agents:
            for spec in self.node_specs.values():
                if spec.agent:
                    self.start_agent(spec.name)
            await self.wait_agents_ready()

    async def stop(self) -> None:
        """Stop everything this system started, newest first; safe to call twice."""
        agents = list(self.agents.values())
        self.agents.clear()
        await asyncio.gather(*(asyncio.to_thread(agent.stop) for agent in agents))  # not one by one
        if self.manager is not None:
            await asyncio.to_thread(self.manager.stop)
            self.manager = None
        if self.sim is not None:
            await self.sim.stop()
            self.sim = None
        await self._stack.aclose()
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._own_plane and self.plane is not None:
            await asyncio.to_thread(self.plane.stop)
            self.plane = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> LocalSystem:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- sources -------------------------------------------------------------------------------
    async def _start_sources(self) -> None:
        from localcache.testing.hfhub import HfHubServer
        from localcache.testing.httpsource import HttpFileServer
        from localcache.testing.models import generate_model

        self.hub = HfHubServer()
        self.hub.add_minilm(MINILM_REPO, gated_token=HUB_TOKEN)
        await self._stack.enter_async_context(self.hub)
        self.http_root.mkdir(parents=True, exist_ok=True)
        self.http = HttpFileServer(self.http_root)
        await self._stack.enter_async_context(self.http)
        if self.want_s3:
            from localcache.testing.s3server import S3Server

            self.s3 = S3Server()
            await self._stack.enter_async_context(self.s3)
            model = generate_model(self.workdir / "s3-model", shards=2, shard_bytes=4 * 1024 * 1024, seed=7)
            await asyncio.to_thread(self.s3.create_bucket, S3_BUCKET)
            await asyncio.to_thread(self.s3.upload_dir, S3_BUCKET, S3_PREFIX, model)

    def s3_storage_config(self) -> dict[str, str]:
        """The storage-config secret entry (KServe's JSON shape) for the local S3 server."""
        assert self.s3 is not None
        env = self.s3.env()
        return {
            "type": "s3",
            "access_key_id": env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": env["AWS_ENDPOINT_URL"],
            "region": env["AWS_REGION"],
            "bucket": S3_BUCKET,
        }

    # ---- identities ----------------------------------------------------------------------------
    def _identity_kubeconfig(self, service_account: str) -> Path:
        assert self.plane is not None
        path = self.workdir / "kubeconfigs" / f"{service_account}.kubeconfig"
        if not self.rbac:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.kubeconfig, path)
            return path
        user = f"system:serviceaccount:{CONFIG_NAMESPACE}:{service_account}"
        groups = (
            "system:serviceaccounts",
            f"system:serviceaccounts:{CONFIG_NAMESPACE}",
            "system:authenticated",
        )
        return self.plane.user_kubeconfig(path, user, groups)

    def _user_prefix(self) -> list[str]:
        """Run as uid/gid 1000 (the DaemonSet's runAsUser) when we can, so disk permissions are real."""
        if os.geteuid() == 0 and shutil.which("setpriv"):
            return as_user_prefix(1000, 1000)
        return []

    # ---- manager -------------------------------------------------------------------------------
    async def _start_manager(self) -> None:
        assert self.plane is not None and self.client is not None
        certs = self.workdir / "webhook-certs"
        certs.mkdir(parents=True, exist_ok=True)
        self._webhook_ca = TinyCA("localcache-webhook-ca")
        pair = self._webhook_ca.serving(["127.0.0.1", "localhost"])
        (certs / "tls.crt").write_bytes(pair.cert_pem)
        (certs / "tls.key").write_bytes(pair.key_pem)
        self.webhook_port = free_port()
        health, metrics = free_port(), free_port()
        argv = [
            sys.executable,
            str(REPO_ROOT / "cmd" / "manager.py"),
            f"--kubeconfig={self._identity_kubeconfig('localcache-controller-manager')}",
            f"--webhook-port={self.webhook_port}",
            f"--webhook-cert-dir={certs}",
            f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            *self.manager_args,
        ]
        env = {**os.environ, "POD_NAMESPACE": CONFIG_NAMESPACE, "PYTHONUNBUFFERED": "1"}
        self.manager = ManagedProcess("manager", argv, self.workdir / "logs" / "manager.log", env).start()
        await self._wait_ready(self.manager, health)
        self.webhooks_served = await asyncio.to_thread(self._webhook_listening)
        if self.webhooks_served:
            await self._register_webhooks()
        else:
            log.warning("the manager serves no admission webhooks yet; InferenceServices are not mutated")

    def _webhook_listening(self) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.webhook_port)) == 0

    async def _register_webhooks(self) -> None:
        """The shipped webhook configurations, pointed at the manager on loopback with our CA."""
        assert self.client is not None and self._webhook_ca is not None
        import base64

        ca = base64.b64encode(self._webhook_ca.cert_pem).decode()
        docs = []
        for name in ("mutating.yaml", "validating.yaml"):
            path = MANIFESTS / "base" / "webhook" / name
            if not path.is_file():
                raise ComponentMissing(f"manifests/base/webhook/{name} (webhook configuration) is missing")
            for doc in load_yaml(path):
                for hook in doc.get("webhooks") or []:
                    svc = hook["clientConfig"].get("service") or {}
                    hook["clientConfig"] = {
                        "url": f"https://127.0.0.1:{self.webhook_port}{svc.get('path', '/')}",
                        "caBundle": ca,
                    }
                doc["metadata"].pop("annotations", None)  # cert-manager's CA injection does not run here
                docs.append(doc)
        await apply_documents(self.client, docs)

    async def _wait_ready(self, process: ManagedProcess, health_port: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        url = f"http://127.0.0.1:{health_port}/readyz"

        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        while time.monotonic() < deadline:
            process.check_alive()
            if await asyncio.to_thread(probe):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"{process.name} not ready within {within:.0f}s; last log lines:\n{process.log_tail()}"
        )

    # ---- agents --------------------------------------------------------------------------------
    def start_agent(
        self, node: str, *, host_path: str | None = None, extra_args: Sequence[str] = ()
    ) -> ManagedProcess:
        """Start (or restart) the agent of ``node``; ``host_path`` overrides what it believes its host
        directory is (the guide's host-path mismatch)."""
        assert self.sim is not None
        old = self.agents.pop(node, None)
        if old is not None:
            old.stop()
        spec = self.node_specs[node]
        sim_node = self.sim.nodes[node]
        health, metrics = free_port(), free_port()
        argv = [
            *self._user_prefix(),
            sys.executable,
            str(REPO_ROOT / "cmd" / "agent.py"),
            f"--node-name={node}",
            f"--models-root={sim_node.host_path(spec.mount_host_path)}",
            f"--host-path={host_path or spec.agent_host_path}",
            f"--config-namespace={CONFIG_NAMESPACE}",
            f"--kubeconfig={self._identity_kubeconfig('localcache-agent')}",
            f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            *self.agent_args,
            *extra_args,
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "HOME": str(self.workdir),
            "NODE_NAME": node,
            "POD_NAMESPACE": CONFIG_NAMESPACE,
            "LANG": "C.UTF-8",
        }
        process = ManagedProcess(
            f"agent-{node}", argv, self.workdir / "logs" / f"agent-{node}.log", env
        ).start()
        process.health_port = health  # type: ignore[attr-defined]
        self.agents[node] = process
        return process

    async def add_node(
        self, spec: NodeSpec, *, owner: tuple[int, int] | None = (1000, 1000), agent: bool = True
    ) -> SimNode:
        """Add a simulated node after start (with its agent, ready); ``owner=None`` leaves its host
        directory owned by root, as a node set up without the guide's ``chown``."""
        assert self.sim is not None
        self.node_specs[spec.name] = spec
        node = await self.sim.add_node(spec.name, spec.labels, host_paths=[spec.mount_host_path], owner=owner)
        if agent and spec.agent:
            process = self.start_agent(spec.name)
            await self._wait_ready(process, process.health_port)  # type: ignore[attr-defined]
        return node

    async def remove_node(self, name: str) -> None:
        assert self.sim is not None
        await asyncio.to_thread(self.stop_agent, name)
        await self.sim.delete_node(name)
        self.node_specs.pop(name, None)

    async def restart_agent(self, node: str, *, host_path: str | None = None) -> ManagedProcess:
        """Restart an agent (an admin's ``kubectl rollout restart`` after fixing its node)."""
        await asyncio.to_thread(self.stop_agent, node)
        process = self.start_agent(node, host_path=host_path)
        await self._wait_ready(process, process.health_port)  # type: ignore[attr-defined]
        return process

    def stop_agent(self, node: str) -> None:
        process = self.agents.pop(node, None)
        if process is not None:
            process.stop()

    async def wait_agents_ready(self) -> None:
        for process in self.agents.values():
            await self._wait_ready(process, process.health_port)  # type: ignore[attr-defined]

    def check_processes(self) -> None:
        """Raise with the log tail of any manager/agent that died."""
        for process in [*(p for p in [self.manager] if p), *self.agents.values()]:
            process.check_alive()

    # ---- helpers for the flow ------------------------------------------------------------------
    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        assert self.client is not None
        try:
            return await self.client.get(res, name, namespace)
        except errors.NotFound:
            return None

    def kubectl_run(self, *args: str) -> str:
        """Run the envtest kubectl against this cluster; returns stdout (stderr appended on failure)."""
        kubectl = self.kubectl
        if kubectl is None:
            return "(kubectl not found in the envtest assets; run `make envtest`)"
        proc = subprocess.run(
            [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return proc.stdout + (proc.stderr if proc.returncode else "")


# ---- the guide's flow, adapted to the local sources ------------------------------------------------
#: The guide's example files, kept in the repository so the demo runs from a fresh clone.
GUIDE_EXAMPLES = REPO_ROOT / "e2e" / "guide"
#: What changes in the guide's YAML so that it runs against the local sources; nothing else does.
GUIDE_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("hf://meta-llama/meta-llama-3-8b-instruct", f"hf://{MINILM_REPO}"),
    ("meta-llama3-8b-instruct", "all-minilm-l6-v2"),
    ("huggingface-llama3", "huggingface-minilm"),
    ("--model_name=llama3", "--model_name=minilm"),
    ("modelSize: 10Gi", "modelSize: 100Mi"),
    ("modelSize: 5Gi", "modelSize: 100Mi"),
    ("HF_TOKEN: xxxx", f"HF_TOKEN: {HUB_TOKEN}"),
    ("<your-hf-token>", HUB_TOKEN),
)
CACHE_NAME = "all-minilm-l6-v2"
S3_CACHE_NAME = "s3-model"
NODE_GROUP = "workers"
TEAM_NAMESPACE = "my-team"
ISVC_NAME = "huggingface-minilm"
ISVC_NAMESPACE = "default"
MODEL_URI = f"hf://{MINILM_REPO}"
S3_MODEL_URI = f"s3://{S3_BUCKET}/{S3_PREFIX.rstrip('/')}"


def examples_dir() -> Path:
    """The guide's examples (``e2e/guide``)."""
    if not GUIDE_EXAMPLES.is_dir():
        raise ComponentMissing(f"the guide's examples directory {GUIDE_EXAMPLES} is missing")
    return GUIDE_EXAMPLES


def guide_example(name: str, extra: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """One of the guide's example files with :data:`GUIDE_SUBSTITUTIONS` (and ``extra``) applied."""
    text = (examples_dir() / name).read_text()
    for old, new in (*GUIDE_SUBSTITUTIONS, *extra):
        text = text.replace(old, new)
    return [d for d in yaml.safe_load_all(text) if d]


def storage_config_secret(s3_storage_config: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The guide's 04 (``storage-config`` with ``hf-credentials``) plus, for 06, ``my-s3-key`` holding the
    local S3 server's credentials and endpoint in KServe's storage-config JSON shape."""
    secret = guide_example("04-storage-config-secret.yaml")
    if s3_storage_config is not None:
        secret[0]["stringData"]["my-s3-key"] = json.dumps(dict(s3_storage_config))
    return secret
