"""The manager's plain-HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz`` with named checks.

Bind addresses follow controller-runtime: metrics on ``:8080`` and probes on ``:8081`` by default,
``"0"`` disables a server, ``host:0`` picks a free port (tests), and when both addresses are equal
one server serves all three paths. These servers start first and run on every replica, so a
standby answers its probes while it waits for the lease.

Probe semantics are the Kubernetes ones (``k8s.io/apiserver/pkg/server/healthz``):

* a check is a callable returning ``None``/``True`` (healthy), ``False`` or raising (unhealthy),
  sync or async, bounded by ``check_timeout``;
* ``GET /readyz`` → 200 ``ok`` or 500 with one ``[+]name ok`` / ``[-]name failed: reason`` line per
  check; ``?verbose`` lists all checks on success too; ``?exclude=name`` skips a check;
  ``GET /readyz/<name>`` runs one check;
* with no checks registered the endpoint is healthy (``ping`` semantics).

``/metrics`` serves prometheus_client's default ``REGISTRY`` (process and Python collectors
included) with content negotiation (Prometheus text or OpenMetrics). Like controller-runtime's
secure metrics serving, it can be served over TLS (certificate files hot-reloaded) and protected by
:class:`KubernetesAuth`: the bearer token is checked with a TokenReview and the caller's right to
``get`` the path with a SubjectAccessReview (RBAC ``nonResourceURLs: ["/metrics"]``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from localcache.runtime import errors
from localcache.runtime.clock import SYSTEM_CLOCK, Clock
from localcache.runtime.resources import Resource
from localcache.runtime.webhook import CertWatcher

__all__ = [
    "SUBJECT_ACCESS_REVIEWS",
    "TOKEN_REVIEWS",
    "Checker",
    "Checks",
    "HTTPServer",
    "KubernetesAuth",
    "parse_bind_address",
    "ping",
]

log = logging.getLogger(__name__)

Checker = Callable[[], Any | Awaitable[Any]]
AuthFilter = Callable[[web.Request], Awaitable[web.Response | None]]
TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False)
SUBJECT_ACCESS_REVIEWS = Resource(
    "authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False
)
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")


def ping() -> None:
    """Always healthy: the process answers HTTP."""


def parse_bind_address(address: str) -> tuple[str | None, int] | None:
    """``":8080"`` → (None, 8080) (all interfaces); ``"127.0.0.1:0"``; ``"[::1]:9"``; ``"0"``/"" → None."""
    if address in ("", "0"):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind address {address!r}: want [host]:port, or '0' to disable")
    host = host.strip("[]")
    number = int(port)
    if number > 65535:
        raise ValueError(f"bind address {address!r}: port {number} out of range")
    return (host or None), number


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str = ""


class Checks:
    """A named set of health checks for one endpoint (``healthz`` or ``readyz``)."""

    def __init__(self, endpoint: str, check_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.check_timeout = check_timeout
        self._checks: dict[str, Checker] = {}

    def add(self, name: str, checker: Checker) -> None:
        if not _NAME.match(name):
            raise ValueError(f"{self.endpoint} check name {name!r}: use letters, digits, '.', '_' or '-'")
        if name in self._checks:
            raise ValueError(f"{self.endpoint} check {name!r} is already registered")
        self._checks[name] = checker

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def _run_one(self, name: str) -> CheckResult:
        checker = self._checks[name]
        try:
            async with asyncio.timeout(self.check_timeout):
                result = checker()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            return CheckResult(name, False, f"timed out after {self.check_timeout:.0f}s")
        except Exception as exc:
            return CheckResult(name, False, str(exc) or type(exc).__name__)
        if result is False:
            return CheckResult(name, False, "check returned false")
        return CheckResult(name, True)

    async def run(self, only: str | None = None, exclude: frozenset[str] = frozenset()) -> list[CheckResult]:
        """Run checks concurrently; ``only`` names one (KeyError if unknown)."""
        if only is not None:
            if only not in self._checks:
                raise KeyError(only)
            names = [only]
        else:
            names = [n for n in self._checks if n not in exclude]
        return list(await asyncio.gather(*(self._run_one(n) for n in names)))

    async def healthy(self) -> bool:
        return all(r.ok for r in await self.run())


class KubernetesAuth:
    """Delegated authentication and authorization against the API server, for ``/metrics``.

    controller-runtime's ``filters.WithAuthenticationAndAuthorization``: no bearer token → 401; a token
    the TokenReview rejects → 401; a user the SubjectAccessReview denies ``get`` on the path → 403.
    Decisions are cached for ``cache_ttl`` seconds per token hash and path, so a scrape every few
    seconds costs two API calls per TTL. Tokens are never logged.
    """

    def __init__(self, client: Any, *, cache_ttl: float = 10.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.client = client
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._decisions: dict[tuple[str, str, str], tuple[float, int, str]] = {}

    async def __call__(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return web.Response(status=401, text="Unauthorized: a bearer token is required\n")
        verb = request.method.lower()
        key = (hashlib.sha256(token.encode()).hexdigest(), request.path, verb)
        now = self._clock.monotonic()
        cached = self._decisions.get(key)
        if cached is None or cached[0] < now:
            status, reason = await self._review(token, request.path, verb)
            cached = (now + self.cache_ttl, status, reason)
            if status != 500:  # never cache a failed check
                if len(self._decisions) > 1024:
                    self._decisions.clear()
                self._decisions[key] = cached
        _, status, reason = cached
        if status == 200:
            return None
        return web.Response(status=status, text=reason + "\n")

    async def _review(self, token: str, path: str, verb: str) -> tuple[int, str]:
        try:
            review = await self.client.create(TOKEN_REVIEWS, {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                "spec": {"token": token},
            })  # fmt: skip
            status = review.get("status") or {}
            if not status.get("authenticated"):
                return 401, "Unauthorized: the token was not accepted"
            user = status.get("user") or {}
            spec: dict[str, Any] = {
                "user": user.get("username", ""),
                "groups": user.get("groups") or [],
                "nonResourceAttributes": {"path": path, "verb": verb},
            }
            if user.get("uid"):
                spec["uid"] = user["uid"]
            if user.get("extra"):
                spec["extra"] = user["extra"]
            access = await self.client.create(SUBJECT_ACCESS_REVIEWS, {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
                "spec": spec,
            })  # fmt: skip
        except (errors.ApiError, OSError) as exc:
            log.warning("metrics authorization check failed", extra={"path": path, "error": str(exc)})
            return 500, "Internal Server Error: authorization check failed"
        if not (access.get("status") or {}).get("allowed"):
            return 403, f"Forbidden: user {spec['user']!r} may not {verb} {path}"
        return 200, ""


class HTTPServer:
    """One aiohttp server for any of metrics and the two probe endpoints; a runnable."""

    needs_leader_election = False

    def __init__(
        self,
        bind_address: str,
        *,
        metrics: bool = False,
        healthz: Checks | None = None,
        readyz: Checks | None = None,
        registry: CollectorRegistry = REGISTRY,
        name: str = "http",
        certs: CertWatcher | None = None,
        metrics_auth: AuthFilter | None = None,
    ) -> None:
        parsed = parse_bind_address(bind_address)
        if parsed is None:
            raise ValueError(f"{name} server: bind address {bind_address!r} disables it; do not create it")
        self.host, self._port = parsed
        self.name = name
        self.metrics = metrics
        self.healthz = healthz
        self.readyz = readyz
        self.registry = registry
        self.certs = certs
        self.metrics_auth = metrics_auth
        self._started = asyncio.Event()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.certs is not None else "http"
        return f"{scheme}://{self.host or '127.0.0.1'}:{self._port}"

    async def wait_started(self) -> None:
        await self._started.wait()

    def app(self) -> web.Application:
        app = web.Application()
        if self.metrics:
            app.router.add_get("/metrics", self._metrics)
        for checks in (self.healthz, self.readyz):
            if checks is not None:
                app.router.add_get(f"/{checks.endpoint}", self._probe(checks))
                app.router.add_get(f"/{checks.endpoint}/{{check}}", self._probe(checks))
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            ssl_context = None
            if self.certs is not None:
                self.certs.load()
                ssl_context = self.certs.server_context()
            site = web.TCPSite(runner, self.host, self._port, ssl_context=ssl_context)
            await site.start()
            server = site._server
            if server is not None and getattr(server, "sockets", None):
                self._port = server.sockets[0].getsockname()[1]
            self._started.set()
            log.info(
                "http server listening", extra={"server": self.name, "host": self.host, "port": self._port}
            )
            if self.certs is not None:
                await self.certs.watch()
            else:
                await asyncio.Event().wait()
        finally:
            self._started.clear()
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_auth is not None:
            denied = await self.metrics_auth(request)
            if denied is not None:
                return denied
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    def _probe(self, checks: Checks) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            only = request.match_info.get("check")
            exclude = frozenset(request.query.getall("exclude", []))
            try:
                results = await checks.run(only, exclude)
            except KeyError:
                return web.Response(status=404, text=f"{checks.endpoint} check {only!r} not found\n")
            failed = [r for r in results if not r.ok]
            verbose = "verbose" in request.query
            if not failed and not verbose:
                return web.Response(text="ok")
            lines = [f"[+]{r.name} ok" if r.ok else f"[-]{r.name} failed: {r.reason}" for r in results]
            lines.extend(f"[+]{name} excluded: ok" for name in sorted(exclude) if name in checks.names)
            if failed:
                log.info(f"{checks.endpoint} check failed",
                         extra={"failed": {r.name: r.reason for r in failed}})  # fmt: skip
                lines.append(f"{checks.endpoint} check failed")
                return web.Response(status=500, text="\n".join(lines) + "\n")
            lines.append(f"{checks.endpoint} check passed")
            return web.Response(text="\n".join(lines) + "\n")

        return handle
