"""From stream batches to rows of the lake tables (`cityos_platform.lake.tables`), as Arrow tables in
each table's schema.

Events (`event_chunks`): each event goes to the table of its type (`tables.table_for_event`: `devices.*`
-> device_events, `parking.*` -> parking_events, `manholes.alarm.*` -> manhole_alarms, `identity.*` ->
audit_events, `datashare.*` -> datashare_events); a type the registry keeps no table for is not exported
(counted in `Skipped`). The envelope becomes columns; the payload (an Any) is unpacked with the API's
descriptors and stored as protobuf JSON (`MessageToJson` shape, lowerCamelCase names), with any field
named `plate` removed at every depth — the services emit only pseudonyms, and the lake must never hold a
plate even if one slipped in. A payload of a type this build does not know is stored as `{"@type": …,
"base64": …}`. Parking events also fill `site`, `spot` and `plate_pseudonym` from the payload (the first
such field, depth first; a Site's or Spot's `name`; else the subject's prefix), and each
`parking.spot.*` event with a SpotStatusChanged payload adds one parking_occupancy row. Manhole alarm
events fill the alarm's main fields from their AlarmChanged payload; datashare events the agreement, its
dataset, consumer and state from their Agreement payload (a Dataset payload: the dataset).

Telemetry (`telemetry_chunks`): each record of the feed gives one row per metric of its reading in
device_telemetry, and the same rows in its device type's table (`tables.telemetry_tables`:
manhole_readings, streetlight_readings).

Enum values are written by name without their type's prefix (`ALARM_CONDITION_WATER_LEVEL` ->
`WATER_LEVEL`); empty strings of nullable columns become nulls. The mapping is pure: the same batch
always gives the same rows, which the exactly-once contract of the spool relies on.
"""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

import cityos
from cityos.common.v1 import events_pb2
from cityos.devices.v1 import devices_pb2
from cityos_platform.lake import tables

SITE_TYPE = "cityos.parking.v1.Site"
SPOT_TYPE = "cityos.parking.v1.Spot"
SPOT_STATUS_CHANGED = "cityos.parking.v1.SpotStatusChanged"
ALARM_CHANGED = "cityos.manholes.v1.AlarmChanged"
AGREEMENT = "cityos.datashare.v1.Agreement"
DATASET = "cityos.datashare.v1.Dataset"
PARKING_EVENTS, PARKING_OCCUPANCY, MANHOLE_ALARMS = "parking_events", "parking_occupancy", "manhole_alarms"
DATASHARE_EVENTS = "datashare_events"
SCRUBBED = frozenset({"plate"})  # never in the lake, whatever a payload carries


def _load_api() -> None:
    """Import every generated module of the API so that the default pool knows every payload type."""
    for module in pkgutil.walk_packages(cityos.__path__, prefix="cityos."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


_load_api()
_POOL = descriptor_pool.Default()  # type: ignore[no-untyped-call]


# -- values ------------------------------------------------------------------------------------------


def when(stamp: Any) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def _or_null(value: str) -> str | None:
    return value or None


def enum_name(descriptor: EnumDescriptor, number: int) -> str | None:
    """The value's name without the enum's prefix (`SPOT_STATUS_FREE` -> `FREE`); None for 0 (unset)."""
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number) if number else None
    if number == 0:
        return None
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"
    return str(value.name).removeprefix(prefix)


def unpack(payload: Any) -> Message | None:
    """The Any's message, or None when this build does not know its type."""
    full_name = payload.type_url.rpartition("/")[2]
    if not full_name:
        return None
    try:
        descriptor = _POOL.FindMessageTypeByName(full_name)
    except KeyError:
        return None
    message = message_factory.GetMessageClass(descriptor)()
    message.ParseFromString(payload.value)
    return message


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items() if key not in SCRUBBED}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def payload_json(payload: Any, message: Message | None) -> str | None:
    """The payload as protobuf JSON (no `plate` anywhere), or the raw bytes of an unknown type."""
    if not payload.type_url and not payload.value:
        return None
    if message is None:
        return json.dumps(
            {"@type": payload.type_url, "base64": base64.b64encode(payload.value).decode()},
            separators=(",", ":"),
        )
    return json.dumps(_scrub(json_format.MessageToDict(message)), separators=(",", ":"), sort_keys=True)


def _walk(message: Message) -> Iterable[tuple[FieldDescriptor, Any, Any]]:
    """Every set field of the message, depth first: (field, value, the message type holding it)."""
    for field, value in message.ListFields():
        yield field, value, message.DESCRIPTOR
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.label == FieldDescriptor.LABEL_REPEATED else [value]
            for item in items:
                if isinstance(item, Message):
                    yield from _walk(item)


def parking_refs(subject: str, message: Message | None) -> tuple[str | None, str | None, str | None]:
    """(site, spot, plate pseudonym) an event of the parking service is about."""
    found: dict[str, str] = {}
    if message is not None:
        for field, value, holder in _walk(message):
            if not isinstance(value, str) or not value:
                continue
            if field.name == "name" and holder.full_name == SITE_TYPE:
                found.setdefault("site", value)
            elif field.name == "name" and holder.full_name == SPOT_TYPE:
                found.setdefault("spot", value)
            elif field.name in ("site", "spot", "plate_pseudonym"):
                found.setdefault(field.name, value)
    for key, prefix in (("site", "sites/"), ("spot", "spots/")):
        if key not in found and subject.startswith(prefix):
            found[key] = subject
    return found.get("site"), found.get("spot"), found.get("plate_pseudonym")


# -- events ------------------------------------------------------------------------------------------


