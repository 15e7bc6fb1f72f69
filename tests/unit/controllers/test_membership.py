"""Node-group membership agrees with Kubernetes' MatchNodeSelectorTerms, operator by operator."""

from __future__ import annotations

from typing import Any

import pytest

from localcache.controllers.membership import (
    group_members,
    is_node_ready,
    match_node_selector_terms,
    node_selector_terms,
    partition_by_group,
)


def node(name: str, labels: dict[str, str] | None = None, ready: bool | None = True) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": {"name": name, "labels": labels or {}}, "status": status}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    e: dict[str, Any] = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return e


def term(*exprs: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if exprs:
        t["matchExpressions"] = list(exprs)
    if fields is not None:
        t["matchFields"] = fields
    return t


def group(name: str, *terms: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"capacity": {"storage": "1Gi"}, "local": {"path": "/models"}}
    if terms:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": list(terms)}}
    return {"metadata": {"name": name}, "spec": {"persistentVolumeSpec": spec}}


GPU = node("gpu-1", {"gpu": "a100", "zone": "z1", "disks": "4"})
CPU = node("cpu-1", {"zone": "z2"})


@pytest.mark.parametrize(
    ("requirement", "gpu", "cpu"),
    [
        (expr("gpu", "In", "a100", "h100"), True, False),
        (expr("gpu", "In", "h100"), False, False),
        (expr("gpu", "NotIn", "h100"), True, True),  # an absent label satisfies NotIn
        (expr("gpu", "NotIn", "a100"), False, True),
        (expr("gpu", "Exists"), True, False),
        (expr("gpu", "DoesNotExist"), False, True),
        (expr("disks", "Gt", "3"), True, False),  # absent label never satisfies Gt/Lt
        (expr("disks", "Gt", "4"), False, False),
        (expr("disks", "Lt", "5"), True, False),
        (expr("disks", "Lt", "4"), False, False),
        (expr("disks", "Gt", "-10"), True, False),
    ],
)
def test_each_operator(requirement: dict[str, Any], gpu: bool, cpu: bool) -> None:
    assert match_node_selector_terms(GPU, [term(requirement)]) is gpu
    assert match_node_selector_terms(CPU, [term(requirement)]) is cpu


def test_gt_lt_need_an_integer_label_value() -> None:
    n = node("n", {"disks": "four"})
    assert not match_node_selector_terms(n, [term(expr("disks", "Gt", "1"))])
    assert not match_node_selector_terms(n, [term(expr("disks", "Lt", "100"))])
    assert not match_node_selector_terms(node("n", {"disks": "1_000"}), [term(expr("disks", "Gt", "1"))])
    assert match_node_selector_terms(node("n", {"disks": "+7"}), [term(expr("disks", "Gt", "6"))])


@pytest.mark.parametrize(
    "bad",
    [
        expr("gpu", "In"),  # In needs values
        expr("gpu", "NotIn"),
        expr("gpu", "Exists", "a100"),  # Exists takes none
        expr("gpu", "DoesNotExist", "x"),
        expr("disks", "Gt", "1", "2"),  # exactly one value
        expr("disks", "Lt", "1.5"),  # an integer
        expr("gpu", "Matches", "a100"),  # unknown operator
        expr("bad key!", "Exists"),
        expr("gpu", "In", "not a valid value"),
    ],
)
def test_an_invalid_requirement_makes_its_term_match_nothing(bad: dict[str, Any]) -> None:
    assert not match_node_selector_terms(GPU, [term(bad, expr("zone", "In", "z1"))])
    # other terms are still evaluated
    assert match_node_selector_terms(GPU, [term(bad), term(expr("zone", "In", "z1"))])


def test_terms_are_ored_and_expressions_anded() -> None:
    both = term(expr("gpu", "Exists"), expr("zone", "In", "z2"))
    assert not match_node_selector_terms(GPU, [both])
    assert match_node_selector_terms(GPU, [both, term(expr("zone", "In", "z1"))])
    assert match_node_selector_terms(CPU, [term(expr("gpu", "Exists")), term(expr("zone", "In", "z2"))])


def test_match_fields_metadata_name() -> None:
    by_name = term(fields=[{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}])
    assert match_node_selector_terms(GPU, [by_name])
    assert not match_node_selector_terms(CPU, [by_name])
    not_name = term(fields=[{"key": "metadata.name", "operator": "NotIn", "values": ["gpu-1"]}])
    assert not match_node_selector_terms(GPU, [not_name])
    assert match_node_selector_terms(CPU, [not_name])
    # fields and expressions of one term are ANDed
    mixed = term(
        expr("zone", "In", "z2"), fields=[{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]
    )
    assert not match_node_selector_terms(GPU, [mixed])


@pytest.mark.parametrize(
    "bad_field",
    [
        {"key": "metadata.name", "operator": "In", "values": ["a", "b"]},  # exactly one value
        {"key": "metadata.name", "operator": "Exists"},
        {"key": "metadata.namespace", "operator": "In", "values": ["gpu-1"]},
        {"key": "spec.unschedulable", "operator": "In", "values": ["true"]},
    ],
)
def test_unsupported_match_fields_never_match(bad_field: dict[str, Any]) -> None:
    assert not match_node_selector_terms(GPU, [term(fields=[bad_field])])


def test_empty_terms_and_missing_affinity_match_nothing() -> None:
    assert not match_node_selector_terms(GPU, [])
    assert not match_node_selector_terms(GPU, [{}])
    assert not match_node_selector_terms(GPU, [{"matchExpressions": [], "matchFields": []}])
    assert node_selector_terms({"capacity": {"storage": "1Gi"}}) == []
    assert node_selector_terms({"nodeAffinity": {}}) == []
    assert node_selector_terms(None) == []
    assert group_members(group("none"), [GPU, CPU]) == []


def test_group_members_and_readiness() -> None:
    g = group("gpus", term(expr("gpu", "Exists")))
    not_ready = node("gpu-2", {"gpu": "h100"}, ready=False)
    unknown = node("gpu-3", {"gpu": "h100"}, ready=None)
    members = group_members(g, [GPU, CPU, not_ready, unknown])
    assert [n["metadata"]["name"] for n in members] == ["gpu-1", "gpu-2", "gpu-3"]
    assert [is_node_ready(n) for n in members] == [True, False, False]


def test_a_node_in_two_groups_takes_the_first_listed() -> None:
    gpus = group("gpus", term(expr("gpu", "Exists")))
    zone1 = group("zone1", term(expr("zone", "In", "z1")))
    nodes = [GPU, CPU]
    groups = {"gpus": gpus, "zone1": zone1}
    assert partition_by_group(["gpus", "zone1"], groups, nodes) == {"gpu-1": "gpus"}
    assert partition_by_group(["zone1", "gpus"], groups, nodes) == {"gpu-1": "zone1"}
    # a missing group selects nothing, and the next one still counts
    assert partition_by_group(["gone", "zone1"], groups, nodes) == {"gpu-1": "zone1"}
