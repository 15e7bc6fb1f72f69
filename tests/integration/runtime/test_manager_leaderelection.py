"""Leader election between real managers over a real kube-apiserver's Lease.

Three managers in one process (one event loop, so "never two leaders" can be checked exactly, at the
moment each leader-only runnable starts): the first leads; a standby takes over after the leader
stops; when an intruder takes the lease the leader steps down within the renew deadline and its
leader-only work stops; a standby takes over once the intruder's lease expires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from localcache.runtime.client import Client
from localcache.runtime.errors import Conflict
from localcache.runtime.leaderelection import LeaderElectionLost
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.resources import LEASES
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration

LEASE, RENEW, RETRY = 4.0, 3.0, 1.0
JITTERED_RETRY = RETRY * 2.2


class Exclusive:
    """Counts leader-only runnables running at once across managers; more than one is a violation."""

    def __init__(self) -> None:
        self.active: list[str] = []
        self.violations: list[str] = []


class LeaderWork:
    needs_leader_election = True

    def __init__(self, who: str, shared: Exclusive) -> None:
        self.who, self.shared = who, shared
        self.running = asyncio.Event()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        if self.shared.active:
            self.shared.violations.append(f"{self.who} started while {self.shared.active} ran")
        self.shared.active.append(self.who)
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.shared.active.remove(self.who)
            self.running.clear()
            self.stopped.set()


class Replica:
    def __init__(
        self, client: Client, namespace: str, who: str, shared: Exclusive, release: bool = False
    ) -> None:
        options = ManagerOptions(
            leader_election_release_on_cancel=release,
            metrics_bind_address="0",
            health_probe_bind_address="0",
            handle_signals=False,
            leader_election=True,
            leader_election_id="failover-test",
            leader_election_namespace=namespace,
            leader_election_identity=who,
            lease_duration=LEASE,
            renew_deadline=RENEW,
            retry_period=RETRY,
        )
        self.who = who
        self.manager = Manager(client, options)
        self.work = LeaderWork(who, shared)
        self.manager.add(self.work)
        self.task: asyncio.Task[None] = asyncio.create_task(self.manager.run(), name=f"manager-{who}")

    async def stop(self) -> None:
        self.manager.stop()
        await asyncio.gather(self.task, return_exceptions=True)


async def eventually(predicate: Callable[[], bool], what: str, limit: float) -> float:
    """Seconds until ``predicate`` held; fails after ``limit`` seconds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            pytest.fail(f"{what}: not within {limit:.1f}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        yield c


async def steal_lease(client: Client, namespace: str, holder: str) -> None:
    """Take the lease as `holder`; the leader renews concurrently, so a 409 means re-read and retry."""
    while True:
        lease = await client.get(LEASES, "failover-test", namespace)
        lease["spec"].update(holderIdentity=holder, leaseDurationSeconds=int(LEASE))
        try:
            await client.update(LEASES, lease)
            return
        except Conflict:
            continue


async def test_failover_and_lost_lease(client: Client, namespace: str) -> None:
    shared = Exclusive()
    replicas: list[Replica] = []
    try:
        a = Replica(client, namespace, "replica-a", shared)
        replicas.append(a)
        await asyncio.wait_for(a.work.running.wait(), LEASE + JITTERED_RETRY + 5)
        b = Replica(client, namespace, "replica-b", shared)
        replicas.append(b)
        await asyncio.sleep(LEASE + JITTERED_RETRY)  # b campaigns for longer than a lease: must not win
        assert not b.manager.is_leader and a.manager.is_leader

        # 1. The leader stops (no release): b takes over once a's last renewal is a lease old.
        stopped_at = time.monotonic()
        await a.stop()
        await eventually(lambda: b.work.running.is_set(), "standby takeover", LEASE + JITTERED_RETRY + 2)
        print(f"failover after stop: {time.monotonic() - stopped_at:.2f}s (lease {LEASE}s)")
        assert time.monotonic() - stopped_at <= LEASE + JITTERED_RETRY + 2
        lease = await client.get(LEASES, "failover-test", namespace)
        assert lease["spec"]["holderIdentity"] == "replica-b" and lease["spec"]["leaseTransitions"] == 1

        # 2. An intruder takes the lease: b steps down within the renew deadline, at once.
        c = Replica(client, namespace, "replica-c", shared)
        replicas.append(c)
        await steal_lease(client, namespace, "intruder")
        stolen_at = time.monotonic()
        with pytest.raises(LeaderElectionLost):
            await asyncio.wait_for(asyncio.shield(b.task), RENEW + RETRY + 5)
        lost_after = time.monotonic() - stolen_at
        print(f"leader stepped down {lost_after:.2f}s after the lease was taken (renew deadline {RENEW}s)")
        assert lost_after <= RENEW + RETRY + 1.0
        assert b.work.stopped.is_set() and not b.work.running.is_set()
        assert not b.manager.is_leader

        # 3. Nobody renews the intruder's lease: c takes it within a lease duration (+ retries) of b's loss.
        lost_at = time.monotonic()
        await eventually(
            lambda: c.work.running.is_set(), "takeover from intruder", LEASE + 2 * JITTERED_RETRY + 2
        )
        print(f"takeover from the intruder: {time.monotonic() - lost_at:.2f}s after the loss")
        assert time.monotonic() - lost_at <= LEASE + 2 * JITTERED_RETRY + 2
        lease = await client.get(LEASES, "failover-test", namespace)
        assert lease["spec"]["holderIdentity"] == "replica-c" and lease["spec"]["leaseTransitions"] == 2
    finally:
        for replica in replicas:
            await replica.stop()
    assert shared.violations == [], shared.violations


async def test_release_on_cancel_hands_over_within_a_retry(client: Client, namespace: str) -> None:
    shared = Exclusive()
    a = Replica(client, namespace, "quick-a", shared, release=True)
    b: Replica | None = None
    try:
        await asyncio.wait_for(a.work.running.wait(), LEASE + JITTERED_RETRY + 5)
        b = Replica(client, namespace, "quick-b", shared)
        await asyncio.sleep(RETRY)  # b has observed a's lease
        stopped_at = time.monotonic()
        await a.stop()
        lease = await client.get(LEASES, "failover-test", namespace)
        assert lease["spec"]["holderIdentity"] == "" and lease["spec"]["leaseDurationSeconds"] == 1
        await eventually(
            lambda: b is not None and b.work.running.is_set(), "takeover after release", JITTERED_RETRY + 2
        )
        print(f"takeover after a released lease: {time.monotonic() - stopped_at:.2f}s")
        assert time.monotonic() - stopped_at < LEASE, "a released lease is taken before it would expire"
    finally:
        await a.stop()
        if b is not None:
            await b.stop()
    assert shared.violations == []
