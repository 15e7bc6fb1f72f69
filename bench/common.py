"""What every benchmark's result file shares: the machine, the versions, and the result rows.

Numbers from a 2-core shared machine mean little without knowing the machine, the load on it and the
exact code that produced them, so every file under ``bench/results/`` carries them next to its rows::

    {"machine": {...}, "versions": {...}, "results": [{"scenario", "tool", "metric", "value", "unit"}]}

Extra top-level keys (parameters, checks) are allowed; ``bench/report.py`` reads only ``results``,
``machine`` and ``versions``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
#: Libraries whose versions decide the figures of more than one benchmark.
KEY_LIBRARIES: tuple[str, ...] = (
    "localcache",
    "kubernetes_asyncio",
    "aiohttp",
    "pydantic",
    "prometheus_client",
    "orjson",
)


@dataclass(frozen=True)
class Row:
    """One figure: ``tool`` is ``localcache`` or a peer's name (peers' rows come from the same run)."""

    scenario: str
    tool: str
    metric: str
    value: float | int | None
    unit: str


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python, and the load average when called (the machine is
    shared: a high load explains slow wall-clock figures)."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _mem_total_bytes(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _git_commit() -> str | None:
    """``BENCH_GIT_COMMIT`` when the benchmark runs from an exported tree (``git archive``), else HEAD."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def versions(
    extra: Mapping[str, str | None] | None = None, libraries: Iterable[str] = KEY_LIBRARIES
) -> dict[str, Any]:
    """Installed versions of ``libraries`` (absent ones left out), the git commit, plus ``extra``
    (e.g. ``{"kubernetes": "1.36.3"}``)."""
    out: dict[str, Any] = {"git_commit": _git_commit(), "python": sys.version.split()[0]}
    for name in libraries:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    for key, value in (extra or {}).items():
        if value is not None:
            out[key] = value
    return out


class Results:
    """Collects rows and writes one result file."""

    def __init__(self, tool: str = "localcache") -> None:
        self.tool = tool
        self.rows: list[Row] = []

    def add(
        self, scenario: str, metric: str, value: float | int | None, unit: str, *, tool: str | None = None
    ) -> None:
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, 4)
        self.rows.append(Row(scenario, tool or self.tool, metric, value, unit))

    def write(
        self,
        path: Path,
        *,
        version_extra: Mapping[str, str | None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        doc: dict[str, Any] = {
            "machine": machine_info(),
            "versions": versions(version_extra),
            "written_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **dict(extra or {}),
            "results": [asdict(r) for r in self.rows],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)
        return path


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log(y) against log(x): the scaling exponent (1.0 = linear).

    None with fewer than two distinct positive x values."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len({p[0] for p in pairs}) < 2:
        return None
    mx = sum(p[0] for p in pairs) / len(pairs)
    my = sum(p[1] for p in pairs) / len(pairs)
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pairs)
    return sxy / sxx
