"""Label selectors, parsed once and matched locally (predicates, cache reads, tests).

Accepts Kubernetes' string syntax (``a=b,c!=d,e in (x,y),f notin (z),g,!h``) and the structured form
(``{"matchLabels": {...}, "matchExpressions": [{"key", "operator", "values"}]}``). ``str(selector)``
gives the canonical string to send as ``labelSelector`` so the server and the client agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LabelSelector", "Requirement", "parse_selector"]

_OPS = ("in", "notin", "=", "==", "!=", "exists", "!")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        # notin: absent keys match, as in Kubernetes
        return self.key not in labels or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return "!" + self.key
        if len(self.values) == 1:
            return f"{self.key}{'=' if self.op == 'in' else '!='}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def matches_object(self, obj: Mapping[str, Any]) -> bool:
        return self.matches((obj.get("metadata") or {}).get("labels"))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s,()!=]+)")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"label selector {text!r}: cannot parse at {pos}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _parse_string(text: str) -> LabelSelector:
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def err(msg: str) -> ValueError:
        return ValueError(f"label selector {text!r}: {msg}")

    while i < len(toks):
        if toks[i] == "!":
            if i + 1 >= len(toks):
                raise err("'!' needs a key")
            reqs.append(Requirement(toks[i + 1], "!exists"))
            i += 2
        else:
            key = toks[i]
            if key in ("(", ")", ",", "=", "==", "!="):
                raise err(f"unexpected {key!r}")
            nxt = toks[i + 1] if i + 1 < len(toks) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif nxt in ("=", "==", "!="):
                if i + 2 >= len(toks):
                    raise err(f"{key}{nxt} needs a value")
                reqs.append(Requirement(key, "notin" if nxt == "!=" else "in", (toks[i + 2],)))
                i += 3
            elif nxt in ("in", "notin"):
                if i + 2 >= len(toks) or toks[i + 2] != "(":
                    raise err(f"{key} {nxt} needs '('")
                j = i + 3
                values: list[str] = []
                while j < len(toks) and toks[j] != ")":
                    if toks[j] != ",":
                        values.append(toks[j])
                    j += 1
                if j >= len(toks):
                    raise err("missing ')'")
                reqs.append(Requirement(key, nxt, tuple(values)))
                i = j + 1
            else:
                raise err(f"unexpected {nxt!r} after {key!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise err(f"expected ',' before {toks[i]!r}")
            i += 1
    return LabelSelector(tuple(reqs))


def _parse_structured(sel: Mapping[str, Any]) -> LabelSelector:
    reqs = [Requirement(k, "in", (str(v),)) for k, v in (sel.get("matchLabels") or {}).items()]
    for expr in sel.get("matchExpressions") or []:
        op = expr.get("operator")
        key = expr.get("key")
        values = tuple(str(v) for v in expr.get("values") or ())
        if not key:
            raise ValueError("label selector matchExpressions entry has no key")
        if op == "In":
            reqs.append(Requirement(key, "in", values))
        elif op == "NotIn":
            reqs.append(Requirement(key, "notin", values))
        elif op == "Exists":
            reqs.append(Requirement(key, "exists"))
        elif op == "DoesNotExist":
            reqs.append(Requirement(key, "!exists"))
        else:
            raise ValueError(f"label selector matchExpressions[{key}]: unknown operator {op!r}")
    return LabelSelector(tuple(reqs))


def parse_selector(selector: str | Mapping[str, Any] | LabelSelector | None) -> LabelSelector:
    """A :class:`LabelSelector` from a string, a ``matchLabels``/``matchExpressions`` mapping, or None."""
    if selector is None:
        return LabelSelector()
    if isinstance(selector, LabelSelector):
        return selector
    if isinstance(selector, str):
        return _parse_string(selector)
    if "matchLabels" in selector or "matchExpressions" in selector:
        return _parse_structured(selector)
    # a plain {key: value} mapping means equality on each
    return LabelSelector(tuple(Requirement(k, "in", (str(v),)) for k, v in selector.items()))
