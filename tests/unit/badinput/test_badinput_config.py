"""Malformed ``inferenceservice-config`` data: whatever an admin types, parsing fails only with a
ConfigError that names the ConfigMap and the key (so the controllers can keep their last good config and
say why), never with another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localcache.config import ConfigError, parse_config

SOURCE = "kserve/inferenceservice-config"
KEYS = ("localModel", "storageInitializer", "credentials")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=4)
    ),
    max_leaves=12,
)
local_model_fields = st.fixed_dictionaries(
    {},
    optional={
        "enabled": json_values,
        "jobNamespace": json_values,
        "defaultJobImage": json_values,
        "fsGroup": json_values,
        "jobTTLSecondsAfterFinished": json_values,
        "reconcilationFrequencyInSecs": json_values,
        "disableVolumeManagement": json_values,
    },
)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"enabled": true,', "invalid JSON at line 1"),
        ("[1, 2]", "must be a JSON object"),
        ('"just a string"', "must be a JSON object"),
        ('{"enabled": true}\n{"x": 1}', "invalid JSON"),
        ('{"jobNamespace": "Not_A_Namespace"}', "jobNamespace"),
        ('{"fsGroup": -5}', "fsGroup"),
        ('{"fsGroup": "a lot"}', "fsGroup"),
    ],
)
def test_malformed_local_model_names_configmap_and_key(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"localModel": raw})
    text = str(info.value)
    assert text.startswith(f"configmap {SOURCE}: localModel")
    assert fragment in text


@given(st.sampled_from(KEYS), st.text(max_size=200))
@settings(max_examples=150)
def test_any_text_parses_or_raises_config_error(key: str, raw: str) -> None:
    try:
        parse_config({key: raw})
    except ConfigError as exc:
        assert exc.source == SOURCE
        assert exc.key.split(".")[0].split("[")[0] == key
        assert str(exc).startswith(f"configmap {SOURCE}: {key}")


@given(local_model_fields)
@settings(max_examples=150)
def test_any_json_object_parses_or_raises_config_error(fields: dict[str, object]) -> None:
    try:
        parse_config({"localModel": json.dumps(fields)})
    except ConfigError as exc:
        assert exc.key.startswith("localModel")
        field_named = exc.key.split(".", 1)[1] if "." in exc.key else ""
        assert field_named == "" or field_named.split("[")[0] in fields
