"""cmd/manager.py as a process: flags, leader election, probes, the cache controllers converging,
and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from localcache.controllers import LOCAL_MODEL_CACHES
from localcache.runtime.resources import CONFIGMAPS, LEASES
from localcache.testing.envtest import free_port
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.wait import eventually
from tests.integration.controllers.cache_support import CacheEnv

pytestmark = pytest.mark.integration

MANAGER = Path(__file__).resolve().parents[3] / "cmd" / "manager.py"


async def status_code(url: str) -> int:
    try:
        async with aiohttp.ClientSession() as s, s.get(url) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def test_manager_binary_elects_serves_probes_reconciles_and_stops(
    cluster: TestCluster, env: CacheEnv
) -> None:
    data = {"localModel": json.dumps({"jobNamespace": env.ns})}
    await env.admin.create(
        CONFIGMAPS,
        {"metadata": {"name": "inferenceservice-config", "namespace": env.ns}, "data": data},
        env.ns,
    )
    probes = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(MANAGER),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--config-namespace={env.ns}",
        "--leader-elect",
        "--disable-webhooks=all",
        "--metrics-bind-address=0",
        f"--health-probe-bind-address=127.0.0.1:{probes}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: _ready(f"http://127.0.0.1:{probes}/readyz"), 60, what="manager /readyz")
        lease = await eventually(lambda: env.get(LEASES, "localcache-manager-leader-lock", env.ns), 30)
        assert lease["spec"]["holderIdentity"]

        node = await env.make_node("a1", "a")
        group = await env.make_group("ga", "a")
        name = env.n("m")
        await env.make_cache(name, [group])

        async def placed() -> bool:
            obj = await env.get(LOCAL_MODEL_CACHES, name)
            return bool(obj and obj["metadata"].get("finalizers")) and name in await env.entries(node)

        await eventually(placed, 30, what="the binary's controllers placed the cache")
        await env.admin.delete(LOCAL_MODEL_CACHES, name)
        await eventually(lambda: _absent(env, name), 30, what="cache deleted through the finalizer")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err.decode()[-3000:]


async def _ready(url: str) -> bool:
    return await status_code(url) == 200


async def _absent(env: CacheEnv, name: str) -> bool:
    return await env.get(LOCAL_MODEL_CACHES, name) is None
