"""On-disk layout: safe relative names, the staging directory, and the atomic publish.

Two publish modes, because the download Job's destination is usually a volume *mount point*
(`/mnt/models`, subPath `models/<key>`), which cannot be renamed:
- sibling: stage in `<parent>/.<name>.localcache-staging` and rename the whole directory onto `dest`;
- in-place (dest is a mount point or its parent is not writable): stage in `<dest>/.localcache-staging`
  and move the entries into `dest`.
In both modes the completion marker is written last, so a reader that trusts only the marker never
sees a partial model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path, PurePosixPath

MARKER_NAME = ".localcache-complete.json"
STAGING_NAME = ".localcache-staging"
STATE_DIR = ".localcache-state"
RESERVED_PREFIX = ".localcache-"


class UnsafePathError(ValueError):
    """A remote file name that would escape or clobber the destination."""


def safe_relpath(name: str) -> str:
    """Normalise a remote file name to a relative POSIX path inside the destination, or refuse it."""
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePathError(f"file name {name!r}: empty, NUL or backslash")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise UnsafePathError(f"file name {name!r}: absolute path")
    parts = [part for part in p.parts if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts):
        raise UnsafePathError(f"file name {name!r}: '..' or empty path")
    if parts[0].startswith(RESERVED_PREFIX):
        raise UnsafePathError(f"file name {name!r}: reserved name")
    return "/".join(parts)


def ensure_inside(root: Path, rel: str) -> Path:
    """Resolve root/rel and check no existing component is a symlink leading elsewhere."""
    target = root.joinpath(*rel.split("/"))
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"file name {rel!r}: directory {part!r} is a symlink")
    if target.is_symlink():
        raise UnsafePathError(f"file name {rel!r}: is a symlink")
    return target


class Staging:
    """Where a download is assembled before it is published at `dest`."""

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest).absolute()
        parent = self.dest.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent  # we will create the missing directories
        self.in_place = (self.dest.exists() and os.path.ismount(self.dest)) or not os.access(parent, os.W_OK)
        parent = self.dest.parent
        self._created_dest = False
        if self.in_place:
            self.root = self.dest / STAGING_NAME
        else:
            self.root = parent / f".{self.dest.name}{STAGING_NAME}"
        self.state_dir = self.root / STATE_DIR

    def prepare(self) -> None:
        if self.in_place:
            if not self.dest.exists():
                self._created_dest = True
            self.dest.mkdir(parents=True, exist_ok=True)
        else:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self._created_dest:
            with contextlib.suppress(OSError):
                self.dest.rmdir()  # only if empty: never remove what someone else put there

    def file_path(self, rel: str) -> Path:
        path = ensure_inside(self.root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, write_marker: object) -> None:
        """Move the staged tree to `dest`; `write_marker(dir)` is called as the very last step."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        assert callable(write_marker)
        if self.in_place:
            self._publish_in_place(write_marker)
        else:
            self._publish_sibling(write_marker)

    def _publish_sibling(self, write_marker: object) -> None:
        assert callable(write_marker)
        write_marker(self.root)
        trash: Path | None = None
        if self.dest.exists() or self.dest.is_symlink():
            trash = self.dest.parent / f".{self.dest.name}.localcache-trash-{os.getpid()}"
            self.dest.rename(trash)
        self.root.rename(self.dest)
        _fsync_dir(self.dest.parent)
        if trash is not None:
            if trash.is_dir() and not trash.is_symlink():
                shutil.rmtree(trash, ignore_errors=True)
            else:
                trash.unlink(missing_ok=True)

    def _publish_in_place(self, write_marker: object) -> None:
        assert callable(write_marker)
        old_marker = self.dest / MARKER_NAME
        old_marker.unlink(missing_ok=True)
        for entry in list(self.dest.iterdir()):
            if entry.name == STAGING_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        for entry in list(self.root.iterdir()):
            entry.rename(self.dest / entry.name)
        self.root.rmdir()
        _fsync_dir(self.dest)
        write_marker(self.dest)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
