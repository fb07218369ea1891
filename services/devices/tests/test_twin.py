"""The twin (desired and reported state, versioned) and fleet statistics."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from cityos.devices.v1 import devices_pb2
from services.devices.tests.test_registry import violations


def struct(**values) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


async def uplink(fleet, clock, token, device_id, sequence, **values):
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(clock.now())
    return await fleet.telemetry.Report(
        devices_pb2.ReportRequest(
            device=f"devices/{device_id}",
            readings=[devices_pb2.Reading(sequence=sequence, time=when, values=values or {"occupied": 1.0})],
        ),
        metadata=token,
    )


@pytest.mark.req("DEV-1")
async def test_desired_state_is_versioned_and_delivered_with_the_next_uplink(fleet, clock):
    await fleet.model()
    await fleet.device("pk-1")
    token = await fleet.device_token("pk-1")
    first = await fleet.registry.UpdateDesiredState(
        devices_pb2.UpdateDesiredStateRequest(device="devices/pk-1", patch=struct(sensitivity=3, mode="eco")),
        metadata=fleet.operator,
    )
    assert (first.desired_version, dict(first.desired)) == (1, {"sensitivity": 3.0, "mode": "eco"})
    stale = devices_pb2.UpdateDesiredStateRequest(
        device="devices/pk-1", patch=struct(mode="normal"), expected_desired_version=0 + 5
    )
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await fleet.registry.UpdateDesiredState(stale, metadata=fleet.operator)
    assert conflict.value.code() == grpc.StatusCode.ABORTED
    second = await fleet.registry.UpdateDesiredState(
        devices_pb2.UpdateDesiredStateRequest(
            device="devices/pk-1", patch=struct(mode=None), expected_desired_version=1
        ),
        metadata=fleet.operator,
    )
    assert (second.desired_version, dict(second.desired)) == (2, {"sensitivity": 3.0})

    reply = await uplink(fleet, clock, token, "pk-1", 1, occupied=1.0, battery_v=3.5)
    assert (reply.twin.desired_version, dict(reply.twin.desired)) == (2, {"sensitivity": 3.0})
    again = await uplink(fleet, clock, token, "pk-1", 2, occupied=1.0)
    assert not again.HasField("twin")  # delivered once
    got = await fleet.registry.GetTwin(
        devices_pb2.GetTwinRequest(device="devices/pk-1"), metadata=fleet.operator
    )
    assert dict(got.reported) == {"occupied": 1.0, "battery_v": 3.5}
    assert (got.reported_version, got.delivered_desired_version) == (1, 2)  # the repeat changed nothing

    bad = devices_pb2.UpdateDesiredStateRequest(device="devices/pk-1", patch=struct(**{"Bad-Key": 1}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.registry.UpdateDesiredState(bad, metadata=fleet.operator)
    assert "patch.Bad-Key" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await fleet.registry.GetTwin(
            devices_pb2.GetTwinRequest(device="devices/pk-1"), metadata=fleet.other_org
        )
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("DEV-1")
async def test_fleet_statistics_count_by_type_status_radio_and_connectivity(fleet, clock):
    await fleet.model()
    await fleet.model("lamp-ctl", type="streetlights.controller")
    await fleet.device("pk-online")
    await fleet.device("pk-asleep", psm_s=24 * 3600)
    await fleet.device("pk-lost")
    await fleet.device("pk-new", radio=devices_pb2.RADIO_TYPE_NR)
    await fleet.device("lamp-1", model="deviceModels/lamp-ctl")
    await fleet.device("water-1", who=fleet.other_org)  # another organization's: not counted
    tokens = {d: await fleet.device_token(d) for d in ("pk-online", "pk-asleep", "pk-lost")}
    for n, device_id in enumerate(("pk-asleep", "pk-lost"), start=1):
        await uplink(fleet, clock, tokens[device_id], device_id, n)
    clock.advance(hours=2)  # the model expects a report every 10 minutes
    await uplink(fleet, clock, tokens["pk-online"], "pk-online", 1)
    stats = await fleet.registry.GetFleetStatistics(
        devices_pb2.GetFleetStatisticsRequest(), metadata=fleet.operator
    )
    assert stats.total == 5
    assert dict(stats.by_type) == {"parking.sensor": 4, "streetlights.controller": 1}
    assert dict(stats.by_status) == {"DEVICE_STATUS_ACTIVE": 3, "DEVICE_STATUS_PROVISIONED": 2}
    assert dict(stats.by_radio) == {"RADIO_TYPE_NB_IOT": 4, "RADIO_TYPE_NR": 1}
    assert dict(stats.by_connectivity) == {
        "CONNECTIVITY_ONLINE": 1,
        "CONNECTIVITY_SLEEPING": 1,  # PSM: silent for 2 h, its periodic update is 24 h
        "CONNECTIVITY_OFFLINE": 1,
        "CONNECTIVITY_NEVER_SEEN": 2,
    }
    assert stats.online_ratio == pytest.approx(2 / 3)
