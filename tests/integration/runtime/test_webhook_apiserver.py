"""The real kube-apiserver calls our admission webhook over TLS (MutatingWebhookConfiguration with
``clientConfig.url`` on 127.0.0.1 and a caBundle from a TinyCA): mutation applied, denial and handler
failure surfaced to the API client, metrics counted."""

from __future__ import annotations

import asyncio
import base64
import copy
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from localcache.runtime import errors
from localcache.runtime.client import Client
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


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[tuple[WebhookServer, TinyCA]]:
    ca = TinyCA("webhook-ca")
    ca.serving(["127.0.0.1"]).write(tmp_path, "tls")
    server = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path)
    server.register(PATH, mutate)
    task = asyncio.create_task(server.start())
    await asyncio.wait_for(server.wait_started(), 10)
    try:
        yield server, ca
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def count(code: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "controller_runtime_webhook_requests_total", {"webhook": PATH, "code": code}
        )
        or 0
    )


async def test_apiserver_calls_the_webhook(
    client: Client, namespace: str, webhook: tuple[WebhookServer, TinyCA]
) -> None:
    server, ca = webhook
    config_name = f"localcache-test-{secrets.token_hex(3)}"
    await client.create(
        MUTATING,
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": config_name},
            "webhooks": [
                {
                    "name": "configmaps.test.localcache.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{server.port}{PATH}",
                        "caBundle": base64.b64encode(ca.cert_pem).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["configmaps"],
                            "scope": "Namespaced",
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                }
            ],
        },
    )
    try:
        before = count("200")
        # The API server picks the configuration up asynchronously: create probes until one is mutated.
        deadline = time.monotonic() + 30
        created: dict = {}
        i = 0
        while time.monotonic() < deadline:
            i += 1
            created = await client.create(
                CONFIGMAPS,
                {
                    # an existing annotations map, so the patch adds a key with "/" (escaped as ~1)
                    "metadata": {"name": f"probe-{i}", "namespace": namespace, "annotations": {"keep": "x"}},
                    "data": {"a": "1"},
                },
            )
            if created["metadata"].get("labels", {}).get("mutated-by"):
                break
            await asyncio.sleep(0.2)
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
