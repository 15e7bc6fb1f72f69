"""Hostile storage URIs and remote file names: every one is refused with an error naming the URI, or
accepted without any way to reach outside the cache folder.

Why property-based: URIs and file names are attacker-controlled strings (a cache's spec, a hub's file
list); the space is too large for examples alone, and a crash other than our own error type would turn a
bad cache into a stuck agent.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from localcache.api.naming import match_storage_uri, model_dir, pvc_storage_uri, storage_key
from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.layout import RESERVED_PREFIX, UnsafePathError, safe_relpath
from localcache.storage.pipeline import checked_files
from localcache.storage.sources.base import Listing, RemoteFile
from localcache.storage.uri import parse_uri

HOSTILE_URIS = [
    "",
    " hf://a/b",
    "hf://a/b ",
    "hf://../etc",
    "hf://a/..",
    "hf://../../b",
    "hf://a/b:",
    "hf://etc",
    "s3://../x",
    "s3://b/../../etc",
    "s3://b/x/../../../etc",
    "gs://-/x",
    "ftp://host/model",
    "javascript://alert(1)",
    "file://",
    "http://",
    "https:///path-only",
    "s3://" + "b" * 300 + "/model",
    "hf://ünï/cödé",
    "hf://a\x00/b",
]

segment = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
uri_like = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda scheme, parts: f"{scheme}://" + "/".join(parts),
        st.sampled_from(["hf", "s3", "gs", "http", "https", "file", "ftp", "pvc", "HF", ""]),
        st.lists(st.one_of(segment, st.sampled_from(["..", ".", "", "%2e%2e", "..%2F.."])), max_size=6),
    ),
)


@pytest.mark.parametrize("uri", HOSTILE_URIS, ids=range(len(HOSTILE_URIS)))
def test_hostile_uri_refused_naming_the_uri(uri: str) -> None:
    with pytest.raises(DownloadError) as info:
        parse_uri(uri)
    assert info.value.reason in (FailureReason.INVALID_REQUEST, FailureReason.UNSUPPORTED)
    assert repr(uri)[:40] in str(info.value) or uri == ""
    assert "storage URI" in str(info.value)


def test_unbalanced_ipv6_bracket_is_an_invalid_request() -> None:
    with pytest.raises(DownloadError) as info:
        parse_uri("http://[")
    assert info.value.reason is FailureReason.INVALID_REQUEST


def test_newline_in_bucket_is_refused() -> None:
    with pytest.raises(DownloadError):
        parse_uri("s3://bucket\n/model")


@pytest.mark.parametrize("uri", ["hf://" + "a" * 5000 + "/" + "b" * 5000, "s3://bucket/" + "k/" * 5000])
def test_huge_uris_parse_without_harm(uri: str) -> None:
    """Accepted (the source answers NotFound); the folder is still the 16-digit key."""
    parsed = parse_uri(uri)
    assert parsed.scheme in ("hf", "s3")
    assert len(storage_key(uri)) == 16


@given(uri_like.filter(lambda u: "[" not in u and "]" not in u and "\n" not in u))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@example("hf://a/b/../../../etc")
@example("s3://bucket/a/../../b")
def test_parse_uri_never_crashes_and_never_keeps_dotdot(uri: str) -> None:
    try:
        parsed = parse_uri(uri)
    except DownloadError as exc:
        assert exc.reason in (FailureReason.INVALID_REQUEST, FailureReason.UNSUPPORTED)
        return
    if parsed.scheme in ("hf", "s3", "gs"):
        assert ".." not in parsed.location.split("/")
        assert ".." not in parsed.path.split("/")


@given(st.text(max_size=3000))
@example("hf://a/../../../../etc/passwd")
@example("/etc/passwd")
def test_storage_key_is_a_plain_folder_name_whatever_the_uri(uri: str) -> None:
    """The folder a URI is cached in is a hash: the URI's characters never reach the file system."""
    key = storage_key(uri)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key == hashlib.sha256(uri.encode()).hexdigest()[:16]
    assert model_dir(uri) == f"models/{key}"


@pytest.mark.parametrize(
    ("cached", "wanted", "serves"),
    [
        ("gs://b/model", "gs://b/model2", False),
        ("gs://b/model", "gs://b/model/", True),
        ("gs://b/model/", "gs://b/model", True),
        ("gs://b/model", "gs://b/mode", False),
        ("gs://b/model", "GS://b/model", False),
        ("gs://b/model", "gs://b/model//x", True),
        ("hf://o/m", "hf://o/m:rev", False),
        ("hf://o/m", "hf://o/m\x00", False),
        ("s3://b/ü", "s3://b/u\u0308", False),  # unicode is compared as is, never normalised
        ("", "anything", False),
    ],
)
def test_uri_matching_of_hostile_pairs(cached: str, wanted: str, serves: bool) -> None:
    assert match_storage_uri(cached, wanted) is serves


@given(st.text(min_size=1, max_size=60), st.text(max_size=60))
def test_a_cache_serves_only_its_uri_or_below_it(cached: str, wanted: str) -> None:
    c = cached[:-1] if cached.endswith("/") else cached
    w = wanted[:-1] if wanted.endswith("/") else wanted
    assert match_storage_uri(cached, wanted) == (w == c or w.startswith(c + "/"))


@given(st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s))
def test_pvc_uri_stays_on_the_cache_key_folder(tail: str) -> None:
    cached = "s3://bucket/model"
    uri = pvc_storage_uri("pvc-x", cached, f"{cached}/{tail}")
    assert uri.startswith(f"pvc://pvc-x/models/{storage_key(cached)}/")


NAMES = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(["..", ".", "", "a", "b c", "/", "\\", "\x00", ".localcache-x", "ü"]), max_size=6
    ).map("/".join),
)


@given(NAMES)
@settings(max_examples=200)
@example("../evil")
@example("a/../../evil")
@example("/etc/passwd")
@example("a\\..\\..\\evil")
@example(".localcache-complete.json")
@example("./.localcache-staging/x")
def test_remote_file_names_never_escape(name: str) -> None:
    try:
        rel = safe_relpath(name)
    except UnsafePathError as exc:
        assert repr(name) in str(exc)
        return
    p = PurePosixPath(rel)
    assert not p.is_absolute()
    assert ".." not in p.parts and "" not in rel.split("/")
    assert not p.parts[0].startswith(RESERVED_PREFIX)


@given(st.lists(NAMES, min_size=1, max_size=6))
@settings(max_examples=150)
def test_a_listing_with_any_unsafe_name_is_refused_whole(names: list[str]) -> None:
    listing = Listing([RemoteFile(n, 1, n) for n in names])
    try:
        files = checked_files(listing, "hf://o/m")
    except DownloadError as exc:
        assert exc.reason is FailureReason.UNSAFE_PATH
        assert "hf://o/m" in str(exc)
        return
    rels = [rel for _, rel in files]
    assert len(set(rels)) == len(rels)
    for rel in rels:
        assert ".." not in rel.split("/") and not rel.startswith("/")
