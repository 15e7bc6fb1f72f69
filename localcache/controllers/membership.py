"""Node-group membership: which Nodes a LocalModelNodeGroup's PV ``nodeAffinity.required`` selects.

A group has no member list of its own: the PV template's required node affinity *is* the definition,
because that is where the scheduler will let pods using the group's PVs run. Matching must therefore
agree with Kubernetes' ``MatchNodeSelectorTerms`` (``component-helpers/scheduling/corev1/nodeaffinity``)
to the letter, or the cache would download onto nodes no pod can use (or skip nodes pods do use):

* terms are ORed; inside a term, ``matchExpressions`` and ``matchFields`` are all ANDed;
* a term with neither matches nothing; a spec without ``nodeAffinity.required`` matches no node;
* ``In``/``NotIn`` need values, ``Exists``/``DoesNotExist`` need none, ``Gt``/``Lt`` need exactly one
  base-10 int64 (and a label that parses as one); ``NotIn``/``DoesNotExist`` match an absent label;
* ``matchFields`` supports only ``metadata.name`` with ``In``/``NotIn`` and exactly one value;
* a term with an invalid requirement never matches (the API server's lazy-error selector), but the
  other terms are still evaluated.

Everything here is pure (plain dicts in, booleans out) so it is tested without an API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "InvalidRequirement",
    "group_members",
    "group_terms",
    "is_node_ready",
    "match_node_selector_terms",
    "node_selector_terms",
    "partition_by_group",
]

Obj = Mapping[str, Any]

_INT64_RE = re.compile(r"^[+-]?[0-9]+$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class InvalidRequirement(ValueError):
    """A node selector requirement the API server's selector would reject; the message says why."""


def _check_label_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidRequirement(f"label key {key!r} must be a non-empty string")
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise InvalidRequirement(f"label key {key!r}: prefix must be a DNS subdomain")
    if len(name) > 63 or not _NAME_PART_RE.match(name):
        raise InvalidRequirement(f"label key {key!r}: name part must be a qualified name")
    return key


def _check_values(operator: str, values: Any) -> list[str]:
    if values is None:
        values = []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidRequirement(f"operator {operator}: values must be a list of strings, got {values!r}")
    return values


@dataclass(frozen=True, slots=True)
class _LabelRequirement:
    key: str
    operator: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Any) -> _LabelRequirement:
        if not isinstance(raw, Mapping):
            raise InvalidRequirement(f"matchExpressions entry {raw!r} is not an object")
        key = _check_label_key(raw.get("key"))
        op = raw.get("operator")
        values = _check_values(str(op), raw.get("values"))
        if op in ("In", "NotIn"):
            if not values:
                raise InvalidRequirement(f"{key}: operator {op} needs at least one value")
        elif op in ("Exists", "DoesNotExist"):
            if values:
                raise InvalidRequirement(f"{key}: operator {op} takes no values")
        elif op in ("Gt", "Lt"):
            if len(values) != 1 or _parse_int64(values[0]) is None:
                raise InvalidRequirement(f"{key}: operator {op} needs exactly one integer value")
        else:
            raise InvalidRequirement(f"{key}: unknown operator {op!r}")
        for v in values:
            if op not in ("Gt", "Lt") and (len(v) > 63 or not _LABEL_VALUE_RE.match(v)):
                raise InvalidRequirement(f"{key}: {v!r} is not a valid label value")
        return cls(key, op, tuple(values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        present = self.key in labels
        if op == "In":
            return present and labels[self.key] in self.values
        if op == "NotIn":
            return not present or labels[self.key] not in self.values
        if op == "Exists":
            return present
        if op == "DoesNotExist":
            return not present
        if not present:
            return False
        have = _parse_int64(labels[self.key])
        want = _parse_int64(self.values[0])
        if have is None or want is None:
            return False
        return have > want if op == "Gt" else have < want


@dataclass(frozen=True, slots=True)
class _FieldRequirement:
    operator: str
    value: str

    @classmethod
    def parse(cls, raw: Any) -> _FieldRequirement:
        if not isinstance(raw, Mapping):
            raise InvalidRequirement(f"matchFields entry {raw!r} is not an object")
        key = raw.get("key")
        op = raw.get("operator")
        if key != "metadata.name":
            raise InvalidRequirement(f"matchFields key {key!r} is not supported (only metadata.name)")
        if op not in ("In", "NotIn"):
            raise InvalidRequirement(f"matchFields operator {op!r} is not supported (only In, NotIn)")
        values = _check_values(str(op), raw.get("values"))
        if len(values) != 1:
            raise InvalidRequirement(f"matchFields {op} needs exactly one value, got {len(values)}")
        return cls(op, values[0])

    def matches(self, name: str) -> bool:
        return (name == self.value) if self.operator == "In" else (name != self.value)


def _parse_int64(text: str) -> int | None:
    if not _INT64_RE.match(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _term_matches(term: Any, name: str, labels: Mapping[str, str]) -> bool:
    if not isinstance(term, Mapping):
        return False
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term selects nothing
    try:
        label_reqs = [_LabelRequirement.parse(r) for r in expressions]
        field_reqs = [_FieldRequirement.parse(r) for r in fields]
    except InvalidRequirement:
        return False
    return all(r.matches(labels) for r in label_reqs) and all(r.matches(name) for r in field_reqs)


def match_node_selector_terms(node: Obj, terms: Sequence[Any] | None) -> bool:
    """Whether ``node`` (a Node dict) matches any of ``terms`` (``nodeSelectorTerms``)."""
    meta = node.get("metadata") or {}
    name = meta.get("name") or ""
    labels = meta.get("labels") or {}
    return any(_term_matches(t, name, labels) for t in terms or ())


def node_selector_terms(pv_spec: Obj | None) -> list[Any]:
    """``nodeAffinity.required.nodeSelectorTerms`` of a PV spec; [] (no member) when absent."""
    affinity = (pv_spec or {}).get("nodeAffinity")
    if not isinstance(affinity, Mapping):
        return []
    required = affinity.get("required")
    if not isinstance(required, Mapping):
        return []
    terms = required.get("nodeSelectorTerms")
    return list(terms) if isinstance(terms, list) else []


def group_terms(group: Obj) -> list[Any]:
    """The node selector terms of a LocalModelNodeGroup dict."""
    spec = group.get("spec") or {}
    return node_selector_terms(spec.get("persistentVolumeSpec"))


def group_members(group: Obj, nodes: Iterable[Obj]) -> list[Obj]:
    """The Nodes a LocalModelNodeGroup selects, in the order given."""
    terms = group_terms(group)
    if not terms:
        return []
    return [n for n in nodes if match_node_selector_terms(n, terms)]


def is_node_ready(node: Obj) -> bool:
    """The Node's ``Ready`` condition is ``True`` (a Node without conditions is not ready)."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def partition_by_group(
    group_names: Sequence[str], groups: Mapping[str, Obj], nodes: Iterable[Obj]
) -> dict[str, str]:
    """Node name → the first group (in ``group_names`` order) that selects it.

    A node selected by two groups of one cache gets one stable choice, so its LocalModelNode entry
    (and the PVC the agent mounts) never flips between reconciles. Groups missing from ``groups``
    (deleted) select nothing.
    """
    nodes = list(nodes)
    chosen: dict[str, str] = {}
    for g in group_names:
        group = groups.get(g)
        if group is None:
            continue
        for node in group_members(group, nodes):
            chosen.setdefault(node["metadata"]["name"], g)
    return chosen
