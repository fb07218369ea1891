"""Occupancy derived live from sensor telemetry: the devices telemetry feed, followed with a cursor.

A spot sensor is a device of type `parking.sensor` (`ParkingSettings.sensor_type`) reporting `occupied`
(1 occupied, 0 free), optionally `forbidden_parking` (1 when a vehicle stands where it must not) and
anything else (`battery_v`, …). A spot watches the sensor named by its `sensor_id`.

`TelemetryFollower` (`cityos_platform.feeds.TelemetryFollower` with the spot rules as its `apply`)
subscribes to `cityos.devices.v1.TelemetryService/SubscribeTelemetry` (the sensor type, `follow`,
after its checkpoint) as the service's own client, and for each batch applies the
readings and stores the batch's cursor (`FeedCursorRow("devices.telemetry")`) in one transaction: after a
crash or a restart it resumes after the last batch whose effects committed, so nothing is applied twice
and nothing is lost. The cursor is moved compare-and-set: a replica that finds it moved by another
replica rolls back and resubscribes from there, so with several replicas each batch is still applied
once. Applying a reading is idempotent besides (a repeat is a late reading, below).

Per reading of a bound sensor (readings of sensors no spot watches are skipped):

- the spot's `sensor_heard_time` becomes the reading's `received_time` if later: any reading, even a
  late one or one without occupancy, is a sign of life (the heartbeat);
- a reading measured (`reading.time`) no later than the spot's `sensor_time` is late (a gateway flushing
  its buffer, a retransmission): it changes nothing else, so an old "occupied" never flips a spot that
  has been vacated since back to occupied;
- otherwise it becomes the sensor's state (`sensor_status`, `sensor_time`, `forbidden_parking`) and the
  spot's status follows, with the `parking.spot.*` event of the change (source `sensor`), unless an
  operator closed the spot: a CLOSED spot stays closed and its sensor's state is remembered for when the
  operator hands it back (SetSpotStatus UNKNOWN);
- an UNKNOWN spot (its sensor went silent) whose sensor is heard again takes the sensor's last state;
- `forbidden_parking` turning on emits `parking.forbidden_parking` (ForbiddenParkingDetected).

`SensorHeartbeat` runs every `heartbeat_check_interval_s`: a spot whose sensor has been silent for longer
than `sensor_heartbeat_timeout_s` (or, never heard, was created longer ago than that) becomes UNKNOWN
with source `heartbeat`, unless it is closed or unknown already. Time is the database's clock (`tx.now`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import and_, or_, select

from cityos.devices.v1 import devices_pb2
from cityos.parking.v1 import parking_pb2
from cityos_parking.models import FeedCursorRow, SiteRow, SpotRow
from cityos_parking.registry import change_status, emit, spot_to_proto
from cityos_parking.settings import ParkingSettings
from cityos_platform import feeds
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database, Tx
from cityos_platform.tasks import PeriodicTask

log = logging.getLogger(__name__)

FEED = feeds.FEED
SERVICE = "parking"
OCCUPIED = "occupied"
FORBIDDEN = "forbidden_parking"
HEARTBEAT_BATCH = 500
FREE, TAKEN = int(parking_pb2.SPOT_STATUS_FREE), int(parking_pb2.SPOT_STATUS_OCCUPIED)
CLOSED, UNKNOWN = int(parking_pb2.SPOT_STATUS_CLOSED), int(parking_pb2.SPOT_STATUS_UNKNOWN)


def _when(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined,no-any-return]


def _flag(value: float) -> bool:
    return value >= 0.5


# -- applying readings -------------------------------------------------------------------------------


async def apply_records(tx: Tx, records: Sequence[devices_pb2.TelemetryRecord], sensor_type: str) -> int:
    """Apply a batch of feed records in `tx`, in feed order; the number that concerned a bound sensor."""
    sensor_ids = set()
    for record in records:
        prefix, _, device_id = record.device.partition("/")
        if record.type == sensor_type and prefix == "devices" and device_id:
            sensor_ids.add(device_id)
    if not sensor_ids:
        return 0
    # Lock the spots in one order everywhere (the heartbeat check too), so two writers never deadlock.
    spots = {
        row.sensor_id: row
        for row in await tx.session.scalars(
            select(SpotRow)
            .where(SpotRow.sensor_id.in_(sorted(sensor_ids)))
            .order_by(SpotRow.spot_id)
            .with_for_update()
        )
    }
    if not spots:
        return 0
    sites = await _sites(tx, {row.site_id for row in spots.values()})
    applied = 0
    for record in records:
        row = spots.get(record.device.partition("/")[2]) if record.type == sensor_type else None
        if row is not None:
            apply_reading(tx, sites[row.site_id], row, record)
            applied += 1
    return applied


async def _sites(tx: Tx, site_ids: set[str]) -> dict[str, SiteRow]:
    rows = await tx.session.scalars(select(SiteRow).where(SiteRow.site_id.in_(sorted(site_ids))))
    return {row.site_id: row for row in rows}


def apply_reading(tx: Tx, site: SiteRow, row: SpotRow, record: devices_pb2.TelemetryRecord) -> None:
    """One reading of the spot's sensor (see the module docstring for the rules)."""
    reading = record.reading
    received = _when(record.received_time)
    if row.sensor_heard_time is None or received > row.sensor_heard_time:
        row.sensor_heard_time = received
    occupied, forbidden = reading.values.get(OCCUPIED), reading.values.get(FORBIDDEN)
    fresh = False
    forbidden_began = touched = False
    if occupied is not None or forbidden is not None:
        measured = _when(reading.time)
        if row.sensor_time is None or measured > row.sensor_time:
            fresh = True
            row.sensor_time = measured
            if occupied is not None:
                row.sensor_status = TAKEN if _flag(occupied) else FREE
            if forbidden is not None and _flag(forbidden) != row.forbidden_parking:
                row.forbidden_parking = forbidden_began = _flag(forbidden)
                touched = True
        else:
            log.debug(
                "late reading of %s (measured %s, the sensor's state is from %s): no change",
                record.device,
                measured.isoformat(),
                row.sensor_time.isoformat(),
            )
    target = row.sensor_status
    follows = (fresh and occupied is not None) or row.status == UNKNOWN
    if row.status != CLOSED and target and follows and (row.status != target or row.status_reason):
        change_status(tx, site, row, target, source="sensor", reason="")
    elif touched:  # the flag is part of the spot: a new etag
        row.etag = uuid.uuid4().hex[:16]
        row.update_time = tx.now
    if forbidden_began:
        detected = parking_pb2.ForbiddenParkingDetected(
            spot=spot_to_proto(row), sensor=record.device, time=reading.time
        )
        emit(tx, "forbidden_parking", detected, f"spots/{row.spot_id}", site)


