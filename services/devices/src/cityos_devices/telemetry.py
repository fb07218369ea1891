"""The telemetry path: validate, de-duplicate, make durable, update the twin, feed subscribers.

`Ingestor.ingest()` is the one path every way in uses (Report now; Ingest, Connect and the MQTT
adapter feed the same function). Accepted readings are appended to the telemetry spool (an ordered log
in the service's database, ADR-0004) in the same transaction as the device's last-seen state; the
caller gets its answer only after that transaction commits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import grpc
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Dialect,
    Table,
    TypeDecorator,
    bindparam,
    column,
    delete,
    select,
    table,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices import domain, pgcopy, twin
from cityos_devices.commands import ack_command, deliver
from cityos_devices.hub import PUSH, ConnectionHub
from cityos_devices.models import DeviceModelRow, DeviceRow, TelemetryRow
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import (
    CityOSError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from cityos_platform.events import decode_cursor, encode_cursor, follow_ordered
from cityos_platform.interceptor import current_call
from cityos_platform.tasks import PeriodicTask
from cityos_platform.tenancy import is_city_wide, not_found

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FLOAT_MAX = sys.float_info.max
MAX_SEQUENCE = 2**63 - 1
MAX_READINGS = 1000
MAX_INGEST_READINGS = 10_000
# Ingest: batches validated and waiting for the writer (bounded memory), and how many readings the
# writer takes into one transaction at most.
INGEST_QUEUE = 4
GROUP_READINGS = 40_000
# From this many rows, PostgreSQL appends go through COPY and a staging table.
COPY_THRESHOLD = 200
STAGE_COLUMNS = [
    "device_id",
    "sequence",
    "time",
    "values",
    "type",
    "owner_organization",
    "area_cell",
    "received_time",
]


class _JsonText(TypeDecorator[str]):
    """A JSON column given its JSON text as is (`prepare` writes it; nothing encodes it twice)."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


# The spool as the append statements see it: `values` arrives as JSON text already (see `prepare`).
_SPOOL = table(
    "telemetry",
    column("seq", BigInteger()),
    column("values", _JsonText()),
    *(column(name, TelemetryRow.__table__.c[name].type) for name in STAGE_COLUMNS if name != "values"),
)
_ACTIVE = int(devices_pb2.DEVICE_STATUS_ACTIVE)
_PROVISIONED = int(devices_pb2.DEVICE_STATUS_PROVISIONED)
_DEVICES = cast(Table, DeviceRow.__table__)
_UPDATE_SEEN = (
    update(_DEVICES)
    .where(_DEVICES.c.device_id == bindparam("b_device_id"))
    .values(
        last_seen_time=bindparam("last_seen_time"),
        status=bindparam("status"),
        reported=bindparam("reported"),
        reported_version=bindparam("reported_version"),
    )
)
PROFILE_TTL_S = 30.0
STREAM = "telemetry"
DEFAULT_BATCH = 500
MAX_BATCH = 1000


@dataclass(frozen=True)
class Profile:
    """What validating a device's readings needs, cached briefly per device."""

    device_id: str
    type: str
    owner_organization: str
    operator_organization: str
    area_cell: str
    decommissioned: bool
    specs: dict[str, dict[str, Any]]
    # (lowest, highest) accepted value per metric; an open end is the largest finite float, so the
    # same comparison also refuses infinities (and NaN, which compares false with everything).
    bounds: dict[str, tuple[float, float]]


