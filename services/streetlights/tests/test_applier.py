"""The schedule applier against a real devices service: each tick puts the step in force on a group's
lights (fixed local times; sunset and sunrise at the lights' place) and sets the level on their
controllers' twins with one desired-state job per step; the next step follows when its time comes; a
retried tick creates no second job; an edited schedule is followed at once; lights of a cabinet in
MANUAL mode are left alone; overrides are respected until they expire; lights that leave their
schedule are let go; and when the devices service is away nothing changes until it is back. Without a
devices service the program is still recorded on the lights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from cityos.streetlights.v1 import control_pb2, inventory_pb2, schedules_pb2
from cityos_devices.models import JobRow
from cityos_platform.areas import cell_for
from cityos_platform.testing.status import stamp
from cityos_streetlights import program, solar
from cityos_streetlights.applier import schedule_job_id
from cityos_streetlights.models import CabinetRow, GroupRow, LightModelRow, LightRow, ScheduleRow

CENTER = (39.05, 115.95)
OWNER = "public-works"
SCHEDULE = inventory_pb2.CONTROL_SOURCE_SCHEDULE
OVERRIDE = inventory_pb2.CONTROL_SOURCE_OVERRIDE
UNSPECIFIED = inventory_pb2.CONTROL_SOURCE_UNSPECIFIED
SUNSET = schedules_pb2.STEP_ANCHOR_SUNSET
SUNRISE = schedules_pb2.STEP_ANCHOR_SUNRISE


# -- inventory straight into the database ---------------------------------------------------------


def _fixed(when: datetime, level: int) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(
        anchor=schedules_pb2.STEP_ANCHOR_FIXED_TIME, local_time=when.strftime("%H:%M"), dim_level=level
    )


def _sun(anchor: int, level: int) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(anchor=anchor, dim_level=level)  # type: ignore[arg-type]


async def _site(
    app: Any,
    steps: list[schedules_pb2.ScheduleStep],
    *,
    time_zone: str = "UTC",
    group: str = "g-1",
    cabinet_mode: int | None = None,
) -> None:
    """A lamp model, the schedule `s-<group>`, and `group` on it (behind cabinet `cab-<group>` in
    `cabinet_mode`, when given)."""
    now = app.clock.now()
    owned = {"owner_organization": OWNER, "etag": "e", "create_time": now, "update_time": now}
    async with app.db.transaction() as tx:
        if await tx.session.get(LightModelRow, "led-60") is None:
            tx.session.add(
                LightModelRow(
                    light_model_id="led-60",
                    display_name="LED",
                    lamp_technology=inventory_pb2.LAMP_TECHNOLOGY_LED,
                    rated_power_w=60.0,
                    **owned,
                )
            )
        tx.session.add(
            ScheduleRow(
                schedule_id=f"s-{group}",
                display_name="program",
                time_zone=time_zone,
                steps=program.steps_to_json(steps),
                **owned,
            )
        )
        cabinet = None
        if cabinet_mode is not None:
            cabinet = f"cab-{group}"
            tx.session.add(
                CabinetRow(
                    cabinet_id=cabinet,
                    display_name=cabinet,
                    working_mode=cabinet_mode,
                    circuits={},
                    latitude=CENTER[0],
                    longitude=CENTER[1],
                    area_cell=cell_for(*CENTER),
                    **owned,
                )
            )
        await tx.session.flush()
        tx.session.add(
            GroupRow(
                group_id=group, display_name=group, schedule_id=f"s-{group}", cabinet_id=cabinet, **owned
            )
        )


async def _light(
    app: Any, light_id: str, *, group: str | None = "g-1", device: str | None = None, **fields: Any
) -> None:
    now = app.clock.now()
    async with app.db.transaction() as tx:
        tx.session.add(
            LightRow(
                light_id=light_id,
                display_name=light_id,
                light_model_id="led-60",
                group_id=group,
                device_id=device,
                latitude=CENTER[0],
                longitude=CENTER[1],
                area_cell=cell_for(*CENTER),
                owner_organization=OWNER,
                controller_faults=[],
                etag="e",
                create_time=now,
                update_time=now,
                **fields,
            )
        )


async def _lamps(grid: Any, *ids: str, group: str = "g-1", **fields: Any) -> None:
    for light_id in ids:
        await grid.fleet.device(f"ctl-{light_id}", "ctl")
        await _light(grid.app, light_id, group=group, device=f"ctl-{light_id}", **fields)


async def _lights(app: Any) -> dict[str, LightRow]:
    async with app.db.read() as session:
        return {row.light_id: row for row in (await session.scalars(select(LightRow))).all()}


def _state(row: LightRow) -> tuple[Any, ...]:
    return (row.desired_source, row.desired_level, row.desired_schedule_id, row.desired_step)


async def _jobs(grid: Any) -> list[JobRow]:
    async with grid.fleet.app.db.read() as session:
        return list((await session.scalars(select(JobRow).order_by(JobRow.create_time, JobRow.job_id))).all())


async def _twin_level(grid: Any, light_id: str) -> Any:
    """The dim_level the controller receives with its next uplink (None: no new desired state)."""
    reply = await grid.fleet.uplink(f"ctl-{light_id}", on=1)
    return reply.twin.desired["dim_level"] if reply.HasField("twin") else None


def _evening_and_night(now: datetime) -> tuple[datetime, datetime]:
    """Two whole-minute times: the evening step two hours ago, the night step three hours ahead."""
    return (now - timedelta(hours=2)).replace(second=0), (now + timedelta(hours=3)).replace(second=0)


# -- the tests --------------------------------------------------------------------------------------


async def test_a_schedule_puts_its_steps_on_the_lights_and_their_twins(grid):
    applier = grid.app.applier
    evening, night = _evening_and_night(grid.clock.now())
    await _site(grid.app, [_fixed(evening, 60), _fixed(night, 0)])
    await _lamps(grid, "sl-1", "sl-2", "sl-3")
    await _light(grid.app, "sl-bare")  # no controller: what is in force is recorded all the same

    report = await applier.tick()
    assert (report.lights_applied, report.jobs) == (4, 1)
    lights = await _lights(grid.app)
    assert {_state(row) for row in lights.values()} == {(SCHEDULE, 60, "s-g-1", 0)}
    assert {(row.desired_since, row.next_change_time) for row in lights.values()} == {(evening, night)}
    assert [await _twin_level(grid, light) for light in ("sl-1", "sl-2", "sl-3")] == [60, 60, 60]
    [job] = await _jobs(grid)
    assert (job.desired_patch, sorted(job.target["devices"])) == (
        {"dim_level": 60},
        ["devices/ctl-sl-1", "devices/ctl-sl-2", "devices/ctl-sl-3"],
    )
    applied = []
    for event in await grid.events("streetlights.schedule.applied"):
        payload = schedules_pb2.ScheduleApplied()
        event.payload.Unpack(payload)
        applied.append(
            (payload.group, payload.step_index, payload.dim_level, payload.light_count, payload.job)
        )
    assert sorted(applied) == [("groups/g-1", 0, 60, 1, ""), ("groups/g-1", 0, 60, 3, f"jobs/{job.job_id}")]

    # Nothing more to do until the next step.
    grid.clock.advance(600)
    assert (await applier.tick()).lights_applied == 0
    assert len(await _jobs(grid)) == 1
    assert await _twin_level(grid, "sl-1") is None

    # The night step when its time comes.
    grid.clock.set(night + timedelta(seconds=1))
    report = await applier.tick()
    assert (report.lights_applied, report.jobs) == (4, 1)
    assert {_state(row) for row in (await _lights(grid.app)).values()} == {(SCHEDULE, 0, "s-g-1", 1)}
    assert await _twin_level(grid, "sl-2") == 0

    # An edited program is followed at once (not only at its next step).
    async with grid.app.db.transaction() as tx:
        await tx.session.execute(
            update(ScheduleRow)
            .where(ScheduleRow.schedule_id == "s-g-1")
            .values(steps=program.steps_to_json([_fixed(evening, 60), _fixed(night, 20)]), etag="e2")
        )
    await applier.tick()
    assert {row.desired_level for row in (await _lights(grid.app)).values()} == {20}
    assert await _twin_level(grid, "sl-3") == 20

    # A light that leaves its group leaves its schedule.
    async with grid.app.db.transaction() as tx:
        await tx.session.execute(update(LightRow).where(LightRow.light_id == "sl-bare").values(group_id=None))
    assert (await applier.tick()).released == 1
    bare = (await _lights(grid.app))["sl-bare"]
    assert (bare.desired_source, bare.desired_schedule_id, bare.next_change_time) == (UNSPECIFIED, None, None)


async def test_a_retried_tick_creates_no_second_job(grid):
    evening, night = _evening_and_night(grid.clock.now())
    await _site(grid.app, [_fixed(evening, 60), _fixed(night, 0)])
    await _lamps(grid, "sl-1", "sl-2")
    await grid.app.applier.tick()
    [job] = await _jobs(grid)
    # As if that tick's commit had been lost after the job was created: the lights hold nothing.
    async with grid.app.db.transaction() as tx:
        await tx.session.execute(
            update(LightRow).values(
                desired_source=0, desired_level=None, desired_schedule_id=None, desired_step=None
            )
        )
    report = await grid.app.applier.tick()
    assert (report.lights_applied, report.jobs) == (2, 1)
    assert [row.job_id for row in await _jobs(grid)] == [job.job_id]  # the same job, found again
    assert {_state(row) for row in (await _lights(grid.app)).values()} == {(SCHEDULE, 60, "s-g-1", 0)}


async def test_sunset_and_sunrise_steps_follow_the_sun_at_the_lights(grid):
    if abs(solar.elevation(*CENTER, grid.clock.now()) + 0.833) < 0.2:
        grid.clock.advance(3600)  # not right at sunrise or sunset: the oracle below is coarse
    await _site(grid.app, [_sun(SUNSET, 100), _sun(SUNRISE, 0)], time_zone="Asia/Shanghai")
    await _lamps(grid, "sl-1")

    def expected(when: datetime) -> int:  # the sun above the horizon (refraction included): off
        return 0 if solar.elevation(*CENTER, when) > -0.833 else 100

    await grid.app.applier.tick()
    light = (await _lights(grid.app))["sl-1"]
    assert light.desired_level == expected(grid.clock.now())
    assert await _twin_level(grid, "sl-1") == light.desired_level
    change = light.next_change_time
    assert change is not None
    # The sun crosses the horizon at the next change.
    assert expected(change - timedelta(minutes=2)) == light.desired_level
    assert expected(change + timedelta(minutes=2)) != light.desired_level

    grid.clock.set(change + timedelta(seconds=1))
    await grid.app.applier.tick()
    after = (await _lights(grid.app))["sl-1"]
    assert (after.desired_level, after.desired_since) == (100 - light.desired_level, change)
    assert await _twin_level(grid, "sl-1") == after.desired_level


async def test_lights_of_a_cabinet_in_manual_mode_are_left_alone(grid):
    evening, night = _evening_and_night(grid.clock.now())
    await _site(
        grid.app, [_fixed(evening, 60), _fixed(night, 0)], cabinet_mode=inventory_pb2.WORKING_MODE_MANUAL
    )
    await _lamps(grid, "sl-1")
    await _site(
        grid.app, [_fixed(evening, 70)], group="g-2", cabinet_mode=inventory_pb2.WORKING_MODE_AUTOMATIC
    )
    await _lamps(grid, "sl-2", group="g-2")
    await _lamps(grid, "sl-3", group="g-2", cabinet_id="cab-g-1")  # its own cabinet is the manual one

    report = await grid.app.applier.tick()
    assert (report.lights_applied, report.jobs) == (1, 1)
    lights = await _lights(grid.app)
    assert (lights["sl-1"].desired_source, lights["sl-3"].desired_source) == (UNSPECIFIED, UNSPECIFIED)
    assert _state(lights["sl-2"]) == (SCHEDULE, 70, "s-g-2", 0)

    async with grid.app.db.transaction() as tx:
        await tx.session.execute(
            update(CabinetRow).values(working_mode=inventory_pb2.WORKING_MODE_SEMIAUTOMATIC)
        )
    assert (await grid.app.applier.tick()).lights_applied == 2
    lights = await _lights(grid.app)
    assert (_state(lights["sl-1"]), _state(lights["sl-3"])) == (
        (SCHEDULE, 60, "s-g-1", 0),
        (SCHEDULE, 70, "s-g-2", 0),
    )


async def test_an_override_is_respected_until_it_expires(grid):
    now = grid.clock.now()
    evening = (now - timedelta(hours=2)).replace(second=0)
    late = (now + timedelta(minutes=30)).replace(second=0)
    await _site(grid.app, [_fixed(evening, 60), _fixed(late, 30)])
    await _lamps(grid, "sl-1", "sl-2")
    await grid.app.applier.tick()
    await grid.control.ControlLights(
        control_pb2.ControlLightsRequest(
            control_id="bright",
            control=control_pb2.Control(
                selector=control_pb2.LightSelector(light="lights/sl-1"),
                dim_level=100,
                override_expire_time=stamp(now + timedelta(hours=1)),
            ),
        ),
        metadata=grid.operator,
    )
    grid.clock.set(late + timedelta(seconds=1))  # the next step comes while the override holds
    await grid.app.applier.tick()
    lights = await _lights(grid.app)
    assert (lights["sl-1"].desired_source, lights["sl-1"].desired_level) == (OVERRIDE, 100)
    assert _state(lights["sl-2"]) == (SCHEDULE, 30, "s-g-1", 1)

    grid.clock.set(now + timedelta(hours=1))
    report = await grid.app.applier.tick()
    assert report.overrides_ended == 1
    assert _state((await _lights(grid.app))["sl-1"]) == (SCHEDULE, 30, "s-g-1", 1)
    assert await _twin_level(grid, "sl-1") == 30  # the schedule's level set on its twin again


async def test_when_the_devices_service_is_away_nothing_changes_until_it_is_back(grid):
    evening, night = _evening_and_night(grid.clock.now())
    await _site(grid.app, [_fixed(evening, 60), _fixed(night, 0)])
    await _lamps(grid, "sl-1")
    await grid.fleet.server.stop(grace=0)
    report = await grid.app.applier.tick()
    assert (report.groups_failed, report.lights_applied) == (1, 0)
    assert (await _lights(grid.app))["sl-1"].desired_source == UNSPECIFIED


async def test_without_a_devices_service_the_program_is_still_recorded(street):
    evening, night = _evening_and_night(street.clock.now())
    await _site(street.app, [_fixed(evening, 60), _fixed(night, 0)])
    await _light(street.app, "sl-1", device="ctl-1")
    assert street.app.jobs is None
    report = await street.app.applier.tick()
    assert (report.lights_applied, report.jobs) == (1, 0)
    assert _state((await _lights(street.app))["sl-1"]) == (SCHEDULE, 60, "s-g-1", 0)


def test_schedule_job_ids_are_digests_of_what_they_set():
    at = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)
    first = schedule_job_id("g-1", 0, 60, at, ["a", "b"])
    assert first == schedule_job_id("g-1", 0, 60, at, ["a", "b"])
    assert len(first) <= 63
    others = {
        schedule_job_id("g-2", 0, 60, at, ["a", "b"]),
        schedule_job_id("g-1", 1, 60, at, ["a", "b"]),
        schedule_job_id("g-1", 0, 61, at, ["a", "b"]),
        schedule_job_id("g-1", 0, 60, at + timedelta(days=1), ["a", "b"]),
        schedule_job_id("g-1", 0, 60, at, ["a"]),
    }
    assert first not in others
    assert len(others) == 5