# -- the feed ----------------------------------------------------------------------------------------


class TelemetryFollower(feeds.TelemetryFollower):
    """Follows the telemetry feed into spot statuses (`cityos_platform.feeds.TelemetryFollower` with
    parking's sensor type, cursor table and `apply_records`)."""

    def __init__(
        self,
        db: Database,
        channel: grpc.aio.Channel,
        settings: ParkingSettings,
        *,
        max_batch: int = feeds.FEED_BATCH,
    ) -> None:
        sensor_type = settings.sensor_type

        async def apply(tx: Tx, records: Sequence[devices_pb2.TelemetryRecord]) -> int:
            return await apply_records(tx, records, sensor_type)

        super().__init__(
            db,
            channel,
            types=[sensor_type],
            cursor_model=FeedCursorRow,
            apply=apply,
            retry_s=settings.feed_retry_s,
            max_batch=max_batch,
            name="telemetry follower",
        )
        self.sensor_type = sensor_type


# -- the heartbeat -----------------------------------------------------------------------------------


async def mark_silent_sensors(tx: Tx, silence: timedelta, *, limit: int = HEARTBEAT_BATCH) -> int:
    """Spots whose sensor has been silent longer than `silence` become UNKNOWN (source `heartbeat`),
    at most `limit` of them; closed and unknown spots are left alone. The number changed."""
    cutoff = tx.now - silence
    rows = (
        await tx.session.scalars(
            select(SpotRow)
            .where(
                SpotRow.sensor_id.is_not(None),
                SpotRow.status.not_in([UNKNOWN, CLOSED]),
                or_(
                    SpotRow.sensor_heard_time < cutoff,
                    and_(SpotRow.sensor_heard_time.is_(None), SpotRow.create_time < cutoff),
                ),
            )
            .order_by(SpotRow.spot_id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # a spot being updated right now is being heard
        )
    ).all()
    if not rows:
        return 0
    sites = await _sites(tx, {row.site_id for row in rows})
    for row in rows:
        change_status(tx, sites[row.site_id], row, UNKNOWN, source="heartbeat", reason="")
    return len(rows)


class SensorHeartbeat:
    """The periodic check for silent sensors (`step()` runs it once, which is what tests call)."""

    def __init__(self, db: Database, timeout: timedelta, interval_s: float) -> None:
        self.db = db
        self.timeout = timeout
        self._periodic = PeriodicTask("sensor heartbeat check", interval_s, self.step)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def step(self) -> int:
        """Mark every silent sensor's spot UNKNOWN; how many were."""
        total = 0
        while True:
            async with self.db.transaction() as tx:
                count = await mark_silent_sensors(tx, self.timeout)
            total += count
            if count < HEARTBEAT_BATCH:
                break
        if total:
            log.info("%d spot(s) unknown: their sensors missed the heartbeat (%s)", total, self.timeout)
        return total


# -- wiring ------------------------------------------------------------------------------------------


def telemetry_follower(
    db: Database, settings: Settings, parking: ParkingSettings, *, clock: Clock = SYSTEM_CLOCK
) -> TelemetryFollower | None:
    """The follower of the devices feed, when this deployment has one: following is on
    (`CITYOS_PARKING_FOLLOW_TELEMETRY`), `CITYOS_ENDPOINTS` names `devices` and the service has its
    client secret (`CITYOS_AUTH_CLIENT_SECRET`). Otherwise None, and the log says what is missing:
    occupancy then comes from operators and gates only."""
    if not parking.follow_telemetry:
        log.info("occupancy from telemetry is off (CITYOS_PARKING_FOLLOW_TELEMETRY=false)")
        return None
    channel = feeds.feed_channel(
        settings,
        SERVICE,
        [parking.sensor_type],
        without="spot occupancy comes from operators and gates only",
        clock=clock,
    )
    return TelemetryFollower(db, channel, parking) if channel is not None else None
