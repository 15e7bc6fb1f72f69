"""Quantities the API server lets through (the CRD's modelSize pattern) must never crash our parser:
each is a number or a QuantityError quoting it. The pattern is read from the shipped CRD, so a change to
either side is caught here."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from localcache.api.quantity import Quantity, QuantityError, parse_quantity

CRD = Path(__file__).resolve().parents[3] / "manifests" / "crds" / "serving.kserve.io_localmodelcaches.yaml"


def _model_size_pattern() -> str:
    doc = yaml.safe_load(CRD.read_text())
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return str(spec["properties"]["modelSize"]["pattern"])


PATTERN = _model_size_pattern()


@given(st.from_regex(PATTERN, fullmatch=True))
@settings(max_examples=200)
@example("1e99999999999999999999")
@example("-0.0000000001Ei")
@example("99999999999999999999999999999999999999Ei")
@example(".5")
@example("+1e-1000")
def test_every_api_accepted_quantity_parses_or_is_a_clear_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError as exc:
        assert repr(text) in str(exc)
        return
    assert isinstance(value, Decimal) and value.is_finite()
    assert Quantity(text) == Quantity(text)


@pytest.mark.parametrize("text", ["", " ", "lots", "10 Gi", "10gi", "1e", "Gi", "0x10", "∞", "1_000"])
def test_garbage_quantities_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert repr(text) in str(info.value)
