"""An HTTP(S) reverse proxy with switchable faults, placed between our processes and a real server.

Tests point a component at the proxy instead of the kube-apiserver or a model source, then make the
network misbehave on purpose: drop every open connection (watches end mid-stream), stall, add
latency, answer with a Kubernetes Status (409, 410, 429 with Retry-After, 500, 503), inject a watch
``ERROR`` event carrying 410, cut a body short or flip a byte in it. The real server behind it stays
real; only the wire is bent. Every fault injected is counted, so a chaos run can print what it did.

In front of a kube-apiserver the proxy terminates TLS with a certificate from the cluster's CA and
requires client certificates from that CA. It forwards with the admin identity and passes the caller's
identity on as ``Impersonate-User``/``Impersonate-Group`` headers, so RBAC still sees the caller.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from localcache.testing.certs import KeyPair, TinyCA

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
}


# ---- faults ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """Answer with this HTTP status and a Kubernetes Status body instead of asking the server."""

    code: int
    reason: str = ""
    retry_after: int | None = None


@dataclass(frozen=True)
class WatchError:
    """Open the watch as the server would (200), send one ERROR event with this code, then close."""

    code: int = 410


@dataclass(frozen=True)
class Stall:
    """Hold the response for this long before forwarding (or for ever, within the request timeout)."""

    seconds: float


@dataclass(frozen=True)
class Truncate:
    """Forward the server's answer but close the connection after this many body bytes."""

    after_bytes: int


@dataclass(frozen=True)
class Corrupt:
    """Forward the server's answer with the byte at this body offset flipped."""

    offset: int = 0


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Action = Status | WatchError | Stall | Truncate | Corrupt | Drop


@dataclass
class Rule:
    """A fault applied to matching requests, ``times`` times (None: until removed), with a probability."""

    action: Action
    method: str | None = None
    path: str | None = None  # a regular expression searched in the request path
    watch: bool | None = None  # match only watch requests (True) or only non-watch ones (False)
    times: int | None = 1
    probability: float = 1.0
    hits: int = 0

    def matches(self, request: web.Request, rng: random.Random) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and request.method != self.method.upper():
            return False
        if self.path and not re.search(self.path, request.path):
            return False
        if self.watch is not None and _is_watch(request) != self.watch:
            return False
        return rng.random() < self.probability


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1")


def _status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


# ---- the proxy ---------------------------------------------------------------------------------
@dataclass
class ProxyTLS:
    """TLS in front of a kube-apiserver: our serving cert, the CA clients use, the admin identity."""

    ca: TinyCA
    admin: KeyPair
    workdir: Path


