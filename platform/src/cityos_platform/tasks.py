"""Background work inside a service process: a step run every interval until the service stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs `step()` every `interval_s` seconds; a failing step is logged and tried again next time.

    `stop()` lets a step in progress finish (its transaction commits or rolls back by itself, bounded by
    its own deadlines) and cuts short only the wait between steps: a step cancelled halfway could leave a
    database call running in a driver thread (aiosqlite) after the service closed its database."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.step = step
        self._task: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()  # held while a step runs

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            async with self._busy:  # the step in progress, if any, finishes first
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            async with self._busy:
                try:
                    await self.step()
                except Exception:
                    log.exception("%s failed; trying again in %.0f s", self.name, self.interval_s)
            await asyncio.sleep(self.interval_s)
