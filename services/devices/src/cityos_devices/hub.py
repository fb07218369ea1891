"""Which devices hold a live `Connect` stream to this process, so a new command or desired state is
pushed at once. Another replica's changes reach them by the stream's periodic check."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PUSH = object()  # "look for commands and desired state to deliver now"


class ConnectionHub:
    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Any]]] = defaultdict(set)

    @contextmanager
    def listen(self, device_id: str) -> Iterator[asyncio.Queue[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[device_id].add(queue)
        try:
            yield queue
        finally:
            self._queues[device_id].discard(queue)
            if not self._queues[device_id]:
                del self._queues[device_id]

    def wake(self, device_id: str) -> None:
        for queue in self._queues.get(device_id, ()):
            queue.put_nowait(PUSH)

    def connected(self, device_id: str) -> bool:
        return device_id in self._queues
