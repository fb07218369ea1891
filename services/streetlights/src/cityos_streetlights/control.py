"""Switching and dimming by hand (ControlService): a command over one light, a group, or the lights a
filter selects, carried out as a devices job, and the manual override it puts on those lights.

ControlLights resolves the lights the caller may change (its organization owns or operates them, or it
acts city-wide; a named light or group it cannot reach does not exist for it), at most 10,000 of them
(a devices job's explicit-target cap). Lights without a controller are counted and skipped. The job
`jobs/sl-<control_id>` sends `set_light {dim_level}` to every controller at the rollout rate and stops
at the abort threshold (cityos_devices.jobs). Only once the devices service created the job does one
transaction store the control and put the override on its lights: what is in force becomes the
command's level (source OVERRIDE) until `override_expire_time`, or, when that is unset, until the next
step of the light's schedule (never, for a light without a schedule). The schedule applier ends
expired overrides and applies the schedule again. A retry with the same request_id returns the first
answer; the job's own request_id is derived from ours, so a retry after a lost answer or a failed
commit creates no second job on the devices side either.

GetControl reads the job and keeps its latest state and counts on the control (when the devices
service cannot be reached it answers with the last ones it read; `update_time` says when). When the
job is ABORTED the lights keep their override: what was sent stays sent, and the lamps that obeyed
burn at the command's level until the override ends (CancelControl, EndOverride, or its expiry).
CancelControl stops the job and ends the control's override; EndOverride ends the overrides of any
selection of lights; either way their schedules take over again at the applier's next tick.

Controls belong to the caller's organization: its members see them, city-wide roles see all.
Events: `streetlights.control.created` (Control), `streetlights.override.started|ended`
(OverrideChanged; it names at most 1,000 lights — the control's `progress.lights` says how many).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import h3  # type: ignore[import-untyped]
from google.protobuf import duration_pb2, json_format
from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cityos.devices.v1 import devices_pb2
from cityos.streetlights.v1 import control_pb2, control_pb2_grpc, inventory_pb2
from cityos_platform.areas import AREA_CELL_RESOLUTION, Area, AreaRegistry
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from cityos_platform.idempotency import idempotent, request_fingerprint
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tenancy import Access, Caller, can_reach, is_city_wide, not_found, visible_clause
from cityos_streetlights import program
from cityos_streetlights.common import (
    ID_RULE,
    RESOURCE_ID,
    Violations,
    emit,
    finite,
    name_id,
    reference_problem,
    stamp,
)
from cityos_streetlights.devices import DeviceJobs
from cityos_streetlights.metrics import DIM_LEVEL, SET_LIGHT
from cityos_streetlights.models import ControlRow, GroupRow, LightRow, ScheduleRow
from cityos_streetlights.settings import StreetlightsSettings

log = logging.getLogger(__name__)

# A devices job names at most this many devices explicitly.
MAX_LIGHTS = 10_000
# Its id is `sl-<control_id>` and at most 63 characters.
JOB_PREFIX = "sl-"
MAX_CONTROL_ID = 63 - len(JOB_PREFIX)
MAX_OVERRIDE = timedelta(days=30)
TTL_RANGE = (timedelta(seconds=1), timedelta(days=7))
DEFAULT_TTL = timedelta(hours=1)
MAX_ROLLOUT = 100_000
# How many light names an OverrideChanged event lists.
EVENT_LIGHTS = 1_000
MAX_STREET = 200
MAX_AREA = 200
# An `h3:` cell this fine or finer is selected in SQL (its resolution-9 descendants); a coarser one by
# reading the candidates' cells.
MIN_CHILDREN_RESOLUTION = 6
# Lights loaded per IN (…) list.
CHUNK = 2_000

OVERRIDE = int(inventory_pb2.CONTROL_SOURCE_OVERRIDE)
UNSPECIFIED_SOURCE = int(inventory_pb2.CONTROL_SOURCE_UNSPECIFIED)
EMPTY = int(control_pb2.CONTROL_STATE_EMPTY)
RUNNING = int(control_pb2.CONTROL_STATE_RUNNING)
STATE_OF_JOB = {
    int(devices_pb2.JOB_STATE_SCHEDULED): RUNNING,
    int(devices_pb2.JOB_STATE_RUNNING): RUNNING,
    int(devices_pb2.JOB_STATE_SUCCEEDED): int(control_pb2.CONTROL_STATE_SUCCEEDED),
    int(devices_pb2.JOB_STATE_ABORTED): int(control_pb2.CONTROL_STATE_ABORTED),
    int(devices_pb2.JOB_STATE_CANCELLED): int(control_pb2.CONTROL_STATE_CANCELLED),
    int(devices_pb2.JOB_STATE_EXPIRED): int(control_pb2.CONTROL_STATE_EXPIRED),
}
PROGRESS_KEYS = ("total", "started", "succeeded", "failed")


# -- the selector ----------------------------------------------------------------------------------


def selector_problems(selector: control_pb2.LightSelector, field: str) -> Violations:
    """What is wrong with a LightSelector: exactly one of light, group, or a filter."""
    filtering = bool(selector.area or selector.street or selector.filter_group)
    chosen = sum((bool(selector.light), bool(selector.group), filtering))
    if chosen != 1:
        return [(field, "set exactly one of light, group, or a filter (area, street, filter_group)")]
    problems: Violations = []
    problems += reference_problem(selector.light, "lights", f"{field}.light")
    problems += reference_problem(selector.group, "groups", f"{field}.group")
    problems += reference_problem(selector.filter_group, "groups", f"{field}.filter_group")
    if selector.filter_group and not (selector.area or selector.street):
        problems.append(
            (f"{field}.filter_group", "narrows an area or street filter; to select a whole group use group")
        )
    if len(selector.street) > MAX_STREET:
        problems.append((f"{field}.street", f"at most {MAX_STREET} characters"))
    if len(selector.area) > MAX_AREA:
        problems.append((f"{field}.area", f"at most {MAX_AREA} characters"))
    elif selector.area.startswith("h3:") and not h3.is_valid_cell(selector.area.removeprefix("h3:")):
        problems.append((f"{field}.area", "h3:<cell> needs a valid H3 cell index"))
    return problems


def selector_to_json(selector: control_pb2.LightSelector) -> dict[str, Any]:
    return json_format.MessageToDict(selector, preserving_proto_field_name=True)


class Selection:
    """Resolves a LightSelector to the lights a caller may change. `area` is a district name or
    `bbox:…` (the light's point inside), or `h3:<cell>`: for a cell as fine as the lights' own cells
    (resolution 9) or coarser, the lights whose cell lies in it by the H3 hierarchy; for a finer one,
    the lights whose point lies in it."""

    def __init__(self, areas: AreaRegistry) -> None:
        self.areas = areas

    def area(self, spec: str, field: str) -> Area | None:
        """The named or bbox area (checked before any database work), None for none or an H3 cell."""
        if not spec or spec.startswith("h3:"):
            return None
        return self.areas.resolve(spec, field=field)

    async def lights(
        self,
        session: AsyncSession,
        caller: Caller,
        selector: control_pb2.LightSelector,
        field: str,
        *,
        limit: int | None = MAX_LIGHTS,
        overridden_only: bool = False,
        lock: bool = False,
    ) -> list[LightRow]:
        """The selected lights the caller may write, by id; NOT_FOUND for a named light or group it
        cannot reach; FAILED_PRECONDITION TOO_MANY_LIGHTS past `limit`."""
        if selector.light:
            row = await session.get(LightRow, name_id(selector.light, "lights", f"{field}.light"))
            if row is None or not can_reach(row, caller, Access.WRITE):
                raise not_found("light", selector.light)
            if overridden_only and row.override_control_id is None:
                return []
            if lock:
                await session.refresh(row, with_for_update=True)
            return [row]
        clauses: list[ColumnElement[bool]] = [visible_clause(LightRow, caller, Access.WRITE)]
        if overridden_only:
            clauses.append(LightRow.override_control_id.is_not(None))
        group_name = selector.group or selector.filter_group
        if group_name:
            group_field = f"{field}.group" if selector.group else f"{field}.filter_group"
            group = await session.get(GroupRow, name_id(group_name, "groups", group_field))
            if group is None or not can_reach(group, caller):
                raise not_found("group", group_name)
            clauses.append(LightRow.group_id == group.group_id)
        if selector.street:
            clauses.append(LightRow.street == selector.street)
        area = self.area(selector.area, f"{field}.area")
        cell = selector.area.removeprefix("h3:") if selector.area.startswith("h3:") else ""
        resolution = h3.get_resolution(cell) if cell else 0
        if area is not None:
            clauses.append(LightRow.area_cell.in_(sorted(area.cells)))
        elif cell and resolution >= AREA_CELL_RESOLUTION:
            clauses.append(LightRow.area_cell == h3.cell_to_parent(cell, AREA_CELL_RESOLUTION))
        elif cell and resolution >= MIN_CHILDREN_RESOLUTION:  # at most 343 cells: let SQL select them
            clauses.append(LightRow.area_cell.in_(sorted(h3.cell_to_children(cell, AREA_CELL_RESOLUTION))))

        def inside(latitude: float, longitude: float, area_cell: str) -> bool:
            if area is not None:  # the cells select candidates; the polygon decides
                return area.contains(latitude, longitude)
            if not cell or MIN_CHILDREN_RESOLUTION <= resolution <= AREA_CELL_RESOLUTION:
                return True
            if resolution < MIN_CHILDREN_RESOLUTION:  # a coarse cell: its descendants, by the hierarchy
                return bool(h3.cell_to_parent(area_cell, resolution) == cell)
            return bool(h3.latlng_to_cell(latitude, longitude, resolution) == cell)  # a finer cell

        candidates = (
            await session.execute(
                select(LightRow.light_id, LightRow.latitude, LightRow.longitude, LightRow.area_cell)
                .where(*clauses)
                .order_by(LightRow.light_id)
            )
        ).all()
        ids = [
            light_id
            for light_id, latitude, longitude, area_cell in candidates
            if inside(latitude, longitude, area_cell)
        ]
        if limit is not None and len(ids) > limit:
            raise FailedPrecondition(
                f"the selection holds {len(ids)} lights; one command reaches at most {limit}: narrow it "
                "(a group, a street, a smaller area) and send several",
                reason="TOO_MANY_LIGHTS",
                metadata={"lights": str(len(ids)), "limit": str(limit)},
            )
        rows: list[LightRow] = []
        for start in range(0, len(ids), CHUNK):
            statement = select(LightRow).where(LightRow.light_id.in_(ids[start : start + CHUNK]))
            if lock:
                statement = statement.with_for_update()
            rows += (await session.scalars(statement.order_by(LightRow.light_id))).all()
        return rows


# -- what is in force ------------------------------------------------------------------------------


async def schedules_by_group(
    session: AsyncSession, group_ids: Iterable[str]
) -> dict[str, tuple[ScheduleRow, list[program.Step]]]:
    """group id -> (its schedule, the schedule's steps), for the groups that have one."""
    wanted = sorted(set(group_ids))
    if not wanted:
        return {}
    rows = (
        await session.execute(
            select(GroupRow.group_id, ScheduleRow)
            .join(ScheduleRow, ScheduleRow.schedule_id == GroupRow.schedule_id)
            .where(GroupRow.group_id.in_(wanted))
        )
    ).all()
    steps: dict[str, list[program.Step]] = {}
    result: dict[str, tuple[ScheduleRow, list[program.Step]]] = {}
    for group_id, schedule in rows:
        if schedule.schedule_id not in steps:
            steps[schedule.schedule_id] = program.steps_from_json(schedule.steps)
        result[group_id] = (schedule, steps[schedule.schedule_id])
    return result


def light_names(lights: Sequence[LightRow]) -> list[str]:
    """The names an OverrideChanged event lists (at most EVENT_LIGHTS)."""
    return [f"lights/{light.light_id}" for light in lights[:EVENT_LIGHTS]]


async def end_overrides(tx: Tx, lights: Sequence[LightRow], *, expired: bool = False) -> int:
    """Ends the overrides of `lights` (loaded for update): their schedules take over again at the
    applier's next tick (source UNSPECIFIED until then; the level stays what the lamps were told). One
    `streetlights.override.ended` per control. Returns how many overrides ended."""
    by_control: dict[str, list[LightRow]] = defaultdict(list)
    for light in lights:
        if light.override_control_id is not None:
            by_control[light.override_control_id].append(light)
    for control_id, ended in sorted(by_control.items()):
        control = await tx.session.get(ControlRow, control_id)
        for light in ended:
            light.override_control_id = None
            light.override_until = None
            light.desired_source = UNSPECIFIED_SOURCE
        owner = control.owner_organization if control is not None else ended[0].owner_organization
        emit(
            tx,
            "override.ended",
            control_pb2.OverrideChanged(
                control=f"controls/{control_id}", lights=light_names(ended), time=stamp(tx.now)
            ),
            subject=f"controls/{control_id}",
            owner=owner,
        )
        log.info(
            "override of controls/%s ended on %d light(s)%s",
            control_id,
            len(ended),
            " (expired)" if expired else "",
        )
    return sum(len(ended) for ended in by_control.values())


# -- conversions -----------------------------------------------------------------------------------


def control_to_proto(row: ControlRow) -> control_pb2.Control:
    progress = row.progress or {}
    control = control_pb2.Control(
        name=f"controls/{row.control_id}",
        selector=json_format.ParseDict(row.selector, control_pb2.LightSelector()),
        dim_level=row.dim_level,
        rollout_per_minute=row.rollout_per_minute,
        abort_failure_ratio=row.abort_failure_ratio,
        abort_min_finished=row.abort_min_finished,
        command_ttl=duration_pb2.Duration(seconds=row.command_ttl_s),
        state=row.state,  # type: ignore[arg-type]
        progress=control_pb2.ControlProgress(
            lights=row.lights,
            without_device=row.without_device,
            **{key: int(progress.get(key, 0)) for key in PROGRESS_KEYS},
        ),
        job=f"jobs/{row.job_id}" if row.job_id else "",
        requested_by=row.requested_by,
        owner_organization=row.owner_organization,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
    )
    if row.override_until is not None:
        control.override_expire_time.CopyFrom(stamp(row.override_until))
    return control


def take_job(row: ControlRow, job: devices_pb2.Job, now: datetime) -> None:
    """The job's state and counts onto the control, as read `now`."""
    row.state = STATE_OF_JOB.get(int(job.state), RUNNING)
    row.progress = {key: int(getattr(job.progress, key)) for key in PROGRESS_KEYS}
    row.update_time = now


def job_request_id(caller: Principal, request: control_pb2.ControlLightsRequest) -> str:
    """The devices CreateJob request_id for this ControlLights: the same for a retry of the same
    request by the same caller (with or without our request_id), different otherwise."""
    basis = "\x1f".join(
        (
            caller.organization,
            caller.subject,
            request.control_id,
            request.request_id,
            request_fingerprint(request),
        )
    )
    return "sl-" + hashlib.sha256(basis.encode()).hexdigest()[:40]


# -- the service -----------------------------------------------------------------------------------


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        areas: AreaRegistry,
        jobs: DeviceJobs | None,
        settings: StreetlightsSettings | None = None,
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.selection = Selection(areas)
        self.jobs = jobs
        self.settings = settings or StreetlightsSettings()

    def _require_jobs(self) -> DeviceJobs:
        if self.jobs is None:
            raise FailedPrecondition(
                "this deployment has no devices service configured (CITYOS_ENDPOINTS 'devices' and the "
                "service's client secret): lights cannot be switched or dimmed",
                reason="DEVICES_NOT_CONFIGURED",
            )
        return self.jobs

    @staticmethod
    def _visible(row: ControlRow | None, caller: Caller, name: str) -> ControlRow:
        if row is None or not (is_city_wide(caller) or row.owner_organization == caller.organization):
            raise not_found("control", name)
        return row

    # -- ControlLights ------------------------------------------------------------------------------

    def _problems(self, request: control_pb2.ControlLightsRequest, now: datetime) -> Violations:
        control = request.control
        problems: Violations = []
        if not RESOURCE_ID.match(request.control_id) or len(request.control_id) > MAX_CONTROL_ID:
            problems.append(
                ("control_id", f"must be {ID_RULE}, at most {MAX_CONTROL_ID} characters (its job is sl-<id>)")
            )
        if not request.HasField("control"):
            return [*problems, ("control", "is required")]
        problems += selector_problems(control.selector, "control.selector")
        if control.dim_level > 100:
            problems.append(("control.dim_level", "must be 0 (off) to 100"))
        if control.HasField("override_expire_time"):
            expire = control.override_expire_time
            moment = expire.seconds + expire.nanos / 1e9  # compared as numbers: any int64 is safe
            if not 0 <= expire.nanos < 1_000_000_000:
                problems.append(("control.override_expire_time", "is not a valid timestamp"))
            elif not now.timestamp() < moment <= (now + MAX_OVERRIDE).timestamp():
                problems.append(
                    ("control.override_expire_time", "must be in the future, at most 30 days ahead")
                )
        if control.rollout_per_minute > MAX_ROLLOUT:
            problems.append(("control.rollout_per_minute", f"at most {MAX_ROLLOUT} (0: all at once)"))
        if not finite(control.abort_failure_ratio) or not 0 <= control.abort_failure_ratio <= 1:
            problems.append(("control.abort_failure_ratio", "must be from 0 (never abort) to 1"))
        if control.abort_min_finished > MAX_LIGHTS:
            problems.append(("control.abort_min_finished", f"at most {MAX_LIGHTS}"))
        if control.HasField("command_ttl"):
            ttl = control.command_ttl
            shortest, longest = TTL_RANGE
            seconds = ttl.seconds + ttl.nanos / 1e9
            if not (
                0 <= ttl.nanos < 1_000_000_000
                and shortest.total_seconds() <= seconds <= longest.total_seconds()
            ):
                problems.append(("control.command_ttl", "from 1 second to 7 days"))
        return problems

    async def ControlLights(
        self, request: control_pb2.ControlLightsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.Control:
        caller = current_call().principal
        problems = self._problems(request, self.db.clock.now())
        area_field = "control.selector.area"
        if not problems:
            try:
                self.selection.area(request.control.selector.area, area_field)
            except InvalidArgument as error:
                problems += [(violation.field, violation.description) for violation in error.violations]
        if problems:
            raise InvalidArgument.many(problems)
        control = request.control
        control_id = request.control_id
        job_id = f"{JOB_PREFIX}{control_id}"
        ttl = control.command_ttl.ToTimedelta() if control.HasField("command_ttl") else DEFAULT_TTL
        requested_until = (
            control.override_expire_time.ToDatetime(tzinfo=UTC)
            if control.HasField("override_expire_time")
            else None
        )

        async def create(tx: Tx) -> control_pb2.Control:
            if await tx.session.get(ControlRow, control_id) is not None:
                raise AlreadyExists(f"controls/{control_id} already exists", reason="CONTROL_EXISTS")
            lights = await self.selection.lights(
                tx.session, caller, control.selector, "control.selector", lock=True
            )
            if not lights:
                raise FailedPrecondition(
                    "the selector matches no light your organization may switch",
                    reason="NO_LIGHTS",
                    metadata={"selector": json_format.MessageToJson(control.selector, indent=None)},
                )
            reached = [light for light in lights if light.device_id]
            row = ControlRow(
                control_id=control_id,
                selector=selector_to_json(control.selector),
                dim_level=control.dim_level,
                override_until=requested_until,
                rollout_per_minute=control.rollout_per_minute,
                abort_failure_ratio=control.abort_failure_ratio,
                abort_min_finished=control.abort_min_finished,
                command_ttl_s=int(ttl.total_seconds()),
                job_id=None,
                state=EMPTY,
                lights=len(lights),
                without_device=len(lights) - len(reached),
                progress=dict.fromkeys(PROGRESS_KEYS, 0),
                requested_by=caller.subject,
                owner_organization=caller.organization,
                create_time=tx.now,
                update_time=tx.now,
            )
            if reached:
                job = devices_pb2.Job(
                    command=SET_LIGHT,
                    parameters={DIM_LEVEL: str(control.dim_level)},
                    command_ttl=duration_pb2.Duration(seconds=int(ttl.total_seconds())),
                    target=devices_pb2.JobTarget(
                        devices=sorted(f"devices/{light.device_id}" for light in reached)
                    ),
                    rollout_per_minute=control.rollout_per_minute,
                    abort_failure_ratio=control.abort_failure_ratio,
                    abort_min_finished=control.abort_min_finished,
                )
                # Lights to reach need the devices service; a selection none of whose lights has a
                # controller is recorded as EMPTY without it.
                jobs = self._require_jobs()
                created = await jobs.create_job(job_id, job, job_request_id(caller, request))
                row.job_id = job_id
                take_job(row, created, tx.now)
                await self._override(tx, row, reached, requested_until)
            tx.session.add(row)
            result = control_to_proto(row)
            emit(tx, "control.created", result, subject=result.name, owner=caller.organization)
            if reached:
                changed = control_pb2.OverrideChanged(
                    control=result.name, lights=light_names(reached), dim_level=control.dim_level
                )
                if requested_until is not None:
                    changed.time.CopyFrom(stamp(requested_until))
                emit(tx, "override.started", changed, subject=result.name, owner=caller.organization)
            log.info(
                "controls/%s: %s at %d%% to %d light(s) (%d without controller) by %s",
                control_id,
                row.job_id or "no job",
                control.dim_level,
                len(lights),
                row.without_device,
                caller.subject,
            )
            return result

        return await idempotent(self.db, request, control_pb2.Control, create)

    async def _override(
        self, tx: Tx, row: ControlRow, lights: Sequence[LightRow], requested_until: datetime | None
    ) -> None:
        """Puts the control's override on `lights`: until the requested time, or else until the next
        step of each light's schedule (None: a light without a schedule keeps it until it is ended)."""
        schedules = (
            {}
            if requested_until
            else await schedules_by_group(tx.session, (light.group_id for light in lights if light.group_id))
        )
        for light in lights:
            until = requested_until
            found = schedules.get(light.group_id or "")
            if until is None and found is not None:
                schedule, steps = found
                force = program.in_force(steps, schedule.time_zone, light.latitude, light.longitude, tx.now)
                until = force.next_change if force is not None else None
            light.desired_level = row.dim_level
            light.desired_source = OVERRIDE
            light.desired_since = tx.now
            light.desired_schedule_id = None
            light.desired_step = None
            light.next_change_time = None
            light.override_control_id = row.control_id
            light.override_until = until

    # -- reading ------------------------------------------------------------------------------------

    async def GetControl(
        self, request: control_pb2.GetControlRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.Control:
        caller = current_call().principal
        control_id = name_id(request.name, "controls")
        async with self.db.read() as session:
            row = self._visible(await session.get(ControlRow, control_id), caller, request.name)
        if row.job_id is None or self.jobs is None:
            return control_to_proto(row)
        try:
            job = await self.jobs.get_job(f"jobs/{row.job_id}")
        except (Unavailable, FailedPrecondition) as error:
            # The last state read stands; update_time says how old it is.
            log.warning(
                "controls/%s: its job could not be read (%s); answering with the last state",
                control_id,
                error,
            )
            return control_to_proto(row)
        async with self.db.transaction() as tx:
            locked = await tx.session.get(ControlRow, control_id, with_for_update=True)
            if locked is None:  # not deletable, but stay correct
                raise not_found("control", request.name)
            take_job(locked, job, tx.now)
            return control_to_proto(locked)

    async def ListControls(
        self, request: control_pb2.ListControlsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListControlsResponse:
        """Newest first (creation time, then id, both descending), in keyset pages; the state and counts
        as last read from the jobs (GetControl reads them afresh)."""
        caller = current_call().principal
        size = page_size(request.page_size)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = select(ControlRow)
        if not is_city_wide(caller):
            statement = statement.where(ControlRow.owner_organization == caller.organization)
        if position:
            after_time = datetime.fromisoformat(position["time"])
            statement = statement.where(
                or_(
                    ControlRow.create_time < after_time,
                    and_(ControlRow.create_time == after_time, ControlRow.control_id < position["id"]),
                )
            )
        statement = statement.order_by(ControlRow.create_time.desc(), ControlRow.control_id.desc()).limit(
            size + 1
        )
        async with self.db.read() as session:
            rows = list((await session.scalars(statement)).all())
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"time": rows[-1].create_time.isoformat(), "id": rows[-1].control_id},
            )
        return control_pb2.ListControlsResponse(
            controls=[control_to_proto(row) for row in rows], next_page_token=token
        )

    # -- ending -------------------------------------------------------------------------------------

    async def CancelControl(
        self, request: control_pb2.CancelControlRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.Control:
        caller = current_call().principal
        control_id = name_id(request.name, "controls")
        async with self.db.read() as session:
            row = self._visible(await session.get(ControlRow, control_id), caller, request.name)
        job: devices_pb2.Job | None = None
        if row.job_id is not None:
            # The job first: when the devices service is away, nothing changes here (retry).
            job = await self._require_jobs().cancel_job(f"jobs/{row.job_id}")
        async with self.db.transaction() as tx:
            locked = await tx.session.get(ControlRow, control_id, with_for_update=True)
            if locked is None:
                raise not_found("control", request.name)
            if job is not None:
                take_job(locked, job, tx.now)
            lights = (
                await tx.session.scalars(
                    select(LightRow)
                    .where(LightRow.override_control_id == control_id)
                    .order_by(LightRow.light_id)
                    .with_for_update()
                )
            ).all()
            await end_overrides(tx, lights)
            return control_to_proto(locked)

    async def EndOverride(
        self, request: control_pb2.EndOverrideRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.EndOverrideResponse:
        caller = current_call().principal
        problems = selector_problems(request.selector, "selector")
        if not problems:
            try:
                self.selection.area(request.selector.area, "selector.area")
            except InvalidArgument as error:
                problems += [(violation.field, violation.description) for violation in error.violations]
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            lights = await self.selection.lights(
                tx.session, caller, request.selector, "selector", limit=None, overridden_only=True, lock=True
            )
            ended = await end_overrides(tx, lights)
        return control_pb2.EndOverrideResponse(ended=ended)