@dataclass
class FaultProxy:
    """A reverse proxy to ``upstream`` with faults switched on and off by the test.

    ``async with FaultProxy(upstream) as proxy:`` then use ``proxy.url``.
    """

    upstream: str
    tls: ProxyTLS | None = None
    seed: int = 0
    latency: float = 0.0
    rules: list[Rule] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _runner: web.AppRunner | None = None
    _sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    _open: dict[asyncio.Task[Any], web.Request] = field(default_factory=dict)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # ---- switching faults ----------------------------------------------------------------------
    def add(self, action: Action, **match: Any) -> Rule:
        rule = Rule(action, **match)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self.latency = 0.0

    async def drop_connections(self) -> int:
        """Cut every request in flight (watches included) as a network blip would; returns how many."""
        tasks = [t for t in self._open if not t.done()]
        for task in tasks:
            _abort(self._open[task])
            task.cancel()
        self.injected["drop_connections"] += len(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self, port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        ssl_context = self._server_ssl() if self.tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{bound}"
        return self.url

    async def stop(self) -> None:
        await self.drop_connections()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _server_ssl(self) -> ssl.SSLContext:
        assert self.tls is not None
        cert, key = self.tls.ca.serving(["127.0.0.1", "localhost"]).write(self.tls.workdir, "faultproxy")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=self.tls.ca.cert_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # bearer-token callers present no certificate
        return context

    def _session(self, with_admin_cert: bool) -> aiohttp.ClientSession:
        kind = "admin" if with_admin_cert else "plain"
        if kind not in self._sessions:
            ssl_arg: ssl.SSLContext | bool = False
            if self.tls is not None:
                context = ssl.create_default_context(cadata=self.tls.ca.cert_pem.decode())
                if with_admin_cert:
                    cert, key = self.tls.admin.write(self.tls.workdir, "faultproxy-admin")
                    context.load_cert_chain(cert, key)
                ssl_arg = context
            connector = aiohttp.TCPConnector(ssl=ssl_arg, limit=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            self._sessions[kind] = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )
        return self._sessions[kind]

    # ---- one request ---------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = request
        try:
            return await self._serve(request)
        finally:
            self._open.pop(task, None)

    def _pick(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if rule.matches(request, self._rng):
                rule.hits += 1
                self.injected[type(rule.action).__name__.lower()] += 1
                return rule
        return None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        rule = self._pick(request)
        action = rule.action if rule else None
        if isinstance(action, Drop):
            _abort(request)
            return web.Response(status=502)  # never reaches the caller: the connection is gone
        if isinstance(action, Status):
            reason = action.reason or _REASONS.get(action.code, "InternalError")
            headers = {"Retry-After": str(action.retry_after)} if action.retry_after is not None else {}
            body = _status_body(action.code, reason, f"injected by faultproxy: {reason}")
            return web.json_response(body, status=action.code, headers=headers)
        if isinstance(action, WatchError):
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            reason = _REASONS.get(action.code, "InternalError")
            message = "too old resource version" if action.code == 410 else f"injected {reason}"
            event = {"type": "ERROR", "object": _status_body(action.code, reason, message)}
            await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        if isinstance(action, Stall):
            await asyncio.sleep(action.seconds)
        return await self._forward(request, action)

    def _upstream_headers(self, request: web.Request) -> tuple[CIMultiDict[str], bool]:
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"
        )
        if self.tls is None or request.transport is None:
            return headers, False
        peercert = request.transport.get_extra_info("peercert")
        if not peercert:
            return headers, False  # a bearer token goes through as it came
        subject = [attr for rdn in peercert.get("subject", ()) for attr in rdn]
        user = next((v for k, v in subject if k == "commonName"), "")
        groups = [v for k, v in subject if k == "organizationName"]
        headers.popall("Authorization", None)
        headers["Impersonate-User"] = user
        for group in groups:
            headers.add("Impersonate-Group", group)
        return headers, True

    async def _forward(self, request: web.Request, action: Action | None) -> web.StreamResponse:
        headers, as_admin = self._upstream_headers(request)
        body = await request.read() if request.can_read_body else None
        session = self._session(with_admin_cert=as_admin)
        async with session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            if upstream.headers.get("Content-Encoding"):
                response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            await response.prepare(request)
            mutate = _body_mutator(action)
            sent = 0
            async for chunk in upstream.content.iter_any():
                chunk, stop = mutate(sent, chunk)
                await response.write(chunk)
                sent += len(chunk)
                if stop:
                    _abort(request)
                    return response
            await response.write_eof()
            return response


def _abort(request: web.Request) -> None:
    """Reset the client's connection at once, unflushed bytes and all."""
    transport = request.transport or (request.protocol.transport if request.protocol else None)
    if transport is not None:
        transport.abort()


def _body_mutator(action: Action | None) -> Callable[[int, bytes], tuple[bytes, bool]]:
    """Returns f(bytes_sent_so_far, chunk) -> (chunk to send, close after it)."""
    if isinstance(action, Truncate):
        limit = action.after_bytes

        def truncate(sent: int, chunk: bytes) -> tuple[bytes, bool]:
            room = limit - sent
            return (chunk[:room], True) if len(chunk) >= room else (chunk, False)

        return truncate
    if isinstance(action, Corrupt):
        offset = action.offset

        def corrupt(sent: int, chunk: bytes) -> tuple[bytes, bool]:
            if sent <= offset < sent + len(chunk):
                i = offset - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            return chunk, False

        return corrupt
    return lambda _sent, chunk: (chunk, False)
