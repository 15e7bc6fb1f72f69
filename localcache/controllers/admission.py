"""Wiring the admission webhooks and the pod-gate controller into a manager: :func:`register_admission`.

One call from ``cmd/manager.py``::

    enabled = register_admission(
        manager, config_namespace=args.config_namespace, disabled=[args.disable_webhooks], server=server
    )

registers, on the manager's webhook server, the handlers at the paths the shipped webhook
configurations (``manifests/base/webhook``) call, declares the informers they read (so the manager's
cache syncs them before the controllers start) and adds the pod-gate controller (leader-only).

Each piece can be stood down by name (``disabled``), for clusters where KServe's own controller already
does the same job; docs/webhooks.md says when. A stood-down webhook's path is not served, so its
configuration must be removed from the cluster too, or its ``failurePolicy`` applies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from localcache.controllers.isvc import CacheReader, ConfigReader, InferenceServiceDefaulter
from localcache.controllers.pod import ModelReadiness, PodMutator
from localcache.controllers.podgate import build_pod_gate_controller
from localcache.controllers.validation import CacheValidator, ConsumerFinder, NamespaceCacheValidator
from localcache.runtime.webhook import Handler, WebhookServer

__all__ = [
    "COMPONENTS",
    "PATHS",
    "PATH_CACHE",
    "PATH_ISVC",
    "PATH_NAMESPACE_CACHE",
    "PATH_POD",
    "Admission",
    "build_admission",
    "parse_disabled",
    "register_admission",
]

log = logging.getLogger(__name__)

PATH_ISVC = "/mutate-serving-kserve-io-v1beta1-inferenceservice"
PATH_POD = "/mutate-pods"
PATH_CACHE = "/validate-serving-kserve-io-v1alpha1-localmodelcache"
PATH_NAMESPACE_CACHE = "/validate-serving-kserve-io-v1alpha1-localmodelnamespacecache"

#: component name (as given in ``disabled``) → webhook path; ``podgate`` is a controller, not a path
PATHS: dict[str, str] = {
    "isvc": PATH_ISVC,
    "pod": PATH_POD,
    "validate-cache": PATH_CACHE,
    "validate-namespace-cache": PATH_NAMESPACE_CACHE,
}
COMPONENTS: frozenset[str] = frozenset({*PATHS, "podgate"})
EVENT_COMPONENT = "localcache-podgate"


def parse_disabled(names: Iterable[str]) -> frozenset[str]:
    """Validate component names; each item may be a comma-separated list (as flags give) and ``all``
    stands for every component."""
    out = {n.strip() for item in names for n in item.split(",") if n.strip()}
    if "all" in out:
        return COMPONENTS
    unknown = sorted(out - COMPONENTS)
    if unknown:
        raise ValueError(
            f"unknown admission component(s) {unknown}: choose from {sorted(COMPONENTS)} or 'all'"
        )
    return frozenset(out)


@dataclass
class Admission:
    """What :func:`build_admission` made: the handlers by path and the pod-gate controller (or None)."""

    handlers: dict[str, Handler]
    podgate: Any | None
    caches: CacheReader


def build_admission(
    client: Any,
    cache: Any,
    *,
    config_namespace: str,
    disabled: frozenset[str] = frozenset(),
    recorder: Any | None = None,
    podgate_name: str | None = None,
) -> Admission:
    """The handlers and controller without a manager (tests, and a manager-less webhook process)."""
    disabled = parse_disabled(disabled)
    caches = CacheReader(client, cache)
    handlers: dict[str, Handler] = {}
    consumers = ConsumerFinder(client)
    if "isvc" not in disabled:
        handlers[PATH_ISVC] = InferenceServiceDefaulter(
            caches, ConfigReader(client, cache, config_namespace)
        ).handle
    readiness = ModelReadiness(client, caches, cache)
    if "pod" not in disabled:
        handlers[PATH_POD] = PodMutator(readiness, gate="podgate" not in disabled).handle
    if "validate-cache" not in disabled:
        handlers[PATH_CACHE] = CacheValidator(client, consumers, cache).handle
    if "validate-namespace-cache" not in disabled:
        handlers[PATH_NAMESPACE_CACHE] = NamespaceCacheValidator(client, consumers).handle
    podgate = None
    if "podgate" not in disabled:
        kw = {"name": podgate_name} if podgate_name else {}
        podgate = build_pod_gate_controller(client, cache, readiness, recorder, **kw)
    return Admission(handlers, podgate, caches)


def register_admission(
    manager: Any,
    *,
    config_namespace: str,
    disabled: Iterable[str] = frozenset(),
    server: WebhookServer | None = None,
) -> list[str]:
    """Serve the admission webhooks and add the pod-gate controller; returns the enabled component names.

    ``config_namespace``: where ``inferenceservice-config`` lives (``POD_NAMESPACE``, default ``kserve``).
    ``disabled``: components to stand down, from ``isvc``, ``pod``, ``validate-cache``,
    ``validate-namespace-cache``, ``podgate``, or ``all`` (docs/webhooks.md); comma lists are accepted.
    ``server``: the webhook server to register on; default ``manager.webhook_server`` (requested only
    when some webhook is enabled). Adding ``server`` to the manager, if it is not the manager's own, is
    the caller's job. Call before ``manager.run()``. Raises ValueError for an unknown component name.
    """
    disabled = parse_disabled(disabled)
    recorder = manager.event_recorder(EVENT_COMPONENT) if "podgate" not in disabled else None
    admission = build_admission(
        manager.client, manager.cache, config_namespace=config_namespace, disabled=disabled, recorder=recorder
    )
    if admission.handlers:
        target = server if server is not None else manager.webhook_server
        for path, handler in admission.handlers.items():
            target.register(path, handler)
    if admission.podgate is not None:
        manager.add(admission.podgate)
    enabled = sorted(COMPONENTS - disabled)
    log.info(
        "admission registered",
        extra={"enabled": enabled, "disabled": sorted(disabled), "config_namespace": config_namespace},
    )
    return enabled
