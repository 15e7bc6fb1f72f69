"""Any fsspec filesystem (gs:// through gcsfs), read in bounded sub-ranges so memory stays flat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.settings import Settings
from localcache.storage.sources.base import Listing, RemoteFile, Source, TransientError
from localcache.storage.verify import b64_to_hex

SUB_RANGE = 4 * 1024 * 1024


def _map_error(exc: BaseException, what: str) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return DownloadError(FailureReason.NOT_FOUND, f"{what}: not found")
    if isinstance(exc, PermissionError):
        return DownloadError(FailureReason.AUTH, f"{what}: access denied")
    status = getattr(exc, "code", None) or getattr(exc, "status", None)
    if status in (401, 403):
        return DownloadError(FailureReason.AUTH, f"{what}: access denied (HTTP {status})")
    if status == 404:
        return DownloadError(FailureReason.NOT_FOUND, f"{what}: not found")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")


class FsspecSource(Source):
    """`fs` may be sync or async; sync calls run in threads."""

    def __init__(self, scheme: str, fs: Any, root: str) -> None:
        self.scheme = scheme
        self.fs = fs
        self.root = root.rstrip("/")

    async def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.fs, "asynchronous", False) and hasattr(self.fs, "_" + name):
            return await getattr(self.fs, "_" + name)(*args, **kwargs)
        return await asyncio.to_thread(getattr(self.fs, name), *args, **kwargs)

    async def list(self) -> Listing:
        what = f"{self.scheme}://{self.root}"
        try:
            found = await self._run("find", self.root, detail=True)
            if not found:
                info = await self._run("info", self.root)
                if info.get("type") == "file":
                    found = {self.root: info}
        except Exception as exc:
            error = _map_error(exc, what)
            if isinstance(error, TransientError):
                raise DownloadError(FailureReason.SOURCE_UNAVAILABLE, str(error)) from None
            raise error from None
        if not found:
            raise DownloadError(FailureReason.NOT_FOUND, f"{what}: no objects under this prefix")
        files: list[RemoteFile] = []
        single = len(found) == 1 and self.root in {k.rstrip("/") for k in found}
        for name, info in sorted(found.items()):
            if info.get("type") not in (None, "file"):
                continue
            name = name.rstrip("/")
            rel = name.rsplit("/", 1)[-1] if single else name[len(self.root) + 1 :]
            expected: dict[str, str] = {}
            if info.get("md5Hash") and (h := b64_to_hex(info["md5Hash"])):
                expected["md5"] = h
            if info.get("crc32c") and (h := b64_to_hex(info["crc32c"])):
                try:
                    import google_crc32c  # noqa: F401

                    expected["crc32c"] = h
                except ImportError:
                    pass
            files.append(RemoteFile(rel, int(info.get("size") or 0), name, expected))
        return Listing(files)

    async def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        stop = end if end is not None else (file.size or 0)
        pos = start
        while pos < stop:
            n = min(SUB_RANGE, stop - pos)
            try:
                data = await self._run("cat_file", file.locator, start=pos, end=pos + n)
            except Exception as exc:
                raise _map_error(exc, f"{self.scheme}://{file.locator}") from None
            if not data:
                return
            pos += len(data)
            yield data


def gcs_source(bucket: str, prefix: str, settings: Settings) -> FsspecSource:
    try:
        import gcsfs
    except ImportError:
        raise DownloadError(
            FailureReason.UNSUPPORTED, "gs:// support needs the gcsfs package (pip install gcsfs)"
        ) from None
    kwargs: dict[str, Any] = {"asynchronous": False}
    if settings.gcs_credentials is not None:
        kwargs["token"] = settings.gcs_credentials
    if settings.gcs_endpoint:
        kwargs["endpoint_url"] = settings.gcs_endpoint
    fs = gcsfs.GCSFileSystem(**kwargs)
    return FsspecSource("gs", fs, f"{bucket}/{prefix}".rstrip("/"))
