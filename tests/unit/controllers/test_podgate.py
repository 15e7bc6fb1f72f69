"""The pod-gate reconciler against in-memory fakes: hold, release once, narrow, retry on conflict."""

from __future__ import annotations

from typing import Any

from localcache.api.constants import LABEL_LOCAL_MODEL, LABEL_LOCAL_MODEL_NAMESPACE
from localcache.controllers.isvc import LOCAL_MODEL_CACHES, CacheReader
from localcache.controllers.pod import SCHEDULING_GATE, ModelReadiness
from localcache.controllers.podgate import CACHE_INDEX, PodGateReconciler, _cache_key
from localcache.runtime.reconcile import Request, Result
from localcache.runtime.resources import PODS
from tests.unit.controllers.test_admission_fakes import FakeClient, cache_obj

Obj = dict[str, Any]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def event(self, obj: Obj, type: str, reason: str, message: str, *, resource: Any = None) -> None:
        self.events.append((type, reason, message))


class PodStore:
    """The pod informer's store, read through to the fake client (no informer lag in these tests)."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def get_by_name(self, namespace: str, name: str) -> Obj | None:
        return next((p for p in self.client.items(PODS, namespace) if p["metadata"]["name"] == name), None)

    def by_index(self, index: str, value: str) -> list[Obj]:
        assert index == CACHE_INDEX
        return [p for p in self.client.items(PODS) if _cache_key(p) == [value]]


class Pods:
    def __init__(self, client: FakeClient) -> None:
        self.store = PodStore(client)


def gated_pod(name: str, cache: str = "c", cache_ns: str | None = None, gated: bool = True) -> Obj:
    labels = {LABEL_LOCAL_MODEL: cache}
    if cache_ns:
        labels[LABEL_LOCAL_MODEL_NAMESPACE] = cache_ns
    spec: Obj = {"containers": [{"name": "kserve-container"}]}
    if gated:
        spec["schedulingGates"] = [{"name": "other"}, {"name": SCHEDULING_GATE}]
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels, "annotations": {}}, "spec": spec}


def setup(status: dict[str, str]) -> tuple[FakeClient, PodGateReconciler, Recorder]:
    client = FakeClient()
    client.put(LOCAL_MODEL_CACHES, cache_obj("c", "s3://foo", ["g"], node_status=status))
    recorder = Recorder()
    reconciler = PodGateReconciler(
        client, Pods(client), ModelReadiness(client, CacheReader(client)), recorder, recheck_after=30
    )
    return client, reconciler, recorder


async def test_holds_the_gate_until_downloaded_then_narrows_and_lifts_it() -> None:
    client, reconciler, recorder = setup({"n1": "NodeDownloading"})
    client.put(PODS, gated_pod("p"))
    assert await reconciler.reconcile(Request("ns", "p")) == Result(requeue_after=30)
    assert await reconciler.reconcile(Request("ns", "p")) == Result(requeue_after=30)
    assert client.count("update") == 0
    assert [r for _, r, _ in recorder.events] == ["WaitingForModel"], "told once, not on every reconcile"

    cache = client.items(LOCAL_MODEL_CACHES)[0]
    cache["status"] = {"nodeStatus": {"n1": "NodeDownloaded", "n2": "NodeDownloading"}}
    client.put(LOCAL_MODEL_CACHES, cache)
    assert await reconciler.reconcile(Request("ns", "p")) is None
    (stored,) = client.items(PODS)
    assert stored["spec"]["schedulingGates"] == [{"name": "other"}], "only our gate is removed"
    terms = stored["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}
    ]
    assert recorder.events[-1][1] == "ModelReady" and "n1" in recorder.events[-1][2]
    assert reconciler.released == 1

    # level-based: a second reconcile of the released pod does nothing
    assert await reconciler.reconcile(Request("ns", "p")) is None
    assert client.count("update") == 1


async def test_a_conflict_is_retried_with_a_fresh_read() -> None:
    client, reconciler, _ = setup({"n1": "NodeDownloaded"})
    client.put(PODS, gated_pod("p"))
    client.conflicts_to_raise = 2
    assert await reconciler.reconcile(Request("ns", "p")) is None
    assert client.count("update") == 3
    assert SCHEDULING_GATE not in str(client.items(PODS)[0]["spec"])


async def test_pods_without_the_gate_or_gone_are_ignored() -> None:
    client, reconciler, _ = setup({"n1": "NodeDownloaded"})
    client.put(PODS, gated_pod("free", gated=False))
    assert await reconciler.reconcile(Request("ns", "free")) is None
    assert await reconciler.reconcile(Request("ns", "gone")) is None
    assert client.count("update") == 0 and client.count("get", "localmodelcaches") == 0


async def test_a_cache_maps_to_its_gated_pods_only() -> None:
    client, reconciler, _ = setup({})
    client.put(PODS, gated_pod("a"))
    client.put(PODS, gated_pod("b", gated=False))
    client.put(PODS, gated_pod("c-ns", cache_ns="ns"))  # bound to the namespace cache "ns/c", not to "c"
    client.put(PODS, gated_pod("d", cache="other"))
    assert reconciler.requests_for_cache({"metadata": {"name": "c"}}) == [Request("ns", "a")]
    assert reconciler.requests_for_cache({"metadata": {"name": "c", "namespace": "ns"}}) == [
        Request("ns", "c-ns")
    ]
