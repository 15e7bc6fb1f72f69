"""Plain HTTP(S) sources, and the ranged GET that the Hub source reuses for file bytes."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

import aiohttp

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.settings import Settings
from localcache.storage.sources.base import Listing, RemoteFile, Source, TransientError

READ_CHUNK = 256 * 1024
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def http_status_error(status: int, what: str, detail: str = "") -> Exception:
    """Map a status code to a permanent DownloadError or a retryable TransientError."""
    suffix = f" ({detail})" if detail else ""
    if status in (401, 403):
        return DownloadError(FailureReason.AUTH, f"{what}: HTTP {status}, access denied{suffix}")
    if status in (404, 410):
        return DownloadError(FailureReason.NOT_FOUND, f"{what}: HTTP {status}, not found{suffix}")
    if status in (408, 429) or status >= 500:
        return TransientError(f"{what}: HTTP {status}{suffix}")
    return DownloadError(FailureReason.UNKNOWN, f"{what}: HTTP {status}{suffix}")


def make_session(settings: Settings, *, verify: bool = True) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=settings.connections + 4, ssl=None if verify else False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    # auto_decompress off: we verify the bytes as stored, and sizes must match Content-Length.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


async def ranged_get(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    start: int,
    end: int | None,
    what: str,
    ranged: bool = True,
) -> AsyncIterator[bytes]:
    """Stream [start, end) of `url`, insisting on 206 when a range was asked for."""
    req_headers = dict(headers)
    req_headers["Accept-Encoding"] = "identity"
    want_range = ranged and (start > 0 or end is not None)
    if want_range:
        req_headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    elif start > 0:
        raise TransientError(f"{what}: cannot resume at byte {start} without Range support")
    try:
        async with session.get(url, headers=req_headers, allow_redirects=True) as resp:
            if resp.status >= 400:
                raise http_status_error(resp.status, what, resp.headers.get("X-Error-Message", ""))
            if want_range and resp.status != 206 and start > 0:
                raise TransientError(f"{what}: server ignored Range (HTTP {resp.status})")
            async for chunk in resp.content.iter_any():
                yield chunk
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from None


def digest_from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Digests a plain HTTP server may publish: RFC 9530 Repr-Digest, RFC 3230 Digest, S3-style
    x-amz-checksum-sha256, or an ETag that is a bare sha256."""
    out: dict[str, str] = {}
    for name in ("Repr-Digest", "Content-Digest"):
        value = headers.get(name)
        if value:
            for item in value.split(","):
                algo, _, rest = item.strip().partition("=")
                if algo.strip().lower() == "sha-256":
                    try:
                        out["sha256"] = base64.b64decode(rest.strip().strip(":")).hex()
                    except ValueError:
                        pass
    digest = headers.get("Digest")
    if digest and "sha256" not in out:
        for item in digest.split(","):
            algo, _, rest = item.strip().partition("=")
            if algo.strip().lower() == "sha-256":
                try:
                    out["sha256"] = base64.b64decode(rest.strip()).hex()
                except ValueError:
                    pass
    amz = headers.get("x-amz-checksum-sha256")
    if amz and "sha256" not in out:
        try:
            out["sha256"] = base64.b64decode(amz).hex()
        except ValueError:
            pass
    etag = (headers.get("ETag") or "").removeprefix("W/").strip('"')
    if "sha256" not in out and _HEX64.match(etag):
        out["sha256"] = etag.lower()
    return out


class HttpSource(Source):
    """One file at a URL (KServe's https storage type); the file keeps the URL's base name."""

    scheme = "https"

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.headers = dict(settings.http_headers)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(self.settings)
        return self._session

    async def list(self) -> Listing:
        name = unquote(PurePosixPath(urlparse(self.url).path).name) or "index"
        try:
            async with self.session.head(
                self.url, headers={**self.headers, "Accept-Encoding": "identity"}, allow_redirects=True
            ) as resp:
                if resp.status >= 400:
                    error = http_status_error(resp.status, f"url {self.url}")
                    if isinstance(error, TransientError):
                        raise DownloadError(FailureReason.SOURCE_UNAVAILABLE, str(error))
                    raise error
                length = resp.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
                ranged = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
                expected = digest_from_headers(resp.headers)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise DownloadError(
                FailureReason.SOURCE_UNAVAILABLE, f"url {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        return Listing([RemoteFile(name, size, self.url, expected, ranged=ranged and size is not None)])

    def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        return ranged_get(
            self.session, file.locator, self.headers, start, end, f"file {file.path}", file.ranged
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
