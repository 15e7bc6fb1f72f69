"""An S3 server for tests, the demo and benchmarks: moto in server mode, in its own process.

moto answers a ranged GET by reading the whole object into memory and slicing it, which makes
multi-GB objects unusable (every 8 MiB part of a 1 GiB object would read 1 GiB). The server process
patches that one path so GETs stream the object from moto's buffer, ranged or not; everything else
is stock moto. With `cap`, the same process listens on a second port whose every connection the
kernel paces at `cap` bytes/s (`SO_MAX_PACING_RATE`, see httpsource): `url` is that capped endpoint,
`direct_url` the open one, both serving the same buckets.

    with S3Server() as s3:                      # or: async with S3Server() as s3
        s3.create_bucket("models")
        s3.upload_dir("models", "llama/", some_dir)
        env = s3.env()                          # AWS_ENDPOINT_URL, keys, region for the downloader

`python -m localcache.testing.s3server --port P [--cap BPS]` runs the patched server standalone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from localcache.testing.processes import die_with_parent

ACCESS_KEY = "localcache-access"
SECRET_KEY = "localcache-secret"
REGION = "us-east-1"
STREAM_BLOCK = 1024 * 1024


def _patch_moto() -> None:
    from moto.s3 import models, responses

    tls = threading.local()

    class LazyValue:
        """Looks enough like bytes for moto's range handling, streams for werkzeug."""

        def __init__(self, key: Any) -> None:
            self.key = key
            self.size = key.size

        def __len__(self) -> int:
            return int(self.size)

        def __bool__(self) -> bool:
            return self.size > 0

        def _read(self, start: int, n: int) -> bytes:
            with self.key.lock:
                self.key._value_buffer.seek(start)
                return bytes(self.key._value_buffer.read(n))

        def __getitem__(self, item: slice) -> bytes:
            start, stop, _ = item.indices(len(self))
            return LazySlice(self, start, stop)  # type: ignore[return-value]

        def __iter__(self) -> Iterator[bytes]:
            return iter(LazySlice(self, 0, len(self)))

    class LazySlice:
        def __init__(self, value: LazyValue, start: int, stop: int) -> None:
            self.value, self.start, self.stop = value, start, max(start, stop)

        def __len__(self) -> int:
            return self.stop - self.start

        def __bool__(self) -> bool:
            return self.stop > self.start

        def __iter__(self) -> Iterator[bytes]:
            pos = self.start
            while pos < self.stop:
                data = self.value._read(pos, min(STREAM_BLOCK, self.stop - pos))
                if not data:
                    return
                pos += len(data)
                yield data

    value_prop = models.FakeKey.value

    def value_get(self: Any) -> Any:
        if getattr(tls, "lazy", False):
            return LazyValue(self)
        return value_prop.fget(self)

    models.FakeKey.value = property(value_get, value_prop.fset)  # type: ignore[method-assign,assignment]
    orig_get_object = responses.S3Response.get_object

    def get_object(self: Any) -> Any:
        tls.lazy = True
        try:
            return orig_get_object(self)
        finally:
            tls.lazy = False

    responses.S3Response.get_object = get_object  # type: ignore[method-assign]


def _pace_accepted_connections() -> None:
    """Servers given a `pacing_rate` attribute cap every connection they accept (moto's backends are
    process-wide, so a second, capped listener serves the same buckets)."""
    import socket

    from werkzeug.serving import BaseWSGIServer

    from localcache.testing.httpsource import pace_connection

    with socket.socket() as probe:
        if not pace_connection(probe, 1e6):
            raise SystemExit("the kernel refuses SO_MAX_PACING_RATE: cannot cap connections")
    accept = BaseWSGIServer.get_request

    def get_request(self: Any) -> Any:
        conn, addr = accept(self)
        rate = getattr(self, "pacing_rate", None)
        if rate is not None:
            pace_connection(conn, rate)
        return conn, addr

    BaseWSGIServer.get_request = get_request  # type: ignore[method-assign]


def serve(port: int, host: str = "127.0.0.1", cap: float | None = None) -> None:
    _patch_moto()
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    servers = [ThreadedMotoServer(ip_address=host, port=port, verbose=False)]
    if cap:
        _pace_accepted_connections()
        servers.append(ThreadedMotoServer(ip_address=host, port=0, verbose=False))
    for server in servers:
        server.start()
    if cap:
        servers[1]._server.pacing_rate = cap  # type: ignore[union-attr]
    urls = ["http://{}:{}".format(*server.get_host_and_port()) for server in servers]
    print("READY", *urls, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        for server in servers:
            server.stop()


def spawn_server(args: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `python <args>` and wait for its `READY <url>...` line; the process and its URLs."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=die_with_parent,  # an interrupted test or bench leaves no moto or hub behind
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY "):
            return proc, line.split()[1:]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{' '.join(args)} did not start")


class S3Server:
    """`S3Server(bucket="models", uploads={"minilm/": minilm_dir()})` starts with a model in place."""

    def __init__(
        self,
        *,
        port: int = 0,
        cap: float | None = None,
        bucket: str | None = None,
        uploads: dict[str, Path] | None = None,
        sha256: bool = True,
    ) -> None:
        self.port = port
        self.cap = cap
        self.bucket = bucket
        self.uploads = uploads or {}
        self.sha256 = sha256
        self._procs: list[subprocess.Popen[str]] = []
        self.direct_url = ""
        self.url = ""

    def start(self) -> None:
        from localcache.testing.httpsource import free_port

        port = self.port or free_port()
        args = ["-m", "localcache.testing.s3server", "--port", str(port)]
        proc, urls = spawn_server([*args, "--cap", str(self.cap)] if self.cap else args)
        self._procs.append(proc)
        self.direct_url, self.url = urls[0], urls[-1]
        try:
            if self.bucket:
                self.create_bucket(self.bucket)
                for prefix, directory in self.uploads.items():
                    self.upload_dir(self.bucket, prefix, directory, sha256=self.sha256)
        except BaseException:
            self.stop()  # a context manager whose start failed is never exited: do not leave moto running
            raise

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> S3Server:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)

    def client(self, *, direct: bool = True) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.direct_url if direct else self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def upload_dir(
        self, bucket: str, prefix: str, directory: Path | str, *, sha256: bool = False
    ) -> list[str]:
        """Upload every file under `directory` to `prefix`; `sha256` stores full-object checksums
        (single-part PUT) so downloads can verify against them."""
        from boto3.s3.transfer import TransferConfig

        client = self.client()
        keys: list[str] = []
        directory = Path(directory)
        config = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024)
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            if rel.startswith(".localcache-"):
                continue
            key = f"{prefix}{rel}"
            if sha256:
                with open(path, "rb") as fh:
                    client.put_object(Bucket=bucket, Key=key, Body=fh, ChecksumAlgorithm="SHA256")
            else:
                client.upload_file(str(path), bucket, key, Config=config)
            keys.append(key)
        return keys

    def env(self, *, direct: bool = False) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.direct_url if direct else self.url,
            "AWS_REGION": REGION,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localcache.testing.s3server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cap", type=float, default=None, help="add a port capped at BPS a connection")
    args = parser.parse_args(argv)
    port = args.port
    if port == 0:
        from localcache.testing.httpsource import free_port

        port = free_port()
    serve(port, cap=args.cap)


if __name__ == "__main__":
    main(sys.argv[1:])
