"""Fixtures for the admission tests: the real API server calls our webhooks through the shipped
webhook configurations (``localcache.testing.webhooks.AdmissionHarness``).

One harness serves every test of this directory (``admission``); its configurations skip namespaces labelled
``localcache.test/isolated``, where the failure-policy tests register and stop harnesses of their own.
The seed's YAML (``seed/``, copied from the user guide's examples) is loaded as written, except that
namespaced objects are moved into the test's fresh namespaces.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcache.api.constants import LABEL_LOCAL_MODEL
from localcache.controllers.isvc import (
    INFERENCE_SERVICES,
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
)
from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import CONFIGMAPS, NAMESPACES
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.webhooks import AdmissionHarness, until_admitted

SEED = Path(__file__).parent / "seed"
ISOLATED = "localcache.test/isolated"
NOT_ISOLATED = {"matchExpressions": [{"key": ISOLATED, "operator": "DoesNotExist"}]}

Obj = dict[str, Any]


def seed(name: str) -> Obj:
    """One seed example by file-name prefix (``"09"``), as a dict."""
    (path,) = SEED.glob(f"{name}-*.yaml")
    return yaml.safe_load(path.read_text())


def suffix() -> str:
    return secrets.token_hex(3)


async def eventually(probe: Callable[[], Awaitable[Any]], what: str, within: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    value: Any = None
    while loop.time() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {within}s (last: {value!r})")


@pytest.fixture(scope="session")
async def admin(cluster: TestCluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as client:
        yield client


async def make_namespace(client: Client, labels: dict[str, str] | None = None) -> str:
    name = f"t-{suffix()}"
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = labels
    await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    return name


@pytest.fixture(scope="session")
async def config_namespace(admin: Client) -> AsyncIterator[str]:
    """A namespace holding the seed's inferenceservice-config (``localModel.enabled: true``)."""
    ns = await make_namespace(admin)
    configmap = seed("01")
    configmap["metadata"]["namespace"] = ns
    await admin.create(CONFIGMAPS, configmap)
    yield ns
    await admin.delete(NAMESPACES, ns, missing_ok=True)


@pytest.fixture(scope="session")
async def node_group(admin: Client) -> AsyncIterator[str]:
    """The seed's node group ``workers`` (left alone if another test module already made it)."""
    group = seed("08")
    created = False
    try:
        await admin.create(LOCAL_MODEL_NODE_GROUPS, group)
        created = True
    except errors.AlreadyExists:
        pass
    yield group["metadata"]["name"]
    if created:
        await admin.delete(LOCAL_MODEL_NODE_GROUPS, group["metadata"]["name"], missing_ok=True)


async def delete_inference_services(client: Client, namespace: str) -> None:
    """Every InferenceService in ``namespace``, now: namespace deletion is asynchronous, and a cache
    cannot be deleted while one of them is bound to it."""
    for item in (await client.list(INFERENCE_SERVICES, namespace))["items"]:
        await client.delete(INFERENCE_SERVICES, item["metadata"]["name"], namespace, missing_ok=True)


def cluster_cache(name: str, uri: str, groups: list[str]) -> Obj:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": "1Gi", "nodeGroups": groups},
    }


def inference_service(name: str, namespace: str, uri: str, annotations: dict[str, str] | None = None) -> Obj:
    isvc = copy.deepcopy(seed("10"))
    isvc["metadata"] = {"name": name, "namespace": namespace}
    if annotations:
        isvc["metadata"]["annotations"] = dict(annotations)
    isvc["spec"]["predictor"]["model"]["storageUri"] = uri
    return isvc


async def wait_effective(client: Client, namespace: str) -> None:
    """Block until the API server calls both the mutating and the validating configurations."""
    tag = suffix()
    uri = f"s3://probe-{tag}/model"
    await client.create(LOCAL_MODEL_CACHES, cluster_cache(f"probe-{tag}", uri, ["probe"]))

    async def duplicate(i: int) -> Obj:
        return await client.create(LOCAL_MODEL_CACHES, cluster_cache(f"probe-{tag}-{i}", uri, ["probe"]))

    async def drop_cache(obj: Obj) -> None:
        await client.delete(LOCAL_MODEL_CACHES, obj["metadata"]["name"], missing_ok=True)

    await until_admitted(duplicate, lambda _: False, expect_error=True, cleanup=drop_cache)

    async def isvc(i: int) -> Obj:
        return await client.create(INFERENCE_SERVICES, inference_service(f"probe-{tag}-{i}", namespace, uri))

    async def drop_isvc(obj: Obj) -> None:
        await client.delete(INFERENCE_SERVICES, obj["metadata"]["name"], namespace, missing_ok=True)

    labelled = await until_admitted(
        isvc,
        lambda o: (o["metadata"].get("labels") or {}).get(LABEL_LOCAL_MODEL) == f"probe-{tag}",
        cleanup=drop_isvc,
    )
    await drop_isvc(labelled)
    await client.delete(LOCAL_MODEL_CACHES, f"probe-{tag}", missing_ok=True)


@pytest.fixture(scope="session")
async def admission(admin: Client, config_namespace: str) -> AsyncIterator[AdmissionHarness]:
    """The webhooks and the pod-gate controller, called by the API server for non-isolated namespaces."""
    harness = AdmissionHarness(admin, config_namespace=config_namespace, namespace_selector=NOT_ISOLATED)
    await harness.start()
    try:
        await wait_effective(admin, config_namespace)
        yield harness
    finally:
        await harness.close()


@pytest.fixture
async def ns(admin: Client, admission: AdmissionHarness) -> AsyncIterator[str]:
    """A fresh namespace the shared harness serves."""
    name = await make_namespace(admin)
    yield name
    await admin.delete(NAMESPACES, name, missing_ok=True)


__all__ = [
    "ISOLATED",
    "LOCAL_MODEL_NAMESPACE_CACHES",
    "cluster_cache",
    "delete_inference_services",
    "eventually",
    "inference_service",
    "make_namespace",
    "seed",
    "suffix",
]
