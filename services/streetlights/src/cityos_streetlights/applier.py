"""The schedule applier: a loop (once per replica, every `schedule_interval_s`) that keeps what is in
force on every light in step with its group's schedule and sets it on the controllers' twins.

Each tick
1. ends the overrides whose time has come (`override_until` ≤ now; `streetlights.override.ended`), and
   lets go of lights that left their schedule (no group, or a group without one): source UNSPECIFIED;
2. for each group with a schedule — unless the group's cabinet is in MANUAL mode, and leaving out the
   lights of any cabinet in MANUAL mode and the lights under an override — computes the step in force at
   each light's place and instant (`program.in_force`: fixed local times, or the sun's times there).
   A light whose schedule, step or level differs from what it holds (or that was not on its schedule)
   gets source SCHEDULE, the level, the step, since when, and the next change;
3. sets the new level on the twins: the changed lights with a controller, grouped by (step, level),
   get ONE devices job each with the desired-state patch `{"dim_level": level}` (at most 10,000
   controllers per job; rolled out at `schedule_rollout_per_minute`), and one
   `streetlights.schedule.applied` (ScheduleApplied) per job. A light whose level stays (only the step
   moved) needs no job.

A group's changes commit only after its jobs were created, so when the devices service is away nothing
changes and the next tick tries again. A job's id is a digest of the group, step, level, the step's
occurrence and its controllers, and its request_id is that id: a tick retried after a lost answer or a
failed commit finds the same job instead of creating a second one.

To keep a tick cheap in a city of many lights, a group whose schedule is unchanged since the last tick
is only looked at for the lights that are due (their next change has come, or they are not on it); a
changed schedule (its etag), or the first tick of the process, looks at all of them.

Without a devices service (no `devices` endpoint) the applier still records what is in force on the
lights — the service shows the program — and says once in the log that no twin is updated.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import struct_pb2
from sqlalchemy import or_, select

from cityos.devices.v1 import devices_pb2
from cityos.streetlights.v1 import inventory_pb2, schedules_pb2
from cityos_platform.db import Database, Tx
from cityos_platform.errors import AlreadyExists, CityOSError
from cityos_platform.tasks import PeriodicTask
from cityos_streetlights import program
from cityos_streetlights.common import emit
from cityos_streetlights.control import MAX_LIGHTS, end_overrides
from cityos_streetlights.devices import DeviceJobs, DevicesUnavailable
from cityos_streetlights.metrics import DIM_LEVEL
from cityos_streetlights.models import CabinetRow, GroupRow, LightRow, ScheduleRow
from cityos_streetlights.settings import StreetlightsSettings

log = logging.getLogger(__name__)

SCHEDULE = int(inventory_pb2.CONTROL_SOURCE_SCHEDULE)
UNSPECIFIED_SOURCE = int(inventory_pb2.CONTROL_SOURCE_UNSPECIFIED)
MANUAL = int(inventory_pb2.WORKING_MODE_MANUAL)
JOB_PREFIX = "sls-"


@dataclass
class TickReport:
    """What one tick did."""

    overrides_ended: int = 0
    released: int = 0
    lights_applied: int = 0
    jobs: int = 0
    groups_failed: int = 0


def schedule_job_id(group_id: str, step: int, level: int, since: datetime, devices: list[str]) -> str:
    """The deterministic id of a schedule job (also its request_id)."""
    basis = "\x1f".join((group_id, str(step), str(level), since.isoformat(), ",".join(devices)))
    return JOB_PREFIX + hashlib.sha256(basis.encode()).hexdigest()[:40]


class ScheduleApplier:
    def __init__(self, db: Database, jobs: DeviceJobs | None, settings: StreetlightsSettings) -> None:
        self.db = db
        self.jobs = jobs
        self.settings = settings
        self._periodic = PeriodicTask("schedule applier", settings.schedule_interval_s, self.tick)
        # group id -> (schedule id, schedule etag) as last applied in full.
        self._seen: dict[str, tuple[str, str]] = {}
        self._said_no_jobs = False

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def tick(self) -> TickReport:
        report = TickReport()
        if self.jobs is None and not self._said_no_jobs:
            log.warning(
                "no devices service configured: schedules are recorded on the lights but no controller's "
                "twin is updated"
            )
            self._said_no_jobs = True
        async with self.db.transaction() as tx:
            report.overrides_ended = await self._end_expired(tx)
            report.released = await self._release(tx)
        async with self.db.read() as session:
            groups = (
                await session.execute(
                    select(
                        GroupRow.group_id, ScheduleRow.schedule_id, ScheduleRow.etag, CabinetRow.working_mode
                    )
                    .join(ScheduleRow, ScheduleRow.schedule_id == GroupRow.schedule_id)
                    .outerjoin(CabinetRow, CabinetRow.cabinet_id == GroupRow.cabinet_id)
                    .order_by(GroupRow.group_id)
                )
            ).all()
            manual = set(
                (
                    await session.scalars(
                        select(CabinetRow.cabinet_id).where(CabinetRow.working_mode == MANUAL)
                    )
                ).all()
            )
        for group_id, schedule_id, etag, mode in groups:
            if mode == MANUAL:
                continue
            full = self._seen.get(group_id) != (schedule_id, etag)
            try:
                lights, jobs = await self._apply_group(group_id, schedule_id, manual, full=full)
            except DevicesUnavailable as error:
                log.warning(
                    "schedules not applied (groups/%s and after): %s; next tick retries", group_id, error
                )
                report.groups_failed += 1
                break
            except CityOSError as error:  # the devices service refused a job: say so, go on with the others
                log.error("schedule of groups/%s not applied: %s", group_id, error)
                report.groups_failed += 1
                continue
            self._seen[group_id] = (schedule_id, etag)
            report.lights_applied += lights
            report.jobs += jobs
        return report

    # -- overrides and lights without a schedule --------------------------------------------------------

    @staticmethod
    async def _end_expired(tx: Tx) -> int:
        lights = (
            await tx.session.scalars(
                select(LightRow)
                .where(LightRow.override_control_id.is_not(None), LightRow.override_until <= tx.now)
                .order_by(LightRow.light_id)
                .with_for_update()
            )
        ).all()
        return await end_overrides(tx, lights, expired=True)

    @staticmethod
    async def _release(tx: Tx) -> int:
        """Lights on a schedule whose group has none any more (or that left their group): nothing is in
        force from a schedule; their level stays what the lamps were told."""
        lights = (
            await tx.session.scalars(
                select(LightRow)
                .outerjoin(GroupRow, GroupRow.group_id == LightRow.group_id)
                .where(
                    LightRow.desired_source == SCHEDULE,
                    or_(LightRow.group_id.is_(None), GroupRow.schedule_id.is_(None)),
                )
                .order_by(LightRow.light_id)  # the one lock order of lights everywhere
                .with_for_update(of=LightRow)
            )
        ).all()
        for light in lights:
            light.desired_source = UNSPECIFIED_SOURCE
            light.desired_schedule_id = None
            light.desired_step = None
            light.next_change_time = None
        return len(lights)

    # -- one group ----------------------------------------------------------------------------------

    async def _apply_group(
        self, group_id: str, schedule_id: str, manual: set[str], *, full: bool
    ) -> tuple[int, int]:
        """Applies the group's schedule in one transaction; (lights changed, jobs created)."""
        async with self.db.transaction() as tx:
            group = await tx.session.get(GroupRow, group_id)
            schedule = await tx.session.get(ScheduleRow, schedule_id)
            if group is None or schedule is None or group.schedule_id != schedule_id:
                return 0, 0  # changed since the groups were read: the next tick sees it
            steps = program.steps_from_json(schedule.steps)
            statement = select(LightRow).where(
                LightRow.group_id == group_id, LightRow.override_control_id.is_(None)
            )
            if manual:
                statement = statement.where(
                    or_(LightRow.cabinet_id.is_(None), LightRow.cabinet_id.not_in(sorted(manual)))
                )
            if not full:
                statement = statement.where(
                    or_(
                        LightRow.desired_source != SCHEDULE,
                        LightRow.desired_schedule_id.is_(None),
                        LightRow.desired_schedule_id != schedule_id,
                        LightRow.desired_step.is_(None),
                        LightRow.next_change_time.is_(None),
                        LightRow.next_change_time <= tx.now,
                    )
                )
            lights = (await tx.session.scalars(statement.order_by(LightRow.light_id).with_for_update())).all()
            changed: dict[tuple[int, int], list[tuple[LightRow, program.InForce]]] = defaultdict(list)
            for light in lights:
                force = program.in_force(steps, schedule.time_zone, light.latitude, light.longitude, tx.now)
                if force is None:  # nothing in force (a sun-only program near the poles): leave it
                    continue
                if (
                    light.desired_source == SCHEDULE
                    and light.desired_schedule_id == schedule_id
                    and light.desired_step == force.step_index
                    and light.desired_level == force.dim_level
                ):
                    light.next_change_time = force.next_change  # may have moved (an edit, a move)
                    continue
                changed[(force.step_index, force.dim_level)].append((light, force))
            jobs = 0
            for (step, level), items in sorted(changed.items()):
                jobs += await self._set(tx, group, schedule, step, level, items)
            return sum(len(items) for items in changed.values()), jobs

    async def _set(
        self,
        tx: Tx,
        group: GroupRow,
        schedule: ScheduleRow,
        step: int,
        level: int,
        items: list[tuple[LightRow, program.InForce]],
    ) -> int:
        """One (step, level) of a group: the jobs for the twins that need the level, then the lights."""
        since = min(force.since for _, force in items)
        # The twin needs the level unless it holds it from this schedule already (only the step moved).
        twins = sorted(
            light.device_id
            for light, _ in items
            if light.device_id and (light.desired_source != SCHEDULE or light.desired_level != level)
        )
        chunks = [twins[start : start + MAX_LIGHTS] for start in range(0, len(twins), MAX_LIGHTS)]
        jobs: list[tuple[str, int]] = []
        if self.jobs is not None:
            for chunk in chunks:
                job_id = schedule_job_id(group.group_id, step, level, since, chunk)
                patch = struct_pb2.Struct()
                patch.update({DIM_LEVEL: level})
                job = devices_pb2.Job(
                    desired_patch=patch,
                    target=devices_pb2.JobTarget(devices=[f"devices/{device}" for device in chunk]),
                    rollout_per_minute=self.settings.schedule_rollout_per_minute,
                )
                try:
                    created = await self.jobs.create_job(job_id, job, job_id)
                    name = created.name
                except AlreadyExists:  # its id is a digest of its contents: it is this very job
                    name = f"jobs/{job_id}"
                jobs.append((name, len(chunk)))
        for light, force in items:
            light.desired_source = SCHEDULE
            light.desired_level = force.dim_level
            light.desired_schedule_id = schedule.schedule_id
            light.desired_step = force.step_index
            light.desired_since = force.since
            light.next_change_time = force.next_change
        covered = sum(count for _, count in jobs)
        for name, count in jobs + ([("", len(items) - covered)] if len(items) > covered else []):
            emit(
                tx,
                "schedule.applied",
                schedules_pb2.ScheduleApplied(
                    schedule=f"schedules/{schedule.schedule_id}",
                    group=f"groups/{group.group_id}",
                    step_index=step,
                    dim_level=level,
                    light_count=count,
                    job=name,
                ),
                subject=f"groups/{group.group_id}",
                owner=group.owner_organization,
            )
        log.info(
            "groups/%s: step %d of schedules/%s (%d%%) in force on %d light(s), %d job(s)",
            group.group_id,
            step,
            schedule.schedule_id,
            level,
            len(items),
            len(jobs),
        )
        return len(jobs)
