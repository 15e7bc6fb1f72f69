"""On-disk garbage collection of model folders no LocalModelNode entry wants any more.

KServe deletes every directory under ``<root>/models`` that is not a wanted storage key, foreign ones
included, immediately (reference §3.5, §8.B-15), so a cache deleted and re-created a minute later is
downloaded again and an admin's directory vanishes. Here, only names this project creates are ever
touched: storage-key folders (exactly 16 lowercase hex digits) and the download program's sibling
staging/trash folders of such keys (``.<key>.localcache-staging``, ``.<key>.localcache-trash-<pid>``).
Symlinks, regular files and any other name are left alone. A folder must stay unwanted for the whole
grace period (10 minutes by default), measured on an injectable clock, before it is removed; if it is
wanted again meanwhile, its timer resets.

The timers survive an agent restart: when the set of orphans changes, the wall-clock time each was first
seen unreferenced is written (atomically) to ``<models>/.localcache-gc.json``. Without that, an agent
restarted more often than the grace period (an OOM loop, a rolling update every few minutes) would never
delete anything. Within one process the timers run on the monotonic clock; a saved time only says how much
of the grace period had passed before the restart, clamped to [0, grace], so a wall clock set back never
deletes early, and an unreadable state file only starts the timers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from localcache.runtime import SYSTEM_CLOCK, Clock

__all__ = ["DEFAULT_GRACE_SECONDS", "GC_STATE_NAME", "STORAGE_KEY_RE", "DiskGC", "GCResult", "owned_key"]

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 600.0
STORAGE_KEY_RE = re.compile(r"^[0-9a-f]{16}$")
GC_STATE_NAME = ".localcache-gc.json"
_SIBLING_RE = re.compile(r"^\.([0-9a-f]{16})\.localcache-(?:staging|trash-\d+)$")


def owned_key(name: str) -> str | None:
    """The storage key a directory name belongs to, if the name is one this project creates."""
    if STORAGE_KEY_RE.match(name):
        return name
    match = _SIBLING_RE.match(name)
    return match.group(1) if match else None


@dataclass
class GCResult:
    deleted: list[str] = field(default_factory=list)
    waiting: dict[str, float] = field(default_factory=dict)
    """Orphaned names still inside their grace period → seconds left."""
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def next_due(self) -> float | None:
        """Seconds until the next deletion is due, if any folder is waiting."""
        return min(self.waiting.values()) if self.waiting else None


class DiskGC:
    """Deletes our orphaned folders under ``models_dir`` once their grace period has passed."""

    def __init__(
        self, models_dir: Path, *, grace_seconds: float = DEFAULT_GRACE_SECONDS, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if grace_seconds < 0:
            raise ValueError(f"disk GC grace period must not be negative, got {grace_seconds}")
        self.models_dir = Path(models_dir)
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._orphaned_since: dict[str, tuple[float, float]] = {}
        """name -> when it was first seen unreferenced: (monotonic, the same instant as a wall-clock
        epoch). The timers run on the first; the state file keeps the second."""
        self._loaded = False

    @property
    def state_path(self) -> Path:
        return self.models_dir / GC_STATE_NAME

    def _load(self) -> None:
        """Restart the saved timers: each resumes with the time already served before the restart."""
        try:
            saved = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("disk gc: ignoring unreadable state %s: %s", self.state_path, exc)
            return
        if not isinstance(saved, dict):
            return
        mono, wall = self.clock.monotonic(), self.clock.now().timestamp()
        for name, since in saved.items():
            if owned_key(name) is None or not isinstance(since, int | float):
                continue
            served = min(max(wall - float(since), 0.0), self.grace_seconds)
            self._orphaned_since[name] = (mono - served, float(since))

    def _save(self) -> None:
        if not self._orphaned_since and not self.state_path.exists():
            return
        saved = {name: wall for name, (_, wall) in self._orphaned_since.items()}
        tmp = self.state_path.with_name(f"{GC_STATE_NAME}.tmp")
        try:
            tmp.write_text(json.dumps(saved, sort_keys=True))
            tmp.replace(self.state_path)
        except OSError as exc:  # the timers still run in memory; a restart only delays a deletion
            log.warning("disk gc: cannot save state %s: %s", self.state_path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _candidates(self, wanted: set[str]) -> list[Path]:
        try:
            entries = list(self.models_dir.iterdir())
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            key = owned_key(entry.name)
            if key is None or key in wanted:
                continue
            if entry.is_symlink() or not entry.is_dir():
                continue
            out.append(entry)
        return out

    async def collect(self, wanted: Iterable[str]) -> GCResult:
        """One pass: start timers for new orphans, delete those past the grace period."""
        wanted_set = set(wanted)
        if not self._loaded:
            self._loaded = True
            await asyncio.to_thread(self._load)
        now = self.clock.monotonic()
        result = GCResult()
        candidates = await asyncio.to_thread(self._candidates, wanted_set)
        names = {c.name for c in candidates}
        before = set(self._orphaned_since)
        for gone in before - names:
            del self._orphaned_since[gone]
        wall = self.clock.now().timestamp()
        for name in names - before:
            self._orphaned_since[name] = (now, wall)
        for path in candidates:
            since, _ = self._orphaned_since[path.name]
            left = since + self.grace_seconds - now
            if left > 0:
                result.waiting[path.name] = left
                continue
            try:
                await asyncio.to_thread(shutil.rmtree, path)
            except OSError as exc:
                result.failed[path.name] = exc.strerror or str(exc)
                log.warning(
                    "disk gc: cannot delete %s: %s", path, exc, extra={"path": str(path), "error": str(exc)}
                )
                continue
            del self._orphaned_since[path.name]
            result.deleted.append(path.name)
            log.info("disk gc: deleted unreferenced model folder %s", path, extra={"path": str(path)})
        if set(self._orphaned_since) != before:
            await asyncio.to_thread(self._save)
        return result
