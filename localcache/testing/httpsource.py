"""A plain HTTP model source for tests, the demo and benchmarks: a directory served with `Range`,
an optional per-connection rate cap, and fault switches (truncate, stall, status, corrupt) that the
resume and verification tests flip.

The cap is what a CDN or a far-away object store does to one stream. It is set in the kernel
(`SO_MAX_PACING_RATE`: TCP paces the connection, and the file still goes out by `sendfile`), so capping
costs the server no CPU; a benchmark on a small machine must not have its clients starved by the rig
that caps them. Where the kernel refuses, responses are paced in user space.

Start in-process (`async with HttpFileServer(root) as srv`), from sync code (`with srv.running():`),
or as a CLI: `python -m localcache.testing.httpsource serve --root DIR --port 0 [--cap BPS]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

SEND_BLOCK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Fault:
    """What goes wrong when `path` is served. `times` None: every request; else that many requests."""

    kind: str  # "truncate" | "stall" | "status" | "corrupt"
    after: int = 0  # bytes of body sent before truncate/stall; for corrupt, offset of the flipped byte
    status: int = 503
    times: int | None = None


SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux; 47 on every architecture


def pace_connection(sock: Any, rate: float) -> bool:
    """Cap the bytes/s TCP sends on `sock` (a socket or asyncio's TransportSocket); False if refused."""
    if sys.platform != "linux" or sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, max(1, min(int(rate), 2**32 - 1)))
    except OSError:
        return False
    return True


class Throttle:
    """Per-response pacing at `rate` bytes/s (None: no cap), where the kernel cannot pace."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    async def pace(self, n: int) -> None:
        self.sent += n
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                await asyncio.sleep(ahead)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end_exclusive), None for no/ignored Range, "unsatisfiable" for 416."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size)
    start = int(a)
    end = size if b == "" else min(int(b) + 1, size)
    if start >= size or start >= end:
        return "unsatisfiable"
    return (start, end)


class _ServerBase:
    """Lifecycle shared by the test servers: asyncio context manager, or a background thread."""

    host = "127.0.0.1"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = self.make_app()
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Any]:
        """Run the server on its own event loop in a daemon thread (for sync callers)."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True, name=type(self).__name__)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)


async def send_file(
    request: web.Request,
    path: Path,
    *,
    headers: dict[str, str],
    rate: float | None = None,
    fault: Fault | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """Serve `path` honouring Range; sendfile when nothing needs pacing or breaking."""
    size = path.stat().st_size  # noqa: ASYNC240 (metadata only)
    rng = parse_range(request.headers.get("Range"), size)
    if rng == "unsatisfiable":
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = rng if isinstance(rng, tuple) else (0, size)
    out_headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    status = 206 if isinstance(rng, tuple) else 200
    if status == 206:
        out_headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if request.method == "HEAD":
        return web.Response(status=status, headers=out_headers)
    if fault is not None and fault.kind == "status":
        return web.Response(status=fault.status, text="injected failure")
    transport = request.transport
    if rate is not None and fault is None and transport is not None:
        # From now on the kernel paces this connection: no pacing here, and the file goes by sendfile.
        rate = None if pace_connection(transport.get_extra_info("socket"), rate) else rate
    if rate is None and fault is None:
        if on_bytes is not None:
            on_bytes(end - start)
        resp = web.FileResponse(path, headers=headers)
        return resp
    resp = web.StreamResponse(status=status, headers=out_headers)
    await resp.prepare(request)
    throttle = Throttle(rate)
    loop = asyncio.get_running_loop()
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = start
        while pos < end:
            n = min(SEND_BLOCK, end - pos)
            data = await loop.run_in_executor(None, os.pread, fd, n, pos)
            if not data:
                break
            sent_so_far = pos - start
            if (
                fault is not None
                and fault.kind in ("truncate", "stall")
                and sent_so_far + len(data) > fault.after
            ):
                data = data[: max(0, fault.after - sent_so_far)]
                if data:
                    await resp.write(data)
                    if on_bytes is not None:
                        on_bytes(len(data))
                if fault.kind == "stall":
                    await asyncio.sleep(3600)
                # Cut the connection mid-body: the client sees a short read.
                if request.transport is not None:
                    request.transport.close()
                return resp
            if fault is not None and fault.kind == "corrupt" and pos <= fault.after < pos + len(data):
                i = fault.after - pos
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            await resp.write(data)
            if on_bytes is not None:
                on_bytes(len(data))
            pos += len(data)
            await throttle.pace(len(data))
    finally:
        os.close(fd)
    await resp.write_eof()
    return resp


def file_sha256(path: Path, cache: dict[tuple[str, int, int], str]) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(8 * 1024 * 1024):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


class HttpFileServer(_ServerBase):
    """Serves files under `root` at `/<relative path>`, with `Repr-Digest` (sha-256) when `digests`."""

    def __init__(
        self, root: Path | str, *, port: int = 0, rate: float | None = None, digests: bool = True
    ) -> None:
        super().__init__(port)
        self.root = Path(root).resolve()
        self.rate = rate
        self.digests = digests
        self.faults: dict[str, Fault] = {}
        self.bytes_sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._sha: dict[tuple[str, int, int], str] = {}

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/{path:.+}", self._handle)
        app.router.add_route("HEAD", "/{path:.+}", self._handle)
        return app

    def take_fault(self, rel: str, method: str) -> Fault | None:
        fault = self.faults.get(rel)
        if fault is None or method == "HEAD":
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self.faults[rel]
        return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return web.Response(status=404, text="not found")
        self.requests[rel] += 1
        headers: dict[str, str] = {}
        if self.digests:
            sha = await asyncio.to_thread(file_sha256, path, self._sha)
            headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(sha)).decode()}:"
        fault = self.take_fault(rel, request.method)

        def count(n: int) -> None:
            self.bytes_sent[rel] += n

        return await send_file(request, path, headers=headers, rate=self.rate, fault=fault, on_bytes=count)


async def _serve_forever(server: Any) -> None:
    await server.start()
    print(f"READY {server.url}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localcache.testing.httpsource")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve a directory")
    serve.add_argument("--root", required=True)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--cap", type=float, default=None, help="bytes/s per connection")
    args = parser.parse_args(argv)
    server = HttpFileServer(args.root, port=args.port, rate=args.cap)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server))


if __name__ == "__main__":
    main(sys.argv[1:])
