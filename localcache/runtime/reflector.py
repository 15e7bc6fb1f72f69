"""The reflector: keeps a sink in step with the API server by LIST + WATCH, with client-go's rules.

Ported from client-go's ``tools/cache/reflector.go``:

* First LIST at ``resourceVersion="0"`` (may be served from the watch cache); relists at the last
  synced RV; after a 410 / "too large resource version" at ``""`` (a quorum read). LIST pages of
  500 when the RV is ``""``/``"0"`` (or an earlier list came back paged), unpaged for a specific RV;
  an expired ``continue`` token falls back to one unpaged LIST at the same RV.
* WATCH from the last synced RV with bookmarks on and ``timeoutSeconds`` random in [300, 600).
  Every event (BOOKMARK included) advances the RV. A normal end of stream re-watches without a
  relist; a stream that ends in under 1 s with no events is an error (very short watch).
* 410 Gone / Expired (HTTP status or in-stream ERROR) relists: an expired RV is never re-watched.
* 429 and connection failures when opening a watch back off and re-watch without relisting. A
  connection dropped mid-stream, or no bytes for the idle timeout (the inactivity watchdog against
  half-open TCP connections), ends the stream like a normal close: re-watch from the last RV.
  Other errors back off and list again.
* Backoff between list-and-watch rounds: 800 ms doubling to 30 s, jitter 1.0 (delay in [d, 2d)),
  reset after 2 min without a backoff.
* Optional watch-list (``sendInitialEvents``): the initial state streamed as ADDED events into a
  temporary list, ended by a BOOKMARK annotated ``k8s.io/initial-events-end``; falls back to LIST.

The reflector talks to a :class:`ListerWatcher` (a real one over :class:`Client`, or a fake in tests)
and feeds a :class:`ReflectorSink` (the informer) synchronously, so event order is preserved.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from localcache.runtime import errors, metrics
from localcache.runtime.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "INITIAL_EVENTS_END_ANNOTATION",
    "Backoff",
    "ClientListerWatcher",
    "ListerWatcher",
    "Reflector",
    "ReflectorSink",
    "VeryShortWatchError",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
INITIAL_EVENTS_END_ANNOTATION = "k8s.io/initial-events-end"
PAGE_SIZE = 500
MIN_WATCH_TIMEOUT = 300.0


class VeryShortWatchError(Exception):
    """The watch closed in under a second without any event: the server is likely unhealthy."""


class ListerWatcher(Protocol):
    """What a reflector needs from the API: one LIST page and one WATCH stream."""

    async def list(
        self, *, resource_version: str | None, limit: int | None, continue_: str | None
    ) -> Obj: ...

    def watch(
        self,
        *,
        resource_version: str | None,
        timeout_seconds: int | None,
        allow_watch_bookmarks: bool,
        send_initial_events: bool | None = None,
        resource_version_match: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, Obj]]]: ...


class ReflectorSink(Protocol):
    """Receives the reflector's view; called synchronously, in order."""

    def replace(self, items: list[Obj], resource_version: str) -> None: ...

    def add(self, obj: Obj) -> None: ...

    def update(self, obj: Obj) -> None: ...

    def delete(self, obj: Obj) -> None: ...

    def bookmark(self, resource_version: str) -> None: ...


class ClientListerWatcher:
    """A :class:`ListerWatcher` over :class:`localcache.runtime.client.Client` for one scope."""

    def __init__(
        self,
        client: Any,
        resource: Any,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
    ) -> None:
        self.client = client
        self.metadata_only = metadata_only
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector or None
        self.field_selector = field_selector or None

    async def list(self, *, resource_version: str | None, limit: int | None, continue_: str | None) -> Obj:
        return await self.client.list(
            self.resource,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=resource_version,
            limit=limit,
            continue_=continue_,
            metadata_only=self.metadata_only,
        )

    def watch(
        self,
        *,
        resource_version: str | None,
        timeout_seconds: int | None,
        allow_watch_bookmarks: bool,
        send_initial_events: bool | None = None,
        resource_version_match: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, Obj]]]:
        return self.client.watch(  # type: ignore[no-any-return]
            self.resource,
            self.namespace,
            resource_version=resource_version,
            resource_version_match=resource_version_match,
            allow_watch_bookmarks=allow_watch_bookmarks,
            timeout_seconds=timeout_seconds,
            send_initial_events=send_initial_events,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            metadata_only=self.metadata_only,
        )


