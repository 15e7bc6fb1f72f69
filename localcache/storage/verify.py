"""Digests computed while streaming, in file order: sha256 always, plus the strongest a source vouches for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from typing import Any

SUPPORTED = ("sha256", "md5", "gitsha1", "crc32", "crc32c")
CRYPTOGRAPHIC = ("sha256", "gitsha1", "md5")
"""Digests that identify content (a match is no accident), strongest first; the CRCs only catch damage."""
STRONGEST_FIRST = (*CRYPTOGRAPHIC, "crc32c", "crc32")


def to_check(expected: dict[str, str]) -> dict[str, str]:
    """The one digest of `expected` worth computing: the strongest.

    A match of the strongest digest already proves the bytes are the ones the source describes; its
    weaker ones beside it would add nothing but CPU. That is not small: S3 gives an MD5 ETag next to a
    sha256 checksum, and MD5 runs at about half sha256's speed (770 vs 1,440 MB/s here), more than
    doubling the hashing of every byte.
    """
    for algorithm in STRONGEST_FIRST:
        if algorithm in expected:
            return {algorithm: expected[algorithm]}
    return dict(expected)


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


class _Crc32c:
    def __init__(self) -> None:
        import google_crc32c  # only present with gcsfs

        self._c = google_crc32c.Checksum()

    def update(self, data: bytes | memoryview) -> None:
        self._c.update(bytes(data))

    def hexdigest(self) -> str:
        return self._c.digest().hex()


def _new(algorithm: str, size: int | None) -> Any:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "gitsha1":
        # git's blob id: sha1 over "blob <size>\0" + content (the Hub's ETag for non-LFS files)
        h = hashlib.sha1(usedforsecurity=False)
        h.update(f"blob {size}\0".encode())
        return h
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c":
        return _Crc32c()
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


class MultiHasher:
    """sha256 always (the marker records it), plus whatever the source lets us check against."""

    def __init__(self, expected: dict[str, str], size: int | None) -> None:
        algorithms = {"sha256", *expected}
        self._hashers = {a: _new(a, size) for a in sorted(algorithms)}

    def update(self, data: bytes | memoryview) -> None:
        for h in self._hashers.values():
            h.update(data)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self._hashers.items()}


def mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Algorithms whose digest differs (case-insensitive hex)."""
    return [a for a, v in expected.items() if actual.get(a, "").lower() != v.lower()]


def b64_to_hex(value: str) -> str | None:
    """S3 and GCS report checksums base64-encoded; None if it is not valid base64."""
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None
