"""Typed API errors, built from the Kubernetes ``Status`` body the API server returns.

Callers branch on the type (``except NotFound``), never on status codes scattered through the code.
:func:`from_status` maps an HTTP status plus the decoded ``Status`` object to the narrowest class;
the ``reason`` field wins over the code where the two disagree (e.g. 504 with ``Expired``).

Hierarchy (stable)::

    ApiError(status, reason, message, details, body)
      NotFound 404 · Conflict 409 (reason Conflict) · AlreadyExists 409 (reason AlreadyExists)
      Gone 410 (Expired/Gone: a resourceVersion or continue token too old) · Invalid 422 (.causes)
      Forbidden 403 · Unauthorized 401 · TooManyRequests 429 (.retry_after) · ServerError 5xx
      Timeout 504 / client-side timeout · BadRequest 400 · MethodNotAllowed 405
    ConnectionFailed: the server could not be reached at all (refused, reset, DNS)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Cause",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Gone",
    "Invalid",
    "MethodNotAllowed",
    "NotFound",
    "ServerError",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "from_response",
    "from_status",
    "is_resource_version_too_large",
]


@dataclass(frozen=True)
class Cause:
    """One entry of ``Status.details.causes``: which field was wrong and why."""

    field: str
    reason: str
    message: str


class ApiError(Exception):
    """A request the API server answered with an error (or that could not complete)."""

    default_status = 0

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        reason: str = "",
        details: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.status = self.default_status if status is None else status
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.body: dict[str, Any] = body or {}
        super().__init__(f"{self.status} {reason}: {message}" if reason else f"{self.status}: {message}")

    @property
    def causes(self) -> list[Cause]:
        return [
            Cause(c.get("field", ""), c.get("reason", ""), c.get("message", ""))
            for c in self.details.get("causes") or []
            if isinstance(c, dict)
        ]


class BadRequest(ApiError):
    default_status = 400


class Unauthorized(ApiError):
    default_status = 401


class Forbidden(ApiError):
    default_status = 403


class NotFound(ApiError):
    default_status = 404


class MethodNotAllowed(ApiError):
    default_status = 405


class Conflict(ApiError):
    """409 Conflict: an update with a stale resourceVersion or a failed precondition."""

    default_status = 409


class AlreadyExists(ApiError):
    """409 AlreadyExists: create of a name that is taken. Not a subclass of Conflict on purpose."""

    default_status = 409


class Gone(ApiError):
    """410: the resourceVersion (or continue token) is older than the server keeps; relist."""

    default_status = 410


class Invalid(ApiError):
    """422: the object failed validation; :attr:`causes` names the fields."""

    default_status = 422


class TooManyRequests(ApiError):
    default_status = 429

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        if retry_after is None:
            secs = self.details.get("retryAfterSeconds")
            retry_after = float(secs) if isinstance(secs, int | float) else None
        self.retry_after = retry_after


class ServerError(ApiError):
    default_status = 500


class Timeout(ApiError):
    """504 from the server, or a client-side request timeout (status 0)."""

    default_status = 504


class ConnectionFailed(ApiError):
    """The server could not be reached (refused, reset, DNS); no HTTP status exists."""

    default_status = 0


_BY_REASON: dict[str, type[ApiError]] = {
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "Gone": Gone,
    "Expired": Gone,
    "Invalid": Invalid,
    "Forbidden": Forbidden,
    "Unauthorized": Unauthorized,
    "TooManyRequests": TooManyRequests,
    "Timeout": Timeout,
    "BadRequest": BadRequest,
    "MethodNotAllowed": MethodNotAllowed,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
}

_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
    504: Timeout,
}


def from_status(status: int, body: dict[str, Any] | None, *, retry_after: float | None = None) -> ApiError:
    """The typed error for an HTTP status and a decoded ``Status`` body (which may be absent)."""
    body = body if isinstance(body, dict) else {}
    code = body.get("code") if isinstance(body.get("code"), int) else status
    code = int(code or status)
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or "")
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    cls = _BY_REASON.get(reason)
    if cls is None:
        cls = _BY_CODE.get(code, ServerError if code >= 500 else ApiError)
    if cls is TooManyRequests:
        return TooManyRequests(
            message, retry_after=retry_after, status=code, reason=reason, details=details, body=body
        )
    return cls(message, status=code, reason=reason, details=details, body=body)


def from_response(status: int, raw: bytes, headers: Any = None) -> ApiError:
    """Like :func:`from_status` from raw response bytes; non-JSON bodies become the message."""
    body: dict[str, Any]
    try:
        decoded = json.loads(raw) if raw else {}
        body = decoded if isinstance(decoded, dict) else {}
    except ValueError:
        body = {"message": raw[:500].decode("utf-8", "replace")}
    retry_after = None
    if headers is not None:
        value = headers.get("Retry-After")
        if value:
            try:
                retry_after = float(value)
            except ValueError:
                retry_after = None
    return from_status(status, body, retry_after=retry_after)


def is_resource_version_too_large(err: ApiError) -> bool:
    """client-go treats "Too large resource version" (504 + cause ResourceVersionTooLarge) like 410."""
    if any(c.reason == "ResourceVersionTooLarge" for c in err.causes):
        return True
    return "too large resource version" in err.message.lower()
