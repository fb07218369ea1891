"""Faults: get, list (newest first), acknowledge by hand, and watch their changes.

Faults are raised, updated and cleared by the rules applied to controllers' readings and by the
heartbeat sweep (`state`); people acknowledge them here. Every change goes through
`fault_rows.emit_fault`, so the outbox holds each one as a `streetlights.fault.*` event, which is what
`WatchFaults` follows.

Tenancy: a fault copies its subject's owner, operator and maintainer (a feeder's are its cabinet's)
when it is raised. A caller sees it when its organization is one of them (or it acts city-wide), and
acknowledges it when it owns or operates the subject; to anyone else it does not exist (NOT_FOUND). A
maintainer that sees a fault but may not change it is refused with PERMISSION_DENIED.

Areas: the area's H3 cells select faults by the cell copied from their subject, and the subject's point
decides (a light's, a cabinet's, a feeder's cabinet's; a subject deleted since: the cell alone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

import grpc
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cityos.streetlights.v1 import faults_pb2, faults_pb2_grpc
from cityos_platform.areas import Area, AreaRegistry
from cityos_platform.db import Database
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cityos_platform.events import decode_cursor, encode_cursor, follow_ordered
from cityos_platform.interceptor import current_call
from cityos_platform.models import Outbox
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tenancy import Access, Caller, can_reach, is_city_wide, not_found, visible_clause
from cityos_streetlights.common import ID_RULE, RESOURCE_ID, Violations, name_id
from cityos_streetlights.fault_rows import ACKNOWLEDGED, CLEARED, emit_fault, fault_to_proto
from cityos_streetlights.models import CabinetRow, FaultRow, FeederRow, LightRow

KINDS = frozenset(value for value in faults_pb2.FaultKind.values() if value)
KIND_NAMES = ", ".join(name.removeprefix("FAULT_KIND_") for name in faults_pb2.FaultKind.keys()[1:])
SUBJECT_COLLECTIONS = ("lights", "feeders", "cabinets")
FAULT_EVENT_PREFIX = "streetlights.fault."
WATCH_BATCH = 500


def _violations(error: InvalidArgument) -> Violations:
    return [(violation.field, violation.description) for violation in error.violations]


def _kind_problems(kinds: Iterable[int]) -> Violations:
    return [
        (f"kinds[{index}]", f"must be a fault kind ({KIND_NAMES})")
        for index, kind in enumerate(kinds)
        if kind not in KINDS
    ]


def _subject_problems(subject: str) -> Violations:
    collection, _, subject_id = subject.partition("/")
    if collection not in SUBJECT_COLLECTIONS or not RESOURCE_ID.match(subject_id):
        return [
            ("subject", f"must look like lights/{{id}}, feeders/{{id}} or cabinets/{{id}}, the id {ID_RULE}")
        ]
    return []


async def subject_points(session: AsyncSession, subjects: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Where each subject stands (a feeder at its cabinet); subjects that no longer exist are left out."""
    ids: dict[str, set[str]] = {collection: set() for collection in SUBJECT_COLLECTIONS}
    for subject in subjects:
        collection, _, subject_id = subject.partition("/")
        if collection in ids:
            ids[collection].add(subject_id)
    points: dict[str, tuple[float, float]] = {}
    if ids["lights"]:
        for light_id, latitude, longitude in await session.execute(
            select(LightRow.light_id, LightRow.latitude, LightRow.longitude).where(
                LightRow.light_id.in_(sorted(ids["lights"]))
            )
        ):
            points[f"lights/{light_id}"] = (latitude, longitude)
    if ids["cabinets"]:
        for cabinet_id, latitude, longitude in await session.execute(
            select(CabinetRow.cabinet_id, CabinetRow.latitude, CabinetRow.longitude).where(
                CabinetRow.cabinet_id.in_(sorted(ids["cabinets"]))
            )
        ):
            points[f"cabinets/{cabinet_id}"] = (latitude, longitude)
    if ids["feeders"]:
        for feeder_id, latitude, longitude in await session.execute(
            select(FeederRow.feeder_id, CabinetRow.latitude, CabinetRow.longitude)
            .join(CabinetRow, CabinetRow.cabinet_id == FeederRow.cabinet_id)
            .where(FeederRow.feeder_id.in_(sorted(ids["feeders"])))
        ):
            points[f"feeders/{feeder_id}"] = (latitude, longitude)
    return points


