"""The benchmark's capped sources really cap every connection, and capping leaves the bytes alone; a
source that fails to start leaves no server process behind.

Only lower bounds on time are asserted: a cap can make a transfer slower than the machine, never
faster than the cap, so these cannot fail on a busy machine.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from localcache.testing.httpsource import HttpFileServer
from localcache.testing.s3server import S3Server

MB = 1_000_000
CAP = 20 * MB
SIZE = 8 * MB


async def timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        async with session.get(url, headers=headers or {}) as resp:
            assert resp.status in (200, 206), await resp.text()
            body = await resp.read()
        return time.perf_counter() - t0, body


async def test_http_source_caps_each_connection_and_serves_the_file(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    (tmp_path / "w.bin").write_bytes(data)
    async with HttpFileServer(tmp_path, rate=CAP) as web:
        (first, body), (second, _) = await asyncio.gather(
            timed_get(f"{web.url}/w.bin"), timed_get(f"{web.url}/w.bin")
        )
        assert body == data
        assert min(first, second) >= 0.75 * SIZE / CAP, (first, second)
        took, part = await timed_get(f"{web.url}/w.bin", {"Range": f"bytes={SIZE // 2}-"})
        assert part == data[SIZE // 2 :]
        assert took >= 0.75 * (SIZE // 2) / CAP


@pytest.mark.parametrize("capped", [True, False], ids=["capped-port", "open-port"])
async def test_s3_server_serves_one_bucket_on_a_capped_and_an_open_port(tmp_path: Path, capped: bool) -> None:
    data = os.urandom(SIZE)
    (tmp_path / "w.bin").write_bytes(data)
    async with S3Server(cap=CAP, bucket="models", uploads={"m/": tmp_path}) as s3:
        assert s3.url != s3.direct_url
        client = s3.client(direct=not capped)
        url = client.generate_presigned_url("get_object", Params={"Bucket": "models", "Key": "m/w.bin"})
        took, body = await timed_get(url)
        assert body == data
        if capped:
            assert took >= 0.75 * SIZE / CAP, took


def test_a_failed_s3_start_leaves_no_server_running(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    from localcache.testing import s3server

    spawned = []
    real = s3server.spawn_server

    def spy(args: list[str]) -> Any:
        proc, urls = real(args)
        spawned.append(proc)
        return proc, urls

    monkeypatch.setattr(s3server, "spawn_server", spy)
    with pytest.raises(ClientError, match="InvalidBucketName"):
        S3Server(bucket="b").start()  # too short for S3: create_bucket fails after moto started
    assert spawned and all(proc.poll() is not None for proc in spawned)
