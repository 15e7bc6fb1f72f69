"""Secure metrics against the real API server: HTTPS, a ServiceAccount token checked by TokenReview,
and RBAC on ``nonResourceURLs: ["/metrics"]`` checked by SubjectAccessReview."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from localcache.runtime.client import Client
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.resources import Resource
from localcache.testing.certs import TinyCA
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration

SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False)
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
)


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        yield c


async def token_for(client: Client, namespace: str, name: str) -> str:
    await client.create(SERVICE_ACCOUNTS, {"metadata": {"name": name, "namespace": namespace}})
    review = await client.request(
        "POST",
        SERVICE_ACCOUNTS.path(namespace, name, "token"),
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    return str(review["status"]["token"])


async def test_metrics_need_a_token_with_rbac(client: Client, namespace: str, tmp_path: Path) -> None:
    ca = TinyCA()
    ca.serving(["127.0.0.1"]).write(tmp_path, "tls")
    options = ManagerOptions(
        metrics_bind_address="127.0.0.1:0", health_probe_bind_address="0", handle_signals=False,
        metrics_cert_dir=str(tmp_path), metrics_auth=True,
    )  # fmt: skip
    mgr = Manager(client, options)
    run = asyncio.create_task(mgr.run())
    suffix = secrets.token_hex(3)
    try:
        server = mgr.metrics_server
        assert server is not None
        await asyncio.wait_for(server.wait_started(), 10)
        scraper = await token_for(client, namespace, "scraper")
        outsider = await token_for(client, namespace, "outsider")
        rules = [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
        await client.create(CLUSTER_ROLES, {"metadata": {"name": f"metrics-reader-{suffix}"}, "rules": rules})
        await client.create(CLUSTER_ROLE_BINDINGS, {
            "metadata": {"name": f"metrics-reader-{suffix}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": f"metrics-reader-{suffix}"},
            "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": namespace}],
        })  # fmt: skip
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())

        async def scrape(token: str | None) -> tuple[int, str]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{server.url}/metrics", headers=headers, ssl=context) as resp,
            ):
                return resp.status, await resp.text()

        assert (await scrape(None))[0] == 401
        assert (await scrape("not-a-token"))[0] == 401
        status, body = await scrape(outsider)
        assert status == 403 and f"system:serviceaccount:{namespace}:outsider" in body
        status, body = await scrape(scraper)
        assert status == 200, body
        assert "process_resident_memory_bytes" in body and "asyncio_event_loop_lag_seconds" in body
    finally:
        mgr.stop()
        await asyncio.wait_for(run, 30)
        await client.delete(CLUSTER_ROLE_BINDINGS, f"metrics-reader-{suffix}", missing_ok=True)
        await client.delete(CLUSTER_ROLES, f"metrics-reader-{suffix}", missing_ok=True)