def _inside(area: Area | None, points: dict[str, tuple[float, float]], subject: str) -> bool:
    if area is None:
        return True
    point = points.get(subject)
    return point is None or area.contains(*point)  # gone since: the cell (in SQL) decided


class FaultServicer(faults_pb2_grpc.FaultServiceServicer):
    def __init__(
        self, db: Database, page_tokens: PageTokens, areas: AreaRegistry, *, poll_interval_s: float = 1.0
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.poll_interval_s = poll_interval_s

    def _area(self, spec: str, problems: Violations) -> Area | None:
        """The area named (malformed: a problem; an unknown name: NOT_FOUND, as everywhere)."""
        if not spec:
            return None
        try:
            return self.areas.resolve(spec)
        except InvalidArgument as error:
            problems += _violations(error)
            return None

    # -- reading ------------------------------------------------------------------------------------

    async def GetFault(
        self, request: faults_pb2.GetFaultRequest, context: grpc.aio.ServicerContext
    ) -> faults_pb2.Fault:
        fault_id = name_id(request.name, "faults")
        async with self.db.read() as session:
            row = await session.get(FaultRow, fault_id)
        if row is None or not can_reach(row, current_call().principal):
            raise not_found("fault", request.name)
        return fault_to_proto(row)

    async def ListFaults(
        self, request: faults_pb2.ListFaultsRequest, context: grpc.aio.ServicerContext
    ) -> faults_pb2.ListFaultsResponse:
        """Newest first: by raise time, then by id (both descending), in keyset pages. With an area, the
        cells select candidates and the subject's point decides, so a page may come out short."""
        caller = current_call().principal
        problems: Violations = []
        size = 0
        try:
            size = page_size(request.page_size)
        except InvalidArgument as error:
            problems += _violations(error)
        if request.subject:
            problems += _subject_problems(request.subject)
        problems += _kind_problems(request.kinds)
        area = self._area(request.area, problems)
        if problems:
            raise InvalidArgument.many(problems)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = select(FaultRow).where(visible_clause(FaultRow, caller))
        if request.subject:
            statement = statement.where(FaultRow.subject == request.subject)
        if request.kinds:
            statement = statement.where(FaultRow.kind.in_(sorted(set(request.kinds))))
        if request.open_only:
            statement = statement.where(FaultRow.state != CLEARED)
        if area is not None:
            statement = statement.where(FaultRow.area_cell.in_(sorted(area.cells)))
        if position:
            after_time, after_id = datetime.fromisoformat(position["time"]), position["id"]
            statement = statement.where(
                or_(
                    FaultRow.raise_time < after_time,
                    and_(FaultRow.raise_time == after_time, FaultRow.fault_id < after_id),
                )
            )
        statement = statement.order_by(FaultRow.raise_time.desc(), FaultRow.fault_id.desc()).limit(size + 1)
        async with self.db.read() as session:
            rows = list((await session.scalars(statement)).all())
            token = ""
            if len(rows) > size:
                rows = rows[:size]
                token = self.page_tokens.issue(
                    subject=caller.subject,
                    organization=caller.organization,
                    request=request,
                    position={"time": rows[-1].raise_time.isoformat(), "id": rows[-1].fault_id},
                )
            points = await subject_points(session, {row.subject for row in rows}) if area is not None else {}
        faults = [fault_to_proto(row) for row in rows if _inside(area, points, row.subject)]
        return faults_pb2.ListFaultsResponse(faults=faults, next_page_token=token)

    # -- changing -----------------------------------------------------------------------------------

    async def AcknowledgeFault(
        self, request: faults_pb2.AcknowledgeFaultRequest, context: grpc.aio.ServicerContext
    ) -> faults_pb2.Fault:
        """OPEN → ACKNOWLEDGED, recording the caller's subject and the time. Acknowledging an
        acknowledged fault returns it unchanged (the first acknowledgement stands); a cleared one is
        refused (FAILED_PRECONDITION): the condition ended, there is nothing to take."""
        fault_id = name_id(request.name, "faults")
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await tx.session.get(FaultRow, fault_id, with_for_update=True)
            if row is None or not can_reach(row, caller):
                raise not_found("fault", request.name)
            if not can_reach(row, caller, Access.WRITE):
                raise PermissionDenied(
                    f"{request.name} is a fault of something your organization maintains; its owner or "
                    "operator acknowledges it",
                    reason="FAULT_READ_ONLY",
                    metadata={"name": request.name},
                )
            if row.state == CLEARED:
                raise FailedPrecondition(
                    f"{request.name} is cleared (the condition ended); there is nothing to acknowledge",
                    reason="FAULT_CLEARED",
                    metadata={"name": request.name},
                )
            if row.state == ACKNOWLEDGED:
                return fault_to_proto(row)
            previous = row.state
            row.state = ACKNOWLEDGED
            row.acknowledged_by = caller.subject
            row.acknowledge_time = row.update_time = tx.now
            return emit_fault(tx, "acknowledged", row, previous)

    # -- watching -----------------------------------------------------------------------------------

    async def WatchFaults(
        self, request: faults_pb2.WatchFaultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[faults_pb2.WatchFaultsResponse]:
        """The fault changes committed after the cursor (empty: from now), then each as it commits, for
        the faults the caller sees, in the area, of the kinds asked for. Each response carries the
        cursor after that change: resuming from it sends nothing twice."""
        problems: Violations = []
        after = 0
        try:
            after = decode_cursor(request.after_cursor)
        except InvalidArgument as error:
            problems += _violations(error)
        problems += _kind_problems(request.kinds)
        area = self._area(request.area, problems)
        if problems:
            raise InvalidArgument.many(problems)
        if not request.after_cursor:
            after = await self.db.last_sequence()
        watch = _FaultWatch(self.db, current_call().principal, area, frozenset(request.kinds))
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


class _FaultWatch:
    """One WatchFaults stream's filters: SQL narrows the outbox to fault events (of the caller's
    organization unless it acts city-wide, in the area's cells); the fault rows and the subjects'
    points decide the rest."""

    def __init__(self, db: Database, caller: Caller, area: Area | None, kinds: frozenset[int]) -> None:
        self.db = db
        self.caller = caller
        self.city_wide = is_city_wide(caller)
        self.area = area
        self.kinds = kinds

    def conditions(self) -> list[Any]:
        conditions: list[Any] = [Outbox.type.startswith(FAULT_EVENT_PREFIX)]
        if self.area is not None:
            conditions.append(Outbox.area_cell.in_(sorted(self.area.cells)))
        return conditions

    async def select(self, rows: Sequence[Outbox]) -> list[faults_pb2.WatchFaultsResponse]:
        changes: list[tuple[Outbox, faults_pb2.FaultChanged]] = []
        for row in rows:
            changed = faults_pb2.FaultChanged.FromString(row.payload)
            if self.kinds and changed.fault.kind not in self.kinds:
                continue
            changes.append((row, changed))
        if not changes:
            return []
        fault_ids = sorted({changed.fault.name.partition("/")[2] for _, changed in changes})
        async with self.db.read() as session:
            faults = {
                fault.fault_id: fault
                for fault in (
                    await session.scalars(select(FaultRow).where(FaultRow.fault_id.in_(fault_ids)))
                ).all()
            }
            points = (
                await subject_points(session, {changed.fault.subject for _, changed in changes})
                if self.area is not None
                else {}
            )
        responses = []
        for row, changed in changes:
            fault = faults.get(changed.fault.name.partition("/")[2])
            if fault is None:  # gone since: its owner (the event's) still sees what happened
                visible = self.city_wide or row.owner_organization == self.caller.organization
            else:
                visible = can_reach(fault, self.caller)
            if visible and _inside(self.area, points, changed.fault.subject):
                responses.append(
                    faults_pb2.WatchFaultsResponse(
                        fault=changed.fault,
                        previous_state=changed.previous_state,
                        cursor=encode_cursor(row.seq),
                    )
                )
        return responses
