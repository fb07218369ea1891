"""cityos_platform.lake.tables: the registry's ten tables, its rules for a table's schema, and a row of
every table written and read back through the lake."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from cityos_platform.lake import REGISTRY, Lake, read_table, table, write_rows
from cityos_platform.lake.tables import TIME, column, table_for_event, telemetry_tables

TABLES = {
    "device_telemetry",
    "device_events",
    "parking_events",
    "parking_occupancy",
    "manhole_readings",
    "manhole_alarms",
    "streetlight_readings",
    "streetlight_energy",
    "audit_events",
    "datashare_events",
}


def test_the_registry_holds_the_ten_tables_each_fully_described():
    assert set(REGISTRY) == TABLES
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert spec.version >= 1
        assert spec.description
        assert spec.source
        time = spec.schema.field(spec.time_column)
        assert time.type == TIME
        assert not time.nullable
        assert spec.key
        assert set(spec.key) <= set(spec.schema.names)
        assert set(spec.personal) <= set(spec.schema.names)
        assert all(f.metadata and f.metadata[b"cityos.doc"] for f in spec.schema), name
    assert REGISTRY["parking_events"].personal == ("plate_pseudonym", "payload")
    assert "event_id" in REGISTRY["audit_events"].key
    for name in ("manhole_readings", "streetlight_readings"):
        assert REGISTRY[name].schema == REGISTRY["device_telemetry"].schema


def test_a_table_name_that_is_not_registered_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"no lake table 'telemetry'; known: audit_events, .*device_telemetry"):
        table("telemetry")


def test_installed_packages_add_their_output_tables_next_to_the_source_tables():
    """The analytics jobs' outputs come through the `cityos.lake_tables` entry point; a source table's
    name is never taken twice."""
    from cityos_platform.lake.tables import REGISTRY, all_tables, output_tables

    outputs = output_tables()
    assert "device_anomalies" in outputs
    assert not set(outputs) & set(REGISTRY)
    assert all_tables() == {**REGISTRY, **outputs}
    assert table("device_anomalies") is outputs["device_anomalies"]


def test_a_schema_that_breaks_the_rules_is_refused():
    spec = table("device_events")
    with pytest.raises(ValueError, match="'firmware' was added in version 2 and so must be nullable"):
        dataclasses.replace(
            spec, version=2, schema=spec.schema.append(column("firmware", pa.string(), "", since=2))
        )
    with pytest.raises(ValueError, match="since version 3, after the table's 1"):
        dataclasses.replace(
            spec, schema=spec.schema.append(column("x", pa.string(), "", nullable=True, since=3))
        )
    with pytest.raises(ValueError, match="must be a non-null timestamp"):
        dataclasses.replace(spec, schema=spec.schema.set(7, pa.field("time", pa.timestamp("ms", tz="UTC"))))
    with pytest.raises(ValueError, match="'plate' \\(personal, key, public or sensitive\\) is not a column"):
        dataclasses.replace(spec, personal=("plate",))
    with pytest.raises(ValueError, match="more than one of personal, public and sensitive"):
        dataclasses.replace(spec, public=("subject",), sensitive=("subject",))
    v2 = dataclasses.replace(
        spec,
        version=2,
        schema=spec.schema.append(column("firmware", pa.string(), "", nullable=True, since=2)),
    )
    assert v2.columns_at(1) == spec.schema.names
    assert v2.columns_at(2) == [*spec.schema.names, "firmware"]


def test_each_column_has_one_classification_for_the_catalog():
    events = REGISTRY["parking_events"]
    assert events.classification("plate_pseudonym") == "personal"
    assert events.classification("event_id") == "internal"
    assert REGISTRY["parking_occupancy"].classification("status") == "public"
    assert REGISTRY["manhole_alarms"].classification("cover") == "sensitive"
    assert {spec.owner for spec in REGISTRY.values()} <= {
        "data-office",
        "transport",
        "utilities",
        "public-works",
        "city-office",
    }
    assert REGISTRY["parking_occupancy"].area_column == "area_cell"


def test_events_and_readings_are_routed_to_their_tables():
    assert table_for_event("parking.spot.occupied") == "parking_events"
    assert table_for_event("manholes.alarm.raised") == "manhole_alarms"
    assert table_for_event("manholes.cover.created") is None
    assert table_for_event("identity.user.created") == "audit_events"
    assert table_for_event("devices.command.acked") == "device_events"
    assert telemetry_tables("manhole.terminal") == ["device_telemetry", "manhole_readings"]
    assert telemetry_tables("streetlight.cabinet") == ["device_telemetry", "streetlight_readings"]
    assert telemetry_tables("parking.sensor") == ["device_telemetry"]


def _sample(type_: pa.DataType, n: int):
    if pa.types.is_timestamp(type_):
        return datetime(2026, 6, 1, 12, n, tzinfo=UTC)
    if pa.types.is_integer(type_):
        return n
    if pa.types.is_floating(type_):
        return n + 0.5
    return f"v{n}"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_writes_and_reads_back(tmp_path, name):
    lake = Lake.local(tmp_path / "lake")
    spec = table(name)
    required = [f for f in spec.schema if not f.nullable]
    rows = pa.table({f.name: pa.array([_sample(f.type, n) for n in range(3)], f.type) for f in required})
    write_rows(lake, spec, rows, "one")
    frame = read_table(name, lake=lake).compute()
    assert list(frame.columns) == spec.schema.names
    assert len(frame) == 3
    for f in spec.schema:
        if f.nullable and f.name not in rows.column_names:
            assert frame[f.name].isna().all()
    assert frame[spec.key[0]].tolist() == rows[spec.key[0]].to_pylist()
