"""The conformance service (`cityos.testing.v1.ConformanceService`): exercises every runtime path.

Mounted by the test suite, the benchmarks and smoke tests; never registered as a city service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.config import Settings
from cityos_platform.errors import InvalidArgument, NotFound
from cityos_platform.interceptor import current_call
from cityos_platform.registry import ServiceDefinition, StaticApp
from cityos_platform.server import Mount

# What a test registers through a `cityos.services` entry point to have the launcher start it.
SERVICE = ServiceDefinition(
    name="conformance",
    dev_port=50099,
    factory="cityos_platform.testing.conformance:create",
    description="runtime conformance service (tests only)",
)

# Text the crash outcome puts in its exception; a test asserts it never reaches a client.
CRASH_SECRET = "conformance crash: secret internals at /srv/cityos/db.key"  # noqa: S105 - not a password


class ConformanceServicer(conformance_pb2_grpc.ConformanceServiceServicer):
    async def Echo(
        self, request: conformance_pb2.EchoRequest, context: grpc.aio.ServicerContext
    ) -> conformance_pb2.EchoResponse:
        if not request.message:
            raise InvalidArgument.field("message", "must not be empty")
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        if request.outcome == conformance_pb2.OUTCOME_CRASH:
            raise RuntimeError(CRASH_SECRET)
        if request.outcome == conformance_pb2.OUTCOME_NOT_FOUND:
            raise NotFound(f"no echo named {request.message!r}", reason="ECHO_NOT_FOUND")
        return conformance_pb2.EchoResponse(message=request.message, caller=current_call().caller)

    async def StreamTicks(
        self, request: conformance_pb2.StreamTicksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[conformance_pb2.StreamTicksResponse]:
        sequence = 0
        while request.count == 0 or sequence < request.count:
            sequence += 1
            yield conformance_pb2.StreamTicksResponse(sequence=sequence)
            if request.interval_ms:
                await asyncio.sleep(request.interval_ms / 1000)


def mount() -> Mount:
    return Mount(
        descriptor=conformance_pb2.DESCRIPTOR.services_by_name["ConformanceService"],
        servicer=ConformanceServicer(),
        add_to_server=conformance_pb2_grpc.add_ConformanceServiceServicer_to_server,
    )


def create(settings: Settings) -> StaticApp:
    return StaticApp([mount()])
