"""The admission part runs as the manager's identity with the RBAC shipped in manifests/base/rbac:
the webhooks bind and rewrite, and the pod-gate controller can read and release Pods."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcache.api.constants import LABEL_LOCAL_MODEL
from localcache.controllers.isvc import INFERENCE_SERVICES, LOCAL_MODEL_CACHES
from localcache.runtime.client import Client
from localcache.runtime.resources import NAMESPACES, PODS, Resource
from localcache.testing.envtest import REPO_ROOT
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.webhooks import AdmissionHarness, until_admitted
from tests.integration.webhooks.conftest import (
    ISOLATED,
    cluster_cache,
    delete_inference_services,
    eventually,
    inference_service,
    make_namespace,
)
from tests.integration.webhooks.test_webhooks_pod import gated, predictor_pod, set_node_status

pytestmark = pytest.mark.integration

RBAC = REPO_ROOT / "manifests" / "base" / "rbac" / "manager.yaml"
KINDS = {
    "ClusterRole": Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    "ClusterRoleBinding": Resource(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
    ),
    "Role": Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    "RoleBinding": Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
}


def shipped_rbac(user: str, tag: str, config_namespace: str) -> list[dict[str, Any]]:
    """The manager's shipped roles and bindings, renamed for this test and bound to ``user``."""
    out = []
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if not doc or doc["kind"] not in KINDS:
            continue
        doc["metadata"]["name"] += f"-{tag}"
        if doc["kind"] in ("Role", "RoleBinding"):
            doc["metadata"]["namespace"] = config_namespace  # the shipped Role is for the config namespace
        if "roleRef" in doc:
            doc["roleRef"]["name"] += f"-{tag}"
            doc["subjects"] = [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]
        out.append(doc)
    return out


@pytest.fixture
async def as_manager(
    cluster: TestCluster, admin: Client, config_namespace: str, tmp_path: Path
) -> AsyncIterator[Client]:
    assert cluster.plane is not None, "needs the envtest control plane to issue a client certificate"
    tag = secrets.token_hex(3)
    user = f"localcache-manager-{tag}"
    objects = shipped_rbac(user, tag, config_namespace)
    for obj in objects:
        await admin.create(KINDS[obj["kind"]], obj)
    kubeconfig = cluster.plane.user_kubeconfig(tmp_path / "manager.kubeconfig", user)
    try:
        async with await Client.from_kubeconfig(kubeconfig) as client:
            yield client
    finally:
        for obj in objects:
            await admin.delete(
                KINDS[obj["kind"]], obj["metadata"]["name"], obj["metadata"].get("namespace"), missing_ok=True
            )


async def test_the_shipped_rbac_is_enough_for_admission(
    admin: Client, as_manager: Client, config_namespace: str
) -> None:
    value = secrets.token_hex(4)
    ns = await make_namespace(admin, {ISOLATED: value})
    tag = secrets.token_hex(3)
    cache, uri = f"c-{tag}", f"s3://bucket-{tag}/m"
    await admin.create(LOCAL_MODEL_CACHES, cluster_cache(cache, uri, ["workers"]))
    harness = AdmissionHarness(
        as_manager,
        config_namespace=config_namespace,
        disabled=("validate-cache", "validate-namespace-cache"),
        namespace_selector={"matchLabels": {ISOLATED: value}},
        config_client=admin,
    )
    try:
        await harness.start(sync_timeout=10)

        async def create(i: int) -> dict:
            return await admin.create(INFERENCE_SERVICES, inference_service(f"svc-{i}", ns, uri))

        isvc = await until_admitted(
            create, lambda o: LABEL_LOCAL_MODEL in (o["metadata"].get("labels") or {})
        )
        pod = await admin.create(PODS, predictor_pod(isvc, "p"))
        assert gated(pod)
        await set_node_status(admin, cache, {"n1": "NodeDownloaded"})

        async def released() -> bool:
            return not gated(await admin.get(PODS, "p", ns))

        await eventually(released, "pod released by the gate controller running with the shipped RBAC")
    finally:
        await harness.close()
        await delete_inference_services(admin, ns)
        await admin.delete(NAMESPACES, ns, missing_ok=True)
        await admin.delete(LOCAL_MODEL_CACHES, cache, missing_ok=True)
