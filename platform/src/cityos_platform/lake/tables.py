"""The lake's table registry: every table's name, schema, version, time column and meaning.

A table is a folder of Parquet files partitioned by the UTC date of its time column
(`<table>/dt=YYYY-MM-DD/part-….parquet`, `files.py`). Its `TableSpec` here is the single source of
truth: the exporter casts what it writes to `schema`, `read_table` reads every file with it, and
docs/lake.md describes it. Rules:

- Columns are only ever added, never removed, renamed or retyped. Adding one bumps `version`, and the
  column is declared with `since=<new version>` and must be nullable: files written before it read with
  the column null (`read.py`), so a reader never breaks on older files.
- `time` (`time_column`) is a `timestamp[us, tz=UTC]` that is never null: the event or measurement time.
- `key` names the columns that identify a row (`event_id` for events): the exporter writes each row
  exactly once, and the key is how a reader checks it.
- `personal` names the columns that hold personal data. Such data is pseudonymised before it leaves its
  service (parking's plates are keyed pseudonyms, never plates); the lake only marks where it is, so data
  sharing can drop or restrict those columns.
- The catalog entry (the datashare service registers every table at start, docs/services/datashare.md):
  `owner` is the organization that answers for the table and decides agreements about it; each column is
  classified public, internal (the default), personal (`personal`) or sensitive (`sensitive`: security-
  relevant, e.g. infrastructure weak points); `data_model` names the FIWARE Smart Data Models type its rows
  follow where one applies; `update_frequency` and `licence` say how often it changes and under what terms.

Telemetry is stored long — one row per (reading, metric) — rather than wide (a column per metric): each
device model has its own metrics (a manhole terminal's `tilt_deg`, a lamp controller's `power_w`, …) and
models gain metrics over time, so a wide table would be mostly null and change schema with every model.
The long shape has a fixed schema, its `metric` column dictionary-encodes to almost nothing in Parquet,
and a pivot to wide is one `pivot_table` for a job that wants it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pyarrow as pa

TIME = pa.timestamp("us", tz="UTC")
SINCE = b"cityos.since"
DOC = b"cityos.doc"


def column(name: str, type_: pa.DataType, doc: str, *, nullable: bool = False, since: int = 1) -> pa.Field:
    """A column: its type, whether it may be null, the table version that added it, and what it holds."""
    return pa.field(name, type_, nullable=nullable, metadata={DOC: doc.encode(), SINCE: str(since).encode()})


def column_since(f: pa.Field) -> int:
    """The table version that added this column (1 when unmarked)."""
    return int((f.metadata or {}).get(SINCE, b"1"))


def column_doc(f: pa.Field) -> str:
    """What the column holds."""
    doc: bytes = (f.metadata or {}).get(DOC, b"")
    return doc.decode()


@dataclass(frozen=True)
class TableSpec:
    """One lake table. `schema` is the latest; `version` is bumped whenever a column is added."""

    name: str
    version: int
    schema: pa.Schema
    time_column: str
    description: str
    source: str
    personal: tuple[str, ...] = ()
    key: tuple[str, ...] = field(default=())
    # The catalog entry (see the module doc).
    owner: str = "data-office"
    public: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()
    data_model: str = ""
    update_frequency: str = "continuous"
    licence: str = "internal"

    def __post_init__(self) -> None:
        names = self.schema.names
        problems: list[str] = []
        if len(set(names)) != len(names):
            problems.append("duplicate column names")
        if self.time_column not in names:
            problems.append(f"time column {self.time_column!r} is not a column")
        else:
            time = self.schema.field(self.time_column)
            if time.type != TIME or time.nullable:
                problems.append(f"time column {self.time_column!r} must be a non-null timestamp[us, tz=UTC]")
        for name in (*self.personal, *self.key, *self.public, *self.sensitive):
            if name not in names:
                problems.append(f"{name!r} (personal, key, public or sensitive) is not a column")
        classified = [*self.personal, *self.public, *self.sensitive]
        if len(set(classified)) != len(classified):
            problems.append("a column is in more than one of personal, public and sensitive")
        for f in self.schema:
            since = column_since(f)
            if since > self.version:
                problems.append(f"{f.name!r} is since version {since}, after the table's {self.version}")
            if since > 1 and not f.nullable:
                problems.append(f"{f.name!r} was added in version {since} and so must be nullable")
        if problems:
            raise ValueError(f"table {self.name}: " + "; ".join(problems))

    def classification(self, column: str) -> str:
        """`public`, `internal`, `personal` or `sensitive`."""
        if column in self.personal:
            return "personal"
        if column in self.sensitive:
            return "sensitive"
        return "public" if column in self.public else "internal"

    def catalog_fields(self) -> list[dict[str, object]]:
        """The columns as the catalog lists them: name, Arrow type, document, classification, nullable
        (the datashare service registers them at start, the analytics runner after a run)."""
        return [
            {
                "name": f.name,
                "type": str(f.type),
                "description": column_doc(f),
                "classification": self.classification(f.name),
                "nullable": f.nullable,
            }
            for f in self.schema
        ]

    @property
    def area_column(self) -> str:
        """The column holding the row's H3 cell (area scopes cut on it), "" when none."""
        return "area_cell" if "area_cell" in self.schema.names else ""

    def columns_at(self, version: int) -> list[str]:
        """The columns the table had at `version`."""
        return [f.name for f in self.schema if column_since(f) <= version]


