"""Waiting in tests for something another task or process does (a feed followed, a stream served)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    probe: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], timeout_s: float = 15.0
) -> Any:
    """`await probe()` until `ready(value)`; the value, or AssertionError with the last one after
    `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await probe()
        if ready(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s; last: {value}")
        await asyncio.sleep(0.02)
