"""FND-1: every server answers health and reflection, and reflection alone is enough to call it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICE = "cityos.testing.v1.ConformanceService"


@pytest.mark.req("FND-1")
async def test_health_reports_serving_overall_and_per_service(conformance_server):
    async with grpc.aio.insecure_channel(conformance_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            response = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="cityos.nope.v1.Nope"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def _call_through_reflection(address: str) -> tuple[list[str], str]:
    """A client that knows nothing but the address: discover, build the message classes, call."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(SERVICE).FindMethodByName("Echo")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        response = call(request_class(message="hello from reflection"), timeout=5)
        return services, response.message


@pytest.mark.req("FND-1")
async def test_a_client_built_from_reflection_alone_can_call_the_service(conformance_server):
    services, echoed = await asyncio.to_thread(_call_through_reflection, conformance_server.address)
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert echoed == "hello from reflection"
