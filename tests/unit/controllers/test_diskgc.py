"""On-disk GC: only our storage-key folders, only after the grace period, never foreign entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcache.controllers.diskgc import GC_STATE_NAME, DiskGC, owned_key
from localcache.runtime.clock import FakeClock

KEEP = "0123456789abcdef"
ORPHAN = "fedcba9876543210"


def tree(root: Path) -> dict[str, Path]:
    models = root / "models"
    paths = {
        "keep": models / KEEP,
        "orphan": models / ORPHAN,
        "staging": models / f".{ORPHAN}.localcache-staging",
        "kept_staging": models / f".{KEEP}.localcache-staging",
        "upper": models / "0123456789ABCDEF",  # not ours: upper case
        "short": models / "0123456789abcde",
        "foreign": models / "my-notes",
    }
    for p in paths.values():
        p.mkdir(parents=True)
        (p / "f").write_bytes(b"x")
    file_like_key = models / "aaaaaaaaaaaaaaaa"
    file_like_key.write_bytes(b"a regular file with a key-shaped name")
    paths["file"] = file_like_key
    target = root / "elsewhere"
    target.mkdir()
    (target / "precious").write_bytes(b"x")
    link = models / "bbbbbbbbbbbbbbbb"
    link.symlink_to(target)
    paths["link"] = link
    paths["target"] = target
    return paths


def test_owned_key() -> None:
    assert owned_key(KEEP) == KEEP
    assert owned_key(f".{KEEP}.localcache-trash-12") == KEEP
    assert owned_key(f".{KEEP}.localcache-staging") == KEEP
    for name in ("0123456789ABCDEF", "0123456789abcdef0", "x" * 16, ".localcache-staging", "models"):
        assert owned_key(name) is None


async def test_deletes_only_our_orphans_after_the_grace_period(tmp_path: Path) -> None:
    clock = FakeClock()
    paths = tree(tmp_path)
    gc = DiskGC(tmp_path / "models", grace_seconds=600, clock=clock)
    first = await gc.collect({KEEP})
    assert first.deleted == []
    assert set(first.waiting) == {ORPHAN, f".{ORPHAN}.localcache-staging"}
    assert first.next_due == pytest.approx(600)
    await clock.advance(599)
    assert (await gc.collect({KEEP})).deleted == []
    await clock.advance(1)
    result = await gc.collect({KEEP})
    assert sorted(result.deleted) == sorted([ORPHAN, f".{ORPHAN}.localcache-staging"])
    assert not paths["orphan"].exists() and not paths["staging"].exists()
    for name in ("keep", "kept_staging", "upper", "short", "foreign", "file", "link"):
        assert paths[name].exists() or paths[name].is_symlink(), name
    assert (paths["target"] / "precious").exists()


async def test_wanted_again_resets_the_timer(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = tmp_path / "models" / ORPHAN
    folder.mkdir(parents=True)
    gc = DiskGC(tmp_path / "models", grace_seconds=100, clock=clock)
    await gc.collect(set())
    await clock.advance(90)
    await gc.collect({ORPHAN})  # a cache for it came back
    await clock.advance(20)
    assert (await gc.collect(set())).deleted == []
    assert folder.exists()
    await clock.advance(100)
    assert (await gc.collect(set())).deleted == [ORPHAN]


async def test_missing_models_dir_is_empty(tmp_path: Path) -> None:
    gc = DiskGC(tmp_path / "absent", grace_seconds=0, clock=FakeClock())
    result = await gc.collect(set())
    assert result.deleted == [] and result.waiting == {} and result.next_due is None


def test_negative_grace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="grace"):
        DiskGC(tmp_path, grace_seconds=-1)


async def test_timers_survive_a_restart(tmp_path: Path) -> None:
    """An agent restarted more often than the grace period still deletes: the time served is kept."""
    clock = FakeClock()
    folder = tmp_path / "models" / ORPHAN
    folder.mkdir(parents=True)
    first = DiskGC(tmp_path / "models", grace_seconds=600, clock=clock)
    await first.collect(set())
    await clock.advance(400)
    restarted = DiskGC(tmp_path / "models", grace_seconds=600, clock=clock)
    result = await restarted.collect(set())
    assert result.waiting[ORPHAN] == pytest.approx(200)
    await clock.advance(200)
    assert (await restarted.collect(set())).deleted == [ORPHAN]
    assert json.loads((tmp_path / "models" / GC_STATE_NAME).read_text()) == {}


async def test_saved_timers_never_shorten_the_grace_period(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / ORPHAN).mkdir(parents=True)
    (models / KEEP).mkdir()
    clock = FakeClock()
    # a wall clock set back (a time in the future) serves nothing; a stale name is dropped; a
    # foreign name in the file is ignored
    future = clock.now().timestamp() + 3600
    (models / GC_STATE_NAME).write_text(json.dumps({ORPHAN: future, "my-notes": 0, KEEP: 0}))
    gc = DiskGC(models, grace_seconds=600, clock=clock)
    result = await gc.collect({KEEP})
    assert result.waiting == {ORPHAN: pytest.approx(600)}
    assert set(json.loads((models / GC_STATE_NAME).read_text())) == {ORPHAN}


async def test_unreadable_state_starts_the_timers_again(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / ORPHAN).mkdir(parents=True)
    (models / GC_STATE_NAME).write_text("{not json")
    gc = DiskGC(models, grace_seconds=600, clock=FakeClock())
    assert (await gc.collect(set())).waiting == {ORPHAN: pytest.approx(600)}
    assert ORPHAN in json.loads((models / GC_STATE_NAME).read_text())


async def test_a_tidy_disk_writes_no_state_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / KEEP).mkdir(parents=True)
    gc = DiskGC(models, grace_seconds=600, clock=FakeClock())
    await gc.collect({KEEP})
    assert not (models / GC_STATE_NAME).exists()
