"""A cover's live state and alarms from its terminal's readings, and the heartbeat sweep.

`rules` decides; this module stores what it decided, in the transaction that applies the reading:

- any record of the cover's terminal is a sign of life: `heard_time` becomes its `received_time` if
  later;
- a reading measured (`time`) no later than the cover's `reading_time` is late (a retransmission, a
  gateway flushing its buffer): it changes nothing else: no state, no alarm, no event;
- otherwise the reported values become the cover's live state (values not reported keep theirs), and
  `rules.evaluate()` (the cover's thresholds, install angle, road class, unresolved alarms, work-order
  windows and last lid state) decides; its decisions are stored as they are:
    - RAISE: a new alarm (RAISED) and `manholes.alarm.raised`; the partial unique index keeps one
      unresolved alarm per cover and condition;
    - UPDATE: the alarm's worst value, severity, threshold, `update_count`, `update_time`, and
      `manholes.alarm.updated`; a reopening (`reopened`) un-clears it instead
      (`manholes.alarm.reopened`), keeping its state (RAISED or ACKNOWLEDGED);
    - CLEAR: `cleared` and `clear_time`, `manholes.alarm.cleared`. A cleared alarm stays (unresolved)
      until someone resolves it by hand or by completing its work order; crossing again reopens it;
    - MAINTENANCE_OPEN: no alarm (the event names the work order);
  and each rule event is published as `manholes.<type>` (`manholes.cover.opened`,
  `manholes.cover.tilt_exceeded`, `manholes.maintenance.authorized_open`, …) with a `CoverEvent`
  (the cover after the reading), scoped to the cover's owner and cell like every manholes event.

A reading does not change the cover's `etag` or `update_time`: those version its configuration, which
operators edit with etags, while the live state changes every few minutes.

The heartbeat sweep (`Heartbeat`, every `heartbeat_check_interval_s`) runs `rules.heartbeat()` with the
database's clock (`tx.now`) for covers with a terminal: a terminal silent for longer than the cover's
heartbeat timeout raises HEARTBEAT_MISSED and sets `heartbeat_missed`; heard again, the next sweep (or
the next fresh reading) clears both. A terminal never heard from decides nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import or_, select

from cityos.manholes.v1 import manholes_pb2
from cityos_manholes import rules
from cityos_manholes.alarm_rows import emit_alarm
from cityos_manholes.covers import HEARTBEAT_RANGE, cover_to_proto
from cityos_manholes.models import ALARM_RESOLVED, AlarmRow, CoverRow, WorkOrderRow
from cityos_platform.db import Database, Tx
from cityos_platform.tasks import PeriodicTask

log = logging.getLogger(__name__)

RAISED = int(manholes_pb2.ALARM_STATE_RAISED)
UNSPECIFIED_STATE = int(manholes_pb2.ALARM_STATE_UNSPECIFIED)
HEARTBEAT_BATCH = 500


@dataclass(frozen=True, slots=True)
class Measured:
    """One reading of a terminal as the cover stores it: what the rules read, and the values that only
    inform (temperature, signal)."""

    reading: rules.Reading
    received: datetime
    temperature_c: float | None = None
    rsrp_dbm: float | None = None


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def limits_of(row: CoverRow) -> rules.Limits:
    """The cover's effective thresholds (stored in the proto's JSON form; defaults for the unset)."""
    return rules.Limits.from_proto(json_format.ParseDict(row.thresholds, manholes_pb2.Thresholds()))


async def open_alarms(tx: Tx, cover_ids: Sequence[str]) -> dict[str, dict[int, AlarmRow]]:
    """The unresolved alarms of the covers, by cover and condition."""
    found: dict[str, dict[int, AlarmRow]] = {cover_id: {} for cover_id in cover_ids}
    rows = await tx.session.scalars(
        select(AlarmRow)
        .where(AlarmRow.cover_id.in_(sorted(cover_ids)), AlarmRow.state != ALARM_RESOLVED)
        .order_by(AlarmRow.alarm_id)
    )
    for row in rows:
        found[row.cover_id][row.condition] = row
    return found


async def work_windows(tx: Tx, cover_ids: Sequence[str]) -> dict[str, list[rules.WorkWindow]]:
    """The windows of the covers' active work orders (the rules check status and time themselves)."""
    found: dict[str, list[rules.WorkWindow]] = {cover_id: [] for cover_id in cover_ids}
    rows = await tx.session.scalars(
        select(WorkOrderRow).where(
            WorkOrderRow.cover_id.in_(sorted(cover_ids)),
            WorkOrderRow.status.in_(sorted(rules.ACTIVE_WORK_ORDER_STATUSES)),
        )
    )
    for row in rows:
        found[row.cover_id].append(
            rules.WorkWindow(
                name=f"workOrders/{row.work_order_id}",
                start=row.planned_start_time,
                end=row.planned_end_time,
                status=row.status,  # type: ignore[arg-type]
            )
        )
    return found


