"""The serving certificate is rotated on disk (as cert-manager renews its Secret) while the API server
keeps calling: the server picks the new pair up without a restart and no admission fails."""

from __future__ import annotations

import asyncio
import secrets
import ssl

import pytest
from cryptography import x509

from localcache.api.constants import LABEL_LOCAL_MODEL
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES
from localcache.runtime.client import Client
from localcache.runtime.resources import NAMESPACES
from localcache.testing.webhooks import AdmissionHarness, until_admitted
from tests.integration.webhooks.conftest import (
    ISOLATED,
    cluster_cache,
    delete_inference_services,
    eventually,
    inference_service,
    make_namespace,
)

pytestmark = pytest.mark.integration


async def presented_serial(harness: AdmissionHarness) -> int:
    """The serial number of the certificate the webhook server presents to a new connection."""
    ctx = ssl.create_default_context(cadata=harness.ca.cert_pem.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", harness.server.port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_rotated_certificate_is_served_without_restart(
    admin: Client, config_namespace: str, admission: AdmissionHarness
) -> None:
    value = secrets.token_hex(4)
    ns = await make_namespace(admin, {ISOLATED: value})
    tag = secrets.token_hex(3)
    cache, uri = f"c-{tag}", f"s3://bucket-{tag}/m"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(cache, uri, ["workers"]))
    harness = AdmissionHarness(
        admin,
        config_namespace=config_namespace,
        disabled=("pod", "validate-cache", "validate-namespace-cache", "podgate"),
        namespace_selector={"matchLabels": {ISOLATED: value}},
        cert_poll_interval=0.1,
    )
    try:
        await harness.start()

        async def create(i: int) -> dict:
            return await admin.create(INFERENCE_SERVICES, inference_service(f"svc-{i}", ns, uri))

        def bound(obj: dict) -> bool:
            return (obj["metadata"].get("labels") or {}).get(LABEL_LOCAL_MODEL) == cache

        await until_admitted(create, bound)
        before = await presented_serial(harness)
        reloads = harness.server.certs.reloads

        harness.rotate_certificate()

        async def rotated() -> bool:
            return harness.server.certs.reloads > reloads and await presented_serial(harness) != before

        await eventually(rotated, "new certificate served")
        for i in range(5):  # the API server's new connections verify the new pair; every call is bound
            assert bound(await admin.create(INFERENCE_SERVICES, inference_service(f"after-{i}", ns, uri)))
    finally:
        await harness.close()
        await delete_inference_services(admin, ns)
        await admin.delete(NAMESPACES, ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, cache, missing_ok=True)
