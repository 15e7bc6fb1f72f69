"""The Manager: runs a process's runnables in controller-runtime's order, with leader election,
probes, metrics and graceful shutdown.

Start order (``pkg/manager/runnable_group.go``), each phase started before the next begins:

1. **HTTP servers**: metrics (``:8080``) and probes (``:8081``), so probes answer while caches fill;
2. **webhook server**, before the caches (a conversion webhook may be needed by the first LIST);
3. **caches**: anything with ``wait_for_sync``; the manager waits for their sync (``cache_sync_timeout``,
   2 minutes, then :class:`CacheSyncTimeout`). Informers run on every replica, leader or not;
4. **others**: runnables with ``needs_leader_election = False``;
5. **leader-only** runnables (controllers; ``needs_leader_election`` true or absent) once the Lease is
   acquired, or at once without leader election.

A runnable is anything with ``async def start(self) -> None`` that runs until cancelled. One that
raises stops the manager, and :meth:`Manager.run` re-raises its error; one that returns is done.

Stopping: SIGTERM/SIGINT (or :meth:`Manager.stop`) cancels leader-only runnables first (controllers
drain their in-flight reconciles on cancellation), then releases the Lease if configured, then stops
the rest in reverse start order, all within ``graceful_shutdown_timeout`` (30 s); a second signal
exits at once. When the Lease is **lost**, leader-only work is cancelled immediately, the graceful
wait is skipped (as controller-runtime does, for safety) and ``run`` raises
:class:`~localcache.runtime.leaderelection.LeaderElectionLost`: the process should exit and restart.

Probes: ``/readyz`` has ``informer-sync`` (all caches synced) plus whatever :meth:`add_readyz_check`
adds; ``/healthz`` has ``ping``, ``leader-election`` (the elector watchdog, when enabled) and
``event-loop`` (lag below its threshold). The metrics server serves the default Prometheus registry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from localcache.runtime.clock import SYSTEM_CLOCK, Clock
from localcache.runtime.events import EventRecorder
from localcache.runtime.httpserver import (
    Checker,
    Checks,
    HTTPServer,
    KubernetesAuth,
    parse_bind_address,
    ping,
)
from localcache.runtime.leaderelection import (
    LeaderElectionConfig,
    LeaderElectionLost,
    LeaderElector,
    default_identity,
)
from localcache.runtime.looplag import LoopLagMonitor
from localcache.runtime.webhook import CertWatcher, WebhookServer

__all__ = [
    "CacheSyncTimeout",
    "Manager",
    "ManagerOptions",
    "Runnable",
    "ShutdownTimeout",
    "run_manager",
]

log = logging.getLogger(__name__)

#: After the grace period, how long cancelled runnables get to unwind before run() returns.
CANCEL_WAIT = 1.0

#: After a lost lease, how long to wait for the (already cancelled) runnables to end before returning.
LOST_LEASE_EXIT_WAIT = 5.0

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@runtime_checkable
class Runnable(Protocol):
    async def start(self) -> None: ...


class CacheSyncTimeout(TimeoutError):
    """A cache did not sync within ``cache_sync_timeout``."""


class ShutdownTimeout(TimeoutError):
    """Runnables were still running when ``graceful_shutdown_timeout`` ran out."""


@dataclass
class ManagerOptions:
    """Manager settings; the defaults are controller-runtime's (see ``docs/runtime.md``)."""

    metrics_bind_address: str = ":8080"
    health_probe_bind_address: str = ":8081"
    metrics_cert_dir: str = ""
    metrics_auth: bool = False
    leader_election: bool = False
    leader_election_id: str = ""
    leader_election_namespace: str = ""
    leader_election_identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    leader_election_release_on_cancel: bool = False
    graceful_shutdown_timeout: float = 30.0
    cache_sync_timeout: float = 120.0
    webhook_server: WebhookServer | None = None
    loop_lag_interval: float = 0.5
    loop_lag_threshold: float = 10.0
    handle_signals: bool = True

    def __post_init__(self) -> None:
        parse_bind_address(self.metrics_bind_address)
        parse_bind_address(self.health_probe_bind_address)
        for attr in ("graceful_shutdown_timeout", "cache_sync_timeout"):
            if getattr(self, attr) < 0:
                raise ValueError(f"manager option {attr} must not be negative")
        if self.leader_election and not self.leader_election_id:
            raise ValueError("manager option leader_election_id is required when leader_election is on")


