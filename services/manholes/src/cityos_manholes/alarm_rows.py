"""Alarm rows as the API shows them, and their events: the one place that turns an `AlarmRow` into an
`Alarm` and writes `manholes.alarm.*` on the outbox, for every part of the service that changes alarms
(the rules applied to readings, acknowledging and resolving by hand, completing a work order).

Events: `manholes.alarm.raised`, `.updated`, `.cleared`, `.reopened`, `.acknowledged`, `.resolved`, each
an `AlarmChanged` (the alarm after the change and its state before), scoped to the cover's owner and
cell, so `WatchAlarms` and the lake read one stream.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from cityos.manholes.v1 import manholes_pb2
from cityos_manholes.models import AlarmRow
from cityos_platform.db import Tx

ALARM_EVENTS = frozenset({"raised", "updated", "cleared", "reopened", "acknowledged", "resolved"})


def _stamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def alarm_to_proto(row: AlarmRow) -> manholes_pb2.Alarm:
    return manholes_pb2.Alarm(
        name=f"alarms/{row.alarm_id}",
        cover=f"covers/{row.cover_id}",
        condition=row.condition,  # type: ignore[arg-type]
        severity=row.severity,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        value=row.value,
        threshold=row.threshold,
        raise_time=_stamp(row.raise_time),
        update_time=_stamp(row.update_time),
        update_count=row.update_count,
        cleared=row.cleared,
        clear_time=_stamp(row.clear_time),
        acknowledged_by=row.acknowledged_by,
        acknowledge_time=_stamp(row.acknowledge_time),
        resolved_by=row.resolved_by,
        resolve_time=_stamp(row.resolve_time),
        resolution=row.resolution,
        work_order=f"workOrders/{row.work_order_id}" if row.work_order_id else "",
        cover_kind=row.cover_kind,  # type: ignore[arg-type]
        area_cell=row.area_cell,
    )


def emit_alarm(tx: Tx, event: str, row: AlarmRow, previous_state: int) -> manholes_pb2.Alarm:
    """Write `manholes.alarm.<event>` for the row as it is now; returns the alarm as sent."""
    if event not in ALARM_EVENTS:
        raise ValueError(f"unknown alarm event {event!r}; one of {sorted(ALARM_EVENTS)}")
    alarm = alarm_to_proto(row)
    tx.emit(
        f"manholes.alarm.{event}",
        manholes_pb2.AlarmChanged(alarm=alarm, previous_state=previous_state),  # type: ignore[arg-type]
        subject=alarm.name,
        owner_organization=row.owner_organization,
        area_cell=row.area_cell,
    )
    return alarm
