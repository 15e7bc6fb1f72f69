"""Admission webhook server: AdmissionReview over TLS, with hot certificate reload.

The API server calls admission webhooks synchronously on every matching write, so this server must
never crash and never hang: a handler exception becomes a denial with code 500 and a message naming
the webhook, and a malformed review gets a 400. Only TLS is served, because the API server refuses
plain HTTP webhooks.

Certificates are read from files (``tls.crt``/``tls.key`` in ``cert_dir``, as controller-runtime and
cert-manager lay them out) and re-read when their mtime or size changes. New connections get the new
certificate through an SNI callback that swaps the per-connection ``SSLContext``; the listening
socket is never closed, so a rotation drops no request. A half-written pair (key and cert not
matching yet) is ignored and retried at the next poll, keeping the old pair in service.

Mutating handlers may return either JSON-patch operations or the mutated object; in the second case
the server computes the patch with :func:`json_patch`, a small RFC 6902 diff (keys escaped as RFC
6901 requires: ``~`` → ``~0``, ``/`` → ``~1``).

Metrics (controller-runtime names): ``controller_runtime_webhook_requests_total{webhook,code}``
(``code`` is the HTTP status), ``controller_runtime_webhook_latency_seconds{webhook}``,
``controller_runtime_webhook_requests_in_flight{webhook}``, ``certwatcher_read_certificate_total``,
``certwatcher_read_certificate_errors_total``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from localcache.runtime.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "AdmissionRequest",
    "AdmissionResponse",
    "CertWatcher",
    "Handler",
    "WebhookServer",
    "escape_pointer",
    "json_patch",
]

log = logging.getLogger(__name__)

webhook_requests_total = Counter(
    "controller_runtime_webhook_requests_total",
    "Total number of admission requests by HTTP status code.",
    ["webhook", "code"],
)
webhook_latency_seconds = Histogram(
    "controller_runtime_webhook_latency_seconds",
    "Histogram of the latency of processing admission requests",
    ["webhook"],
)
webhook_requests_in_flight = Gauge(
    "controller_runtime_webhook_requests_in_flight",
    "Current number of admission requests being served.",
    ["webhook"],
)
cert_read_total = Counter("certwatcher_read_certificate_total", "Total number of certificate reads")
cert_read_errors_total = Counter(
    "certwatcher_read_certificate_errors_total", "Total number of certificate read errors"
)


# --- JSON patch ------------------------------------------------------------------------------------
def escape_pointer(token: str) -> str:
    """One JSON-pointer reference token (RFC 6901): ``~`` first, then ``/``."""
    return token.replace("~", "~0").replace("/", "~1")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike ``==`` in Python, ``true`` is not ``1`` and ``1`` is not ``"1"``."""
    if type(a) is not type(b):
        if isinstance(a, bool) or isinstance(b, bool):
            return False
        if isinstance(a, int | float) and isinstance(b, int | float):
            return a == b
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations that turn ``old`` into ``new``.

    Objects are diffed key by key, arrays element by element over their common length, then the tail
    is appended or removed from the end (highest index first, so earlier indices stay valid). The
    result is correct rather than minimal: an insertion at the front of a list becomes replaces.
    """
    if _same(old, new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{escape_pointer(key)}"})
        for key, value in new.items():
            child = f"{path}/{escape_pointer(key)}"
            if key not in old:
                ops.append({"op": "add", "path": child, "value": value})
            else:
                ops.extend(json_patch(old[key], value, child))
        return ops
    if isinstance(old, list) and isinstance(new, list):
        ops = []
        common = min(len(old), len(new))
        for i in range(common):
            ops.extend(json_patch(old[i], new[i], f"{path}/{i}"))
        for i in range(common, len(new)):
            ops.append({"op": "add", "path": f"{path}/{i}", "value": new[i]})
        for i in range(len(old) - 1, common - 1, -1):
            ops.append({"op": "remove", "path": f"{path}/{i}"})
        return ops
    return [{"op": "replace", "path": path, "value": new}]


# --- request / response ----------------------------------------------------------------------------
class AdmissionRequest(dict[str, Any]):
    """The ``request`` of an AdmissionReview: the raw dict, plus attribute access to its fields."""

    @property
    def uid(self) -> str:
        return str(self.get("uid", ""))

    @property
    def kind(self) -> dict[str, str]:
        return self.get("kind") or {}

    @property
    def resource(self) -> dict[str, str]:
        return self.get("resource") or {}

    @property
    def sub_resource(self) -> str:
        return str(self.get("subResource") or "")

    @property
    def operation(self) -> str:
        return str(self.get("operation", ""))

    @property
    def name(self) -> str:
        return str(self.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.get("namespace") or "")

    @property
    def object(self) -> dict[str, Any] | None:
        return self.get("object")

    @property
    def old_object(self) -> dict[str, Any] | None:
        return self.get("oldObject")

    @property
    def user_info(self) -> dict[str, Any]:
        return self.get("userInfo") or {}

    @property
    def dry_run(self) -> bool:
        return bool(self.get("dryRun"))


@dataclass
class AdmissionResponse:
    """What a handler decides. Build with :meth:`allow`, :meth:`deny`, :meth:`patch_ops`, :meth:`mutate`.

    ``patch`` (explicit operations) and ``patched`` (the whole mutated object, diffed against the
    request's object by the server) are mutually exclusive.
    """

    allowed: bool
    code: int = 200
    message: str = ""
    reason: str = ""
    patch: list[dict[str, Any]] | None = None
    patched: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def allow(cls, message: str = "", warnings: list[str] | None = None) -> AdmissionResponse:
        return cls(True, 200, message, warnings=list(warnings or []))

    @classmethod
    def deny(cls, message: str, code: int = 403, reason: str = "Forbidden") -> AdmissionResponse:
        return cls(False, code, message, reason)

    @classmethod
    def errored(cls, code: int, message: str) -> AdmissionResponse:
        return cls(False, code, message, "InternalError" if code >= 500 else "BadRequest")

    @classmethod
    def patch_ops(cls, ops: list[dict[str, Any]], message: str = "") -> AdmissionResponse:
        return cls(True, 200, message, patch=list(ops))

    @classmethod
    def mutate(cls, obj: dict[str, Any], message: str = "") -> AdmissionResponse:
        return cls(True, 200, message, patched=obj)


Handler = Callable[[AdmissionRequest], Awaitable[AdmissionResponse]]


def review_response(
    uid: str, resp: AdmissionResponse, original: dict[str, Any] | None, api_version: str
) -> dict[str, Any]:
    """The AdmissionReview body the API server expects: same uid, base64 JSONPatch, a Status result."""
    status: dict[str, Any] = {"code": resp.code}
    if resp.message:
        status["message"] = resp.message
    if resp.reason:
        status["reason"] = resp.reason
    if not resp.allowed:
        status["status"] = "Failure"
    out: dict[str, Any] = {"uid": uid, "allowed": resp.allowed, "status": status}
    if resp.warnings:
        out["warnings"] = list(resp.warnings)
    ops = resp.patch
    if ops is None and resp.patched is not None:
        ops = json_patch(original if original is not None else {}, resp.patched)
    if resp.allowed and ops:
        out["patchType"] = "JSONPatch"
        out["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": out}


# --- certificates ----------------------------------------------------------------------------------
class CertWatcher:
    """Holds the serving ``SSLContext`` built from a cert/key pair and rebuilds it when the files change."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        poll_interval: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.poll_interval = poll_interval
        self._clock = clock
        self._stamp: tuple[int, int, int, int] | None = None
        self._current: ssl.SSLContext | None = None
        self.reloads = 0

    def _file_stamp(self) -> tuple[int, int, int, int]:
        c, k = self.cert_file.stat(), self.key_file.stat()
        return (c.st_mtime_ns, c.st_size, k.st_mtime_ns, k.st_size)

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def load(self) -> bool:
        """Rebuild the context if the files changed; True when a new pair went into service."""
        try:
            stamp = self._file_stamp()
        except OSError as exc:
            if self._current is None:
                raise FileNotFoundError(f"webhook certificate: cannot stat {exc.filename}: {exc}") from exc
            log.warning(
                "webhook certificate files unreadable; keeping the current pair", extra={"error": str(exc)}
            )
            return False
        if stamp == self._stamp:
            return False
        cert_read_total.inc()
        ctx = self._new_context()
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            cert_read_errors_total.inc()
            if self._current is None:
                raise ValueError(
                    f"webhook certificate {self.cert_file} / key {self.key_file} cannot be loaded: {exc}"
                ) from exc
            log.warning("webhook certificate reload failed; keeping the current pair",
                        extra={"cert_file": str(self.cert_file), "error": str(exc)})  # fmt: skip
            return False
        self._stamp = stamp
        self._current = ctx
        self.reloads += 1
        log.info(
            "webhook certificate loaded", extra={"cert_file": str(self.cert_file), "reloads": self.reloads}
        )
        return True

    def server_context(self) -> ssl.SSLContext:
        """The listening context: its SNI callback hands every new connection the newest pair."""
        if self._current is None:
            self.load()
        base = self._new_context()
        base.load_cert_chain(self.cert_file, self.key_file)

        def pick(sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
            if self._current is not None:
                sslobj.context = self._current

        base.sni_callback = pick
        return base

    async def watch(self) -> None:
        """Poll the files until cancelled."""
        while True:
            await self._clock.sleep(self.poll_interval)
            try:
                self.load()
            except Exception:  # a watcher must outlive any surprise in the files
                log.exception("webhook certificate watch failed")


# --- server ----------------------------------------------------------------------------------------
class WebhookServer:
    """An aiohttp HTTPS server that dispatches AdmissionReviews to handlers registered by path.

    A runnable: ``await start()`` serves until cancelled; it runs on every replica
    (``needs_leader_election = False``), because the API server may call any of them.
    """

    needs_leader_election = False

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 9443,
        cert_dir: Path | str = "/tmp/k8s-webhook-server/serving-certs",
        cert_name: str = "tls.crt",
        key_name: str = "tls.key",
        cert_poll_interval: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.host = host
        self._port = port
        self.certs = CertWatcher(
            Path(cert_dir) / cert_name,
            Path(cert_dir) / key_name,
            poll_interval=cert_poll_interval,
            clock=clock,
        )
        self._handlers: dict[str, Handler] = {}
        self._started = asyncio.Event()

    def register(self, path: str, handler: Handler) -> None:
        """Serve ``handler`` at ``path``; paths are unique and must start with ``/``."""
        if not path.startswith("/"):
            raise ValueError(f"webhook path {path!r} must start with '/'")
        if path in self._handlers:
            raise ValueError(f"webhook path {path!r} is already registered")
        if self._started.is_set():
            raise RuntimeError(f"webhook path {path!r}: register handlers before the server starts")
        self._handlers[path] = handler

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0), valid once started."""
        return self._port

    @property
    def started(self) -> bool:
        return self._started.is_set()

    async def wait_started(self) -> None:
        await self._started.wait()

    def started_check(self) -> None:
        """A readyz check: fails until the server is listening."""
        if not self._started.is_set():
            raise RuntimeError("webhook server not started yet")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        for path in self._handlers:
            app.router.add_post(path, self._serve)
        return app

    async def start(self) -> None:
        self.certs.load()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port, ssl_context=self.certs.server_context())
            await site.start()
            server = site._server
            if server is not None and getattr(server, "sockets", None):
                self._port = server.sockets[0].getsockname()[1]
            self._started.set()
            paths = sorted(self._handlers)
            log.info(
                "webhook server listening", extra={"host": self.host, "port": self._port, "paths": paths}
            )
            await self.certs.watch()
        finally:
            self._started.clear()
            await runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        path = request.path
        handler = self._handlers[path]
        webhook_requests_in_flight.labels(path).inc()
        t0 = time.perf_counter()
        status = 200
        try:
            review, status = await self._review(request, path, handler)
            if status != 200:
                return web.Response(status=status, text=review["error"])
            return web.json_response(review)
        finally:
            webhook_latency_seconds.labels(path).observe(time.perf_counter() - t0)
            webhook_requests_in_flight.labels(path).dec()
            webhook_requests_total.labels(path, str(status)).inc()

    async def _review(self, request: web.Request, path: str, handler: Handler) -> tuple[dict[str, Any], int]:
        ctype = request.content_type
        if ctype != "application/json":
            return {"error": f"webhook {path}: content type {ctype!r}, want application/json"}, 400
        try:
            body = await request.json()
        except ValueError as exc:
            return {"error": f"webhook {path}: body is not JSON: {exc}"}, 400
        req = body.get("request") if isinstance(body, dict) else None
        if not isinstance(req, dict) or not req.get("uid"):
            return {"error": f"webhook {path}: body is not an AdmissionReview with request.uid"}, 400
        api_version = str(body.get("apiVersion") or "admission.k8s.io/v1")
        areq = AdmissionRequest(req)
        try:
            resp = await handler(areq)
            if not isinstance(resp, AdmissionResponse):
                raise TypeError(f"handler returned {type(resp).__name__}, want AdmissionResponse")
            if resp.patch is not None and resp.patched is not None:
                raise ValueError("handler set both patch and patched")
            review = review_response(areq.uid, resp, areq.object, api_version)
        except Exception as exc:
            log.exception("webhook handler failed",
                          extra={"webhook": path, "uid": areq.uid, "operation": areq.operation,
                                 "kind": areq.kind.get("kind", ""), "object_name": areq.name,
                                 "namespace": areq.namespace})  # fmt: skip
            message = f"webhook {path} failed on {areq.operation} {areq.kind.get('kind', '')} " \
                      f"{areq.namespace + '/' if areq.namespace else ''}{areq.name}: " \
                      f"{type(exc).__name__}: {exc}"  # fmt: skip
            review = review_response(areq.uid, AdmissionResponse.errored(500, message), None, api_version)
        return review, 200
