from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localcache.api.naming import (
    CACHE_NAME_MAX_LENGTH,
    bounded_name,
    download_pv_name,
    download_pvc_name,
    job_generate_name,
    job_labels,
    job_selector,
    job_status_key,
    label_value,
    match_storage_uri,
    model_dir,
    parse_status_key,
    pvc_storage_uri,
    serving_pv_name,
    serving_pvc_name,
    status_key,
    storage_key,
)

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# Known answers computed independently with `printf %s "$uri" | sha256sum | cut -c1-16`.
@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("hf://meta-llama/meta-llama-3-8b-instruct", "c277d78a31bc6624"),
        ("s3://foo", "83fbff445b51876f"),
        ("s3://foo/", "e65e626ad747873c"),
    ],
)
def test_storage_key_is_kserves(uri: str, key: str) -> None:
    assert storage_key(uri) == key
    assert model_dir(uri) == f"models/{key}"


@pytest.mark.parametrize(
    ("cached", "wanted", "match"),
    [
        ("gs://b/model", "gs://b/model", True),
        ("gs://b/model", "gs://b/model/", True),
        ("gs://b/model/", "gs://b/model", True),
        ("gs://b/model", "gs://b/model/x/y.pt", True),
        ("gs://b/model/", "gs://b/model/x/y.pt", True),
        ("gs://b/model", "gs://b/model2", False),
        ("gs://b/model", "gs://b/model-evil", False),
        ("gs://b/model", "gs://b/mod", False),
        ("gs://b/model", "gs://b", False),
        ("foo:bar:baz", "foo:bar:baz", True),
        ("foo:bar", "foo:bar:baz", False),
        ("s3://b/m//", "s3://b/m/", False),  # only ONE trailing slash is stripped
        ("s3://b/m//", "s3://b/m//x", True),
    ],
)
def test_match_storage_uri(cached: str, wanted: str, match: bool) -> None:
    assert match_storage_uri(cached, wanted) is match


# The test-backed examples of reference §4.3.
@pytest.mark.parametrize(
    ("isvc_uri", "cache_uri", "expected_tail"),
    [
        ("s3://foo", "s3://foo", "/models/83fbff445b51876f/"),
        ("s3://foo/", "s3://foo", "/models/83fbff445b51876f/"),
        ("s3://foo/model1", "s3://foo/", "/models/e65e626ad747873c/model1"),
        ("s3://foo/a/b.bin", "s3://foo", "/models/83fbff445b51876f/a/b.bin"),
    ],
)
def test_pvc_storage_uri(isvc_uri: str, cache_uri: str, expected_tail: str) -> None:
    assert pvc_storage_uri("pvc-name", cache_uri, isvc_uri) == "pvc://pvc-name" + expected_tail


def test_status_keys() -> None:
    assert status_key("m", None) == "m"
    assert status_key("m", "") == "m"
    assert status_key("m", "team") == "team/m"
    assert parse_status_key("team/m") == ("team", "m")
    assert parse_status_key("m") == ("", "m")


def test_cluster_names_are_kserves_byte_for_byte() -> None:
    assert download_pv_name("llama", None, "workers") == "llama-workers-download"
    assert download_pvc_name("llama", None, "workers") == "llama-workers"
    assert serving_pv_name("llama", None, "workers", "team") == "llama-workers-team"
    assert serving_pvc_name("llama", None, "workers") == "llama-workers"
    assert job_generate_name("llama", "kind-worker") == "llama-kind-worker"
    assert job_labels("llama", None, "kind-worker") == {"model": "llama", "node": "kind-worker"}
    assert job_labels("llama", "team", "n") == {"model": "llama", "node": "n", "modelNamespace": "team"}


def test_namespace_names_keep_kserves_prefix_and_differ_from_cluster_names() -> None:
    assert download_pv_name("llama", "team", "workers").startswith("llama-workers-team-download-")
    assert download_pvc_name("llama", "team", "workers").startswith("llama-workers-team-download-")
    assert serving_pv_name("llama", "team", "workers", "team").startswith("llama-workers-team-")
    assert serving_pvc_name("llama", "team", "workers").startswith("llama-workers-")
    # KServe's collision (reference §8.B-2): cluster cache "llama" serving namespace "team" and namespace
    # cache "llama" in "team" produce the same serving PV and PVC names there. Ours do not.
    assert serving_pv_name("llama", None, "workers", "team") != serving_pv_name(
        "llama", "team", "workers", "team"
    )
    assert serving_pvc_name("llama", None, "workers") != serving_pvc_name("llama", "team", "workers")


