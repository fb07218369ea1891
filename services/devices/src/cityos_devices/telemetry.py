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
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices import domain, twin
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
MAX_READINGS = 1000
MAX_INGEST_READINGS = 10_000
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


@dataclass
class Prepared:
    """One device's readings after validation: rows to store, rejections, in-batch duplicates."""

    device_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[devices_pb2.RejectedReading] = field(default_factory=list)
    duplicates: int = 0
    latest: dict[str, tuple[datetime, float]] = field(default_factory=dict)


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
        """Validate and de-duplicate one device's readings (no I/O)."""
        prepared = Prepared(profile.device_id)
        in_batch: set[int] = set()
        for index, reading in enumerate(readings):
            problem = domain.reading_problem(reading, index, profile.specs, now, field)
            if problem is not None:
                prepared.rejected.append(
                    devices_pb2.RejectedReading(
                        index=index, sequence=reading.sequence, field=problem[0], reason=problem[1]
                    )
                )
                continue
            if reading.sequence in in_batch:
                prepared.duplicates += 1
                continue
            in_batch.add(reading.sequence)
            when = EPOCH + timedelta(seconds=reading.time.seconds, microseconds=reading.time.nanos // 1000)
            values = dict(reading.values)
            prepared.rows.append(
                {
                    "device_id": profile.device_id,
                    "sequence": reading.sequence,
                    "time": when,
                    "values": values,
                    "type": profile.type,
                    "owner_organization": profile.owner_organization,
                    "area_cell": profile.area_cell,
                    "received_time": now,
                }
            )
            for metric, value in values.items():
                if metric not in prepared.latest or prepared.latest[metric][0] <= when:
                    prepared.latest[metric] = (when, value)
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
            stored = await self._append(tx, prepared.rows) if prepared.rows else 0
            await self._update_twin(tx, device_id, prepared.latest, radio)
            # The device is awake right now: hand over what waited for it.
            response.commands.extend(await deliver(tx, device_id))
            device = await tx.session.get(DeviceRow, device_id)
            pending = twin.pending_for_device(device) if device is not None else None
            if pending is not None:
                response.twin.CopyFrom(pending)
        response.accepted = stored
        response.duplicates = prepared.duplicates + len(prepared.rows) - stored
        return response

    async def ingest_many(self, batches: Sequence[Prepared]) -> tuple[int, int]:
        """Several devices' prepared readings in one transaction: (stored, dropped as duplicates)."""
        rows = [row for batch in batches for row in batch.rows]
        async with self.db.transaction() as tx:
            stored = await self._append(tx, rows) if rows else 0
            # One query locks and loads every device of the batch, in a fixed order (no deadlocks
            # between concurrent batches); the updates below then find them in the session.
            device_ids = sorted({batch.device_id for batch in batches})
            await tx.session.execute(
                select(DeviceRow)
                .where(DeviceRow.device_id.in_(device_ids))
                .order_by(DeviceRow.device_id)
                .with_for_update()
            )
            for batch in batches:
                await self._update_twin(tx, batch.device_id, batch.latest, None, locked=True)
        return stored, sum(b.duplicates for b in batches) + len(rows) - stored

    async def _append(self, tx: Tx, rows: list[dict[str, Any]]) -> int:
        """Insert, dropping (device, sequence) pairs already stored; how many were new."""
        await tx.lock_ordered_log()
        connection = await tx.session.connection()
        if connection.dialect.name == "postgresql" and len(rows) >= COPY_THRESHOLD:
            return await self._append_by_copy(connection, rows)
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(TelemetryRow.__table__)
            .on_conflict_do_nothing(index_elements=["device_id", "sequence"])
            .returning(TelemetryRow.__table__.c.seq)
        )
        result = await tx.session.execute(statement, rows)
        return len(result.all())

    async def _append_by_copy(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> int:
        """Large batches on PostgreSQL: COPY into a per-connection staging table (emptied at commit),
        then one INSERT … SELECT that drops duplicates — the same result, several times faster."""
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # the asyncpg connection, inside this same transaction
        await driver.execute(
            "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (device_id varchar(63), sequence bigint,"
            ' time timestamptz, "values" json, type varchar(63), owner_organization varchar(64),'
            " area_cell varchar(16), received_time timestamptz) ON COMMIT DELETE ROWS"
        )
        await driver.copy_records_to_table(
            "telemetry_stage",
            records=[
                (
                    row["device_id"],
                    row["sequence"],
                    row["time"],
                    json.dumps(row["values"]),
                    row["type"],
                    row["owner_organization"],
                    row["area_cell"],
                    row["received_time"],
                )
                for row in rows
            ],
            columns=STAGE_COLUMNS,
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
            reported = dict(row.reported)
            changed = False
            for metric, (when, value) in latest.items():
                known = reported.get(metric)
                if known is None or known["time"] <= when.isoformat():
                    changed = changed or known is None or known["value"] != value
                    reported[metric] = {"value": value, "time": when.isoformat()}
            row.reported = reported
            if changed:
                row.reported_version += 1
        if radio is not None and radio.ByteSize():
            row.last_radio = json_format.MessageToDict(radio, preserving_proto_field_name=True)
            row.last_rsrp_dbm = radio.rsrp_dbm


async def prune_spool(db: Database, retention: timedelta, batch: int = 10_000) -> int:
    """Delete spooled readings received before the retention window, oldest first; how many."""
    cutoff = db.clock.now() - retention
    removed = 0
    while True:
        async with db.transaction() as tx:
            oldest = (
                select(TelemetryRow.seq).where(TelemetryRow.received_time < cutoff).order_by(TelemetryRow.seq)
            )
            result = await tx.session.execute(
                delete(TelemetryRow).where(TelemetryRow.seq.in_(oldest.limit(batch).scalar_subquery()))
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
        caller = current_call().principal
        async for batch in requests:
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
            response.accepted, response.duplicates = await self.ingestor.ingest_many(prepared)
            yield response  # only now: the batch is durable

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
