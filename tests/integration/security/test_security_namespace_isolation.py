"""A namespace cache serves only its own namespace: an InferenceService in namespace B is never bound to
a LocalModelNamespaceCache of namespace A, whatever the URIs and node groups, read from the real API
server (the webhook's reader lists the service's namespace only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from localcache.controllers.isvc import CacheReader, match_cache
from localcache.runtime.client import Client
from localcache.runtime.resources import NAMESPACES
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.system import (
    LOCAL_MODEL_NAMESPACE_CACHES,
    apply_documents,
)

pytestmark = pytest.mark.timeout(90)

URI = "hf://isolation/model"


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[Client]:
    client = await Client.from_kubeconfig(cluster.kubeconfig)
    yield client
    await client.close()


def _ns_cache(name: str, namespace: str, uri: str, groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNamespaceCache",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"sourceModelUri": uri, "modelSize": "1Gi", "nodeGroups": groups},
    }


async def test_an_isvc_in_b_never_gets_a_cache_of_a(client: Client, namespace: str) -> None:
    team_a = namespace
    team_b = f"{namespace}-b"
    await apply_documents(client, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team_b}}])
    try:
        await apply_documents(
            client,
            [
                _ns_cache("shared-name", team_a, URI, ["g1"]),
                _ns_cache("other", team_a, f"{URI}/sub", ["g2"]),
            ],
        )
        reader = CacheReader(client)
        for live in (True, False):
            ns_b = await reader.namespace_caches(team_b, live=live)
            assert ns_b == [], f"namespace {team_b} sees {[c['metadata'] for c in ns_b]}"
            clusters = await reader.cluster_caches(live=live)
            for uri in (URI, f"{URI}/", f"{URI}/sub", f"{URI}/sub/x"):
                for group in (None, "g1", "g2"):
                    binding = match_cache(uri, group, ns_b, clusters)
                    assert binding is None or binding.cache_namespace != team_a, (uri, group, binding)
        # In namespace A the same request finds A's cache: the test can tell the two apart.
        ns_a = await reader.namespace_caches(team_a, live=True)
        binding = match_cache(URI, None, ns_a, [])
        assert binding is not None and binding.cache_namespace == team_a
    finally:
        for name in ("shared-name", "other"):
            await client.delete(LOCAL_MODEL_NAMESPACE_CACHES, name, team_a, missing_ok=True)
        await client.delete(NAMESPACES, team_b, missing_ok=True)
