"""The reconciler contract (controller-runtime ``pkg/reconcile``), level-based on keys.

A reconciler gets only a :class:`Request` (namespace, name), reads current state from the cache and
converges; it never sees the event that woke it. It returns a :class:`Result` (or None = success):

* ``Result(requeue_after=s)``: forget the item's backoff and look again in ``s`` seconds;
* ``Result(requeue=True)``: retry with the rate limiter's backoff (deprecated in Go, kept here);
* ``priority`` overrides the queue priority of that requeue;
* raising any exception: retry with per-item exponential backoff (``requeue_after`` is ignored);
* raising :class:`TerminalError`: counted as an error, never retried.

``current_reconcile_id()`` gives the UUID of the reconcile running in the current task, for logs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Reconciler",
    "ReconcilerFunc",
    "Request",
    "Result",
    "TerminalError",
    "current_reconcile_id",
]


@dataclass(frozen=True, slots=True, order=True)
class Request:
    """What to reconcile: ``namespace`` is "" for cluster-scoped objects."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def from_key(cls, key: str) -> Request:
        ns, sep, name = key.partition("/")
        return cls(ns, name) if sep else cls("", ns)

    @classmethod
    def for_object(cls, obj: dict[str, Any]) -> Request:
        meta = obj.get("metadata") or {}
        return cls(meta.get("namespace") or "", meta["name"])

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Result:
    requeue_after: float = 0.0
    requeue: bool = False
    priority: int | None = None


class TerminalError(Exception):
    """An error retrying cannot fix (bad spec): reported and counted, not requeued.

    Raise it directly or wrap a cause: ``raise TerminalError("bad uri") from exc``.
    """


class Reconciler(Protocol):
    async def reconcile(self, request: Request) -> Result | None: ...


ReconcilerFunc = Callable[[Request], Awaitable[Result | None]]

_reconcile_id: contextvars.ContextVar[str] = contextvars.ContextVar("reconcile_id", default="")


def current_reconcile_id() -> str:
    return _reconcile_id.get()
