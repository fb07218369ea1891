"""Seeding demo data through the API (the `cityos.simulators` entry points of `cityos dev`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc


async def create_or_keep(call: Any, request: Any, metadata: Sequence[tuple[str, str]]) -> None:
    """Call a Create RPC; a resource that exists already is kept as it is (ALREADY_EXISTS), so a
    restart of the city seeds nothing twice. Any other error is raised."""
    try:
        await call(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
