"""Leader election in virtual time against an in-memory Lease store with fault injection.

Modelled on client-go's leaderelection_test.go: fast path vs slow path, conflicts, expiry judged by
local observation (not remote timestamps), takeover bookkeeping, loss, release on cancel, validation.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from localcache.runtime import errors
from localcache.runtime.clock import FakeClock
from localcache.runtime.leaderelection import (
    LeaderElectionConfig,
    LeaderElectionLost,
    LeaderElector,
    LeaseRecord,
)
from localcache.runtime.resources import LEASES, Resource

NS = "kube-system"


class FakeLeases:
    """Leases with resourceVersion checks, like the API server; ``fail`` queues errors per verb."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str | None, str], dict[str, Any]] = {}
        self.rv = 0
        self.calls: list[str] = []
        self.fail: dict[str, list[Exception]] = defaultdict(list)
        self.hang = False

    async def _enter(self, verb: str, resource: Resource) -> None:
        assert resource == LEASES
        self.calls.append(verb)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail[verb]:
            raise self.fail[verb].pop(0)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        await self._enter("get", resource)
        try:
            return copy.deepcopy(self.objects[(namespace, name)])
        except KeyError:
            raise errors.NotFound(f"leases {name!r} not found") from None

    async def create(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        await self._enter("create", resource)
        key = (namespace, obj["metadata"]["name"])
        if key in self.objects:
            raise errors.AlreadyExists("exists")
        assert "resourceVersion" not in obj["metadata"]
        self.objects[key] = self._stamp(obj)
        return copy.deepcopy(self.objects[key])

    async def update(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        await self._enter("update", resource)
        key = (namespace, obj["metadata"]["name"])
        if key not in self.objects:
            raise errors.NotFound("gone")
        if obj["metadata"].get("resourceVersion") != self.objects[key]["metadata"]["resourceVersion"]:
            raise errors.Conflict("the object has been modified")
        self.objects[key] = self._stamp(obj)
        return copy.deepcopy(self.objects[key])

    # test helpers
    def record(self, name: str = "lock") -> LeaseRecord:
        return LeaseRecord.from_lease(self.objects[(NS, name)])

    def put(self, spec: dict[str, Any], name: str = "lock") -> None:
        """Another party writes the lease (bumping its resourceVersion)."""
        obj = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        }
        self.objects[(NS, name)] = self._stamp(obj)


def config(identity: str, **kw: Any) -> LeaderElectionConfig:
    return LeaderElectionConfig(name=kw.pop("name", "lock"), namespace=NS, identity=identity, **kw)


def slowpath(name: str = "lock") -> float:
    return REGISTRY.get_sample_value("leader_election_slowpath_total", {"name": name}) or 0.0


def master(name: str) -> float | None:
    return REGISTRY.get_sample_value("leader_election_master_status", {"name": name})


class Campaign:
    """An elector running as a task, with the outcome kept for assertions."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector
        self.task = asyncio.create_task(elector.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeLeases:
    return FakeLeases()


# --- validation ------------------------------------------------------------------------------------
def test_defaults_are_controller_runtimes() -> None:
    cfg = LeaderElectionConfig(name="x", namespace="ns")
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15.0, 10.0, 2.0)
    assert cfg.release_on_cancel is False
    host, _, uid = cfg.identity.rpartition("_")
    assert host and len(uid) == 36
    assert LeaderElectionConfig(name="x", namespace="ns").identity != cfg.identity


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lease_duration": 10, "renew_deadline": 10}, "lease_duration .* greater than renew_deadline"),
        ({"renew_deadline": 2.4, "retry_period": 2}, r"renew_deadline .* greater than 1.2"),
        ({"retry_period": 0}, "retry_period must be greater than zero"),
        ({"lease_duration": -1}, "lease_duration must be greater than zero"),
        ({"identity": ""}, "identity is empty"),
        ({"namespace": ""}, "namespace is empty"),
    ],
)
def test_validation(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "lock", "namespace": NS, "identity": "a"} | kw
    with pytest.raises(ValueError, match=message):
        LeaderElectionConfig(**args)


def test_validation_boundary_just_above_jitter() -> None:
    LeaderElectionConfig(name="lock", namespace=NS, identity="a", renew_deadline=2.41, retry_period=2)


# --- acquire and renew -----------------------------------------------------------------------------
async def test_acquire_creates_lease_then_renews_on_the_fast_path(
    clock: FakeClock, store: FakeLeases
) -> None:
    c = Campaign(LeaderElector(store, config("a", name="fast"), clock=clock))
    try:
        await clock.settle()
        assert c.elector.is_leader and master("fast") == 1
        rec = store.record("fast")
        assert rec.holder_identity == "a" and rec.lease_duration_seconds == 15 and rec.lease_transitions == 0
        assert rec.acquire_time == rec.renew_time == "2026-01-01T00:00:00.000000Z"
        store.calls.clear()
        before = slowpath("fast")
        for _ in range(5):
            await clock.advance(2)
        assert store.calls == ["update"] * 5, "renewals use the optimistic update, no get"
        assert slowpath("fast") == before
        rec = store.record("fast")
        assert rec.renew_time == "2026-01-01T00:00:10.000000Z"
        assert rec.acquire_time == "2026-01-01T00:00:00.000000Z"
    finally:
        await c.stop()
    assert master("fast") == 0


async def test_fast_path_conflict_falls_back_to_get_and_update(clock: FakeClock, store: FakeLeases) -> None:
    c = Campaign(LeaderElector(store, config("a", name="slow"), clock=clock))
    try:
        await clock.settle()
        assert c.elector.is_leader
        # someone touches the lease (same holder) so the cached resourceVersion is stale
        store.put(store.objects[(NS, "slow")]["spec"], name="slow")
        store.calls.clear()
        before = slowpath("slow")
        await clock.advance(2)
        assert store.calls == ["update", "get", "update"]
        assert slowpath("slow") == before + 1
        assert c.elector.is_leader and store.record("slow").holder_identity == "a"
        assert store.record("slow").lease_transitions == 0, "renewing our own lease is not a transition"
    finally:
        await c.stop()


async def test_held_lease_is_not_taken_before_local_expiry(clock: FakeClock, store: FakeLeases) -> None:
    # The remote renewTime claims the lease expired a day ago: it must be ignored.
    day_ago = "2025-12-31T00:00:00.000000Z"
    store.put(
        {
            "holderIdentity": "other",
            "leaseDurationSeconds": 15,
            "leaseTransitions": 3,
            "acquireTime": day_ago,
            "renewTime": day_ago,
        }
    )
    c = Campaign(LeaderElector(store, config("b"), clock=clock, rng=random.Random(1)))
    try:
        await clock.settle()
        assert not c.elector.is_leader and c.elector.leader == "other"
        await clock.advance(14.9)
        assert not c.elector.is_leader, "taken before leaseDurationSeconds of local observation"
        assert store.record().holder_identity == "other"
        await clock.advance(4.5)  # past 15 s plus one jittered retry (at most 4.4 s)
        assert c.elector.is_leader
        rec = store.record()
        assert rec.holder_identity == "b" and rec.lease_transitions == 4
        assert rec.acquire_time is not None and rec.acquire_time.startswith("2026-01-01T00:00:1")
    finally:
        await c.stop()


async def test_a_renewing_holder_keeps_its_lease_forever(clock: FakeClock, store: FakeLeases) -> None:
    """Each change of the record restarts the local expiry clock, whatever its timestamps say."""
    store.put(
        {"holderIdentity": "other", "leaseDurationSeconds": 15, "renewTime": "1999-01-01T00:00:00.000000Z"}
    )
    c = Campaign(LeaderElector(store, config("b"), clock=clock, rng=random.Random(2)))
    try:
        for i in range(30):
            # the holder renews (renewTime changes, though it is decades old by the wall clock)
            store.put(
                {
                    "holderIdentity": "other",
                    "leaseDurationSeconds": 15,
                    "renewTime": f"1999-01-01T00:00:{i:02d}.000000Z",
                }
            )
            await clock.advance(2)
            assert not c.elector.is_leader
        assert store.record().holder_identity == "other"
        # once the holder stops renewing, the lease expires lease_duration after our last observation
        await clock.advance(15 + 4.4)
        assert c.elector.is_leader
    finally:
        await c.stop()


async def test_released_lease_is_taken_at_once(clock: FakeClock, store: FakeLeases) -> None:
    store.put({"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 7})
    c = Campaign(LeaderElector(store, config("b"), clock=clock))
    try:
        await clock.settle()
        assert c.elector.is_leader and store.record().lease_transitions == 8
    finally:
        await c.stop()


async def test_two_electors_never_lead_at_once(clock: FakeClock, store: FakeLeases) -> None:
    a = Campaign(LeaderElector(store, config("a"), clock=clock, rng=random.Random(3)))
    b = Campaign(LeaderElector(store, config("b"), clock=clock, rng=random.Random(4)))
    leaders: set[str] = set()
    try:
        for _ in range(200):
            await clock.advance(0.5)
            leading = [c.elector.identity for c in (a, b) if c.elector.is_leader]
            assert len(leading) <= 1
            leaders.update(leading)
        assert len(leaders) == 1, "without failures the first leader keeps the lease"
        assert store.record().lease_transitions == 0
    finally:
        await a.stop()
        await b.stop()


async def test_create_race_is_a_lost_attempt_not_a_crash(clock: FakeClock, store: FakeLeases) -> None:
    store.fail["create"].append(errors.AlreadyExists("someone was faster"))
    c = Campaign(LeaderElector(store, config("a"), clock=clock, rng=random.Random(5)))
    try:
        await clock.settle()
        assert not c.elector.is_leader and not c.task.done()
        await clock.advance(4.4)
        assert c.elector.is_leader
    finally:
        await c.stop()


# --- losing the lease ------------------------------------------------------------------------------
async def test_failed_renewals_lose_leadership_after_renew_deadline(
    clock: FakeClock, store: FakeLeases
) -> None:
    c = Campaign(LeaderElector(store, config("a", name="lose"), clock=clock))
    await clock.settle()
    assert c.elector.is_leader
    await clock.advance(2)  # one good renewal at t=2
    store.fail["update"].extend(errors.ServerError("etcd down") for _ in range(100))
    store.fail["get"].extend(errors.ServerError("etcd down") for _ in range(100))
    await clock.advance(2 + 9.9)  # the failing round starts at t=4; the deadline is t=14
    assert c.elector.is_leader and not c.task.done()
    await clock.advance(0.2)
    assert c.task.done()
    with pytest.raises(LeaderElectionLost, match="lose"):
        c.task.result()
    assert not c.elector.is_leader and master("lose") == 0


async def test_hanging_api_counts_against_renew_deadline(clock: FakeClock, store: FakeLeases) -> None:
    c = Campaign(LeaderElector(store, config("a", name="hang"), clock=clock))
    await clock.settle()
    assert c.elector.is_leader
    store.hang = True
    await clock.advance(2 + 10)
    assert c.task.done()
    assert isinstance(c.task.exception(), LeaderElectionLost)


async def test_a_stolen_lease_is_noticed_and_given_up(clock: FakeClock, store: FakeLeases) -> None:
    c = Campaign(LeaderElector(store, config("a"), clock=clock))
    await clock.settle()
    store.put({"holderIdentity": "thief", "leaseDurationSeconds": 15, "leaseTransitions": 1})
    await clock.advance(2 + 10)
    assert c.task.done() and isinstance(c.task.exception(), LeaderElectionLost)
    assert store.record().holder_identity == "thief"


# --- release ---------------------------------------------------------------------------------------
async def test_release_on_cancel_hands_over_quickly(clock: FakeClock, store: FakeLeases) -> None:
    a = Campaign(LeaderElector(store, config("a", release_on_cancel=True), clock=clock))
    await clock.settle()
    b = Campaign(LeaderElector(store, config("b"), clock=clock, rng=random.Random(6)))
    try:
        await clock.advance(3)
        assert a.elector.is_leader and not b.elector.is_leader
        await a.stop()
        rec = store.record()
        assert rec.holder_identity == "" and rec.lease_duration_seconds == 1 and rec.lease_transitions == 0
        await clock.advance(4.4)  # b's next jittered retry, well inside a lease duration
        assert b.elector.is_leader and store.record().lease_transitions == 1
    finally:
        await b.stop()


async def test_release_retries_on_conflict(clock: FakeClock, store: FakeLeases) -> None:
    a = Campaign(LeaderElector(store, config("a", release_on_cancel=True), clock=clock))
    await clock.settle()
    store.fail["update"].append(errors.Conflict("modified"))
    await a.stop()
    assert store.record().holder_identity == ""


async def test_no_release_by_default(clock: FakeClock, store: FakeLeases) -> None:
    a = Campaign(LeaderElector(store, config("a"), clock=clock))
    await clock.settle()
    await a.stop()
    assert store.record().holder_identity == "a"


async def test_release_does_not_touch_someone_elses_lease(clock: FakeClock, store: FakeLeases) -> None:
    store.put({"holderIdentity": "other", "leaseDurationSeconds": 15})
    a = Campaign(LeaderElector(store, config("a", release_on_cancel=True), clock=clock))
    await clock.settle()
    await a.stop()
    assert store.record().holder_identity == "other"


# --- watchdog --------------------------------------------------------------------------------------
async def test_healthz_watchdog_trips_only_for_a_wedged_leader(clock: FakeClock, store: FakeLeases) -> None:
    elector = LeaderElector(store, config("a"), clock=clock)
    c = Campaign(elector)
    try:
        await clock.settle()
        elector.check()
        store.hang = True
        # a hung renewal with a broken clock-based deadline would leave us "leading"; simulate that
        # by freezing the elector's renewal task and moving time past lease + tolerance
        c.task.cancel()
        await asyncio.gather(c.task, return_exceptions=True)
        elector.elected.set()
        await clock.advance(15 + 20 + 1)
        with pytest.raises(RuntimeError, match="not renewed"):
            elector.check()
    finally:
        elector.elected.clear()


async def test_a_malformed_lease_is_a_failed_attempt(clock: FakeClock, store: FakeLeases) -> None:
    store.put({"holderIdentity": "other", "leaseDurationSeconds": "fifteen"})
    c = Campaign(LeaderElector(store, config("a"), clock=clock, rng=random.Random(7)))
    try:
        await clock.advance(30)
        assert not c.task.done() and not c.elector.is_leader
        store.put({"holderIdentity": "", "leaseDurationSeconds": 1})
        await clock.advance(4.4)
        assert c.elector.is_leader
    finally:
        await c.stop()


# --- randomized safety -----------------------------------------------------------------------------
class Flaky:
    """One elector's view of the store: errors, slow requests and slow answers, at random."""

    def __init__(self, store: FakeLeases, rng: random.Random, clock: FakeClock) -> None:
        self.store, self.rng, self.clock = store, rng, clock

    async def _call(self, apply: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.15:
            raise errors.ServerError("injected failure")
        if r < 0.25:  # a slow request: the server applies it late (or never, if the caller gives up)
            await self.clock.sleep(self.rng.uniform(0, 12))
            return await apply()
        if r < 0.35:  # a slow answer: applied at once, the caller hears of it late
            result = await apply()
            await self.clock.sleep(self.rng.uniform(0, 12))
            return result
        return await apply()

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self._call(lambda: self.store.get(resource, name, namespace))

    async def create(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return await self._call(lambda: self.store.create(resource, obj, namespace))

    async def update(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return await self._call(lambda: self.store.update(resource, obj, namespace))


@pytest.mark.parametrize("seed", range(int(os.environ.get("LEADER_CHAOS_SEEDS", "8"))))
async def test_never_two_leaders_under_random_faults(seed: int) -> None:
    """Three electors, flaky API, leaders crashing at random: at no instant do two believe they lead."""
    rng = random.Random(seed)
    clock, store = FakeClock(), FakeLeases()
    counter = itertools.count()

    def campaign() -> Campaign:
        n = next(counter)
        api = Flaky(store, random.Random(seed * 1000 + n), clock)
        return Campaign(LeaderElector(api, config(f"e{n}", name=f"chaos{seed}"), clock=clock,
                                      rng=random.Random(seed * 7 + n)))  # fmt: skip

    campaigns = [campaign() for _ in range(3)]
    leaders_seen: set[str] = set()
    try:
        for _ in range(600):  # 150 s of virtual time
            await clock.advance(0.25)
            leading = [c.elector.identity for c in campaigns if c.elector.is_leader]
            assert len(leading) <= 1, f"two leaders at once: {leading}"
            leaders_seen.update(leading)
            for c in list(campaigns):
                if c.task.done():  # lost its lease: the process would exit and restart
                    campaigns.remove(c)
                    campaigns.append(campaign())
            if leading and rng.random() < 0.02:  # the leader crashes without releasing
                victim = next(c for c in campaigns if c.elector.is_leader)
                await victim.stop()
                campaigns.remove(victim)
                campaigns.append(campaign())
        assert leaders_seen, "nobody ever led"
    finally:
        for c in campaigns:
            await c.stop()


class Scripted:
    """A store proxy whose next update is answered ``answer_delay`` seconds late, after which every
    call fails (the leader's API connection went bad right after that renewal was applied)."""

    def __init__(self, store: FakeLeases, clock: FakeClock) -> None:
        self.store, self.clock = store, clock
        self.answer_delay = 0.0
        self.broken = False

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.broken:
            raise errors.ConnectionFailed("connection reset")
        return await self.store.get(resource, name, namespace)

    async def create(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.store.create(resource, obj, namespace)

    async def update(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        if self.broken:
            raise errors.ConnectionFailed("connection reset")
        result = await self.store.update(resource, obj, namespace)
        if self.answer_delay:
            delay, self.answer_delay = self.answer_delay, 0.0
            self.broken = True
            await self.clock.sleep(delay)
        return result


@pytest.mark.parametrize("seed", range(6))
async def test_a_slow_answer_does_not_stretch_leadership(
    clock: FakeClock, store: FakeLeases, seed: int
) -> None:
    """The renewal the standby sees at t=2 is answered at t=11.5: the leader must count its lease from
    t=2 (client-go counts from the answer, and would still lead when the standby takes over)."""
    a_api, b_api = Scripted(store, clock), Scripted(store, clock)
    a = Campaign(LeaderElector(a_api, config("a", name=f"slow{seed}"), clock=clock))
    await clock.settle()
    assert a.elector.is_leader
    b = Campaign(LeaderElector(b_api, config("b", name=f"slow{seed}"), clock=clock, rng=random.Random(seed)))
    a_api.answer_delay = 9.5
    try:
        for _ in range(400):
            await clock.advance(0.1)
            assert not (a.elector.is_leader and b.elector.is_leader), (
                f"both lead at t={clock.monotonic() - 1000:.1f}"
            )
        assert b.elector.is_leader and not a.elector.is_leader
    finally:
        await a.stop()
        await b.stop()
