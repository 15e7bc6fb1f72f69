"""The client's wire format against a scripted local HTTP server (exact paths, params, bodies)."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s
from prometheus_client import REGISTRY

from localcache.runtime import Client, Resource, errors
from localcache.runtime.resources import CONFIGMAPS, NODES

WIDGETS = Resource("example.com", "v1", "widgets", "Widget", True)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[tuple[int, Any]] = []
        self.stream_chunks: list[bytes] = []
        self.stream_pause: float = 0.0
        self.reply_pause: float = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "ctype": request.headers.get("Content-Type"),
                "auth": request.headers.get("Authorization"),
                "body": json.loads(body) if body else None,
            }
        )
        if request.query.get("watch") == "true":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for chunk in self.stream_chunks:
                await resp.write(chunk)
            if self.stream_pause:
                await asyncio.sleep(self.stream_pause)
            return resp
        if self.reply_pause:
            await asyncio.sleep(self.reply_pause)
        status, payload = self.replies.pop(0) if self.replies else (200, {"kind": "Thing"})
        return web.json_response(payload, status=status)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, Client]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    cfg.api_key = {"BearerToken": "tok"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    client = Client(k8s.ApiClient(cfg), owns_api_client=True, request_timeout=5)
    yield rec, client
    await client.close()
    await runner.cleanup()


def rest_requests(c: Client, code: str, method: str) -> float:
    host = c.host.split("://", 1)[1]
    labels = {"code": code, "method": method, "host": host}
    return REGISTRY.get_sample_value("rest_client_requests_total", labels) or 0.0


async def test_paths_params_and_auth(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    before = rest_requests(c, "200", "GET")
    await c.get(CONFIGMAPS, "a", "ns1")
    assert rest_requests(c, "200", "GET") == before + 1
    await c.get(NODES, "n1")
    await c.list(WIDGETS, None, label_selector="x=y", resource_version="0", limit=500, continue_="tok2")
    r = rec.requests
    assert r[0]["path"] == "/api/v1/namespaces/ns1/configmaps/a" and r[0]["auth"] == "Bearer tok"
    assert r[1]["path"] == "/api/v1/nodes/n1"
    assert r[2]["path"] == "/apis/example.com/v1/widgets"
    assert r[2]["query"] == {
        "labelSelector": "x=y",
        "resourceVersion": "0",
        "limit": "500",
        "continue": "tok2",
    }


async def test_namespace_required_for_namespaced(server: tuple[Recorder, Client]) -> None:
    _, c = server
    with pytest.raises(ValueError, match="namespace is required"):
        await c.get(CONFIGMAPS, "a")
    with pytest.raises(ValueError, match="cluster-scoped"):
        await c.get(NODES, "n", "ns")


async def test_writes(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns"}}
    await c.create(WIDGETS, obj)
    await c.update(WIDGETS, obj)
    await c.update_status(WIDGETS, obj)
    await c.patch(WIDGETS, "w", {"spec": {"a": 1}}, "ns")
    await c.patch(WIDGETS, "w", [{"op": "remove", "path": "/spec/a"}], "ns", patch_type="json")
    await c.patch(WIDGETS, "w", obj, "ns", patch_type="apply", field_manager="me", force=True)
    await c.delete(WIDGETS, "w", "ns", uid="u1", resource_version="7", propagation_policy="Foreground")
    m = [(x["method"], x["path"], x["ctype"]) for x in rec.requests]
    base = "/apis/example.com/v1/namespaces/ns/widgets"
    assert m[0] == ("POST", base, "application/json")
    assert m[1] == ("PUT", base + "/w", "application/json")
    assert m[2] == ("PUT", base + "/w/status", "application/json")
    assert m[3] == ("PATCH", base + "/w", "application/merge-patch+json")
    assert m[4] == ("PATCH", base + "/w", "application/json-patch+json")
    assert m[5] == ("PATCH", base + "/w", "application/apply-patch+yaml")
    assert rec.requests[5]["query"] == {"fieldManager": "me", "force": "true"}
    assert rec.requests[6]["body"]["preconditions"] == {"uid": "u1", "resourceVersion": "7"}
    assert rec.requests[6]["body"]["propagationPolicy"] == "Foreground"
    with pytest.raises(ValueError, match="field_manager"):
        await c.patch(WIDGETS, "w", obj, "ns", patch_type="apply")


async def test_errors_are_typed(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    rec.replies = [
        (404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "nope"}),
        (409, {"kind": "Status", "code": 409, "reason": "Conflict", "message": "stale"}),
        (404, {"kind": "Status", "code": 404, "reason": "NotFound"}),
    ]
    with pytest.raises(errors.NotFound, match="nope"):
        await c.get(CONFIGMAPS, "a", "ns")
    with pytest.raises(errors.Conflict):
        await c.update(CONFIGMAPS, {"metadata": {"name": "a", "namespace": "ns"}})
    assert await c.delete(CONFIGMAPS, "a", "ns", missing_ok=True) is None


async def test_watch_splits_lines_across_chunks_and_raises_gone(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    ev1 = json.dumps(
        {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "1"}}}
    ).encode()
    big = {"type": "MODIFIED", "object": {"metadata": {"name": "a"}, "data": {"x": "y" * 300_000}}}
    ev2 = json.dumps(big).encode()
    err = json.dumps(
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    ).encode()
    stream = ev1 + b"\n" + ev2 + b"\n" + err + b"\n"
    rec.stream_chunks = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    seen: list[str] = []
    with pytest.raises(errors.Gone):
        async with c.watch(CONFIGMAPS, "ns", resource_version="5", timeout_seconds=300) as w:
            async for etype, obj in w:
                seen.append(etype)
                if etype == "MODIFIED":
                    assert len(obj["data"]["x"]) == 300_000
    assert seen == ["ADDED", "MODIFIED"]
    q = rec.requests[-1]["query"]
    assert q == {
        "watch": "true",
        "resourceVersion": "5",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }


async def test_watch_idle_timeout_is_a_typed_timeout(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    rec.stream_chunks = [b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}\n']
    rec.stream_pause = 1.5
    got: list[str] = []
    with pytest.raises(errors.Timeout):
        async for etype, _ in c.watch(CONFIGMAPS, idle_timeout=0.3):
            got.append(etype)
    assert got == ["BOOKMARK"]


async def test_watch_ends_when_server_closes(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    rec.stream_chunks = [b'{"type":"ADDED","object":{"metadata":{"name":"x"}}}\n']
    events = [e async for e in c.watch(CONFIGMAPS)]
    assert events == [("ADDED", {"metadata": {"name": "x"}})]


async def test_connection_refused_is_connection_failed() -> None:
    cfg = k8s.Configuration(host="http://127.0.0.1:9")
    async with Client(k8s.ApiClient(cfg), owns_api_client=True, request_timeout=5) as c:
        with pytest.raises(errors.ConnectionFailed):
            await c.get(NODES, "x")
        with pytest.raises(errors.ConnectionFailed):
            async with c.watch(NODES):
                pass


async def test_request_timeout_is_a_typed_timeout(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    rec.reply_pause = 1.0
    with pytest.raises(errors.Timeout, match=r"no response within 0\.2s"):
        await c.request("GET", "/api/v1/nodes", request_timeout=0.2)


async def test_list_items_get_kind_and_api_version(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    rec.replies = [
        (
            200,
            {
                "kind": "WidgetList",
                "apiVersion": "example.com/v1",
                "metadata": {},
                "items": [{"metadata": {"name": "a"}}],
            },
        )
    ]
    page = await c.list(WIDGETS, "ns")
    assert page["items"][0]["kind"] == "Widget" and page["items"][0]["apiVersion"] == "example.com/v1"


async def test_discovery_is_cached_and_refreshed_on_miss(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    doc = {
        "resources": [
            {"name": "widgets", "kind": "Widget", "namespaced": True},
            {"name": "widgets/status", "kind": "Widget", "namespaced": True},
        ]
    }
    rec.replies = [(200, doc), (200, doc), (200, doc)]
    assert await c.resource_for("example.com/v1", "Widget") == WIDGETS
    assert await c.resource_for("example.com/v1", "Widget") == WIDGETS
    assert len(rec.requests) == 1, "cached"
    with pytest.raises(errors.NotFound):
        await c.resource_for("example.com/v1", "Gadget")
    assert len(rec.requests) == 2, "one refresh on a miss"


async def test_watch_batches_yield_events_before_an_error_then_raise(server: tuple[Recorder, Client]) -> None:
    rec, c = server
    lines = [
        b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}',
        b'{"type":"MODIFIED","object":{"metadata":{"name":"a"}}}',
        b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}',
        b'{"type":"ADDED","object":{"metadata":{"name":"never"}}}',
    ]
    rec.stream_chunks = [b"\n".join(lines) + b"\n"]
    got: list[list[str]] = []
    with pytest.raises(errors.Gone):
        async with c.watch(CONFIGMAPS) as w:
            async for batch in w.batches():
                got.append([t for t, _ in batch])
    assert got == [["ADDED", "MODIFIED"]]
    rec.stream_chunks = [lines[0] + b"\n{not json\n"]
    with pytest.raises(errors.ApiError, match="malformed"):
        async with c.watch(CONFIGMAPS) as w:
            async for _ in w.batches():
                pass


async def test_in_cluster_config_is_picked_when_running_in_a_pod(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kubernetes_asyncio.config import incluster_config

    from localcache.testing.certs import TinyCA

    token = tmp_path / "token"
    token.write_text("sa-token")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(TinyCA().cert_pem)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    async with await Client.from_config() as c:
        assert c.host == "https://10.0.0.1:443"
        assert (await c._headers())["authorization"] == "Bearer sa-token"
