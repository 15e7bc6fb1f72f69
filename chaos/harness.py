"""The hooks a chaos run needs around :class:`localcache.testing.system.LocalSystem`, without editing it.

Why a wrapper: LocalSystem starts the manager and agents with the kubeconfig of their ServiceAccount
straight at the API server. Here every component talks through a :class:`FaultProxy` (same identity,
RBAC still applies) so watches can be dropped and requests failed; the manager runs twice with leader
election; a node's model directory is a small tmpfs so the disk can really fill; and processes are
killed with SIGKILL and restarted with the exact command line they had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcache.runtime import errors
from localcache.runtime.resources import LEASES
from localcache.testing.envtest import ControlPlane, free_port
from localcache.testing.faultproxy import FaultProxy
from localcache.testing.system import (
    CONFIG_NAMESPACE,
    DEFAULT_NODES,
    MODELS_HOST_PATH,
    LocalSystem,
    ManagedProcess,
)

log = logging.getLogger(__name__)

LEASE_NAME = "localcache-manager-leader-lock"
#: The node whose model directory is a tmpfs (the disk-full fault); the other group node keeps a plain dir.
TMPFS_NODE = "kind-worker2"
SA_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{CONFIG_NAMESPACE}", "system:authenticated")


def _sa_user(name: str) -> str:
    return f"system:serviceaccount:{CONFIG_NAMESPACE}:{name}"


def _replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    out = [a for a in argv if not a.startswith(f"{flag}=")]
    out.append(f"{flag}={value}")
    return out


def _flag_port(argv: list[str], flag: str) -> int:
    return int(next(a for a in reversed(argv) if a.startswith(f"{flag}=")).split("=", 1)[1])


def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs (root in a container that allows it)."""
    if os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp(prefix="localcache-tmpfs-probe-"))
    try:
        ok = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True, check=False
        )
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], capture_output=True, check=False)
        return True
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