def _event_columns() -> list[pa.Field]:
    """The envelope of `cityos.common.v1.Event`, as every *_events table (and manhole_alarms) has it."""
    return [
        column("event_id", pa.string(), "Event.id: a UUID, stable across redelivery (the row's key)"),
        column("type", pa.string(), "Event.type, e.g. `parking.spot.occupied`"),
        column("schema_version", pa.int32(), "Event.schema_version: the payload's schema version"),
        column("source", pa.string(), "Event.source: the service that emitted it, e.g. `parking`"),
        column("subject", pa.string(), "Event.subject: the resource, e.g. `spots/a-017`"),
        column("owner_organization", pa.string(), "Event.owner_organization: who owns the resource"),
        column("area_cell", pa.string(), "Event.area_cell: H3 cell (res 9); null when none", nullable=True),
        column("time", TIME, "Event.occurred_at: when the change happened (UTC)"),
        column(
            "payload_type",
            pa.string(),
            "the payload's message type, e.g. `cityos.parking.v1.SpotStatusChanged`",
            nullable=True,
        ),
        column(
            "payload",
            pa.string(),
            "the payload (an Any) as protobuf JSON text (`MessageToJson` of the unpacked message)",
            nullable=True,
        ),
        column("traceparent", pa.string(), "W3C trace context of the call that caused it", nullable=True),
    ]


def _telemetry_columns() -> list[pa.Field]:
    """`cityos.devices.v1.TelemetryRecord`, one row per metric of the reading."""
    return [
        column("device_id", pa.string(), "the device's id (TelemetryRecord.device without `devices/`)"),
        column("device_type", pa.string(), "TelemetryRecord.type, e.g. `manhole.terminal`"),
        column("owner_organization", pa.string(), "the organization that owns the device"),
        column("area_cell", pa.string(), "the device's H3 cell (res 9); null when none", nullable=True),
        column(
            "sequence",
            pa.int64(),
            "Reading.sequence: the device's counter; (device, sequence) is one reading",
        ),
        column("metric", pa.string(), "the metric's name, a key of Reading.values"),
        column("value", pa.float64(), "the metric's value, Reading.values[metric]"),
        column("time", TIME, "Reading.time: when it was measured (UTC)"),
        column("received_time", TIME, "TelemetryRecord.received_time: when the platform accepted it"),
    ]


