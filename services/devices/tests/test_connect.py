"""Connect: a connected device gets commands and desired state at once, answers them on the same
stream, and its uplinks are answered there too."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc


def _report(sequence: int, device: str = "") -> devices_pb2.ReportRequest:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(datetime.now(UTC))
    return devices_pb2.ReportRequest(
        device=device, readings=[devices_pb2.Reading(sequence=sequence, time=when, values={"occupied": 1.0})]
    )


@pytest.mark.req("DEV-3")
async def test_a_connected_device_gets_commands_at_once_and_answers_on_the_stream(fleet):
    await fleet.model()
    await fleet.device("pk-1")
    token = await fleet.device_token("pk-1")
    commands = devices_pb2_grpc.CommandServiceStub(fleet.channel)
    outgoing: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (message := await outgoing.get()) is not None:
            yield message

    stream = fleet.telemetry.Connect(requests(), metadata=token)
    try:
        await outgoing.put(devices_pb2.ConnectRequest(message_id=1, report=_report(1)))
        answer = await asyncio.wait_for(stream.read(), 10)
        assert (answer.in_reply_to, answer.report.accepted) == (1, 1)

        sent = await commands.SendCommand(
            devices_pb2.SendCommandRequest(
                device="devices/pk-1", command="reboot", ttl=duration_pb2.Duration(seconds=60)
            ),
            metadata=fleet.operator,
        )
        pushed = await asyncio.wait_for(stream.read(), 5)  # no uplink needed: it is connected
        assert (pushed.command.name, pushed.command.status) == (sent.name, devices_pb2.COMMAND_STATUS_SENT)

        await outgoing.put(
            devices_pb2.ConnectRequest(
                message_id=2, ack=devices_pb2.AckCommandRequest(name=sent.name, succeeded=True)
            )
        )
        acked = await asyncio.wait_for(stream.read(), 10)
        assert (acked.in_reply_to, acked.ack.status) == (2, devices_pb2.COMMAND_STATUS_ACKED)

        patch = struct_pb2.Struct()
        patch.update({"sensitivity": 4})
        await fleet.registry.UpdateDesiredState(
            devices_pb2.UpdateDesiredStateRequest(device="devices/pk-1", patch=patch), metadata=fleet.operator
        )
        twin = await asyncio.wait_for(stream.read(), 5)
        assert (twin.twin.desired_version, dict(twin.twin.desired)) == (1, {"sensitivity": 4.0})

        # A bad message is answered with its error; the connection stays open.
        await outgoing.put(devices_pb2.ConnectRequest(message_id=3, report=_report(2, device="devices/pk-2")))
        refused = await asyncio.wait_for(stream.read(), 10)
        assert refused.in_reply_to == 3
        assert refused.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        await outgoing.put(devices_pb2.ConnectRequest(message_id=4, report=_report(3)))
        assert (await asyncio.wait_for(stream.read(), 10)).report.accepted == 1
    finally:
        await outgoing.put(None)
        stream.cancel()


async def test_only_devices_connect(fleet):
    async def nothing():
        return
        yield

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in fleet.telemetry.Connect(nothing(), metadata=fleet.token("root", "city", "city-admin")):
            pass
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
