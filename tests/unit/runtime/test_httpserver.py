"""Probe and metrics endpoints, bind-address parsing and the event-loop lag monitor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from localcache.runtime.httpserver import Checks, HTTPServer, parse_bind_address, ping
from localcache.runtime.looplag import LoopLagMonitor


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
