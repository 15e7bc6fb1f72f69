"""RBAC least privilege against the real API server: each component's identity, with exactly the
permissions of manifests/base/rbac, can do its job and nothing outside it.

The identities are client certificates naming the ServiceAccounts (``system:serviceaccount:kserve:...``
in the ServiceAccount groups), as LocalSystem and the chaos runs use for the real processes; those runs
show the components *work* with these permissions, this module shows what they *cannot* do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from localcache.runtime import errors
from localcache.runtime.client import Client
from localcache.runtime.resources import JOBS, NODES, PODS, SECRETS, Resource
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.system import (
    LOCAL_MODEL_CACHES,
    LOCAL_MODEL_NAMESPACE_CACHES,
    LOCAL_MODEL_NODE_GROUPS,
    LOCAL_MODEL_NODES,
    MANIFESTS,
    apply_documents,
    load_yaml,
)

pytestmark = pytest.mark.timeout(120)

CONFIG_NS = "kserve"
JOB_NS = "kserve-localmodel-jobs"
GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{CONFIG_NS}", "system:authenticated")
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", True)


@pytest.fixture(scope="module")
async def admin(cluster: TestCluster) -> AsyncIterator[Client]:
    if cluster.plane is None:
        pytest.skip("needs envtest (client certificates for ServiceAccount identities)")
    client = await Client.from_kubeconfig(cluster.kubeconfig)
    await apply_documents(client, load_yaml(MANIFESTS / "base" / "namespace.yaml"))
    for path in sorted((MANIFESTS / "base" / "rbac").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            await apply_documents(client, load_yaml(path))
    await apply_documents(
        client,
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": JOB_NS}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rbac-other"}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "not-yours", "namespace": "rbac-other"},
                "stringData": {"token": "canary"},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hf-secret", "namespace": JOB_NS},
                "stringData": {"HF_TOKEN": "canary"},
            },
        ],
    )
    yield client
    await client.close()


async def _identity(cluster: TestCluster, tmp: Path, sa: str) -> Client:
    assert cluster.plane is not None
    path = cluster.plane.user_kubeconfig(
        tmp / f"{sa}.kubeconfig", f"system:serviceaccount:{CONFIG_NS}:{sa}", GROUPS
    )
    return await Client.from_kubeconfig(path)


@pytest.fixture(scope="module")
async def agent(
    cluster: TestCluster, admin: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    client = await _identity(cluster, tmp_path_factory.mktemp("agent"), "localcache-agent")
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def manager(
    cluster: TestCluster, admin: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    client = await _identity(cluster, tmp_path_factory.mktemp("manager"), "localcache-controller-manager")
    yield client
    await client.close()


async def _forbidden(call: Callable[[], Awaitable[Any]]) -> None:
    with pytest.raises(errors.Forbidden) as info:
        await call()
    assert "forbidden" in str(info.value).lower()


def _cache(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": "hf://o/m", "modelSize": "1Gi", "nodeGroups": ["g"]},
    }


async def test_agent_reads_what_it_needs(agent: Client) -> None:
    await agent.list(LOCAL_MODEL_NODES)
    await agent.list(LOCAL_MODEL_NODE_GROUPS)
    await agent.list(NODES)
    await agent.list(JOBS, JOB_NS)
    secret = await agent.get(SECRETS, "hf-secret", JOB_NS)
    assert secret["metadata"]["name"] == "hf-secret"


async def test_agent_cannot_read_secrets_outside_the_job_namespace(agent: Client) -> None:
    await _forbidden(lambda: agent.get(SECRETS, "not-yours", "rbac-other"))
    await _forbidden(lambda: agent.list(SECRETS, None))
    await _forbidden(lambda: agent.list(SECRETS, CONFIG_NS))


async def test_agent_cannot_write_caches_nodes_or_jobs_elsewhere(agent: Client) -> None:
    await _forbidden(lambda: agent.create(LOCAL_MODEL_CACHES, _cache("agent-may-not")))
    await _forbidden(lambda: agent.list(LOCAL_MODEL_CACHES))
    await _forbidden(lambda: agent.list(LOCAL_MODEL_NAMESPACE_CACHES, None))
    lmn = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode", "metadata": {"name": "n-x"}}
    await _forbidden(lambda: agent.create(LOCAL_MODEL_NODES, lmn))
    await _forbidden(lambda: agent.delete(NODES, "any-node"))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "default"},
        "spec": {},
    }
    await _forbidden(lambda: agent.create(JOBS, job))
    await _forbidden(lambda: agent.list(PODS, "default"))
    await _forbidden(lambda: agent.list(CLUSTER_ROLE_BINDINGS))


async def test_manager_reads_and_writes_what_it_needs(manager: Client) -> None:
    await manager.list(LOCAL_MODEL_CACHES)
    await manager.list(LOCAL_MODEL_NAMESPACE_CACHES, None)
    await manager.list(LOCAL_MODEL_NODES)
    await manager.list(NODES)
    await manager.list(Resource("", "v1", "persistentvolumes", "PersistentVolume", False))


async def test_manager_cannot_read_secrets_create_jobs_or_caches(manager: Client) -> None:
    await _forbidden(lambda: manager.get(SECRETS, "hf-secret", JOB_NS))
    await _forbidden(lambda: manager.list(SECRETS, None))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": JOB_NS},
        "spec": {},
    }
    await _forbidden(lambda: manager.create(JOBS, job))
    await _forbidden(lambda: manager.create(LOCAL_MODEL_CACHES, _cache("manager-may-not")))
    await _forbidden(lambda: manager.delete(LOCAL_MODEL_CACHES, "anything"))
    await _forbidden(lambda: manager.delete(NODES, "any-node"))
    await _forbidden(lambda: manager.list(CLUSTER_ROLE_BINDINGS))


async def test_manager_can_write_node_group_status_as_its_controller_does(
    admin: Client, manager: Client
) -> None:
    from localcache.testing.system import guide_example

    (group,) = guide_example("08-local-model-node-group.yaml")
    group["metadata"]["name"] = "rbac-status-group"
    await apply_documents(admin, [group])
    try:
        patched = await manager.patch(
            LOCAL_MODEL_NODE_GROUPS, "rbac-status-group", {"status": {"used": "1Gi", "available": "9Gi"}}
        )
        assert patched["status"]["used"] == "1Gi"
    finally:
        await admin.delete(LOCAL_MODEL_NODE_GROUPS, "rbac-status-group", missing_ok=True)