_TELEMETRY_MAPPING = (
    "One row per metric of each accepted reading of the devices telemetry feed "
    "(`TelemetryService/SubscribeTelemetry`): a TelemetryRecord with n values gives n rows sharing "
    "device_id, sequence and time. Key: (device_id, sequence, metric)."
)
_EVENT_MAPPING = (
    "One row per event (`EventService/StreamEvents`), the envelope in columns and the payload as JSON. "
    "Key: event_id."
)


def _spec(
    name: str,
    columns: Sequence[pa.Field],
    description: str,
    source: str,
    *,
    key: tuple[str, ...],
    personal: tuple[str, ...] = (),
    version: int = 1,
    **catalog: Any,
) -> TableSpec:
    return TableSpec(
        name=name,
        version=version,
        schema=pa.schema(columns),
        time_column="time",
        description=description,
        source=source,
        personal=personal,
        key=key,
        **catalog,
    )


_SPECS = [
    _spec(
        "device_telemetry",
        _telemetry_columns(),
        "Every device's readings. " + _TELEMETRY_MAPPING,
        "devices: TelemetryService/SubscribeTelemetry (all device types)",
        key=("device_id", "sequence", "metric"),
        public=("device_type", "metric", "time"),
    ),
    _spec(
        "device_events",
        _event_columns(),
        "The devices service's events: devices created, updated and decommissioned, models, firmware, "
        "commands (queued, sent, acked, failed, expired), jobs and twin changes. " + _EVENT_MAPPING,
        "devices: EventService/StreamEvents (type `devices.*`)",
        key=("event_id",),
    ),
    _spec(
        "parking_events",
        [
            *_event_columns(),
            column(
                "site", pa.string(), "the site, `sites/{site}`, when the event concerns one", nullable=True
            ),
            column(
                "spot", pa.string(), "the spot, `spots/{spot}`, when the event concerns one", nullable=True
            ),
            column(
                "plate_pseudonym",
                pa.string(),
                "the vehicle's plate pseudonym (keyed HMAC from the parking service, never a plate), "
                "when the event carries one (reservations, sessions, gates)",
                nullable=True,
            ),
        ],
        "The parking service's events: sites, spots and their status changes, reservations, sessions, "
        "gates, overstays. Plates never reach the lake: the service emits only their keyed pseudonyms. "
        + _EVENT_MAPPING,
        "parking: EventService/StreamEvents (type `parking.*`)",
        key=("event_id",),
        owner="transport",
        personal=("plate_pseudonym", "payload"),
    ),
    _spec(
        "parking_occupancy",
        [
            column("event_id", pa.string(), "the `parking.spot.*` event this row comes from (the key)"),
            column("site", pa.string(), "the spot's site, `sites/{site}`"),
            column("spot", pa.string(), "the spot, `spots/{spot}`"),
            column("group", pa.string(), "the spot's group, `groups/{group}`; null when none", nullable=True),
            column("status", pa.string(), "the status from now on: FREE, OCCUPIED, CLOSED or UNKNOWN"),
            column("previous_status", pa.string(), "the status before", nullable=True),
            column(
                "previous_duration_s",
                pa.float64(),
                "how long the previous status lasted, seconds (the stay, when it becomes FREE)",
                nullable=True,
            ),
            column(
                "change_source",
                pa.string(),
                "what changed it: sensor, operator, gate, heartbeat",
                nullable=True,
            ),
            column("owner_organization", pa.string(), "the site's owner"),
            column("area_cell", pa.string(), "the site's H3 cell (res 9); null when none", nullable=True),
            column("time", TIME, "when the spot took this status (the event's occurred_at)"),
        ],
        "Spot occupancy as a change log: one row per status change of a spot (derived from the "
        "`parking.spot.occupied|vacated|closed|unknown` events' SpotStatusChanged payloads). A site's "
        "occupancy at any time is the last status of each of its spots before then. Key: event_id.",
        "parking: EventService/StreamEvents (type `parking.spot.*`), derived by the exporter",
        key=("event_id",),
        owner="transport",
        public=("site", "spot", "group", "status", "previous_status", "area_cell", "time"),
        data_model="ParkingSpot",
    ),
    _spec(
        "manhole_readings",
        _telemetry_columns(),
        "The readings of manhole terminals (device type `manhole.terminal`: tilt, cover open, water "
        "level, gases, smoke, battery, …), the same shape as device_telemetry. " + _TELEMETRY_MAPPING,
        "devices: TelemetryService/SubscribeTelemetry (type `manhole.terminal`)",
        key=("device_id", "sequence", "metric"),
        owner="utilities",
    ),
    _spec(
        "manhole_alarms",
        [
            *_event_columns(),
            column("alarm", pa.string(), "Alarm.name, `alarms/{alarm}`", nullable=True),
            column("cover", pa.string(), "Alarm.cover, `covers/{cover}`", nullable=True),
            column("condition", pa.string(), "Alarm.condition, e.g. WATER_LEVEL (enum name)", nullable=True),
            column("severity", pa.string(), "Alarm.severity after the change (enum name)", nullable=True),
            column("state", pa.string(), "Alarm.state after the change (enum name)", nullable=True),
            column("value", pa.float64(), "Alarm.value: the worst value seen while it lasted", nullable=True),
            column("threshold", pa.float64(), "Alarm.threshold it crossed", nullable=True),
        ],
        "The manholes service's alarm events (raised, updated, reopened, cleared, acknowledged, "
        "resolved), the alarm's main fields in columns. The payload names who acknowledged or resolved "
        "an alarm (a user), hence personal. " + _EVENT_MAPPING,
        "manholes: EventService/StreamEvents (type `manholes.alarm.*`)",
        key=("event_id",),
        owner="utilities",
        sensitive=("cover",),
        personal=("payload",),
    ),
    _spec(
        "streetlight_readings",
        _telemetry_columns(),
        "The readings of streetlight controllers and cabinet controllers (device types "
        "`streetlight.controller`, `streetlight.cabinet`: power, energy meter, dim level, voltages, "
        "lamp flags, …), the same shape as device_telemetry. " + _TELEMETRY_MAPPING,
        "devices: TelemetryService/SubscribeTelemetry "
        "(types `streetlight.controller`, `streetlight.cabinet`)",
        key=("device_id", "sequence", "metric"),
        owner="public-works",
        public=("device_type", "metric", "value", "time"),
    ),
    _spec(
        "streetlight_energy",
        [
            column("light", pa.string(), "the light, `lights/{light}`"),
            column("group", pa.string(), "its group then, `groups/{group}`; null when none", nullable=True),
            column(
                "cabinet",
                pa.string(),
                "its cabinet then, `cabinets/{cabinet}`; null when none",
                nullable=True,
            ),
            column("owner_organization", pa.string(), "the light's owner"),
            column("area_cell", pa.string(), "the light's H3 cell (res 9); null when none", nullable=True),
            column("time", TIME, "the hour's start (UTC)"),
            column("energy_wh", pa.float64(), "energy metered in the hour, Wh"),
            column("full_power_wh", pa.float64(), "what the burning time would have taken undimmed, Wh"),
            column("burning_s", pa.float64(), "seconds the lamp burned in the hour"),
        ],
        "Hourly energy per light, metered as the streetlights service does (controller counter deltas, "
        "split over UTC hours; see cityos_streetlights.energy): savings = max(0, full_power_wh - "
        "energy_wh). Key: (light, time).",
        "derived by the exporter from streetlight_readings (`energy_wh`, `power_w`, power state)",
        key=("light", "time"),
        owner="public-works",
        public=("group", "area_cell", "time", "energy_wh", "full_power_wh", "burning_s"),
        data_model="Streetlight",
        update_frequency="hourly",
        licence="CC-BY-4.0",
    ),
    _spec(
        "audit_events",
        _event_columns(),
        "Who changed access: the identity service's events (organizations, users, service accounts, "
        "API keys: created, updated, enabled, disabled, revoked). Subjects and payloads name people "
        "(user names, e-mail addresses), hence personal. " + _EVENT_MAPPING,
        "identity: EventService/StreamEvents (type `identity.*`)",
        key=("event_id",),
        owner="city-office",
        update_frequency="on change",
        personal=("subject", "payload"),
    ),
    _spec(
        "datashare_events",
        [
            *_event_columns(),
            column(
                "agreement",
                pa.string(),
                "Agreement.name, `agreements/{agreement}`; null otherwise",
                nullable=True,
            ),
            column("dataset", pa.string(), "the dataset, `datasets/{dataset}`", nullable=True),
            column(
                "consumer_organization",
                pa.string(),
                "Agreement.consumer_organization: who reads under it; null for dataset events",
                nullable=True,
            ),
            column("state", pa.string(), "Agreement.state after the change (enum name)", nullable=True),
        ],
        "How data is shared: the datashare service's events — datasets registered, published and "
        "withdrawn as open data, and every agreement transition (requested, approved, rejected, revoked, "
        "expired) with the agreement, its terms and its history as the payload, which names the people "
        "who asked and decided, hence personal. " + _EVENT_MAPPING,
        "datashare: EventService/StreamEvents (type `datashare.*`)",
        key=("event_id",),
        owner="city-office",
        update_frequency="on change",
        personal=("payload",),
    ),
]

