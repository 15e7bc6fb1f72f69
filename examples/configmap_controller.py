"""A complete small controller on ``localcache.runtime``: it annotates ConfigMaps with their key count.

For every ConfigMap labelled ``example.localcache.io/count=true`` in one namespace it keeps two
annotations up to date:

* ``example.localcache.io/key-count``: the number of keys in ``data`` and ``binaryData``;
* ``example.localcache.io/team``: a copy of the ``team`` label (removed when the label goes).

It is level-based: the reconciler reads the ConfigMap from the cache, computes the annotations it
should have, and patches only when they differ, so its own write wakes it once more and it finds
nothing to do. It records an Event when it changes something.

Run it against any cluster (``--help`` for flags)::

    python examples/configmap_controller.py --namespace demo --leader-elect

Then ``kubectl -n demo create configmap x --from-literal=a=1 && kubectl -n demo label cm x
example.localcache.io/count=true`` and watch the annotation appear. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from localcache.runtime.cache import InformerCache
from localcache.runtime.client import Client
from localcache.runtime.errors import NotFound
from localcache.runtime.events import EventRecorder
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.reconcile import Request, Result
from localcache.runtime.resources import CONFIGMAPS

SELECTOR = "example.localcache.io/count=true"
COUNT = "example.localcache.io/key-count"
TEAM = "example.localcache.io/team"

log = logging.getLogger("configmap-controller")


def desired_annotations(cm: dict[str, Any]) -> dict[str, str | None]:
    """The annotations this controller owns, as they should be (None: absent)."""
    keys = len(cm.get("data") or {}) + len(cm.get("binaryData") or {})
    team = (cm["metadata"].get("labels") or {}).get("team")
    return {COUNT: str(keys), TEAM: team}


class KeyCounter:
    """The reconciler: read from the cache, compare, patch only the difference."""

    def __init__(self, client: Client, cache: InformerCache, recorder: EventRecorder) -> None:
        self.client = client
        self.cache = cache
        self.recorder = recorder

    async def reconcile(self, request: Request) -> Result | None:
        try:
            cm = await self.cache.get(CONFIGMAPS, request.name, request.namespace)
        except NotFound:
            return None  # deleted: nothing of ours to clean up
        current = cm["metadata"].get("annotations") or {}
        want = desired_annotations(cm)
        change = {k: v for k, v in want.items() if current.get(k) != v}
        if not change:
            return None
        await self.client.patch(
            CONFIGMAPS, request.name, {"metadata": {"annotations": change}}, request.namespace
        )
        message = f"{want[COUNT]} keys, team {want[TEAM] or '-'}"
        self.recorder.event(cm, "Normal", "KeysCounted", message, resource=CONFIGMAPS)
        log.info("annotated", extra={"configmap": request.key, "keys": want[COUNT]})
        return None


def build_manager(
    client: Client, namespace: str, options: ManagerOptions, name: str = "configmap-key-counter"
) -> Manager:
    """Wire the controller into a manager; tests call this with their own options."""
    cache = InformerCache(client, namespace=namespace, label_selectors={CONFIGMAPS: SELECTOR})
    mgr = Manager(client, options, cache=cache)
    reconciler = KeyCounter(client, cache, mgr.event_recorder(name))
    mgr.controller(name).for_(CONFIGMAPS).with_options(skip_name_validation=True).build(reconciler)
    return mgr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Annotate ConfigMaps with their key count.")
    p.add_argument("--kubeconfig", help="path to a kubeconfig (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--namespace", required=True, help="the namespace to watch")
    p.add_argument("--metrics-bind-address", default=":8080")
    p.add_argument("--health-probe-bind-address", default=":8081")
    p.add_argument("--leader-elect", action="store_true", help="run with Lease leader election")
    p.add_argument("--leader-election-id", default="configmap-key-counter")
    p.add_argument("--leader-election-namespace", default="", help="default: --namespace")
    p.add_argument("--leader-elect-release", action="store_true", help="release the Lease on shutdown")
    p.add_argument("--graceful-shutdown-timeout", type=float, default=30.0)
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    async with await Client.from_config(kubeconfig=args.kubeconfig) as client:
        options = ManagerOptions(
            metrics_bind_address=args.metrics_bind_address,
            health_probe_bind_address=args.health_probe_bind_address,
            leader_election=args.leader_elect,
            leader_election_id=args.leader_election_id,
            leader_election_namespace=args.leader_election_namespace or args.namespace,
            leader_election_release_on_cancel=args.leader_elect_release,
            graceful_shutdown_timeout=args.graceful_shutdown_timeout,
        )
        await build_manager(client, args.namespace, options).run()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parse_args(argv)
    try:
        asyncio.run(amain(args))
    except Exception:
        log.exception("controller exited with an error")
        return 1
    log.info("controller exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