def _active(alarms: Mapping[int, AlarmRow]) -> dict[rules.Condition, rules.Active]:
    return {
        condition: rules.Active(  # type: ignore[misc]
            condition=condition,  # type: ignore[arg-type]
            severity=row.severity,  # type: ignore[arg-type]
            value=row.value,
            cleared=row.cleared,
        )
        for condition, row in alarms.items()
    }


def apply_reading(
    tx: Tx,
    row: CoverRow,
    measured: Measured,
    alarms: dict[int, AlarmRow],
    windows: Sequence[rules.WorkWindow],
) -> bool:
    """One reading of the cover's terminal (see the module docstring); whether it was fresh.
    `alarms` (the cover's unresolved alarms by condition) is kept up to date."""
    if row.heard_time is None or measured.received > row.heard_time:
        row.heard_time = measured.received
    reading = measured.reading
    if row.reading_time is not None and reading.time <= row.reading_time:
        log.debug(
            "late reading of cover %s (measured %s, its state is from %s): only heard",
            row.cover_id,
            reading.time.isoformat(),
            row.reading_time.isoformat(),
        )
        return False
    was_open = row.open
    evaluation = rules.evaluate(
        limits_of(row),
        row.install_angle_deg,
        reading,
        _active(alarms),
        windows,
        road_class=row.road_class,  # type: ignore[arg-type]
        was_open=was_open,
    )
    _store_state(row, measured)
    apply_evaluation(tx, row, evaluation, alarms)
    return True


def _store_state(row: CoverRow, measured: Measured) -> None:
    reading = measured.reading
    row.reading_time = reading.time
    row.heartbeat_missed = False  # a fresh reading clears HEARTBEAT_MISSED (the rules say so too)
    if reading.open is not None:
        row.open = reading.open
    if reading.tilt_deg is not None:
        row.tilt_deg = reading.tilt_deg
    if reading.displaced is not None:
        row.displaced = reading.displaced
    if reading.water_level_m is not None:
        row.water_level_m = reading.water_level_m
    if reading.gases:
        row.gases = {**(row.gases or {}), **reading.gases}  # a new dict: JSON columns track assignment
    if reading.smoke is not None:
        row.smoke = reading.smoke
    if reading.battery_v is not None:
        row.battery_v = reading.battery_v
    if measured.temperature_c is not None:
        row.temperature_c = measured.temperature_c
    if measured.rsrp_dbm is not None:
        row.rsrp_dbm = measured.rsrp_dbm


