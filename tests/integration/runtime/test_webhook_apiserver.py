"""The real kube-apiserver calls our admission webhook over TLS (MutatingWebhookConfiguration with
``clientConfig.url`` on 127.0.0.1 and a caBundle from a TinyCA): mutation applied, denial and handler
failure surfaced to the API client, metrics counted."""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.clock import FakeClock
from localcache.runtime.resources import CONFIGMAPS, Resource
from localcache.runtime.webhook import AdmissionRequest, AdmissionResponse, WebhookServer
from localcache.testing.certs import TinyCA
from localcache.testing.envtest import ADMIN_USER
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration

MUTATING = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
)
PATH = "/mutate-configmaps"


async def mutate(req: AdmissionRequest) -> AdmissionResponse:
    name = req.name or (req.object or {}).get("metadata", {}).get("name", "")
    if name.startswith("deny-"):
        return AdmissionResponse.deny(f"{name} is not welcome here")
    if name.startswith("boom-"):
        raise RuntimeError("handler bug")
    obj = copy.deepcopy(req.object or {})
    meta = obj.setdefault("metadata", {})
    meta.setdefault("labels", {})["mutated-by"] = "localcache-webhook"
    meta.setdefault("annotations", {})["example.localcache.io/created-by"] = req.user_info.get("username", "")
    obj.setdefault("data", {})["injected"] = "yes"
    return AdmissionResponse.mutate(obj)


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        yield c


@dataclass
class Hook:
    server: WebhookServer
    ca: TinyCA
    clock: FakeClock
    cert_dir: Path


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[Hook]:
    ca = TinyCA("webhook-ca")
    ca.serving(["127.0.0.1"]).write(tmp_path, "tls")
    clock = FakeClock()  # drives the certificate watcher's polling
    server = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path, cert_poll_interval=10, clock=clock)
    server.register(PATH, mutate)
    task = asyncio.create_task(server.start())
    await asyncio.wait_for(server.wait_started(), 10)
    try:
        yield Hook(server, ca, clock, tmp_path)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def count(code: str) -> float:
    labels = {"webhook": PATH, "code": code}
    return REGISTRY.get_sample_value("controller_runtime_webhook_requests_total", labels) or 0


async def register(client: Client, hook: Hook, namespace: str) -> str:
    """A MutatingWebhookConfiguration for ConfigMap creates in ``namespace``; returns its name."""
    name = f"localcache-test-{secrets.token_hex(3)}"
    await client.create(MUTATING, {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "configmaps.test.localcache.io",
            "clientConfig": {
                "url": f"https://127.0.0.1:{hook.server.port}{PATH}",
                "caBundle": base64.b64encode(hook.ca.cert_pem).decode(),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["configmaps"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    })  # fmt: skip
    return name


async def create_mutated(client: Client, namespace: str, prefix: str) -> dict[str, Any]:
    """Create ConfigMaps until the API server routes one through the webhook (it picks up new
    configurations asynchronously); returns the mutated one."""
    deadline = time.monotonic() + 30
    for i in itertools.count():
        created = await client.create(CONFIGMAPS, {
            # an existing annotations map, so the patch adds a key with "/" (escaped as ~1)
            "metadata": {"name": f"{prefix}-{i}", "namespace": namespace, "annotations": {"keep": "x"}},
            "data": {"a": "1"},
        })  # fmt: skip
        if created["metadata"].get("labels", {}).get("mutated-by") or time.monotonic() > deadline:
            return created
        await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


def served_certificate(port: int, ca: TinyCA) -> bytes:
    """The DER certificate a fresh TLS handshake (no SNI, as for an IP address) is given."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_apiserver_calls_the_webhook(client: Client, namespace: str, webhook: Hook) -> None:
    config_name = await register(client, webhook, namespace)
    try:
        before = count("200")
        created = await create_mutated(client, namespace, "probe")
        assert created["metadata"]["labels"]["mutated-by"] == "localcache-webhook", "webhook never called"
        assert created["metadata"]["annotations"] == {
            "keep": "x",
            "example.localcache.io/created-by": ADMIN_USER,
        }
        assert created["data"] == {"a": "1", "injected": "yes"}
        stored = await client.get(CONFIGMAPS, created["metadata"]["name"], namespace)
        assert stored["metadata"]["labels"]["mutated-by"] == "localcache-webhook"

        with pytest.raises(errors.ApiError) as denied:
            await client.create(CONFIGMAPS, {"metadata": {"name": "deny-me", "namespace": namespace}})
        assert denied.value.status == 403
        assert "deny-me is not welcome here" in str(denied.value)

        with pytest.raises(errors.ApiError) as failed:
            await client.create(CONFIGMAPS, {"metadata": {"name": "boom-1", "namespace": namespace}})
        assert failed.value.status == 500
        assert f"webhook {PATH} failed on CREATE ConfigMap" in str(failed.value)
        assert "RuntimeError: handler bug" in str(failed.value)
        assert count("200") >= before + 3
    finally:
        await client.delete(MUTATING, config_name, missing_ok=True)


async def test_rotated_serving_certificate_keeps_admission_working(
    client: Client, namespace: str, webhook: Hook
) -> None:
    config_name = await register(client, webhook, namespace)
    try:
        assert (await create_mutated(client, namespace, "before"))["metadata"]["labels"]["mutated-by"]
        old = await asyncio.to_thread(served_certificate, webhook.server.port, webhook.ca)
        webhook.ca.serving(["127.0.0.1"]).write(webhook.cert_dir, "tls")  # renewed leaf, same CA
        reloads = webhook.server.certs.reloads
        await webhook.clock.advance(10)
        assert webhook.server.certs.reloads == reloads + 1
        new = await asyncio.to_thread(served_certificate, webhook.server.port, webhook.ca)
        assert new != old, "new handshakes get the renewed certificate without a restart"
        for i in range(3):
            created = await client.create(
                CONFIGMAPS, {"metadata": {"name": f"after-{i}", "namespace": namespace}}
            )
            assert created["metadata"]["labels"]["mutated-by"] == "localcache-webhook"
    finally:
        await client.delete(MUTATING, config_name, missing_ok=True)
