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
included) with content negotiation (Prometheus text or OpenMetrics).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["Checker", "Checks", "HTTPServer", "parse_bind_address", "ping"]

log = logging.getLogger(__name__)

Checker = Callable[[], Any | Awaitable[Any]]
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
        self._started = asyncio.Event()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host or '127.0.0.1'}:{self._port}"

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
            site = web.TCPSite(runner, self.host, self._port)
            await site.start()
            server = site._server
            if server is not None and getattr(server, "sockets", None):
                self._port = server.sockets[0].getsockname()[1]
            self._started.set()
            log.info(
                "http server listening", extra={"server": self.name, "host": self.host, "port": self._port}
            )
            await asyncio.Event().wait()
        finally:
            self._started.clear()
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
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
