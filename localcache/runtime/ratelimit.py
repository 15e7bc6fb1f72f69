"""Workqueue rate limiters with client-go's semantics and defaults (``default_rate_limiters.go``).

A limiter answers ``when(item) -> seconds to wait`` for a retry, ``forget(item)`` after a success and
``num_requeues(item)``. :func:`default_controller_rate_limiter` is client-go's default: the max of a
per-item exponential limiter (5 ms doubling, capped at 1000 s) and a global token bucket (10 qps,
burst 100), so one hot key backs off alone while a storm of failures is throttled overall.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from localcache.runtime.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "ItemFastSlowRateLimiter",
    "LatencyPacer",
    "MaxOfRateLimiter",
    "RateLimiter",
    "WithMaxWaitRateLimiter",
    "default_controller_rate_limiter",
]


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float: ...

    def forget(self, item: Hashable) -> None: ...

    def num_requeues(self, item: Hashable) -> int: ...


class ItemExponentialFailureRateLimiter:
    """``base * 2**failures``, capped at ``max_delay``; the count grows on every ``when``."""

    def __init__(self, base: float = 0.005, max_delay: float = 1000.0) -> None:
        if base <= 0 or max_delay <= 0:
            raise ValueError("exponential limiter needs base > 0 and max_delay > 0")
        self.base = base
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        exp = self._failures.get(item, 0)
        self._failures[item] = exp + 1
        if exp > 1000:  # 2**1000 overflows nothing in Python, but the answer is the cap anyway
            return self.max_delay
        return min(self.base * (2.0**exp), self.max_delay)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter:
    """A global token bucket (golang.org/x/time/rate ``Reserve().Delay()``): not per item."""

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock = SYSTEM_CLOCK) -> None:
        if qps <= 0 or burst <= 0:
            raise ValueError("bucket limiter needs qps > 0 and burst > 0")
        self.qps = qps
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()

    def when(self, item: Hashable) -> float:
        now = self.clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, item: Hashable) -> None:
        return None

    def num_requeues(self, item: Hashable) -> int:
        return 0


class ItemFastSlowRateLimiter:
    """``fast`` for the first ``max_fast_attempts`` retries of an item, ``slow`` afterwards."""

    def __init__(self, fast: float, slow: float, max_fast_attempts: int) -> None:
        self.fast, self.slow, self.max_fast_attempts = fast, slow, max_fast_attempts
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        n = self._failures.get(item, 0) + 1
        self._failures[item] = n
        return self.fast if n <= self.max_fast_attempts else self.slow

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class MaxOfRateLimiter:
    """The longest wait any of its limiters asks for; ``forget`` goes to all."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


class WithMaxWaitRateLimiter:
    """Caps another limiter's answer at ``max_wait``."""

    def __init__(self, limiter: RateLimiter, max_wait: float) -> None:
        self.limiter = limiter
        self.max_wait = max_wait

    def when(self, item: Hashable) -> float:
        return min(self.limiter.when(item), self.max_wait)

    def forget(self, item: Hashable) -> None:
        self.limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return self.limiter.num_requeues(item)


def default_controller_rate_limiter(clock: Clock = SYSTEM_CLOCK) -> MaxOfRateLimiter:
    """client-go's ``DefaultControllerRateLimiter``: max(exponential 5 ms..1000 s, bucket 10 qps/100)."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.005, 1000.0), BucketRateLimiter(10.0, 100, clock)
    )


class LatencyPacer:
    """Spaces the writes to one object by how long the API server took to answer the last one.

    Writes whose cost grows with the object, not the change (a LocalModelNode of hundreds of KiB is
    decoded, validated and encoded whole for a one-entry patch), are cheapest in few big batches; but
    a fixed interval is either slow on a quiet cluster or too busy on a loaded one. The API server's
    answer time is the load signal, as a round-trip time is for TCP: after a write that took ``L``
    seconds the next may start ``factor * L`` later (within ``min_interval``..``max_interval``), so
    on a quiet server writes follow each other at once and on a saturated one each writer backs off
    in proportion, and changes that arrive meanwhile go out together in the next write.
    """

    def __init__(
        self,
        *,
        min_interval: float = 0.0,
        max_interval: float = 10.0,
        factor: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if min_interval < 0 or max_interval < min_interval or factor < 0:
            raise ValueError("pacer needs 0 <= min_interval <= max_interval and factor >= 0")
        self.min_interval, self.max_interval, self.factor = min_interval, max_interval, factor
        self.clock = clock
        self._next = float("-inf")

    def delay(self) -> float:
        """Seconds until the next write may start (0: now)."""
        return max(0.0, self._next - self.clock.monotonic())

    def wrote(self, started: float) -> None:
        """Record a write that started at ``started`` (``clock.monotonic()``) and has just answered."""
        now = self.clock.monotonic()
        gap = min(self.max_interval, max(self.min_interval, self.factor * (now - started)))
        self._next = now + gap
