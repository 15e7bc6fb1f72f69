"""Safe names, digests, the marker, and both publish modes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from localcache.storage import MARKER_NAME, MarkerCache, read_marker, verify_folder
from localcache.storage import marker as marker_module
from localcache.storage.layout import Staging, UnsafePathError, safe_relpath
from localcache.storage.marker import Marker, MarkerFile, now, write_marker
from localcache.storage.verify import MultiHasher, mismatches, to_check


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../../x", "/etc/passwd", "", "a\\b", "a\x00b", ".localcache-complete.json", "..", "./"],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath(name)


@pytest.mark.parametrize(("name", "norm"), [("a/b.txt", "a/b.txt"), ("./a//b", "a/b"), ("x", "x")])
def test_safe_names_are_normalised(name: str, norm: str) -> None:
    assert safe_relpath(name) == norm


def test_digests_match_reference_values() -> None:
    data = b"hello\n"
    h = MultiHasher({"gitsha1": "x", "md5": "x", "crc32": "x"}, len(data))
    h.update(data)
    d = h.hexdigests()
    assert d["gitsha1"] == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"
    assert d["sha256"] == hashlib.sha256(data).hexdigest()
    assert d["md5"] == hashlib.md5(data).hexdigest()
    assert d["crc32"] == "363a3020"
    assert mismatches({"md5": d["md5"].upper()}, d) == []
    assert mismatches({"md5": "0" * 32}, d) == ["md5"]


def test_only_the_strongest_digest_a_source_gives_is_checked() -> None:
    # S3's sha256 checksum beside its MD5 ETag: the MD5 would only double the hashing
    assert to_check({"md5": "m", "sha256": "s", "crc32": "c"}) == {"sha256": "s"}
    assert to_check({"crc32": "c", "md5": "m"}) == {"md5": "m"}
    assert to_check({"gitsha1": "g", "crc32c": "c"}) == {"gitsha1": "g"}
    assert to_check({"crc32c": "c", "crc32": "d"}) == {"crc32c": "c"}
    assert to_check({}) == {}


def _marker(uri: str, files: dict[str, bytes]) -> Marker:
    return Marker(
        uri=uri,
        revision="r1",
        files=[
            MarkerFile(path=p, size=len(b), digests={"sha256": hashlib.sha256(b).hexdigest()})
            for p, b in files.items()
        ],
        total_bytes=sum(len(b) for b in files.values()),
        started_at=now(),
        completed_at=now(),
        duration_s=0.1,
    )


def test_read_marker_validates_uri_and_files(tmp_path: Path) -> None:
    files = {"a.bin": b"abc", "sub/b.txt": b"hello"}
    for p, b in files.items():
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b)
    write_marker(tmp_path, _marker("hf://o/m", files))
    marker = read_marker(tmp_path, "hf://o/m")
    assert marker is not None and [f.path for f in marker.files] == ["a.bin", "sub/b.txt"]
    assert verify_folder(tmp_path, marker) == []
    assert read_marker(tmp_path, "hf://o/other") is None
    (tmp_path / "a.bin").write_bytes(b"abd")  # same size, different bytes: cheap check passes, deep fails
    assert read_marker(tmp_path, "hf://o/m") is not None
    assert verify_folder(tmp_path, marker) == ["a.bin"]
    (tmp_path / "sub/b.txt").write_bytes(b"hell")
    assert read_marker(tmp_path, "hf://o/m") is None


def test_read_marker_refuses_garbage_and_traversal(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    (tmp_path / MARKER_NAME).write_text("{not json")
    assert read_marker(tmp_path) is None
    bad = _marker("u", {"x": b"1"}).model_dump(mode="json")
    bad["files"][0]["path"] = "../x"
    (tmp_path / MARKER_NAME).write_text(json.dumps(bad))
    assert read_marker(tmp_path, check_files=False) is None


def test_sibling_publish_replaces_destination_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "key"
    dest.mkdir(parents=True)
    (dest / "stale.bin").write_text("old")
    staging = Staging(dest)
    assert not staging.in_place and staging.root.parent == dest.parent
    staging.prepare()
    (staging.root / "w.bin").write_bytes(b"new")
    staging.publish(lambda d: write_marker(d, _marker("u", {"w.bin": b"new"})))
    assert sorted(p.name for p in dest.iterdir()) == [MARKER_NAME, "w.bin"]
    assert not staging.root.exists()
    assert [p.name for p in dest.parent.iterdir()] == ["key"]
    assert read_marker(dest, "u") is not None


def test_in_place_publish_for_mount_points_writes_marker_last(tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "mnt"
    dest.mkdir()
    (dest / "leftover").mkdir()
    monkeypatch.setattr("os.path.ismount", lambda p: str(p) == str(dest))
    staging = Staging(dest)
    assert staging.in_place and staging.root.parent == dest
    staging.prepare()
    (staging.root / "sub").mkdir()
    (staging.root / "sub" / "f").write_bytes(b"z")
    seen: list[list[str]] = []

    def mark(d: Path) -> None:
        seen.append(sorted(p.name for p in d.iterdir()))
        write_marker(d, _marker("u", {"sub/f": b"z"}))

    staging.publish(mark)
    assert seen == [["sub"]]  # everything else was in place before the marker
    assert sorted(p.name for p in dest.iterdir()) == [MARKER_NAME, "sub"]
    assert read_marker(dest, "u") is not None


def test_marker_cache_parses_once_and_still_checks_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"a.bin": b"x" * 10}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    write_marker(tmp_path, _marker("hf://o/m", files))
    parses = []
    real = marker_module._parse
    monkeypatch.setattr(marker_module, "_parse", lambda raw: parses.append(1) or real(raw))
    cache = MarkerCache()
    assert cache.read(tmp_path, "hf://o/m") is not None
    assert cache.read(tmp_path, "hf://o/m") is not None
    assert cache.read(tmp_path, "hf://o/other") is None, "the URI is checked on every read"
    assert len(parses) == 1
    (tmp_path / "a.bin").write_bytes(b"short")
    assert cache.read(tmp_path, "hf://o/m") is None, "a listed file changed size: not valid, unparsed"
    assert len(parses) == 1
    (tmp_path / MARKER_NAME).unlink()
    assert cache.read(tmp_path, "hf://o/m") is None
    write_marker(tmp_path, _marker("hf://o/m", {"a.bin": b"short"}))
    assert cache.read(tmp_path, "hf://o/m") is not None and len(parses) == 2, "a new marker is read"
