"""The transfer engine: parallel files and byte ranges, streamed to disk, verified in order, resumable.

Memory is bounded by design: each worker holds one write buffer (`WRITE_BLOCK`), each file being hashed
holds one read block; nothing scales with the model size. Ranges are written at their offsets as they
arrive; a per-file hasher follows the contiguous completed prefix, re-reading it from the page cache,
so digests are computed in file order however the ranges land.

Resume: a small JSON state per file records completed ranges and bytes written into unfinished ones;
a restarted download keeps those bytes and the final digest check covers them. If a file that reused
earlier bytes fails its check, it is fetched once more from scratch before we call it corrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.layout import Staging, UnsafePathError, ensure_inside
from localcache.storage.marker import MarkerFile
from localcache.storage.progress import Progress
from localcache.storage.settings import MiB, Settings
from localcache.storage.sources.base import RemoteFile, Source, TransientError
from localcache.storage.verify import CRYPTOGRAPHIC, MultiHasher, mismatches, to_check

log = logging.getLogger("localcache.storage.transfer")

# Bytes gathered per connection before one pwritev. Half a MiB: at 32 connections 1 MiB took the peak
# RSS of a 4 GiB S3 download from ~135 to ~155 MiB for no measurable speed.
WRITE_BLOCK = MiB // 2
HASH_BLOCK = 4 * MiB


class _Stalled(TransientError):
    pass


class _RetryWhole(Exception):
    """A resumed file failed verification: its old bytes are suspect, fetch it again from zero."""


def os_error_to_download_error(exc: OSError, what: str) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(FailureReason.DISK_FULL, f"{what}: no space left on device")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DownloadError(FailureReason.PERMISSION_DENIED, f"{what}: {os.strerror(exc.errno)}")
    return DownloadError(FailureReason.UNKNOWN, f"{what}: {exc.strerror or exc}")


@dataclass
class _FileJob:
    remote: RemoteFile
    rel: str
    path: Path
    state_path: Path
    ranges: list[tuple[int, int | None]]
    done: set[int] = field(default_factory=set)
    partial: dict[int, int] = field(default_factory=dict)
    reused: int = 0
    fd: int = -1
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    verified: dict[str, str] | None = None
    final_size: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One pwritev at a time per file: the kernel takes the inode lock for each write anyway, and
    writers queued on it spin (perf: 7 % of the download's CPU in rwsem_spin_on_owner); waiting here
    costs nothing and keeps worker threads free for other files and for hashing."""

    def state(self) -> dict[str, Any]:
        return {
            "size": self.remote.size,
            "expected": self.remote.expected,
            "locator_hash": hashlib.sha256(self.remote.locator.encode()).hexdigest(),
            "range_size": [list(r) for r in self.ranges],
            "done": sorted(self.done),
            "partial": {str(k): v for k, v in self.partial.items()},
            "verified": self.verified,
            "final_size": self.final_size,
        }

    def save(self) -> None:
        with self.lock:  # ranges finish concurrently; saves run in worker threads
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state()))
            tmp.replace(self.state_path)


def plan_ranges(size: int | None, range_size: int, ranged: bool) -> list[tuple[int, int | None]]:
    if size is None or not ranged or size <= range_size:
        return [(0, size)]
    return [(start, min(start + range_size, size)) for start in range(0, size, range_size)]


def _new_job(staging: Staging, settings: Settings, remote: RemoteFile, rel: str) -> _FileJob:
    """A file's job with nothing done yet; its state lives beside the staged file, under the state dir."""
    key = hashlib.sha256(rel.encode()).hexdigest()[:32]
    return _FileJob(
        remote,
        rel,
        staging.file_path(rel),
        staging.state_dir / f"{key}.json",
        plan_ranges(remote.size, settings.range_size, remote.ranged),
    )


