"""One download, end to end: resolve, list, check, transfer, verify, publish, mark."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from localcache.storage.archive import is_archive
from localcache.storage.errors import DownloadError, FailureReason, format_error_line
from localcache.storage.layout import STATE_DIR, Staging, UnsafePathError, safe_relpath
from localcache.storage.marker import Marker, now, read_marker, write_marker
from localcache.storage.progress import Progress
from localcache.storage.settings import Settings
from localcache.storage.sources.base import Listing, RemoteFile, Source
from localcache.storage.transfer import Transfer, adopt_existing, os_error_to_download_error
from localcache.storage.uri import ModelUri, parse_uri

log = logging.getLogger("localcache.storage")

JOB_STATE = "job.json"


def make_source(uri: ModelUri, settings: Settings) -> Source:
    if uri.scheme == "hf":
        from localcache.storage.sources.hf import HfSource

        return HfSource(uri.location, uri.revision, settings)
    if uri.scheme == "s3":
        from localcache.storage.sources.s3 import S3Source

        return S3Source(uri.location, uri.path, settings)
    if uri.scheme == "gs":
        from localcache.storage.sources.fsspec_source import gcs_source

        return gcs_source(uri.location, uri.path, settings)
    if uri.scheme in ("http", "https"):
        from localcache.storage.sources.http import HttpSource

        return HttpSource(uri.location, settings)
    from localcache.storage.sources.local import LocalSource

    return LocalSource(uri.location)


def checked_files(listing: Listing, uri: str) -> list[tuple[RemoteFile, str]]:
    """Refuse names that would land outside the destination, and duplicates after normalisation."""
    out: list[tuple[RemoteFile, str]] = []
    seen: set[str] = set()
    dirs: set[str] = set()
    for f in listing.files:
        try:
            rel = safe_relpath(f.path)
        except UnsafePathError as exc:
            raise DownloadError(FailureReason.UNSAFE_PATH, f"{uri}: {exc}") from None
        if rel in seen or rel in dirs:
            raise DownloadError(FailureReason.UNSAFE_PATH, f"{uri}: file name {rel!r} appears twice")
        seen.add(rel)
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for f in listing.files:
        out.append((f, safe_relpath(f.path)))
    if seen & dirs:
        raise DownloadError(FailureReason.UNSAFE_PATH, f"{uri}: a name is both a file and a directory")
    return out


def _check_space(staging: Staging, files: list[tuple[RemoteFile, str]]) -> None:
    need = 0
    for f, rel in files:
        if f.size is None:
            continue
        have = 0
        try:
            have = (staging.root / rel).stat().st_blocks * 512
        except OSError:
            pass
        need += max(0, f.size - have)
    free = shutil.disk_usage(staging.root).free
    if need > free:
        raise DownloadError(
            FailureReason.DISK_FULL,
            f"destination {staging.dest}: needs {need} more bytes, {free} available",
        )


def _job_matches(staging: Staging, uri: str, revision: str | None) -> bool:
    import json

    try:
        data = json.loads((staging.state_dir / JOB_STATE).read_text())
    except (OSError, ValueError):
        return False
    return bool(data.get("uri") == uri and data.get("revision") == revision)


def _write_job(staging: Staging, uri: str, revision: str | None) -> None:
    import json

    (staging.state_dir / JOB_STATE).write_text(json.dumps({"uri": uri, "revision": revision}))


async def download(
    uri: str,
    dest: Path | str,
    settings: Settings | None = None,
    *,
    progress_stream: TextIO | None = None,
    tty: bool | None = None,
) -> Marker:
    """Download `uri` into `dest` and return the marker; a valid marker for `uri` makes this a no-op."""
    settings = settings or Settings.from_env()
    parsed = parse_uri(uri)
    dest = Path(dest).absolute()  # noqa: ASYNC240 (no I/O: joins with the cwd)
    existing = read_marker(dest, uri)
    if existing is not None:
        log.info("already complete uri=%s dest=%s files=%d", uri, dest, len(existing.files))
        return existing
    started = now()
    t0 = time.monotonic()
    log.info("download start uri=%s dest=%s settings=%s", uri, dest, settings.redacted())
    async with make_source(parsed, settings) as source:
        listing = await source.list()
        files = checked_files(listing, uri)
        if not files:
            raise DownloadError(FailureReason.NOT_FOUND, f"{uri}: the source lists no files")
        staging = Staging(dest)
        try:
            staging.prepare()
            if not _job_matches(staging, uri, listing.revision):
                staging.discard()
                staging.prepare()
                _write_job(staging, uri, listing.revision)
            adopted, adopted_bytes = adopt_existing(staging, settings, files)
            if adopted:
                log.info(
                    "found files already at the destination, verifying them instead of fetching"
                    " dest=%s files=%d bytes=%d",
                    dest,
                    adopted,
                    adopted_bytes,
                )
            _check_space(staging, files)
        except DownloadError:
            staging.discard()
            raise
        except OSError as exc:
            staging.discard()
            raise os_error_to_download_error(exc, f"destination {dest}") from None
        total = sum(f.size or 0 for f, _ in files) if all(f.size is not None for f, _ in files) else None
        log.info(
            "listing uri=%s revision=%s files=%d bytes=%s verified_by=%s",
            uri,
            listing.revision,
            len(files),
            total,
            sorted({a for f, _ in files for a in f.expected}) or ["size"],
        )
        progress = Progress(
            total, len(files), interval=settings.progress_interval, stream=progress_stream, tty=tty
        )
        progress.start()
        try:
            results = await Transfer(source, staging, settings, progress).run(files)
        except DownloadError as exc:
            if exc.reason is FailureReason.DISK_FULL:
                # Do not leave a full disk full of our partial bytes.
                staging.discard()
            raise
        finally:
            await progress.stop()
    verified = sorted(f.path for f, _ in files if f.expected)
    if parsed.scheme in ("http", "https") and len(results) == 1 and is_archive(results[0].path):
        from localcache.storage.archive import extract

        archive_verified = bool(verified)
        try:
            results = await asyncio.to_thread(extract, staging.root, results[0].path)
        except OSError as exc:
            raise os_error_to_download_error(exc, f"destination {dest}") from None
        verified = [f.path for f in results] if archive_verified else []
    marker = Marker(
        uri=uri,
        revision=listing.revision,
        files=results,
        total_bytes=sum(f.size for f in results),
        started_at=started,
        completed_at=now(),
        duration_s=round(time.monotonic() - t0, 3),
        verified=verified,
    )
    try:
        staging.publish(lambda d: write_marker(d, marker, fsync=settings.fsync))
    except OSError as exc:
        raise os_error_to_download_error(exc, f"destination {dest}") from None
    elapsed = max(time.monotonic() - t0, 1e-6)
    log.info(
        "download complete uri=%s dest=%s files=%d bytes=%d seconds=%.2f rate_bps=%d",
        uri,
        dest,
        len(results),
        marker.total_bytes,
        elapsed,
        int(marker.total_bytes / elapsed),
    )
    return marker


def configure_logging(stream: TextIO | None = None) -> None:
    logging.basicConfig(
        level=os.environ.get("LOCALCACHE_LOG_LEVEL", "INFO").upper(),
        stream=stream or sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for noisy in ("botocore", "aiobotocore", "httpx", "httpx2", "huggingface_hub", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _tune_malloc() -> None:
    """Cap glibc's per-thread malloc arenas: the worker threads would otherwise each grow their own
    heap, and RSS would creep with the model size instead of staying flat."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


