"""Method policies are read from the API's descriptors; an RPC without a valid one stops the server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from cityos.common.v1 import policy_pb2
from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.policy import PolicyError, service_policies
from cityos_platform.server import Mount, serve
from cityos_platform.testing import conformance


def _service(methods: list[tuple[str, policy_pb2.MethodPolicy | None, bool]]):
    """A throwaway service `cityos.probe.v1.ProbeService` whose methods carry the given policies."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (descriptor_pb2.DESCRIPTOR, policy_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="cityos/probe/v1/probe.proto",
        package="cityos.probe.v1",
        dependency=["cityos/common/v1/policy.proto"],
        syntax="proto3",
    )
    file.message_type.add(name="ProbeRequest")
    service = file.service.add(name="ProbeService")
    for name, policy, streaming in methods:
        method = service.method.add(
            name=name,
            input_type=".cityos.probe.v1.ProbeRequest",
            output_type=".cityos.probe.v1.ProbeRequest",
            server_streaming=streaming,
        )
        if policy is not None:
            method.options.Extensions[policy_pb2.policy].CopyFrom(policy)
    pool.Add(file)
    return pool.FindServiceByName("cityos.probe.v1.ProbeService")


@pytest.mark.req("CORE-2")
async def test_a_public_method_answers_the_anonymous_principal(conformance_server):
    async with grpc.aio.insecure_channel(conformance_server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        reply = await stub.Echo(conformance_pb2.EchoRequest(message="no token"), timeout=5)
    assert reply.message == "no token"
    assert reply.caller == "127.0.0.1"  # anonymous callers are known by their peer address


def test_declared_policies_are_read_from_the_descriptor():
    table = service_policies([conformance_pb2.DESCRIPTOR.services_by_name["ConformanceService"]])
    echo = table["/cityos.testing.v1.ConformanceService/Echo"]
    assert (echo.public, echo.idempotent, echo.max_request_bytes, echo.is_stream) == (
        True,
        True,
        65536,
        False,
    )
    ticks = table["/cityos.testing.v1.ConformanceService/StreamTicks"]
    assert ticks.stream_class_name == "STREAM_CLASS_WATCH"
    assert ticks.is_stream


def test_declared_deadline_and_permission_are_carried():
    policy = policy_pb2.MethodPolicy(
        permission="probe.things.read", roles=["analyst"], default_deadline_ms=1500
    )
    (read,) = service_policies([_service([("Read", policy, False)])]).values()
    assert (read.permission, read.roles, read.default_deadline_s) == ("probe.things.read", ("analyst",), 1.5)


@pytest.mark.parametrize(
    ("policy", "streaming", "fault"),
    [
        (None, False, "no (cityos.common.v1.policy) option"),
        (policy_pb2.MethodPolicy(public=True), True, "must declare its stream_class"),
        (
            policy_pb2.MethodPolicy(public=True, stream_class=policy_pb2.STREAM_CLASS_WATCH),
            False,
            "cannot declare a stream_class",
        ),
        (policy_pb2.MethodPolicy(), False, "must declare the permission"),
        (policy_pb2.MethodPolicy(public=True, permission="x.y.read"), False, "declares no permission"),
    ],
)
def test_an_invalid_policy_is_refused_with_the_method_named(policy, streaming, fault):
    with pytest.raises(PolicyError) as caught:
        service_policies([_service([("Broken", policy, streaming)])])
    assert "/cityos.probe.v1.ProbeService/Broken" in str(caught.value)
    assert fault in str(caught.value)


@pytest.mark.req("CORE-2")
async def test_a_server_with_an_undeclared_rpc_refuses_to_start(settings_factory):
    ok = policy_pb2.MethodPolicy(public=True)
    broken = Mount(
        descriptor=_service([("Fine", ok, False), ("Undeclared", None, False)]),
        servicer=object(),
        add_to_server=lambda servicer, server: None,
    )
    with pytest.raises(PolicyError, match="Undeclared"):
        await serve([conformance.mount(), broken], settings_factory())