def adopt_existing(
    staging: Staging, settings: Settings, files: list[tuple[RemoteFile, str]]
) -> tuple[int, int]:
    """Take files already at the destination as if an earlier attempt of ours had fetched them.

    A folder without our marker (written by KServe's storage-initializer or by a copy) often holds
    the very bytes the source lists. Each such file, a regular file of the listed size whose source
    gives a cryptographic digest, is hard-linked into staging and recorded as fully transferred but
    unverified; the transfer then hashes it instead of fetching it, and one that fails its digest is
    fetched from scratch (the resume rule). The original is never modified: the link shares its
    bytes until the publish replaces the folder. Returns (files, bytes) adopted.
    """
    dest = staging.dest
    if dest.is_symlink() or not dest.is_dir():
        return 0, 0
    count = total = 0
    for remote, rel in files:
        if remote.size is None or not remote.expected.keys() & set(CRYPTOGRAPHIC):
            continue
        job = _new_job(staging, settings, remote, rel)
        if job.path.exists() or job.path.is_symlink() or job.state_path.exists():
            continue  # our own earlier attempt: the resume state knows better
        try:
            found = ensure_inside(dest, rel)
            st = found.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size != remote.size:
                continue
            if not os.access(found, os.R_OK | os.W_OK):
                continue
            os.link(found, job.path, follow_symlinks=False)
        except (OSError, UnsafePathError):
            continue
        job.done = set(range(len(job.ranges)))
        job.save()
        count += 1
        total += remote.size
    return count, total


