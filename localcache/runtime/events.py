"""Kubernetes Events from controllers, with client-go's correlation so a hot loop cannot flood the API.

``recorder.event(obj, "Warning", "DownloadFailed", "…")`` returns at once: the event goes to a bounded
background queue and a worker task writes it, so recording never blocks or fails a reconcile. API
errors are logged and the event dropped (after a few retries for transient ones); a full queue drops
new events, as client-go's broadcaster does.

Correlation, in client-go's order (``tools/record/events_cache.go``):

1. **Spam filter**: a token bucket per source + involved object (burst 25, one more per 5 minutes).
2. **Aggregation**: when one object gets 10 events with the same type and reason but different
   messages within 10 minutes, further ones become one Event with the message
   ``(combined from similar events): <latest message>``.
3. **Deduplication**: an event identical to an earlier one (same source, object, type, reason and
   message) patches the existing Event's ``count``, ``lastTimestamp`` and ``message`` instead of
   creating another object. The cache of written events is an LRU bounded at 4096 keys.

Events are ``core/v1`` (``firstTimestamp``/``lastTimestamp``/``count``), named ``<object>.<hex ns>``
in the object's namespace (``default`` for cluster-scoped objects), with ``source.component``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from localcache.runtime import errors
from localcache.runtime.clock import SYSTEM_CLOCK, Clock
from localcache.runtime.resources import EVENTS, Resource

__all__ = ["EVENT_TYPES", "EventClient", "EventRecorder", "involved_object"]

log = logging.getLogger(__name__)

EVENT_TYPES = ("Normal", "Warning")
MAX_MESSAGE = 1024
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_WINDOW_S = 600.0
COMBINED_PREFIX = "(combined from similar events): "


class EventClient(Protocol):
    """The part of :class:`~localcache.runtime.client.Client` the recorder uses."""

    async def create(
        self, resource: Resource, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]: ...

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = ...,
    ) -> dict[str, Any]: ...


def involved_object(obj: dict[str, Any], resource: Resource | None = None) -> dict[str, Any]:
    """The ``involvedObject`` reference for an object dict; a clear error names a missing field.

    Objects from a LIST carry no ``kind``/``apiVersion``; ``resource`` supplies them.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"event involved object must be an object dict, got {type(obj).__name__}")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError("event involved object has no metadata.name")
    kind = obj.get("kind") or (resource.kind if resource is not None else "")
    if not kind:
        raise ValueError(f"event involved object {name!r} has no kind: pass resource= to name its kind")
    ref: dict[str, Any] = {"kind": kind, "name": name}
    for src, dst in (("namespace", "namespace"), ("uid", "uid"), ("resourceVersion", "resourceVersion")):
        if meta.get(src):
            ref[dst] = meta[src]
    api_version = obj.get("apiVersion") or (resource.api_version if resource is not None else "")
    if api_version:
        ref["apiVersion"] = api_version
    return ref


class _Bucket:
    def __init__(self, burst: int, qps: float, now: float) -> None:
        self.tokens = float(burst)
        self.burst = burst
        self.qps = qps
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.qps)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    first_timestamp: str


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    last: float = 0.0


#: Objects whose events are written at the same time.
WRITE_CONCURRENCY = 8


@dataclass
class _Pending:
    involved: dict[str, Any]
    type: str
    reason: str
    message: str
    timestamp: str
    at: float


