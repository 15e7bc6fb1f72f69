"""The fault proxy in front of the real kube-apiserver keeps the caller's identity and injects faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch

from localcache.testing.faultproxy import FaultProxy, Status, WatchError
from localcache.testing.pytest_plugin import TestCluster, use_existing_cluster

pytestmark = pytest.mark.skipif(use_existing_cluster(), reason="needs the envtest CA to terminate TLS")


@pytest.fixture
async def proxy(cluster: TestCluster) -> AsyncIterator[FaultProxy]:
    assert cluster.plane is not None
    async with FaultProxy(cluster.plane.url, tls=cluster.plane.proxy_tls(), seed=7) as p:
        yield p


async def client_for(kubeconfig: Path) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return k8s.ApiClient(configuration)


async def test_caller_identity_survives_the_proxy(
    cluster: TestCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    assert cluster.plane is not None
    kubeconfig = cluster.plane.user_kubeconfig(
        tmp_path / "alice.kubeconfig", "alice", ("team-a",), server=proxy.url
    )
    async with await client_for(kubeconfig) as api:
        review = await k8s.AuthenticationV1Api(api).create_self_subject_review(
            k8s.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
        assert review.status.user_info.username == "alice"
        assert "team-a" in review.status.user_info.groups
        with pytest.raises(k8s.ApiException) as denied:  # RBAC still applies: alice may not list nodes
            await k8s.CoreV1Api(api).list_node()
        assert denied.value.status == 403


async def test_injected_status_and_watch_error(
    cluster: TestCluster, proxy: FaultProxy, namespace: str, tmp_path: Path
) -> None:
    assert cluster.plane is not None
    kubeconfig = cluster.plane.user_kubeconfig(
        tmp_path / "admin.kubeconfig", "proxy-admin", ("system:masters",), server=proxy.url
    )
    async with await client_for(kubeconfig) as api:
        core = k8s.CoreV1Api(api)
        proxy.add(Status(503), method="GET", path=f"/api/v1/namespaces/{namespace}/configmaps$", watch=False)
        with pytest.raises(k8s.ApiException) as unavailable:
            await core.list_namespaced_config_map(namespace)
        assert unavailable.value.status == 503
        listed = await core.list_namespaced_config_map(namespace)  # the rule was for one request only
        assert listed.items == []

        proxy.add(WatchError(410), watch=True)
        # With timeout_seconds kubernetes_asyncio surfaces the ERROR event instead of re-watching by itself.
        with pytest.raises(k8s.ApiException) as gone:
            async with k8s_watch.Watch().stream(
                core.list_namespaced_config_map,
                namespace,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=5,
            ) as stream:
                async for _event in stream:
                    pass
        assert gone.value.status == 410
    assert proxy.injected == {"status": 1, "watcherror": 1}
