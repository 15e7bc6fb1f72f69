"""The controller-manager (one leader-elected Deployment): flags and wiring only; the logic is in
``localcache.controllers.cache`` and ``localcache.controllers.nodegroup``.

    python cmd/manager.py --leader-elect --config-namespace=kserve

Runs the LocalModelCache, LocalModelNamespaceCache and LocalModelNodeGroup controllers and the
admission webhooks (``--disable-webhooks`` takes a comma list of webhook names to leave out).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from localcache.api.constants import DEFAULT_CONFIG_NAMESPACE
from localcache.controllers.admission import register_admission
from localcache.controllers.cache import (
    DEFAULT_MAX_CONCURRENT_RECONCILES,
    consumers_available,
    setup_cache_controllers,
)
from localcache.controllers.nodegroup import setup_nodegroup_controller
from localcache.runtime import Client
from localcache.runtime.logs import setup_logging
from localcache.runtime.manager import Manager, ManagerOptions
from localcache.runtime.webhook import WebhookServer

log = logging.getLogger("localcache.manager")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="localcache-manager", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-bind-address", default=":8080", help="'0' disables the metrics server")
    parser.add_argument("--health-probe-bind-address", default=":8081", help="'0' disables the probes")
    parser.add_argument("--leader-elect", action="store_true", help="run one active replica via a Lease")
    parser.add_argument("--leader-election-id", default="localcache-manager-leader-lock")
    parser.add_argument(
        "--leader-election-release-on-cancel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the Lease up on a clean stop (after leader work has stopped), so a standby takes over "
        "in about a second instead of waiting out the lease; a crash still waits for expiry",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default="",
        help="namespace of the Lease (default: the config namespace)",
    )
    parser.add_argument("--webhook-port", type=int, default=9443)
    parser.add_argument("--webhook-cert-dir", default="/tmp/k8s-webhook-server/serving-certs")
    parser.add_argument(
        "--config-namespace",
        default=os.environ.get("POD_NAMESPACE") or DEFAULT_CONFIG_NAMESPACE,
        help="namespace of inferenceservice-config (default: $POD_NAMESPACE, else kserve)",
    )
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument(
        "--disable-webhooks", default="", help="comma-separated webhook names not to serve (or 'all')"
    )
    parser.add_argument(
        "--max-concurrent-reconciles",
        type=int,
        default=DEFAULT_MAX_CONCURRENT_RECONCILES,
        help="cache reconciles in flight at once; their LocalModelNode changes are batched into one "
        "write per node, so more workers mean fewer, larger writes when many caches change together",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOCALCACHE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=os.environ.get("LOCALCACHE_LOG_FORMAT", "text")
    )
    return parser.parse_args(argv)


def disabled_webhooks(value: str) -> set[str]:
    return {w.strip() for w in value.split(",") if w.strip()}


# ==== WEBHOOK WIRING: the one place admission webhooks are registered ================================
def register_webhooks(
    manager: Manager, server: WebhookServer, disabled: set[str], config_namespace: str
) -> list[str]:
    """Register the admission webhooks and the pod-gate controller not in ``disabled``.

    Returns the webhook names registered on ``server`` (the pod-gate is a controller, not a webhook,
    so it does not make the server start).
    """
    enabled = register_admission(manager, config_namespace=config_namespace, disabled=disabled, server=server)
    return [name for name in enabled if name != "podgate"]


# ======================================================================================================


async def run(args: argparse.Namespace) -> None:
    client = await Client.from_config(kubeconfig=args.kubeconfig)
    async with client:
        disabled = disabled_webhooks(args.disable_webhooks)
        webhook_server: WebhookServer | None = None
        if "all" not in disabled:
            webhook_server = WebhookServer(port=args.webhook_port, cert_dir=args.webhook_cert_dir)
        options = ManagerOptions(
            metrics_bind_address=args.metrics_bind_address,
            health_probe_bind_address=args.health_probe_bind_address,
            leader_election=args.leader_elect,
            leader_election_id=args.leader_election_id,
            leader_election_namespace=args.leader_election_namespace or args.config_namespace,
            leader_election_release_on_cancel=args.leader_election_release_on_cancel,
        )
        manager = Manager(client, options)
        if webhook_server is not None:
            # Anything asking manager.webhook_server gets this one; it only runs if a webhook is registered.
            manager.options.webhook_server = webhook_server
            registered = register_webhooks(manager, webhook_server, disabled, args.config_namespace)
            if registered:
                manager.add(webhook_server)
                manager.add_readyz_check("webhook", webhook_server.started_check)
            log.info("webhooks", extra={"registered": ",".join(registered) or "none"})
        track_consumers = await consumers_available(client)
        if not track_consumers:
            log.warning("InferenceService API not found: consumer tracking and serving volumes are off")
        recorder = manager.event_recorder("localmodel-controller")
        kw: dict[str, Any] = {"max_concurrent_reconciles": args.max_concurrent_reconciles}
        setup_cache_controllers(
            manager,
            config_namespace=args.config_namespace,
            track_consumers=track_consumers,
            recorder=recorder,
            **kw,
        )
        setup_nodegroup_controller(manager)
        await manager.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        asyncio.run(run(args))
    except ValueError as exc:
        print(f"localcache-manager: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
