"""The completion marker: written last, so its presence alone means the folder is complete.

The node agent decides "Downloaded" from `read_marker`; everything else in a folder is untrusted.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from localcache.storage.layout import MARKER_NAME, UnsafePathError, safe_relpath

MARKER_VERSION = 1


class MarkerFile(BaseModel):
    path: str
    size: int = Field(ge=0)
    digests: dict[str, str]


class Marker(BaseModel):
    version: int = MARKER_VERSION
    uri: str
    revision: str | None = None
    files: list[MarkerFile]
    total_bytes: int = Field(ge=0)
    started_at: datetime
    completed_at: datetime
    duration_s: float = Field(ge=0)
    verified: list[str] = Field(
        default_factory=list, description="files checked against a digest the source published"
    )


def marker_path(dest: Path) -> Path:
    return Path(dest) / MARKER_NAME


def write_marker(directory: Path, marker: Marker, *, fsync: bool = True) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a marker."""
    path = marker_path(directory)
    tmp = path.with_name(path.name + ".tmp")
    data = marker.model_dump_json(indent=2).encode()
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)
    if fsync:
        fsync_dir(directory)
    return path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_marker(dest: Path | str, uri: str | None = None, *, check_files: bool = True) -> Marker | None:
    """The folder's marker if it is valid (and for `uri` when given), else None.

    Valid means: parseable, our version, safe file names and, with `check_files`, every listed file
    present as a regular file of the recorded size. Digests are not recomputed (that is a full read);
    use `verify_folder` for that.
    """
    try:
        marker = _parse(marker_path(Path(dest)).read_bytes())
    except OSError:
        return None
    return marker if marker is not None and _valid(marker, Path(dest), uri, check_files) else None


class MarkerCache:
    """:func:`read_marker` for a caller asking about the same folders on every pass (the node agent).

    A marker is parsed again only when its file changed (inode, size, modification time); the
    checks against the folder (listed files present, of their size) are still made every time. A
    node with a thousand models otherwise parsed a thousand markers per pass.
    """

    def __init__(self) -> None:
        self._parsed: dict[Path, tuple[tuple[int, int, int], Marker | None]] = {}

    def read(self, dest: Path | str, uri: str | None = None, *, check_files: bool = True) -> Marker | None:
        dest = Path(dest)
        path = marker_path(dest)
        try:
            st = path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            hit = self._parsed.get(path)
            if hit is None or hit[0] != key:
                hit = (key, _parse(path.read_bytes()))
                self._parsed[path] = hit
        except OSError:
            self._parsed.pop(path, None)
            return None
        marker = hit[1]
        return marker if marker is not None and _valid(marker, dest, uri, check_files) else None

    def forget(self, keep: set[Path]) -> None:
        """Drop what is known of folders not in ``keep`` (their models left the node)."""
        self._parsed = {p: v for p, v in self._parsed.items() if p.parent in keep}


def _parse(raw: bytes) -> Marker | None:
    try:
        return Marker.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


def _valid(marker: Marker, dest: Path, uri: str | None, check_files: bool) -> bool:
    if marker.version != MARKER_VERSION or (uri is not None and marker.uri != uri):
        return False
    if marker.total_bytes != sum(f.size for f in marker.files):
        return False
    for f in marker.files:
        try:
            rel = safe_relpath(f.path)
        except UnsafePathError:
            return False
        if check_files:
            try:
                st = (dest / rel).lstat()
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
                return False
    return True


def verify_folder(dest: Path | str, marker: Marker) -> list[str]:
    """Re-hash every file against the marker's sha256; returns the paths that differ."""
    import hashlib

    bad: list[str] = []
    for f in marker.files:
        h = hashlib.sha256()
        try:
            with open(Path(dest) / f.path, "rb") as fh:
                while block := fh.read(8 * 1024 * 1024):
                    h.update(block)
        except OSError:
            bad.append(f.path)
            continue
        if h.hexdigest() != f.digests.get("sha256"):
            bad.append(f.path)
    return bad


def now() -> datetime:
    return datetime.now(UTC)
