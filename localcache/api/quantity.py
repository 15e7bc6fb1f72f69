"""Kubernetes resource quantities (``10Gi``, ``1.7T``, ``1700G``, ``500m``, ``1e3``).

Sizes arrive as users typed them and must go back out unchanged (a read-modify-write may not turn
``10Gi`` into ``10737418240``), yet controllers compare them (``modelSize`` against ``storageLimit``).
:class:`Quantity` therefore keeps the original text and compares by exact decimal value.
"""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["QUANTITY_PATTERN", "Quantity", "QuantityError", "parse_quantity"]

# The apimachinery pattern controller-gen puts on every resource.Quantity field.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity; the message quotes it and shows valid forms."""


def parse_quantity(value: str | int | float | Decimal | Quantity) -> Decimal:
    """The exact value of a quantity, as the API server's ``resource.ParseQuantity`` reads it."""
    if isinstance(value, Quantity):
        return value.value
    if isinstance(value, bool):
        raise QuantityError(f"invalid quantity {value!r}: expected a number or a string such as '10Gi'")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise QuantityError(f"invalid quantity {value!r}: must be finite")
        return Decimal(str(value))
    if not isinstance(value, str):
        raise QuantityError(f"invalid quantity {value!r}: expected a string such as '10Gi', '1.7T' or '500m'")
    text = value.strip()
    match = _QUANTITY_RE.match(text)
    if match is None:
        raise QuantityError(
            f"invalid quantity {value!r}: expected a number with an optional suffix "
            "(Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent such as e3), "
            "e.g. '10Gi' or '1.7T'"
        )
    try:
        number = Decimal(match["number"])
        if match["binary"]:
            return number * (Decimal(1024) ** _BINARY[match["binary"]])
        if match["decimal"]:
            return number.scaleb(_DECIMAL[match["decimal"]])
        if match["exponent"]:
            exponent = Decimal(match["exponent"])
            if exponent != exponent.to_integral_value() or abs(exponent) > 1000:
                raise QuantityError(f"invalid quantity {value!r}: exponent must be a whole number")
            return number.scaleb(int(exponent))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise QuantityError(f"invalid quantity {value!r}: {exc}") from exc
    return number


@functools.total_ordering
class Quantity:
    """A quantity that remembers how it was written and compares by value (``1.7T == 1700G``)."""

    __slots__ = ("_raw", "_value")

    def __init__(self, raw: str | int | float | Decimal | Quantity) -> None:
        if isinstance(raw, Quantity):
            self._raw: str | int | float = raw._raw
            self._value: Decimal = raw._value
            return
        self._value = parse_quantity(raw)
        self._raw = str(raw) if isinstance(raw, Decimal) else raw

    @property
    def value(self) -> Decimal:
        """The exact decimal value (bytes for storage, cores for CPU)."""
        return self._value

    @property
    def raw(self) -> str | int | float:
        """The value as written: kept so a round trip through the API changes nothing."""
        return self._raw

    def to_int(self) -> int:
        """The value rounded up to a whole unit, like Go's ``Quantity.Value()``."""
        return math.ceil(self._value)

    def __int__(self) -> int:
        return self.to_int()

    def __str__(self) -> str:
        return str(self._raw)

    def __repr__(self) -> str:
        return f"Quantity({self._raw!r})"

    def _coerce(self, other: object) -> Decimal | None:
        if isinstance(other, Quantity):
            return other._value
        if isinstance(other, str | int | float | Decimal) and not isinstance(other, bool):
            try:
                return parse_quantity(other)
            except QuantityError:
                return None
        return None

    def __eq__(self, other: object) -> bool:
        value = self._coerce(other)
        return value is not None and self._value == value

    def __lt__(self, other: object) -> bool:
        value = self._coerce(other)
        if value is None:
            return NotImplemented
        return self._value < value

    def __hash__(self) -> int:
        return hash(self._value)

    # ---- pydantic integration ------------------------------------------------------------------
    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda q: q.raw, when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }

    @classmethod
    def _validate(cls, value: Any) -> Quantity:
        if isinstance(value, Quantity):
            return value
        try:
            return cls(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
