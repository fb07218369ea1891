"""Alarms: get, list (newest first), acknowledge and resolve by hand, and watch their changes.

Alarms are raised, updated and cleared by the rules applied to readings (`rules`); people acknowledge
and resolve them here, and completing a work order resolves the ones linked to it (`work_orders`).
Every change goes through `alarm_rows.emit_alarm`, so the outbox holds each one as a
`manholes.alarm.*` event, which is what `WatchAlarms` follows.

Tenancy: an alarm belongs to its cover. A caller sees it when its organization owns, operates or
maintains the cover (or it acts city-wide), and acknowledges or resolves it when it owns or operates
the cover; to anyone else it does not exist (NOT_FOUND). A maintainer that sees an alarm but may not
change it is refused with PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import grpc
from sqlalchemy import and_, or_, select

from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.alarm_rows import alarm_to_proto, emit_alarm
from cityos_manholes.covers import name_id
from cityos_manholes.models import AlarmRow, CoverRow
from cityos_platform.areas import Area, AreaRegistry
from cityos_platform.db import Database, Tx
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cityos_platform.events import decode_cursor, encode_cursor, follow_ordered
from cityos_platform.interceptor import current_call
from cityos_platform.models import Outbox
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tenancy import Access, Caller, can_reach, is_city_wide, not_found, visible_clause

RAISED = int(manholes_pb2.ALARM_STATE_RAISED)
ACKNOWLEDGED = int(manholes_pb2.ALARM_STATE_ACKNOWLEDGED)
RESOLVED = int(manholes_pb2.ALARM_STATE_RESOLVED)
STATES = frozenset(value for value in manholes_pb2.AlarmState.values() if value)
SEVERITIES = frozenset(value for value in manholes_pb2.Severity.values() if value)
KINDS = frozenset(value for value in manholes_pb2.CoverKind.values() if value)
MAX_NOTE = 500
ALARM_EVENT_PREFIX = "manholes.alarm."
WATCH_BATCH = 500


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class AlarmServicer(manholes_pb2_grpc.AlarmServiceServicer):
    def __init__(
        self, db: Database, page_tokens: PageTokens, areas: AreaRegistry, *, poll_interval_s: float = 1.0
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.poll_interval_s = poll_interval_s

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    async def _changeable(tx: Tx, name: str) -> AlarmRow:
        """The alarm, locked, when the caller may change it."""
        alarm_id = name_id(name, "alarms")
        caller = current_call().principal
        row = await tx.session.get(AlarmRow, alarm_id, with_for_update=True)
        cover = await tx.session.get(CoverRow, row.cover_id) if row is not None else None
        if row is None or cover is None or not can_reach(cover, caller):
            raise not_found("alarm", name)
        if not can_reach(cover, caller, Access.WRITE):
            raise PermissionDenied(
                f"{name} is an alarm of a cover your organization maintains; its owner or operator "
                "acknowledges and resolves it",
                reason="ALARM_READ_ONLY",
                metadata={"name": name},
            )
        return row

    # -- reading ------------------------------------------------------------------------------------

    async def GetAlarm(
        self, request: manholes_pb2.GetAlarmRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.Alarm:
        alarm_id = name_id(request.name, "alarms")
        async with self.db.read() as session:
            row = await session.get(AlarmRow, alarm_id)
            cover = await session.get(CoverRow, row.cover_id) if row is not None else None
        if row is None or cover is None or not can_reach(cover, current_call().principal):
            raise not_found("alarm", request.name)
        return alarm_to_proto(row)

    async def ListAlarms(
        self, request: manholes_pb2.ListAlarmsRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.ListAlarmsResponse:
        """Newest first: by raise time, then by id (both descending), in keyset pages. With an area, the
        cells select candidates and the cover's point decides, so a page may come out short."""
        caller = current_call().principal
        problems: list[tuple[str, str]] = []
        size = 0
        try:
            size = page_size(request.page_size)
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        cover_id = ""
        if request.cover:
            try:
                cover_id = name_id(request.cover, "covers", "cover")
            except InvalidArgument as error:
                problems += [(v.field, v.description) for v in error.violations]
        for index, state in enumerate(request.states):
            if state not in STATES:
                problems.append((f"states[{index}]", "must be RAISED, ACKNOWLEDGED or RESOLVED"))
        if request.minimum_severity and request.minimum_severity not in SEVERITIES:
            problems.append(("minimum_severity", "must be INFO, WARNING, MAJOR or CRITICAL"))
        if problems:
            raise InvalidArgument.many(problems)
        area = self.areas.resolve(request.area) if request.area else None
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = (
            select(AlarmRow, CoverRow.latitude, CoverRow.longitude)
            .join(CoverRow, CoverRow.cover_id == AlarmRow.cover_id)
            .where(visible_clause(CoverRow, caller))
        )
        if cover_id:
            statement = statement.where(AlarmRow.cover_id == cover_id)
        if request.states:
            statement = statement.where(AlarmRow.state.in_(sorted(set(request.states))))
        if request.minimum_severity:
            statement = statement.where(AlarmRow.severity >= request.minimum_severity)
        if area is not None:
            statement = statement.where(AlarmRow.area_cell.in_(sorted(area.cells)))
        if position:
            after_time, after_id = _parse_time(position["time"]), position["id"]
            statement = statement.where(
                or_(
                    AlarmRow.raise_time < after_time,
                    and_(AlarmRow.raise_time == after_time, AlarmRow.alarm_id < after_id),
                )
            )
        statement = statement.order_by(AlarmRow.raise_time.desc(), AlarmRow.alarm_id.desc()).limit(size + 1)
        async with self.db.read() as session:
            rows = list((await session.execute(statement)).all())
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last: AlarmRow = rows[-1][0]
            token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"time": last.raise_time.isoformat(), "id": last.alarm_id},
            )
        alarms = [
            alarm_to_proto(row)
            for row, latitude, longitude in rows
            if area is None or area.contains(latitude, longitude)
        ]
        return manholes_pb2.ListAlarmsResponse(alarms=alarms, next_page_token=token)

    # -- changing -----------------------------------------------------------------------------------

    async def AcknowledgeAlarm(
        self, request: manholes_pb2.AcknowledgeAlarmRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.Alarm:
        """RAISED → ACKNOWLEDGED, recording the caller's subject and the time. Acknowledging an
        acknowledged alarm returns it unchanged (the first acknowledgement stands); a resolved one is
        refused. The note is checked (at most 500 characters) but the Alarm has no field to keep it."""
        problems: list[tuple[str, str]] = []
        try:
            name_id(request.name, "alarms")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if len(request.note) > MAX_NOTE:
            problems.append(("note", f"at most {MAX_NOTE} characters"))
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await self._changeable(tx, request.name)
            if row.state == RESOLVED:
                raise FailedPrecondition(
                    f"{request.name} is resolved; there is nothing to acknowledge",
                    reason="ALARM_RESOLVED",
                    metadata={"name": request.name},
                )
            if row.state == ACKNOWLEDGED:
                return alarm_to_proto(row)
            previous = row.state
            row.state = ACKNOWLEDGED
            row.acknowledged_by = current_call().principal.subject
            row.acknowledge_time = tx.now
            return emit_alarm(tx, "acknowledged", row, previous)

    async def ResolveAlarm(
        self, request: manholes_pb2.ResolveAlarmRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.Alarm:
        """RAISED or ACKNOWLEDGED → RESOLVED, recording who, when and why. Resolving a resolved alarm
        returns it unchanged (the first resolution stands)."""
        problems: list[tuple[str, str]] = []
        try:
            name_id(request.name, "alarms")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if not request.resolution.strip() or len(request.resolution) > MAX_NOTE:
            problems.append(("resolution", f"is required, at most {MAX_NOTE} characters"))
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await self._changeable(tx, request.name)
            if row.state == RESOLVED:
                return alarm_to_proto(row)
            previous = row.state
            row.state = RESOLVED
            row.resolved_by = current_call().principal.subject
            row.resolve_time = tx.now
            row.resolution = request.resolution
            return emit_alarm(tx, "resolved", row, previous)

    # -- watching -----------------------------------------------------------------------------------

    async def WatchAlarms(
        self, request: manholes_pb2.WatchAlarmsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[manholes_pb2.WatchAlarmsResponse]:
        """The alarm changes committed after the cursor (empty: from now), then each as it commits,
        for the caller's covers in the area, of the kinds and at least the severity asked for. Each
        response carries the cursor after that change: resuming from it sends nothing twice."""
        problems: list[tuple[str, str]] = []
        after = 0
        try:
            after = decode_cursor(request.after_cursor)
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        for index, kind in enumerate(request.cover_kinds):
            if kind not in KINDS:
                problems.append((f"cover_kinds[{index}]", "must be a kind of cover (SEWER, STORM_WATER, …)"))
        if request.minimum_severity and request.minimum_severity not in SEVERITIES:
            problems.append(("minimum_severity", "must be INFO, WARNING, MAJOR or CRITICAL"))
        if problems:
            raise InvalidArgument.many(problems)
        if not request.after_cursor:
            after = await self.db.last_sequence()
        area = self.areas.resolve(request.area) if request.area else None
        watch = _AlarmWatch(
            self.db,
            current_call().principal,
            area,
            frozenset(request.cover_kinds),
            int(request.minimum_severity),
        )
        async for rows, _ in follow_ordered(
            self.db,
            Outbox,
            after,
            watch.conditions(),
            WATCH_BATCH,
            follow=True,
            poll_interval_s=self.poll_interval_s,
        ):
            for response in await watch.select(rows):
                yield response


class _AlarmWatch:
    """One WatchAlarms stream's filters: SQL narrows the outbox to alarm events (in the area's cells);
    the payload and the covers decide the rest."""

    def __init__(
        self, db: Database, caller: Caller, area: Area | None, kinds: frozenset[int], minimum_severity: int
    ) -> None:
        self.db = db
        self.caller = caller
        self.city_wide = is_city_wide(caller)
        self.area = area
        self.kinds = kinds
        self.minimum_severity = minimum_severity

    def conditions(self) -> list[Any]:
        conditions: list[Any] = [Outbox.type.startswith(ALARM_EVENT_PREFIX)]
        if self.area is not None:
            conditions.append(Outbox.area_cell.in_(sorted(self.area.cells)))
        return conditions

    async def select(self, rows: Sequence[Outbox]) -> list[manholes_pb2.WatchAlarmsResponse]:
        changes: list[tuple[Outbox, manholes_pb2.AlarmChanged]] = []
        for row in rows:
            changed = manholes_pb2.AlarmChanged.FromString(row.payload)
            alarm = changed.alarm
            if self.kinds and alarm.cover_kind not in self.kinds:
                continue
            if self.minimum_severity and alarm.severity < self.minimum_severity:
                continue
            changes.append((row, changed))
        if not changes:
            return []
        cover_ids = sorted({changed.alarm.cover.partition("/")[2] for _, changed in changes})
        async with self.db.read() as session:
            covers = {
                cover.cover_id: cover
                for cover in (
                    await session.scalars(select(CoverRow).where(CoverRow.cover_id.in_(cover_ids)))
                ).all()
            }
        responses = []
        for row, changed in changes:
            cover = covers.get(changed.alarm.cover.partition("/")[2])
            if cover is None:  # deleted since: its owner (the event's) still sees what happened
                visible = self.city_wide or row.owner_organization == self.caller.organization
                inside = True  # the SQL condition already kept the area's cells
            else:
                visible = can_reach(cover, self.caller)
                inside = self.area is None or self.area.contains(cover.latitude, cover.longitude)
            if visible and inside:
                responses.append(
                    manholes_pb2.WatchAlarmsResponse(
                        alarm=changed.alarm,
                        previous_state=changed.previous_state,
                        cursor=encode_cursor(row.seq),
                    )
                )
        return responses
