"""The guide's examples kept in e2e/guide are the guide's own, and the substitutions that adapt them to
the local sources change only what they claim to (model URI, names, sizes, tokens)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from localcache.testing.system import GUIDE_EXAMPLES, GUIDE_SUBSTITUTIONS, MODEL_URI, guide_example

SEED = Path(
    os.environ.get(
        "LOCALCACHE_SEED_EXAMPLES", Path(__file__).resolve().parents[2] / "shared" / "seed" / "examples"
    )
)
HEADER_LINES = 3


def _without_header(path: Path) -> str:
    return "".join(path.read_text().splitlines(keepends=True)[HEADER_LINES:])


def test_every_seed_example_is_kept_verbatim() -> None:
    if not SEED.is_dir():
        pytest.skip(f"the guide's seed examples are not next to this checkout ({SEED})")
    seed = sorted(p.name for p in SEED.glob("*.yaml"))
    assert seed == sorted(p.name for p in GUIDE_EXAMPLES.glob("*.yaml"))
    for name in seed:
        assert _without_header(GUIDE_EXAMPLES / name) == (SEED / name).read_text(), name


def test_substitutions_change_only_uris_names_sizes_and_tokens() -> None:
    original = yaml.safe_load((GUIDE_EXAMPLES / "09-local-model-cache.yaml").read_text())
    (adapted,) = guide_example("09-local-model-cache.yaml")
    assert adapted["spec"]["sourceModelUri"] == MODEL_URI
    assert adapted["spec"]["nodeGroups"] == original["spec"]["nodeGroups"]
    assert adapted["kind"] == original["kind"] and adapted["apiVersion"] == original["apiVersion"]
    group = guide_example("08-local-model-node-group.yaml")[0]
    assert group == yaml.safe_load((GUIDE_EXAMPLES / "08-local-model-node-group.yaml").read_text())
    secret = guide_example("02-hf-secret-and-serviceaccount.yaml")[0]
    assert secret["stringData"]["HF_TOKEN"] != "xxxx"
    for old, _ in GUIDE_SUBSTITUTIONS:
        for doc in guide_example("03-local-model-cache-sa.yaml") + guide_example(
            "11-local-model-namespace-cache.yaml"
        ):
            assert old not in yaml.safe_dump(doc), old