class Transfer:
    def __init__(self, source: Source, staging: Staging, settings: Settings, progress: Progress) -> None:
        self.source = source
        self.staging = staging
        self.settings = settings
        self.progress = progress
        self._queue: asyncio.Queue[tuple[_FileJob, int] | None] = asyncio.Queue()

    # ---- state ------------------------------------------------------------------------------------

    def _load(self, remote: RemoteFile, rel: str) -> _FileJob:
        job = _new_job(self.staging, self.settings, remote, rel)
        path, state_path = job.path, job.state_path
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = None
        fresh = job.state()
        keys = ("size", "expected", "locator_hash", "range_size")
        if state and all(state.get(k) == fresh[k] for k in keys) and path.exists():
            job.done = set(state.get("done", []))
            job.partial = {int(k): int(v) for k, v in state.get("partial", {}).items()}
            job.verified = state.get("verified")
            job.final_size = state.get("final_size")
            if job.verified is not None and path.stat().st_size != (job.final_size or 0):
                job.verified = None
                job.done.clear()
                job.partial.clear()
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if remote.size is None or not remote.ranged:
            # An unsized or unranged stream cannot be resumed in the middle (a finished one is kept:
            # its digest check decides).
            job.partial.clear()
        job.reused = sum(
            ((end if end is not None else job.final_size or 0) - start)
            for i, (start, end) in enumerate(job.ranges)
            if i in job.done
        ) + sum(job.partial.values())
        if job.verified is not None:
            job.reused = job.final_size or 0
        return job

    # ---- run --------------------------------------------------------------------------------------

    async def run(self, files: list[tuple[RemoteFile, str]]) -> list[MarkerFile]:
        jobs = [self._load(remote, rel) for remote, rel in files]
        results: dict[str, MarkerFile] = {}
        for attempt in range(2):
            pending = [j for j in jobs if j.rel not in results]
            if not pending:
                break
            retry_whole = await self._run_jobs(pending, results, allow_retry_whole=attempt == 0)
            if not retry_whole:
                break
            for job in retry_whole:
                log.warning("resumed file failed verification, fetching again path=%s", job.rel)
                self._reset(job)
        return [results[j.rel] for j in jobs]

    def _reset(self, job: _FileJob) -> None:
        self.progress.done_bytes -= job.reused
        self.progress.resumed_bytes -= job.reused
        job.done.clear()
        job.partial.clear()
        job.verified = None
        job.reused = 0
        with contextlib.suppress(FileNotFoundError):
            job.path.unlink()
        job.save()

    async def _run_jobs(
        self, jobs: list[_FileJob], results: dict[str, MarkerFile], *, allow_retry_whole: bool
    ) -> list[_FileJob]:
        retry_whole: list[_FileJob] = []
        for job in jobs:
            self.progress.add_resumed(job.reused)
            if job.verified is not None:
                results[job.rel] = MarkerFile(path=job.rel, size=job.final_size or 0, digests=job.verified)
                self.progress.file_done()
                continue
            self._open(job)
            for i in range(len(job.ranges)):
                if i not in job.done:
                    self._queue.put_nowait((job, i))
        active = [j for j in jobs if j.rel not in results]
        if not active:
            return []
        workers = min(self.settings.connections, max(1, self._queue.qsize()))
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(workers):
                    self._queue.put_nowait(None)
                for _ in range(workers):
                    tg.create_task(self._worker())
                for job in active:
                    tg.create_task(self._hash_job(job, results, retry_whole, allow_retry_whole))
        except BaseExceptionGroup as group:
            raise _first_download_error(group) from None
        finally:
            for job in active:
                with contextlib.suppress(OSError):
                    job.save()
                if job.fd >= 0:
                    os.close(job.fd)
                    job.fd = -1
            while not self._queue.empty():
                self._queue.get_nowait()
        return retry_whole

    def _open(self, job: _FileJob) -> None:
        try:
            job.fd = os.open(job.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            size = job.remote.size
            if size:
                st = os.fstat(job.fd)
                if st.st_blocks * 512 < size:
                    # Reserve the space now: a full disk fails at once, not after gigabytes.
                    try:
                        os.posix_fallocate(job.fd, 0, size)
                    except OSError as exc:
                        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                            raise
                        os.ftruncate(job.fd, size)
            elif size is None and not job.done:
                os.ftruncate(job.fd, 0)
        except OSError as exc:
            raise os_error_to_download_error(exc, f"file {job.rel}") from None

    # ---- workers ----------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            job, index = item
            await self._fetch_range(job, index)

    async def _fetch_range(self, job: _FileJob, index: int) -> None:
        start, end = job.ranges[index]
        s = self.settings
        state = {"pos": start + job.partial.get(index, 0)}
        try:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(s.retries + 1),
                wait=wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2),
                retry=retry_if_exception_type(TransientError),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    if not job.remote.ranged and state["pos"] != start:
                        state["pos"] = start  # no Range support: start the stream over
                    await self._stream_range(job, index, state, end)
        except _Stalled as exc:
            raise DownloadError(
                FailureReason.TIMEOUT,
                f"file {job.rel}: no data for {s.stall_timeout:g}s, {s.retries + 1} attempts ({exc})",
            ) from None
        except TransientError as exc:
            raise DownloadError(
                FailureReason.SOURCE_UNAVAILABLE,
                f"file {job.rel}: transfer failed after {s.retries + 1} attempts: {exc}",
            ) from None
        finally:
            if index not in job.done:
                job.partial[index] = state["pos"] - start
        job.partial.pop(index, None)
        job.done.add(index)
        if end is None:
            job.final_size = state["pos"]
        async with job.cond:
            job.cond.notify_all()
        await asyncio.to_thread(job.save)

    async def _stream_range(self, job: _FileJob, index: int, state: dict[str, int], end: int | None) -> None:
        pos = state["pos"]
        if end is not None and pos >= end:
            return
        # Chunks are gathered (not joined) and written with one pwritev: no user-space copy.
        chunks: list[bytes] = []
        pending = 0
        stall = self.settings.stall_timeout
        agen = self.source.stream(job.remote, pos, end)
        try:
            while True:
                try:
                    async with asyncio.timeout(stall):
                        chunk = await anext(agen)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _Stalled(f"stalled at byte {state['pos'] + pending}") from None
                if end is not None and state["pos"] + pending + len(chunk) > end:
                    chunk = chunk[: end - state["pos"] - pending]
                if chunk:
                    chunks.append(chunk)
                    pending += len(chunk)
                if pending >= WRITE_BLOCK:
                    await self._write(job, chunks, state)
                    chunks, pending = [], 0
                if end is not None and state["pos"] + pending >= end:
                    break
        finally:
            with contextlib.suppress(Exception):
                await agen.aclose()
            if chunks:
                await self._write(job, chunks, state)
        if end is not None and state["pos"] < end:
            raise TransientError(f"body ended at byte {state['pos']} of range ending {end}")

    async def _write(self, job: _FileJob, chunks: list[bytes], state: dict[str, int]) -> None:
        offset = state["pos"]
        try:
            async with job.write_lock:
                n = await asyncio.to_thread(_pwrite_all, job.fd, chunks, offset)
        except OSError as exc:
            raise os_error_to_download_error(exc, f"file {job.rel}") from None
        state["pos"] = offset + n
        self.progress.add(n)

    # ---- verification -----------------------------------------------------------------------------

    async def _hash_job(
        self,
        job: _FileJob,
        results: dict[str, MarkerFile],
        retry_whole: list[_FileJob],
        allow_retry_whole: bool,
    ) -> None:
        expected = to_check(job.remote.expected)
        hasher = MultiHasher(expected, job.remote.size)
        # One reused buffer per file being hashed: no allocation per block, RSS stays flat.
        block = bytearray(min(HASH_BLOCK, max(job.remote.size or HASH_BLOCK, 1)))
        offset = 0
        for index, (_start, end) in enumerate(job.ranges):
            async with job.cond:
                await job.cond.wait_for(lambda i=index: i in job.done)
            stop = end if end is not None else (job.final_size or 0)
            while offset < stop:
                n = min(HASH_BLOCK, stop - offset)
                got = await asyncio.to_thread(_pread_hash, job.fd, hasher, block, n, offset)
                if got == 0:
                    break
                offset += got
        size = offset
        if job.remote.size is not None and size != job.remote.size:
            raise DownloadError(
                FailureReason.CHECKSUM_MISMATCH,
                f"file {job.rel}: got {size} bytes, source says {job.remote.size}",
            )
        digests = hasher.hexdigests()
        bad = mismatches(expected, digests)
        if bad:
            if job.reused and allow_retry_whole:
                retry_whole.append(job)
                return
            with contextlib.suppress(FileNotFoundError):
                job.path.unlink()
            job.done.clear()
            job.partial.clear()
            algo = bad[0]
            raise DownloadError(
                FailureReason.CHECKSUM_MISMATCH,
                f"file {job.rel}: {algo} is {digests[algo]}, source says {expected[algo]}",
            )
        if self.settings.fsync:
            await asyncio.to_thread(os.fsync, job.fd)
        job.verified = digests
        job.final_size = size
        await asyncio.to_thread(job.save)
        results[job.rel] = MarkerFile(path=job.rel, size=size, digests=digests)
        self.progress.file_done()
        log.debug("file verified path=%s size=%d", job.rel, size)


def _pwrite_all(fd: int, chunks: list[bytes], offset: int) -> int:
    total = sum(len(c) for c in chunks)
    n = os.pwritev(fd, chunks, offset)
    if n < total:  # short write (rare on regular files): finish the rest plainly
        rest = memoryview(b"".join(chunks))[n:]
        while rest:
            k = os.pwrite(fd, rest, offset + n)
            rest = rest[k:]
            n += k
    return n


def _pread_hash(fd: int, hasher: MultiHasher, block: bytearray, n: int, offset: int) -> int:
    view = memoryview(block)[:n]
    got = os.preadv(fd, [view], offset)
    hasher.update(view[:got])
    return got


def _first_download_error(group: BaseExceptionGroup) -> BaseException:
    """The most telling error of a failed task group: a DownloadError beats cancellations."""
    flat: list[BaseException] = []

    def walk(g: BaseException) -> None:
        if isinstance(g, BaseExceptionGroup):
            for e in g.exceptions:
                walk(e)
        else:
            flat.append(g)

    walk(group)
    for e in flat:
        if isinstance(e, DownloadError):
            return e
    for e in flat:
        if not isinstance(e, asyncio.CancelledError):
            return e
    return flat[0]
