"""Probe and metrics endpoints, bind-address parsing and the event-loop lag monitor."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from localcache.runtime import errors
from localcache.runtime.clock import FakeClock
from localcache.runtime.httpserver import (
    SUBJECT_ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    Checks,
    HTTPServer,
    KubernetesAuth,
    parse_bind_address,
    ping,
)
from localcache.runtime.looplag import LoopLagMonitor
from localcache.runtime.resources import Resource
from localcache.runtime.webhook import CertWatcher
from localcache.testing.certs import TinyCA


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        (":8080", (None, 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9", ("::1", 9)),
        ("0", None),
        ("", None),
    ],
)
def test_parse_bind_address(address: str, parsed: tuple[str | None, int] | None) -> None:
    assert parse_bind_address(address) == parsed


@pytest.mark.parametrize("address", ["8080", "host:port", ":99999"])
def test_parse_bind_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match="bind address"):
        parse_bind_address(address)


def test_check_names_are_unique_and_valid() -> None:
    checks = Checks("readyz")
    checks.add("ping", ping)
    with pytest.raises(ValueError, match="already registered"):
        checks.add("ping", ping)
    with pytest.raises(ValueError, match="check name"):
        checks.add("bad name", ping)


class Served:
    def __init__(self, server: HTTPServer, ready: dict[str, bool]) -> None:
        self.server = server
        self.ready = ready

    async def get(self, path: str) -> tuple[int, str, str]:
        async with aiohttp.ClientSession() as session, session.get(self.server.url + path) as resp:
            return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    ready = {"cache": False}

    async def cache_synced() -> bool:
        return ready["cache"]

    def broken() -> None:
        raise RuntimeError("disk on fire")

    healthz, readyz = Checks("healthz"), Checks("readyz", check_timeout=0.2)
    healthz.add("ping", ping)
    readyz.add("informer-sync", cache_synced)
    readyz.add("other", lambda: None)
    healthz.add("broken", broken)

    async def hangs() -> None:
        await asyncio.Event().wait()

    readyz.add("hangs", hangs)
    server = HTTPServer("127.0.0.1:0", metrics=True, healthz=healthz, readyz=readyz)
    task = asyncio.create_task(server.start())
    await asyncio.wait_for(server.wait_started(), 10)
    try:
        yield Served(server, ready)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_readyz_follows_its_checks(served: Served) -> None:
    status, body, _ = await served.get("/readyz?exclude=hangs")
    assert status == 500
    assert "[-]informer-sync failed: check returned false" in body and "[+]other ok" in body
    served.ready["cache"] = True
    status, body, _ = await served.get("/readyz?exclude=hangs")
    assert (status, body) == (200, "ok")
    status, body, _ = await served.get("/readyz?exclude=hangs&verbose")
    assert status == 200 and "[+]informer-sync ok" in body and "[+]hangs excluded: ok" in body


async def test_a_hanging_check_times_out(served: Served) -> None:
    status, body, _ = await served.get("/readyz/hangs")
    assert status == 500 and "[-]hangs failed: timed out" in body


async def test_single_check_and_unknown_check(served: Served) -> None:
    status, body, _ = await served.get("/healthz/ping")
    assert (status, body) == (200, "ok")
    status, body, _ = await served.get("/healthz/broken")
    assert status == 500 and "[-]broken failed: disk on fire" in body
    status, _, _ = await served.get("/healthz/nope")
    assert status == 404


async def test_metrics_serve_the_default_registry(served: Served) -> None:
    status, body, ctype = await served.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "process_resident_memory_bytes" in body
    assert "python_info" in body
    assert "# TYPE asyncio_event_loop_lag_seconds gauge" in body


async def test_lag_monitor_measures_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval=0.05, threshold=0.2)
    task = asyncio.create_task(monitor.start())
    try:
        await asyncio.wait_for(monitor.next_tick(), 10)
        monitor.check()
        ticks = monitor.ticks
        time.sleep(0.5)  # noqa: ASYNC251 - the stimulus: block the loop as a synchronous call would
        lag = await asyncio.wait_for(monitor.next_tick(), 10)
        assert monitor.ticks == ticks + 1, "the first wake-up after the block is the late one"
        assert lag >= 0.4 and monitor.max_lag >= 0.4
        with pytest.raises(RuntimeError, match="event loop lag"):
            monitor.check()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- secure metrics --------------------------------------------------------------------------------
class FakeReviews:
    """TokenReview/SubjectAccessReview answers: tokens map to users, users to allowed paths."""

    def __init__(self) -> None:
        self.users = {"good-token": "alice", "nosy-token": "mallory"}
        self.allowed = {("alice", "/metrics")}
        self.calls: list[str] = []
        self.fail = False

    async def create(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(resource.kind)
        if self.fail:
            raise errors.ServerError("etcd is down")
        if resource == TOKEN_REVIEWS:
            user = self.users.get(obj["spec"]["token"])
            status = {"authenticated": True, "user": {"username": user, "groups": ["g"]}} if user else {}
            return {"status": status}
        assert resource == SUBJECT_ACCESS_REVIEWS
        spec = obj["spec"]
        assert spec["nonResourceAttributes"]["verb"] == "get" and spec["groups"] == ["g"]
        return {"status": {"allowed": (spec["user"], spec["nonResourceAttributes"]["path"]) in self.allowed}}


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[tuple[HTTPServer, FakeReviews, FakeClock, TinyCA]]:
    ca = TinyCA()
    ca.serving(["127.0.0.1"]).write(tmp_path, "tls")
    reviews, clock = FakeReviews(), FakeClock()
    server = HTTPServer(
        "127.0.0.1:0",
        metrics=True,
        certs=CertWatcher(tmp_path / "tls.crt", tmp_path / "tls.key", clock=clock),
        metrics_auth=KubernetesAuth(reviews, cache_ttl=10, clock=clock),
    )
    task = asyncio.create_task(server.start())
    await asyncio.wait_for(server.wait_started(), 10)
    try:
        yield server, reviews, clock, ca
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def scrape(server: HTTPServer, ca: TinyCA, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/metrics", headers=headers, ssl=context) as resp,
    ):
        return resp.status, await resp.text()


async def test_secure_metrics_authn_and_authz(
    secure: tuple[HTTPServer, FakeReviews, FakeClock, TinyCA],
) -> None:
    server, reviews, clock, ca = secure
    assert server.url.startswith("https://")
    assert (await scrape(server, ca, None))[0] == 401
    assert (await scrape(server, ca, "forged"))[0] == 401
    status, body = await scrape(server, ca, "nosy-token")
    assert status == 403 and "mallory" in body
    status, body = await scrape(server, ca, "good-token")
    assert status == 200 and "process_resident_memory_bytes" in body
    calls = len(reviews.calls)
    assert (await scrape(server, ca, "good-token"))[0] == 200
    assert len(reviews.calls) == calls, "a decision is cached for its TTL"
    await clock.advance(11)
    reviews.allowed.clear()  # RBAC revoked: seen once the cached decision expires
    assert (await scrape(server, ca, "good-token"))[0] == 403


async def test_failed_reviews_are_500_and_not_cached(
    secure: tuple[HTTPServer, FakeReviews, FakeClock, TinyCA],
) -> None:
    server, reviews, _, ca = secure
    reviews.fail = True
    status, body = await scrape(server, ca, "good-token")
    assert status == 500 and "authorization check failed" in body
    reviews.fail = False
    assert (await scrape(server, ca, "good-token"))[0] == 200
