"""Manager lifecycle with fake runnables: start order, readiness, leader-only work, lost lease,
graceful shutdown, failures and option validation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from localcache.runtime.clock import FakeClock
from localcache.runtime.leaderelection import LeaderElectionLost
from localcache.runtime.manager import CacheSyncTimeout, Manager, ManagerOptions, ShutdownTimeout
from localcache.runtime.webhook import WebhookServer
from localcache.testing.certs import TinyCA
from tests.unit.runtime.test_leaderelection import NS, FakeLeases

Log = list[str]


class Thing:
    """A runnable that logs its start and stop, optionally failing or clinging to life."""

    def __init__(
        self, log: Log, name: str, *, leader: bool = True, fail: BaseException | None = None
    ) -> None:
        self.log, self.name, self.needs_leader_election, self.fail = log, name, leader, fail
        self.running = asyncio.Event()
        self.cling = 0.0
        self.finished = asyncio.Event()

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        self.running.set()
        try:
            if self.fail is not None:
                await asyncio.sleep(0)
                raise self.fail
            await asyncio.Event().wait()
        finally:
            self.running.clear()
            self.log.append(f"stop {self.name}")
            if self.cling:
                await asyncio.shield(asyncio.sleep(self.cling))
            self.finished.set()


class FakeCache:
    needs_leader_election = False
    name = "fake-cache"

    def __init__(self, log: Log) -> None:
        self.log = log
        self.synced = asyncio.Event()

    def has_synced(self) -> bool:
        return self.synced.is_set()

    async def wait_for_sync(self, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            await asyncio.wait_for(self.synced.wait(), timeout)
        except TimeoutError:
            return False
        self.log.append("cache synced")
        return True

    async def start(self) -> None:
        self.log.append("start cache")
        try:
            await asyncio.Event().wait()
        finally:
            self.log.append("stop cache")


def options(**kw: Any) -> ManagerOptions:
    base: dict[str, Any] = {
        "metrics_bind_address": "127.0.0.1:0",
        "health_probe_bind_address": "127.0.0.1:0",
        "handle_signals": False,
        "loop_lag_interval": 0.05,
    }
    return ManagerOptions(**(base | kw))


async def until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll a condition with a deadline (the state lives in other tasks and an HTTP server)."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - polling a condition with a deadline
            await asyncio.sleep(0.005)
    assert predicate(), what


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_start_order_and_readiness() -> None:
    log: Log = []
    cache = FakeCache(log)
    mgr = Manager(None, options(), cache=cache)
    mgr.add(Thing(log, "controller"))
    mgr.add(Thing(log, "standby-work", leader=False))
    run = asyncio.create_task(mgr.run())
    try:
        await until(lambda: "start cache" in log, "cache started")
        server = mgr.probe_server
        assert server is not None and server is mgr.metrics_server, "equal addresses share one server"
        status, body = await get(f"{server.url}/readyz")
        assert status == 500 and "[-]informer-sync" in body, "not ready before the cache syncs"
        assert (await get(f"{server.url}/healthz"))[0] == 200
        assert "start controller" not in log and "start standby-work" not in log
        cache.synced.set()
        await until(lambda: "start controller" in log, "controller started")
        assert (await get(f"{server.url}/readyz"))[0] == 200
        assert log.index("cache synced") < log.index("start standby-work") < log.index("start controller")
        status, body = await get(f"{server.url}/metrics")
        assert status == 200 and "asyncio_event_loop_lag_seconds" in body
    finally:
        mgr.stop()
        await asyncio.wait_for(run, 10)
    assert log.index("stop controller") < log.index("stop standby-work") < log.index("stop cache")


async def test_runnable_added_while_running_starts_at_once() -> None:
    log: Log = []
    mgr = Manager(None, options(metrics_bind_address="0", health_probe_bind_address="0"))
    run = asyncio.create_task(mgr.run())
    try:
        await asyncio.wait_for(mgr.elected.wait(), 10)
        late = Thing(log, "late")
        mgr.add(late)
        await asyncio.wait_for(late.running.wait(), 10)
    finally:
        mgr.stop()
        await asyncio.wait_for(run, 10)
    assert log == ["start late", "stop late"]


async def test_a_failing_runnable_stops_the_manager_with_its_error() -> None:
    log: Log = []
    mgr = Manager(None, options(metrics_bind_address="0", health_probe_bind_address="0"))
    survivor = Thing(log, "survivor", leader=False)
    mgr.add(survivor)
    mgr.add(Thing(log, "broken", fail=ValueError("reconciler exploded")))
    with pytest.raises(ValueError, match="reconciler exploded"):
        await asyncio.wait_for(mgr.run(), 10)
    assert "stop survivor" in log and not survivor.running.is_set()


async def test_cache_sync_timeout_is_an_error() -> None:
    log: Log = []
    mgr = Manager(None, options(cache_sync_timeout=0.05), cache=FakeCache(log))
    controller = Thing(log, "controller")
    mgr.add(controller)
    with pytest.raises(CacheSyncTimeout, match="fake-cache did not sync"):
        await asyncio.wait_for(mgr.run(), 10)
    assert "start controller" not in log and "stop cache" in log


async def test_shutdown_timeout_is_reported() -> None:
    log: Log = []
    mgr = Manager(None, options(graceful_shutdown_timeout=0.05, metrics_bind_address="0"))
    stubborn = Thing(log, "stubborn")
    stubborn.cling = 0.5
    mgr.add(stubborn)
    run = asyncio.create_task(mgr.run())
    await asyncio.wait_for(stubborn.running.wait(), 10)
    mgr.stop()
    with pytest.raises(ShutdownTimeout, match="stubborn"):
        await asyncio.wait_for(run, 10)
    await asyncio.wait_for(stubborn.finished.wait(), 10)  # leave no task behind


# --- with leader election --------------------------------------------------------------------------
def le_options(**kw: Any) -> ManagerOptions:
    return options(
        leader_election=True,
        leader_election_id="lock",
        leader_election_namespace=NS,
        metrics_bind_address="0",
        health_probe_bind_address="0",
        **kw,
    )


async def test_leader_only_work_waits_for_the_lease() -> None:
    log: Log = []
    clock, store = FakeClock(), FakeLeases()
    store.put({"holderIdentity": "other", "leaseDurationSeconds": 15})
    mgr = Manager(store, le_options(leader_election_identity="me"), clock=clock)
    assert mgr.elector is not None
    mgr.elector._rng = random.Random(0)
    controller, standby = Thing(log, "controller"), Thing(log, "standby", leader=False)
    mgr.add(controller)
    mgr.add(standby)
    run = asyncio.create_task(mgr.run())
    try:
        await asyncio.wait_for(standby.running.wait(), 10)
        await clock.advance(10)
        assert not controller.running.is_set() and not mgr.is_leader
        await clock.advance(10)  # past 15 s of local observation plus a jittered retry
        await asyncio.wait_for(controller.running.wait(), 10)
        assert mgr.is_leader and store.record().holder_identity == "me"
    finally:
        mgr.stop()
        await asyncio.wait_for(run, 10)


async def test_lost_lease_cancels_leader_work_at_once_and_fails_run() -> None:
    log: Log = []
    clock, store = FakeClock(), FakeLeases()
    mgr = Manager(store, le_options(leader_election_identity="me", graceful_shutdown_timeout=30), clock=clock)
    controller, standby = Thing(log, "controller"), Thing(log, "standby", leader=False)
    mgr.add(controller)
    mgr.add(standby)
    run = asyncio.create_task(mgr.run())
    await asyncio.wait_for(controller.running.wait(), 10)
    store.put({"holderIdentity": "thief", "leaseDurationSeconds": 15})
    await clock.advance(2 + 9.9)
    assert controller.running.is_set(), "still within the renew deadline"
    await clock.advance(0.2)
    with pytest.raises(LeaderElectionLost):
        await asyncio.wait_for(run, 10)
    assert not controller.running.is_set() and not standby.running.is_set()
    assert store.record().holder_identity == "thief"


async def test_graceful_stop_releases_the_lease_after_leader_work_ends() -> None:
    log: Log = []
    clock, store = FakeClock(), FakeLeases()
    opts = le_options(leader_election_identity="me", leader_election_release_on_cancel=True)
    mgr = Manager(store, opts, clock=clock)
    controller = Thing(log, "controller")
    holder_when_stopping: list[str] = []
    original = controller.start

    async def start() -> None:
        try:
            await original()
        finally:
            holder_when_stopping.append(store.record().holder_identity)

    controller.start = start  # type: ignore[method-assign]
    mgr.add(controller)
    run = asyncio.create_task(mgr.run())
    await asyncio.wait_for(controller.running.wait(), 10)
    mgr.stop()
    await asyncio.wait_for(run, 10)
    assert holder_when_stopping == ["me"], "the lease is still ours while leader work drains"
    rec = store.record()
    assert rec.holder_identity == "" and rec.lease_duration_seconds == 1


def test_option_validation() -> None:
    with pytest.raises(ValueError, match="leader_election_id is required"):
        ManagerOptions(leader_election=True)
    with pytest.raises(ValueError, match="bind address"):
        ManagerOptions(metrics_bind_address="nope")
    with pytest.raises(ValueError, match="leader_election_namespace is required"):
        Manager(None, ManagerOptions(leader_election=True, leader_election_id="x"))


def test_add_rejects_non_runnables() -> None:
    mgr = Manager(None, options())
    with pytest.raises(TypeError, match="not a runnable"):
        mgr.add(object())


class Draining:
    """A controller-like runnable: one reconcile in flight when the stop comes; drain lets it finish."""

    needs_leader_election = True
    name = "draining"

    def __init__(self, log: Log, with_drain: bool) -> None:
        self.log = log
        self.in_flight = asyncio.Event()
        self.release = asyncio.Event()
        self._stopping = False
        if with_drain:
            self.drain = self._drain
        else:
            self.queue = self  # a workqueue-like object whose shutdown() makes workers exit

    def _drain(self) -> None:
        self.log.append("drain")
        self._stopping = True

    def shutdown(self) -> None:
        self.log.append("queue shutdown")
        self._stopping = True

    async def start(self) -> None:
        try:
            self.in_flight.set()
            await self.release.wait()  # the reconcile in flight
            self.log.append("reconcile finished")
            while not self._stopping:  # noqa: ASYNC110 - a stand-in for workers polling their queue
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise


@pytest.mark.parametrize("with_drain", [True, False])
async def test_graceful_stop_drains_in_flight_work(with_drain: bool) -> None:
    log: Log = []
    mgr = Manager(None, options(metrics_bind_address="0", health_probe_bind_address="0"))
    work = Draining(log, with_drain)
    plain = Thing(log, "plain")
    mgr.add(work)
    mgr.add(plain)
    run = asyncio.create_task(mgr.run())
    await asyncio.wait_for(work.in_flight.wait(), 10)
    mgr.stop()
    await until(lambda: "drain" in log or "queue shutdown" in log, "drain requested")
    assert "cancelled" not in log
    work.release.set()
    await asyncio.wait_for(run, 10)
    assert "reconcile finished" in log and "cancelled" not in log
    assert "stop plain" in log, "runnables that cannot drain are cancelled"


async def test_drain_is_bounded_by_the_grace_period() -> None:
    log: Log = []
    mgr = Manager(None, options(metrics_bind_address="0", health_probe_bind_address="0",
                                graceful_shutdown_timeout=0.1))  # fmt: skip
    work = Draining(log, with_drain=True)
    mgr.add(work)
    run = asyncio.create_task(mgr.run())
    await asyncio.wait_for(work.in_flight.wait(), 10)
    mgr.stop()
    with pytest.raises(ShutdownTimeout, match="draining"):
        await asyncio.wait_for(run, 10)  # the stuck reconcile is cancelled once the grace period is over
    assert log == ["drain", "cancelled"]


async def test_webhook_server_starts_before_caches_and_gates_readiness(tmp_path: Path) -> None:
    log: Log = []
    TinyCA().serving(["127.0.0.1"]).write(tmp_path, "tls")
    webhook = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path)
    cache = FakeCache(log)
    original = cache.start

    async def cache_start() -> None:
        log.append(f"webhook started={webhook.started}")
        await original()

    cache.start = cache_start  # type: ignore[method-assign]
    mgr = Manager(None, options(webhook_server=webhook), cache=cache)
    run = asyncio.create_task(mgr.run())
    try:
        await until(lambda: "start cache" in log, "cache started")
        assert log[0] == "webhook started=True"
        server = mgr.probe_server
        assert server is not None
        _, body = await get(f"{server.url}/readyz?verbose")
        assert "[+]webhook ok" in body and "[-]informer-sync" in body
        cache.synced.set()
        await until(lambda: mgr.ready.is_set(), "ready")
        assert (await get(f"{server.url}/readyz"))[0] == 200
    finally:
        mgr.stop()
        await asyncio.wait_for(run, 10)
    assert not webhook.started


async def test_a_taken_port_fails_run_with_the_bind_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log: Log = []
        mgr = Manager(None, options(metrics_bind_address=f"127.0.0.1:{port}", health_probe_bind_address="0"))
        controller = Thing(log, "controller")
        mgr.add(controller)
        with pytest.raises(OSError, match=str(port)):
            await asyncio.wait_for(mgr.run(), 10)
    assert log == [], "nothing starts after a failed HTTP server"


async def test_a_manager_runs_once() -> None:
    mgr = Manager(None, options(metrics_bind_address="0", health_probe_bind_address="0"))
    mgr.stop()
    await asyncio.wait_for(mgr.run(), 10)
    with pytest.raises(RuntimeError, match="runs once"):
        await mgr.run()