class Backoff:
    """client-go's exponential backoff manager: 0.8 s doubling to 30 s, jitter 1.0, reset after 2 min."""

    def __init__(
        self,
        clock: Clock = SYSTEM_CLOCK,
        *,
        initial: float = 0.8,
        factor: float = 2.0,
        jitter: float = 1.0,
        cap: float = 30.0,
        reset_after: float = 120.0,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.initial = initial
        self.factor = factor
        self.jitter = jitter
        self.cap = cap
        self.reset_after = reset_after
        self._rng = rng or random.Random()
        self._current = initial
        self._last: float | None = None

    def next(self) -> float:
        now = self.clock.monotonic()
        if self._last is not None and now - self._last > self.reset_after:
            self._current = self.initial
        base = min(self._current, self.cap)
        self._current = min(self._current * self.factor, self.cap)
        self._last = now
        return base + self._rng.random() * self.jitter * base if self.jitter > 0 else base

    async def sleep(self) -> float:
        delay = self.next()
        await self.clock.sleep(delay)
        return delay


def _rv_of(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


def _numeric_rv(rv: str) -> float:
    try:
        return float(int(rv))
    except ValueError:
        return 0.0


class Reflector:
    """Runs list-and-watch rounds into ``sink`` until cancelled (see the module docstring)."""

    def __init__(
        self,
        lister_watcher: ListerWatcher,
        sink: ReflectorSink,
        *,
        name: str = "reflector",
        gvk: str = "",
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        page_size: int = PAGE_SIZE,
        min_watch_timeout: float = MIN_WATCH_TIMEOUT,
        use_watch_list: bool = False,
        backoff: Backoff | None = None,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.lw = lister_watcher
        self.sink = sink
        self.name = name
        self.gvk = gvk or name
        self.clock = clock
        self._rng = rng or random.Random()
        self.page_size = page_size
        # client-go allows raising the minimum but never lowering it below 5 minutes
        self.min_watch_timeout = max(MIN_WATCH_TIMEOUT, min_watch_timeout)
        self.use_watch_list = use_watch_list
        self.backoff = backoff or Backoff(clock, rng=self._rng)
        self.on_synced = on_synced
        self.last_sync_resource_version = ""
        self._rv_unavailable = False
        self._paginated_result = False
        self._watch_list_unsupported = False
        self.lists = 0
        self.watches = 0
        self._m_events: dict[str, Any] = {}
        self._pending_counts: dict[str, int] = {}
        self._since_check = 0
        self._last_flush = 0.0
        self.on_flush: Callable[[], None] | None = None
        self._m_rv = metrics.informer_last_resource_version.labels(self.gvk)

    # --- the outer loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            failure: Exception | None = None
            try:
                await self.list_and_watch()
            except asyncio.CancelledError:
                raise
            except errors.ApiError as exc:
                failure = exc
                if isinstance(exc, errors.Gone):
                    log.info("reflector %s: %s; relisting", self.name, exc, extra={"reflector": self.name})
                else:
                    log.warning(
                        "reflector %s: list-and-watch failed: %s",
                        self.name,
                        exc,
                        extra={"reflector": self.name, "status": exc.status},
                    )
            except Exception as exc:  # the reflector must survive anything and keep trying
                failure = exc
                log.warning(
                    "reflector %s: list-and-watch failed: %r", self.name, exc, extra={"reflector": self.name}
                )
            await self._backoff_for(failure)

    def relist_resource_version(self) -> str:
        if self._rv_unavailable:
            return ""
        if not self.last_sync_resource_version:
            return "0"
        return self.last_sync_resource_version

    async def list_and_watch(self) -> None:
        """One round: sync the sink (watch-list or LIST), then watch until something forces a relist."""
        if self.use_watch_list and not self._watch_list_unsupported:
            try:
                done = await self._watch_list()
                if done:
                    return
            except errors.Gone:
                self._rv_unavailable = True
            except errors.ApiError as exc:
                if errors.is_resource_version_too_large(exc):
                    self._rv_unavailable = True
                elif exc.status in (400, 403, 405, 422):
                    log.info("reflector %s: watch-list unavailable (%s); using LIST", self.name, exc)
                    self._watch_list_unsupported = True
                else:
                    raise
            # fall through to the paged LIST
        await self._list()
        await self._watch_loop()

    # --- LIST ----------------------------------------------------------------------------------------
    async def _list(self) -> None:
        rv = self.relist_resource_version()
        if self.lists:
            metrics.informer_relists_total.labels(self.gvk).inc()
        self.lists += 1
        try:
            items, list_rv = await self._paged_list(rv)
        except errors.ApiError as exc:
            if isinstance(exc, errors.Gone) or errors.is_resource_version_too_large(exc):
                # the RV we asked for is gone (or ahead of this server): quorum read instead
                metrics.informer_list_total.labels(self.gvk, "expired").inc()
                self._rv_unavailable = True
                items, list_rv = await self._paged_list("")
            else:
                metrics.informer_list_total.labels(self.gvk, "error").inc()
                raise
        metrics.informer_list_total.labels(self.gvk, "success").inc()
        self.sink.replace(items, list_rv)
        self._set_rv(list_rv)
        self._rv_unavailable = False
        self.flush_metrics()
        if self.on_synced:
            self.on_synced()

    async def _paged_list(self, rv: str) -> tuple[list[Obj], str]:
        paged = rv in ("", "0") or self._paginated_result
        limit = self.page_size if paged else None
        items: list[Obj] = []
        first = await self.lw.list(resource_version=rv, limit=limit, continue_=None)
        meta = first.get("metadata") or {}
        list_rv = meta.get("resourceVersion") or ""
        items.extend(first.get("items") or [])
        cont = meta.get("continue") or None
        if cont and rv == "0":
            # the server paginated a list we hoped the watch cache would serve whole: keep paging later
            self._paginated_result = True
        while cont:
            try:
                page = await self.lw.list(resource_version=None, limit=limit, continue_=cont)
            except errors.Gone:
                # continue token expired mid-list: one full, unpaged list at the original RV
                full = await self.lw.list(resource_version=rv, limit=None, continue_=None)
                return list(full.get("items") or []), (full.get("metadata") or {}).get(
                    "resourceVersion"
                ) or ""
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or None
        return items, list_rv

    def _set_rv(self, rv: str) -> None:
        if rv:
            self.last_sync_resource_version = rv

    # --- WATCH ---------------------------------------------------------------------------------------
    def _watch_timeout(self) -> int:
        return int(self.min_watch_timeout * (1.0 + self._rng.random()))

    def _count(self, etype: str) -> None:
        # counted locally and flushed at most once a second: a labelled counter's inc() costs about
        # as much as the rest of an event's handling
        pending = self._pending_counts
        pending[etype] = pending.get(etype, 0) + 1
        self._since_check += 1
        if self._since_check >= 64:
            self._since_check = 0
            now = self.clock.monotonic()
            if now - self._last_flush >= 1.0:
                self.flush_metrics(now)

    def flush_metrics(self, now: float | None = None) -> None:
        self._last_flush = self.clock.monotonic() if now is None else now
        self._since_check = 0
        if self.last_sync_resource_version:
            self._m_rv.set(_numeric_rv(self.last_sync_resource_version))
        for etype, n in self._pending_counts.items():
            c = self._m_events.get(etype)
            if c is None:
                c = self._m_events[etype] = metrics.informer_events_total.labels(self.gvk, etype)
            c.inc(n)
        self._pending_counts.clear()
        if self.on_flush is not None:
            self.on_flush()

    async def _watch_loop(self) -> None:
        while True:
            timeout = self._watch_timeout()
            started = self.clock.monotonic()
            events = 0
            self.watches += 1
            try:
                stream_cm = self.lw.watch(
                    resource_version=self.last_sync_resource_version,
                    timeout_seconds=timeout,
                    allow_watch_bookmarks=True,
                )
                stream = await stream_cm.__aenter__()
            except (errors.TooManyRequests, errors.ConnectionFailed) as exc:
                metrics.informer_watch_restarts_total.labels(self.gvk, "error").inc()
                log.info("reflector %s: watch not opened (%s); backing off, no relist", self.name, exc)
                await self._backoff_for(exc)
                continue
            except errors.Gone:
                metrics.informer_watch_restarts_total.labels(self.gvk, "expired").inc()
                return  # relist at last RV (then "" if that is gone too)
            except errors.ApiError as exc:
                if errors.is_resource_version_too_large(exc):
                    self._rv_unavailable = True
                    return
                raise
            reason = "closed"
            try:
                try:
                    batches = getattr(stream, "batches", None)
                    if batches is not None:  # the real client's stream: one await per network read
                        handle = self._handle
                        async for batch in batches():
                            for etype, obj in batch:
                                events += 1
                                handle(etype, obj)
                    else:
                        async for etype, obj in stream:
                            events += 1
                            self._handle(etype, obj)
                except errors.Gone:
                    metrics.informer_watch_restarts_total.labels(self.gvk, "expired").inc()
                    return
                except errors.Timeout:
                    reason = "inactivity"
                except errors.ConnectionFailed:
                    reason = "error"
                except errors.TooManyRequests as exc:
                    metrics.informer_watch_restarts_total.labels(self.gvk, "error").inc()
                    await self._backoff_for(exc)
                    continue
            finally:
                await stream_cm.__aexit__(None, None, None)
                self.flush_metrics()
            metrics.informer_watch_restarts_total.labels(self.gvk, reason).inc()
            if events == 0 and self.clock.monotonic() - started < 1.0 and reason == "closed":
                raise VeryShortWatchError(f"reflector {self.name}: watch closed in under 1 s with no events")
            log.debug(
                "reflector %s: watch ended (%s) after %d events; re-watching at %s",
                self.name,
                reason,
                events,
                self.last_sync_resource_version,
            )

    async def _backoff_for(self, exc: Exception | None) -> None:
        """The backoff delay, or longer if the server asked for it (429 Retry-After)."""
        delay = self.backoff.next()
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            delay = max(delay, float(retry_after))
        await self.clock.sleep(delay)

    def _handle(self, etype: str, obj: Obj) -> None:
        self._count(etype)
        if etype == "ADDED":
            self.sink.add(obj)
        elif etype == "MODIFIED":
            self.sink.update(obj)
        elif etype == "DELETED":
            self.sink.delete(obj)
        elif etype == "BOOKMARK":
            self.sink.bookmark(_rv_of(obj))
        elif etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            raise errors.from_status(int(code or 500), obj)
        else:
            log.warning("reflector %s: unknown watch event type %r", self.name, etype)
            return
        self._set_rv(_rv_of(obj))

    # --- watch-list ----------------------------------------------------------------------------------
    async def _watch_list(self) -> bool:
        """Stream the initial state; returns True if the watch ended after a successful sync (rewatch).

        RV bookkeeping only starts at the end-of-initial-events bookmark: the synthetic ADDED events
        before it are not in RV order.
        """
        rv = "" if self._rv_unavailable else self.last_sync_resource_version
        temp: list[Obj] = []
        synced = False
        started = self.clock.monotonic()
        async with self.lw.watch(
            resource_version=rv,
            resource_version_match="NotOlderThan",
            send_initial_events=True,
            timeout_seconds=self._watch_timeout(),
            allow_watch_bookmarks=True,
        ) as stream:
            self.lists += 1
            try:
                async for etype, obj in stream:
                    if synced:
                        self._handle(etype, obj)
                        continue
                    self._count(etype)
                    if etype == "ADDED":
                        temp.append(obj)
                    elif etype == "BOOKMARK":
                        meta = obj.get("metadata") or {}
                        if (meta.get("annotations") or {}).get(INITIAL_EVENTS_END_ANNOTATION) == "true":
                            end_rv = meta.get("resourceVersion") or ""
                            self.sink.replace(temp, end_rv)
                            temp = []
                            self._set_rv(end_rv)
                            self._rv_unavailable = False
                            synced = True
                            if self.on_synced:
                                self.on_synced()
                    elif etype == "ERROR":
                        self._handle(etype, obj)
                    else:
                        # MODIFIED/DELETED before the end marker: apply to the temporary list
                        key = (obj.get("metadata") or {}).get("uid")
                        temp = [o for o in temp if (o.get("metadata") or {}).get("uid") != key]
                        if etype == "MODIFIED":
                            temp.append(obj)
            except (errors.Timeout, errors.ConnectionFailed):
                if not synced:
                    raise
        if not synced:
            if self.clock.monotonic() - started < 1.0:
                raise VeryShortWatchError(f"reflector {self.name}: watch-list ended before initial events")
            raise errors.ApiError(
                f"reflector {self.name}: watch-list ended before the initial-events bookmark"
            )
        await self._watch_loop()
        return True