@dataclass
class Prepared:
    """One device's readings after validation: the rows to store, rejections, in-batch duplicates,
    and each metric's latest value."""

    device_id: str
    spool: pgcopy.DeviceRows
    rejected: list[devices_pb2.RejectedReading] = field(default_factory=list)
    duplicates: int = 0
    latest: dict[str, tuple[datetime, float]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.spool.readings)

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows as tuples in `STAGE_COLUMNS` order (the values as JSON text)."""
        spool = self.spool
        received = _datetime(spool.received_us)
        return [
            (
                spool.device_id,
                sequence,
                _datetime(measured_us),
                values,
                spool.type,
                spool.owner_organization,
                spool.area_cell,
                received,
            )
            for sequence, measured_us, values in spool.readings
        ]


def _datetime(unix_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=unix_us)


def _unix_us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


@dataclass
class _Validated:
    """An Ingest batch validated and waiting to be written: its ack-to-be and its rows."""

    response: devices_pb2.IngestResponse
    prepared: list[Prepared]
    readings: int


class Ingestor:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._profiles: dict[str, tuple[Profile, float]] = {}

    def forget(self, device_id: str) -> None:
        self._profiles.pop(device_id, None)

    async def profile(self, device_id: str) -> Profile:
        cached = self._profiles.get(device_id)
        if cached is not None and time.monotonic() - cached[1] < PROFILE_TTL_S:
            return cached[0]
        async with self.db.read() as session:
            device = await session.get(DeviceRow, device_id)
            model = await session.get(DeviceModelRow, device.model_id) if device else None
        if device is None or model is None:
            raise not_found("device", f"devices/{device_id}")
        profile = Profile(
            device_id=device_id,
            type=device.type,
            owner_organization=device.owner_organization,
            operator_organization=device.operator_organization,
            area_cell=device.area_cell,
            decommissioned=device.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED,
            specs={spec["name"]: spec for spec in model.metrics},
            bounds={
                spec["name"]: (
                    -FLOAT_MAX if spec["min"] is None else spec["min"],
                    FLOAT_MAX if spec["max"] is None else spec["max"],
                )
                for spec in model.metrics
            },
        )
        self._profiles[device_id] = (profile, time.monotonic())
        return profile

    def prepare(
        self,
        profile: Profile,
        readings: Sequence[devices_pb2.Reading],
        now: datetime,
        field: str = "readings",
    ) -> Prepared:
        """Validate and de-duplicate one device's readings (no I/O).

        This loop is the service's hottest code (every reading passes it once), so it checks a reading
        in one pass over its values with local names only, and builds the stored row and its JSON as it
        goes; a reading that fails any check is handed to `domain.reading_problem`, which says why.
        Metric names are the model's (validated when it was created), so they need no JSON escaping,
        and a finite float's repr is valid JSON.
        """
        readings_out: list[tuple[int, int, str]] = []
        prepared = Prepared(
            profile.device_id,
            pgcopy.DeviceRows(
                profile.device_id,
                profile.type,
                profile.owner_organization,
                profile.area_cell,
                _unix_us(now),
                readings_out,
            ),
        )
        latest_s: dict[str, tuple[float, float, int]] = {}
        bounds = profile.bounds
        now_s = now.timestamp()
        newest, oldest = now_s + domain.FUTURE_TOLERANCE_S, now_s - domain.MAX_AGE_S
        in_batch: set[int] = set()
        for index, reading in enumerate(readings):
            sequence = reading.sequence
            stamp = reading.time
            seconds, nanos = stamp.seconds, stamp.nanos
            when_s = seconds + nanos * 1e-9
            values = reading.values
            pairs = [(metric, values[metric]) for metric in values]  # faster than .items() on upb maps
            parts = []
            valid = sequence <= MAX_SEQUENCE and oldest <= when_s <= newest
            if valid:
                for metric, value in pairs:
                    limits = bounds.get(metric)
                    if limits is None or not limits[0] <= value <= limits[1]:
                        valid = False
                        break
                    parts.append(f'"{metric}":{value!r}')
                valid = valid and bool(parts)
            if not valid:
                problem = domain.reading_problem(reading, index, profile.specs, now, field)
                if problem is not None:
                    prepared.rejected.append(
                        devices_pb2.RejectedReading(
                            index=index, sequence=sequence, field=problem[0], reason=problem[1]
                        )
                    )
                    continue
                # The two checks disagree only at a rounding edge of the time window: take it.
                parts = [f'"{metric}":{value!r}' for metric, value in pairs]
            if sequence in in_batch:
                prepared.duplicates += 1
                continue
            in_batch.add(sequence)
            measured_us = seconds * 1_000_000 + nanos // 1000
            readings_out.append((sequence, measured_us, "{" + ",".join(parts) + "}"))
            for metric, value in pairs:
                known = latest_s.get(metric)
                if known is None or known[0] <= when_s:
                    latest_s[metric] = (when_s, value, measured_us)
        prepared.latest = {
            metric: (_datetime(measured_us), value) for metric, (_, value, measured_us) in latest_s.items()
        }
        return prepared

    async def usable_profile(self, device_id: str) -> Profile:
        profile = await self.profile(device_id)
        if profile.decommissioned:
            raise FailedPrecondition(f"devices/{device_id} is decommissioned", reason="DEVICE_DECOMMISSIONED")
        return profile

    async def ingest(
        self,
        device_id: str,
        readings: Sequence[devices_pb2.Reading],
        radio: devices_pb2.RadioReport | None = None,
    ) -> devices_pb2.ReportResponse:
        """One device's uplink (Report): store, update the twin, hand over its queued commands."""
        if not 1 <= len(readings) <= MAX_READINGS:
            raise InvalidArgument.field("readings", f"send 1 to {MAX_READINGS} readings")
        profile = await self.usable_profile(device_id)
        prepared = self.prepare(profile, readings, self.db.clock.now())
        response = devices_pb2.ReportResponse(rejected=prepared.rejected)
        async with self.db.transaction() as tx:
            stored = await self._append(tx, [prepared]) if prepared.count else 0
            await self._update_twin(tx, device_id, prepared.latest, radio)
            # The device is awake right now: hand over what waited for it.
            response.commands.extend(await deliver(tx, device_id))
            device = await tx.session.get(DeviceRow, device_id)
            pending = twin.pending_for_device(device) if device is not None else None
            if pending is not None:
                response.twin.CopyFrom(pending)
        response.accepted = stored
        response.duplicates = prepared.duplicates + prepared.count - stored
        return response

    async def ingest_many(self, batches: Sequence[Sequence[Prepared]]) -> list[tuple[int, int]]:
        """Several batches of several devices' prepared readings, in one transaction: (stored, dropped
        as duplicates) per batch, as if the batches had been written one after another.

        Bulk path: the rows go in with COPY where the database allows it, and every device's last-seen
        state and reported twin with one locking read and one update statement (Core statements, no
        ORM objects: a batch touches hundreds of devices)."""
        latest: dict[str, dict[str, tuple[datetime, float]]] = {}
        for part in (part for batch in batches for part in batch):  # a device may come more than once
            merged = latest.setdefault(part.device_id, {})
            for metric, (when, value) in part.latest.items():
                if metric not in merged or merged[metric][0] <= when:
                    merged[metric] = (when, value)
        async with self.db.transaction() as tx:
            stored = await self._append_batches(tx, batches)
            devices = _DEVICES
            # Locked in a fixed order, so concurrent batches over the same devices cannot deadlock.
            current = await tx.session.execute(
                select(devices.c.device_id, devices.c.status, devices.c.reported, devices.c.reported_version)
                .where(devices.c.device_id.in_(sorted(latest)))
                .order_by(devices.c.device_id)
                .with_for_update()
            )
            updates = []
            for device_id, status, reported, version in current:
                merged_state, changed = twin.merge_reported(reported, latest[device_id])
                updates.append(
                    {
                        "b_device_id": device_id,
                        "last_seen_time": tx.now,
                        "status": _ACTIVE if status == _PROVISIONED else status,
                        "reported": merged_state,
                        "reported_version": version + changed,
                    }
                )
            if updates:
                await self._update_seen(tx, updates)
        return [
            (count, sum(part.duplicates + part.count for part in batch) - count)
            for batch, count in zip(batches, stored, strict=True)
        ]

    async def _update_seen(self, tx: Tx, updates: list[dict[str, Any]]) -> None:
        """Write the devices' new last-seen state: on PostgreSQL in one UPDATE … FROM unnest(…)
        statement (one execution however many devices), elsewhere as an executemany."""
        connection = await tx.session.connection()
        if connection.dialect.name != "postgresql":
            await tx.session.execute(_UPDATE_SEEN, updates)
            return
        driver = await _driver(connection)
        await driver.execute(
            "UPDATE devices AS d SET last_seen_time = $1, status = u.status, reported = u.reported,"
            " reported_version = u.reported_version"
            " FROM unnest($2::varchar[], $3::int[], $4::json[], $5::bigint[])"
            " AS u(device_id, status, reported, reported_version) WHERE d.device_id = u.device_id",
            tx.now,
            [update["b_device_id"] for update in updates],
            [update["status"] for update in updates],
            [json.dumps(update["reported"]) for update in updates],
            [update["reported_version"] for update in updates],
        )

    async def _append_batches(self, tx: Tx, batches: Sequence[Sequence[Prepared]]) -> list[int]:
        """Append several batches' rows; how many of each were new. On PostgreSQL all of them go in
        with one COPY when none is a duplicate of a stored reading (the common case); otherwise, and
        elsewhere, batch after batch through the de-duplicating insert."""
        await tx.lock_ordered_log()
        connection = await tx.session.connection()
        total = sum(part.count for batch in batches for part in batch)
        copyable = connection.dialect.name == "postgresql" and total >= COPY_THRESHOLD
        if copyable and await self._copy_if_new(connection, [part for batch in batches for part in batch]):
            return [sum(part.count for part in batch) for batch in batches]
        return [await self._append(tx, batch) for batch in batches]

    async def _copy_if_new(self, connection: AsyncConnection, parts: list[Prepared]) -> bool:
        """COPY the rows straight into the spool inside a savepoint; False (and nothing written) when
        one of them is already stored, or repeated among them (the unique key refuses the COPY)."""
        driver = await _driver(connection)
        data = pgcopy.encode(part.spool for part in parts)
        await driver.execute("SAVEPOINT telemetry_copy")
        try:
            await driver.copy_to_table(
                "telemetry", source=memoryview(data), columns=pgcopy.COLUMNS, format="binary"
            )
        except asyncpg.UniqueViolationError:
            await driver.execute("ROLLBACK TO SAVEPOINT telemetry_copy")
            return False
        await driver.execute("RELEASE SAVEPOINT telemetry_copy")
        return True

    async def _append(self, tx: Tx, parts: Sequence[Prepared]) -> int:
        """Insert, dropping (device, sequence) pairs already stored; how many were new."""
        await tx.lock_ordered_log()
        connection = await tx.session.connection()
        if connection.dialect.name == "postgresql" and sum(part.count for part in parts) >= COPY_THRESHOLD:
            return await self._append_by_staging(connection, parts)
        rows = [row for part in parts for row in part.rows()]
        if not rows:
            return 0
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(_SPOOL)
            .on_conflict_do_nothing(index_elements=["device_id", "sequence"])
            .returning(_SPOOL.c.seq)
        )
        result = await tx.session.execute(
            statement, [dict(zip(STAGE_COLUMNS, row, strict=True)) for row in rows]
        )
        return len(result.all())

    async def _append_by_staging(self, connection: AsyncConnection, parts: Sequence[Prepared]) -> int:
        """Large batches on PostgreSQL: COPY into a per-connection staging table (emptied at commit),
        then one INSERT … SELECT … ON CONFLICT DO NOTHING into the spool."""
        driver = await _driver(connection)
        await driver.execute(
            "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (device_id varchar(63), sequence bigint,"
            ' time timestamptz, "values" json, type varchar(63), owner_organization varchar(64),'
            " area_cell varchar(16), received_time timestamptz) ON COMMIT DELETE ROWS"
        )
        data = pgcopy.encode(part.spool for part in parts)
        await driver.copy_to_table(
            "telemetry_stage", source=memoryview(data), columns=pgcopy.COLUMNS, format="binary"
        )
        columns = ", ".join(f'"{c}"' for c in STAGE_COLUMNS)
        stored = await driver.fetchval(
            f"WITH new AS (INSERT INTO telemetry ({columns}) SELECT {columns} FROM telemetry_stage"  # noqa: S608
            " ORDER BY device_id, sequence ON CONFLICT (device_id, sequence) DO NOTHING RETURNING 1)"
            " SELECT count(*) FROM new"
        )
        await driver.execute("TRUNCATE telemetry_stage")
        return int(stored)

    async def _update_twin(
        self,
        tx: Tx,
        device_id: str,
        latest: dict[str, tuple[datetime, float]],
        radio: devices_pb2.RadioReport | None,
        *,
        locked: bool = False,
    ) -> None:
        # `locked`: the caller loaded and locked the row in this transaction (the identity map has it).
        row = await tx.session.get(DeviceRow, device_id, with_for_update=not locked)
        if row is None:
            return
        row.last_seen_time = tx.now
        if row.status == devices_pb2.DEVICE_STATUS_PROVISIONED:
            row.status = int(devices_pb2.DEVICE_STATUS_ACTIVE)
        if latest:
            row.reported, changed = twin.merge_reported(row.reported, latest)
            row.reported_version += changed
        if radio is not None and radio.ByteSize():
            row.last_radio = json_format.MessageToDict(radio, preserving_proto_field_name=True)
            row.last_rsrp_dbm = radio.rsrp_dbm