class _LRU(OrderedDict[str, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def lookup(self, key: str) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def store(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class EventRecorder:
    """Records Events for one component; see the module docstring. Also a runnable (``start``)."""

    needs_leader_election = False

    def __init__(
        self,
        client: EventClient,
        component: str,
        *,
        host: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        queue_size: int = 1000,
        cache_size: int = 4096,
        spam_burst: int = 25,
        spam_qps: float = 1.0 / 300.0,
        max_tries: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        if not component:
            raise ValueError("event recorder: component is empty")
        self.client = client
        self.component = component
        self.host = socket.gethostname() if host is None else host
        self._clock = clock
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(queue_size)
        self._seen = _LRU(cache_size)
        self._similar = _LRU(cache_size)
        self._spam = _LRU(cache_size)
        self._spam_burst = spam_burst
        self._spam_qps = spam_qps
        self._max_tries = max_tries
        self._retry_delay = retry_delay
        self._worker: asyncio.Task[None] | None = None
        self._last_name_ns = 0
        self.dropped = 0
        self.written = 0

    # --- the caller's side -------------------------------------------------------------------------
    def event(
        self, obj: dict[str, Any], type: str, reason: str, message: str, *, resource: Resource | None = None
    ) -> None:
        """Record an event about ``obj``; never blocks, never raises on API trouble.

        ``resource`` fills in ``kind``/``apiVersion`` for objects read from a list (which lack them).
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"event type {type!r} for reason {reason!r}: must be one of {EVENT_TYPES}")
        if not reason:
            raise ValueError("event reason is empty")
        ref = involved_object(obj, resource)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        now = self._clock.now()
        pending = _Pending(
            ref, type, reason, message, now.strftime("%Y-%m-%dT%H:%M:%SZ"), self._clock.monotonic()
        )
        self._ensure_worker()
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.dropped += 1
            extra = {"component": self.component, "reason": reason, "object": ref["name"]}
            log.warning("event queue full; dropping event", extra=extra)

    def normal(
        self, obj: dict[str, Any], reason: str, message: str, *, resource: Resource | None = None
    ) -> None:
        self.event(obj, "Normal", reason, message, resource=resource)

    def warning(
        self, obj: dict[str, Any], reason: str, message: str, *, resource: Resource | None = None
    ) -> None:
        self.event(obj, "Warning", reason, message, resource=resource)

    # --- lifecycle ---------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._drain(), name=f"events-{self.component}"
            )

    async def start(self) -> None:
        """Run the writer in the foreground until cancelled (the manager's way)."""
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = asyncio.current_task()  # type: ignore[assignment]
        await self._drain()

    async def flush(self) -> None:
        """Wait until every queued event has been written or dropped."""
        await self._queue.join()

    async def close(self, grace: float = 5.0) -> None:
        """Flush for up to ``grace`` seconds of real time, then stop the writer."""
        try:
            async with asyncio.timeout(grace):
                await self.flush()
        except TimeoutError:
            log.warning("event recorder closed with events pending",
                        extra={"component": self.component, "pending": self._queue.qsize()})  # fmt: skip
        worker, self._worker = self._worker, None
        if worker is not None and worker is not asyncio.current_task() and not worker.done():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _drain(self) -> None:
        """Write queued events, up to :data:`WRITE_CONCURRENCY` objects' events at a time.

        One write at a time drained about three events a second when the API server was busy, so a
        burst (a thousand caches created at once) was still being written long after the work it
        describes was done. Events of one object stay in order, one after another, because their
        correlation (count, series) depends on the previous write.
        """
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_CONCURRENCY * 4 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            by_object: dict[str, list[_Pending]] = {}
            for pending in batch:
                by_object.setdefault(self._object_key(pending.involved), []).append(pending)
            lanes = list(by_object.values())
            for start in range(0, len(lanes), WRITE_CONCURRENCY):
                chunk = lanes[start : start + WRITE_CONCURRENCY]
                await asyncio.gather(*(self._record_all(lane) for lane in chunk))

    async def _record_all(self, lane: list[_Pending]) -> None:
        for pending in lane:
            try:
                await self._record(pending)
            except Exception:  # the writer must outlive anything one event can do
                log.exception("event recorder failed on an event", extra={"component": self.component})
            finally:
                self._queue.task_done()

    # --- correlation and writing -------------------------------------------------------------------
    def _object_key(self, ref: dict[str, Any]) -> str:
        return "\x00".join([self.component, self.host, ref.get("kind", ""), ref.get("namespace", ""),
                            ref["name"], ref.get("uid", ""), ref.get("apiVersion", "")])  # fmt: skip

    def _event_name(self, obj_name: str) -> str:
        ns = int(self._clock.now().timestamp() * 1e9)
        self._last_name_ns = max(ns, self._last_name_ns + 1)
        return f"{obj_name}.{self._last_name_ns:x}"

    async def _record(self, p: _Pending) -> None:
        obj_key = self._object_key(p.involved)
        bucket = self._spam.lookup(obj_key)
        if bucket is None:
            bucket = _Bucket(self._spam_burst, self._spam_qps, p.at)
            self._spam.store(obj_key, bucket)
        if not bucket.take(p.at):
            self.dropped += 1
            log.debug(
                "event dropped by the spam filter", extra={"reason": p.reason, "object": p.involved["name"]}
            )
            return

        similar_key = "\x00".join([obj_key, p.type, p.reason])
        similar: _Similar | None = self._similar.lookup(similar_key)
        if similar is None or p.at - similar.last > AGGREGATE_WINDOW_S:
            similar = _Similar()
            self._similar.store(similar_key, similar)
        similar.messages.add(p.message)
        similar.last = p.at
        message, key = p.message, "\x00".join([similar_key, p.message])
        if len(similar.messages) >= AGGREGATE_MAX_EVENTS:
            message, key = COMBINED_PREFIX + p.message, similar_key

        namespace = p.involved.get("namespace") or "default"
        seen: _Seen | None = self._seen.lookup(key)
        if seen is not None:
            seen.count += 1
            patch = {"count": seen.count, "lastTimestamp": p.timestamp, "message": message}
            if await self._write(p, "patch", seen.namespace, seen.name, patch) != "missing":
                return
            # the Event expired or was deleted: create it again, keeping the count
            body = self._body(p, seen.name, seen.namespace, message, seen.count, seen.first_timestamp)
            await self._write(p, "create", seen.namespace, seen.name, body)
            return
        name = self._event_name(p.involved["name"])
        body = self._body(p, name, namespace, message, 1, p.timestamp)
        if await self._write(p, "create", namespace, name, body) == "written":
            self._seen.store(key, _Seen(name, namespace, 1, p.timestamp))

    def _body(
        self, p: _Pending, name: str, namespace: str, message: str, count: int, first: str
    ) -> dict[str, Any]:
        source: dict[str, str] = {"component": self.component}
        if self.host:
            source["host"] = self.host
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": p.involved,
            "type": p.type,
            "reason": p.reason,
            "message": message,
            "source": source,
            "firstTimestamp": first,
            "lastTimestamp": p.timestamp,
            "count": count,
        }

    async def _write(self, p: _Pending, verb: str, namespace: str, name: str, body: dict[str, Any]) -> str:
        """``written``, ``missing`` (a patch found no Event) or ``dropped`` (logged)."""
        for attempt in range(1, self._max_tries + 1):
            try:
                if verb == "patch":
                    await self.client.patch(EVENTS, name, body, namespace, patch_type="merge")
                else:
                    await self.client.create(EVENTS, body, namespace)
            except errors.NotFound:
                if verb == "patch":
                    return "missing"
                self._log_drop(p, verb, "namespace not found")
                return "dropped"
            except errors.AlreadyExists:
                return "written"
            except (
                errors.ServerError,
                errors.Timeout,
                errors.TooManyRequests,
                errors.ConnectionFailed,
            ) as exc:
                if attempt == self._max_tries:
                    self._log_drop(p, verb, str(exc))
                    return "dropped"
                await self._clock.sleep(self._retry_delay * 2 ** (attempt - 1))
            except (errors.ApiError, OSError, TimeoutError) as exc:
                self._log_drop(p, verb, str(exc))
                return "dropped"
            else:
                self.written += 1
                return "written"
        return "dropped"  # pragma: no cover - the loop always returns

    def _log_drop(self, p: _Pending, verb: str, error: str) -> None:
        self.dropped += 1
        target = f"{p.involved.get('namespace', '')}/{p.involved['name']}"
        extra = {
            "component": self.component,
            "verb": verb,
            "reason": p.reason,
            "object": target,
            "error": error,
        }
        log.warning("event not written", extra=extra)
