"""The NGSI-LD view over the API: lights, groups and cabinets as Smart Data Models entities.

`cityos_streetlights.ngsild` is the pure mapping (dataclasses in, JSON-LD out, validated against the
models' schemas; its module doc lists every attribute); this module builds its dataclasses from the rows
and answers `NgsiLdService.GetEntity` / `ListEntities`.

- Tenancy is the inventory's: a caller sees the lights, groups and cabinets its organization owns,
  operates or maintains (city-wide roles: all); anything else is NOT_FOUND, like an id that exists
  nowhere. The lists an entity refers to are cut the same way: a group's `refStreetlight` (and the
  centroid that is its location) counts only the lights the caller reaches, a cabinet's
  `refStreetlightGroup` only the groups it reaches.
- A light's `status` is `defectiveLamp` while a LAMP_FAILURE fault is open on it, else its crew-reported
  status, else `ok`.
- A group's `switchingMode` comes from its schedule evaluated on today's date (in the schedule's time
  zone) at the group's location (`program_levels`): each stretch of the day at one level counts for the
  night when it overlaps the time from sunset + 30 minutes to sunrise - 30 minutes, and for the day when
  it overlaps sunrise + 30 minutes to sunset - 30 minutes (the half hours around sunrise and sunset are
  twilight and count for neither, so a program that switches on 15 minutes before sunset is not
  "day-ON"). Without a schedule, or on a date the sun does not rise or set there, it is not shown.
- A cabinet supplies the groups that name it as their cabinet and the groups of the lights on its
  feeders.
- Entities the models cannot describe truthfully are not served: a group with no (reachable) light and
  no cabinet has no location, a cabinet without a group or a working mode lacks what
  StreetlightControlCabinet requires. GetEntity answers FAILED_PRECONDITION (reason
  `ENTITY_INCOMPLETE`, metadata `missing`), ListEntities leaves them out (in SQL, so pages stay full).
- `area` (an area name, `h3:`, `bbox:`): lights and cabinets whose point is in it; groups with a
  reachable light in it (without lights: whose cabinet is in it). Cells select candidates in SQL, the
  polygon decides, so a page may come out short (as the inventory's lists do).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.protobuf import json_format
from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cityos.streetlights.v1 import faults_pb2, inventory_pb2, ngsild_pb2, ngsild_pb2_grpc, schedules_pb2
from cityos_platform.areas import Area, AreaRegistry
from cityos_platform.db import Database
from cityos_platform.errors import FailedPrecondition, InvalidArgument
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Caller, can_reach, not_found, visible_clause
from cityos_streetlights import ngsild, solar
from cityos_streetlights.common import ID_RULE, RESOURCE_ID
from cityos_streetlights.models import (
    FAULT_CLEARED,
    CabinetRow,
    FaultRow,
    GroupRow,
    LightModelRow,
    LightRow,
    ScheduleRow,
)

TYPES: Final = ngsild.ENTITY_TYPES
FORMATS: Final = frozenset(ngsild_pb2.EntityFormat.values())
POWER_STATE: Final[dict[int, ngsild.PowerState]] = {
    inventory_pb2.POWER_STATE_ON: "on",
    inventory_pb2.POWER_STATE_OFF: "off",
    inventory_pb2.POWER_STATE_LOW: "low",
    inventory_pb2.POWER_STATE_BOOTING_UP: "bootingUp",
}
REPORTED_STATUS: Final[dict[int, ngsild.Status]] = {
    inventory_pb2.LIGHT_STATUS_COLUMN_ISSUE: "columnIssue",
    inventory_pb2.LIGHT_STATUS_BROKEN_LANTERN: "brokenLantern",
}
WORKING_MODE: Final[dict[int, ngsild.WorkingMode]] = {
    inventory_pb2.WORKING_MODE_AUTOMATIC: "automatic",
    inventory_pb2.WORKING_MODE_MANUAL: "manual",
    inventory_pb2.WORKING_MODE_SEMIAUTOMATIC: "semiautomatic",
}
LAMP_FAILURE: Final = int(faults_pb2.FAULT_KIND_LAMP_FAILURE)
TWILIGHT: Final = timedelta(minutes=30)
DEFAULT_TIME_ZONE: Final = "Asia/Shanghai"


# -- rows -> entities -----------------------------------------------------------------------------------


def light_entity(row: LightRow, model: LightModelRow | None, lamp_failed: bool) -> ngsild.Streetlight:
    """A light row (its model, whether a lamp failure is open on it) as a Streetlight."""
    status: ngsild.Status = "defectiveLamp" if lamp_failed else REPORTED_STATUS.get(row.reported_status, "ok")
    return ngsild.Streetlight(
        id=row.light_id,
        name=row.display_name,
        location=ngsild.GeoPoint(row.latitude, row.longitude),
        status=status,
        date_created=row.create_time,
        date_modified=row.update_time,
        owner_organization=row.owner_organization or None,
        model_id=row.light_model_id,
        rated_power_w=model.rated_power_w if model is not None else None,
        cabinet_id=row.cabinet_id,
        feeder_id=row.feeder_id,
        group_id=row.group_id,
        device_id=row.device_id,
        street=row.street or None,
        pole_number=row.pole_number or None,
        location_category=row.location_category or None,
        lantern_height_m=row.lantern_height_m or None,
        last_lamp_change=row.last_lamp_change_time,
        reading_time=row.reading_time,
        power_state=POWER_STATE.get(row.power_state),
        dim_level=row.dim_level,
        power_w=row.power_w,
        voltage_v=row.voltage_v,
        current_a=row.current_a,
        power_factor=row.power_factor,
        energy_wh=row.energy_wh,
    )


def _steps(schedule: ScheduleRow) -> list[schedules_pb2.ScheduleStep]:
    return [
        json_format.ParseDict(step, schedules_pb2.ScheduleStep(), ignore_unknown_fields=True)
        for step in schedule.steps
    ]


def program_levels(
    steps: Sequence[schedules_pb2.ScheduleStep], time_zone: str, point: ngsild.GeoPoint, day: date
) -> tuple[set[int], set[int]] | None:
    """The levels (%) a program sets at night and by day on `day` at the place (see the module doc), or
    None when that cannot be told (no steps, an unknown time zone, no sunrise or sunset that day)."""
    try:
        zone = ZoneInfo(time_zone or DEFAULT_TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    sun = solar.sun_times(point.lat, point.lng, day, time_zone or DEFAULT_TIME_ZONE)
    if sun.sunrise is None or sun.sunset is None or not steps:
        return None
    events = {
        schedules_pb2.STEP_ANCHOR_SUNSET: sun.sunset,
        schedules_pb2.STEP_ANCHOR_SUNRISE: sun.sunrise,
        schedules_pb2.STEP_ANCHOR_CIVIL_DUSK: sun.civil_dusk,
        schedules_pb2.STEP_ANCHOR_CIVIL_DAWN: sun.civil_dawn,
    }
    timed: list[tuple[datetime, int]] = []
    for step in steps:
        if step.anchor == schedules_pb2.STEP_ANCHOR_FIXED_TIME:
            try:
                hours, minutes = (int(part) for part in step.local_time.split(":"))
                at = datetime.combine(day, time(hours, minutes), zone)
            except ValueError:
                return None
        else:
            base = events.get(step.anchor)
            if base is None:
                return None
            at = base + step.offset.ToTimedelta()
        timed.append((at.astimezone(UTC), int(step.dim_level)))
    timed.sort(key=lambda item: item[0])
    start = datetime.combine(day, time(0), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
    # The level at midnight: the last step at or before it, else the day's last step (it carries over).
    before = [level for at, level in timed if at <= start]
    marks = [(start, before[-1] if before else timed[-1][1])] + [
        (at, lvl) for at, lvl in timed if start < at < end
    ]
    day_window = (sun.sunrise + TWILIGHT, sun.sunset - TWILIGHT)
    night_windows = ((start, sun.sunrise - TWILIGHT), (sun.sunset + TWILIGHT, end))
    night: set[int] = set()
    daylight: set[int] = set()
    for index, (begin, level) in enumerate(marks):
        finish = marks[index + 1][0] if index + 1 < len(marks) else end
        if _overlaps((begin, finish), day_window):
            daylight.add(level)
        if any(_overlaps((begin, finish), window) for window in night_windows):
            night.add(level)
    return night, daylight


def _overlaps(first: tuple[datetime, datetime], second: tuple[datetime, datetime]) -> bool:
    return max(first[0], second[0]) < min(first[1], second[1])


def group_entity(
    row: GroupRow,
    lights: Sequence[LightRow],
    cabinet: CabinetRow | None,
    schedule: ScheduleRow | None,
    now: datetime,
) -> ngsild.StreetlightGroup | None:
    """A group row with its (reachable) lights, cabinet and schedule as a StreetlightGroup; None when it
    has no location (no light, no cabinet)."""
    location = ngsild.centroid(ngsild.GeoPoint(light.latitude, light.longitude) for light in lights)
    if location is None and cabinet is not None:
        location = ngsild.GeoPoint(cabinet.latitude, cabinet.longitude)
    if location is None:
        return None
    modes: tuple[str, ...] = ()
    if schedule is not None:
        zone = schedule.time_zone or DEFAULT_TIME_ZONE
        try:
            today = now.astimezone(ZoneInfo(zone)).date()
        except (ZoneInfoNotFoundError, ValueError):
            today = None
        levels = None if today is None else program_levels(_steps(schedule), zone, location, today)
        if levels is not None:
            modes = ngsild.switching_modes(*levels)
    desired = {light.desired_level for light in lights}
    feeders = {light.feeder_id for light in lights}
    level = desired.pop() if len(desired) == 1 else None
    feeder = feeders.pop() if len(feeders) == 1 else None
    return ngsild.StreetlightGroup(
        id=row.group_id,
        name=row.display_name,
        location=location,
        light_ids=tuple(sorted(light.light_id for light in lights)),
        cabinet_id=row.cabinet_id,
        schedule_id=row.schedule_id,
        description=row.description or None,
        power_state=ngsild.group_power_state(POWER_STATE.get(light.power_state) for light in lights),
        dim_level=level,
        switching_modes=modes,
        circuit_id=feeder,
        date_created=row.create_time,
        date_modified=row.update_time,
        owner_organization=row.owner_organization or None,
    )


def cabinet_entity(row: CabinetRow, group_ids: Sequence[str]) -> ngsild.StreetlightControlCabinet | None:
    """A cabinet row and the (reachable) groups it supplies as a StreetlightControlCabinet; None when
    the model cannot describe it (no group, no working mode)."""
    mode = WORKING_MODE.get(row.working_mode)
    if mode is None or not group_ids:
        return None
    return ngsild.StreetlightControlCabinet(
        id=row.cabinet_id,
        name=row.display_name,
        location=ngsild.GeoPoint(row.latitude, row.longitude),
        working_mode=mode,
        group_ids=tuple(sorted(set(group_ids))),
        serial_number=row.serial_number or None,
        maximum_power_w=row.maximum_power_w or None,
        device_id=row.device_id,
        reading_time=row.reading_time,
        voltage_l1_v=row.voltage_l1_v,
        voltage_l2_v=row.voltage_l2_v,
        voltage_l3_v=row.voltage_l3_v,
        active_power_w=row.active_power_w,
        energy_wh=row.energy_wh,
        power_factor=row.power_factor,
        date_created=row.create_time,
        date_modified=row.update_time,
        owner_organization=row.owner_organization or None,
    )


def render(entity: ngsild.Entity, form: int) -> str:
    document = (
        ngsild.key_values(entity)
        if form == ngsild_pb2.ENTITY_FORMAT_KEY_VALUES
        else ngsild.normalized(entity)
    )
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- what the caller reaches ------------------------------------------------------------------------------


def _reachable_lights_of_group(caller: Caller) -> ColumnElement[bool]:
    return exists(
        select(LightRow.light_id).where(
            LightRow.group_id == GroupRow.group_id, visible_clause(LightRow, caller)
        )
    )


def representable_group(caller: Caller) -> ColumnElement[bool]:
    """Groups with a location: a light the caller reaches, or a cabinet."""
    return or_(GroupRow.cabinet_id.is_not(None), _reachable_lights_of_group(caller))


def representable_cabinet(caller: Caller) -> ColumnElement[bool]:
    """Cabinets with a working mode and a group the caller reaches."""
    groups = select(GroupRow.group_id).where(visible_clause(GroupRow, caller))
    return and_(
        CabinetRow.working_mode.in_(sorted(WORKING_MODE)),
        or_(
            exists(
                select(GroupRow.group_id).where(
                    GroupRow.cabinet_id == CabinetRow.cabinet_id, visible_clause(GroupRow, caller)
                )
            ),
            exists(
                select(LightRow.light_id).where(
                    LightRow.cabinet_id == CabinetRow.cabinet_id, LightRow.group_id.in_(groups)
                )
            ),
        ),
    )


def _group_in_area(caller: Caller, area: Area) -> ColumnElement[bool]:
    cells = sorted(area.cells)
    light_inside = exists(
        select(LightRow.light_id).where(
            LightRow.group_id == GroupRow.group_id,
            visible_clause(LightRow, caller),
            LightRow.area_cell.in_(cells),
        )
    )
    cabinet_inside = GroupRow.cabinet_id.in_(
        select(CabinetRow.cabinet_id).where(CabinetRow.area_cell.in_(cells))
    )
    return or_(light_inside, and_(~_reachable_lights_of_group(caller), cabinet_inside))


def _parse_id(entity_id: str) -> tuple[str, str]:
    prefix = "urn:ngsi-ld:"
    kind, _, local = entity_id.removeprefix(prefix).partition(":")
    if not entity_id.startswith(prefix) or kind not in TYPES or not RESOURCE_ID.match(local):
        raise InvalidArgument.field("id", f"must be urn:ngsi-ld:<{'|'.join(TYPES)}>:<id>, the id {ID_RULE}")
    return kind, local


def _check_format(form: int) -> None:
    if form not in FORMATS:
        raise InvalidArgument.field("format", "must be one of " + ", ".join(ngsild_pb2.EntityFormat.keys()))


def _incomplete(entity_id: str, missing: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{entity_id} cannot be shown as a Smart Data Models entity: {why}",
        reason="ENTITY_INCOMPLETE",
        metadata={"id": entity_id, "missing": missing},
    )


class NgsiLdServicer(ngsild_pb2_grpc.NgsiLdServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, areas: AreaRegistry) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas

    # -- building entities from rows (one query per kind of related row, whatever the page size) ---------

    async def _lights(self, session: AsyncSession, rows: Sequence[LightRow]) -> list[ngsild.Streetlight]:
        models = {
            model.light_model_id: model
            for model in await session.scalars(
                select(LightModelRow).where(
                    LightModelRow.light_model_id.in_({row.light_model_id for row in rows})
                )
            )
        }
        failed = set(
            await session.scalars(
                select(FaultRow.subject).where(
                    FaultRow.subject.in_([f"lights/{row.light_id}" for row in rows]),
                    FaultRow.kind == LAMP_FAILURE,
                    FaultRow.state != FAULT_CLEARED,
                )
            )
        )
        return [
            light_entity(row, models.get(row.light_model_id), f"lights/{row.light_id}" in failed)
            for row in rows
        ]

    async def _group_lights(
        self, session: AsyncSession, rows: Sequence[GroupRow], caller: Caller
    ) -> dict[str, list[LightRow]]:
        lights: dict[str, list[LightRow]] = {row.group_id: [] for row in rows}
        statement = (
            select(LightRow)
            .where(LightRow.group_id.in_(list(lights)), visible_clause(LightRow, caller))
            .order_by(LightRow.light_id)
        )
        for light in await session.scalars(statement):
            lights[light.group_id or ""].append(light)
        return lights

    async def _groups(
        self, session: AsyncSession, rows: Sequence[GroupRow], caller: Caller
    ) -> list[ngsild.StreetlightGroup | None]:
        lights = await self._group_lights(session, rows, caller)
        cabinets = {
            cabinet.cabinet_id: cabinet
            for cabinet in await session.scalars(
                select(CabinetRow).where(
                    CabinetRow.cabinet_id.in_({row.cabinet_id for row in rows if row.cabinet_id})
                )
            )
        }
        schedules = {
            schedule.schedule_id: schedule
            for schedule in await session.scalars(
                select(ScheduleRow).where(
                    ScheduleRow.schedule_id.in_({row.schedule_id for row in rows if row.schedule_id})
                )
            )
        }
        now = self.db.clock.now()
        return [
            group_entity(
                row,
                lights[row.group_id],
                cabinets.get(row.cabinet_id or ""),
                schedules.get(row.schedule_id or ""),
                now,
            )
            for row in rows
        ]

    async def _cabinets(
        self, session: AsyncSession, rows: Sequence[CabinetRow], caller: Caller
    ) -> list[ngsild.StreetlightControlCabinet | None]:
        ids = [row.cabinet_id for row in rows]
        supplied: dict[str, set[str]] = {cabinet_id: set() for cabinet_id in ids}
        named = await session.execute(
            select(GroupRow.cabinet_id, GroupRow.group_id).where(
                GroupRow.cabinet_id.in_(ids), visible_clause(GroupRow, caller)
            )
        )
        fed = await session.execute(
            select(LightRow.cabinet_id, LightRow.group_id)
            .where(
                LightRow.cabinet_id.in_(ids),
                LightRow.group_id.in_(select(GroupRow.group_id).where(visible_clause(GroupRow, caller))),
            )
            .distinct()
        )
        for cabinet_id, group_id in [*named.all(), *fed.all()]:
            if cabinet_id in supplied and group_id:
                supplied[cabinet_id].add(group_id)
        return [cabinet_entity(row, sorted(supplied[row.cabinet_id])) for row in rows]

    # -- the RPCs ------------------------------------------------------------------------------------------

    async def GetEntity(
        self, request: ngsild_pb2.GetEntityRequest, context: grpc.aio.ServicerContext
    ) -> ngsild_pb2.GetEntityResponse:
        problems: list[tuple[str, str]] = []
        for check in (lambda: _parse_id(request.id), lambda: _check_format(request.format)):
            try:
                check()
            except InvalidArgument as error:
                problems += [(violation.field, violation.description) for violation in error.violations]
        if problems:
            raise InvalidArgument.many(problems)
        kind, local = _parse_id(request.id)
        caller = current_call().principal
        entity: ngsild.Entity | None
        async with self.db.read() as session:
            if kind == "Streetlight":
                light = await session.get(LightRow, local)
                if light is None or not can_reach(light, caller):
                    raise not_found("entity", request.id)
                entity = (await self._lights(session, [light]))[0]
            elif kind == "StreetlightGroup":
                group = await session.get(GroupRow, local)
                if group is None or not can_reach(group, caller):
                    raise not_found("entity", request.id)
                entity = (await self._groups(session, [group], caller))[0]
                if entity is None:
                    raise _incomplete(request.id, "location", "the group has no light and no cabinet")
            else:
                cabinet = await session.get(CabinetRow, local)
                if cabinet is None or not can_reach(cabinet, caller):
                    raise not_found("entity", request.id)
                entity = (await self._cabinets(session, [cabinet], caller))[0]
                if entity is None and cabinet.working_mode not in WORKING_MODE:
                    raise _incomplete(request.id, "workingMode", "the cabinet has no working mode")
                if entity is None:
                    raise _incomplete(request.id, "refStreetlightGroup", "the cabinet supplies no group")
        return ngsild_pb2.GetEntityResponse(entity_json=render(entity, request.format))

    async def ListEntities(
        self, request: ngsild_pb2.ListEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> ngsild_pb2.ListEntitiesResponse:
        problems: list[tuple[str, str]] = []
        if request.type not in TYPES:
            problems.append(("type", f"must be one of {', '.join(TYPES)}"))
        if request.format not in FORMATS:
            problems.append(("format", "must be one of " + ", ".join(ngsild_pb2.EntityFormat.keys())))
        if request.page_size < 0:
            problems.append(("page_size", "must not be negative"))
        if problems:
            raise InvalidArgument.many(problems)
        area = self.areas.resolve(request.area) if request.area else None
        size = page_size(request.page_size)
        caller = current_call().principal
        entities: Sequence[ngsild.Entity | None]
        if request.type == "Streetlight":
            statement = select(LightRow).where(visible_clause(LightRow, caller))
            if area is not None:
                statement = statement.where(LightRow.area_cell.in_(sorted(area.cells)))
            lights, token = await keyset_page(
                self.db, self.page_tokens, request, statement, LightRow.light_id, size=size
            )
            lights = [row for row in lights if area is None or area.contains(row.latitude, row.longitude)]
            async with self.db.read() as session:
                entities = await self._lights(session, lights)
        elif request.type == "StreetlightGroup":
            group_query = select(GroupRow).where(
                visible_clause(GroupRow, caller), representable_group(caller)
            )
            if area is not None:
                group_query = group_query.where(_group_in_area(caller, area))
            groups, token = await keyset_page(
                self.db, self.page_tokens, request, group_query, GroupRow.group_id, size=size
            )
            async with self.db.read() as session:
                if area is not None:
                    groups = await self._groups_inside(session, groups, caller, area)
                entities = await self._groups(session, groups, caller)
        else:
            cabinet_query = select(CabinetRow).where(
                visible_clause(CabinetRow, caller), representable_cabinet(caller)
            )
            if area is not None:
                cabinet_query = cabinet_query.where(CabinetRow.area_cell.in_(sorted(area.cells)))
            cabinets, token = await keyset_page(
                self.db, self.page_tokens, request, cabinet_query, CabinetRow.cabinet_id, size=size
            )
            cabinets = [row for row in cabinets if area is None or area.contains(row.latitude, row.longitude)]
            async with self.db.read() as session:
                entities = await self._cabinets(session, cabinets, caller)
        return ngsild_pb2.ListEntitiesResponse(
            # None: changed since the page was read (its last light or group went): left out.
            entities_json=[render(entity, request.format) for entity in entities if entity is not None],
            next_page_token=token,
        )

    async def _groups_inside(
        self, session: AsyncSession, rows: Sequence[GroupRow], caller: Caller, area: Area
    ) -> list[GroupRow]:
        """The groups with a reachable light in the area, or, without lights, whose cabinet is in it."""
        lights = await self._group_lights(session, rows, caller)
        cabinets: dict[str, CabinetRow] = {
            cabinet.cabinet_id: cabinet
            for cabinet in await session.scalars(
                select(CabinetRow).where(
                    CabinetRow.cabinet_id.in_({row.cabinet_id for row in rows if row.cabinet_id})
                )
            )
        }
        inside = []
        for row in rows:
            members = lights[row.group_id]
            cabinet = cabinets.get(row.cabinet_id or "")
            if members:
                if any(area.contains(light.latitude, light.longitude) for light in members):
                    inside.append(row)
            elif cabinet is not None and area.contains(cabinet.latitude, cabinet.longitude):
                inside.append(row)
        return inside


__all__ = [
    "NgsiLdServicer",
    "cabinet_entity",
    "group_entity",
    "light_entity",
    "program_levels",
    "render",
]
