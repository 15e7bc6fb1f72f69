"""The download program never writes outside its destination, whatever the source says its files are
called: hostile HTTP names (encoded traversal), local sources with symlinks leading out, and a hub that
lists `../` names. Every case checks the whole tree around the destination before and after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.pipeline import download
from localcache.storage.settings import Settings

pytestmark = pytest.mark.timeout(60)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
async def any_path_server() -> AsyncIterator[str]:
    """Answers every GET/HEAD with the same 1 KiB body, whatever the (decoded or not) path."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1024, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    "path",
    [
        "/m/..%2F..%2Fescaped.bin",
        "/m/%2e%2e%2fescaped.bin",
        "/m/..%5C..%5Cescaped.bin",
        "/m/%2Fetc%2Fescaped.bin",
        "/m/.localcache-complete.json",
        "/m/%00escaped.bin",
    ],
)
async def test_hostile_http_names_stay_inside(any_path_server: str, tmp_path: Path, path: str) -> None:
    outside = tmp_path / "outside"
    dest = outside / "dest"
    outside.mkdir()
    before = _tree(tmp_path)
    settings = Settings()
    settings.retries = 0
    try:
        marker = await download(any_path_server + path, dest, settings)
    except DownloadError as exc:
        assert exc.reason in (FailureReason.UNSAFE_PATH, FailureReason.INVALID_REQUEST), exc
        assert _tree(tmp_path) - before <= {"outside/dest"}, _tree(tmp_path) - before
        return
    created = _tree(tmp_path) - before
    assert all(c == "outside/dest" or c.startswith("outside/dest/") for c in created), created
    for f in marker.files:
        assert (dest / f.path).resolve().is_relative_to(dest.resolve())
    assert not (tmp_path / "escaped.bin").exists() and not (outside / "escaped.bin").exists()


async def test_local_symlink_leading_out_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "weights.bin").symlink_to(secret)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(DownloadError) as info:
        await download(str(src), dest, Settings())
    assert info.value.reason is FailureReason.UNSAFE_PATH
    assert "symlink" in str(info.value) and "weights.bin" in str(info.value)
    assert not (dest / "weights.bin").exists()


async def test_symlinked_destination_parent_is_not_followed_outside(tmp_path: Path) -> None:
    """A model folder that is a symlink to elsewhere is replaced, never written through."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"m" * 100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    models = tmp_path / "models"
    models.mkdir()
    dest = models / "0123456789abcdef"
    dest.symlink_to(elsewhere)
    await download(str(src), dest, Settings())
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert not (elsewhere / "model.bin").exists(), "wrote through a symlinked destination"
    assert (dest / "model.bin").read_bytes() == b"m" * 100
