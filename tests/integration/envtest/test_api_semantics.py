"""The API semantics this project relies on, checked against the real kube-apiserver the harness runs.

If one of these fails, every controller test built on top would be testing a wrong assumption.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch

from localcache.testing.envtest import assets_dir
from localcache.testing.pytest_plugin import TestCluster
from localcache.testing.wait import eventually

GROUP, VERSION, PLURAL = "test.localcache.dev", "v1", "widgets"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="session")
async def widget_crd(cluster: TestCluster) -> AsyncIterator[None]:
    api = await cluster.api_client()
    async with api:
        ext = k8s.ApiextensionsV1Api(api)
        try:
            await ext.create_custom_resource_definition(WIDGET_CRD)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise

        async def established() -> bool:
            crd = await ext.read_custom_resource_definition(WIDGET_CRD["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        await eventually(established)
    yield


@pytest.fixture
async def widgets(api_client: k8s.ApiClient, widget_crd: None) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client)


def widget(name: str, size: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


async def test_create_get_list_watch(widgets: k8s.CustomObjectsApi, namespace: str) -> None:
    args = (GROUP, VERSION, namespace, PLURAL)
    created = await widgets.create_namespaced_custom_object(*args, widget("a", 3))
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    got = await widgets.get_namespaced_custom_object(*args, "a")
    assert got["spec"] == {"size": 3}

    listed = await widgets.list_namespaced_custom_object(*args)
    start_rv = listed["metadata"]["resourceVersion"]
    assert [o["metadata"]["name"] for o in listed["items"]] == ["a"]

    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        w = k8s_watch.Watch()
        async with w.stream(
            widgets.list_namespaced_custom_object, *args, resource_version=start_rv, timeout_seconds=30
        ) as stream:
            async for event in stream:
                seen.append((event["type"], event["object"]["metadata"]["name"]))
                if len(seen) == 2:
                    return

    watcher = asyncio.create_task(watch())
    await widgets.create_namespaced_custom_object(*args, widget("b"))
    await widgets.delete_namespaced_custom_object(*args, "b")
    await asyncio.wait_for(watcher, 15)
    assert seen == [("ADDED", "b"), ("DELETED", "b")]


async def test_stale_update_conflicts(widgets: k8s.CustomObjectsApi, namespace: str) -> None:
    args = (GROUP, VERSION, namespace, PLURAL)
    first = await widgets.create_namespaced_custom_object(*args, widget("c"))
    fresh = {**first, "spec": {"size": 2}}
    await widgets.replace_namespaced_custom_object(*args, "c", fresh)
    stale = {**first, "spec": {"size": 5}}  # still carries the first resourceVersion
    with pytest.raises(k8s.ApiException) as err:
        await widgets.replace_namespaced_custom_object(*args, "c", stale)
    assert err.value.status == 409
    assert json.loads(err.value.body)["reason"] == "Conflict"


async def test_watch_from_compacted_resource_version_is_gone(
    widgets: k8s.CustomObjectsApi, namespace: str, cluster: TestCluster
) -> None:
    args = (GROUP, VERSION, namespace, PLURAL)
    first = await widgets.create_namespaced_custom_object(*args, widget("old"))
    old_rv = first["metadata"]["resourceVersion"]
    for i in range(5):
        await widgets.create_namespaced_custom_object(*args, widget(f"new-{i}"))
    if cluster.plane is not None:
        cluster.plane.compact()
        cluster.plane.restart_apiserver()  # its watch cache starts over above the compacted revision
    else:
        old_rv = "1"  # on a long-lived cluster, revision 1 is compacted long ago

    async def first_watch_outcome() -> Any:
        """The first event of a watch from old_rv, or the status code the request itself failed with.
        429 means the restarted server's watch cache is still filling: retry, as every client does."""
        w = k8s_watch.Watch()
        try:
            async with w.stream(
                widgets.list_namespaced_custom_object, *args, resource_version=old_rv, timeout_seconds=10
            ) as stream:
                async for event in stream:
                    return event
        except k8s.ApiException as exc:
            return None if exc.status == 429 else exc.status
        return None

    outcome = await eventually(first_watch_outcome, within=30, interval=0.2)
    if isinstance(outcome, int):
        assert outcome == 410  # some versions answer the watch request itself with 410
    else:  # otherwise the stream opens and its first event is an ERROR carrying a 410 Status
        assert outcome["type"] == "ERROR", outcome
        assert outcome["raw_object"]["code"] == 410, outcome


async def test_status_subresource_does_not_bump_generation(
    widgets: k8s.CustomObjectsApi, namespace: str
) -> None:
    args = (GROUP, VERSION, namespace, PLURAL)
    created = await widgets.create_namespaced_custom_object(*args, widget("s"))
    with_status = {**created, "status": {"phase": "Ready"}, "spec": {"size": 99}}
    updated = await widgets.replace_namespaced_custom_object_status(*args, "s", with_status)
    assert updated["metadata"]["generation"] == 1
    assert updated["status"] == {"phase": "Ready"}
    assert updated["spec"] == {"size": 1}, "a /status write must not change spec"
    spec_changed = await widgets.patch_namespaced_custom_object(
        *args, "s", {"spec": {"size": 2}}, _content_type="application/merge-patch+json"
    )
    assert spec_changed["metadata"]["generation"] == 2


async def test_finalizer_holds_deleted_object(widgets: k8s.CustomObjectsApi, namespace: str) -> None:
    args = (GROUP, VERSION, namespace, PLURAL)
    body = widget("f")
    body["metadata"]["finalizers"] = ["test.localcache.dev/hold"]
    await widgets.create_namespaced_custom_object(*args, body)
    await widgets.delete_namespaced_custom_object(*args, "f")
    held = await widgets.get_namespaced_custom_object(*args, "f")
    assert held["metadata"]["deletionTimestamp"]
    await widgets.patch_namespaced_custom_object(
        *args, "f", {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json"
    )

    async def gone() -> bool:
        try:
            await widgets.get_namespaced_custom_object(*args, "f")
        except k8s.ApiException as exc:
            return exc.status == 404
        return False

    await eventually(gone)


async def test_owner_reference_cascade_needs_controller_manager(
    api_client: k8s.ApiClient, namespace: str, cluster: TestCluster
) -> None:
    if cluster.plane is not None and not cluster.plane.has_controller_manager:
        pytest.skip("kube-controller-manager was not built; the garbage collector is not running")
    core = k8s.CoreV1Api(api_client)
    owner = await core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
    )
    ref = k8s.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    await core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="dependent", owner_references=[ref]))
    )
    await core.delete_namespaced_config_map("owner", namespace)

    async def dependent_collected() -> bool:
        try:
            await core.read_namespaced_config_map("dependent", namespace)
        except k8s.ApiException as exc:
            return exc.status == 404
        return False

    await eventually(dependent_collected, within=30)


async def test_kubectl_works_with_written_kubeconfig(
    cluster: TestCluster, widgets: k8s.CustomObjectsApi, namespace: str
) -> None:
    kubectl = assets_dir() / "kubectl" if cluster.plane is not None else "kubectl"
    name = f"k-{secrets.token_hex(3)}"
    await widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget(name, 7))
    proc = await asyncio.create_subprocess_exec(
        str(kubectl),
        f"--kubeconfig={cluster.kubeconfig}",
        "get",
        "widgets",
        "-n",
        namespace,
        "-o",
        "json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    items = json.loads(out)["items"]
    assert [(i["metadata"]["name"], i["spec"]["size"]) for i in items] == [(name, 7)]
