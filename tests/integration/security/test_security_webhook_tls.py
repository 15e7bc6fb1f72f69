"""The admission webhook server speaks TLS only: plain HTTP to its port gets no admission answer, and a
client that does not trust the serving CA is refused. (What the API server needs is a CA bundle, never a
plain-text fallback.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from localcache.runtime.webhook import AdmissionRequest, AdmissionResponse, WebhookServer
from localcache.testing.certs import TinyCA

pytestmark = pytest.mark.timeout(60)

REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "default",
        "name": "p",
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
        "userInfo": {"username": "u"},
    },
}


async def _allow(req: AdmissionRequest) -> AdmissionResponse:
    return AdmissionResponse.allow()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[WebhookServer, TinyCA]]:
    ca = TinyCA("tls-only-test")
    pair = ca.serving(["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    srv = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path)
    srv.register("/validate", _allow)
    task = asyncio.create_task(srv.start())
    await asyncio.wait_for(srv.wait_started(), 10)
    yield srv, ca
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_https_with_the_ca_is_answered(server: tuple[WebhookServer, TinyCA]) -> None:
    srv, ca = server
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"https://127.0.0.1:{srv.port}/validate", json=REVIEW, ssl=ctx) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["response"]["uid"] == "u1" and body["response"]["allowed"] is True


async def test_plain_http_gets_no_admission_answer(server: tuple[WebhookServer, TinyCA]) -> None:
    srv, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    body = json.dumps(REVIEW).encode()
    writer.write(
        b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(65536), 10)
    except (ConnectionResetError, TimeoutError):
        answer = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert b"HTTP/1.1 200" not in answer
    assert b"AdmissionReview" not in answer and b'"allowed"' not in answer


async def test_a_client_not_trusting_the_ca_is_refused(server: tuple[WebhookServer, TinyCA]) -> None:
    srv, _ = server
    other = TinyCA("not-the-serving-ca")
    ctx = ssl.create_default_context(cadata=other.cert_pem.decode())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(f"https://127.0.0.1:{srv.port}/validate", json=REVIEW, ssl=ctx)
