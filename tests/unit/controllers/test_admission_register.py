"""register_admission: which paths are served and which controller runs, per the ``disabled`` set."""

from __future__ import annotations

from typing import Any

import pytest

from localcache.controllers.admission import (
    COMPONENTS,
    PATH_CACHE,
    PATH_ISVC,
    PATH_NAMESPACE_CACHE,
    PATH_POD,
    parse_disabled,
    register_admission,
)
from localcache.runtime.cache import InformerCache
from localcache.runtime.controller import Controller
from localcache.runtime.webhook import WebhookServer
from tests.unit.controllers.test_admission_fakes import FakeClient


class FakeManager:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.cache = InformerCache(self.client)
        self.webhook_server = WebhookServer(host="127.0.0.1", port=0)
        self.added: list[Any] = []
        self.recorders: list[str] = []

    def add(self, runnable: Any) -> None:
        self.added.append(runnable)

    def event_recorder(self, component: str) -> Any:
        self.recorders.append(component)
        return None


def test_everything_is_registered_by_default() -> None:
    manager = FakeManager()
    register_admission(manager, config_namespace="kserve")
    assert sorted(manager.webhook_server._handlers) == sorted(
        [PATH_ISVC, PATH_POD, PATH_CACHE, PATH_NAMESPACE_CACHE]
    )
    (ctrl,) = manager.added
    assert isinstance(ctrl, Controller) and ctrl.needs_leader_election
    # informers are declared up front so the manager's cache syncs them
    plurals = sorted({inf.resource.plural for inf in manager.cache.informers})
    assert plurals == ["configmaps", "localmodelcaches", "localmodelnamespacecaches", "pods"]
    handler = manager.webhook_server._handlers[PATH_POD]
    assert handler.__self__.gate is True


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_each_component_can_be_stood_down(name: str) -> None:
    manager = FakeManager()
    register_admission(manager, config_namespace="kserve", disabled=frozenset({name}))
    served = set(manager.webhook_server._handlers)
    expected = {
        "isvc": PATH_ISVC,
        "pod": PATH_POD,
        "validate-cache": PATH_CACHE,
        "validate-namespace-cache": PATH_NAMESPACE_CACHE,
    }
    assert served == set(expected.values()) - {expected.get(name)}
    assert (manager.added == []) is (name == "podgate")
    if name == "podgate":
        assert manager.webhook_server._handlers[PATH_POD].__self__.gate is False, (
            "nothing would lift the gate"
        )


def test_unknown_names_are_rejected_and_flag_lists_are_split() -> None:
    with pytest.raises(ValueError, match=r"unknown admission component\(s\) \['pods'\]"):
        register_admission(FakeManager(), config_namespace="kserve", disabled=frozenset({"pods"}))
    assert parse_disabled(["isvc,pod", " podgate "]) == {"isvc", "pod", "podgate"}


def test_all_disables_everything_and_an_explicit_server_is_used() -> None:
    manager = FakeManager()
    assert register_admission(manager, config_namespace="kserve", disabled=["all"]) == []
    assert manager.webhook_server._handlers == {} and manager.added == []
    other = WebhookServer(host="127.0.0.1", port=0)
    enabled = register_admission(
        FakeManager(), config_namespace="kserve", disabled=["podgate,pod"], server=other
    )
    assert enabled == ["isvc", "validate-cache", "validate-namespace-cache"]
    assert sorted(other._handlers) == sorted([PATH_ISVC, PATH_CACHE, PATH_NAMESPACE_CACHE])
