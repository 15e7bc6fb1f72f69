"""The node agent (one per node, a DaemonSet): flags and wiring only; the logic is
``localcache.controllers.node``.

    python cmd/agent.py --node-name=$NODE_NAME --models-root=/mnt/models --host-path=/mnt/models

``--host-path`` must be the host directory the DaemonSet mounts at ``--models-root``; the kustomize
component ``models-host-path`` sets both it and the node groups' ``local.path`` from one setting, and
the agent refuses to create Jobs (with a StorageReady=False condition) when they disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from localcache.controllers.downloadjob import (
    DEFAULT_ACTIVE_DEADLINE_SECONDS,
    DEFAULT_BACKOFF_LIMIT,
    JobOptions,
)
from localcache.controllers.node import AgentOptions, agent_cache, build_agent, initial_job_namespace
from localcache.runtime import Client
from localcache.runtime.logs import setup_logging
from localcache.runtime.manager import Manager, ManagerOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="localcache-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""), help="default: $NODE_NAME")
    parser.add_argument(
        "--models-root", default="/mnt/models", help="the agent's mount of the host directory"
    )
    parser.add_argument(
        "--host-path",
        default=os.environ.get("LOCALCACHE_MODELS_HOST_PATH") or "/mnt/models",
        help="the host directory --models-root is mounted from (default: $LOCALCACHE_MODELS_HOST_PATH, "
        "which the DaemonSet sets from the same setting as its hostPath volume, else /mnt/models)",
    )
    parser.add_argument(
        "--config-namespace",
        default=os.environ.get("POD_NAMESPACE") or "kserve",
        help="namespace of inferenceservice-config (default: $POD_NAMESPACE, else kserve)",
    )
    parser.add_argument("--health-probe-bind-address", default=":8081")
    parser.add_argument("--metrics-bind-address", default=":8080")
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument("--gc-grace-period", type=float, default=600.0, help="seconds before deleting")
    parser.add_argument("--retry-backoff-base", type=float, default=60.0, help="first retry delay (s)")
    parser.add_argument("--retry-backoff-max", type=float, default=3600.0, help="largest retry delay (s)")
    parser.add_argument("--job-backoff-limit", type=int, default=DEFAULT_BACKOFF_LIMIT)
    parser.add_argument("--job-active-deadline", type=int, default=DEFAULT_ACTIVE_DEADLINE_SECONDS)
    parser.add_argument(
        "--job-tolerations", default="", help="JSON list of tolerations for download pods (default none)"
    )
    parser.add_argument("--log-level", default=os.environ.get("LOCALCACHE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=os.environ.get("LOCALCACHE_LOG_FORMAT", "text")
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    tolerations = json.loads(args.job_tolerations) if args.job_tolerations else []
    if not isinstance(tolerations, list):
        raise SystemExit("--job-tolerations must be a JSON list")
    options = AgentOptions(
        node_name=args.node_name,
        models_root=Path(args.models_root),
        host_path=args.host_path,
        config_namespace=args.config_namespace,
        gc_grace_seconds=args.gc_grace_period,
        retry_base_seconds=args.retry_backoff_base,
        retry_max_seconds=args.retry_backoff_max,
        job=JobOptions(
            backoff_limit=args.job_backoff_limit,
            active_deadline_seconds=args.job_active_deadline,
            tolerations=tuple(tolerations),
        ),
    )
    client = await Client.from_config(kubeconfig=args.kubeconfig)
    async with client:
        manager = Manager(
            client,
            ManagerOptions(
                metrics_bind_address=args.metrics_bind_address,
                health_probe_bind_address=args.health_probe_bind_address,
                loop_lag_interval=2.0,  # the lag check needs no sub-second ticks on an idle agent
            ),
            cache=agent_cache(client, options),
        )
        namespace = await initial_job_namespace(client, options)
        build_agent(
            manager,
            options,
            initial_job_namespace=namespace,
            recorder=manager.event_recorder("localcache-agent"),
        )
        await manager.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        asyncio.run(run(args))
    except ValueError as exc:
        print(f"localcache-agent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
