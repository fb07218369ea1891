"""The device registry over gRPC: models, devices, filters, updates, credentials (DEV-1, DEV-7)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2

from cityos.devices.v1 import devices_pb2
from cityos_platform.testing.status import detail, rich_status


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    bad = detail(rich_status(error), error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations}


async def refused(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


@pytest.mark.req("DEV-1")
async def test_device_models_are_created_read_and_listed(fleet):
    created = await fleet.model()
    assert created.name == "deviceModels/geomag-v2"
    assert created.owner_organization == "transport"
    assert [m.name for m in created.metrics] == ["occupied", "battery_v", "temperature_c"]
    assert not created.metrics[2].HasField("min")
    got = await fleet.registry.GetDeviceModel(
        devices_pb2.GetDeviceModelRequest(name=created.name), metadata=fleet.other_org
    )
    assert got == created  # the catalog is city-wide
    await fleet.model("lamp-ctl", type="streetlights.controller")
    listed = await fleet.registry.ListDeviceModels(
        devices_pb2.ListDeviceModelsRequest(type="parking.sensor"), metadata=fleet.operator
    )
    assert [m.name for m in listed.device_models] == ["deviceModels/geomag-v2"]


@pytest.mark.req("DEV-1")
async def test_bad_device_models_name_each_bad_field(fleet):
    model = devices_pb2.DeviceModel(
        type="Parking Sensor",
        vendor="",
        metrics=[
            devices_pb2.MetricSpec(name="ok", unit="1", min=5, max=1),
            devices_pb2.MetricSpec(name="ok", unit=""),
            devices_pb2.MetricSpec(name="Bad-Name", unit="V"),
        ],
        supported_commands=["Reboot!"],
        reporting_interval=duration_pb2.Duration(seconds=0),
    )
    error = await refused(
        fleet.registry.CreateDeviceModel(
            devices_pb2.CreateDeviceModelRequest(device_model=model, device_model_id="X"),
            metadata=fleet.operator,
        )
    )
    assert set(violations(error)) == {
        "device_model.type",
        "device_model.vendor",
        "device_model.metrics[0].min",
        "device_model.metrics[1].name",
        "device_model.metrics[1].unit",
        "device_model.metrics[2].name",
        "device_model.supported_commands[0]",
        "device_model.reporting_interval",
        "device_model_id",
    }
    missing = await refused(
        fleet.registry.GetDeviceModel(
            devices_pb2.GetDeviceModelRequest(name="deviceModels/nope"), metadata=fleet.operator
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    bad_name = await refused(
        fleet.registry.GetDeviceModel(
            devices_pb2.GetDeviceModelRequest(name="models/x"), metadata=fleet.operator
        )
    )
    assert "name" in violations(bad_name)


@pytest.mark.req("DEV-1")
async def test_devices_are_created_idempotently_read_updated_and_decommissioned(fleet):
    await fleet.model()
    device = await fleet.device("pk-0001", tags=["zone-a"])
    assert device.name == "devices/pk-0001"
    assert (device.type, device.status) == ("parking.sensor", devices_pb2.DEVICE_STATUS_PROVISIONED)
    assert device.connectivity == devices_pb2.CONNECTIVITY_NEVER_SEEN
    assert device.area_cell
    assert device.subscription.slice.sd == "000001"
    again = await fleet.registry.CreateDevice(
        devices_pb2.CreateDeviceRequest(
            device=devices_pb2.Device(model="deviceModels/geomag-v2", location=device.location),
            device_id="pk-0002",
            request_id="r-1",
        ),
        metadata=fleet.operator,
    )
    repeat = await fleet.registry.CreateDevice(
        devices_pb2.CreateDeviceRequest(
            device=devices_pb2.Device(model="deviceModels/geomag-v2", location=device.location),
            device_id="pk-0002",
            request_id="r-1",
        ),
        metadata=fleet.operator,
    )
    assert repeat == again
    duplicate = await refused(fleet.device("pk-0001"))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS

    update = devices_pb2.UpdateDeviceRequest(
        device=devices_pb2.Device(
            name=device.name, firmware_version="1.5.0", tags=["zone-b"], etag=device.etag
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["firmware_version", "tags"]),
    )
    updated = await fleet.registry.UpdateDevice(update, metadata=fleet.operator)
    assert (updated.firmware_version, list(updated.tags)) == ("1.5.0", ["zone-b"])
    stale = await refused(fleet.registry.UpdateDevice(update, metadata=fleet.operator))
    assert stale.code() == grpc.StatusCode.ABORTED
    bad_mask = await refused(
        fleet.registry.UpdateDevice(
            devices_pb2.UpdateDeviceRequest(
                device=devices_pb2.Device(name=device.name),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=fleet.operator,
        )
    )
    assert "update_mask" in violations(bad_mask)

    gone = await fleet.registry.DecommissionDevice(
        devices_pb2.DecommissionDeviceRequest(name=device.name), metadata=fleet.operator
    )
    assert gone.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED
    twice = await fleet.registry.DecommissionDevice(
        devices_pb2.DecommissionDeviceRequest(name=device.name), metadata=fleet.operator
    )
    assert twice.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED
    assert "device" in violations(
        await refused(
            fleet.registry.IssueDeviceToken(
                devices_pb2.IssueDeviceTokenRequest(device=device.name), metadata=fleet.operator
            )
        )
    )


@pytest.mark.req("DEV-1")
async def test_bad_devices_name_each_bad_field(fleet):
    await fleet.model()
    device = devices_pb2.Device(
        tags=["Not A Tag"],
        subscription=devices_pb2.Subscription(
            iccid="12", imei="abc", plmn="4600", supi="x", slice=devices_pb2.Snssai(sst=300, sd="zz")
        ),
    )
    error = await refused(
        fleet.registry.CreateDevice(
            devices_pb2.CreateDeviceRequest(device=device, device_id="-x"), metadata=fleet.operator
        )
    )
    assert set(violations(error)) == {
        "device.model",
        "device.location",
        "device.tags[0]",
        "device.subscription.iccid",
        "device.subscription.imei",
        "device.subscription.plmn",
        "device.subscription.supi",
        "device.subscription.slice.sst",
        "device.subscription.slice.sd",
        "device_id",
    }
    unknown_model = await refused(fleet.device("pk-9", model="deviceModels/nope"))
    assert "device.model" in violations(unknown_model)


@pytest.mark.req("DEV-1")
async def test_batch_create_is_all_or_nothing(fleet):
    await fleet.model()
    location = {"latitude": 39.0, "longitude": 115.95}

    def create(device_id, model="deviceModels/geomag-v2"):
        return devices_pb2.CreateDeviceRequest(
            device=devices_pb2.Device(model=model, location=location), device_id=device_id
        )

    batch = await fleet.registry.BatchCreateDevices(
        devices_pb2.BatchCreateDevicesRequest(
            requests=[create(f"b-{n}") for n in range(20)], request_id="batch-1"
        ),
        metadata=fleet.operator,
    )
    assert [d.name for d in batch.devices] == [f"devices/b-{n}" for n in range(20)]
    failing = await refused(
        fleet.registry.BatchCreateDevices(
            devices_pb2.BatchCreateDevicesRequest(
                requests=[create("c-1"), create("c-2", "deviceModels/nope")]
            ),
            metadata=fleet.operator,
        )
    )
    assert "requests[1].device.model" in violations(failing)
    listed = await fleet.registry.ListDevices(
        devices_pb2.ListDevicesRequest(page_size=500), metadata=fleet.operator
    )
    assert "devices/c-1" not in {d.name for d in listed.devices}  # the valid half was not kept
    repeated_ids = await refused(
        fleet.registry.BatchCreateDevices(
            devices_pb2.BatchCreateDevicesRequest(requests=[create("d-1"), create("d-1")]),
            metadata=fleet.operator,
        )
    )
    assert "requests[1].device_id" in violations(repeated_ids)


@pytest.mark.req("DEV-1")
async def test_list_filters_scope_and_paginate(fleet):
    await fleet.model()
    await fleet.model("lamp-ctl", type="streetlights.controller")
    for n in range(7):
        await fleet.device(f"pk-{n}", tags=["zone-a"] if n % 2 else [])
    await fleet.device("lamp-1", model="deviceModels/lamp-ctl")
    await fleet.device("water-1", who=fleet.other_org)

    async def names(**filters) -> list[str]:
        found, token = [], ""
        while True:
            page = await fleet.registry.ListDevices(
                devices_pb2.ListDevicesRequest(page_size=3, page_token=token, **filters),
                metadata=fleet.operator,
            )
            found += [d.name.removeprefix("devices/") for d in page.devices]
            token = page.next_page_token
            if not token:
                return found

    assert await names() == ["lamp-1"] + [f"pk-{n}" for n in range(7)]  # not utilities' device
    assert await names(type="streetlights.controller") == ["lamp-1"]
    assert await names(tag="zone-a") == ["pk-1", "pk-3", "pk-5"]
    assert await names(model="deviceModels/lamp-ctl") == ["lamp-1"]
    assert await names(
        status=devices_pb2.DEVICE_STATUS_PROVISIONED, firmware_version="1.4.2", tag="zone-a"
    ) == [
        "pk-1",
        "pk-3",
        "pk-5",
    ]
    assert await names(area="rongdong") == []  # the demo points sit outside Rongdong
    bad = await refused(
        fleet.registry.ListDevices(devices_pb2.ListDevicesRequest(tag="Bad Tag"), metadata=fleet.operator)
    )
    assert "tag" in violations(bad)


@pytest.mark.req("DEV-7")
async def test_the_5g_query_returns_exactly_the_matching_devices(fleet):
    await fleet.model()
    # (id, radio, sst, sd, rsrp)
    fleet_plan = [
        ("nb-weak", devices_pb2.RADIO_TYPE_NB_IOT, 1, "000001", -121),
        ("nb-weak-2", devices_pb2.RADIO_TYPE_NB_IOT, 1, "000001", -116),
        ("nb-good", devices_pb2.RADIO_TYPE_NB_IOT, 1, "000001", -95),
        ("nb-other-slice", devices_pb2.RADIO_TYPE_NB_IOT, 1, "000002", -125),
        ("nr-weak", devices_pb2.RADIO_TYPE_NR, 1, "000001", -125),
        ("nb-silent", devices_pb2.RADIO_TYPE_NB_IOT, 1, "000001", None),
    ]
    for device_id, radio, sst, sd, rsrp in fleet_plan:
        await fleet.device(device_id, radio=radio, sst=sst, sd=sd)
        if rsrp is not None:
            token = await fleet.device_token(device_id)
            await fleet.telemetry.Report(
                devices_pb2.ReportRequest(
                    device=f"devices/{device_id}",
                    readings=[_reading(1)],
                    radio=devices_pb2.RadioReport(rsrp_dbm=rsrp, cell_id="46000-1234"),
                ),
                metadata=token,
            )
    found = await fleet.registry.ListDevices(
        devices_pb2.ListDevicesRequest(
            radio_type=devices_pb2.RADIO_TYPE_NB_IOT, slice_sst=1, slice_sd="000001", rsrp_below_dbm=-115
        ),
        metadata=fleet.operator,
    )
    assert sorted(d.name for d in found.devices) == ["devices/nb-weak", "devices/nb-weak-2"]
    assert {d.last_radio.rsrp_dbm for d in found.devices} == {-121, -116}


@pytest.mark.req("DEV-7")
async def test_sim_secret_keys_are_refused(fleet):
    await fleet.model()
    device = devices_pb2.Device(
        model="deviceModels/geomag-v2",
        location={"latitude": 39.0, "longitude": 115.95},
        subscription=devices_pb2.Subscription(iccid="8986001234567890123"),
    )
    # A client built from a schema with a K field (tag 100) sends the key; this API has no such field.
    secret_k = bytes([0xA2, 0x06, 16]) + bytes(range(16))
    subscription_bytes = device.subscription.SerializeToString() + secret_k
    raw = devices_pb2.CreateDeviceRequest(device_id="leaky").SerializeToString()
    device_without_subscription = devices_pb2.Device()
    device_without_subscription.CopyFrom(device)
    device_without_subscription.ClearField("subscription")
    device_bytes = device_without_subscription.SerializeToString() + _field(11, subscription_bytes)
    raw += _field(1, device_bytes)
    call = fleet.channel.unary_unary(
        "/cityos.devices.v1.DeviceService/CreateDevice",
        request_serializer=lambda payload: payload,
        response_deserializer=devices_pb2.Device.FromString,
    )
    error = await refused(call(raw, metadata=fleet.operator, timeout=10))
    assert "SIM secrets" in violations(error)["device.subscription"]
    listed = await fleet.registry.ListDevices(devices_pb2.ListDevicesRequest(), metadata=fleet.operator)
    assert list(listed.devices) == []


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    key = (number << 3) | 2
    length = len(payload)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([key]) + bytes(varint) + payload


def _reading(sequence: int, **values) -> devices_pb2.Reading:
    from google.protobuf import timestamp_pb2

    when = timestamp_pb2.Timestamp()
    when.GetCurrentTime()
    return devices_pb2.Reading(sequence=sequence, time=when, values=values or {"occupied": 1.0})


@pytest.mark.req("DEV-1")
async def test_credentials_are_issued_shown_once_and_revoked(fleet):
    await fleet.model()
    await fleet.device("pk-1")
    first = await fleet.device_token("pk-1")
    second = await fleet.device_token("pk-1")
    assert first != second  # two live credentials: rotation without downtime
    for sequence, token in enumerate((first, second), start=1):
        reply = await fleet.telemetry.Report(
            devices_pb2.ReportRequest(device="devices/pk-1", readings=[_reading(sequence)]), metadata=token
        )
        assert reply.accepted == 1
    revoked = await fleet.registry.RevokeDeviceCredentials(
        devices_pb2.RevokeDeviceCredentialsRequest(device="devices/pk-1"), metadata=fleet.operator
    )
    assert revoked.revoked == 2
    error = await refused(
        fleet.telemetry.Report(
            devices_pb2.ReportRequest(device="devices/pk-1", readings=[_reading(9)]), metadata=first
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    foreign = await refused(
        fleet.registry.IssueDeviceToken(
            devices_pb2.IssueDeviceTokenRequest(device="devices/pk-1"), metadata=fleet.other_org
        )
    )
    assert foreign.code() == grpc.StatusCode.NOT_FOUND