class Skipped:
    """Events of types the lake keeps no table for, by type (for the logs)."""

    def __init__(self) -> None:
        self.by_type: dict[str, int] = defaultdict(int)


def event_columns(event: events_pb2.Event, message: Message | None) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "type": event.type,
        "schema_version": event.schema_version,
        "source": event.source,
        "subject": event.subject,
        "owner_organization": event.owner_organization,
        "area_cell": _or_null(event.area_cell),
        "time": when(event.occurred_at),
        "payload_type": _or_null(event.payload.type_url.rpartition("/")[2]),
        "payload": payload_json(event.payload, message),
        "traceparent": _or_null(event.traceparent),
    }


def occupancy_row(event: events_pb2.Event, changed: Message) -> dict[str, Any]:
    spot = changed.spot  # type: ignore[attr-defined]
    status_enum = spot.DESCRIPTOR.fields_by_name["status"].enum_type
    duration = changed.previous_duration if changed.HasField("previous_duration") else None  # type: ignore[attr-defined]
    return {
        "event_id": event.id,
        "site": spot.site,
        "spot": spot.name or event.subject,
        "group": _or_null(spot.group),
        "status": enum_name(status_enum, spot.status) or "UNKNOWN",
        "previous_status": enum_name(status_enum, changed.previous_status),  # type: ignore[attr-defined]
        "previous_duration_s": duration.ToTimedelta().total_seconds() if duration is not None else None,
        "change_source": _or_null(changed.source),  # type: ignore[attr-defined]
        "owner_organization": event.owner_organization,
        "area_cell": _or_null(event.area_cell or spot.area_cell),
        "time": when(event.occurred_at),
    }


def alarm_columns(message: Message | None) -> dict[str, Any]:
    if message is None or message.DESCRIPTOR.full_name != ALARM_CHANGED:
        return {}
    alarm = message.alarm  # type: ignore[attr-defined]
    fields = alarm.DESCRIPTOR.fields_by_name
    return {
        "alarm": _or_null(alarm.name),
        "cover": _or_null(alarm.cover),
        "condition": enum_name(fields["condition"].enum_type, alarm.condition),
        "severity": enum_name(fields["severity"].enum_type, alarm.severity),
        "state": enum_name(fields["state"].enum_type, alarm.state),
        "value": alarm.value,
        "threshold": alarm.threshold,
    }


def agreement_columns(message: Message | None) -> dict[str, Any]:
    if message is None:
        return {}
    kind = message.DESCRIPTOR.full_name
    if kind == DATASET:
        return {"dataset": _or_null(message.name)}  # type: ignore[attr-defined]
    if kind != AGREEMENT:
        return {}
    state = message.DESCRIPTOR.fields_by_name["state"].enum_type
    return {
        "agreement": _or_null(message.name),  # type: ignore[attr-defined]
        "dataset": _or_null(message.dataset),  # type: ignore[attr-defined]
        "consumer_organization": _or_null(message.consumer_organization),  # type: ignore[attr-defined]
        "state": enum_name(state, message.state),  # type: ignore[attr-defined]
    }


def event_rows(
    events: Sequence[events_pb2.Event], skipped: Skipped | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The rows of a batch of events, by lake table."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        name = tables.table_for_event(event.type)
        if name is None:
            if skipped is not None:
                skipped.by_type[event.type] += 1
            continue
        message = unpack(event.payload)
        row = event_columns(event, message)
        if name == PARKING_EVENTS:
            row["site"], row["spot"], row["plate_pseudonym"] = parking_refs(event.subject, message)
            if message is not None and message.DESCRIPTOR.full_name == SPOT_STATUS_CHANGED:
                out[PARKING_OCCUPANCY].append(occupancy_row(event, message))
        elif name == MANHOLE_ALARMS:
            row.update(alarm_columns(message))
        elif name == DATASHARE_EVENTS:
            row.update(agreement_columns(message))
        out[name].append(row)
    return dict(out)


def event_chunks(
    source: str, events: Sequence[events_pb2.Event], skipped: Skipped | None = None
) -> dict[str, pa.Table]:
    """A batch of `source`'s events as Arrow tables, by lake table."""
    return {name: to_table(name, found) for name, found in event_rows(events, skipped).items()}


# -- telemetry ---------------------------------------------------------------------------------------


def telemetry_rows(records: Sequence[devices_pb2.TelemetryRecord]) -> dict[str, list[dict[str, Any]]]:
    """The rows of a batch of the telemetry feed, by lake table: one per metric of each reading."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        received = when(record.received_time)
        reading = record.reading
        measured = when(reading.time) if reading.HasField("time") else received
        common = {
            "device_id": record.device.removeprefix("devices/"),
            "device_type": record.type,
            "owner_organization": record.owner_organization,
            "area_cell": _or_null(record.area_cell),
            "sequence": reading.sequence,
            "time": measured,
            "received_time": received,
        }
        metrics = [
            {**common, "metric": metric, "value": float(value)}
            for metric, value in sorted(reading.values.items())
        ]
        for name in tables.telemetry_tables(record.type):
            out[name].extend(metrics)
    return dict(out)


def telemetry_chunks(records: Sequence[devices_pb2.TelemetryRecord]) -> dict[str, pa.Table]:
    """A batch of the telemetry feed as Arrow tables, by lake table."""
    return {name: to_table(name, found) for name, found in telemetry_rows(records).items()}


# -- Arrow -------------------------------------------------------------------------------------------


def to_table(name: str, found: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows as an Arrow table in the lake table's schema (columns the rows lack are null)."""
    schema = tables.table(name).schema
    columns = {
        field.name: pa.array([row.get(field.name) for row in found], type=field.type) for field in schema
    }
    return pa.Table.from_pydict(columns, schema=schema)
