"""localcache.runtime: a general controller-runtime for asyncio.

Knows nothing of models, KServe or ``localcache.api`` (an import-linter contract enforces it).
Objects are plain JSON dicts. See each module's docstring for its stable interface.
"""

from localcache.runtime.client import Client, WatchStream
from localcache.runtime.clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
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
from localcache.runtime.resources import Resource

__all__ = [
    "SYSTEM_CLOCK",
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Client",
    "Clock",
    "Conflict",
    "ConnectionFailed",
    "FakeClock",
    "Forbidden",
    "Gone",
    "Invalid",
    "NotFound",
    "Resource",
    "ServerError",
    "SystemClock",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "WatchStream",
]
