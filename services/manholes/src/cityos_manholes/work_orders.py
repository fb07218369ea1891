"""Work orders: work on a cover (inspection, repair, cleaning) by an organization in a planned window.

A work order is created PLANNED, possibly for some of its cover's alarms (they then name it), and moves
PLANNED → IN_PROGRESS → COMPLETED, or to CANCELLED from either of the first two; every move is kept in
its history with who, when and why. Completing it resolves, in the same transaction, every linked
alarm not yet resolved: `resolved_by` is `workOrders/{id} by {the actor's subject}`, the resolution
`work order completed: {note}`. Cancelling it unlinks the alarms not yet resolved (they can go to
another work order).

Tenancy: a work order is visible to the organizations of its cover (owner, operator, maintainer) and to
its assignee; the cover's owner and operator create work orders, and they and the assignee move them
on. Anyone else is told it does not exist. Events: `manholes.work_order.created|transitioned` (payload:
the WorkOrder), scoped to the cover's owner and cell.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import or_, select

from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.alarm_rows import emit_alarm
from cityos_manholes.covers import name_id
from cityos_manholes.models import ALARM_RESOLVED, AlarmRow, CoverRow, WorkOrderRow
from cityos_platform.db import Database, Tx
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Access, Caller, can_reach, is_city_wide, not_found, visible_clause

ORGANIZATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
KINDS = frozenset(value for value in manholes_pb2.WorkOrderKind.values() if value)
PLANNED = int(manholes_pb2.WORK_ORDER_STATUS_PLANNED)
IN_PROGRESS = int(manholes_pb2.WORK_ORDER_STATUS_IN_PROGRESS)
COMPLETED = int(manholes_pb2.WORK_ORDER_STATUS_COMPLETED)
CANCELLED = int(manholes_pb2.WORK_ORDER_STATUS_CANCELLED)
STATUSES = frozenset(value for value in manholes_pb2.WorkOrderStatus.values() if value)
MOVES: dict[int, frozenset[int]] = {
    PLANNED: frozenset({IN_PROGRESS, CANCELLED}),
    IN_PROGRESS: frozenset({COMPLETED, CANCELLED}),
    COMPLETED: frozenset(),
    CANCELLED: frozenset(),
}
ACTIVE = (PLANNED, IN_PROGRESS)
MAX_WINDOW = timedelta(days=30)
MAX_DESCRIPTION = 2000
MAX_NOTE = 2000
MAX_ALARMS = 100
Violations = list[tuple[str, str]]


def _status_name(status: int) -> str:
    return manholes_pb2.WorkOrderStatus.Name(status).removeprefix("WORK_ORDER_STATUS_")  # type: ignore[arg-type]


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def work_order_to_proto(row: WorkOrderRow) -> manholes_pb2.WorkOrder:
    return manholes_pb2.WorkOrder(
        name=f"workOrders/{row.work_order_id}",
        cover=f"covers/{row.cover_id}",
        kind=row.kind,  # type: ignore[arg-type]
        assignee_organization=row.assignee_organization,
        planned_start_time=_stamp(row.planned_start_time),
        planned_end_time=_stamp(row.planned_end_time),
        status=row.status,  # type: ignore[arg-type]
        alarms=[f"alarms/{alarm_id}" for alarm_id in row.alarm_ids],
        description=row.description,
        history=[
            manholes_pb2.WorkOrderTransition(
                status=entry["status"],
                actor=entry["actor"],
                time=_stamp(datetime.fromisoformat(entry["time"])),
                note=entry["note"],
            )
            for entry in row.history
        ],
        etag=row.etag,
        create_time=_stamp(row.create_time),
        update_time=_stamp(row.update_time),
    )


def _transition(status: int, actor: str, when: datetime, note: str) -> dict[str, Any]:
    return {"status": status, "actor": actor, "time": when.isoformat(), "note": note}


def _emit(tx: Tx, event: str, order: manholes_pb2.WorkOrder, cover: CoverRow) -> None:
    tx.emit(
        f"manholes.work_order.{event}",
        order,
        subject=order.name,
        owner_organization=cover.owner_organization,
        area_cell=cover.area_cell,
    )


def _time(stamp: timestamp_pb2.Timestamp, field: str, problems: Violations) -> datetime | None:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        problems.append((field, "is not a valid time"))
        return None


def _sees(order: WorkOrderRow, cover: CoverRow | None, caller: Caller) -> bool:
    if cover is not None and can_reach(cover, caller):
        return True
    return is_city_wide(caller) or (
        bool(caller.organization) and caller.organization == order.assignee_organization
    )


class WorkOrderServicer(manholes_pb2_grpc.WorkOrderServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens) -> None:
        self.db = db
        self.page_tokens = page_tokens

    async def CreateWorkOrder(
        self, request: manholes_pb2.CreateWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.WorkOrder:
        caller = current_call().principal
        order = request.work_order
        problems: Violations = []
        cover_id = ""
        try:
            cover_id = name_id(order.cover, "covers", "work_order.cover")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if order.kind not in KINDS:
            problems.append(("work_order.kind", "must be INSPECTION, REPAIR or CLEANING"))
        if not ORGANIZATION.match(order.assignee_organization):
            problems.append(
                ("work_order.assignee_organization", "the organization doing it, [a-z0-9][a-z0-9-]{0,62}")
            )
        start = end = None
        if not order.HasField("planned_start_time"):
            problems.append(("work_order.planned_start_time", "is required"))
        else:
            start = _time(order.planned_start_time, "work_order.planned_start_time", problems)
        if not order.HasField("planned_end_time"):
            problems.append(("work_order.planned_end_time", "is required"))
        else:
            end = _time(order.planned_end_time, "work_order.planned_end_time", problems)
        if start is not None and end is not None:
            if end <= start:
                problems.append(("work_order.planned_end_time", "must be after planned_start_time"))
            elif end - start > MAX_WINDOW:
                problems.append(("work_order.planned_end_time", "the window is at most 30 days"))
        if len(order.description) > MAX_DESCRIPTION:
            problems.append(("work_order.description", f"at most {MAX_DESCRIPTION:,} characters"))
        if len(order.alarms) > MAX_ALARMS:
            problems.append(("work_order.alarms", f"at most {MAX_ALARMS} alarms"))
        alarm_ids: list[str] = []
        for index, name in enumerate(order.alarms[:MAX_ALARMS]):
            field = f"work_order.alarms[{index}]"
            try:
                alarm_id = name_id(name, "alarms", field)
            except InvalidArgument as error:
                problems += [(v.field, v.description) for v in error.violations]
                continue
            if alarm_id in alarm_ids:
                problems.append((field, f"{name} is listed twice"))
            alarm_ids.append(alarm_id)
        if problems:
            raise InvalidArgument.many(problems)
        assert start is not None
        assert end is not None

        async def create(tx: Tx) -> manholes_pb2.WorkOrder:
            cover = await tx.session.get(CoverRow, cover_id, with_for_update=True)
            if cover is None or not can_reach(cover, caller, Access.WRITE):
                raise not_found("cover", order.cover)
            work_order_id = uuid.uuid4().hex
            alarm_problems: Violations = []
            alarms: list[AlarmRow] = []
            for index, alarm_id in enumerate(alarm_ids):
                field = f"work_order.alarms[{index}]"
                alarm = await tx.session.get(AlarmRow, alarm_id, with_for_update=True)
                if alarm is None or alarm.cover_id != cover_id:
                    alarm_problems.append((field, f"alarms/{alarm_id} is not an alarm of {order.cover}"))
                elif alarm.state == ALARM_RESOLVED:
                    alarm_problems.append((field, f"alarms/{alarm_id} is resolved already"))
                elif alarm.work_order_id and await tx.session.scalar(
                    select(WorkOrderRow.work_order_id).where(
                        WorkOrderRow.work_order_id == alarm.work_order_id, WorkOrderRow.status.in_(ACTIVE)
                    )
                ):
                    alarm_problems.append(
                        (field, f"alarms/{alarm_id} is handled by workOrders/{alarm.work_order_id} already")
                    )
                else:
                    alarms.append(alarm)
            if alarm_problems:
                raise InvalidArgument.many(alarm_problems)
            row = WorkOrderRow(
                work_order_id=work_order_id,
                cover_id=cover_id,
                kind=order.kind,
                assignee_organization=order.assignee_organization,
                planned_start_time=start,
                planned_end_time=end,
                status=PLANNED,
                alarm_ids=alarm_ids,
                description=order.description,
                history=[_transition(PLANNED, caller.subject, tx.now, "")],
                created_by=caller.subject,
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            for alarm in alarms:
                alarm.work_order_id = work_order_id
                emit_alarm(tx, "updated", alarm, alarm.state)
            created = work_order_to_proto(row)
            _emit(tx, "created", created, cover)
            return created

        return await idempotent(self.db, request, manholes_pb2.WorkOrder, create)

    async def GetWorkOrder(
        self, request: manholes_pb2.GetWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.WorkOrder:
        work_order_id = name_id(request.name, "workOrders")
        async with self.db.read() as session:
            row = await session.get(WorkOrderRow, work_order_id)
            cover = await session.get(CoverRow, row.cover_id) if row is not None else None
        if row is None or not _sees(row, cover, current_call().principal):
            raise not_found("work order", request.name)
        return work_order_to_proto(row)

    async def ListWorkOrders(
        self, request: manholes_pb2.ListWorkOrdersRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.ListWorkOrdersResponse:
        caller = current_call().principal
        problems: Violations = []
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
        if request.status and request.status not in STATUSES:
            problems.append(("status", "must be PLANNED, IN_PROGRESS, COMPLETED or CANCELLED"))
        if problems:
            raise InvalidArgument.many(problems)
        visible = visible_clause(CoverRow, caller)
        if caller.organization and not is_city_wide(caller):
            visible = or_(visible, WorkOrderRow.assignee_organization == caller.organization)
        statement = (
            select(WorkOrderRow).join(CoverRow, CoverRow.cover_id == WorkOrderRow.cover_id).where(visible)
        )
        if cover_id:
            statement = statement.where(WorkOrderRow.cover_id == cover_id)
        if request.status:
            statement = statement.where(WorkOrderRow.status == request.status)
        rows, token = await keyset_page(
            self.db, self.page_tokens, request, statement, WorkOrderRow.work_order_id, size=size
        )
        return manholes_pb2.ListWorkOrdersResponse(
            work_orders=[work_order_to_proto(row) for row in rows], next_page_token=token
        )

    async def TransitionWorkOrder(
        self, request: manholes_pb2.TransitionWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.WorkOrder:
        caller = current_call().principal
        problems: Violations = []
        work_order_id = ""
        try:
            work_order_id = name_id(request.name, "workOrders")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if request.status not in (IN_PROGRESS, COMPLETED, CANCELLED):
            problems.append(("status", "must be IN_PROGRESS, COMPLETED or CANCELLED"))
        if len(request.note) > MAX_NOTE:
            problems.append(("note", f"at most {MAX_NOTE:,} characters"))
        if problems:
            raise InvalidArgument.many(problems)
        target = int(request.status)
        async with self.db.transaction() as tx:
            row = await tx.session.get(WorkOrderRow, work_order_id, with_for_update=True)
            cover = await tx.session.get(CoverRow, row.cover_id, with_for_update=True) if row else None
            if row is None or cover is None or not _sees(row, cover, caller):
                raise not_found("work order", request.name)
            if not (
                can_reach(cover, caller, Access.WRITE)
                or (caller.organization and caller.organization == row.assignee_organization)
            ):
                raise PermissionDenied(
                    f"only the owner or operator of {row.cover_id!r} and the assignee organization "
                    f"({row.assignee_organization}) move {request.name} on",
                    reason="WORK_ORDER_READ_ONLY",
                    metadata={"name": request.name},
                )
            if row.status == target:
                return work_order_to_proto(row)
            allowed = MOVES[row.status]
            if target not in allowed:
                moves = ", ".join(sorted(_status_name(status) for status in allowed)) or "none (it is final)"
                raise FailedPrecondition(
                    f"{request.name} is {_status_name(row.status)}; it cannot move to "
                    f"{_status_name(target)}; allowed moves: {moves}",
                    reason="WORK_ORDER_TRANSITION",
                    metadata={
                        "name": request.name,
                        "status": _status_name(row.status),
                        "allowed": ",".join(sorted(_status_name(status) for status in allowed)),
                    },
                )
            row.status = target
            row.history = [*row.history, _transition(target, caller.subject, tx.now, request.note)]
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            if row.alarm_ids and target in (COMPLETED, CANCELLED):
                alarms = (
                    await tx.session.scalars(
                        select(AlarmRow)
                        .where(
                            AlarmRow.alarm_id.in_(row.alarm_ids),
                            AlarmRow.work_order_id == row.work_order_id,
                            AlarmRow.state != ALARM_RESOLVED,
                        )
                        .order_by(AlarmRow.alarm_id)
                        .with_for_update()
                    )
                ).all()
                for alarm in alarms:
                    previous = alarm.state
                    if target == COMPLETED:
                        alarm.state = ALARM_RESOLVED
                        alarm.resolved_by = f"workOrders/{row.work_order_id} by {caller.subject}"[:200]
                        alarm.resolve_time = tx.now
                        alarm.resolution = f"work order completed: {request.note}"[:500]
                        emit_alarm(tx, "resolved", alarm, previous)
                    else:
                        alarm.work_order_id = None
                        emit_alarm(tx, "updated", alarm, previous)
            moved = work_order_to_proto(row)
            _emit(tx, "transitioned", moved, cover)
            return moved
