"""Commands (DEV-3): queued for a sleeping device, delivered right after its next uplink, expired and
never delivered once their time to live has passed."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc


def reading(clock, sequence: int) -> devices_pb2.Reading:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(clock.now())
    return devices_pb2.Reading(sequence=sequence, time=when, values={"occupied": 1.0})


@pytest.fixture
async def sleeper(fleet):
    """An NB-IoT sensor in PSM that wakes only to report."""
    await fleet.model()
    await fleet.device("pk-1", psm_s=3600)
    return await fleet.device_token("pk-1")


def commands(fleet):
    return devices_pb2_grpc.CommandServiceStub(fleet.channel)


async def send(fleet, command="recalibrate", ttl_s=600, **parameters):
    return await commands(fleet).SendCommand(
        devices_pb2.SendCommandRequest(
            device="devices/pk-1",
            command=command,
            parameters=parameters,
            ttl=duration_pb2.Duration(seconds=ttl_s),
        ),
        metadata=fleet.operator,
        timeout=10,
    )


@pytest.mark.req("DEV-3")
async def test_a_command_to_a_sleeping_device_is_delivered_right_after_its_next_uplink(fleet, sleeper, clock):
    queued = await send(fleet, threshold="12")
    assert queued.status == devices_pb2.COMMAND_STATUS_QUEUED
    assert queued.requested_by == "olga"
    clock.advance(minutes=5)  # the device sleeps; nothing is delivered meanwhile
    got = await commands(fleet).GetCommand(
        devices_pb2.GetCommandRequest(name=queued.name), metadata=fleet.operator
    )
    assert got.status == devices_pb2.COMMAND_STATUS_QUEUED

    uplink = await fleet.telemetry.Report(
        devices_pb2.ReportRequest(device="devices/pk-1", readings=[reading(clock, 1)]), metadata=sleeper
    )
    assert [(c.name, c.command, dict(c.parameters)) for c in uplink.commands] == [
        (queued.name, "recalibrate", {"threshold": "12"})
    ]
    assert uplink.commands[0].status == devices_pb2.COMMAND_STATUS_SENT
    # Delivered once: the next uplink carries nothing.
    later = await fleet.telemetry.Report(
        devices_pb2.ReportRequest(device="devices/pk-1", readings=[reading(clock, 2)]), metadata=sleeper
    )
    assert list(later.commands) == []
    acked = await commands(fleet).AckCommand(
        devices_pb2.AckCommandRequest(name=queued.name, succeeded=True, result="recalibrated"),
        metadata=sleeper,
    )
    assert (acked.status, acked.result) == (devices_pb2.COMMAND_STATUS_ACKED, "recalibrated")
    assert acked.HasField("send_time")
    assert acked.HasField("ack_time")


@pytest.mark.req("DEV-3")
async def test_a_command_whose_ttl_passes_is_expired_and_never_delivered(fleet, sleeper, clock):
    stale = await send(fleet, ttl_s=60)
    fresh = await send(fleet, command="reboot", ttl_s=3600)
    clock.advance(seconds=61)
    got = await commands(fleet).GetCommand(
        devices_pb2.GetCommandRequest(name=stale.name), metadata=fleet.operator
    )
    assert got.status == devices_pb2.COMMAND_STATUS_EXPIRED
    uplink = await fleet.telemetry.Report(
        devices_pb2.ReportRequest(device="devices/pk-1", readings=[reading(clock, 1)]), metadata=sleeper
    )
    assert [c.name for c in uplink.commands] == [fresh.name]  # the expired one never reaches the device
    listed = await commands(fleet).ListCommands(
        devices_pb2.ListCommandsRequest(parent="devices/pk-1"), metadata=fleet.operator
    )
    assert {c.name: c.status for c in listed.commands} == {
        stale.name: devices_pb2.COMMAND_STATUS_EXPIRED,
        fresh.name: devices_pb2.COMMAND_STATUS_SENT,
    }
    with pytest.raises(grpc.aio.AioRpcError) as late_ack:
        await commands(fleet).AckCommand(
            devices_pb2.AckCommandRequest(name=stale.name, succeeded=True), metadata=sleeper
        )
    assert late_ack.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.req("DEV-1")
async def test_bad_commands_are_refused_with_the_field_named(fleet, sleeper):
    from services.devices.tests.test_registry import violations

    async def refused(**fields):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await commands(fleet).SendCommand(
                devices_pb2.SendCommandRequest(**fields), metadata=fleet.operator
            )
        return caught.value

    assert "ttl" in violations(await refused(device="devices/pk-1", command="reboot"))
    unsupported = await refused(
        device="devices/pk-1", command="self_destruct", ttl=duration_pb2.Duration(seconds=60)
    )
    assert "command" in violations(unsupported)
    assert "device" in violations(
        await refused(device="pk-1", command="reboot", ttl=duration_pb2.Duration(seconds=60))
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await commands(fleet).SendCommand(
            devices_pb2.SendCommandRequest(
                device="devices/pk-1", command="reboot", ttl=duration_pb2.Duration(seconds=60)
            ),
            metadata=fleet.other_org,
        )
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
    sent = await send(fleet, command="reboot")
    with pytest.raises(grpc.aio.AioRpcError) as person:
        await commands(fleet).AckCommand(
            devices_pb2.AckCommandRequest(name=sent.name), metadata=fleet.operator
        )
    assert person.value.code() == grpc.StatusCode.PERMISSION_DENIED
