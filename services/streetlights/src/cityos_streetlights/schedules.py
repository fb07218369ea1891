"""Schedules: dimming programs — create, get, list, update with a field mask, delete — and their
evaluation at a place on a date (EvaluateSchedule).

A schedule is 1 to 24 steps, each a fixed local time or a sun anchor (sunset, sunrise, civil dusk or
dawn) plus an offset, and the level from then on; `program` evaluates them (see its docstring for the
semantics). Groups name a schedule; the schedule applier sets their lights step by step. A schedule
belongs to an organization like the rest of the inventory: its owner, operator and maintainer read it,
its owner and operator change it, and any other caller gets NOT_FOUND (`cityos_platform.tenancy`). A
schedule a group names cannot be deleted (FAILED_PRECONDITION, SCHEDULE_IN_USE). Every change is an
event (`streetlights.schedule.created|updated|deleted`, the Schedule as payload) of the owner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import func, select

from cityos.common.v1 import resources_pb2
from cityos.streetlights.v1 import schedules_pb2, schedules_pb2_grpc
from cityos_platform.db import Database, Tx
from cityos_platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Access, can_reach, not_found, owner_for_new, visible_clause
from cityos_streetlights import program, solar
from cityos_streetlights.common import (
    ID_RULE,
    RESOURCE_ID,
    Violations,
    check_etag,
    emit,
    location_problems,
    mask,
    name_id,
    new_etag,
    ref_id,
    reference_problem,
    stamp,
)
from cityos_streetlights.models import GroupRow, LightRow, ScheduleRow

SCHEDULE_UPDATABLE = {"display_name", "time_zone", "steps"}
DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# NOAA's solar equations hold from 1901 to 2099.
FIRST_DATE, LAST_DATE = date(1901, 1, 1), date(2099, 12, 31)
# Groups named in a SCHEDULE_IN_USE refusal (those the caller reaches).
NAMED_GROUPS = 10


# -- validation ---------------------------------------------------------------------------------------


def schedule_problems(schedule: schedules_pb2.Schedule, paths: Sequence[str] | None) -> Violations:
    """The problems of the fields being set (all of them on create: `paths` None)."""

    def setting(path: str) -> bool:
        return paths is None or path in paths

    problems: Violations = []
    if setting("display_name") and not 1 <= len(schedule.display_name) <= 200:
        problems.append(("schedule.display_name", "must be 1 to 200 characters"))
    if setting("time_zone"):
        problems += program.time_zone_problems(
            schedule.time_zone or program.DEFAULT_TIME_ZONE, "schedule.time_zone"
        )
    if setting("steps"):
        # The zone is checked above when it is set; the steps alone do not depend on it.
        problems += program.step_problems(schedule.steps, program.DEFAULT_TIME_ZONE, "schedule")
    if paths is None:
        for role in ("owner_organization", "operator_organization", "maintainer_organization"):
            if len(getattr(schedule.ownership, role)) > 64:
                problems.append((f"schedule.ownership.{role}", "at most 64 characters"))
    return problems


def _date_problems(text: str) -> tuple[date | None, Violations]:
    problem = [("date", f"must be a date YYYY-MM-DD from {FIRST_DATE} to {LAST_DATE}")]
    if not DATE.match(text):
        return None, problem
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None, problem
    if not FIRST_DATE <= day <= LAST_DATE:
        return None, problem
    return day, []


# -- conversions --------------------------------------------------------------------------------------


def schedule_to_proto(row: ScheduleRow) -> schedules_pb2.Schedule:
    return schedules_pb2.Schedule(
        name=f"schedules/{row.schedule_id}",
        display_name=row.display_name,
        ownership=resources_pb2.Ownership(
            owner_organization=row.owner_organization,
            operator_organization=row.operator_organization,
            maintainer_organization=row.maintainer_organization,
        ),
        time_zone=row.time_zone,
        steps=program.protos_from_json(row.steps),
        etag=row.etag,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
    )


def _emit(tx: Tx, event: str, payload: schedules_pb2.Schedule, row: ScheduleRow) -> None:
    emit(tx, f"schedule.{event}", payload, subject=payload.name, owner=row.owner_organization)


class ScheduleServicer(schedules_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens) -> None:
        self.db = db
        self.page_tokens = page_tokens

    async def _writable(self, tx: Tx, schedule_id: str, name: str) -> ScheduleRow:
        row = await tx.session.get(ScheduleRow, schedule_id, with_for_update=True)
        if row is None or not can_reach(row, current_call().principal, Access.WRITE):
            raise not_found("schedule", name)
        return row

    # -- CRUD -------------------------------------------------------------------------------------------

    async def CreateSchedule(
        self, request: schedules_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        caller = current_call().principal
        schedule = request.schedule
        problems = schedule_problems(schedule, None)
        if not RESOURCE_ID.match(request.schedule_id):
            problems.append(("schedule_id", f"must be {ID_RULE}"))
        if problems:
            raise InvalidArgument.many(problems)
        owner = owner_for_new(caller, schedule.ownership.owner_organization)

        async def create(tx: Tx) -> schedules_pb2.Schedule:
            if await tx.session.get(ScheduleRow, request.schedule_id) is not None:
                raise AlreadyExists(
                    f"schedules/{request.schedule_id} already exists", reason="SCHEDULE_EXISTS"
                )
            row = ScheduleRow(
                schedule_id=request.schedule_id,
                display_name=schedule.display_name,
                time_zone=schedule.time_zone or program.DEFAULT_TIME_ZONE,
                steps=program.steps_to_json(schedule.steps),
                owner_organization=owner,
                operator_organization=schedule.ownership.operator_organization,
                maintainer_organization=schedule.ownership.maintainer_organization,
                etag=new_etag(),
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = schedule_to_proto(row)
            _emit(tx, "created", created, row)
            return created

        return await idempotent(self.db, request, schedules_pb2.Schedule, create)

    async def GetSchedule(
        self, request: schedules_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        schedule_id = name_id(request.name, "schedules")
        async with self.db.read() as session:
            row = await session.get(ScheduleRow, schedule_id)
        if row is None or not can_reach(row, current_call().principal):
            raise not_found("schedule", request.name)
        return schedule_to_proto(row)

    async def ListSchedules(
        self, request: schedules_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ListSchedulesResponse:
        size = page_size(request.page_size)
        statement = select(ScheduleRow).where(visible_clause(ScheduleRow, current_call().principal))
        rows, token = await keyset_page(
            self.db, self.page_tokens, request, statement, ScheduleRow.schedule_id, size=size
        )
        return schedules_pb2.ListSchedulesResponse(
            schedules=[schedule_to_proto(row) for row in rows], next_page_token=token
        )

    async def UpdateSchedule(
        self, request: schedules_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        schedule = request.schedule
        schedule_id = name_id(schedule.name, "schedules", "schedule.name")
        paths = mask(request.update_mask.paths, SCHEDULE_UPDATABLE)
        problems = schedule_problems(schedule, paths)
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await self._writable(tx, schedule_id, schedule.name)
            check_etag(schedule.etag, row.etag)
            if "display_name" in paths:
                row.display_name = schedule.display_name
            if "time_zone" in paths:
                row.time_zone = schedule.time_zone or program.DEFAULT_TIME_ZONE
            if "steps" in paths:
                row.steps = program.steps_to_json(schedule.steps)
            row.etag = new_etag()
            row.update_time = tx.now
            updated = schedule_to_proto(row)
            _emit(tx, "updated", updated, row)
            return updated

    async def DeleteSchedule(
        self, request: schedules_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        schedule_id = name_id(request.name, "schedules")
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await self._writable(tx, schedule_id, request.name)
            using = int(
                await tx.session.scalar(
                    select(func.count()).select_from(GroupRow).where(GroupRow.schedule_id == schedule_id)
                )
                or 0
            )
            if using:
                # Name only the groups the caller reaches: the others are their owners' business.
                visible = (
                    await tx.session.scalars(
                        select(GroupRow.group_id)
                        .where(GroupRow.schedule_id == schedule_id, visible_clause(GroupRow, caller))
                        .order_by(GroupRow.group_id)
                        .limit(NAMED_GROUPS)
                    )
                ).all()
                named = ", ".join(f"groups/{group_id}" for group_id in visible)
                raise FailedPrecondition(
                    f"{request.name} is the schedule of {using} group(s){f' ({named})' if named else ''}; "
                    "give them another schedule or none first",
                    reason="SCHEDULE_IN_USE",
                    metadata={"groups": str(using)},
                )
            _emit(tx, "deleted", schedule_to_proto(row), row)
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- evaluation -------------------------------------------------------------------------------------

    async def EvaluateSchedule(
        self, request: schedules_pb2.EvaluateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.EvaluateScheduleResponse:
        caller = current_call().principal
        schedule_id = name_id(request.name, "schedules")
        day, problems = _date_problems(request.date)
        has_location = request.HasField("location")
        if request.light and has_location:
            problems.append(("location", "give a light or a location, not both"))
        elif request.light:
            problems += reference_problem(request.light, "lights", "light")
        elif has_location:
            problems += location_problems(request.location, True, "location")
        else:
            problems.append(("light", "give a light (lights/{id}) or a location"))
        if problems or day is None:
            raise InvalidArgument.many(problems)
        async with self.db.read() as session:
            row = await session.get(ScheduleRow, schedule_id)
            if row is None or not can_reach(row, caller):
                raise not_found("schedule", request.name)
            if request.light:
                light = await session.get(LightRow, ref_id(request.light))
                if light is None or not can_reach(light, caller):
                    raise not_found("light", request.light)
                latitude, longitude = light.latitude, light.longitude
            else:
                latitude, longitude = request.location.latitude, request.location.longitude
        steps = program.steps_from_json(row.steps)
        found = program.occurrences(steps, row.time_zone, latitude, longitude, day)
        midnight = program.level_at_midnight(steps, row.time_zone, latitude, longitude, day)
        response = schedules_pb2.EvaluateScheduleResponse(
            steps=[
                schedules_pb2.EvaluatedStep(
                    step_index=occurrence.step_index,
                    time=stamp(occurrence.time),
                    dim_level=occurrence.dim_level,
                )
                for occurrence in found
            ],
            # Nothing in the two dates before (a sun-only program in polar night): off.
            level_at_midnight=midnight if midnight is not None else 0,
        )
        sun = solar.sun_times(latitude, longitude, day, row.time_zone)
        for field, value in (
            ("sunrise", sun.sunrise),
            ("sunset", sun.sunset),
            ("civil_dawn", sun.civil_dawn),
            ("civil_dusk", sun.civil_dusk),
        ):
            if value is not None:
                getattr(response, field).CopyFrom(stamp(value))
        return response
