"""`make demo`'s flow (localcache.testing.demo.Demo) on the session's system: the README's main command
must keep working, so its steps, progress lines, tables and disk verification are checked here without
starting a second control plane."""

from __future__ import annotations

import pytest

from localcache.testing.demo import Demo

from .conftest import E2E

pytestmark = pytest.mark.timeout(300)


async def test_demo_walks_the_guide_and_verifies_every_disk(e2e: E2E) -> None:
    system = e2e.require_simulator("the demo runs on the local system")
    lines: list[str] = []
    await Demo(system, timeout=180, out=lines.append).run()
    text = "\n".join(lines)
    for step in ("Step 1:", "Step 2:", "Step 3:", "Step 4+5:", "Step 6:", "Step 7:", "Step 8:"):
        assert step in text, f"{step} missing from the demo's output"
    assert f"copies {len(e2e.group_nodes)}/{len(e2e.group_nodes)}" in text
    # kubectl tables from the real kubectl, when the envtest assets have it.
    if system.kubectl is not None:
        assert "$ kubectl get localmodelcache" in text and "all-minilm-l6-v2" in text
    verified = [line for line in lines if "sha256 all verified" in line]
    # Two models (hub, S3) on each group node.
    assert len(verified) == 2 * len(e2e.group_nodes), text
    assert "MISMATCH" not in text and "NO MARKER" not in text
    for node in e2e.other_nodes:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"-- node {node}:"))
        assert "not in the node group" in lines[index + 1]
    if system.webhooks_served:
        assert "label      internal.serving.kserve.io/localmodel=all-minilm-l6-v2" in text
        assert "label      internal.serving.kserve.io/localmodel-namespace=my-team" in text
