"""Parsing the storage URIs KServe accepts for a local model cache, with errors that name the field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from localcache.storage.errors import DownloadError, FailureReason

# Used with fullmatch: '$' alone would also accept a name ending in a newline.
_HF_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")


@dataclass(frozen=True)
class ModelUri:
    """A parsed source URI. `location` is the repo id, bucket, URL or local directory."""

    raw: str
    scheme: str  # hf | s3 | gs | http | https | file
    location: str
    path: str = ""  # the object prefix for buckets
    revision: str | None = None  # hf only


def _invalid(uri: str, why: str) -> DownloadError:
    return DownloadError(FailureReason.INVALID_REQUEST, f"storage URI {uri!r}: {why}")


def parse_uri(uri: str) -> ModelUri:
    """Accept `hf://owner/model[:revision]`, `s3://bucket/prefix`, `gs://bucket/prefix`,
    `http(s)://...`, `file:///dir` and plain local paths."""
    if not uri or uri != uri.strip():
        raise _invalid(uri, "must be non-empty and have no surrounding whitespace")
    if uri.startswith("hf://"):
        rest = uri[len("hf://") :].strip("/")
        repo, _, revision = rest.partition(":")
        if not _HF_REPO.fullmatch(repo) or ".." in repo:
            raise _invalid(uri, "expected hf://<owner>/<model>[:<revision>]")
        if _ and not revision:
            raise _invalid(uri, "empty revision after ':'")
        return ModelUri(uri, "hf", repo, revision=revision or None)
    if uri.startswith(("s3://", "gs://")):
        scheme = uri[:2]
        rest = uri[5:]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise _invalid(uri, f"bad bucket name {bucket!r}")
        if any(part == ".." for part in prefix.split("/")):
            raise _invalid(uri, "object prefix must not contain '..'")
        return ModelUri(uri, scheme, bucket, path=prefix)
    if uri.startswith(("http://", "https://")):
        try:
            parsed = urlparse(uri)
        except ValueError as exc:  # e.g. an unbalanced '[' in the host
            raise _invalid(uri, str(exc)) from exc
        if not parsed.netloc:
            raise _invalid(uri, "missing host")
        return ModelUri(uri, parsed.scheme, uri)
    if uri.startswith("file://"):
        try:
            path = urlparse(uri).path
        except ValueError as exc:
            raise _invalid(uri, str(exc)) from exc
        if not path:
            raise _invalid(uri, "missing path")
        return ModelUri(uri, "file", str(Path(path)))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise DownloadError(
            FailureReason.UNSUPPORTED,
            f"storage URI {uri!r}: scheme {scheme!r} is not supported (hf, s3, gs, http, https, local paths)",
        )
    return ModelUri(uri, "file", str(Path(uri)))
