"""A controller: watches feeding a workqueue, and workers running a reconciler on its keys.

Behaviour of controller-runtime's ``pkg/internal/controller``:

* ``start()`` registers every watch's handler on its informer, waits (up to ``cache_sync_timeout``,
  2 min) until each handler has processed its informer's initial list, then runs
  ``max_concurrent_reconciles`` workers (default 1). A key is never reconciled by two workers at once
  (the workqueue's processing set).
* Outcomes: an exception → ``add_rate_limited`` (a ``requeue_after`` is not consulted);
  :class:`TerminalError` → counted, not requeued, backoff not reset; ``Result(requeue_after=s)`` →
  ``forget`` + ``add_after(s)``; ``Result(requeue=True)`` → ``add_rate_limited``; otherwise
  ``forget``. ``Result.priority`` sets the requeue's priority.
* Exceptions are the Python form of both Go's errors and panics: every exception counts in
  ``reconcile_errors_total``; those that are not API/OS/timeout errors (programming bugs: KeyError,
  TypeError...) also count as ``reconcile_panics_total``. With ``recover_panic=False`` such a bug
  stops the controller instead.
* ``reconcile_timeout``: a reconcile running longer is cancelled, counted in
  ``reconcile_timeouts_total`` and retried with backoff.
* Each reconcile has a UUID (``current_reconcile_id()``) in its log records.

Runnable protocol: ``await controller.start()`` runs until cancelled (then shuts the queue down and
waits for workers); ``needs_leader_election = True``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from localcache.runtime import errors, metrics
from localcache.runtime.clock import SYSTEM_CLOCK, Clock
from localcache.runtime.handlers import EnqueueHandler, InformerAdapter
from localcache.runtime.informer import HandlerRegistration, SharedInformer
from localcache.runtime.predicates import Predicate
from localcache.runtime.ratelimit import RateLimiter
from localcache.runtime.reconcile import (
    Reconciler,
    ReconcilerFunc,
    Request,
    Result,
    TerminalError,
    _reconcile_id,
)
from localcache.runtime.workqueue import ShutDown, WorkQueue

__all__ = ["CacheSyncTimeout", "Controller", "ReconcileTimeout", "Watch"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SYNC_TIMEOUT = 120.0
_EXPECTED_ERRORS = (errors.ApiError, OSError, TimeoutError)


class ReconcileTimeout(TimeoutError):
    """A reconcile ran longer than ``reconcile_timeout`` and was cancelled."""


class CacheSyncTimeout(Exception):
    """A watch's informer did not sync within ``cache_sync_timeout``."""


@dataclass
class Watch:
    """One source of events: an informer, how to map its objects to keys, and which events count."""

    informer: SharedInformer
    handler: EnqueueHandler
    predicates: Sequence[Predicate] = field(default_factory=tuple)


