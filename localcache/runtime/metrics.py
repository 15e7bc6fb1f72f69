"""Prometheus metrics with controller-runtime's exact names, on prometheus_client's default REGISTRY.

Existing Grafana dashboards and alerts written for Go controllers work unchanged. Every metric is
created once at import; code elsewhere only calls ``.labels(...)``. Leader-election, webhook and
event-loop-lag metrics live with their owners (manager, webhook server), not here.

Controller (label ``controller``; ``result`` ∈ success|error|requeue|requeue_after):
``controller_runtime_reconcile_total``, ``controller_runtime_reconcile_errors_total``,
``controller_runtime_terminal_reconcile_errors_total``, ``controller_runtime_reconcile_panics_total``,
``controller_runtime_reconcile_timeouts_total``, ``controller_runtime_reconcile_time_seconds``,
``controller_runtime_max_concurrent_reconciles``, ``controller_runtime_active_workers``.

Workqueue (labels ``name``, ``controller``; depth also ``priority``): ``workqueue_depth``,
``workqueue_adds_total``, ``workqueue_queue_duration_seconds``, ``workqueue_work_duration_seconds``,
``workqueue_unfinished_work_seconds``, ``workqueue_longest_running_processor_seconds``,
``workqueue_retries_total``.

REST client: ``rest_client_requests_total{code,method,host}``,
``rest_client_request_duration_seconds{verb,host}``, ``rest_client_request_size_bytes{verb,host}``,
``rest_client_response_size_bytes{verb,host}``, ``rest_client_rate_limiter_duration_seconds{verb,host}``,
``rest_client_request_retries_total{code,method,host}``.

Informer (label ``gvk`` = ``group/version/Kind``, the suggested additions from the design notes):
``controller_runtime_informer_cached_objects``, ``informer_list_total{result}``,
``informer_watch_restarts_total{reason}`` (expired|timeout|error|inactivity|closed),
``informer_relists_total``, ``informer_last_resource_version``, ``informer_handler_queue_depth{handler}``,
``informer_events_total{type}``, ``informer_sync_duration_seconds``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = ["RECONCILE_RESULTS", "REGISTRY"]

RECONCILE_RESULTS = ("success", "error", "requeue", "requeue_after")

_RECONCILE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    5,
    6,
    7,
    8,
    9,
    10,
    15,
    20,
    25,
    30,
    40,
    50,
    60,
)
_WORKQUEUE_BUCKETS = tuple(1e-8 * 10**k for k in range(12))
_REST_LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_SIZE_BUCKETS = tuple(64 * 4**k for k in range(8))  # 64 B .. 1 MiB, as client-go

# --- controller ------------------------------------------------------------------------------------
reconcile_total = Counter(
    "controller_runtime_reconcile_total",
    "Total number of reconciliations per controller",
    ["controller", "result"],
)
reconcile_errors_total = Counter(
    "controller_runtime_reconcile_errors_total",
    "Total number of reconciliation errors per controller",
    ["controller"],
)
terminal_reconcile_errors_total = Counter(
    "controller_runtime_terminal_reconcile_errors_total",
    "Total number of terminal reconciliation errors per controller",
    ["controller"],
)
reconcile_panics_total = Counter(
    "controller_runtime_reconcile_panics_total",
    "Total number of reconciliation panics per controller",
    ["controller"],
)
reconcile_timeouts_total = Counter(
    "controller_runtime_reconcile_timeouts_total",
    "Total number of reconciliation timeouts per controller",
    ["controller"],
)
reconcile_time_seconds = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Length of time per reconciliation per controller",
    ["controller"],
    buckets=_RECONCILE_BUCKETS,
)
max_concurrent_reconciles = Gauge(
    "controller_runtime_max_concurrent_reconciles",
    "Maximum number of concurrent reconciles per controller",
    ["controller"],
)
active_workers = Gauge(
    "controller_runtime_active_workers", "Number of currently used workers per controller", ["controller"]
)

# --- workqueue -------------------------------------------------------------------------------------
workqueue_depth = Gauge("workqueue_depth", "Current depth of workqueue", ["name", "controller", "priority"])
workqueue_adds_total = Counter(
    "workqueue_adds_total", "Total number of adds handled by workqueue", ["name", "controller"]
)
workqueue_queue_duration_seconds = Histogram(
    "workqueue_queue_duration_seconds",
    "How long in seconds an item stays in workqueue before being requested",
    ["name", "controller"],
    buckets=_WORKQUEUE_BUCKETS,
)
workqueue_work_duration_seconds = Histogram(
    "workqueue_work_duration_seconds",
    "How long in seconds processing an item from workqueue takes",
    ["name", "controller"],
    buckets=_WORKQUEUE_BUCKETS,
)
workqueue_unfinished_work_seconds = Gauge(
    "workqueue_unfinished_work_seconds",
    "How many seconds of work has been done that is in progress and hasn't been observed by "
    "work_duration. Large values indicate stuck threads.",
    ["name", "controller"],
)
workqueue_longest_running_processor_seconds = Gauge(
    "workqueue_longest_running_processor_seconds",
    "How many seconds has the longest running processor for workqueue been running.",
    ["name", "controller"],
)
workqueue_retries_total = Counter(
    "workqueue_retries_total", "Total number of retries handled by workqueue", ["name", "controller"]
)

# --- REST client -----------------------------------------------------------------------------------
rest_client_requests_total = Counter(
    "rest_client_requests_total",
    "Number of HTTP requests, partitioned by status code, method, and host.",
    ["code", "method", "host"],
)
rest_client_request_duration_seconds = Histogram(
    "rest_client_request_duration_seconds",
    "Request latency in seconds. Broken down by verb, and host.",
    ["verb", "host"],
    buckets=_REST_LATENCY_BUCKETS,
)
rest_client_request_size_bytes = Histogram(
    "rest_client_request_size_bytes",
    "Request size in bytes. Broken down by verb and host.",
    ["verb", "host"],
    buckets=_SIZE_BUCKETS,
)
rest_client_response_size_bytes = Histogram(
    "rest_client_response_size_bytes",
    "Response size in bytes. Broken down by verb and host.",
    ["verb", "host"],
    buckets=_SIZE_BUCKETS,
)
rest_client_rate_limiter_duration_seconds = Histogram(
    "rest_client_rate_limiter_duration_seconds",
    "Client side rate limiter latency in seconds. Broken down by verb, and host.",
    ["verb", "host"],
    buckets=_REST_LATENCY_BUCKETS,
)
rest_client_request_retries_total = Counter(
    "rest_client_request_retries_total",
    "Number of request retries, partitioned by status code, verb, and host.",
    ["code", "verb", "host"],
)

# --- informer (additions) --------------------------------------------------------------------------
informer_cached_objects = Gauge(
    "controller_runtime_informer_cached_objects", "Number of objects in an informer's store", ["gvk"]
)
informer_list_total = Counter("informer_list_total", "LIST calls made by reflectors", ["gvk", "result"])
informer_watch_restarts_total = Counter(
    "informer_watch_restarts_total", "Watches restarted, by reason", ["gvk", "reason"]
)
informer_relists_total = Counter("informer_relists_total", "Full relists after the first list", ["gvk"])
informer_last_resource_version = Gauge(
    "informer_last_resource_version", "Last resourceVersion the reflector synced to (numeric)", ["gvk"]
)
informer_handler_queue_depth = Gauge(
    "informer_handler_queue_depth", "Notifications waiting for an event handler", ["gvk", "handler"]
)
informer_events_total = Counter("informer_events_total", "Watch events received", ["gvk", "type"])
informer_sync_duration_seconds = Histogram(
    "informer_sync_duration_seconds",
    "Time from informer start to has_synced",
    ["gvk"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