def apply_evaluation(
    tx: Tx, row: CoverRow, evaluation: rules.Evaluation, alarms: dict[int, AlarmRow]
) -> None:
    """Store the decisions (alarm rows and their `manholes.alarm.*` events) and publish the rule
    events (`manholes.<type>`), in `tx`."""
    for decision in evaluation.decisions:
        condition = int(decision.condition)
        if decision.kind == rules.Kind.RAISE:
            alarm = AlarmRow(
                alarm_id=uuid.uuid4().hex,
                cover_id=row.cover_id,
                condition=condition,
                severity=int(decision.severity),
                state=RAISED,
                value=decision.value,
                threshold=decision.threshold,
                raise_time=tx.now,
                update_time=tx.now,
                update_count=0,
                cleared=False,
                clear_time=None,
                acknowledged_by="",
                resolved_by="",
                resolution="",
                work_order_id=None,
                cover_kind=row.kind,
                area_cell=row.area_cell,
                owner_organization=row.owner_organization,
            )
            tx.session.add(alarm)
            alarms[condition] = alarm
            emit_alarm(tx, "raised", alarm, UNSPECIFIED_STATE)
        elif decision.kind == rules.Kind.UPDATE:
            alarm = alarms[condition]
            alarm.value, alarm.threshold = decision.value, decision.threshold
            alarm.severity = int(decision.severity)
            alarm.update_count += 1
            alarm.update_time = tx.now
            if decision.reopened:
                alarm.cleared, alarm.clear_time = False, None
            emit_alarm(tx, "reopened" if decision.reopened else "updated", alarm, alarm.state)
        elif decision.kind == rules.Kind.CLEAR:
            alarm = alarms[condition]
            alarm.cleared, alarm.clear_time, alarm.update_time = True, tx.now, tx.now
            emit_alarm(tx, "cleared", alarm, alarm.state)
        # MAINTENANCE_OPEN: no alarm; its event names the work order.
    if not evaluation.events:
        return
    cover = cover_to_proto(row)
    for event in evaluation.events:
        tx.emit(
            f"manholes.{event.type}",
            manholes_pb2.CoverEvent(
                cover=cover,
                condition=event.condition,
                value=event.value,
                time=_stamp(event.time),
                work_order=event.work_order,
            ),
            subject=cover.name,
            owner_organization=row.owner_organization,
            area_cell=row.area_cell,
        )


# -- the heartbeat -----------------------------------------------------------------------------------


async def sweep_heartbeats(tx: Tx, *, after: str = "", limit: int = HEARTBEAT_BATCH) -> tuple[int, str]:
    """Run the heartbeat rule on up to `limit` covers with a terminal after cover id `after`: the
    candidates are those silent for longer than the shortest timeout a cover may have, and those
    marked missed. (The number of alarms raised or cleared, the last cover id looked at ("" when
    there were no more).)"""
    shortest, _ = HEARTBEAT_RANGE
    rows = (
        await tx.session.scalars(
            select(CoverRow)
            .where(
                CoverRow.device_id.is_not(None),
                CoverRow.heard_time.is_not(None),
                CoverRow.cover_id > after,
                or_(CoverRow.heard_time < tx.now - shortest, CoverRow.heartbeat_missed.is_(True)),
            )
            .order_by(CoverRow.cover_id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # a cover being updated right now is being heard
        )
    ).all()
    if not rows:
        return 0, ""
    alarms = await open_alarms(tx, [row.cover_id for row in rows])
    changed = 0
    for row in rows:
        mine = alarms[row.cover_id]
        evaluation = rules.heartbeat(limits_of(row), row.heard_time, tx.now, _active(mine))
        if evaluation.decisions:
            changed += 1
            row.heartbeat_missed = any(d.kind == rules.Kind.RAISE or d.reopened for d in evaluation.decisions)
            apply_evaluation(tx, row, evaluation, mine)
        else:
            missed = mine.get(rules.HEARTBEAT_MISSED)
            row.heartbeat_missed = missed is not None and not missed.cleared
    return changed, rows[-1].cover_id


class Heartbeat:
    """The periodic heartbeat sweep (`step()` runs it once, which is what tests call)."""

    def __init__(self, db: Database, interval_s: float) -> None:
        self.db = db
        self._periodic = PeriodicTask("manhole heartbeat check", interval_s, self.step)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def step(self) -> int:
        """Sweep every cover with a terminal once; how many alarms were raised or cleared."""
        total, after = 0, ""
        while True:
            async with self.db.transaction() as tx:
                changed, after = await sweep_heartbeats(tx, after=after)
            total += changed
            if not after:
                break
        if total:
            log.info("heartbeat sweep: %d cover(s) changed their HEARTBEAT_MISSED alarm", total)
        return total
