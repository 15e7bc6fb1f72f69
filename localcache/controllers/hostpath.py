"""The agent's pre-flight: is its models directory the one the node groups' PVs point at, and can it write?

KServe never checks either. When the DaemonSet's hostPath and a node group's ``local.path`` differ, the
download Job writes one directory while the agent looks at another, and the agent launches Jobs forever
(KServe issues #4151, #5156); an unwritable directory fails every download with a bare error. Here both
become a condition on the LocalModelNode naming the paths (or the owner and mode bits), and the agent
creates no Jobs until they are fixed.

Membership is KServe's (``localcache.controllers.membership``, shared with the node-group controller):
a group contains the node when any ``nodeSelectorTerms`` entry of its PV template's
``nodeAffinity.required`` matches.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcache.api import LocalModelNodeGroup
from localcache.api.constants import MODELS_DIR
from localcache.controllers.membership import match_node_selector_terms

__all__ = [
    "PROBE_PREFIX",
    "HostPathMismatch",
    "PreflightResult",
    "check_host_path",
    "check_writable",
    "groups_for_node",
    "normalise_path",
    "preflight",
]

PROBE_PREFIX = ".localcache-agent-probe"


def normalise_path(path: str) -> str:
    """Compare paths as the kubelet would resolve them: no trailing ``/``, no ``.``/``//`` segments."""
    return posixpath.normpath(path) if path else path


def groups_for_node(
    node: Mapping[str, Any] | None, groups: Iterable[LocalModelNodeGroup]
) -> list[LocalModelNodeGroup]:
    """The groups containing ``node``, in name order (KServe picks the first as the default group)."""
    if node is None:
        return []
    members = [g for g in groups if match_node_selector_terms(dict(node), g.spec.node_selector_terms)]
    return sorted(members, key=lambda g: g.name)


@dataclass(frozen=True)
class HostPathMismatch:
    group: str
    group_path: str
    agent_path: str

    def describe(self) -> str:
        return (
            f"node group {self.group} points its PVs at host path {self.group_path}, but this agent "
            f"mounts host path {self.agent_path}"
        )


@dataclass(frozen=True)
class PreflightResult:
    """The outcome of both checks; ``ok`` False means: create no Jobs, and say why in ``message``."""

    ok: bool
    reason: str
    message: str

    @classmethod
    def passed(cls, message: str) -> PreflightResult:
        return cls(True, "StorageReady", message)


def check_host_path(agent_host_path: str, groups: Iterable[LocalModelNodeGroup]) -> list[HostPathMismatch]:
    """Every group whose PV path differs from the agent's host path.

    Groups whose PVs use neither ``local`` nor ``hostPath`` (a CSI volume, say) cannot be compared and
    are skipped.
    """
    ours = normalise_path(agent_host_path)
    out: list[HostPathMismatch] = []
    for group in sorted(groups, key=lambda g: g.name):
        theirs = group.spec.host_path
        if theirs is None:
            continue
        if normalise_path(theirs) != ours:
            out.append(HostPathMismatch(group.name, theirs, agent_host_path))
    return out


def _describe_owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path} cannot be inspected ({exc.strerror or exc})"
    return (
        f"{path} is owned by uid {st.st_uid} gid {st.st_gid} with mode {stat.filemode(st.st_mode)} "
        f"({stat.S_IMODE(st.st_mode):04o})"
    )


def check_writable(models_root: Path, host_path: str) -> PreflightResult:
    """Create ``<root>/models`` if needed, then create and remove a probe file in it.

    On failure the message names the directory, the host path it comes from, the agent's uid/gid and
    the directory's owner and mode: what an admin needs to run the right ``chown``.
    """
    models_dir = Path(models_root) / MODELS_DIR
    probe = models_dir / f"{PROBE_PREFIX}-{os.getpid()}"
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        target = models_dir if models_dir.exists() else Path(models_root)
        message = (
            f"models directory {models_dir} (host path {host_path}) is not writable by the agent "
            f"(uid {os.getuid()} gid {os.getgid()}): {exc.strerror or exc}; {_describe_owner(target)}"
        )
        return PreflightResult(False, "StorageNotWritable", message)
    return PreflightResult.passed(f"models directory {models_dir} (host path {host_path}) is writable")


def preflight(
    models_root: Path,
    agent_host_path: str,
    groups: Iterable[LocalModelNodeGroup],
) -> PreflightResult:
    """Both checks: a path mismatch first (it explains permission errors too), then writability."""
    mismatches = check_host_path(agent_host_path, groups)
    if mismatches:
        message = "; ".join(m.describe() for m in mismatches)
        return PreflightResult(
            False,
            "HostPathMismatch",
            f"{message}. Download Jobs would write where the agent does not look; no Jobs are created "
            "until the paths agree (set the agent's --host-path and the group's local.path to the same "
            "directory).",
        )
    return check_writable(models_root, agent_host_path)
