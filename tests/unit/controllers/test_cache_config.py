"""The cache controllers' view of inferenceservice-config: parsed once per version, an invalid one
warned about (on the ConfigMap) while the last good one stays in force."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcache.config import ConfigError
from localcache.controllers.cache import ConfigSource


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str | None, str], dict[str, Any]] = {}

    def get_by_name(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))


class FakeInformer:
    def __init__(self) -> None:
        self.store = FakeStore()


class FakeCache:
    def __init__(self) -> None:
        self.informer = FakeInformer()
        self.requested: list[tuple[Any, dict[str, Any]]] = []

    def informer_for(self, resource: Any, **kw: Any) -> FakeInformer:
        self.requested.append((resource, kw))
        return self.informer


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def warning(self, obj: dict[str, Any], reason: str, message: str) -> None:
        self.events.append((obj["kind"], obj["metadata"]["name"], reason, message))


def put(cache: FakeCache, rv: str, local_model: Any) -> None:
    data = {"localModel": local_model if isinstance(local_model, str) else json.dumps(local_model)}
    cache.informer.store.objects[("kserve", "inferenceservice-config")] = {
        "metadata": {"name": "inferenceservice-config", "namespace": "kserve", "resourceVersion": rv},
        "data": data,
    }


def test_one_configmap_is_watched_and_defaults_apply_without_it() -> None:
    cache, recorder = FakeCache(), Recorder()
    source = ConfigSource(cache, "kserve", recorder)
    ((_, kw),) = cache.requested
    assert kw == {"namespace": "kserve", "field_selector": "metadata.name=inferenceservice-config"}
    assert source.current().local_model.job_namespace == "kserve-localmodel-jobs"
    assert recorder.events == []


def test_invalid_config_warns_once_per_version_and_keeps_the_last_good_one() -> None:
    cache, recorder = FakeCache(), Recorder()
    source = ConfigSource(cache, "kserve", recorder)
    put(cache, "1", {"jobNamespace": "jobs", "disableVolumeManagement": True})
    good = source.current()
    assert good.local_model.job_namespace == "jobs" and good.local_model.disable_volume_management

    put(cache, "2", "{not json")
    assert source.current() is good
    assert source.current() is good  # same version: no second warning
    ((kind, name, reason, message),) = recorder.events
    assert (kind, name, reason) == ("ConfigMap", "inferenceservice-config", "InvalidConfig")
    assert "localModel" in message and "keeping the last good configuration" in message

    put(cache, "3", {"jobNamespace": ""})
    assert source.current() is good and len(recorder.events) == 2
    put(cache, "4", {"jobNamespace": "other"})
    assert source.current().local_model.job_namespace == "other"


def test_invalid_config_without_a_good_one_fails_the_reconcile() -> None:
    cache, recorder = FakeCache(), Recorder()
    source = ConfigSource(cache, "kserve", recorder)
    put(cache, "1", {"reconcilationFrequencyInSecs": -1})
    with pytest.raises(ConfigError, match="reconcilationFrequencyInSecs"):
        source.current()
    assert "no good one yet" in recorder.events[0][3]