class TcpBalancer:
    """A Service in front of the managers' webhook ports: each connection goes to the first backend
    that accepts it, so admission works while any manager runs (as a Service with two ready pods)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for port in self.backends:
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


@dataclass
class ChaosSystem:
    """A LocalSystem whose components talk through a fault proxy, with two leader-electing managers."""

    plane: ControlPlane | None = None
    seed: int = 0
    tmpfs_mb: int | None = 512
    agent_args: list[str] = field(
        default_factory=lambda: [
            "--retry-backoff-base=1",
            "--retry-backoff-max=4",
            "--job-backoff-limit=2",
            # Disk GC runs within a run (default 10 minutes): it must spare the admin's files.
            "--gc-grace-period=20",
        ]
    )
    system: LocalSystem | None = None
    proxy: FaultProxy | None = None
    managers: list[ManagedProcess] = field(default_factory=list)
    workdir: Path | None = None
    tmpfs: Path | None = None
    balancer: TcpBalancer | None = None
    #: Exits we did not cause (name -> exit codes), e.g. a manager leaving after losing its lease.
    own_exits: dict[str, list[int | None]] = field(default_factory=dict)
    _held: dict[str, float] = field(default_factory=dict)
    _supervisor: asyncio.Task[None] | None = None
    keep_logs: Path | None = None
    _own_plane: bool = False

    async def start(self) -> ChaosSystem:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="localcache-chaos-"))
        self.workdir.chmod(0o755)
        if self.plane is None:
            self._own_plane = True
            self.plane = ControlPlane(workdir=self.workdir / "envtest")
            await asyncio.to_thread(self.plane.start)
        self.proxy = FaultProxy(self.plane.url, tls=self.plane.proxy_tls(), seed=self.seed)
        await self.proxy.start()
        kube = self.workdir / "kubeconfigs-proxied"
        manager_kc = self.plane.user_kubeconfig(
            kube / "manager.kubeconfig", _sa_user("localcache-controller-manager"), SA_GROUPS, self.proxy.url
        )
        agent_kc = self.plane.user_kubeconfig(
            kube / "agent.kubeconfig", _sa_user("localcache-agent"), SA_GROUPS, self.proxy.url
        )
        if self.tmpfs_mb and can_mount_tmpfs():
            # LocalSystem keeps node disks at <workdir>/nodes/<node>; mount before the node is prepared.
            self.tmpfs = self.workdir / "nodes" / TMPFS_NODE / MODELS_HOST_PATH.lstrip("/")
            self.tmpfs.mkdir(parents=True)
            opts = f"size={self.tmpfs_mb}m,mode=0755"
            await asyncio.to_thread(
                subprocess.run,
                ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.tmpfs)],
                check=True,
                capture_output=True,
            )
        self.system = LocalSystem(
            plane=self.plane,
            workdir=self.workdir,
            nodes=DEFAULT_NODES,
            manager_args=[f"--kubeconfig={manager_kc}", "--leader-elect"],
            agent_args=[f"--kubeconfig={agent_kc}", *self.agent_args],
        )
        await self.system.start()
        assert self.system.manager is not None
        self.managers = [self.system.manager]
        second = self._second_manager(self.system.manager)
        self.managers.append(second)
        if self.system.webhooks_served:
            # Point the registered webhooks at a balancer over both managers (LocalSystem has no hook
            # for this: it registers its one manager's port; we register again with ours).
            ports = [self.system.webhook_port, _flag_port(second.argv, "--webhook-port")]
            self.balancer = TcpBalancer(ports)
            self.system.webhook_port = await self.balancer.start()
            await self.system._register_webhooks()

    def supervise(self) -> None:
        """Restart managers and agents that exit, as their Deployment/DaemonSet would (a manager that
        loses its lease exits on purpose); a process we killed stays down until its hold ends."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(0.5)
                self._restart_due()

        self._supervisor = asyncio.create_task(loop())

    def _restart_due(self) -> None:
        if self.system is None:
            return
        now = time.monotonic()
        for process in [*self.managers, *self.system.agents.values()]:
            if process.alive or process.popen is None:
                continue
            held = self._held.get(process.name)
            if held is not None:
                if now < held:
                    continue
                del self._held[process.name]
            else:
                # Exited by itself: restart after a short back-off, as a kubelet would.
                self.own_exits.setdefault(process.name, []).append(process.popen.returncode)
                log.info("process exited on its own name=%s code=%s", process.name, process.popen.returncode)
                self._held[process.name] = now + 1.0
                continue
            process.start()

    def _second_manager(self, first: ManagedProcess) -> ManagedProcess:
        argv = list(first.argv)
        argv = _replace_flag(argv, "--webhook-port", str(free_port()))
        argv = _replace_flag(argv, "--health-probe-bind-address", f"127.0.0.1:{free_port()}")
        argv = _replace_flag(argv, "--metrics-bind-address", f"127.0.0.1:{free_port()}")
        return ManagedProcess("manager-2", argv, first.log_path.with_name("manager-2.log"), first.env).start()

    # ---- faults on processes -------------------------------------------------------------------
    def kill(self, process: ManagedProcess, down_for: float = 0.0) -> bool:
        """SIGKILL the whole process group (no clean shutdown, no lease release); the supervisor starts
        it again after ``down_for`` seconds."""
        if process.popen is None or process.popen.poll() is not None:
            return False
        self._held[process.name] = time.monotonic() + down_for
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait()
        return True

    def kill_agent(self, node: str, down_for: float = 0.0) -> bool:
        assert self.system is not None
        process = self.system.agents.get(node)
        return process is not None and self.kill(process, down_for)

    async def leader(self) -> str | None:
        assert self.system is not None and self.system.client is not None
        try:
            lease = await self.system.client.get(LEASES, LEASE_NAME, CONFIG_NAMESPACE)
        except errors.NotFound:
            return None
        return (lease.get("spec") or {}).get("holderIdentity") or None

    def running_downloads(self) -> list[Any]:
        """The simulator's pods of download Jobs whose process is running now."""
        assert self.system is not None and self.system.sim is not None
        return [r for r in self.system.sim.runs.values() if r.phase == "Running" and r.pids]

    @staticmethod
    def kill_download(run: Any) -> bool:
        killed = False
        for pid in run.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed = True
        return killed

    def ensure_running(self) -> None:
        """End every hold: whatever is down starts now."""
        self._held = {name: 0.0 for name in self._held}
        self._restart_due()

    def all_pids(self) -> list[int]:
        """Every process this run started that could outlive it."""
        pids = []
        procs = [*self.managers]
        if self.system is not None:
            procs += list(self.system.agents.values())
        pids += [p.popen.pid for p in procs if p.popen is not None]
        if self.system is not None and self.system.sim is not None:
            pids += [pid for r in self.system.sim.runs.values() for pid in r.pids]
        if self.plane is not None:
            pids += self.plane.pids
        return pids

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.keep_logs is not None and self.workdir is not None:
            import shutil

            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for log_file in (self.workdir / "logs").glob("*.log"):
                shutil.copy(log_file, self.keep_logs / log_file.name)
        for process in self.managers[1:]:
            await asyncio.to_thread(process.stop)
        if self.system is not None:
            await self.system.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.balancer is not None:
            await self.balancer.stop()
        if self._own_plane and self.plane is not None:
            await asyncio.to_thread(self.plane.stop)
        if self.tmpfs is not None:
            await asyncio.to_thread(
                subprocess.run, ["umount", "-l", str(self.tmpfs)], capture_output=True, check=False
            )
        if self.workdir is not None:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
