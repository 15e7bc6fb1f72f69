"""The completion marker: written last, so its presence alone means the folder is complete.

The node agent decides "Downloaded" from `read_marker`; everything else in a folder is untrusted.
"""

from __future__ import annotations

import json
import os
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
    path = marker_path(Path(dest))
    try:
        raw = path.read_bytes()
        marker = Marker.model_validate(json.loads(raw))
    except (OSError, ValueError, ValidationError):
        return None
    if marker.version != MARKER_VERSION or (uri is not None and marker.uri != uri):
        return None
    if marker.total_bytes != sum(f.size for f in marker.files):
        return None
    for f in marker.files:
        try:
            rel = safe_relpath(f.path)
        except UnsafePathError:
            return None
        if check_files:
            try:
                st = (Path(dest) / rel).lstat()
            except OSError:
                return None
            import stat

            if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
                return None
    return marker


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
