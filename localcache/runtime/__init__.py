"""localcache.runtime: a general controller-runtime for asyncio.

Knows nothing of models, KServe or ``localcache.api`` (an import-linter contract enforces it).
Objects are plain JSON dicts. Each module's docstring states its stable interface:

* :mod:`.client` - ``Client`` (raw-JSON, any GVK), ``Resource`` in :mod:`.resources`, errors in :mod:`.errors`
* :mod:`.clock` - ``Clock``, ``SYSTEM_CLOCK``, ``FakeClock`` (virtual time for tests)
* :mod:`.reflector`, :mod:`.store`, :mod:`.informer`, :mod:`.cache` - list/watch, indexed store,
  shared informers, the informer cache (``InformerCache``, a runnable)
* :mod:`.workqueue`, :mod:`.ratelimit` - the dedup/delaying/priority queue and rate limiters
* :mod:`.reconcile`, :mod:`.controller`, :mod:`.builder`, :mod:`.handlers`, :mod:`.predicates` -
  reconcilers, controllers (runnables) and how to declare them
* :mod:`.metrics` - controller-runtime's metric names on prometheus_client's default registry

Runnable protocol (what a manager runs): ``async def start(self) -> None`` runs until cancelled;
``needs_leader_election: bool`` (controllers True, the informer cache False); the cache also has
``async def wait_for_sync(timeout: float) -> bool``.

A minimal controller::

    from localcache.runtime import Builder, Client, InformerCache, Request, Result
    from localcache.runtime.resources import CONFIGMAPS

    async with await Client.from_kubeconfig() as client:
        cache = InformerCache(client)

        async def reconcile(req: Request) -> Result | None:
            cm = await cache.get(CONFIGMAPS, req.name, req.namespace)
            ...

        ctl = Builder(client, cache, name="demo").for_(CONFIGMAPS).build(reconcile)
        await asyncio.gather(cache.start(), ctl.start())
"""

from localcache.runtime.builder import Builder, BuilderError
from localcache.runtime.cache import Cache, InformerCache, ResourceNotCached
from localcache.runtime.client import Client, WatchStream
from localcache.runtime.clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from localcache.runtime.controller import CacheSyncTimeout, Controller, ReconcileTimeout
from localcache.runtime.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    Timeout,
    TooManyRequests,
    Unauthorized,
)
from localcache.runtime.handlers import (
    EnqueueRequestForObject,
    EnqueueRequestForOwner,
    EnqueueRequestsFromMapFunc,
)
from localcache.runtime.informer import FuncHandler, HandlerRegistration, SharedInformer, strip_managed_fields
from localcache.runtime.predicates import (
    Predicate,
    and_,
    annotations_changed,
    generation_changed,
    label_selector,
    labels_changed,
    new_predicate_funcs,
    not_,
    or_,
    resource_version_changed,
)
from localcache.runtime.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    default_controller_rate_limiter,
)
from localcache.runtime.reconcile import Reconciler, Request, Result, TerminalError, current_reconcile_id
from localcache.runtime.reflector import Reflector
from localcache.runtime.resources import Resource
from localcache.runtime.selectors import LabelSelector, parse_selector
from localcache.runtime.store import DeletedFinalStateUnknown, Store, deep_copy, object_key
from localcache.runtime.workqueue import LOW_PRIORITY, ShutDown, WorkQueue

__all__ = [
    "LOW_PRIORITY",
    "SYSTEM_CLOCK",
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "BucketRateLimiter",
    "Builder",
    "BuilderError",
    "Cache",
    "CacheSyncTimeout",
    "Client",
    "Clock",
    "Conflict",
    "ConnectionFailed",
    "Controller",
    "DeletedFinalStateUnknown",
    "EnqueueRequestForObject",
    "EnqueueRequestForOwner",
    "EnqueueRequestsFromMapFunc",
    "FakeClock",
    "Forbidden",
    "FuncHandler",
    "Gone",
    "HandlerRegistration",
    "InformerCache",
    "Invalid",
    "ItemExponentialFailureRateLimiter",
    "LabelSelector",
    "MaxOfRateLimiter",
    "NotFound",
    "Predicate",
    "ReconcileTimeout",
    "Reconciler",
    "Reflector",
    "Request",
    "Resource",
    "ResourceNotCached",
    "Result",
    "ServerError",
    "SharedInformer",
    "ShutDown",
    "Store",
    "SystemClock",
    "TerminalError",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "WatchStream",
    "WorkQueue",
    "and_",
    "annotations_changed",
    "current_reconcile_id",
    "deep_copy",
    "default_controller_rate_limiter",
    "generation_changed",
    "label_selector",
    "labels_changed",
    "new_predicate_funcs",
    "not_",
    "object_key",
    "or_",
    "parse_selector",
    "resource_version_changed",
    "strip_managed_fields",
]