def _in_cluster_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return ""


class _BoundBuilder:
    """Helper-1's Builder, with ``build()`` also adding the controller to the manager."""

    def __init__(self, builder: Any, manager: Manager) -> None:
        self._builder = builder
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._builder, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if name == "build":
                self._manager.add(result)
                return result
            return self if result is self._builder else result

        return call


_GROUPS = ("http", "webhook", "caches", "others", "leader")


class Manager:
    """Owns the client, the shared cache, the probes and the lifecycle; see the module docstring."""

    def __init__(
        self,
        client: Any,
        options: ManagerOptions | None = None,
        *,
        cache: Any = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        self.options = options or ManagerOptions()
        self.clock = clock
        self._cache = cache
        self.healthz = Checks("healthz")
        self.readyz = Checks("readyz")
        self._groups: dict[str, list[Any]] = {g: [] for g in _GROUPS}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {g: [] for g in _GROUPS}
        self._started_groups: set[str] = set()
        self._recorders: dict[str, EventRecorder] = {}
        self._runnable_of: dict[asyncio.Task[None], Any] = {}
        self._synced: set[int] = set()
        self._failure: asyncio.Future[BaseException] | None = None
        self._stop_requested = asyncio.Event()
        self._running = False
        self._ran = False
        self.elected = asyncio.Event()
        self.ready = asyncio.Event()
        self.http_servers: list[HTTPServer] = []
        self.metrics_server: HTTPServer | None = None
        self.probe_server: HTTPServer | None = None
        self.elector: LeaderElector | None = None
        self.loop_lag: LoopLagMonitor | None = None

        opts = self.options
        self.healthz.add("ping", ping)
        self.readyz.add("informer-sync", self._caches_synced)
        metrics_addr, probe_addr = opts.metrics_bind_address, opts.health_probe_bind_address
        secure: dict[str, Any] = {}
        if opts.metrics_cert_dir:
            cert_dir = Path(opts.metrics_cert_dir)
            secure["certs"] = CertWatcher(cert_dir / "tls.crt", cert_dir / "tls.key", clock=clock)
        if opts.metrics_auth:
            secure["metrics_auth"] = KubernetesAuth(client, clock=clock)
        if parse_bind_address(probe_addr) is not None and probe_addr == metrics_addr:
            server = HTTPServer(
                metrics_addr, metrics=True, healthz=self.healthz, readyz=self.readyz, name="http", **secure
            )
            self.metrics_server = self.probe_server = server
            self.http_servers.append(server)
        else:
            if parse_bind_address(metrics_addr) is not None:
                self.metrics_server = HTTPServer(metrics_addr, metrics=True, name="metrics", **secure)
                self.http_servers.append(self.metrics_server)
            if parse_bind_address(probe_addr) is not None:
                self.probe_server = HTTPServer(
                    probe_addr, healthz=self.healthz, readyz=self.readyz, name="probes"
                )
                self.http_servers.append(self.probe_server)
        self._groups["http"].extend(self.http_servers)

        if opts.loop_lag_interval > 0:
            self.loop_lag = LoopLagMonitor(opts.loop_lag_interval, opts.loop_lag_threshold)
            self.healthz.add("event-loop", self.loop_lag.check)

        if opts.leader_election:
            namespace = opts.leader_election_namespace or _in_cluster_namespace()
            if not namespace:
                raise ValueError(
                    "manager option leader_election_namespace is required when not running in a cluster"
                )
            config = LeaderElectionConfig(
                name=opts.leader_election_id,
                namespace=namespace,
                identity=opts.leader_election_identity,
                lease_duration=opts.lease_duration,
                renew_deadline=opts.renew_deadline,
                retry_period=opts.retry_period,
                release_on_cancel=opts.leader_election_release_on_cancel,
            )
            self.elector = LeaderElector(client, config, clock=clock)
            self.healthz.add("leader-election", self.elector.check)

        if opts.webhook_server is not None:
            self._groups["webhook"].append(opts.webhook_server)
            self.readyz.add("webhook", opts.webhook_server.started_check)

        if cache is not None:
            self._groups["caches"].append(cache)

    # --- what controllers use ------------------------------------------------------------------------
    @property
    def cache(self) -> Any:
        """The shared informer cache given at construction (or the default one, once it exists)."""
        if self._cache is None:
            self._cache = self._default_cache()
            self._groups["caches"].append(self._cache)
        return self._cache

    def _default_cache(self) -> Any:
        try:
            from localcache.runtime.cache import Cache
        except ImportError as exc:  # helper-1's cache module has not landed yet
            raise RuntimeError(
                "no cache was given to the Manager and localcache.runtime.cache is missing"
            ) from exc
        return Cache(self.client, clock=self.clock)

    @property
    def webhook_server(self) -> WebhookServer:
        """The webhook server (a default one on :9443 with certs in the default directory if none given)."""
        if self.options.webhook_server is None:
            if self._running:
                raise RuntimeError("webhook server must be requested before the manager runs")
            self.options.webhook_server = WebhookServer(clock=self.clock)
            self._groups["webhook"].append(self.options.webhook_server)
            self.readyz.add("webhook", self.options.webhook_server.started_check)
        return self.options.webhook_server

    def event_recorder(self, component: str) -> EventRecorder:
        """An EventRecorder for ``component`` sharing the manager's client (one per component)."""
        if component not in self._recorders:
            self._recorders[component] = EventRecorder(self.client, component, clock=self.clock)
        return self._recorders[component]

    def controller(self, name: str) -> Any:
        """``Builder(client, cache, name=name)`` whose ``build(reconciler)`` also adds the controller."""
        from localcache.runtime.builder import Builder

        return _BoundBuilder(Builder(self.client, self.cache, name=name), self)

    def add_healthz_check(self, name: str, checker: Checker) -> None:
        self.healthz.add(name, checker)

    def add_readyz_check(self, name: str, checker: Checker) -> None:
        self.readyz.add(name, checker)

    def add(self, runnable: Any) -> None:
        """Add a runnable; its group follows from its type and ``needs_leader_election``.

        Added while running, it starts at once if its phase has already begun.
        """
        if not callable(getattr(runnable, "start", None)):
            raise TypeError(f"{type(runnable).__name__} is not a runnable: it has no start() method")
        if isinstance(runnable, HTTPServer):
            group = "http"
        elif isinstance(runnable, WebhookServer):
            group = "webhook"
        elif callable(getattr(runnable, "wait_for_sync", None)):
            group = "caches"
        elif getattr(runnable, "needs_leader_election", True):
            group = "leader"
        else:
            group = "others"
        if group == "caches" and self._cache is None:
            self._cache = runnable
        self._groups[group].append(runnable)
        if self._running and group in self._started_groups:
            self._spawn(group, runnable)

    @property
    def is_leader(self) -> bool:
        return self.elected.is_set()

    # --- lifecycle -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask a running manager to shut down gracefully (what SIGTERM does)."""
        self._stop_requested.set()

    def _caches_synced(self) -> bool:
        caches = self._groups["caches"]
        if not caches:
            return self.ready.is_set()
        for cache in caches:
            has_synced = getattr(cache, "has_synced", None)
            if callable(has_synced):
                if not has_synced():
                    return False
            elif id(cache) not in self._synced:
                return False
        return True

    def _spawn(self, group: str, runnable: Any) -> asyncio.Task[None]:
        name = f"{group}:{getattr(runnable, 'name', type(runnable).__name__)}"
        task = asyncio.get_running_loop().create_task(runnable.start(), name=name)
        self._tasks[group].append(task)
        self._runnable_of[task] = runnable
        task.add_done_callback(self._on_done)
        return task

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            log.info("runnable finished", extra={"runnable": task.get_name()})
            return
        if isinstance(exc, LeaderElectionLost):
            # Not one more reconcile without the lease: cancel leader-only work in this very callback.
            self.elected.clear()
            for leader_task in self._tasks["leader"]:
                leader_task.cancel()
            log.error("leader election lost; leader-only runnables cancelled")
        else:
            log.error(
                "runnable failed", extra={"runnable": task.get_name(), "error": repr(exc)}, exc_info=exc
            )
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(exc)

    async def _until(self, aw: Any) -> Any:
        """Await ``aw`` unless a stop is requested or a runnable fails first (then raise _Interrupted)."""
        assert self._failure is not None
        work = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({work, stop, self._failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.done() and not work.cancelled():
            return work.result()
        raise _Interrupted

    def _install_signals(self) -> list[signal.Signals]:
        if not self.options.handle_signals:
            return []
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            if self._stop_requested.is_set():
                log.error("second signal received, exiting immediately", extra={"signal": sig.name})
                os._exit(1)
            log.info("signal received, shutting down", extra={"signal": sig.name})
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no support
                continue
            installed.append(sig)
        return installed

    async def run(self) -> None:
        """Run until stopped; raises a runnable's error, CacheSyncTimeout or LeaderElectionLost."""
        if self._running or self._ran:
            raise RuntimeError("a manager runs once; create a new one to run again")
        self._running = self._ran = True
        self._failure = asyncio.get_running_loop().create_future()
        signals = self._install_signals()
        lost = False
        error: BaseException | None = None
        elector_task: asyncio.Task[None] | None = None
        try:
            try:
                await self._start_phases()
                if self.elector is not None:
                    elector_task = asyncio.get_running_loop().create_task(
                        self.elector.run(), name="leader-election"
                    )
                    elector_task.add_done_callback(self._on_done)
                    await self._until(self.elector.elected.wait())
                self.elected.set()
                log.info("starting leader-only runnables", extra={"count": len(self._groups["leader"])})
                self._started_groups.add("leader")
                for runnable in list(self._groups["leader"]):
                    self._spawn("leader", runnable)
                await self._until(asyncio.Event().wait())
            except _Interrupted:
                pass
            if self._failure.done():
                error = self._failure.result()
                lost = isinstance(error, LeaderElectionLost)
        except BaseException as exc:
            error = exc
        finally:
            self.elected.clear()
            shutdown_error = await self._shutdown(elector_task, graceful=not lost)
            loop = asyncio.get_running_loop()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._running = False
            self._started_groups.clear()
        if error is not None:
            raise error
        if shutdown_error is not None:
            raise shutdown_error

    async def _start_phases(self) -> None:
        if self.loop_lag is not None:  # measured from the start: a blocked loop also slows the cache fill
            self._spawn("others", self.loop_lag)
        for server in self.http_servers:
            self._spawn("http", server)
        self._started_groups.add("http")
        for server in self.http_servers:
            await self._until(server.wait_started())
        for webhook in self._groups["webhook"]:
            self._spawn("webhook", webhook)
            await self._until(webhook.wait_started())
        self._started_groups.add("webhook")

        self._started_groups.add("caches")
        for cache in list(self._groups["caches"]):
            self._spawn("caches", cache)
        for cache in list(self._groups["caches"]):
            synced = await self._until(cache.wait_for_sync(self.options.cache_sync_timeout))
            if not synced:
                raise CacheSyncTimeout(
                    f"cache {getattr(cache, 'name', type(cache).__name__)} did not sync within "
                    f"{self.options.cache_sync_timeout:.0f}s"
                )
            self._synced.add(id(cache))
        self.ready.set()

        self._started_groups.add("others")
        for runnable in list(self._groups["others"]):
            self._spawn("others", runnable)

    async def _drain_leaders(self, budget: float) -> None:
        """Let leader-only runnables that can drain finish their in-flight work before cancelling.

        A runnable drains if it has ``drain()`` (sync or async: stop taking new work, finish what is in
        flight, then return from ``start``); a controller without it drains through its workqueue's
        ``shutdown()`` (workers finish their items and exit). The rest are simply cancelled.
        """
        draining: list[asyncio.Task[None]] = []
        drain_calls: list[asyncio.Future[Any]] = []
        for task in self._tasks["leader"]:
            if task.done():
                continue
            runnable = self._runnable_of.get(task)
            drain = getattr(runnable, "drain", None)
            queue_shutdown = getattr(getattr(runnable, "queue", None), "shutdown", None)
            try:
                if callable(drain):
                    result = drain()
                    if inspect.isawaitable(result):
                        drain_calls.append(asyncio.ensure_future(result))
                elif callable(queue_shutdown):
                    queue_shutdown()
                else:
                    continue
            except Exception:
                log.exception(
                    "drain failed; the runnable will be cancelled", extra={"runnable": task.get_name()}
                )
                continue
            draining.append(task)
        if draining and budget > 0:
            log.info(
                "draining leader-only runnables", extra={"count": len(draining), "budget_s": round(budget, 1)}
            )
            _, pending = await asyncio.wait(draining, timeout=budget)
            if pending:
                log.warning(
                    "drain incomplete; cancelling", extra={"pending": [t.get_name() for t in pending]}
                )
        for call in drain_calls:
            call.cancel()
        await asyncio.gather(*drain_calls, return_exceptions=True)

    async def _cancel_group(self, group: str, budget: float | None) -> bool:
        """Cancel a group's tasks and wait up to ``budget`` seconds; True when all ended."""
        tasks = [t for t in self._tasks[group] if not t.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return True
        if budget is not None and budget <= 0:
            return False
        _, pending = await asyncio.wait(tasks, timeout=budget)
        return not pending

    async def _shutdown(
        self, elector_task: asyncio.Task[None] | None, *, graceful: bool
    ) -> BaseException | None:
        """Stop everything: leader-only work first, then the lease, then the rest in reverse order.

        Not graceful (the lease was lost): everything is cancelled at once and only the cancellations
        are awaited, briefly; no lease release, no event flush.
        """
        loop = asyncio.get_running_loop()
        timeout = self.options.graceful_shutdown_timeout if graceful else LOST_LEASE_EXIT_WAIT
        deadline = loop.time() + timeout

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        log.info("manager stopping", extra={"graceful": graceful, "timeout_s": timeout})
        if not graceful:
            for group in _GROUPS:
                for task in self._tasks[group]:
                    task.cancel()
        if graceful:
            await self._drain_leaders(remaining())
        complete = await self._cancel_group("leader", remaining())
        if elector_task is not None and not elector_task.done():
            # Leader-only work has ended (or been abandoned): only now may the lease be released.
            elector_task.cancel()
            done, _ = await asyncio.wait({elector_task}, timeout=max(remaining(), 1.0))
            complete = complete and bool(done)
        for recorder in self._recorders.values():
            await recorder.close(grace=min(5.0, remaining()) if graceful else 0.0)
        for group in ("others", "caches", "webhook", "http"):
            ok = await self._cancel_group(group, remaining())
            complete = complete and ok
        if not complete:
            late = [t for g in _GROUPS for t in self._tasks[g] if not t.done()]
            pending = [t.get_name() for t in late]
            log.error("shutdown timed out", extra={"pending": pending, "timeout_s": timeout})
            if late:  # all cancelled by now: give the cancellations a moment so no task outlives run()
                await asyncio.wait(late, timeout=CANCEL_WAIT)
            return ShutdownTimeout(f"runnables still running after {timeout:g}s: {', '.join(pending)}")
        log.info("manager stopped")
        return None


class _Interrupted(Exception):
    """Internal: a phase was interrupted by a stop request or a failed runnable."""


def run_manager(manager: Manager, *, exit_on_error: bool = True) -> int:
    """``asyncio.run(manager.run())`` with an exit code: 0 on a clean stop, 1 otherwise."""
    try:
        asyncio.run(manager.run())
    except Exception:
        log.exception("manager exited with an error")
        if exit_on_error:
            return 1
        raise
    return 0
