"""The fault proxy bends the wire as asked, and only as asked, in front of a real HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from localcache.testing.faultproxy import Corrupt, Drop, FaultProxy, Stall, Status, Truncate, WatchError
from localcache.testing.wait import eventually

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def blob(_: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/octet-stream")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "body": (await request.read()).decode()})

    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_route("*", "/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.fixture
async def proxy(upstream: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(upstream, seed=1) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: aiohttp silently retries a GET whose reused connection drops.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_forwards_unchanged_without_rules(proxy: FaultProxy, http: aiohttp.ClientSession) -> None:
    async with http.get(proxy.url + "/blob") as resp:
        assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(PAYLOAD).digest()
    async with http.post(proxy.url + "/echo", data=b"hello") as resp:
        assert await resp.json() == {"method": "POST", "body": "hello"}
    assert sum(proxy.injected.values()) == 0


async def test_status_rule_applies_the_given_number_of_times(
    proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    proxy.add(Status(429, retry_after=3), path="^/echo$", times=2)
    codes = []
    for _ in range(3):
        async with http.get(proxy.url + "/echo") as resp:
            codes.append(resp.status)
            if resp.status == 429:
                assert resp.headers["Retry-After"] == "3"
                assert (await resp.json())["reason"] == "TooManyRequests"
    assert codes == [429, 429, 200]
    assert proxy.injected["status"] == 2


async def test_truncate_cuts_the_body(proxy: FaultProxy, http: aiohttp.ClientSession) -> None:
    proxy.add(Truncate(after_bytes=1000), path="/blob")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(proxy.url + "/blob") as resp:
            await resp.read()


async def test_corrupt_flips_exactly_one_byte(proxy: FaultProxy, http: aiohttp.ClientSession) -> None:
    proxy.add(Corrupt(offset=70_000), path="/blob")
    async with http.get(proxy.url + "/blob") as resp:
        body = await resp.read()
    assert len(body) == len(PAYLOAD)
    assert [i for i in range(len(body)) if body[i] != PAYLOAD[i]] == [70_000]


async def test_watch_error_only_for_watch_requests(proxy: FaultProxy, http: aiohttp.ClientSession) -> None:
    proxy.add(WatchError(410), watch=True, times=None)
    async with http.get(proxy.url + "/echo") as resp:
        assert resp.status == 200 and (await resp.json())["method"] == "GET"
    async with http.get(proxy.url + "/echo?watch=true") as resp:
        line = (await resp.read()).decode().strip()
    assert '"type": "ERROR"' in line and '"code": 410' in line


async def test_drop_and_stall(proxy: FaultProxy, http: aiohttp.ClientSession) -> None:
    drop = proxy.add(Drop(), path="/echo", times=None)  # aiohttp retries a dropped idempotent request once
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.get(proxy.url + "/echo") as resp:
            await resp.read()
    assert drop.hits == 2
    proxy.rules.remove(drop)
    proxy.add(Stall(30), path="/echo", times=None)
    request = asyncio.create_task(http.get(proxy.url + "/echo"))

    async def in_flight() -> bool:
        return len(proxy._open) == 1

    await eventually(in_flight, within=5)
    dropped = await proxy.drop_connections()
    await eventually(in_flight, within=5)  # the client's own retry arrives and stalls again
    dropped += await proxy.drop_connections()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await request
    assert dropped == 2
