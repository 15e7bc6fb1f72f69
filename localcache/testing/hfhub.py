"""A local Hugging Face Hub: enough of the Hub's HTTP protocol for the real `huggingface_hub` client.

Routes (what `snapshot_download`, `hf_hub_download`, `HfApi.model_info(files_metadata=True)` and
`HfApi.list_repo_tree` use):
- `GET /api/models/{repo}[/revision/{rev}]`: model info with `sha` and `siblings` (size, blobId, lfs);
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=`: tree listing
  (oid, size, lfs{oid,size,pointerSize});
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: the file, with `X-Repo-Commit`, `ETag` (sha256 for LFS files,
  git blob sha1 otherwise), `X-Linked-Etag`/`X-Linked-Size` for LFS files, and `Range`.
No Xet headers are ever sent, so the client uses plain HTTP. A gated repo answers 401 (no token) or
403 (wrong token) with `X-Error-Code: GatedRepo`, as the Hub does.

`python -m localcache.testing.hfhub --port P --repo owner/name=DIR [--gated owner/name=TOKEN]
[--minilm] [--cap BPS]` runs it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from localcache.testing.httpsource import Fault, _ServerBase, send_file

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".gguf", ".ot", ".tflite")
LFS_THRESHOLD = 10 * 1024 * 1024
META_NAME = ".localcache-hubmeta.json"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(name: str, size: int) -> bool:
    return name.endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD


@dataclass
class HubFile:
    path: str
    size: int
    blob_id: str  # git oid (of the LFS pointer for LFS files)
    sha256: str | None  # LFS files only
    pointer_size: int | None = None


def scan_repo(root: Path, cache: Path | None = None) -> list[HubFile]:
    """Describe every file under `root`; digests are cached (by size and mtime) in `cache` if given."""
    old: dict[str, Any] = {}
    if cache is not None and cache.exists():
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(cache.read_text())
    files: list[HubFile] = []
    fresh: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
        for name in sorted(filenames):
            if name.startswith(".localcache-"):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.stat()
            key = f"{st.st_size}:{st.st_mtime_ns}"
            entry = old.get(rel)
            if not entry or entry.get("key") != key:
                lfs = is_lfs(rel, st.st_size)
                if lfs:
                    h = hashlib.sha256()
                    with open(full, "rb") as fh:
                        while block := fh.read(8 * 1024 * 1024):
                            h.update(block)
                    sha = h.hexdigest()
                    pointer = lfs_pointer(sha, st.st_size)
                    entry = {"key": key, "sha256": sha, "blob": git_blob_sha1(pointer), "psize": len(pointer)}
                else:
                    entry = {
                        "key": key,
                        "sha256": None,
                        "blob": git_blob_sha1(full.read_bytes()),
                        "psize": None,
                    }
            fresh[rel] = entry
            files.append(HubFile(rel, st.st_size, entry["blob"], entry["sha256"], entry["psize"]))
    if cache is not None and fresh != old:
        with contextlib.suppress(OSError):
            cache.write_text(json.dumps(fresh))
    return files


def meta_cache_path(root: Path) -> Path | None:
    """Digests of a served directory are cached outside it (it may be a read-only package)."""
    base = Path(os.environ.get("LOCALCACHE_HUBMETA_CACHE", Path.home() / ".cache/localcache/hubmeta"))
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return base / f"{hashlib.sha1(str(root).encode(), usedforsecurity=False).hexdigest()}.json"


@dataclass
class HubRepo:
    repo_id: str
    root: Path
    gated_token: str | None = None
    files: list[HubFile] = field(default_factory=list)
    sha: str = ""

    def load(self) -> None:
        self.files = scan_repo(self.root, meta_cache_path(self.root))
        manifest = "\n".join(f"{f.path} {f.size} {f.sha256 or f.blob_id}" for f in self.files)
        self.sha = hashlib.sha1(f"{self.repo_id}\n{manifest}".encode(), usedforsecurity=False).hexdigest()

    def by_path(self) -> dict[str, HubFile]:
        return {f.path: f for f in self.files}


class HfHubServer(_ServerBase):
    def __init__(self, *, port: int = 0, rate: float | None = None) -> None:
        super().__init__(port)
        self.repos: dict[str, HubRepo] = {}
        self.rate = rate
        self.faults: dict[tuple[str, str], Fault] = {}
        self.bytes_sent: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()

    def add_repo(self, repo_id: str, root: Path | str, *, gated_token: str | None = None) -> HubRepo:
        repo = HubRepo(repo_id, Path(root).resolve(), gated_token)
        repo.load()
        self.repos[repo_id] = repo
        return repo

    def add_minilm(self, repo_id: str = MINILM_REPO, *, gated_token: str | None = None) -> HubRepo:
        from localcache.testing.models import minilm_dir

        return self.add_repo(repo_id, minilm_dir(), gated_token=gated_token)

    @property
    def endpoint(self) -> str:
        return self.url

    def make_app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/api/models/{owner}/{name}", self._info)
        r.add_get("/api/models/{owner}/{name}/revision/{rev}", self._info)
        r.add_get("/api/models/{owner}/{name}/tree/{rev}", self._tree)
        r.add_get("/api/models/{owner}/{name}/tree/{rev}/{path:.*}", self._tree)
        r.add_route("HEAD", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        r.add_route("GET", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        return app

    # ---- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"error": message}, status=status, headers={"X-Error-Code": code, "X-Error-Message": message}
        )

    def _repo(self, request: web.Request) -> HubRepo | web.Response:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        self.requests[request.path] += 1
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.gated_token is not None:
            auth = request.headers.get("Authorization", "")
            if not auth:
                return self._error(
                    401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated."
                )
            if auth != f"Bearer {repo.gated_token}":
                return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
        rev = request.match_info.get("rev")
        if rev is not None and rev not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    # ---- routes -----------------------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        siblings: list[dict[str, Any]] = []
        for f in repo.files:
            sib: dict[str, Any] = {"rfilename": f.path}
            if request.query.get("blobs", "").lower() in ("1", "true"):
                sib["size"] = f.size
                sib["blobId"] = f.blob_id
                if f.sha256 is not None:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sib)
        return web.json_response(
            {
                "_id": repo.sha[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": repo.sha,
                "lastModified": now,
                "createdAt": now,
                "private": False,
                "gated": "manual" if repo.gated_token else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(f.size for f in repo.files),
            }
        )

    async def _tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        base = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{base}/" if base else ""
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for f in repo.files:
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if not recursive and len(parts) > 1:
                continue
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.sha256 is not None:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries.append(entry)
        for d in sorted(dirs):
            oid = hashlib.sha1(d.encode(), usedforsecurity=False).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        if base and not entries:
            return self._error(404, "EntryNotFound", f"{base} does not exist on {request.match_info['rev']}")
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        rel = request.match_info["path"]
        f = repo.by_path().get(rel)
        if f is None:
            return self._error(404, "EntryNotFound", f"{rel} does not exist on {request.match_info['rev']}")
        etag = f.sha256 or f.blob_id
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"'}
        if f.sha256 is not None:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        fault = None
        key = (repo.repo_id, rel)
        if request.method == "GET" and key in self.faults:
            fault = self.faults[key]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[key]

        def count(n: int) -> None:
            self.bytes_sent[key] += n

        return await send_file(
            request, repo.root / rel, headers=headers, rate=self.rate, fault=fault, on_bytes=count
        )


async def _serve(server: HfHubServer) -> None:
    await server.start()
    print(f"READY {server.url}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localcache.testing.hfhub")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--repo", action="append", default=[], help="owner/name=DIR (repeatable)")
    parser.add_argument("--root", help="serve every DIR/<owner>/<name> found under this directory")
    parser.add_argument("--gated", action="append", default=[], help="owner/name=TOKEN (repeatable)")
    parser.add_argument("--minilm", action="store_true", help=f"serve {MINILM_REPO} from its PyPI package")
    parser.add_argument("--cap", type=float, default=None, help="bytes/s per connection")
    args = parser.parse_args(argv)
    gated = dict(g.split("=", 1) for g in args.gated)
    server = HfHubServer(port=args.port, rate=args.cap)
    repos = [tuple(r.split("=", 1)) for r in args.repo]
    if args.root:
        for owner in sorted(Path(args.root).iterdir()):
            if owner.is_dir():
                repos.extend(
                    (f"{owner.name}/{d.name}", str(d)) for d in sorted(owner.iterdir()) if d.is_dir()
                )
    for repo_id, path in repos:
        server.add_repo(repo_id, path, gated_token=gated.get(repo_id))
    if args.minilm:
        server.add_minilm(gated_token=gated.get(MINILM_REPO))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server))


if __name__ == "__main__":
    main(sys.argv[1:])
