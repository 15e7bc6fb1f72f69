"""The transfer engine against an in-memory source: ranges, verification, resume, faults."""

# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localcache.storage import MARKER_NAME, DownloadError, FailureReason, Settings, read_marker
from localcache.storage import pipeline as download_mod
from localcache.storage.sources.base import Listing, RemoteFile, Source, TransientError


class MemorySource(Source):
    """Files in memory; `fail_after` cuts a stream after N bytes; `corrupt` flips one byte."""

    scheme = "mem"

    def __init__(self, files: dict[str, bytes], *, verify: bool = True) -> None:
        self.files = files
        self.verify = verify
        self.served: Counter[str] = Counter()
        self.fail_after: dict[str, tuple[int, type[Exception]]] = {}
        self.stall_at: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.names: dict[str, str] = {}
        self.requests: list[tuple[str, int, int | None]] = []

    async def list(self) -> Listing:
        out = []
        for name, data in self.files.items():
            expected = {"sha256": hashlib.sha256(data).hexdigest()} if self.verify else {}
            out.append(RemoteFile(self.names.get(name, name), len(data), name, expected))
        return Listing(out, revision="rev1")

    async def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        data = self.files[file.locator]
        if file.locator in self.corrupt:
            data = data[:1] + bytes([data[1] ^ 1]) + data[2:]
        self.requests.append((file.locator, start, end))
        stop = len(data) if end is None else end
        pos = start
        while pos < stop:
            n = min(64 * 1024, stop - pos)
            limit = self.fail_after.get(file.locator)
            if limit is not None and pos + n > limit[0]:
                chunk = data[pos : limit[0]]
                if chunk:
                    self.served[file.locator] += len(chunk)
                    yield chunk
                raise limit[1](f"cut at {limit[0]}")
            if file.locator in self.stall_at and pos >= self.stall_at[file.locator]:
                await asyncio.sleep(3600)
            chunk = data[pos : pos + n]
            self.served[file.locator] += len(chunk)
            pos += n
            yield chunk
            await asyncio.sleep(0)


def settings(**kw: object) -> Settings:
    s = Settings(range_size=256 * 1024, connections=4, retries=2, stall_timeout=5.0, fsync=False)
    s.progress_interval = 3600
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def files() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        "model-00001.safetensors": rng.randbytes(3 * 1024 * 1024 + 123),
        "model-00002.safetensors": rng.randbytes(1024 * 1024),
        "config.json": b'{"a": 1}',
        "empty.txt": b"",
        "sub/dir/tokenizer.json": rng.randbytes(5000),
    }


