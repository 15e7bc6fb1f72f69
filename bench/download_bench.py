"""Download benchmark: our downloader vs huggingface_hub.snapshot_download (same local hub) and vs
s3fs `get` and boto3's transfer manager (same moto S3 server), each source open and capped.

    make bench-download                    # 4 x 1 GiB shards + small files
    BENCH_SHARD_MIB=64 make bench-download # a quick run
    BENCH_ROUNDS=1 BENCH_SCENARIOS=hf-capped,s3-capped make bench-download

Every tool runs in its own child process; wall time is measured around it and peak RSS is that
child's ru_maxrss (os.wait4). Writes bench/results/download.json. The servers run in their own
processes, so their CPU competes with the client's on this 2-core machine, as it would not in a
real cluster: figures are relative, and noisy when other work runs on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcache.testing.models import generate_model  # noqa: E402
from localcache.testing.s3server import S3Server, spawn_server  # noqa: E402

MiB = 1024 * 1024
SHARD_MIB = int(os.environ.get("BENCH_SHARD_MIB", "1024"))
SHARDS = int(os.environ.get("BENCH_SHARDS", "4"))
CAP = float(os.environ.get("BENCH_CAP_MBPS", "50")) * 1_000_000  # MB/s, per connection
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
ONLY = {s for s in os.environ.get("BENCH_SCENARIOS", "").split(",") if s}
DATA = (
    Path(os.environ.get("BENCH_DIR", Path.home() / ".cache/localcache/bench")) / f"model-{SHARDS}x{SHARD_MIB}"
)
RESULTS = Path(os.environ.get("BENCH_OUT") or REPO / "bench/results/download.json")
# Where the tools write: a disk-backed temporary directory by default; BENCH_DEST_DIR=/dev/shm measures
# the transfer without this machine's disk (a virtio disk that sustains ~330 MB/s, below the tools).
DEST_DIR = os.environ.get("BENCH_DEST_DIR") or None
PY = sys.executable
REPO_ID = "bench/model"
BUCKET = "bench"


def run_child(args: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit code, stderr tail) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    # Drain stderr in a thread so a chatty child never blocks on a full pipe.
    import threading

    tail: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            del tail[:-20]

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    t.join(timeout=5)
    return wall, usage.ru_maxrss / 1024, proc.returncode, "".join(tail[-5:])


def tool_commands(scenario: str, endpoint: str, dest: Path, s3env: dict[str, str]) -> dict[str, list[str]]:
    # "localcache" runs with LOCALCACHE_FSYNC=0, the peers' durability (none of them fsyncs);
    # "localcache+fsync" is the default, which fsyncs every file before writing the marker.
    if scenario.startswith("hf"):
        return {
            "localcache": [
                "env",
                "LOCALCACHE_FSYNC=0",
                PY,
                str(REPO / "cmd/download.py"),
                f"hf://{REPO_ID}",
                str(dest),
            ],
            "localcache+fsync": [PY, str(REPO / "cmd/download.py"), f"hf://{REPO_ID}", str(dest)],
            "snapshot_download": [
                PY,
                "-c",
                "import sys; from huggingface_hub import snapshot_download;"
                f"snapshot_download({REPO_ID!r}, cache_dir=sys.argv[1], endpoint={endpoint!r})",
                str(dest),
            ],
        }
    return {
        "localcache": [
            "env",
            "LOCALCACHE_FSYNC=0",
            PY,
            str(REPO / "cmd/download.py"),
            f"s3://{BUCKET}/model/",
            str(dest),
        ],
        "localcache+fsync": [PY, str(REPO / "cmd/download.py"), f"s3://{BUCKET}/model/", str(dest)],
        "s3fs.get": [
            PY,
            "-c",
            "import os, sys, s3fs; fs = s3fs.S3FileSystem(key=os.environ['AWS_ACCESS_KEY_ID'],"
            " secret=os.environ['AWS_SECRET_ACCESS_KEY'],"
            " endpoint_url=os.environ['AWS_ENDPOINT_URL']);"
            f" fs.get('{BUCKET}/model/', sys.argv[1] + '/', recursive=True)",
            str(dest),
        ],
        "boto3.transfer": [
            PY,
            "-c",
            "import os, sys, boto3; from boto3.s3.transfer import TransferConfig, create_transfer_manager;"
            " c = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']);"
            " keys = [o['Key'] for p in c.get_paginator('list_objects_v2').paginate("
            f"Bucket='{BUCKET}', Prefix='model/') for o in p.get('Contents', [])];"
            " tm = create_transfer_manager(c, TransferConfig());"
            " fs = [];"
            " [os.makedirs(os.path.dirname(os.path.join(sys.argv[1], k)), exist_ok=True) for k in keys];"
            f" fs = [tm.download('{BUCKET}', k, os.path.join(sys.argv[1], k)) for k in keys];"
            " [f.result() for f in fs]; tm.shutdown()",
            str(dest),
        ],
    }


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the finally blocks: stop the servers


def main() -> int:
    import signal

    signal.signal(signal.SIGTERM, _stop)
    t_gen = time.perf_counter()
    generate_model(DATA, shards=SHARDS, shard_bytes=SHARD_MIB * MiB)
    total = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"model {DATA}: {total} bytes ({time.perf_counter() - t_gen:.1f}s to prepare)", flush=True)
    procs: list[subprocess.Popen[str]] = []
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="localcache-bench-", dir=DEST_DIR))
    s3 = S3Server(cap=CAP)
    try:
        # The open and the capped hub are two processes serving the same files; the capped one has
        # the kernel pace each connection (no proxy copying bytes on the clients' two cores).
        hub = ["-m", "localcache.testing.hfhub", "--repo", f"{REPO_ID}={DATA}"]
        hub_proc, (hub_url,) = spawn_server(hub)
        procs.append(hub_proc)
        hub_capped_proc, (hub_capped,) = spawn_server([*hub, "--cap", str(CAP)])
        procs.append(hub_capped_proc)
        endpoints = {"hf-open": hub_url, "hf-capped": hub_capped}
        if not ONLY or any(s.startswith("s3") for s in ONLY):
            s3.start()
            t_up = time.perf_counter()
            s3.create_bucket(BUCKET)
            # Single-part uploads with sha256 checksums: every object, shards included, has a digest
            # to verify against, as a model uploaded with `aws s3 cp --checksum-algorithm SHA256` has.
            s3.upload_dir(BUCKET, "model/", DATA, sha256=True)
            print(f"uploaded to moto in {time.perf_counter() - t_up:.1f}s", flush=True)
            endpoints["s3-open"] = s3.direct_url
            endpoints["s3-capped"] = s3.url
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_", "S3_"))}
        base_env.update({"LOCALCACHE_TERMINATION_LOG": "", "HF_HUB_DISABLE_TELEMETRY": "1"})
        # One untimed download first: on a fresh VM the first run to touch gigabytes of memory pays
        # for the host mapping it in (1-3 s here), whichever tool it is.
        warm = tool_commands("hf-open", hub_url, work / "dest", {})["localcache"]
        run_child(warm, {**base_env, "HF_ENDPOINT": hub_url})
        shutil.rmtree(work / "dest", ignore_errors=True)
        for scenario, endpoint in endpoints.items():
            if ONLY and scenario not in ONLY:
                continue
            env = dict(base_env)
            s3env = {
                "AWS_ACCESS_KEY_ID": "localcache-access",
                "AWS_SECRET_ACCESS_KEY": "localcache-secret",
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_REGION": "us-east-1",
            }
            if scenario.startswith("hf"):
                env["HF_ENDPOINT"] = endpoint
            else:
                env.update(s3env)
            for round_no in range(ROUNDS):
                tools = list(tool_commands(scenario, endpoint, work / "dest", s3env).items())
                if round_no % 2:
                    tools.reverse()  # no tool always runs first, or always right after another
                for tool, cmd in tools:
                    dest = work / "dest"
                    shutil.rmtree(dest, ignore_errors=True)
                    for stale in work.glob(".dest*"):
                        shutil.rmtree(stale, ignore_errors=True)
                    cmd = [c if c != str(work / "dest") else str(dest) for c in cmd]
                    # Every tool starts with no dirty pages queued (the upload's, the last tool's).
                    os.sync()
                    wall, rss, code, tail = run_child(cmd, env)
                    got = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
                    ok = code == 0 and got >= total
                    print(
                        f"{scenario:10s} {tool:18s} round {round_no}: {wall:7.2f}s "
                        f"{total / wall / 1e6:8.1f} MB/s rss {rss:6.1f} MiB exit {code} bytes {got}",
                        flush=True,
                    )
                    if not ok:
                        notes.append(
                            f"{scenario} {tool}: exit {code}, {got}/{total} bytes: {tail.strip()[-300:]}"
                        )
                        continue
                    for metric, value, unit in (
                        ("wall_s", round(wall, 3), "s"),
                        ("bytes_per_s", round(total / wall), "B/s"),
                        ("peak_rss_mib", round(rss, 1), "MiB"),
                    ):
                        results.append(
                            {
                                "scenario": scenario,
                                "tool": tool,
                                "metric": metric,
                                "value": value,
                                "unit": unit,
                            }
                        )
    finally:
        s3.stop()
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    if os.environ.get("BENCH_MERGE") == "1" and RESULTS.exists():
        # Keep the earlier figures of the scenarios this run did not measure.
        done = {r["scenario"] for r in results}
        old = json.loads(RESULTS.read_text())
        results = [r for r in old.get("results", []) if r["scenario"] not in done] + results
        notes = [*old.get("notes", []), *notes]
    ratios = summarize(results)
    out = {
        "machine": machine(),
        "versions": versions(),
        "params": {
            "shards": SHARDS,
            "shard_bytes": SHARD_MIB * MiB,
            "total_bytes": total,
            "cap_bytes_per_s_per_connection": CAP,
            "cap_by": "kernel TCP pacing per connection (SO_MAX_PACING_RATE) in the hub and moto",
            "dest_filesystem": filesystem_of(Path(DEST_DIR or tempfile.gettempdir())),
            "rounds": ROUNDS,
        },
        "results": results,
        "ratios": ratios,
        "notes": notes,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    for r in ratios:
        print(
            f"{r['scenario']:10s} {r['tool']}/{r['peer']:18s} wall ratio {r['wall_ratio']:.2f} "
            f"(goal {r['goal']}) {'OK' if r['met'] else 'MISSED'}"
        )
    print(f"wrote {RESULTS}")
    return 0


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best-of-rounds wall time of ours over each peer's, per scenario."""
    best: dict[tuple[str, str], float] = {}
    for r in results:
        if r["metric"] == "wall_s":
            key = (r["scenario"], r["tool"])
            best[key] = min(best.get(key, float("inf")), r["value"])
    out: list[dict[str, Any]] = []
    for ours in ("localcache", "localcache+fsync"):
        for (scenario, tool), wall in sorted(best.items()):
            if tool.startswith("localcache") or (scenario, ours) not in best:
                continue
            ratio = best[(scenario, ours)] / wall
            goal = 0.5 if scenario.endswith("-capped") else 1.0
            out.append(
                {
                    "scenario": scenario,
                    "tool": ours,
                    "peer": tool,
                    "wall_ratio": round(ratio, 3),
                    "goal": goal,
                    "met": ratio <= goal,
                }
            )
    return out


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on ("ext4", "tmpfs"), from the longest matching mount."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": os.getloadavg(),
        "note": "2 shared cores; the servers (hub, moto) run on the same machine",
    }


def versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "localcache",
        "huggingface_hub",
        "s3fs",
        "boto3",
        "s3transfer",
        "moto",
        "aiohttp",
        "aiobotocore",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


if __name__ == "__main__":
    sys.exit(main())
