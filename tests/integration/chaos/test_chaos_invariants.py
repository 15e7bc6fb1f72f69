"""The chaos invariants can fail: each checker is shown a broken state and must say what is wrong
(a runner whose checks always pass would prove nothing)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path

from chaos.invariants import (
    file_digests,
    marker_ok,
    not_ours_intact,
    processes_left,
    storage_key,
    verified_folder,
)
from chaos.run import FAULT_KINDS, RunResult, summary

URI = "hf://o/m"


def _folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / storage_key(URI)
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 10)
    (folder / "sub" / "b.json").write_bytes(b"{}")
    files = [
        {
            "path": p,
            "size": (folder / p).stat().st_size,
            "digests": {"sha256": hashlib.sha256((folder / p).read_bytes()).hexdigest()},
        }
        for p in ("a.bin", "sub/b.json")
    ]
    (folder / ".localcache-complete.json").write_text(json.dumps({"uri": URI, "files": files}))
    return folder, file_digests(folder)


def test_a_complete_folder_passes(tmp_path: Path) -> None:
    folder, source = _folder(tmp_path)
    assert storage_key(URI) == hashlib.sha256(URI.encode()).hexdigest()[:16]
    assert marker_ok(folder, URI)
    assert verified_folder(folder, URI, source) is None


def test_broken_folders_are_caught(tmp_path: Path) -> None:
    folder, source = _folder(tmp_path)
    assert verified_folder(folder, "hf://other/m", source) is not None
    assert not marker_ok(folder, "hf://other/m")
    (folder / "a.bin").write_bytes(b"b" * 10)  # same size, other bytes
    assert marker_ok(folder, URI), "the cheap check trusts sizes only"
    assert "wrong bytes=['a.bin']" in (verified_folder(folder, URI, source) or "")
    (folder / "sub" / "b.json").unlink()
    assert not marker_ok(folder, URI)
    assert "missing=['sub/b.json']" in (verified_folder(folder, URI, source) or "")
    (folder / ".localcache-complete.json").unlink()
    assert "no readable completion marker" in (verified_folder(folder, URI, source) or "")


def test_not_ours_files_changed_or_deleted_are_caught(tmp_path: Path) -> None:
    kept, changed, gone = tmp_path / "kept", tmp_path / "changed", tmp_path / "gone"
    for p in (kept, changed, gone):
        p.write_bytes(b"admin")
    changed.write_bytes(b"other")
    gone.unlink()
    found = not_ours_intact({kept: b"admin", changed: b"admin", gone: b"admin"})
    assert found == [f"{changed} (not ours) was changed", f"{gone} (not ours) was deleted"]


def test_a_process_left_running_is_caught() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert any(str(proc.pid) in v for v in processes_left([proc.pid]))
    finally:
        proc.kill()
        proc.wait()
    assert processes_left([proc.pid]) == []


def test_the_counts_are_the_last_lines() -> None:
    result = RunResult(seed=1, faults=Counter({"watch_drop": 2}), violations=["x"])
    lines = summary([result, RunResult(seed=2)])
    assert lines[-3:] == ["runs: 2", "faults injected: 2", "invariant violations: 1"]
    assert "  fault watch_drop: 2" in lines
    assert all(f"  fault {k}: " in "\n".join(lines) for k in FAULT_KINDS)


class _FakeClient:
    """Answers LISTs from a dict keyed by kind: enough for the secret scan."""

    def __init__(self, items: dict[str, list[dict[str, object]]]) -> None:
        self.items = items

    async def list(self, res: object, namespace: object = None) -> dict[str, object]:
        return {"items": self.items.get(res.kind, [])}  # type: ignore[attr-defined]


async def test_a_secret_value_anywhere_is_caught(tmp_path: Path) -> None:
    from chaos.invariants import LOCAL_MODEL_NODES, secrets_by_value

    canary = "canary-7f3a9c"
    log = tmp_path / "agent.log"
    log.write_text(f"downloading with token={canary}\n")
    clean = tmp_path / "manager.log"
    clean.write_text("nothing to see\n")
    client = _FakeClient(
        {
            "Job": [{"metadata": {"name": "j", "namespace": "ns"}, "spec": {"env": [{"value": canary}]}}],
            "Event": [{"metadata": {"name": "e", "namespace": "ns"}, "message": "fine"}],
            "LocalModelNode": [{"metadata": {"name": "n"}, "status": {"message": f"auth {canary}"}}],
        }
    )
    found = await secrets_by_value(client, {"HF_TOKEN": canary}, [log, clean], [LOCAL_MODEL_NODES])  # type: ignore[arg-type]
    assert found == [
        "the secret value 'HF_TOKEN' appears in Job ns/j",
        "the secret value 'HF_TOKEN' appears in LocalModelNode n status",
        "the secret value 'HF_TOKEN' appears in log agent.log",
    ]
