"""The generic fsspec source (what gs:// uses) against fsspec's in-memory filesystem."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from localcache.storage import DownloadError, FailureReason, Settings, pipeline, read_marker
from localcache.storage.sources.fsspec_source import FsspecSource


class Md5MemoryFS(MemoryFileSystem):
    """Memory filesystem that reports GCS-style base64 md5Hash in `find(detail=True)`."""

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):  # type: ignore[no-untyped-def]
        out = super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        for name, info in out.items():
            if info.get("type") == "file":
                data = self.cat_file(name)
                info["md5Hash"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        return out if detail else list(out)


@pytest.fixture
def memfs() -> Md5MemoryFS:
    fs = Md5MemoryFS(skip_instance_cache=True)
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pipe("/bucket/model/weights.bin", bytes(range(256)) * 40000)
    fs.pipe("/bucket/model/sub/config.json", b'{"x": 1}')
    return fs


def settings() -> Settings:
    s = Settings(range_size=1024 * 1024, connections=3, fsync=False)
    s.progress_interval = 3600
    return s


async def test_fsspec_listing_carries_md5_and_downloads_verified(
    memfs: Md5MemoryFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = FsspecSource("gs", memfs, "/bucket/model")
    listing = await src.list()
    assert sorted(f.path for f in listing.files) == ["sub/config.json", "weights.bin"]
    assert all("md5" in f.expected for f in listing.files)
    monkeypatch.setattr(pipeline, "make_source", lambda uri, s: src)
    marker = await pipeline.download(
        "gs://bucket/model", tmp_path / "d", settings(), progress_stream=io.StringIO(), tty=False
    )
    assert (tmp_path / "d" / "weights.bin").read_bytes() == memfs.cat_file("/bucket/model/weights.bin")
    assert sorted(marker.verified) == ["sub/config.json", "weights.bin"]
    assert read_marker(tmp_path / "d", "gs://bucket/model") is not None


async def test_fsspec_md5_mismatch_is_a_checksum_error(
    memfs: Md5MemoryFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = FsspecSource("gs", memfs, "/bucket/model")
    listing = await src.list()
    original = src.list

    async def tampered():  # type: ignore[no-untyped-def]
        listing = await original()
        for f in listing.files:
            f.expected["md5"] = "0" * 32
        return listing

    src.list = tampered  # type: ignore[method-assign]
    assert listing.files
    monkeypatch.setattr(pipeline, "make_source", lambda uri, s: src)
    with pytest.raises(DownloadError) as info:
        await pipeline.download(
            "gs://bucket/model", tmp_path / "d", settings(), progress_stream=io.StringIO()
        )
    assert info.value.reason is FailureReason.CHECKSUM_MISMATCH
    assert not (tmp_path / "d").exists()


async def test_fsspec_missing_prefix_is_not_found(memfs: Md5MemoryFS) -> None:
    with pytest.raises(DownloadError) as info:
        await FsspecSource("gs", memfs, "/bucket/nothing").list()
    assert info.value.reason is FailureReason.NOT_FOUND


def test_gs_without_gcsfs_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from localcache.storage.sources import fsspec_source

    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(DownloadError) as info:
        fsspec_source.gcs_source("bucket", "prefix", Settings())
    assert info.value.reason is FailureReason.UNSUPPORTED
    assert "gcsfs" in info.value.message
