"""Turn a pydantic model's JSON schema into a structural OpenAPI v3 schema for a CRD.

The API server accepts only structural schemas: every node typed, no ``$ref``, no ``null`` branches,
``anyOf`` only for int-or-string. Pydantic emits JSON Schema 2020-12, so this module inlines ``$defs``,
drops ``null`` alternatives (Go's ``omitempty`` fields are absent, never null), drops titles and
defaults (a CRD default would be written into every object), and keeps descriptions, validations and
``x-kubernetes-*`` extensions.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

__all__ = ["SchemaError", "structural_schema"]

_KEEP = {
    "description",
    "type",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minProperties",
    "maxProperties",
    "required",
    "nullable",
}


class SchemaError(ValueError):
    """A model uses a construct a structural CRD schema cannot express."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (by alias), with the model docstring as description."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _resolve(ref: str, defs: dict[str, Any], path: str) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaError(f"{path}: unresolvable $ref {ref!r}")
    return copy.deepcopy(defs[ref[len(prefix) :]])


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = _resolve(node.pop("$ref"), defs, path)
        siblings = {k: v for k, v in node.items() if k not in ("default", "title")}
        node = {**target, **siblings}
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**_convert(inner, defs, path), **{k: v for k, v in node.items() if k != "title"}}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(f"{path}: a union of {len(branches)} types cannot be expressed in a CRD schema")
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "default", "title")}
        merged = _convert(branches[0], defs, path)
        if "description" in rest or "description" not in merged:
            merged.update(
                {k: v for k, v in rest.items() if k == "description" or k.startswith("x-kubernetes-")}
            )
        else:
            merged.update({k: v for k, v in rest.items() if k.startswith("x-kubernetes-")})
        for key in _KEEP - {"description"}:
            if key in rest:
                merged[key] = rest[key]
        return _ordered(merged)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _KEEP or key.startswith("x-kubernetes-") or key == "anyOf":
            out[key] = copy.deepcopy(value)
    if "description" in out:
        out["description"] = " ".join(str(out["description"]).replace("``", "").split())

    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        properties = node.get("properties") or {}
        if properties:
            out["properties"] = {
                name: _convert(schema, defs, f"{path}.{name}") for name, schema in properties.items()
            }
        additional = node.get("additionalProperties")
        if isinstance(additional, dict) and additional:
            out["additionalProperties"] = _convert(additional, defs, f"{path}[*]")
        elif additional is True and not properties and not out.get("x-kubernetes-preserve-unknown-fields"):
            # a free-form dict (e.g. dict[str, Any]) keeps its content
            out["x-kubernetes-preserve-unknown-fields"] = True
        if "required" in out and not out["required"]:
            del out["required"]
    elif kind == "array":
        items = node.get("items")
        if not isinstance(items, dict):
            raise SchemaError(f"{path}: an array needs a single item schema")
        out["items"] = _convert(items, defs, f"{path}[]")
    elif "enum" in node and "type" not in node:
        out["type"] = "string"
    elif (
        kind is None
        and not out.get("x-kubernetes-int-or-string")
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise SchemaError(f"{path}: untyped schema node {node!r}")
    return _ordered(out)


_ORDER = [
    "description",
    "type",
    "format",
    "enum",
    "anyOf",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "required",
    "properties",
    "additionalProperties",
    "items",
]


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in a stable, readable order (description and type first, extensions last)."""
    rank = {k: i for i, k in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(_ORDER)), kv[0])))
