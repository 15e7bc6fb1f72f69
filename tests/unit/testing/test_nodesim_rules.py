"""The node simulator's scheduling and container rules, as the scheduler and kubelet apply them."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcache.testing.nodesim import (
    SimNode,
    _expand,
    _image_repo,
    _map_path,
    _Mount,
    _pod_fits,
    _termination_tail,
    node_selector_matches,
)


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("kserve/storage-initializer:latest", "kserve/storage-initializer"),
        ("docker.io/kserve/storage-initializer:v0.15.0", "kserve/storage-initializer"),
        ("localhost:5000/localcache/download:0.1.0@sha256:abc", "localcache/download"),
        ("ghcr.io/org/img", "org/img"),
        ("library/busybox:1", "busybox"),
    ],
)
def test_image_repository_ignores_registry_tag_and_digest(image: str, repo: str) -> None:
    assert _image_repo(image) == repo


def _node(labels: dict[str, str]) -> SimNode:
    return SimNode("n1", {"kubernetes.io/hostname": "n1", **labels}, Path("/nonexistent"))


def test_node_selector_terms_are_ored_and_expressions_anded() -> None:
    gpu = _node({"gpu": "a100", "zone": "a"})
    term = lambda *exprs: {"matchExpressions": list(exprs)}  # noqa: E731
    sel = {
        "nodeSelectorTerms": [
            term({"key": "gpu", "operator": "In", "values": ["h100"]}),
            term(
                {"key": "gpu", "operator": "In", "values": ["a100"]},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
            ),
        ]
    }
    assert node_selector_matches(sel, gpu)
    sel_all = {
        "nodeSelectorTerms": [
            term(
                {"key": "gpu", "operator": "In", "values": ["a100"]},
                {"key": "zone", "operator": "DoesNotExist"},
            )
        ]
    }
    assert not node_selector_matches(sel_all, gpu)
    assert not node_selector_matches({"nodeSelectorTerms": [{}]}, gpu), "an empty term matches nothing"
    fields = {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]
    }
    assert node_selector_matches(fields, gpu)


def test_pod_fits_by_node_name_selector_and_required_affinity() -> None:
    node = _node({"gpu": "a100"})
    assert _pod_fits({"spec": {"nodeSelector": {"kubernetes.io/hostname": "n1"}}}, node)
    assert not _pod_fits({"spec": {"nodeSelector": {"kubernetes.io/hostname": "n2"}}}, node)
    assert not _pod_fits({"spec": {"nodeName": "n2"}}, node)
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
            }
        }
    }
    assert _pod_fits({"spec": {"affinity": affinity}}, node)
    assert not _pod_fits({"spec": {"affinity": affinity}}, _node({}))


def test_container_paths_map_to_the_node_disk_longest_mount_first() -> None:
    mounts = [_Mount("/mnt/models/cache", Path("/disk/b")), _Mount("/mnt/models", Path("/disk/a"))]
    assert _map_path("/mnt/models", mounts) == "/disk/a"
    assert _map_path("/mnt/models/x.bin", mounts) == "/disk/a/x.bin"
    assert _map_path("/mnt/models/cache/y", mounts) == "/disk/b/y"
    assert _map_path("/mnt/modelsX", mounts) == "/mnt/modelsX"
    assert _map_path("hf://a/b", mounts) == "hf://a/b"


def test_dollar_paren_expansion_like_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert _expand("$(A)-$(B)", env) == "1-two"
    assert _expand("$(MISSING)", env) == "$(MISSING)"
    assert _expand("$$(A)", env) == "$(A)"


def test_termination_message_keeps_the_tail() -> None:
    text = "\n".join(f"line {i}" for i in range(200))
    tail = _termination_tail(text)
    assert tail.endswith("line 199")
    assert "line 119" not in tail
    assert len(tail) <= 2048
