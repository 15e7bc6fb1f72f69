"""The agent's structured status: capacity, and per model reason, times, attempt, next retry, bytes.

Same in-memory world as test_node_agent (virtual time); these tests assert the fields, not the text.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from localcache.api import storage_key
from localcache.controllers import node as node_module
from localcache.controllers.nodegroup import node_usage
from localcache.storage.layout import STAGING_NAME, STATE_DIR
from tests.unit.controllers.test_node_agent import NODE_GROUPS, T0, URI, entry, group, make_world, ts

FAIL_AUTH = "localcache-download error: reason=AuthFailed exit_code=10 message=hf://org/model-a: 401"
FAIL_GONE = "localcache-download error: reason=NotFound exit_code=11 message=gone"


def write_state(folder: Path, name: str, size: int, range_size: int, done: list[int], partial: int) -> None:
    """A preallocated staging file and its resume state, as the download program leaves them."""
    staging = folder / STAGING_NAME
    (staging / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with open(staging / name, "wb") as f:
        f.truncate(size)  # preallocated: on disk at full size from the start
    ranges = [[a, min(a + range_size, size)] for a in range(0, size, range_size)]
    state = {
        "size": size,
        "expected": {},
        "locator_hash": "x",
        "range_size": ranges,
        "done": done,
        "partial": {str(len(done)): partial} if partial else {},
        "verified": None,
        "final_size": None,
    }
    (staging / STATE_DIR / f"{name}.json").write_text(json.dumps(state))


async def test_downloaded_model_has_times_sizes_and_no_reason(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    job = w.jobs()[0]
    w.write_model()
    w.set_job_condition(job, "Complete")
    await w.reconcile()
    assert w.status("m1") == "ModelDownloaded"
    # the steady state carries only what modelStatus cannot say: a node holds many such models
    assert w.detail("m1") == {
        "bytes": 1002,
        "startTime": ts(T0 - timedelta(seconds=42)),
        "completionTime": ts(T0),
    }


async def test_pending_job_has_start_time_and_attempt_but_no_completion(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    d = w.detail("m1")
    assert d["status"] == "ModelDownloadPending"
    assert d["attempt"] == 1 and d["startTime"] == ts(T0)
    assert "completionTime" not in d and "reason" not in d


async def test_progress_from_the_resume_state_against_the_preallocated_total(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    await w.clock.advance(3)
    w.set_job_running(w.jobs()[0])
    folder = tmp_path / "models" / storage_key(URI)
    write_state(folder, "a.bin", 100_000, 10_000, done=[0, 1], partial=500)
    write_state(folder, "b.bin", 100_000, 10_000, done=[], partial=0)
    await w.reconcile()
    d = w.detail("m1")
    assert d["status"] == "ModelDownloading"
    assert d["bytes"] == 20_500 and d["totalBytes"] == 200_000
    assert d["startTime"] == ts(T0 + timedelta(seconds=3)) and d["attempt"] == 1
    assert "10%" in d["message"]
    # More progress 10 s later: held back (at most every 30 s).
    write_state(folder, "a.bin", 100_000, 10_000, done=list(range(10)), partial=0)
    await w.clock.advance(10)
    await w.reconcile()
    assert w.detail("m1")["bytes"] == 20_500
    await w.clock.advance(25)
    await w.reconcile()
    assert w.detail("m1")["bytes"] == 100_000 and w.detail("m1")["totalBytes"] == 200_000
    # Under 5 % of the total after another 30 s: not published.
    write_state(folder, "b.bin", 100_000, 10_000, done=[], partial=9_000)
    await w.clock.advance(31)
    await w.reconcile()
    assert w.detail("m1")["bytes"] == 100_000


async def test_failed_job_sets_reason_and_next_attempt_then_retry_clears_them(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    first = w.jobs()[0]
    w.set_job_running(first)
    await w.reconcile()
    w.set_job_condition(first, "Failed", message=FAIL_AUTH, reason="BackoffLimitExceeded")
    await w.reconcile()
    d = w.detail("m1")
    assert d["status"] == "ModelDownloadError"
    assert d["reason"] == "AuthFailed"
    assert d["attempt"] == 1
    assert d["nextAttemptTime"] == ts(T0 + timedelta(seconds=60))
    assert d["startTime"] == ts(T0)
    assert "completionTime" not in d
    # Waiting for the retry rewrites nothing: the retry time is fixed, not recomputed each pass.
    writes = len(w.client.verbs("patch_status"))
    for _ in range(3):
        await w.clock.advance(13.7)
        await w.reconcile()
    assert len(w.client.verbs("patch_status")) == writes
    await w.clock.advance(60)
    await w.reconcile()
    d = w.detail("m1")
    assert d["status"] == "ModelDownloadPending"
    assert d["attempt"] == 2
    assert "reason" not in d and "nextAttemptTime" not in d
    assert "previous attempt failed: AuthFailed" in d["message"]  # the text still says why
    second = w.jobs()[0]
    w.set_job_condition(second, "Failed", message=FAIL_GONE)
    await w.reconcile()
    d = w.detail("m1")
    assert d["reason"] == "NotFound" and d["attempt"] == 2
    failed_at = T0 + timedelta(seconds=60 + 3 * 13.7)
    assert d["nextAttemptTime"] == ts((failed_at + timedelta(seconds=120)).replace(microsecond=0))


async def test_backoff_reason_kept_when_the_failed_job_is_gone(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    job = w.jobs()[0]
    w.set_job_condition(job, "Failed", message=FAIL_AUTH)
    await w.reconcile()
    del w.client.objects[("jobs", "models-jobs", job["metadata"]["name"])]
    await w.clock.advance(10)
    await w.reconcile()
    d = w.detail("m1")
    assert d["reason"] == "AuthFailed" and d["nextAttemptTime"] == ts(T0 + timedelta(seconds=60))


async def test_marker_missing_and_agent_reasons(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    w.set_job_condition(w.jobs()[0], "Complete")
    await w.reconcile()
    assert w.detail("m1")["reason"] == "MarkerMissing"

    w = make_world(tmp_path / "b", entry("m1", storage={"key": "hf-token"}))
    await w.reconcile()
    assert w.detail("m1")["reason"] == "StorageSecretNotFound"
    assert "attempt" not in w.detail("m1")

    w = make_world(tmp_path / "c", entry("m1"), host_path="/mnt/elsewhere")
    await w.reconcile()
    assert w.detail("m1")["reason"] == "HostPathMismatch"


async def test_deadline_exceeded_reason_is_timeout(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    await w.reconcile()
    w.set_job_condition(w.jobs()[0], "Failed", reason="DeadlineExceeded", message="Job was active too long")
    await w.reconcile()
    assert w.detail("m1")["reason"] == "Timeout"


async def test_capacity_matches_statvfs_of_the_models_root(tmp_path: Path) -> None:
    w = make_world(tmp_path, entry("m1"))
    w.write_model()
    await w.reconcile()
    cap = w.lmn()["status"]["capacity"]
    st = os.statvfs(tmp_path)
    assert cap["totalBytes"] == st.f_blocks * st.f_frsize > 0
    assert 0 < cap["usedBytes"] <= cap["totalBytes"]
    assert 0 <= cap["availableBytes"] <= cap["totalBytes"] - cap["usedBytes"] + st.f_bfree * st.f_frsize
    # The node-group controller reads these names.
    used, available = node_usage(w.lmn(), "gpu", {})
    assert used == cap["usedBytes"] and available == cap["availableBytes"]


async def test_capacity_is_rate_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = {"free": 600}

    def statvfs(_path: Any) -> Any:
        return SimpleNamespace(f_blocks=1000, f_frsize=4096, f_bfree=disk["free"], f_bavail=disk["free"] - 50)

    monkeypatch.setattr(node_module.os, "statvfs", statvfs)
    w = make_world(tmp_path, entry("m1"))
    w.client.put(NODE_GROUPS, group())
    w.write_model()
    await w.reconcile()
    assert w.lmn()["status"]["capacity"] == {
        "totalBytes": 4_096_000,
        "usedBytes": 400 * 4096,
        "availableBytes": 550 * 4096,
    }
    disk["free"] = 500  # 10 % of the disk more used, 10 s later: held back
    await w.clock.advance(10)
    await w.reconcile()
    assert w.lmn()["status"]["capacity"]["usedBytes"] == 400 * 4096
    await w.clock.advance(25)
    await w.reconcile()
    assert w.lmn()["status"]["capacity"]["usedBytes"] == 500 * 4096
    assert w.lmn()["status"]["capacity"]["availableBytes"] == 450 * 4096
    disk["free"] = 490  # 1 %: not worth a write
    await w.clock.advance(60)
    writes = len(w.client.verbs("patch_status"))
    await w.reconcile()
    assert w.lmn()["status"]["capacity"]["usedBytes"] == 500 * 4096
    assert len(w.client.verbs("patch_status")) == writes
