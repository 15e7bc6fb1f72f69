from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localcache.api.quantity import QUANTITY_PATTERN, Quantity, QuantityError, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10Gi", 10 * 1024**3),
        ("1.7T", 1_700_000_000_000),
        ("1700G", 1_700_000_000_000),
        ("500M", 500_000_000),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1.5e-3", Decimal("0.0015")),
        ("500m", Decimal("0.5")),
        ("100m", Decimal("0.1")),
        ("300Mi", 300 * 1024**2),
        ("1Ki", 1024),
        ("2Ei", 2 * 1024**6),
        ("1k", 1000),
        ("5n", Decimal("0.000000005")),
        ("3u", Decimal("0.000003")),
        (".5", Decimal("0.5")),
        ("+1", 1),
        ("-1Gi", -(1024**3)),
        ("0", 0),
        (" 10Gi ", 10 * 1024**3),
        (1073741824, 1073741824),
        (1.5, Decimal("1.5")),
    ],
)
def test_parse(text: str | int | float, value: int | Decimal) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize(
    "bad",
    ["", "Gi", "10 Gi", "10gi", "10GB", "1.2.3", "ten", "1e", "1e1.5", "1e99999", "0x10", "--1", "1Mii"],
)
def test_bad_quantities_are_rejected_with_the_value_quoted(bad: str) -> None:
    with pytest.raises(QuantityError, match=re.escape(repr(bad))):
        parse_quantity(bad)


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}, float("inf"), float("nan")])
def test_non_quantity_types_are_rejected(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)  # type: ignore[arg-type]


def test_comparisons_are_by_value() -> None:
    assert Quantity("1.7T") == Quantity("1700G")
    assert hash(Quantity("1.7T")) == hash(Quantity("1700G"))
    assert Quantity("10Gi") > Quantity("10G")
    assert Quantity("1Ti") > Quantity("1T")
    assert Quantity("500M") < Quantity("0.5Gi")
    assert Quantity("1e3") == Quantity("1k") == 1000
    assert Quantity("500m") == "0.5"
    assert Quantity("10Gi") <= "10Gi"
    assert sorted([Quantity("1Gi"), Quantity("1G"), Quantity("1Mi")]) == [
        Quantity("1Mi"),
        Quantity("1G"),
        Quantity("1Gi"),
    ]
    assert Quantity("1Gi") != "not a quantity"
    assert Quantity("1Gi") != object()


def test_raw_text_is_kept() -> None:
    q = Quantity("1.7T")
    assert str(q) == "1.7T"
    assert q.raw == "1.7T"
    assert Quantity(10).raw == 10
    assert Quantity(q).raw == "1.7T"


def test_to_int_rounds_up_like_go() -> None:
    assert Quantity("1.5").to_int() == 2
    assert Quantity("100m").to_int() == 1
    assert int(Quantity("10Gi")) == 10 * 1024**3


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T", ""]),
)
def test_our_parser_agrees_with_the_crd_pattern(number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    assert re.match(QUANTITY_PATTERN, text)
    assert parse_quantity(text) >= 0


@given(st.text(alphabet="0123456789.eEKMGTPimnuk+- ", max_size=8))
def test_parser_accepts_what_the_crd_pattern_accepts(text: str) -> None:
    pattern_ok = re.match(QUANTITY_PATTERN, text) is not None
    try:
        parse_quantity(text)
        parsed = True
    except QuantityError:
        parsed = False
    if parsed and text == text.strip():
        assert pattern_ok, text
    # Go's parser, like ours, rejects fractional and absurd exponents the pattern lets through.
    exponent = re.search(r"[eE]([+-]?[0-9.]*)$", text)
    odd_exponent = exponent is not None and ("." in exponent[1] or len(exponent[1].lstrip("+-")) > 3)
    if pattern_ok and not odd_exponent:
        assert parsed, text
