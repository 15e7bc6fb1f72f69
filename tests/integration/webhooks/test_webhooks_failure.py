"""What the API server does when our webhook is down or slow: the configured failurePolicy decides.

Each test runs its own harness, scoped by namespaceSelector to one isolated namespace (the shared
harness skips it), proves the webhook is live there, then stops it or makes it hang.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localcache.api.constants import LABEL_LOCAL_MODEL
from localcache.controllers.admission import PATH_ISVC
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES
from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import NAMESPACES
from localcache.runtime.webhook import AdmissionRequest, AdmissionResponse, WebhookServer
from localcache.testing.certs import TinyCA
from localcache.testing.webhooks import (
    MUTATING_WEBHOOK_CONFIGURATIONS,
    AdmissionHarness,
    shipped_configurations,
    until_admitted,
)
from tests.integration.webhooks.conftest import (
    ISOLATED,
    cluster_cache,
    delete_inference_services,
    inference_service,
    make_namespace,
    suffix,
)

pytestmark = pytest.mark.integration

ONLY_ISVC = frozenset({"pod", "validate-cache", "validate-namespace-cache", "podgate"})


@pytest.fixture
async def isolated(admin: Client, admission: AdmissionHarness) -> AsyncIterator[tuple[str, dict]]:
    """A namespace the shared harness skips, and the selector that picks exactly it."""
    value = secrets.token_hex(4)
    ns = await make_namespace(admin, {ISOLATED: value})
    yield ns, {"matchLabels": {ISOLATED: value}}
    await admin.delete(NAMESPACES, ns, missing_ok=True)


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
async def test_a_stopped_webhook_follows_the_failure_policy(
    admin: Client, config_namespace: str, isolated: tuple[str, dict], policy: str
) -> None:
    ns, selector = isolated
    tag = suffix()
    cache, uri = f"c-{tag}", f"s3://bucket-{tag}/m"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(cache, uri, ["workers"]))
    harness = AdmissionHarness(
        admin,
        config_namespace=config_namespace,
        disabled=ONLY_ISVC,
        namespace_selector=selector,
        failure_policy=policy,
    )
    try:
        await harness.start()

        async def create(i: int) -> dict:
            return await admin.create(INFERENCE_SERVICES, inference_service(f"probe-{i}", ns, uri))

        async def drop(obj: dict) -> None:
            await admin.delete(INFERENCE_SERVICES, obj["metadata"]["name"], ns)

        live = await until_admitted(
            create, lambda o: LABEL_LOCAL_MODEL in (o["metadata"].get("labels") or {}), cleanup=drop
        )
        assert live["metadata"]["labels"][LABEL_LOCAL_MODEL] == cache, "the webhook serves this namespace"

        await harness.stop_server()
        if policy == "Fail":
            with pytest.raises(errors.ApiError) as failed:
                await admin.create(INFERENCE_SERVICES, inference_service("after", ns, uri))
            message = str(failed.value)
            assert 'failed calling webhook "inferenceservice.localcache.serving.kserve.io"' in message
            assert "connection refused" in message
            with pytest.raises(errors.NotFound):
                await admin.get(INFERENCE_SERVICES, "after", ns)
        else:
            after = await admin.create(INFERENCE_SERVICES, inference_service("after", ns, uri))
            assert LABEL_LOCAL_MODEL not in (after["metadata"].get("labels") or {}), "admitted unmodified"
            assert "annotations" not in after["metadata"]
    finally:
        await harness.close()
        await delete_inference_services(admin, ns)
        await admin.delete(LOCAL_MODEL_CACHES, cache, missing_ok=True)


async def test_a_slow_webhook_hits_the_configured_timeout(
    admin: Client, isolated: tuple[str, dict], tmp_path: Path
) -> None:
    ns, selector = isolated
    release = asyncio.Event()
    entered = 0

    async def hang(req: AdmissionRequest) -> AdmissionResponse:
        nonlocal entered
        entered += 1
        await release.wait()
        return AdmissionResponse.allow()

    ca = TinyCA("slow-webhook-ca")
    ca.serving(["127.0.0.1"]).write(tmp_path, "tls")
    server = WebhookServer(host="127.0.0.1", port=0, cert_dir=tmp_path)
    server.register(PATH_ISVC, hang)
    task = asyncio.create_task(server.start())
    (config,) = shipped_configurations(
        base_url="", ca_bundle=ca.cert_pem, suffix=suffix(), paths=[PATH_ISVC], namespace_selector=selector,
        failure_policy="Fail", timeout_seconds=1,
    )  # fmt: skip
    try:
        await asyncio.wait_for(server.wait_started(), 10)
        for hook in config["webhooks"]:
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{server.port}{PATH_ISVC}"
        await admin.create(MUTATING_WEBHOOK_CONFIGURATIONS, config)
        loop = asyncio.get_running_loop()
        took: list[float] = []

        async def create(i: int) -> dict:
            start = loop.time()
            try:
                return await admin.create(INFERENCE_SERVICES, inference_service(f"s-{i}", ns, "s3://x/y"))
            finally:
                took.append(loop.time() - start)

        async def drop(obj: dict) -> None:
            await admin.delete(INFERENCE_SERVICES, obj["metadata"]["name"], ns)

        failed = await until_admitted(create, lambda _: False, cleanup=drop, expect_error=True)
        message = str(failed)
        assert 'failed calling webhook "inferenceservice.localcache.serving.kserve.io"' in message
        assert "deadline exceeded" in message or "timeout" in message.lower(), message
        assert "?timeout=1s" in message, "the API server passes the configured timeout on"
        assert entered >= 1 and took[-1] >= 0.9, (entered, took)
    finally:
        await admin.delete(MUTATING_WEBHOOK_CONFIGURATIONS, config["metadata"]["name"], missing_ok=True)
        release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
