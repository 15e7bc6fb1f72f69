"""EventRecorder against the real API server: identical events become one Event whose count and
lastTimestamp are patched; similar messages are combined; a cluster-scoped object's events go to
``default``; a forbidden write is logged, not raised."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localcache.runtime.client import Client
from localcache.runtime.clock import FakeClock
from localcache.runtime.events import COMBINED_PREFIX, EventRecorder
from localcache.runtime.resources import CONFIGMAPS, EVENTS, NAMESPACES
from localcache.testing.pytest_plugin import TestCluster

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(cluster.kubeconfig) as c:
        yield c


async def events_about(client: Client, namespace: str, name: str) -> list[dict[str, Any]]:
    items = (await client.list(EVENTS, namespace))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


async def test_repeats_are_counted_on_one_event(client: Client, namespace: str) -> None:
    cm = await client.create(CONFIGMAPS, {"metadata": {"name": "subject", "namespace": namespace}})
    cm.setdefault("kind", "ConfigMap")
    cm.setdefault("apiVersion", "v1")
    clock = FakeClock(start=datetime.now(UTC))  # event timestamps come from the recorder's clock
    recorder = EventRecorder(client, "events-it", host="test-host", clock=clock)
    try:
        recorder.event(cm, "Warning", "Failed", "could not frobnicate")
        await recorder.flush()
        await clock.advance(90)
        recorder.event(cm, "Warning", "Failed", "could not frobnicate")
        recorder.event(cm, "Warning", "Failed", "could not frobnicate")
        for i in range(12):
            recorder.event(cm, "Normal", "Progress", f"step {i}")
        await recorder.flush()
    finally:
        await recorder.close()
    events = await events_about(client, namespace, "subject")
    failed = [e for e in events if e["reason"] == "Failed"]
    assert len(failed) == 1
    ev = failed[0]
    assert ev["count"] == 3 and ev["type"] == "Warning" and ev["message"] == "could not frobnicate"
    first = datetime.fromisoformat(ev["firstTimestamp"])
    assert datetime.fromisoformat(ev["lastTimestamp"]) - first == timedelta(seconds=90)
    assert (
        ev["involvedObject"]["uid"] == cm["metadata"]["uid"] and ev["involvedObject"]["kind"] == "ConfigMap"
    )
    assert ev["source"] == {"component": "events-it", "host": "test-host"}
    progress = [e for e in events if e["reason"] == "Progress"]
    assert len(progress) == 10, "nine distinct messages, then one combined event"
    combined = [e for e in progress if e["message"].startswith(COMBINED_PREFIX)]
    assert len(combined) == 1 and combined[0]["count"] == 3 and combined[0]["message"].endswith("step 11")
    assert recorder.dropped == 0


async def test_cluster_scoped_objects_and_failures(client: Client, namespace: str) -> None:
    ns_obj = await client.get(NAMESPACES, namespace)
    ns_obj.setdefault("kind", "Namespace")
    ns_obj.setdefault("apiVersion", "v1")
    recorder = EventRecorder(client, "events-it", host="")
    try:
        marker = secrets.token_hex(4)
        recorder.event(ns_obj, "Normal", "Checked", f"namespace checked {marker}")
        ghost = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "x", "namespace": "no-such-ns"},
        }
        recorder.event(ghost, "Normal", "Lost", "the namespace does not exist")
        await recorder.flush()
    finally:
        await recorder.close()
    mine = [e for e in await events_about(client, "default", namespace) if marker in e["message"]]
    assert len(mine) == 1 and mine[0]["involvedObject"]["kind"] == "Namespace"
    assert recorder.dropped == 1, "the event in a missing namespace is dropped, not raised"
