"""Hostile storage URIs through the real API server: the CRD accepts any non-empty string (as KServe's
does), stores it byte for byte, and the only thing derived from it on disk is the hex storage key; an
empty URI is refused with an error naming the field."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from localcache.api.naming import model_dir
from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.system import LOCAL_MODEL_CACHES

pytestmark = pytest.mark.timeout(90)

HOSTILE = [
    "hf://../../../etc/passwd",
    "s3://bucket/../../root/.ssh",
    "/etc/shadow",
    "file:///var/lib/kubelet",
    "javascript://alert(1)",
    "hf://ünïcödé/mödel",
    "gs://b/" + "x" * 8000,
    "hf://o/m\u202e/txt.exe",
]


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[Client]:
    client = await Client.from_kubeconfig(cluster.kubeconfig)
    yield client
    await client.close()


def _cache(name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": "1Gi", "nodeGroups": ["g"]},
    }


async def test_hostile_uris_are_stored_verbatim_and_map_to_a_hex_folder(client: Client) -> None:
    names = [f"hostile-uri-{i}" for i in range(len(HOSTILE))]
    try:
        for name, uri in zip(names, HOSTILE, strict=True):
            await client.create(LOCAL_MODEL_CACHES, _cache(name, uri))
            stored = await client.get(LOCAL_MODEL_CACHES, name)
            assert stored["spec"]["sourceModelUri"] == uri
            folder = model_dir(stored["spec"]["sourceModelUri"])
            assert re.fullmatch(r"models/[0-9a-f]{16}", folder)
            assert folder == f"models/{hashlib.sha256(uri.encode()).hexdigest()[:16]}"
    finally:
        for name in names:
            await client.delete(LOCAL_MODEL_CACHES, name, missing_ok=True)


async def test_empty_uri_is_refused_naming_the_field(client: Client) -> None:
    with pytest.raises(errors.Invalid) as info:
        await client.create(LOCAL_MODEL_CACHES, _cache("hostile-empty-uri", ""))
    assert "spec.sourceModelUri" in str(info.value)