async def _driver(connection: AsyncConnection) -> Any:
    """The asyncpg connection under SQLAlchemy's, inside the same transaction."""
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def prune_spool(db: Database, retention: timedelta, batch: int = 10_000) -> int:
    """Delete spooled readings received before the retention window, oldest first; how many.

    Walks the spool in `seq` order (its primary key; no index on the receive time, which every append
    would pay for): each round deletes the expired rows among the `batch` oldest and goes on while all
    of them were expired. Receive time follows `seq` closely but not exactly (a batch commits a moment
    after it was received), so a row may wait one more round behind a slightly younger one."""
    cutoff = db.clock.now() - retention
    removed = 0
    while True:
        async with db.transaction() as tx:
            oldest = select(TelemetryRow.seq).order_by(TelemetryRow.seq).limit(batch).scalar_subquery()
            result = await tx.session.execute(
                delete(TelemetryRow).where(TelemetryRow.seq.in_(oldest), TelemetryRow.received_time < cutoff)
            )
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        removed += count
        if count < batch:
            return removed


class SpoolPruner:
    """Runs `prune_spool` periodically in the service process."""

    def __init__(self, db: Database, retention: timedelta, interval_s: float = 600.0) -> None:
        self.db, self.retention = db, retention
        self._periodic = PeriodicTask("spool pruning", interval_s, self.prune)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def prune(self) -> None:
        removed = await prune_spool(self.db, self.retention)
        if removed:
            log.info("pruned %d readings older than %s from the spool", removed, self.retention)


