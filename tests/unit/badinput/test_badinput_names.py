"""Names at and past the length limits: every name we derive from user-chosen names (Job generateName,
label values, PV/PVC names) fits its Kubernetes limit and stays distinct for distinct inputs, so a long
cache or node name can neither be refused by the API server nor collide with another's objects."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from localcache.api.naming import (
    download_pv_name,
    download_pvc_name,
    job_generate_name,
    label_value,
    serving_pvc_name,
)

DNS_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
DNS_SUBDOMAIN = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", fullmatch=True)
SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


@given(DNS_SUBDOMAIN, DNS_SUBDOMAIN, DNS_SUBDOMAIN, DNS_SUBDOMAIN)
@settings(max_examples=150)
def test_job_names_fit_and_do_not_collide(m1: str, n1: str, m2: str, n2: str) -> None:
    a, b = job_generate_name(m1, n1), job_generate_name(m2, n2)
    assert len(a) <= 58 and len(b) <= 58
    if (m1, n1) != (m2, n2) and f"{m1}-{n1}" != f"{m2}-{n2}":
        assert a != b


@given(st.text(min_size=1, max_size=300))
@settings(max_examples=150)
def test_label_values_fit(value: str) -> None:
    assert len(label_value(value)) <= 63


@given(DNS_SUBDOMAIN, st.one_of(st.none(), DNS_LABEL), DNS_SUBDOMAIN)
@settings(max_examples=150)
def test_volume_names_fit_and_are_valid(cache: str, namespace: str | None, group: str) -> None:
    for name in (
        download_pv_name(cache, namespace, group),
        download_pvc_name(cache, namespace, group),
        serving_pvc_name(cache, namespace, group),
    ):
        assert len(name) <= 253
        assert SUBDOMAIN_RE.match(name), name


@given(DNS_LABEL, DNS_LABEL, DNS_SUBDOMAIN)
@settings(max_examples=150)
def test_same_name_in_two_namespaces_gets_two_volumes(ns_a: str, ns_b: str, cache: str) -> None:
    if ns_a != ns_b:
        assert download_pvc_name(cache, ns_a, "g") != download_pvc_name(cache, ns_b, "g")
        assert download_pvc_name(cache, ns_a, "g") != download_pvc_name(cache, None, "g")