REGISTRY: dict[str, TableSpec] = {spec.name: spec for spec in _SPECS}

#: Which table an event goes to, by the longest matching type prefix (`table_for_event`).
EVENT_TABLES: dict[str, str] = {
    "devices.": "device_events",
    "parking.": "parking_events",
    "manholes.alarm.": "manhole_alarms",
    "identity.": "audit_events",
    "datashare.": "datashare_events",
}
#: The per-domain telemetry tables of a device type (every reading also goes to device_telemetry).
TELEMETRY_TABLES: dict[str, str] = {
    "manhole.terminal": "manhole_readings",
    "streetlight.controller": "streetlight_readings",
    "streetlight.cabinet": "streetlight_readings",
}


#: The entry point group through which installed packages add tables: each entry is a sequence of
#: TableSpecs (the analytics jobs' outputs, `cityos_analytics.outputs:TABLES`).
TABLES_GROUP = "cityos.lake_tables"


@cache
def output_tables() -> dict[str, TableSpec]:
    """The tables installed packages declare (`TABLES_GROUP`), by name; never one of REGISTRY's names."""
    from importlib.metadata import entry_points

    found: dict[str, TableSpec] = {}
    for entry in sorted(entry_points(group=TABLES_GROUP), key=lambda e: e.name):
        for spec in entry.load():
            if spec.name in REGISTRY or spec.name in found:
                raise ValueError(f"lake table {spec.name!r} is declared twice (entry point {entry.name})")
            found[spec.name] = spec
    return found


def all_tables() -> dict[str, TableSpec]:
    """Every table a reader may ask for: the source tables (REGISTRY) and the installed outputs."""
    return {**REGISTRY, **output_tables()}


def table(name: str) -> TableSpec:
    """The table `name` (a source table or an installed output), or KeyError listing the known ones."""
    known = all_tables()
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"no lake table {name!r}; known: {', '.join(sorted(known))}") from None


def table_for_event(event_type: str) -> str | None:
    """The *_events table an event of this type belongs to (None: the lake keeps no such events)."""
    matches = [prefix for prefix in EVENT_TABLES if event_type.startswith(prefix)]
    return EVENT_TABLES[max(matches, key=len)] if matches else None


def telemetry_tables(device_type: str) -> list[str]:
    """The tables a reading of this device type goes to: device_telemetry, and its domain's if any."""
    extra = TELEMETRY_TABLES.get(device_type)
    return ["device_telemetry", *([extra] if extra else [])]