async def _main(uri: str, dest: str) -> None:
    # kubelet stops a Job's pod with SIGTERM: cancel cleanly (at an await, never mid-write), so every
    # worker records the bytes it wrote and the next attempt resumes from there.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await download(uri, dest)


def run(uri: str, dest: str, *, termination_log: str | None = None) -> int:
    """The program: download, print one error line on failure, return the exit code."""
    configure_logging()
    _tune_malloc()
    term = (
        termination_log
        if termination_log is not None
        else os.environ.get("LOCALCACHE_TERMINATION_LOG", "/dev/termination-log")
    )
    try:
        asyncio.run(_main(uri, dest))
        return 0
    except DownloadError as exc:
        error = exc
    except (KeyboardInterrupt, asyncio.CancelledError):
        error = DownloadError(
            FailureReason.UNKNOWN, "interrupted (SIGINT/SIGTERM); partial bytes kept for resume"
        )
    except OSError as exc:
        error = os_error_to_download_error(exc, f"destination {dest}")
    except Exception as exc:  # last resort: still one parseable line
        log.exception("unexpected failure")
        error = DownloadError(FailureReason.UNKNOWN, f"{type(exc).__name__}: {exc}")
    line = format_error_line(error)
    print(line, file=sys.stderr, flush=True)
    if term:
        try:
            if Path(term).parent.exists():
                with open(term, "w") as fh:
                    fh.write(line + "\n")
        except OSError:
            pass
    return error.reason.exit_code


__all__ = ["STATE_DIR", "download", "make_source", "run"]
