"""Unpacking a downloaded archive, as KServe's storage-initializer does for https URIs
(`.tar`, `.tar.gz`, `.tgz`, `.zip`): the archive is verified first, then extracted in the staging
directory with every member name checked, then removed."""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from pathlib import Path

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.layout import STATE_DIR, UnsafePathError, safe_relpath
from localcache.storage.marker import MarkerFile

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _check(name: str, archive: str) -> str:
    try:
        return safe_relpath(name)
    except UnsafePathError as exc:
        raise DownloadError(FailureReason.UNSAFE_PATH, f"archive {archive}: {exc}") from None


def extract(root: Path, rel: str) -> list[MarkerFile]:
    """Extract `root/rel` into `root`, delete it, and describe the extracted files (sha256 each)."""
    path = root / rel
    try:
        if rel.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    _check(info.filename, rel)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DownloadError(
                            FailureReason.UNSAFE_PATH, f"archive {rel}: symlink {info.filename!r}"
                        )
                zf.extractall(root)
        else:
            with tarfile.open(path) as tf:
                for member in tf.getmembers():
                    _check(member.name, rel)
                    if not (member.isfile() or member.isdir()):
                        raise DownloadError(
                            FailureReason.UNSAFE_PATH,
                            f"archive {rel}: {member.name!r} is not a file or directory",
                        )
                tf.extractall(root, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DownloadError(FailureReason.CHECKSUM_MISMATCH, f"archive {rel}: unreadable ({exc})") from None
    path.unlink()
    files: list[MarkerFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == root and d == STATE_DIR))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            h = hashlib.sha256()
            with open(full, "rb") as fh:
                while block := fh.read(4 * 1024 * 1024):
                    h.update(block)
            files.append(
                MarkerFile(
                    path=full.relative_to(root).as_posix(),
                    size=full.stat().st_size,
                    digests={"sha256": h.hexdigest()},
                )
            )
    return files