@pytest.fixture
def source(files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> MemorySource:
    src = MemorySource(files)
    monkeypatch.setattr(download_mod, "make_source", lambda uri, s: src)
    return src


async def fetch(dest: Path, s: Settings | None = None) -> download_mod.Marker:
    return await download_mod.download(
        "hf://o/m", dest, s or settings(), progress_stream=io.StringIO(), tty=False
    )


async def test_parallel_ranges_assemble_verified_files(tmp_path: Path, source: MemorySource, files) -> None:
    dest = tmp_path / "dest"
    marker = await fetch(dest)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert read_marker(dest, "hf://o/m") == marker
    assert marker.revision == "rev1"
    assert {f.path: f.digests["sha256"] for f in marker.files} == {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items()
    }
    ranged = [r for r in source.requests if r[0] == "model-00001.safetensors"]
    assert len(ranged) == 13  # 3 MiB + 123 bytes in 256 KiB ranges
    assert sum(source.served.values()) == sum(len(d) for d in files.values())
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # no staging left behind


async def test_valid_marker_makes_a_rerun_a_no_op(tmp_path: Path, source: MemorySource) -> None:
    dest = tmp_path / "dest"
    await fetch(dest)
    before = len(source.requests)
    await fetch(dest)
    assert len(source.requests) == before


async def test_corrupted_file_is_rejected_and_nothing_published(tmp_path: Path, source: MemorySource) -> None:
    source.corrupt.add("model-00002.safetensors")
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        await fetch(dest)
    assert info.value.reason is FailureReason.CHECKSUM_MISMATCH
    assert "model-00002.safetensors" in str(info.value)
    assert not dest.exists()


async def test_transient_cut_resumes_from_the_last_byte(tmp_path: Path, source: MemorySource, files) -> None:
    # one cut in the middle of the first range of a file, then the source behaves
    source.fail_after["model-00002.safetensors"] = (100_000, TransientError)
    original = source.stream

    async def stream(file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        try:
            async for chunk in original(file, start, end):
                yield chunk
        finally:
            if start == 0:
                source.fail_after.pop(file.locator, None)

    source.stream = stream  # type: ignore[method-assign]
    dest = tmp_path / "dest"
    await fetch(dest)
    assert (dest / "model-00002.safetensors").read_bytes() == files["model-00002.safetensors"]
    assert source.served["model-00002.safetensors"] == len(files["model-00002.safetensors"])
    assert ("model-00002.safetensors", 100_000, 256 * 1024) in source.requests


async def test_restart_reuses_partial_bytes(tmp_path: Path, source: MemorySource, files) -> None:
    big = "model-00001.safetensors"
    cut = 2 * 1024 * 1024 + 5000
    source.fail_after[big] = (cut, RuntimeError)  # a permanent failure: the first run dies
    dest = tmp_path / "dest"
    with pytest.raises(Exception, match="cut at"):
        await fetch(dest, settings(connections=1))
    assert not dest.exists()
    source.fail_after.clear()
    source.served.clear()
    await fetch(dest, settings(connections=1))
    assert (dest / big).read_bytes() == files[big]
    # everything before the cut was reused, not fetched again
    assert source.served[big] == len(files[big]) - cut


async def test_resumed_file_with_bad_old_bytes_is_fetched_again(tmp_path: Path, source: MemorySource, files):
    big = "model-00001.safetensors"
    source.fail_after[big] = (1024 * 1024, RuntimeError)
    dest = tmp_path / "dest"
    with pytest.raises(Exception, match="cut at"):
        await fetch(dest, settings(connections=1))
    staged = next(tmp_path.glob(".dest.localcache-staging"))
    with open(staged / big, "r+b") as fh:  # damage the kept bytes on disk
        fh.write(b"\0\0\0\0")
    source.fail_after.clear()
    await fetch(dest, settings(connections=1))
    assert (dest / big).read_bytes() == files[big]


async def test_stall_times_out_with_bounded_retries(tmp_path: Path, source: MemorySource) -> None:
    source.stall_at["config.json"] = 0
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        await fetch(dest, settings(stall_timeout=0.2, retries=1))
    assert info.value.reason is FailureReason.TIMEOUT
    assert sum(1 for r in source.requests if r[0] == "config.json") == 2
    assert not dest.exists()


async def test_disk_full_leaves_no_destination_and_no_staging(
    tmp_path: Path, source: MemorySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localcache.storage import transfer

    real = transfer._pwrite_all
    written = Counter[str]()

    def pwrite(fd: int, chunks: list[bytes], offset: int) -> int:
        written["n"] += 1
        if written["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, chunks, offset)

    monkeypatch.setattr(transfer, "_pwrite_all", pwrite)
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        await fetch(dest)
    assert info.value.reason is FailureReason.DISK_FULL
    assert list(tmp_path.iterdir()) == []


async def test_space_is_checked_before_downloading(
    tmp_path: Path, source: MemorySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(DownloadError) as info:
        await fetch(tmp_path / "dest")
    assert info.value.reason is FailureReason.DISK_FULL
    assert "needs" in info.value.message
    assert source.requests == []


@pytest.mark.parametrize("bad", ["../../etc/cron.d/x", "/abs/path", "a/../../b", ".localcache-complete.json"])
async def test_path_traversal_names_are_rejected(tmp_path: Path, source: MemorySource, bad: str) -> None:
    source.names["config.json"] = bad
    dest = tmp_path / "inner" / "dest"
    with pytest.raises(DownloadError) as info:
        await fetch(dest)
    assert info.value.reason is FailureReason.UNSAFE_PATH
    assert source.requests == []
    assert not (tmp_path / "inner").exists() or not any((tmp_path / "inner").iterdir())


async def test_unverifiable_files_still_get_a_sha256_in_the_marker(
    tmp_path: Path, files, monkeypatch
) -> None:
    src = MemorySource(files, verify=False)
    monkeypatch.setattr(download_mod, "make_source", lambda uri, s: src)
    marker = await fetch(tmp_path / "d")
    assert marker.verified == []
    assert all(f.digests["sha256"] == hashlib.sha256(files[f.path]).hexdigest() for f in marker.files)
    assert (tmp_path / "d" / MARKER_NAME).is_file()


def kserve_folder(dest: Path, files: dict[str, bytes]) -> None:
    """What another downloader leaves: the files, its own metadata, no marker of ours."""
    for name, data in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    (dest / ".cache" / "huggingface").mkdir(parents=True)
    (dest / ".cache" / "huggingface" / ".gitignore").write_bytes(b"*")


@pytest.mark.parametrize("mount_point", [False, True], ids=["sibling", "in-place"])
async def test_files_already_at_the_destination_are_verified_not_fetched(
    tmp_path: Path, source: MemorySource, files, monkeypatch: pytest.MonkeyPatch, mount_point: bool
) -> None:
    dest = tmp_path / "dest"
    kserve_folder(dest, files)
    if mount_point:
        monkeypatch.setattr("os.path.ismount", lambda p: str(p) == str(dest))
    marker = await fetch(dest)
    assert source.served == Counter(), "every file was in place with the listed size and digest"
    assert sorted(f.path for f in marker.files) == sorted(files)
    assert read_marker(dest, "hf://o/m") == marker
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert not (dest / ".cache").exists()  # the folder is now exactly the model, as after a fetch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


async def test_a_damaged_or_resized_file_at_the_destination_is_fetched_again(
    tmp_path: Path, source: MemorySource, files
) -> None:
    dest = tmp_path / "dest"
    kserve_folder(dest, files)
    damaged, resized = "model-00001.safetensors", "sub/dir/tokenizer.json"
    with open(dest / damaged, "r+b") as fh:
        fh.seek(2 * 1024 * 1024)
        fh.write(b"\0\0\0\0")
    (dest / resized).write_bytes(files[resized][:-1])
    await fetch(dest)
    assert source.served == Counter({damaged: len(files[damaged]), resized: len(files[resized])})
    for name, data in files.items():
        assert (dest / name).read_bytes() == data


async def test_unverifiable_or_symlinked_files_are_never_adopted(
    tmp_path: Path, files, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    kserve_folder(dest, files)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(files["model-00002.safetensors"])
    (dest / "model-00002.safetensors").unlink()
    (dest / "model-00002.safetensors").symlink_to(outside)
    src = MemorySource(files)
    monkeypatch.setattr(download_mod, "make_source", lambda uri, s: src)
    await fetch(dest)
    assert src.served["model-00002.safetensors"] == len(files["model-00002.safetensors"])
    assert not (dest / "model-00002.safetensors").is_symlink()
    assert outside.read_bytes() == files["model-00002.safetensors"]
    assert src.served["model-00001.safetensors"] == 0

    unverified = MemorySource(files, verify=False)
    monkeypatch.setattr(download_mod, "make_source", lambda uri, s: unverified)
    other = tmp_path / "other"
    kserve_folder(other, files)
    await fetch(other)
    assert unverified.served == Counter({n: len(d) for n, d in files.items() if d})
