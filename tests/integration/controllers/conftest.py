"""The ``env`` fixture every cache/node-group controller test runs in (see cache_support.CacheEnv)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from localcache.runtime import Client
from localcache.testing.pytest_plugin import TestCluster
from tests.integration.controllers.cache_support import CacheEnv, CountingClient


@pytest.fixture
async def env(cluster: TestCluster, namespace: str) -> AsyncIterator[CacheEnv]:
    async with (
        await Client.from_kubeconfig(cluster.kubeconfig) as admin,
        await CountingClient.from_kubeconfig(cluster.kubeconfig) as client,
    ):
        e = CacheEnv(admin, client, namespace)
        try:
            yield e
        finally:
            await e.cleanup()