class Controller:
    needs_leader_election = True

    def __init__(
        self,
        name: str,
        reconciler: Reconciler | ReconcilerFunc,
        *,
        max_concurrent_reconciles: int = 1,
        rate_limiter: RateLimiter | None = None,
        reconcile_timeout: float | None = None,
        recover_panic: bool = True,
        cache_sync_timeout: float = DEFAULT_CACHE_SYNC_TIMEOUT,
        clock: Clock = SYSTEM_CLOCK,
        needs_leader_election: bool = True,
    ) -> None:
        if max_concurrent_reconciles < 1:
            raise ValueError(f"controller {name}: max_concurrent_reconciles must be >= 1")
        self.name = name
        fn = getattr(reconciler, "reconcile", reconciler)
        if not callable(fn):
            raise TypeError(f"controller {name}: reconciler must have reconcile(request) or be callable")
        self._reconcile = fn
        self.max_concurrent_reconciles = max_concurrent_reconciles
        self.reconcile_timeout = reconcile_timeout
        self.recover_panic = recover_panic
        self.cache_sync_timeout = cache_sync_timeout
        self.clock = clock
        self.needs_leader_election = needs_leader_election
        self.queue: WorkQueue[Request] = WorkQueue(
            name, rate_limiter=rate_limiter, clock=clock, controller=name
        )
        self.watches: list[Watch] = []
        self._registrations: list[tuple[SharedInformer, HandlerRegistration]] = []
        self._adapters: list[InformerAdapter] = []
        self._started = False
        self.reconciles = 0
        self._m_total = {r: metrics.reconcile_total.labels(name, r) for r in metrics.RECONCILE_RESULTS}
        self._m_errors = metrics.reconcile_errors_total.labels(name)
        self._m_terminal = metrics.terminal_reconcile_errors_total.labels(name)
        self._m_panics = metrics.reconcile_panics_total.labels(name)
        self._m_timeouts = metrics.reconcile_timeouts_total.labels(name)
        self._m_time = metrics.reconcile_time_seconds.labels(name)
        self._m_active = metrics.active_workers.labels(name)
        metrics.max_concurrent_reconciles.labels(name).set(max_concurrent_reconciles)

    # --- wiring --------------------------------------------------------------------------------------
    def watch(self, informer: SharedInformer, handler: EnqueueHandler, *predicates: Predicate) -> None:
        """Add a source; after start it is registered at once (and its initial list enqueued)."""
        w = Watch(informer, handler, tuple(predicates))
        self.watches.append(w)
        if self._started:
            self._register(w)

    def _register(self, w: Watch) -> HandlerRegistration:
        adapter = InformerAdapter(w.handler, w.predicates, self.queue)
        self._adapters.append(adapter)
        reg = w.informer.add_event_handler(adapter, name=f"{self.name}/{type(w.handler).__name__}")
        self._registrations.append((w.informer, reg))
        return reg

    def enqueue(self, request: Request, priority: int = 0) -> None:
        """Trigger a reconcile by hand (a GenericEvent without an object)."""
        self.queue.add(request, priority)

    # --- running -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            raise RuntimeError(f"controller {self.name} was already started")
        if not self.watches:
            raise RuntimeError(f"controller {self.name} has no watches")
        self._started = True
        regs = [self._register(w) for w in self.watches]
        workers: list[asyncio.Task[None]] = []
        ticker: asyncio.Task[None] | None = None
        try:
            synced = await asyncio.gather(*(r.wait_for_sync(self.cache_sync_timeout) for r in regs))
            if not all(synced):
                late = [r.informer.name for r, ok in zip(regs, synced, strict=True) if not ok]
                raise CacheSyncTimeout(
                    f"controller {self.name}: informers {late} not synced within {self.cache_sync_timeout}s"
                )
            log.info(
                "controller %s: starting %d workers",
                self.name,
                self.max_concurrent_reconciles,
                extra={"controller": self.name},
            )
            loop = asyncio.get_running_loop()
            workers = [
                loop.create_task(self._worker(), name=f"{self.name}-worker-{i}")
                for i in range(self.max_concurrent_reconciles)
            ]
            ticker = loop.create_task(self._metrics_ticker(), name=f"{self.name}-metrics")
            # a worker only ends by raising (recover_panic=False) or when the queue is shut down
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            self.queue.shutdown()
            if ticker is not None:
                ticker.cancel()
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for informer, reg in self._registrations:
                informer.remove_event_handler(reg)
            self._registrations.clear()

    run = start

    async def _metrics_ticker(self) -> None:
        while True:
            self.queue.update_unfinished_work()
            await self.clock.sleep(0.5)

    async def _worker(self) -> None:
        queue = self.queue
        while True:
            try:
                req = await queue.get()
            except ShutDown:
                return
            try:
                await self._reconcile_handler(req)
            finally:
                queue.done(req)

    async def _call(self, req: Request) -> Result | None:
        result = self._reconcile(req)
        if inspect.isawaitable(result):
            if self.reconcile_timeout:
                cm = asyncio.timeout(self.reconcile_timeout)
                try:
                    async with cm:
                        return await result  # type: ignore[no-any-return]
                except TimeoutError as exc:
                    if cm.expired():
                        raise ReconcileTimeout(f"reconcile {req} exceeded {self.reconcile_timeout}s") from exc
                    raise
            return await result  # type: ignore[no-any-return]
        return result  # type: ignore[no-any-return]

    async def _reconcile_handler(self, req: Request) -> None:
        queue = self.queue
        rid = str(uuid.uuid4())
        token = _reconcile_id.set(rid)
        extra = {"controller": self.name, "request": req.key, "reconcile_id": rid}
        prio = queue.priority_of(req)
        started = self.clock.monotonic()
        self._m_active.inc()
        self.reconciles += 1
        try:
            try:
                result = await self._call(req)
            finally:
                self._m_active.dec()
                self._m_time.observe(self.clock.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except TerminalError as exc:
            self._m_total["error"].inc()
            self._m_errors.inc()
            self._m_terminal.inc()
            log.error("reconcile %s failed terminally: %s", req, exc, extra=extra)
            return
        except ReconcileTimeout as exc:
            self._m_timeouts.inc()
            self._m_total["error"].inc()
            self._m_errors.inc()
            log.warning("%s", exc, extra=extra)
            queue.add_rate_limited(req, prio)
            return
        except Exception as exc:
            self._m_total["error"].inc()
            self._m_errors.inc()
            if not isinstance(exc, _EXPECTED_ERRORS):
                self._m_panics.inc()
                if not self.recover_panic:
                    raise
                log.exception("reconcile %s raised (recovered)", req, extra=extra)
            else:
                log.warning("reconcile %s failed: %s", req, exc, extra=extra)
            queue.add_rate_limited(req, prio)
            return
        finally:
            _reconcile_id.reset(token)
        if result is None:
            result = Result()
        requeue_prio = result.priority if result.priority is not None else prio
        if result.requeue_after > 0:
            queue.forget(req)
            queue.add_after(req, result.requeue_after, requeue_prio)
            self._m_total["requeue_after"].inc()
        elif result.requeue:
            queue.add_rate_limited(req, requeue_prio)
            self._m_total["requeue"].inc()
        else:
            queue.forget(req)
            self._m_total["success"].inc()
