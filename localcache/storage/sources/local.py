"""A local directory or file (KServe accepts local paths): copied through the same verified pipeline."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.sources.base import Listing, RemoteFile, Source

READ_CHUNK = 1024 * 1024


class LocalSource(Source):
    scheme = "file"

    def __init__(self, path: str) -> None:
        self.root = Path(path).absolute()

    async def list(self) -> Listing:
        return await asyncio.to_thread(self._list)

    def _list(self) -> Listing:
        try:
            st = self.root.stat()
        except FileNotFoundError:
            raise DownloadError(FailureReason.NOT_FOUND, f"local path {self.root}: does not exist") from None
        except PermissionError:
            raise DownloadError(
                FailureReason.PERMISSION_DENIED, f"local path {self.root}: permission denied"
            ) from None
        if stat.S_ISREG(st.st_mode):
            return Listing([RemoteFile(self.root.name, st.st_size, str(self.root))])
        real_root = self.root.resolve()
        files: list[RemoteFile] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                if full.is_symlink():
                    target = full.resolve()
                    if not target.is_relative_to(real_root):
                        raise DownloadError(
                            FailureReason.UNSAFE_PATH,
                            f"local path {full}: symlink points outside {self.root}",
                        )
                fst = full.stat()
                if stat.S_ISREG(fst.st_mode):
                    files.append(RemoteFile(rel, fst.st_size, str(full)))
        return Listing(files)

    async def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, file.locator, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pos = start
            while end is None or pos < end:
                n = READ_CHUNK if end is None else min(READ_CHUNK, end - pos)
                data = await asyncio.to_thread(os.pread, fd, n, pos)
                if not data:
                    return
                pos += len(data)
                yield data
        finally:
            os.close(fd)
