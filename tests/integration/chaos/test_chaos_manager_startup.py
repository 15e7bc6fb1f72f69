"""The manager survives one transient API error while it starts.

Found by the chaos runs: right after an API server restart the discovery of
``/apis/serving.kserve.io/v1beta1`` can answer 403 (RBAC not yet synced) or 500/503, and the manager
process exits with code 1 instead of retrying. A Deployment restarts it, so nothing is lost, but every
API server restart then costs a crash loop (the chaos runs count these as "exited on their own").
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localcache.testing.certs import TinyCA
from localcache.testing.envtest import free_port
from localcache.testing.faultproxy import FaultProxy, Status
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.wait import eventually

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def proxy(cluster: TestCluster) -> AsyncIterator[FaultProxy]:
    if cluster.plane is None:
        pytest.skip("needs envtest (a fault proxy in front of its API server)")
    async with FaultProxy(cluster.plane.url, tls=cluster.plane.proxy_tls()) as p:
        yield p


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def test_manager_retries_a_transient_discovery_error(
    cluster: TestCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    assert cluster.plane is not None
    kubeconfig = cluster.plane.user_kubeconfig(
        tmp_path / "kc", "chaos-startup-admin", ("system:masters",), server=proxy.url
    )
    proxy.add(Status(500, "injected"), path=r"^/apis/serving\.kserve\.io/v1beta1$", times=1)
    ca = TinyCA("startup-test")
    pair = ca.serving(["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    health = free_port()
    log = (tmp_path / "manager.log").open("wb")
    manager = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            str(REPO / "cmd" / "manager.py"),
            f"--kubeconfig={kubeconfig}",
            f"--health-probe-bind-address=127.0.0.1:{health}",
            "--metrics-bind-address=0",
            f"--webhook-port={free_port()}",
            f"--webhook-cert-dir={tmp_path}",
            "--disable-webhooks=all",
            "--config-namespace=default",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    async def ready() -> bool:
        return await asyncio.to_thread(_ready, health)

    try:

        async def exited_or_ready() -> bool:
            return manager.returncode is not None or await ready()

        await eventually(exited_or_ready, within=60, interval=0.3, what="manager exited or ready")
        assert proxy.injected["status"] == 1, "the fault was never hit: the test proves nothing"
        assert manager.returncode is None, (
            f"manager exited with {manager.returncode}:\n{(tmp_path / 'manager.log').read_text()[-2000:]}"
        )
        assert await ready()
    finally:
        if manager.returncode is None:
            manager.terminate()
            try:
                await asyncio.wait_for(manager.wait(), 15)
            except TimeoutError:
                manager.kill()
                await manager.wait()
        log.close()
