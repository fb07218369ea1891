"""FND-4 and FND-5: unary calls and long-lived streams are limited separately; oversized requests
are refused and the server keeps serving."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.testing import conformance
from cityos_platform.testing.status import error_info


async def _open_stream(stub):
    """Open an endless tick stream and read its first tick (so it is admitted and live)."""
    call = stub.StreamTicks(conformance_pb2.StreamTicksRequest(count=0, interval_ms=20))
    first = await call.read()
    assert first.sequence == 1
    return call


@pytest.mark.req("FND-4")
async def test_unary_over_limit_is_refused_while_streams_up_to_their_cap_still_open(start_server):
    server = await start_server([conformance.mount()], unary_concurrency=2, stream_cap_per_caller=2)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        slow = [
            asyncio.ensure_future(
                stub.Echo(conformance_pb2.EchoRequest(message="hold", delay_ms=1500), timeout=10)
            )
            for _ in range(2)
        ]
        while server.runtime.limits.unary_inflight < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(conformance_pb2.EchoRequest(message="one too many"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(refused.value).reason == "UNARY_CONCURRENCY_LIMIT"
        # Streams are admitted against their own cap, not the saturated unary limit.
        streams = [await _open_stream(stub) for _ in range(2)]
        for call in streams:
            assert (await call.read()).sequence == 2
            call.cancel()
        assert [r.message for r in await asyncio.gather(*slow)] == ["hold", "hold"]
        # Once the slow calls are done, unary calls are admitted again.
        assert (await stub.Echo(conformance_pb2.EchoRequest(message="again"), timeout=5)).message == "again"


@pytest.mark.req("FND-4")
async def test_streams_over_their_cap_are_refused_while_unary_calls_still_pass(start_server):
    server = await start_server([conformance.mount()], unary_concurrency=2, stream_cap_per_caller=2)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        streams = [await _open_stream(stub) for _ in range(2)]
        over = stub.StreamTicks(conformance_pb2.StreamTicksRequest(count=0, interval_ms=20))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await over.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(refused.value)
        assert (info.reason, info.metadata["stream_class"]) == ("STREAM_CAP_PER_CALLER", "STREAM_CLASS_WATCH")
        # Unary calls are unaffected by the full stream cap.
        replies = await asyncio.gather(
            *(stub.Echo(conformance_pb2.EchoRequest(message=f"u{i}"), timeout=5) for i in range(2))
        )
        assert [r.message for r in replies] == ["u0", "u1"]
        # Closing one stream frees its slot.
        streams[0].cancel()
        for _ in range(200):
            if _stream_count(server) < 2:
                break
            await asyncio.sleep(0.01)
        replacement = await _open_stream(stub)
        replacement.cancel()
        streams[1].cancel()


def _stream_count(server) -> int:
    limits = server.runtime.limits
    return sum(limits.streams_total.values())


@pytest.mark.req("FND-5")
async def test_request_over_the_method_limit_is_refused_and_the_server_keeps_serving(conformance_server):
    async with grpc.aio.insecure_channel(conformance_server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        big = conformance_pb2.EchoRequest(message="big", padding=b"x" * 70_000)  # Echo allows 65,536 bytes
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(big, timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(refused.value)
        assert info.reason == "REQUEST_TOO_LARGE"
        assert info.metadata["limit_bytes"] == "65536"
        assert (await stub.Echo(conformance_pb2.EchoRequest(message="small"), timeout=5)).message == "small"


@pytest.mark.req("FND-5")
async def test_request_over_the_server_message_limit_is_refused_and_the_server_keeps_serving(start_server):
    server = await start_server([conformance.mount()], max_message_bytes=1024 * 1024)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(conformance_pb2.EchoRequest(message="huge", padding=b"x" * 2_000_000), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.Echo(conformance_pb2.EchoRequest(message="fine"), timeout=5)).message == "fine"


async def test_default_deadline_applies_only_when_the_client_sets_none(start_server):
    server = await start_server([conformance.mount()], unary_deadline_s=0.2)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Echo(conformance_pb2.EchoRequest(message="slow", delay_ms=600))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_info(late.value).reason == "DEFAULT_DEADLINE_EXCEEDED"
        # The client's own deadline governs when it sets one.
        reply = await stub.Echo(conformance_pb2.EchoRequest(message="slow", delay_ms=600), timeout=5)
        assert reply.message == "slow"
