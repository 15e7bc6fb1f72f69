"""The raw-JSON client against a real kube-apiserver."""

import asyncio

import pytest

from localcache.runtime import Client, errors
from localcache.runtime.resources import CONFIGMAPS, NAMESPACES

pytestmark = pytest.mark.integration


async def test_crud_errors_watch_and_discovery(cluster, namespace: str) -> None:  # type: ignore[no-untyped-def]
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": namespace},
            "data": {"k": "1"},
        }
        created = await c.create(CONFIGMAPS, cm)
        rv0 = created["metadata"]["resourceVersion"]
        with pytest.raises(errors.AlreadyExists):
            await c.create(CONFIGMAPS, cm)
        with pytest.raises(errors.NotFound):
            await c.get(CONFIGMAPS, "missing", namespace)
        with pytest.raises(errors.Invalid) as inv:
            await c.create(CONFIGMAPS, {"metadata": {"name": "Bad_Name", "namespace": namespace}})
        assert any(cause.field == "metadata.name" for cause in inv.value.causes)

        got = await c.get(CONFIGMAPS, "a", namespace)
        got["data"]["k"] = "2"
        updated = await c.update(CONFIGMAPS, got)
        stale = dict(created, data={"k": "3"})
        with pytest.raises(errors.Conflict):
            await c.update(CONFIGMAPS, stale)
        patched = await c.patch(CONFIGMAPS, "a", {"data": {"m": "x"}}, namespace)
        assert patched["data"] == {"k": "2", "m": "x"}
        applied = await c.patch(
            CONFIGMAPS,
            "b",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "b", "namespace": namespace},
                "data": {"z": "1"},
            },
            namespace,
            patch_type="apply",
            field_manager="test",
        )
        assert applied["data"] == {"z": "1"}
        jp = await c.patch(
            CONFIGMAPS, "b", [{"op": "add", "path": "/data/y", "value": "2"}], namespace, patch_type="json"
        )
        assert jp["data"] == {"z": "1", "y": "2"}

        # watch from the creation RV sees the later writes in order
        events: list[tuple[str, str]] = []
        async with c.watch(CONFIGMAPS, namespace, resource_version=rv0, timeout_seconds=5) as w:
            async for etype, obj in w:
                events.append((etype, obj["metadata"]["name"]))
                if len(events) == 4:
                    break
        assert events == [("MODIFIED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("MODIFIED", "b")]

        with pytest.raises(errors.Conflict):
            await c.delete(
                CONFIGMAPS, "a", namespace, resource_version=updated["metadata"]["resourceVersion"]
            )
        await c.delete(CONFIGMAPS, "a", namespace, uid=created["metadata"]["uid"])
        assert await c.delete(CONFIGMAPS, "a", namespace, missing_ok=True) is None

        # paging returns every item
        await asyncio.gather(
            *(
                c.create(CONFIGMAPS, {"metadata": {"name": f"p{i}", "namespace": namespace}})
                for i in range(12)
            )
        )
        items, rv = await c.list_all(CONFIGMAPS, namespace, page_size=5)
        assert sorted(i["metadata"]["name"] for i in items) == sorted(["b"] + [f"p{i}" for i in range(12)])
        assert int(rv) > 0

        assert await c.resource_for("v1", "Namespace") == NAMESPACES
        res = await c.resource_for("apps/v1", "Deployment")
        assert (res.plural, res.namespaced) == ("deployments", True)
        with pytest.raises(errors.NotFound):
            await c.resource_for("v1", "NoSuchKind")


async def test_config_from_kubeconfig_env(cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KUBECONFIG", f"{cluster.kubeconfig}:/nonexistent/second")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with await Client.from_config() as c:
        ns = await c.get(NAMESPACES, "default")
        assert ns["metadata"]["name"] == "default"
        assert c.host.startswith("https://")


async def test_requests_beyond_the_connection_pool_wait_their_turn(cluster, namespace: str) -> None:  # type: ignore[no-untyped-def]
    """A manager writing to fifty nodes at once must not open a TLS connection per request."""
    from localcache.runtime.client import DEFAULT_MAX_CONNECTIONS

    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        connector = c._session().connector
        assert connector is not None and connector.limit == DEFAULT_MAX_CONNECTIONS
        results = await asyncio.gather(
            *(c.get(NAMESPACES, namespace) for _ in range(3 * DEFAULT_MAX_CONNECTIONS))
        )
        assert {r["metadata"]["name"] for r in results} == {namespace}
        opened = sum(len(conns) for conns in connector._conns.values())
        assert 0 < opened <= DEFAULT_MAX_CONNECTIONS
