"""SIGTERM to a manager process (the example controller, with leader election and release on cancel)
ends it cleanly within the grace period: exit code 0, Lease released, probes served until then."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from localcache.runtime.client import Client
from localcache.runtime.resources import LEASES
from localcache.testing.envtest import free_port
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "configmap_controller.py"
GRACE = 30.0


async def status_of(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status, await resp.text()
    except aiohttp.ClientError:
        return 0, ""


async def test_sigterm_stops_the_manager_cleanly(
    cluster: TestCluster, namespace: str, tmp_path: Path
) -> None:
    metrics_port, probe_port = free_port(), free_port()
    log_path = tmp_path / "manager.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE),
            "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
            "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
            "--health-probe-bind-address", f"127.0.0.1:{probe_port}",
            "--leader-elect", "--leader-elect-release", "--leader-election-id", "sigterm-test",
            "--graceful-shutdown-timeout", str(GRACE),
            stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        leading = False
        while time.monotonic() < deadline and proc.returncode is None:
            ready, _ = await status_of(f"http://127.0.0.1:{probe_port}/readyz")
            _, metrics = await status_of(f"http://127.0.0.1:{metrics_port}/metrics")
            leading = 'leader_election_master_status{name="sigterm-test"} 1.0' in metrics
            if ready == 200 and leading:
                break
            await asyncio.sleep(0.2)
        assert proc.returncode is None, f"manager died:\n{log_path.read_text()}"
        assert leading, f"manager never led:\n{log_path.read_text()}"
        assert (await status_of(f"http://127.0.0.1:{probe_port}/healthz"))[0] == 200

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), GRACE + 5)
        took = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = log_path.read_text()
    print(f"SIGTERM to exit: {took:.2f}s")  # reported with -s; the bound is asserted below
    assert rc == 0, output
    assert took < GRACE, f"shutdown took {took:.1f}s"
    assert "signal received, shutting down" in output and "manager stopped" in output, output
    assert "lease released" in output, output
    async with await Client.from_kubeconfig(cluster.kubeconfig) as client:
        lease = await client.get(LEASES, "sigterm-test", namespace)
    assert lease["spec"]["holderIdentity"] == "" and lease["spec"]["leaseDurationSeconds"] == 1
