"""The mapping from stream batches to lake rows (cityos_exporter.rows): each event lands in the table of
its type with its envelope and payload, parking and alarm fields are lifted into columns, a plate never
reaches the lake, and each reading gives one row per metric in device_telemetry and its domain table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from google.protobuf import any_pb2, timestamp_pb2

from cityos.common.v1 import events_pb2
from cityos.datashare.v1 import datashare_pb2
from cityos.devices.v1 import devices_pb2
from cityos.identity.v1 import identity_pb2
from cityos.manholes.v1 import manholes_pb2
from cityos.parking.v1 import parking_pb2, reservations_pb2
from cityos_exporter import rows
from cityos_platform.lake import files, tables

AT = datetime(2026, 3, 14, 23, 59, 30, 123456, tzinfo=UTC)


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _event(
    event_id: str, type_: str, payload, *, subject: str = "", source: str = "", cell: str = ""
) -> events_pb2.Event:
    packed = any_pb2.Any()
    if payload is not None:
        packed.Pack(payload)
    return events_pb2.Event(
        id=event_id,
        type=type_,
        schema_version=1,
        source=source or type_.split(".")[0],
        subject=subject,
        owner_organization="transport",
        area_cell=cell,
        occurred_at=_stamp(AT),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        payload=packed,
    )


def test_events_go_to_the_table_of_their_type_and_types_without_a_table_are_skipped():
    batch = [
        _event("d1", "devices.model.created", None, subject="deviceModels/geomag"),
        _event("i1", "identity.user.created", identity_pb2.User(name="users/olga"), subject="users/olga"),
        _event("m1", "manholes.cover.created", manholes_pb2.Cover(name="covers/c1"), subject="covers/c1"),
        _event("s1", "streetlights.light.created", None, subject="lights/l1"),
    ]
    skipped = rows.Skipped()
    found = rows.event_rows(batch, skipped)
    assert {name: [row["event_id"] for row in found[name]] for name in found} == {
        "device_events": ["d1"],
        "audit_events": ["i1"],
    }
    assert dict(skipped.by_type) == {"manholes.cover.created": 1, "streetlights.light.created": 1}
    audit = found["audit_events"][0]
    assert audit["time"] == AT
    assert audit["area_cell"] is None
    assert audit["schema_version"] == 1
    assert audit["payload_type"] == "cityos.identity.v1.User"
    assert json.loads(audit["payload"]) == {"name": "users/olga"}
    assert found["device_events"][0]["payload"] is None
    assert found["device_events"][0]["payload_type"] is None


def test_a_spot_status_change_gives_a_parking_event_and_an_occupancy_row():
    changed = parking_pb2.SpotStatusChanged(
        spot=parking_pb2.Spot(
            name="spots/a-017",
            site="sites/rongdong-a",
            group="groups/east",
            status=parking_pb2.SPOT_STATUS_FREE,
        ),
        previous_status=parking_pb2.SPOT_STATUS_OCCUPIED,
        source="sensor",
    )
    changed.previous_duration.FromTimedelta(timedelta(minutes=42))
    chunks = rows.event_chunks(
        "parking", [_event("p1", "parking.spot.vacated", changed, subject="spots/a-017", cell="89")]
    )
    event = chunks["parking_events"].to_pylist()[0]
    assert (event["site"], event["spot"], event["plate_pseudonym"]) == (
        "sites/rongdong-a",
        "spots/a-017",
        None,
    )
    occupancy = chunks["parking_occupancy"].to_pylist()[0]
    assert occupancy == {
        "event_id": "p1",
        "site": "sites/rongdong-a",
        "spot": "spots/a-017",
        "group": "groups/east",
        "status": "FREE",
        "previous_status": "OCCUPIED",
        "previous_duration_s": 2520.0,
        "change_source": "sensor",
        "owner_organization": "transport",
        "area_cell": "89",
        "time": AT,
    }
    assert chunks["parking_occupancy"].schema.equals(tables.table("parking_occupancy").schema)


def test_a_plate_never_reaches_the_lake_but_its_pseudonym_does():
    reservation = reservations_pb2.Reservation(
        name="reservations/r1", site="sites/g1", plate="BJ12345", plate_pseudonym="pp-8f3a"
    )
    changed = reservations_pb2.ReservationChanged(reservation=reservation)
    row = rows.event_rows([_event("r1", "parking.reservation.created", changed, subject="reservations/r1")])[
        "parking_events"
    ][0]
    assert (row["site"], row["spot"], row["plate_pseudonym"]) == ("sites/g1", None, "pp-8f3a")
    assert "BJ12345" not in row["payload"]
    assert json.loads(row["payload"])["reservation"]["platePseudonym"] == "pp-8f3a"


def test_an_alarm_event_has_the_alarms_fields_in_columns():
    alarm = manholes_pb2.Alarm(
        name="alarms/a1",
        cover="covers/c1",
        condition=manholes_pb2.ALARM_CONDITION_WATER_LEVEL,
        severity=manholes_pb2.SEVERITY_CRITICAL,
        state=manholes_pb2.ALARM_STATE_RAISED,
        value=1.75,
        threshold=1.5,
    )
    changed = manholes_pb2.AlarmChanged(alarm=alarm)
    row = rows.event_rows([_event("a1", "manholes.alarm.raised", changed, subject="alarms/a1")])[
        "manhole_alarms"
    ][0]
    assert {
        key: row[key] for key in ("alarm", "cover", "condition", "severity", "state", "value", "threshold")
    } == {
        "alarm": "alarms/a1",
        "cover": "covers/c1",
        "condition": "WATER_LEVEL",
        "severity": "CRITICAL",
        "state": "RAISED",
        "value": 1.75,
        "threshold": 1.5,
    }


def test_a_datashare_event_has_the_agreement_in_columns():
    agreement = datashare_pb2.Agreement(
        name="agreements/0123",
        dataset="datasets/parking_occupancy",
        consumer_organization="ecology-bureau",
        owner_organization="transport",
        state=datashare_pb2.AGREEMENT_STATE_REVOKED,
    )
    dataset = datashare_pb2.Dataset(name="datasets/parking_occupancy")
    found = rows.event_rows(
        [
            _event("g1", "datashare.agreement.revoked", agreement, subject="agreements/0123"),
            _event("g2", "datashare.dataset.published", dataset, subject="datasets/parking_occupancy"),
        ]
    )["datashare_events"]
    assert {key: found[0][key] for key in ("agreement", "dataset", "consumer_organization", "state")} == {
        "agreement": "agreements/0123",
        "dataset": "datasets/parking_occupancy",
        "consumer_organization": "ecology-bureau",
        "state": "REVOKED",
    }
    assert found[1]["dataset"] == "datasets/parking_occupancy"
    assert "agreement" not in found[1] or found[1]["agreement"] is None
    assert rows.to_table("datashare_events", found).num_rows == 2


def test_a_payload_of_an_unknown_type_is_kept_as_its_bytes():
    packed = any_pb2.Any(type_url="type.googleapis.com/cityos.future.v9.Thing", value=b"\x08\x01")
    event = _event("x1", "devices.thing.happened", None)
    event.payload.CopyFrom(packed)
    row = rows.event_rows([event])["device_events"][0]
    assert json.loads(row["payload"]) == {"@type": packed.type_url, "base64": "CAE="}
    assert row["payload_type"] == "cityos.future.v9.Thing"


def _record(device: str, type_: str, sequence: int, **values: float) -> devices_pb2.TelemetryRecord:
    return devices_pb2.TelemetryRecord(
        device=f"devices/{device}",
        type=type_,
        owner_organization="drainage",
        area_cell="89",
        reading=devices_pb2.Reading(sequence=sequence, time=_stamp(AT), values=values),
        received_time=_stamp(AT + timedelta(seconds=1)),
        cursor="c",
    )


def test_each_reading_gives_a_row_per_metric_in_device_telemetry_and_its_domain_table():
    batch = [
        _record("mt-1", "manhole.terminal", 7, tilt_deg=3.5, water_level_m=0.25),
        _record("sl-1", "streetlight.controller", 9, power_w=41.0),
        _record("pk-1", "parking.sensor", 3, occupied=1.0),
    ]
    chunks = rows.telemetry_chunks(batch)
    assert sorted(chunks) == ["device_telemetry", "manhole_readings", "streetlight_readings"]
    telemetry = chunks["device_telemetry"].to_pylist()
    assert [(row["device_id"], row["sequence"], row["metric"], row["value"]) for row in telemetry] == [
        ("mt-1", 7, "tilt_deg", 3.5),
        ("mt-1", 7, "water_level_m", 0.25),
        ("sl-1", 9, "power_w", 41.0),
        ("pk-1", 3, "occupied", 1.0),
    ]
    assert telemetry[0]["time"] == AT
    assert telemetry[0]["received_time"] == AT + timedelta(seconds=1)
    assert [row["metric"] for row in chunks["manhole_readings"].to_pylist()] == ["tilt_deg", "water_level_m"]
    assert [row["device_id"] for row in chunks["streetlight_readings"].to_pylist()] == ["sl-1"]
    for name, table in chunks.items():
        assert table.schema.equals(tables.table(name).schema)
        files.conform(tables.table(name), table)  # what write_rows will accept


def test_the_mapping_is_pure_the_same_batch_gives_the_same_rows():
    batch = [_record("mt-1", "manhole.terminal", 1, tilt_deg=1.0, battery_v=3.6)]
    first, second = rows.telemetry_chunks(batch), rows.telemetry_chunks(batch)
    assert all(first[name].equals(second[name]) for name in first)
    assert isinstance(first["device_telemetry"], pa.Table)
