from __future__ import annotations

import pytest

from localcache.runtime.selectors import parse_selector
from localcache.runtime.store import NAMESPACE_INDEX, DeletedFinalStateUnknown, Store, deep_copy, object_key

from .fakesource import cm


@pytest.mark.parametrize("mode", ["compact", "dict"])
def test_store_crud_and_namespace_index(mode: str) -> None:
    s = Store(mode=mode)  # type: ignore[arg-type]
    s.add(cm("a", "n1", k="1"))
    s.add(cm("b", "n1"))
    s.add(cm("c", "n2"))
    node = {"kind": "Node", "metadata": {"name": "node1"}}
    s.add(node)
    assert len(s) == 4 and "n1/a" in s and "node1" in s
    assert s.get("n1/a")["data"] == {"k": "1"}
    assert sorted(o["metadata"]["name"] for o in s.list("n1")) == ["a", "b"]
    assert s.list_index_values(NAMESPACE_INDEX) == ["", "n1", "n2"]
    s.delete(cm("b", "n1"))
    assert [o["metadata"]["name"] for o in s.list("n1")] == ["a"]
    s.remove("n1/a")
    assert s.list_index_values(NAMESPACE_INDEX) == ["", "n2"]
    assert s.get("n1/a") is None


def test_compact_reads_return_private_copies() -> None:
    s = Store(mode="compact")
    s.add(cm("a", k="1"))
    got = s.get("ns/a")
    got["data"]["k"] = "mutated"
    assert s.get("ns/a")["data"]["k"] == "1"


def test_custom_indexers_follow_updates_and_can_be_added_late() -> None:
    s = Store()
    s.add(cm("a", owner="x"))
    s.add(cm("b", owner="y"))
    s.add_indexers({"owner": lambda o: [o["data"]["owner"]]})
    assert s.index_keys("owner", "x") == ["ns/a"]
    s.update(cm("a", owner="y"))
    assert s.index_keys("owner", "x") == [] and s.index_keys("owner", "y") == ["ns/a", "ns/b"]
    assert [o["metadata"]["name"] for o in s.index("owner", cm("z", owner="y"))] == ["a", "b"]
    s.remove("ns/b")
    assert s.list_index_values("owner") == ["y"]
    with pytest.raises(KeyError, match="nope"):
        s.by_index("nope", "v")
    with pytest.raises(ValueError, match="already exists"):
        s.add_indexers({"owner": lambda o: []})


def test_replace_rebuilds_indices_and_keys() -> None:
    s = Store({"owner": lambda o: [o["data"].get("owner", "")]})
    s.add(cm("a", owner="x"))
    s.replace([cm("b", owner="z")], "55")
    assert s.keys() == ["ns/b"] and s.resource_version == "55"
    assert s.list_index_values("owner") == ["z"]


def test_keys_and_tombstones() -> None:
    assert object_key(cm("a", "n")) == "n/a"
    assert object_key(DeletedFinalStateUnknown("n/a", cm("a", "n"))) == "n/a"
    with pytest.raises(ValueError, match=r"metadata\.name"):
        object_key({"kind": "X", "metadata": {}})


def test_deep_copy_is_deep() -> None:
    o = {"a": [{"b": 1}], "c": {"d": [1, 2]}}
    c = deep_copy(o)
    c["a"][0]["b"] = 2
    c["c"]["d"].append(3)
    assert o == {"a": [{"b": 1}], "c": {"d": [1, 2]}}


@pytest.mark.parametrize(
    ("sel", "labels", "ok"),
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a==b,c!=d", {"a": "b", "c": "e"}, True),
        ("a!=b", {}, True),
        ("a in (x, y),b", {"a": "y", "b": ""}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("!a", {"a": "1"}, False),
        ("!a,b", {"b": "1"}, True),
        (
            {
                "matchLabels": {"app": "w"},
                "matchExpressions": [{"key": "t", "operator": "In", "values": ["1"]}],
            },
            {"app": "w", "t": "1"},
            True,
        ),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"t": "1"}, False),
    ],
)
def test_label_selectors(sel: object, labels: dict[str, str], ok: bool) -> None:
    assert parse_selector(sel).matches(labels) is ok  # type: ignore[arg-type]


def test_selector_canonical_string_and_errors() -> None:
    assert str(parse_selector("a = b, c in (x,y), !d")) == "a=b,c in (x,y),!d"
    with pytest.raises(ValueError, match="label selector"):
        parse_selector("a in x")
    with pytest.raises(ValueError, match="unknown operator"):
        parse_selector({"matchExpressions": [{"key": "a", "operator": "Gt"}]})


@pytest.mark.parametrize("mode", ["compact", "dict"])
def test_project_recomputes_only_changed_objects_and_forgets_removed_ones(mode: str) -> None:
    s = Store(mode=mode)  # type: ignore[arg-type]
    calls: list[str] = []

    def value_of(obj: dict) -> str:
        calls.append(obj["metadata"]["name"])
        return obj["data"]["k"]

    s.add(cm("a", "n1", k="1"))
    s.add(cm("b", "n1", k="2"))
    assert s.project(NAMESPACE_INDEX, "n1", value_of) == ["1", "2"]
    assert s.project(NAMESPACE_INDEX, "n1", value_of) == ["1", "2"]
    assert calls == ["a", "b"], "unchanged objects are not decoded again"
    s.update(cm("b", "n1", k="3"))
    assert s.project(NAMESPACE_INDEX, "n1", value_of) == ["1", "3"]
    assert calls == ["a", "b", "b"]
    s.remove("n1/a")
    assert s.project(NAMESPACE_INDEX, "n1", value_of) == ["3"]
    s.add(cm("a", "n1", k="4"))  # same key again: computed afresh, not the forgotten value
    assert s.project(NAMESPACE_INDEX, "n1", value_of) == ["4", "3"]
    s.replace([cm("c", "n1", k="5")], "9")
    assert s.project(NAMESPACE_INDEX, "n1", value_of) == ["5"]


def test_shared_objects_are_decoded_once_per_version_and_store_repeated_strings_once() -> None:
    s = Store(mode="compact")
    # each decode makes new strings; interned, equal values across objects are one string
    spec = {"localModels": [{"sourceModelUri": "hf://org/model", "modelName": f"m{i}"} for i in range(3)]}
    s.add({"metadata": {"name": "n1", "resourceVersion": "1"}, "spec": spec})
    s.add({"metadata": {"name": "n2", "resourceVersion": "1"}, "spec": spec})
    one, two = s.shared("n1"), s.shared("n2")
    assert one is s.shared("n1"), "decoded once per version"
    assert one is not None and two is not None and one["spec"] == spec
    assert one["spec"]["localModels"][0]["sourceModelUri"] is two["spec"]["localModels"][2]["sourceModelUri"]
    s.add({"metadata": {"name": "n1", "resourceVersion": "2"}, "spec": {}})
    assert s.shared("n1") is not one and s.shared("n1")["spec"] == {}  # type: ignore[index]
