"""The short, seeded chaos run that ``make test`` includes (``make chaos`` is the long form).

It runs the real runner (``python -m chaos.run``) as a subprocess, so the fault injection, SIGKILLs and
API server restarts cannot touch this test session's shared control plane, and checks what the runner
prints last: every fault kind injected at least once where it could apply, one run, and zero invariant
violations (with the violations themselves shown on failure).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localcache.testing.envtest import assets_dir

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parents[3]
SEED = 20261128
#: Kinds that must hit every run; download_kill needs a download running at that instant and disk_full
#: a tmpfs, so they are reported but not required.
REQUIRED = {
    "apiserver_restart",
    "watch_drop",
    "api_error",
    "watch_410",
    "manager_kill",
    "agent_kill",
    "source_corrupt",
    "source_truncate",
}


def test_short_seeded_chaos_run_keeps_every_invariant() -> None:
    if not (assets_dir() / "kube-controller-manager").is_file():
        pytest.skip("needs the envtest binaries with kube-controller-manager (make envtest)")
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(assets_dir()), "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "chaos.run",
        "--runs=1",
        f"--seed={SEED}",
        "--window=40",
        "--faults=12",
        "--converge-within=180",
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    out = proc.stdout
    tail = "\n".join(out.splitlines()[-30:]) + "\n--- stderr tail ---\n" + proc.stderr[-3000:]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^  fault (\w+): (\d+)$", out, re.M)}
    violations = re.search(r"^invariant violations: (\d+)$", out, re.M)
    assert violations is not None, f"the runner printed no summary:\n{tail}"
    assert re.search(r"^runs: 1$", out, re.M), tail
    assert int(violations[1]) == 0, f"invariants violated:\n{tail}"
    assert proc.returncode == 0, tail
    missing = sorted(k for k in REQUIRED if counts.get(k, 0) == 0)
    assert not missing, f"fault kinds never injected: {missing}\n{tail}"
    assert out.splitlines()[-1].startswith("invariant violations:"), "the counts must be the last lines"
