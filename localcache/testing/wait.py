"""Waiting for a condition instead of sleeping for a guess."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class ConditionTimeout(AssertionError):
    """The awaited condition did not hold in time; the message carries the last value seen."""


async def eventually(
    probe: Callable[[], Awaitable[T]], within: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Await ``probe()`` until it returns something truthy and return that, else raise with the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise ConditionTimeout(f"{what} not met within {within}s (last value: {value!r})")
        await asyncio.sleep(interval)