def _record(row: TelemetryRow) -> devices_pb2.TelemetryRecord:
    measured = timestamp_pb2.Timestamp()
    measured.FromDatetime(row.time)
    received = timestamp_pb2.Timestamp()
    received.FromDatetime(row.received_time)
    return devices_pb2.TelemetryRecord(
        device=f"devices/{row.device_id}",
        type=row.type,
        owner_organization=row.owner_organization,
        area_cell=row.area_cell,
        reading=devices_pb2.Reading(sequence=row.sequence, time=measured, values=row.values),
        received_time=received,
        cursor=encode_cursor(row.seq, STREAM),
    )


class TelemetryServicer(devices_pb2_grpc.TelemetryServiceServicer):
    def __init__(
        self, db: Database, ingestor: Ingestor, hub: ConnectionHub, *, poll_interval_s: float = 1.0
    ) -> None:
        self.db = db
        self.ingestor = ingestor
        self.hub = hub
        self.poll_interval_s = poll_interval_s

    async def Report(
        self, request: devices_pb2.ReportRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.ReportResponse:
        device_id = domain.name_id(request.device, "devices", "device")
        caller = current_call().principal
        if caller.kind != "device" or caller.subject != request.device:
            raise PermissionDenied(
                "a device reports only for itself: this credential belongs to "
                + (caller.subject if caller.kind == "device" else "no device"),
                reason="DEVICE_MISMATCH",
                metadata={"device": request.device},
            )
        radio = request.radio if request.HasField("radio") else None
        return await self.ingestor.ingest(device_id, request.readings, radio)

    async def Connect(
        self, requests: AsyncIterator[devices_pb2.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[devices_pb2.ConnectResponse]:
        caller = current_call().principal
        if caller.kind != "device":
            raise PermissionDenied("only a device connects, with its own credential", reason="NOT_A_DEVICE")
        device_id = caller.subject.removeprefix("devices/")
        await self.ingestor.usable_profile(device_id)
        with self.hub.listen(device_id) as queue:
            reader = asyncio.create_task(self._read(requests, device_id, caller, queue))
            ticker = asyncio.create_task(self._tick(queue))
            try:
                queue.put_nowait(PUSH)  # what waited while it was away
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    if item is PUSH:
                        for message in await self._pending(device_id):
                            yield message
                    else:
                        yield item
            finally:
                reader.cancel()
                ticker.cancel()

    async def _tick(self, queue: asyncio.Queue[Any]) -> None:
        """Look again now and then: another replica may have queued something for this device."""
        while True:
            await asyncio.sleep(max(self.poll_interval_s, 1.0))
            queue.put_nowait(PUSH)

    async def _read(
        self,
        requests: AsyncIterator[devices_pb2.ConnectRequest],
        device_id: str,
        caller: Principal,
        queue: asyncio.Queue[Any],
    ) -> None:
        try:
            async for message in requests:
                queue.put_nowait(await self._answer(message, device_id, caller))
            queue.put_nowait(None)
        except Exception as error:  # the stream broke: end the call with it
            queue.put_nowait(error)

    async def _answer(
        self, message: devices_pb2.ConnectRequest, device_id: str, caller: Principal
    ) -> devices_pb2.ConnectResponse:
        answer = devices_pb2.ConnectResponse(in_reply_to=message.message_id)
        try:
            kind = message.WhichOneof("payload")
            if kind == "report":
                report = message.report
                if report.device and report.device != caller.subject:
                    raise PermissionDenied("a device reports only for itself", reason="DEVICE_MISMATCH")
                radio = report.radio if report.HasField("radio") else None
                answer.report.CopyFrom(await self.ingestor.ingest(device_id, report.readings, radio))
            elif kind == "ack":
                answer.ack.CopyFrom(await ack_command(self.db, caller.subject, message.ack))
            else:
                raise InvalidArgument.field("payload", "send a report or an ack")
        except CityOSError as error:
            answer.error.CopyFrom(error.to_status())
        return answer

    async def _pending(self, device_id: str) -> list[devices_pb2.ConnectResponse]:
        """Commands and desired state waiting for the device, handed over now (commands become SENT)."""
        async with self.db.transaction() as tx:
            commands = await deliver(tx, device_id)
            device = await tx.session.get(DeviceRow, device_id, with_for_update=True)
            pending = twin.pending_for_device(device) if device is not None else None
        messages = [devices_pb2.ConnectResponse(command=command) for command in commands]
        if pending is not None:
            messages.append(devices_pb2.ConnectResponse(twin=pending))
        return messages

    async def Ingest(
        self, requests: AsyncIterator[devices_pb2.IngestRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[devices_pb2.IngestResponse]:
        """Batches in, one ack per batch, in order, each sent only once its batch is durable.

        A reader task validates batches as they arrive while the previous ones are being written;
        the writer takes every batch validated and waiting (up to `GROUP_READINGS` readings) into one
        transaction — one COPY, one twin update, one commit for all of them — and then acks each
        (group commit). The first failure ends the call with that error; the batches of a failed
        write are not acknowledged, and a client resending them loses nothing (duplicates are dropped).
        """
        caller = current_call().principal
        ready: asyncio.Queue[_Validated | BaseException | None] = asyncio.Queue(maxsize=INGEST_QUEUE)
        reader = asyncio.create_task(self._read_batches(requests, caller, ready))
        try:
            finished = False
            while not finished:
                group: list[_Validated] = []
                item = await ready.get()
                while True:
                    if item is None or isinstance(item, BaseException):
                        finished = True
                        break
                    group.append(item)
                    if ready.empty() or sum(v.readings for v in group) >= GROUP_READINGS:
                        break
                    item = ready.get_nowait()
                if group:
                    results = await self.ingestor.ingest_many([v.prepared for v in group])
                    for validated, (accepted, duplicates) in zip(group, results, strict=True):
                        validated.response.accepted, validated.response.duplicates = accepted, duplicates
                        yield validated.response  # only now: the batch is durable
                if isinstance(item, BaseException):
                    raise item
        finally:
            reader.cancel()

    async def _read_batches(
        self,
        requests: AsyncIterator[devices_pb2.IngestRequest],
        caller: Principal,
        ready: asyncio.Queue[_Validated | BaseException | None],
    ) -> None:
        try:
            async for batch in requests:
                response, prepared = await self._prepare_batch(batch, caller)
                await ready.put(_Validated(response, prepared, sum(p.count for p in prepared)))
            await ready.put(None)
        except Exception as error:  # a refused batch or a broken stream: end the call with it
            await ready.put(error)

    async def _prepare_batch(
        self, batch: devices_pb2.IngestRequest, caller: Principal
    ) -> tuple[devices_pb2.IngestResponse, list[Prepared]]:
        total = sum(len(part.readings) for part in batch.devices)
        if not 1 <= total <= MAX_INGEST_READINGS:
            raise InvalidArgument.field("devices", f"a batch carries 1 to {MAX_INGEST_READINGS} readings")
        now = self.db.clock.now()
        prepared: list[Prepared] = []
        response = devices_pb2.IngestResponse(batch_id=batch.batch_id)
        for index, part in enumerate(batch.devices):
            problem = await self._writable_profile(part.device, caller)
            if isinstance(problem, str):
                response.rejected.add(index=index, field=f"devices[{index}].device", reason=problem)
                continue
            ready = self.ingestor.prepare(problem, part.readings, now, f"devices[{index}].readings")
            response.rejected.extend(ready.rejected)
            prepared.append(ready)
            # Let the event loop breathe between devices: the previous batch's COPY is fed from this
            # same loop, and a batch validated in one piece would stall it for tens of milliseconds.
            await asyncio.sleep(0)
        return response, prepared

    async def _writable_profile(self, name: str, caller: Principal) -> Profile | str:
        """The device's profile if the caller may write its telemetry, else why not."""
        prefix, _, device_id = name.partition("/")
        if prefix != "devices" or not domain.RESOURCE_ID.match(device_id):
            return "must look like devices/{id}"
        try:
            profile = await self.ingestor.profile(device_id)
        except NotFound:
            return "no such device"
        organizations = {profile.owner_organization, profile.operator_organization}
        if not is_city_wide(caller) and caller.organization not in organizations:
            return "no such device"  # as for a missing one: nothing leaks across organizations
        if profile.decommissioned:
            return "the device is decommissioned"
        return profile

    async def SubscribeTelemetry(
        self, request: devices_pb2.SubscribeTelemetryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[devices_pb2.SubscribeTelemetryResponse]:
        caller = current_call().principal
        if request.max_batch > MAX_BATCH:
            raise InvalidArgument.field("max_batch", f"at most {MAX_BATCH}")
        after = decode_cursor(request.after_cursor, stream=STREAM)
        conditions: list[ColumnElement[bool]] = []
        if not is_city_wide(caller):
            conditions.append(TelemetryRow.owner_organization == caller.organization)
        if request.types:
            conditions.append(TelemetryRow.type.in_(list(request.types)))
        if request.area_cells:
            conditions.append(TelemetryRow.area_cell.in_(list(request.area_cells)))
        async for rows, position in follow_ordered(
            self.db,
            TelemetryRow,
            after,
            conditions,
            request.max_batch or DEFAULT_BATCH,
            follow=request.follow,
            poll_interval_s=self.poll_interval_s,
        ):
            yield devices_pb2.SubscribeTelemetryResponse(
                records=[_record(row) for row in rows], cursor=encode_cursor(position, STREAM)
            )
