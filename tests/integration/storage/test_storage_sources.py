"""The download program end to end against real servers (no Kubernetes): the local Hugging Face hub
with the real MiniLM model, a plain HTTP server with fault switches, moto S3, local paths."""

# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from localcache.storage import MARKER_NAME, FailureReason, parse_error_line, read_marker, verify_folder
from localcache.testing.hfhub import MINILM_REPO, HfHubServer
from localcache.testing.httpsource import Fault, HttpFileServer
from localcache.testing.models import generate_model, minilm_dir
from localcache.testing.s3server import S3Server

REPO = Path(__file__).resolve().parents[3]
DOWNLOAD = REPO / "cmd" / "download.py"
MiB = 1024 * 1024
TOKEN = "hf_gated_secret"


@dataclass
class Result:
    code: int
    stderr: str

    @property
    def reason(self) -> FailureReason | None:
        err = parse_error_line(self.stderr)
        return err.reason if err else None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_", "S3_", "STORAGE_"))}
    env.update(
        {"LOCALCACHE_TERMINATION_LOG": "", "LOCALCACHE_PROGRESS_INTERVAL": "0.2", "HF_HUB_OFFLINE": "0"}
    )
    env.update(extra)
    return env


async def run_download(uri: str, dest: Path, **env: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DOWNLOAD),
        uri,
        str(dest),
        env=clean_env(**env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    return Result(proc.returncode or 0, err.decode())


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_model(
        tmp_path_factory.mktemp("gen") / "model", shards=2, shard_bytes=3 * MiB + 17, seed=3
    )


@pytest_asyncio.fixture(scope="module")
async def hub(small_model: Path) -> AsyncIterator[HfHubServer]:
    server = HfHubServer()
    server.add_minilm()
    server.add_minilm("acme/gated-minilm", gated_token=TOKEN)
    server.add_repo("acme/small", small_model)
    async with server:
        yield server


# ---- Hugging Face --------------------------------------------------------------------------------


async def test_minilm_from_local_hub_is_verified_and_published(hub: HfHubServer, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "minilm"
    res = await run_download(f"hf://{MINILM_REPO}", dest, HF_ENDPOINT=hub.url)
    assert res.code == 0, res.stderr
    marker = read_marker(dest, f"hf://{MINILM_REPO}")
    assert marker is not None
    assert marker.revision == hub.repos[MINILM_REPO].sha
    src = minilm_dir()
    expected = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert sorted(f.path for f in marker.files) == expected
    for rel in expected:
        assert filecmp.cmp(src / rel, dest / rel, shallow=False), rel
    assert "model.safetensors" in marker.verified and "config.json" in marker.verified
    assert verify_folder(dest, marker) == []
    assert "progress bytes=" in res.stderr and "\r" not in res.stderr  # line-oriented, no tqdm
    assert sorted(p.name for p in dest.parent.iterdir()) == ["minilm"]


async def test_rerun_with_a_valid_marker_does_not_touch_the_hub(hub: HfHubServer, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    assert (await run_download(f"hf://{MINILM_REPO}", dest, HF_ENDPOINT=hub.url)).code == 0
    before = sum(hub.requests.values())
    res = await run_download(f"hf://{MINILM_REPO}", dest, HF_ENDPOINT=hub.url)
    assert res.code == 0 and "already complete" in res.stderr
    assert sum(hub.requests.values()) == before


async def test_gated_repo_needs_the_token(hub: HfHubServer, tmp_path: Path) -> None:
    uri = "hf://acme/gated-minilm"
    res = await run_download(uri, tmp_path / "none", HF_ENDPOINT=hub.url)
    assert (res.code, res.reason) == (FailureReason.AUTH.exit_code, FailureReason.AUTH)
    assert "gated" in res.stderr and not (tmp_path / "none").exists()
    res = await run_download(uri, tmp_path / "wrong", HF_ENDPOINT=hub.url, HF_TOKEN="hf_wrong")
    assert res.reason is FailureReason.AUTH
    assert "hf_wrong" not in res.stderr
    res = await run_download(uri, tmp_path / "env", HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
    assert res.code == 0, res.stderr
    config = json.dumps({"type": "hf", "token": TOKEN})
    res = await run_download(uri, tmp_path / "cfg", HF_ENDPOINT=hub.url, STORAGE_CONFIG=config)
    assert res.code == 0, res.stderr
    assert TOKEN not in res.stderr
    assert read_marker(tmp_path / "cfg", uri) is not None


async def test_unknown_repo_and_revision_are_not_found(hub: HfHubServer, tmp_path: Path) -> None:
    for uri in ("hf://acme/missing", f"hf://{MINILM_REPO}:v999"):
        res = await run_download(uri, tmp_path / "x", HF_ENDPOINT=hub.url)
        assert (res.code, res.reason) == (FailureReason.NOT_FOUND.exit_code, FailureReason.NOT_FOUND), uri


async def test_pinned_revision_and_parallel_ranges(
    hub: HfHubServer, small_model: Path, tmp_path: Path
) -> None:
    sha = hub.repos["acme/small"].sha
    dest = tmp_path / "small"
    res = await run_download(
        f"hf://acme/small:{sha}", dest, HF_ENDPOINT=hub.url, LOCALCACHE_RANGE_SIZE="1048576"
    )
    assert res.code == 0, res.stderr
    for shard in small_model.glob("*.safetensors"):
        assert filecmp.cmp(shard, dest / shard.name, shallow=False)
        # 3 MiB + 17 bytes in 1 MiB ranges: 4 GETs per shard
        assert hub.bytes_sent[("acme/small", shard.name)] >= shard.stat().st_size


async def test_corrupted_hub_file_is_rejected_and_nothing_published(hub: HfHubServer, tmp_path: Path) -> None:
    name = "model-00002-of-00002.safetensors"
    hub.faults[("acme/small", name)] = Fault("corrupt", after=12345)
    try:
        dest = tmp_path / "bad"
        res = await run_download("hf://acme/small", dest, HF_ENDPOINT=hub.url)
    finally:
        hub.faults.clear()
    assert (res.code, res.reason) == (13, FailureReason.CHECKSUM_MISMATCH)
    assert name in res.stderr
    assert not dest.exists()


async def test_real_client_snapshot_download_works_against_the_local_hub(
    hub: HfHubServer, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi, snapshot_download

    def fetch() -> str:
        return snapshot_download(MINILM_REPO, cache_dir=str(tmp_path / "hf"), endpoint=hub.url, token=False)

    path = Path(await asyncio.to_thread(fetch))
    assert filecmp.cmp(path / "model.safetensors", minilm_dir() / "model.safetensors", shallow=False)
    api = HfApi(endpoint=hub.url, token=False)
    tree = await asyncio.to_thread(lambda: list(api.list_repo_tree(MINILM_REPO, recursive=True)))
    lfs = {f.path: f.lfs.sha256 for f in tree if getattr(f, "lfs", None)}
    assert set(lfs) == {"model.safetensors"}


async def test_a_folder_kserve_wrote_is_verified_in_place_not_fetched_again(
    hub: HfHubServer, small_model: Path, tmp_path: Path
) -> None:
    """KServe's storage-initializer writes `snapshot_download(local_dir=...)` and no marker of ours: after
    a swap to localcache the download Job hashes those files against the Hub's digests instead of fetching
    them again."""
    from huggingface_hub import snapshot_download

    dest = tmp_path / "models" / "0123456789abcdef"
    await asyncio.to_thread(
        snapshot_download, "acme/small", local_dir=str(dest), endpoint=hub.url, token=False
    )
    assert (dest / ".cache" / "huggingface").is_dir() and not (dest / MARKER_NAME).exists()
    hub.bytes_sent.clear()
    res = await run_download("hf://acme/small", dest, HF_ENDPOINT=hub.url)
    assert res.code == 0, res.stderr
    assert "verifying them instead of fetching" in res.stderr
    assert sum(hub.bytes_sent.values()) == 0, hub.bytes_sent
    marker = read_marker(dest, "hf://acme/small")
    assert marker is not None and verify_folder(dest, marker) == []
    assert sorted(marker.verified) == sorted(f.path for f in marker.files)
    for shard in small_model.glob("*.safetensors"):
        assert filecmp.cmp(shard, dest / shard.name, shallow=False)
    assert not (dest / ".cache").exists()


# ---- plain HTTP ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def web(tmp_path: Path) -> AsyncIterator[HttpFileServer]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "weights.bin").write_bytes(os.urandom(6 * MiB + 1))
    async with HttpFileServer(root) as server:
        yield server


async def test_https_file_with_digest_header(web: HttpFileServer, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    res = await run_download(f"{web.url}/weights.bin", dest, LOCALCACHE_RANGE_SIZE="1048576")
    assert res.code == 0, res.stderr
    marker = read_marker(dest)
    assert marker is not None and marker.verified == ["weights.bin"]
    assert filecmp.cmp(web.root / "weights.bin", dest / "weights.bin", shallow=False)


async def test_truncated_transfer_resumes_without_refetching(web: HttpFileServer, tmp_path: Path) -> None:
    cut = 3 * MiB + 5
    web.faults["weights.bin"] = Fault("truncate", after=cut, times=1)
    res = await run_download(f"{web.url}/weights.bin", tmp_path / "d")
    assert res.code == 0, res.stderr
    # The retry starts at the last byte written, not at zero (which would send the 3 MiB again). What
    # aiohttp had received but not handed over when the connection broke is lost with the error and sent
    # twice: its read buffer, bounded by its flow control (up to ~0.5 MiB seen; 256 KiB was too tight).
    size = 6 * MiB + 1
    assert size <= web.bytes_sent["weights.bin"] < size + MiB


async def test_restarted_download_reuses_partial_bytes(web: HttpFileServer, tmp_path: Path) -> None:
    cut = 2 * MiB + 3
    web.faults["weights.bin"] = Fault("stall", after=cut)
    dest = tmp_path / "d"
    env = {"LOCALCACHE_STALL_TIMEOUT": "0.5", "LOCALCACHE_RETRIES": "0", "LOCALCACHE_CONNECTIONS": "1"}
    res = await run_download(f"{web.url}/weights.bin", dest, **env)
    assert (res.code, res.reason) == (FailureReason.TIMEOUT.exit_code, FailureReason.TIMEOUT)
    assert not dest.exists()
    web.faults.clear()
    web.bytes_sent.clear()
    res = await run_download(f"{web.url}/weights.bin", dest, **env)
    assert res.code == 0, res.stderr
    assert web.bytes_sent["weights.bin"] == 6 * MiB + 1 - cut
    assert filecmp.cmp(web.root / "weights.bin", dest / "weights.bin", shallow=False)


async def test_http_failures_map_to_reasons(web: HttpFileServer, tmp_path: Path) -> None:
    res = await run_download(f"{web.url}/missing.bin", tmp_path / "a")
    assert res.reason is FailureReason.NOT_FOUND
    web.faults["weights.bin"] = Fault("corrupt", after=4 * MiB)
    res = await run_download(f"{web.url}/weights.bin", tmp_path / "b")
    assert res.reason is FailureReason.CHECKSUM_MISMATCH
    assert not (tmp_path / "b").exists()
    web.faults["weights.bin"] = Fault("status", status=503)
    res = await run_download(f"{web.url}/weights.bin", tmp_path / "c", LOCALCACHE_RETRIES="1")
    assert (res.code, res.reason) == (18, FailureReason.SOURCE_UNAVAILABLE)


# ---- S3 (moto) -----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def s3(small_model: Path) -> AsyncIterator[S3Server]:
    async with S3Server() as server:
        await asyncio.to_thread(server.create_bucket, "models")
        await asyncio.to_thread(server.upload_dir, "models", "minilm/", minilm_dir(), sha256=True)
        await asyncio.to_thread(server.upload_dir, "models", "small/", small_model)
        yield server


async def test_s3_prefix_verified_against_checksums(s3: S3Server, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    res = await run_download("s3://models/minilm", dest, **s3.env())
    assert res.code == 0, res.stderr
    marker = read_marker(dest, "s3://models/minilm")
    assert marker is not None and len(marker.files) == 13
    assert set(marker.verified) == {f.path for f in marker.files}
    assert filecmp.cmp(minilm_dir() / "model.safetensors", dest / "model.safetensors", shallow=False)
    assert "sha256" in res.stderr  # verified_by in the listing line


async def test_s3_storage_config_and_kserve_env_names(
    s3: S3Server, small_model: Path, tmp_path: Path
) -> None:
    config = {
        "type": "s3",
        "access_key_id": "localcache-access",
        "secret_access_key": "localcache-secret",
        "endpoint_url": s3.url,
        "region": "us-east-1",
    }
    res = await run_download(
        "s3://models/small/",
        tmp_path / "a",
        STORAGE_CONFIG=json.dumps(config),
        LOCALCACHE_RANGE_SIZE="1048576",
    )
    assert res.code == 0, res.stderr
    for shard in small_model.glob("*.safetensors"):
        assert filecmp.cmp(shard, tmp_path / "a" / shard.name, shallow=False)
    host = s3.url.split("://", 1)[1]
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "S3_ENDPOINT": host, "S3_USE_HTTPS": "0"}
    res = await run_download("s3://models/small/config.json", tmp_path / "b", **env)
    assert res.code == 0, res.stderr
    assert [f.path for f in read_marker(tmp_path / "b").files] == ["config.json"]  # type: ignore[union-attr]


async def test_s3_missing_bucket_and_prefix(s3: S3Server, tmp_path: Path) -> None:
    for uri in ("s3://nobucket/x", "s3://models/nothing-here"):
        res = await run_download(uri, tmp_path / "x", **s3.env())
        assert res.reason is FailureReason.NOT_FOUND, (uri, res.stderr)


# ---- local paths, memory, disk -------------------------------------------------------------------


async def test_local_path_copy_is_verified(tmp_path: Path) -> None:
    res = await run_download(str(minilm_dir()), tmp_path / "copy")
    assert res.code == 0, res.stderr
    marker = read_marker(tmp_path / "copy", str(minilm_dir()))
    assert marker is not None and verify_folder(tmp_path / "copy", marker) == []


def _peak_rss_mib(uri: str, dest: Path) -> float:
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, str(DOWNLOAD), uri, str(dest)],
        env=clean_env(LOCALCACHE_FSYNC="0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024


async def test_memory_stays_bounded_for_a_large_file(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    with open(root / "small.bin", "wb") as fh:
        fh.write(os.urandom(4 * MiB))
    with open(root / "large.bin", "wb") as fh:
        block = os.urandom(MiB)
        for i in range(384):
            fh.write(i.to_bytes(8, "little") + block[8:])
    async with HttpFileServer(root, digests=False) as web:
        small = await asyncio.to_thread(_peak_rss_mib, f"{web.url}/small.bin", tmp_path / "s")
        large = await asyncio.to_thread(_peak_rss_mib, f"{web.url}/large.bin", tmp_path / "l")
    assert (tmp_path / "l" / "large.bin").stat().st_size == 384 * MiB
    # 384 MiB through 32 connections: growth is buffers, not the file
    assert large - small < 64, (small, large)


async def test_full_disk_gives_disk_full_and_leaves_nothing(web: HttpFileServer, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = await asyncio.create_subprocess_exec(
        "mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({err.decode().strip()}); injected ENOSPC is unit-tested")
    try:
        res = await run_download(f"{web.url}/weights.bin", mnt / "models" / "key")
        assert (res.code, res.reason) == (FailureReason.DISK_FULL.exit_code, FailureReason.DISK_FULL)
        assert [p.name for p in (mnt / "models").iterdir()] == []
        assert not (mnt / "models" / "key" / MARKER_NAME).exists()
    finally:
        umount = await asyncio.create_subprocess_exec("umount", str(mnt))
        await umount.wait()


async def test_sigterm_keeps_partial_bytes_for_the_next_attempt(web: HttpFileServer, tmp_path: Path) -> None:
    import signal

    cut = 3 * MiB + 11
    web.faults["weights.bin"] = Fault("stall", after=cut)
    dest = tmp_path / "d"
    env = clean_env(
        LOCALCACHE_CONNECTIONS="1", LOCALCACHE_STALL_TIMEOUT="600", LOCALCACHE_PROGRESS_INTERVAL="0.1"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DOWNLOAD),
        f"{web.url}/weights.bin",
        str(dest),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Wait until the pod is mid-transfer: its progress lines count bytes written to disk.
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "download exited early"
                if "progress bytes=" in line and int(line.split("progress bytes=")[1].split()[0]) >= MiB:
                    break
        proc.send_signal(signal.SIGTERM)
        _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == FailureReason.UNKNOWN.exit_code
    assert "interrupted" in err.decode()
    states = [
        json.loads(p.read_text())
        for p in (tmp_path / ".d.localcache-staging" / ".localcache-state").glob("*.json")
        if p.name != "job.json"
    ]
    kept = sum(int(v) for st in states for v in st["partial"].values())
    assert MiB <= kept <= cut  # what was written before SIGTERM is recorded
    web.faults.clear()
    web.bytes_sent.clear()
    res = await run_download(f"{web.url}/weights.bin", dest, LOCALCACHE_CONNECTIONS="1")
    assert res.code == 0, res.stderr
    assert web.bytes_sent["weights.bin"] == 6 * MiB + 1 - kept  # and exactly that is not fetched again
    assert filecmp.cmp(web.root / "weights.bin", dest / "weights.bin", shallow=False)


async def test_hub_resolve_headers_match_what_the_client_expects(hub: HfHubServer) -> None:
    import hashlib

    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    repo = hub.repos[MINILM_REPO]

    def meta(name: str):  # type: ignore[no-untyped-def]
        return get_hf_file_metadata(hf_hub_url(MINILM_REPO, name, endpoint=hub.url), token=False)

    lfs = await asyncio.to_thread(meta, "model.safetensors")
    data = (minilm_dir() / "model.safetensors").read_bytes()
    assert lfs.etag == hashlib.sha256(data).hexdigest()
    assert (lfs.commit_hash, lfs.size, lfs.xet_file_data) == (repo.sha, len(data), None)
    small = await asyncio.to_thread(meta, "config.json")
    raw = (minilm_dir() / "config.json").read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    assert small.etag == blob  # git blob id, like the Hub for non-LFS files


async def test_https_archives_are_unpacked_like_kserve(tmp_path: Path) -> None:
    import io
    import tarfile
    import zipfile

    root = tmp_path / "www"
    root.mkdir()
    payload = {"config.json": b'{"a": 1}', "weights/model.bin": os.urandom(300_000)}
    with tarfile.open(root / "model.tar.gz", "w:gz") as tf:
        for name, data in payload.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(root / "model.zip", "w") as zf:
        for name, data in payload.items():
            zf.writestr(name, data)
    with tarfile.open(root / "evil.tar", "w") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    async with HttpFileServer(root) as web:
        for archive in ("model.tar.gz", "model.zip"):
            dest = tmp_path / archive
            res = await run_download(f"{web.url}/{archive}", dest)
            assert res.code == 0, res.stderr
            marker = read_marker(dest)
            assert marker is not None
            assert sorted(f.path for f in marker.files) == sorted(payload)
            assert sorted(marker.verified) == sorted(payload)  # the archive's digest was checked
            for name, data in payload.items():
                assert (dest / name).read_bytes() == data
            assert not (dest / archive).exists()
        res = await run_download(f"{web.url}/evil.tar", tmp_path / "evil" / "d")
        assert res.reason is FailureReason.UNSAFE_PATH
        assert not (tmp_path / "evil" / "escape.txt").exists()
        assert not (tmp_path / "evil" / "d").exists()