def test_names_are_distinct_across_scopes_and_components() -> None:
    caches = ["a", "a-b", "b"]
    groups = ["b", "b-c", "c"]
    namespaces = [None, "c", "b-c", "team"]
    seen: dict[str, tuple[object, ...]] = {}
    for cache, group, ns in itertools.product(caches, groups, namespaces):
        for kind, name in (
            ("download-pv", download_pv_name(cache, ns, group)),
            ("serving-pv", serving_pv_name(cache, ns, group, ns or "team")),
        ):
            identity = (kind, cache, group, ns)
            if ns is None and name in seen and seen[name][3] is None:
                continue  # dash ambiguity between two cluster caches is KServe's naming, kept on purpose
            assert name not in seen, f"{identity} collides with {seen.get(name)} as {name!r}"
            seen[name] = identity


def test_long_names_fit_and_stay_unique() -> None:
    cache = "c" * CACHE_NAME_MAX_LENGTH
    group = "g" * 253
    ns = "n" * 63
    names = {
        download_pv_name(cache, None, group),
        download_pv_name(cache, ns, group),
        download_pvc_name(cache, None, group),
        download_pvc_name(cache, ns, group),
        serving_pv_name(cache, None, group, ns),
        serving_pv_name(cache, ns, group, ns),
        serving_pvc_name(cache, None, group),
        serving_pvc_name(cache, ns, group),
        serving_pvc_name(cache, None, group[:-1] + "h"),
    }
    assert len(names) == 9
    for name in names:
        assert len(name) <= 253
        assert DNS_SUBDOMAIN.match(name), name


def test_names_exactly_at_the_limit_are_kept() -> None:
    group = "g" * (253 - len("c-"))
    assert serving_pvc_name("c", None, group) == f"c-{group}"
    longer = serving_pvc_name("c", None, group + "g")
    assert len(longer) == 253 and longer != f"c-{group}g"


def test_job_names_and_labels_fit() -> None:
    node = "ip-10-0-0-1.eu-west-1.compute.internal-" + "x" * 40
    generate = job_generate_name("m" * 63, node)
    assert len(generate) <= 58
    assert job_generate_name("m" * 63, node) == generate  # deterministic
    assert job_generate_name("m" * 63, node + "y") != generate
    labels = job_labels("m" * 63, "team", node)
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values())
    assert labels["model"] == "m" * 63  # fits: unchanged
    assert labels["node"] != node[:63]


def test_label_value() -> None:
    assert label_value("short") == "short"
    assert label_value("x" * 63) == "x" * 63
    assert len(label_value("x" * 64)) == 63
    assert label_value("x" * 64) != label_value("x" * 65)


def test_job_selector_separates_scopes() -> None:
    assert job_selector("m", None, "n") == "model=m,node=n,!modelNamespace"
    assert job_selector("m", "team", "n") == "model=m,node=n,modelNamespace=team"
    assert job_status_key({"model": "m", "node": "n"}) == "m"
    assert job_status_key({"model": "m", "node": "n", "modelNamespace": "team"}) == "team/m"
    assert job_status_key({"node": "n"}) is None


dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@given(dns_label, dns_label, st.one_of(st.none(), dns_label), dns_label)
def test_derived_names_are_valid_and_bounded(cache: str, group: str, ns: str | None, consumer: str) -> None:
    for name in (
        download_pv_name(cache, ns, group),
        download_pvc_name(cache, ns, group),
        serving_pv_name(cache, ns, group, consumer),
        serving_pvc_name(cache, ns, group),
    ):
        assert len(name) <= 253
        assert DNS_SUBDOMAIN.match(name), name
    generate = job_generate_name(cache, consumer)
    assert len(generate) <= 58
    assert re.match(r"^[a-z0-9]", generate)


@given(st.text(min_size=1, max_size=300), st.integers(min_value=12, max_value=253))
def test_bounded_name_never_exceeds_the_limit(readable: str, limit: int) -> None:
    assert len(bounded_name(readable, (readable,), limit)) <= limit
    assert len(bounded_name(readable, (readable,), limit, always_hash=True)) <= limit
