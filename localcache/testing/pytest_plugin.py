"""pytest fixtures for the integration tier: one control plane per session, a namespace per test.

Enable with ``pytest_plugins = ["localcache.testing.pytest_plugin"]`` in a conftest.

By default the session starts its own envtest control plane (see ``localcache.testing.envtest``).
With ``USE_EXISTING_CLUSTER=true`` (controller-runtime's convention) it uses the cluster ``KUBECONFIG``
points at instead; the explicit switch keeps a stray ``KUBECONFIG`` from aiming tests at a real cluster.
When binaries are missing the fixture fails with the reason; it never skips silently.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from localcache.testing.envtest import ControlPlane, EnvtestError


@dataclass
class TestCluster:
    """What a test needs to reach the cluster; ``plane`` is None on an existing cluster."""

    __test__ = False  # not a test class, despite the name

    kubeconfig: Path
    plane: ControlPlane | None

    async def api_client(self) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return k8s.ApiClient(configuration)


def use_existing_cluster() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def cluster() -> Iterator[TestCluster]:
    if use_existing_cluster():
        kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        yield TestCluster(Path(kubeconfig), None)
        return
    plane = ControlPlane()
    try:
        plane.start()
    except EnvtestError as exc:
        pytest.fail(f"integration tier needs a control plane: {exc}", pytrace=False)
    try:
        assert plane.kubeconfig is not None
        yield TestCluster(plane.kubeconfig, plane)
    finally:
        plane.stop()


@pytest.fixture
async def api_client(cluster: TestCluster) -> AsyncIterator[k8s.ApiClient]:
    api = await cluster.api_client()
    async with api:
        yield api


@pytest.fixture
async def namespace(api_client: k8s.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, deleted (best effort) after the test."""
    name = f"t-{secrets.token_hex(4)}"
    core = k8s.CoreV1Api(api_client)
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    try:
        await core.delete_namespace(name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
