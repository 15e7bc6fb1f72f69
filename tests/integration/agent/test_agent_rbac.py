"""The agent runs as a user holding exactly the shipped RBAC (manifests/rbac/agent.yaml).

The ClusterRole is bound as shipped; the namespaced Roles (job namespace, config namespace) are
re-created in the test's namespace, which plays both. The agent must create its Job, read the storage
secret's keys, read the failed pod's termination message, write its status and record events, all
without a permission error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcache.runtime.client import Client
from localcache.runtime.resources import EVENTS, PODS, SECRETS, Resource
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.wait import eventually
from tests.integration.agent.test_agent_apiserver import Env, env  # noqa: F401 (env is a fixture)

pytestmark = pytest.mark.integration

RBAC = Path(__file__).resolve().parents[3] / "manifests" / "base" / "rbac" / "agent.yaml"
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False)
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True)
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)


@pytest.fixture
async def agent_user(cluster: TestCluster, env: Env, tmp_path: Path) -> AsyncIterator[Client]:  # noqa: F811
    if cluster.plane is None:
        pytest.skip("needs the envtest control plane to mint a user certificate")
    user = f"localcache-agent-{secrets.token_hex(3)}"
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    cluster_scoped: list[tuple[Resource, str]] = []
    admin = env.client
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ClusterRole":
            doc["metadata"] = {"name": f"{name}-{user}"}
            await admin.create(CLUSTER_ROLES, doc)
            cluster_scoped.append((CLUSTER_ROLES, doc["metadata"]["name"]))
        elif kind == "ClusterRoleBinding":
            doc["metadata"] = {"name": f"{name}-{user}"}
            doc["roleRef"]["name"] = f"{doc['roleRef']['name']}-{user}"
            doc["subjects"] = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            await admin.create(CLUSTER_ROLE_BINDINGS, doc)
            cluster_scoped.append((CLUSTER_ROLE_BINDINGS, doc["metadata"]["name"]))
        elif kind == "Role":
            doc["metadata"] = {"name": name, "namespace": env.namespace}
            await admin.create(ROLES, doc)
        elif kind == "RoleBinding":
            doc["metadata"] = {"name": name, "namespace": env.namespace}
            doc["subjects"] = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            await admin.create(ROLE_BINDINGS, doc)
    kubeconfig = cluster.plane.user_kubeconfig(tmp_path / "agent.kubeconfig", user)
    try:
        async with await Client.from_kubeconfig(kubeconfig) as client:
            yield client
    finally:
        for resource, name in cluster_scoped:
            with contextlib.suppress(Exception):
                await admin.delete(resource, name, missing_ok=True)


async def test_agent_works_with_exactly_the_shipped_rbac(env: Env, agent_user: Client) -> None:  # noqa: F811
    # Secrets are readable in the job namespace only: the agent may see the key, never needs more.
    token = base64.b64encode(json.dumps({"type": "hf", "token": "hf_RBACSECRET"}).encode()).decode()
    await env.client.create(
        SECRETS, {"metadata": {"name": "storage-config", "namespace": env.namespace}, "data": {"hf": token}}
    )
    await env.create_lmn(env.entry("m1", storage={"key": "hf"}))
    env.client, admin = agent_user, env.client  # the agent (started below) runs as the RBAC user
    try:
        await env.start(record_events=True)
    finally:
        env.client = admin

    async def one_job() -> dict[str, Any] | None:
        jobs = await env.jobs()
        return jobs[0] if jobs else None

    job = await eventually(one_job, within=30, what="Job created under the shipped RBAC")
    name = job["metadata"]["name"]
    # The Job fails without the reason in its condition; the reason is in its pod's termination message,
    # which the agent may only read with the Role's pods permission.
    pod = await admin.create(
        PODS,
        {
            "metadata": {
                "name": f"{name}-x",
                "namespace": env.namespace,
                "labels": {"batch.kubernetes.io/job-name": name},
            },
            "spec": {
                "containers": [{"name": "kserve-localmodel-download", "image": "x"}],
                "nodeName": env.node,
            },
        },
    )
    line = "localcache-download error: reason=DiskFull exit_code=12 message=no space left on device"
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "kserve-localmodel-download",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 12, "reason": "Error", "message": line}},
            }
        ],
    }
    await admin.update_status(PODS, pod)
    await env.finish_job(job, ok=False, message="Job has reached the specified backoff limit")

    async def reason_shown() -> str:
        detail = await env.detail("m1")
        return detail.get("message", "") if detail.get("status") == "ModelDownloadError" else ""

    message = await eventually(reason_shown, within=30, what="the failure reason under the shipped RBAC")
    assert message.startswith("DiskFull: no space left on device")
    assert "hf_RBACSECRET" not in json.dumps(await env.status())

    async def events_recorded() -> set[str]:
        page = await admin.list(EVENTS, "default")
        reasons = {e["reason"] for e in page["items"] if e["involvedObject"].get("name") == env.node}
        return reasons if {"DownloadStarted", "DownloadFailed"} <= reasons else set()

    await eventually(events_recorded, within=30, what="events recorded under the shipped RBAC")

    env.write_model()

    async def downloaded() -> bool:
        return await env.model_state("m1") == "ModelDownloaded"

    await eventually(downloaded, within=30, what="Downloaded under the shipped RBAC")
