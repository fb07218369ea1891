"""The telemetry path over gRPC: devices speak only as themselves (DEV-2), batches are validated
reading by reading and de-duplicated (DEV-6), and the feed follows what became durable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from cityos.devices.v1 import devices_pb2
from cityos_platform.testing.status import error_info


def reading(sequence: int, at: datetime | None = None, **values) -> devices_pb2.Reading:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(at or datetime.now(UTC))
    return devices_pb2.Reading(sequence=sequence, time=when, values=values or {"occupied": 1.0})


async def report(fleet, device_id, token, readings, **extra):
    return await fleet.telemetry.Report(
        devices_pb2.ReportRequest(device=f"devices/{device_id}", readings=readings, **extra),
        metadata=token,
        timeout=10,
    )


@pytest.fixture
async def sensors(fleet):
    await fleet.model()
    tokens = {}
    for device_id in ("pk-a", "pk-b"):
        await fleet.device(device_id)
        tokens[device_id] = await fleet.device_token(device_id)
    return tokens


@pytest.mark.req("DEV-2")
async def test_a_device_credential_cannot_write_as_another_device(fleet, sensors):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await report(fleet, "pk-b", sensors["pk-a"], [reading(1)])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "DEVICE_MISMATCH"
    # Nor can a person, even a city admin, report as a device.
    with pytest.raises(grpc.aio.AioRpcError) as person:
        await report(fleet, "pk-b", fleet.token("root", "city", "city-admin"), [reading(1)])
    assert person.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # And a made-up device token is not a credential at all.
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await report(fleet, "pk-b", (("authorization", "Bearer cdt_0000000000000000_guess"),), [reading(1)])
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Nothing was stored for pk-b; its own credential works.
    assert (await report(fleet, "pk-b", sensors["pk-b"], [reading(1)])).accepted == 1


@pytest.mark.req("DEV-6")
async def test_duplicates_by_device_and_sequence_are_dropped(fleet, sensors):
    first = await report(fleet, "pk-a", sensors["pk-a"], [reading(n) for n in (1, 2, 3)])
    assert (first.accepted, first.duplicates) == (3, 0)
    again = await report(fleet, "pk-a", sensors["pk-a"], [reading(n) for n in (2, 3, 4, 4)])
    assert (again.accepted, again.duplicates) == (1, 3)  # 2 and 3 stored before, 4 twice in the batch
    # Sequences are per device: pk-b's sequence 1 is its own.
    assert (await report(fleet, "pk-b", sensors["pk-b"], [reading(1)])).accepted == 1
    records = await _feed(fleet)
    assert [(r.device, r.reading.sequence) for r in records] == [
        ("devices/pk-a", 1),
        ("devices/pk-a", 2),
        ("devices/pk-a", 3),
        ("devices/pk-a", 4),
        ("devices/pk-b", 1),
    ]


@pytest.mark.req("DEV-6")
async def test_a_partly_invalid_batch_keeps_the_valid_readings_and_names_each_rejected_one(fleet, sensors):
    now = datetime.now(UTC)
    batch = [
        reading(1, occupied=1.0, battery_v=3.6),
        reading(2, occupied=1.0, humidity=40.0),  # not a metric of the model
        reading(3, battery_v=9.9),  # above the model's 4.2 V
        reading(4, at=now + timedelta(hours=1)),  # from the future
        reading(5, occupied=0.0, temperature_c=-12.5),
        devices_pb2.Reading(sequence=6, values={"occupied": 1.0}),  # no time
        reading(7, battery_v=float("nan")),
    ]
    reply = await report(fleet, "pk-a", sensors["pk-a"], batch)
    assert reply.accepted == 2
    assert [(r.index, r.sequence, r.field) for r in reply.rejected] == [
        (1, 2, "readings[1].values.humidity"),
        (2, 3, "readings[2].values.battery_v"),
        (3, 4, "readings[3].time"),
        (5, 6, "readings[5].time"),
        (6, 7, "readings[6].values.battery_v"),
    ]
    assert "not a metric" in reply.rejected[0].reason
    assert "above the maximum" in reply.rejected[1].reason
    assert "future" in reply.rejected[2].reason
    assert [r.reading.sequence for r in await _feed(fleet)] == [1, 5]
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await report(fleet, "pk-a", sensors["pk-a"], [])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.req("DEV-6")
async def test_large_batches_drop_duplicates_the_same_way(fleet, sensors):
    """Batches from 200 readings take the bulk path (COPY and a staging table on PostgreSQL)."""
    first = await report(fleet, "pk-a", sensors["pk-a"], [reading(n) for n in range(1, 601)])
    assert (first.accepted, first.duplicates) == (600, 0)
    overlap = await report(fleet, "pk-a", sensors["pk-a"], [reading(n) for n in range(401, 1001)])
    assert (overlap.accepted, overlap.duplicates) == (400, 200)
    sequences = [r.reading.sequence for r in await _feed(fleet)]
    assert sequences == list(range(1, 1001))


async def test_reports_update_the_twin_and_connectivity(fleet, sensors):
    await report(
        fleet,
        "pk-a",
        sensors["pk-a"],
        [reading(1, occupied=1.0, battery_v=3.7), reading(2, occupied=0.0)],
        radio=devices_pb2.RadioReport(rsrp_dbm=-101, sinr_db=4.5, cell_id="46000-42", coverage_class=1),
    )
    device = await fleet.registry.GetDevice(
        devices_pb2.GetDeviceRequest(name="devices/pk-a"), metadata=fleet.operator
    )
    assert device.status == devices_pb2.DEVICE_STATUS_ACTIVE
    assert device.connectivity == devices_pb2.CONNECTIVITY_ONLINE
    assert device.last_radio.rsrp_dbm == -101
    assert device.HasField("last_seen_time")


async def test_the_feed_follows_new_readings_live_and_resumes_from_a_cursor(fleet, sensors):
    stream = fleet.telemetry.SubscribeTelemetry(
        devices_pb2.SubscribeTelemetryRequest(follow=True, types=["parking.sensor"]), metadata=fleet.service
    )
    await report(fleet, "pk-a", sensors["pk-a"], [reading(1), reading(2)])
    seen, cursor = [], ""
    async for batch in stream:
        seen += list(batch.records)
        cursor = batch.cursor
        if len(seen) >= 2:
            break
    stream.cancel()
    assert [r.reading.sequence for r in seen] == [1, 2]
    assert seen[0].owner_organization == "transport"
    await report(fleet, "pk-a", sensors["pk-a"], [reading(3)])
    resumed = await _feed(fleet, after=cursor)
    assert [r.reading.sequence for r in resumed] == [3]
    # Scoped: another organization's operator sees none of transport's readings.
    assert await _feed(fleet, who=fleet.other_org) == []
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _feed(fleet, after="not-a-cursor")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _feed(fleet, after="", who=None) -> list[devices_pb2.TelemetryRecord]:
    records = []
    async for batch in fleet.telemetry.SubscribeTelemetry(
        devices_pb2.SubscribeTelemetryRequest(after_cursor=after, follow=False),
        metadata=who or fleet.service,
        timeout=10,
    ):
        records += list(batch.records)
    return records


async def test_concurrent_reports_are_all_durable_and_in_the_feed_once(fleet, sensors):
    async def burst(device_id, start):
        for n in range(start, start + 20):
            await report(fleet, device_id, sensors[device_id], [reading(n), reading(n + 1000)])

    await asyncio.gather(burst("pk-a", 1), burst("pk-b", 1), burst("pk-a", 21))
    records = await _feed(fleet)
    keys = [(r.device, r.reading.sequence) for r in records]
    assert len(keys) == len(set(keys)) == 120


async def test_ingest_acks_each_batch_once_durable_and_reports_rejections(fleet, sensors):
    await fleet.device("water-1", who=fleet.other_org)  # another organization's device

    async def batches():
        yield devices_pb2.IngestRequest(
            batch_id=1,
            devices=[
                devices_pb2.DeviceReadings(device="devices/pk-a", readings=[reading(1), reading(2)]),
                devices_pb2.DeviceReadings(device="devices/pk-b", readings=[reading(1, humidity=3.0)]),
            ],
        )
        yield devices_pb2.IngestRequest(
            batch_id=2,
            devices=[
                devices_pb2.DeviceReadings(device="devices/pk-a", readings=[reading(2), reading(3)]),
                devices_pb2.DeviceReadings(device="devices/water-1", readings=[reading(1)]),
                devices_pb2.DeviceReadings(device="devices/nope", readings=[reading(1)]),
            ],
        )

    acks = [ack async for ack in fleet.telemetry.Ingest(batches(), metadata=fleet.operator, timeout=10)]
    assert [(a.batch_id, a.accepted, a.duplicates) for a in acks] == [(1, 2, 0), (2, 1, 1)]
    assert [r.field for r in acks[0].rejected] == ["devices[1].readings[0].values.humidity"]
    assert [(r.field, r.reason) for r in acks[1].rejected] == [
        ("devices[1].device", "no such device"),  # utilities' device: not transport's to write
        ("devices[2].device", "no such device"),
    ]
    assert [(r.device, r.reading.sequence) for r in await _feed(fleet)] == [
        ("devices/pk-a", 1),
        ("devices/pk-a", 2),
        ("devices/pk-a", 3),
    ]
    # A device credential is not a bulk ingester.
    with pytest.raises(grpc.aio.AioRpcError) as device_caller:
        async for _ in fleet.telemetry.Ingest(batches(), metadata=sensors["pk-a"], timeout=10):
            pass
    assert device_caller.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_spool_keeps_only_its_retention_window(fleet, sensors, clock):
    from datetime import timedelta

    from cityos_devices.telemetry import prune_spool

    await report(fleet, "pk-a", sensors["pk-a"], [reading(n, at=clock.now()) for n in (1, 2, 3)])
    clock.advance(hours=50)
    await report(fleet, "pk-a", sensors["pk-a"], [reading(4, at=clock.now())])
    clock.advance(hours=30)  # the first batch is now 80 h old, the second 30 h
    assert await prune_spool(fleet.app.db, timedelta(hours=72), batch=2) == 3
    assert [r.reading.sequence for r in await _feed(fleet)] == [4]
    assert await prune_spool(fleet.app.db, timedelta(hours=72)) == 0


@pytest.mark.req("DEV-6")
async def test_bulk_ingest_drops_stored_duplicates_and_merges_a_device_listed_twice(fleet, sensors):
    """Batches from 200 readings go straight into the spool by COPY; a batch overlapping readings
    already stored makes that COPY fail on the unique key and takes the staging-table path instead.
    Either way the counts are exact and the twin holds each metric's newest value."""
    base = datetime.now(UTC) - timedelta(minutes=30)

    def readings(first, last, **values):
        return [reading(n, at=base + timedelta(seconds=n), **values) for n in range(first, last + 1)]

    async def ingest(*requests):
        async def stream():
            for request in requests:
                yield request

        return [ack async for ack in fleet.telemetry.Ingest(stream(), metadata=fleet.operator, timeout=30)]

    fresh = devices_pb2.IngestRequest(
        batch_id=1,
        devices=[
            devices_pb2.DeviceReadings(device="devices/pk-a", readings=readings(1, 300, occupied=1.0)),
            devices_pb2.DeviceReadings(device="devices/pk-b", readings=readings(1, 300, occupied=0.0)),
        ],
    )
    overlapping = devices_pb2.IngestRequest(
        batch_id=2,
        devices=[
            devices_pb2.DeviceReadings(device="devices/pk-a", readings=readings(251, 500, occupied=0.0)),
            # The same device again in the same batch: its newer readings win in the twin.
            devices_pb2.DeviceReadings(device="devices/pk-a", readings=readings(501, 520, battery_v=3.1)),
        ],
    )
    acks = await ingest(fresh, overlapping)
    assert [(a.batch_id, a.accepted, a.duplicates) for a in acks] == [(1, 600, 0), (2, 220, 50)]
    feed = [(r.device, r.reading.sequence) for r in await _feed(fleet)]
    assert len(feed) == len(set(feed)) == 820
    twin = await fleet.registry.GetTwin(
        devices_pb2.GetTwinRequest(device="devices/pk-a"), metadata=fleet.operator
    )
    assert dict(twin.reported) == {"occupied": 0.0, "battery_v": 3.1}


@pytest.mark.req("DEV-6")
async def test_acks_come_in_batch_order_with_several_batches_in_flight(fleet, sensors):
    async def stream():
        for batch in range(1, 9):
            first = batch * 1000
            yield devices_pb2.IngestRequest(
                batch_id=batch,
                devices=[
                    devices_pb2.DeviceReadings(
                        device="devices/pk-a", readings=[reading(n) for n in range(first, first + 250)]
                    )
                ],
            )

    acks = [ack async for ack in fleet.telemetry.Ingest(stream(), metadata=fleet.operator, timeout=30)]
    assert [(a.batch_id, a.accepted) for a in acks] == [(batch, 250) for batch in range(1, 9)]
    assert len(await _feed(fleet)) == 8 * 250
