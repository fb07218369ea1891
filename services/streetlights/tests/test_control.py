"""STL-3: switching and dimming by hand (ControlService) carried out as a real devices job — staged at
the rollout rate, its progress and end state shown on the control, stopped at the abort threshold —
over exactly the selected lights (one light, a group, a street, an area, an H3 cell, combined filters),
as an override of the lights' schedules that ends at its expiry, on cancel, or by EndOverride. Also:
every bad field named, the caller's organization only, at most 10,000 lights, idempotent by
request_id, no devices service configured (FAILED_PRECONDITION) or reachable (UNAVAILABLE, retry)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import grpc
import h3
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from sqlalchemy import func, insert, select

from cityos.streetlights.v1 import control_pb2, inventory_pb2, schedules_pb2
from cityos_devices.models import JobRow
from cityos_platform.areas import cell_for
from cityos_platform.testing.status import detail, error_info, field_violations, refused, rich_status, stamp
from cityos_streetlights import program
from cityos_streetlights.models import ControlRow, GroupRow, LightModelRow, LightRow, ScheduleRow

ctl = control_pb2
CENTER = (39.05, 115.95)
OWNER = "public-works"
NEAR = "bbox:39.04,115.94,39.06,115.96"
OVERRIDE = inventory_pb2.CONTROL_SOURCE_OVERRIDE
SCHEDULE = inventory_pb2.CONTROL_SOURCE_SCHEDULE


# -- inventory straight into the database ---------------------------------------------------------


async def _model(app: Any) -> None:
    now = app.clock.now()
    async with app.db.transaction() as tx:
        if await tx.session.get(LightModelRow, "led-60") is None:
            tx.session.add(
                LightModelRow(
                    light_model_id="led-60",
                    display_name="LED 60 W",
                    lamp_technology=inventory_pb2.LAMP_TECHNOLOGY_LED,
                    rated_power_w=60.0,
                    owner_organization=OWNER,
                    etag="m",
                    create_time=now,
                    update_time=now,
                )
            )


async def _group(app: Any, group_id: str, *, owner: str = OWNER, schedule: str | None = None) -> None:
    now = app.clock.now()
    async with app.db.transaction() as tx:
        tx.session.add(
            GroupRow(
                group_id=group_id,
                display_name=group_id.upper(),
                schedule_id=schedule,
                owner_organization=owner,
                etag="g",
                create_time=now,
                update_time=now,
            )
        )


def _light_values(
    light_id: str,
    *,
    now: datetime,
    group: str | None = None,
    device: str | None = None,
    street: str = "",
    offset: float = 0.0,
    owner: str = OWNER,
) -> dict[str, Any]:
    latitude, longitude = CENTER[0], CENTER[1] + offset
    return {
        "light_id": light_id,
        "display_name": light_id.upper(),
        "light_model_id": "led-60",
        "group_id": group,
        "device_id": device,
        "street": street,
        "latitude": latitude,
        "longitude": longitude,
        "area_cell": cell_for(latitude, longitude),
        "owner_organization": owner,
        "operator_organization": "",
        "maintainer_organization": "",
        "controller_faults": [],
        "desired_source": 0,
        "etag": "l",
        "create_time": now,
        "update_time": now,
    }


async def _light(app: Any, light_id: str, **fields: Any) -> None:
    await _model(app)
    async with app.db.transaction() as tx:
        tx.session.add(LightRow(**_light_values(light_id, now=app.clock.now(), **fields)))


async def _lamps(
    grid: Any, count: int, *, group: str = "g-1", prefix: str = "sl", **fields: Any
) -> list[str]:
    """`count` lights of `group` (created), each with its own controller on the fleet; their device ids."""
    await _model(grid.app)
    await _group(grid.app, group)
    devices = []
    for index in range(1, count + 1):
        device = f"ctl-{prefix}-{index:02d}"
        await grid.fleet.device(device, "ctl")
        await _light(grid.app, f"{prefix}-{index:02d}", group=group, device=device, **fields)
        devices.append(device)
    return devices


async def _lights(app: Any, *ids: str) -> dict[str, LightRow]:
    async with app.db.read() as session:
        rows = (await session.scalars(select(LightRow).where(LightRow.light_id.in_(ids)))).all()
    return {row.light_id: row for row in rows}


async def _overridden(app: Any, control_id: str) -> list[str]:
    async with app.db.read() as session:
        return sorted(
            (
                await session.scalars(
                    select(LightRow.light_id).where(LightRow.override_control_id == control_id)
                )
            ).all()
        )


async def _devices_jobs(grid: Any) -> list[JobRow]:
    async with grid.fleet.app.db.read() as session:
        return list((await session.scalars(select(JobRow).order_by(JobRow.job_id))).all())


# -- calls ------------------------------------------------------------------------------------------


def _request(control_id: str, request_id: str = "", **fields: Any) -> ctl.ControlLightsRequest:
    selector = ctl.LightSelector(
        **{
            key: fields.pop(key)
            for key in ("light", "group", "area", "street", "filter_group")
            if key in fields
        }
    )
    return ctl.ControlLightsRequest(
        control=ctl.Control(selector=selector, **fields), control_id=control_id, request_id=request_id
    )


async def _control(service: Any, control_id: str, metadata: Any = None, **fields: Any) -> ctl.Control:
    return await service.control.ControlLights(
        _request(control_id, **fields), metadata=metadata or service.operator, timeout=10
    )


async def _get(service: Any, control_id: str, metadata: Any = None) -> ctl.Control:
    return await service.control.GetControl(
        ctl.GetControlRequest(name=f"controls/{control_id}"),
        metadata=metadata or service.operator,
        timeout=10,
    )


async def _deliver(grid: Any, devices: list[str]) -> dict[str, Any]:
    """Every device reports once; the commands each got with its answer (device -> the one command)."""
    got: dict[str, Any] = {}
    for device in devices:
        reply = await grid.fleet.uplink(device, on=1)
        assert len(reply.commands) <= 1, reply.commands
        if reply.commands:
            got[device] = reply.commands[0]
    return got


def _progress(control: ctl.Control) -> tuple[int, ...]:
    p = control.progress
    return (p.lights, p.without_device, p.total, p.started, p.succeeded, p.failed)


def _reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error_info(error).reason


# -- STL-3 ------------------------------------------------------------------------------------------


@pytest.mark.req("STL-3")
async def test_a_group_command_is_a_devices_job_started_at_its_rollout_rate(grid):
    devices = await _lamps(grid, 12)
    control = await _control(
        grid, "dim-g1", request_id="r-1", group="groups/g-1", dim_level=40, rollout_per_minute=5
    )
    assert (control.name, control.job, control.state) == (
        "controls/dim-g1",
        "jobs/sl-dim-g1",
        ctl.CONTROL_STATE_RUNNING,
    )
    assert _progress(control) == (12, 0, 12, 5, 0, 0)
    assert (control.requested_by, control.owner_organization) == ("users/li", OWNER)
    assert control.command_ttl.seconds == 3600  # the default

    # Only the first five controllers got the command, with the level.
    first = await _deliver(grid, devices)
    assert len(first) == 5
    assert {(c.command, c.parameters["dim_level"]) for c in first.values()} == {("set_light", "40")}

    # A minute later five more, then the last two.
    grid.clock.advance(60)
    await grid.fleet.app.jobs.tick()
    assert _progress(await _get(grid, "dim-g1"))[3] == 10
    second = await _deliver(grid, devices)
    assert len(second) == 5
    assert not set(second) & set(first)
    grid.clock.advance(60)
    await grid.fleet.app.jobs.tick()
    third = await _deliver(grid, devices)
    assert len(third) == 2
    running = await _get(grid, "dim-g1")
    assert (running.state, _progress(running)) == (ctl.CONTROL_STATE_RUNNING, (12, 0, 12, 12, 0, 0))

    for device, command in {**first, **second, **third}.items():
        await grid.fleet.ack(device, command.name, succeeded=True)
    await grid.fleet.app.jobs.tick()
    done = await _get(grid, "dim-g1")
    assert (done.state, _progress(done)) == (ctl.CONTROL_STATE_SUCCEEDED, (12, 0, 12, 12, 12, 0))
    assert done.update_time.ToDatetime() > control.update_time.ToDatetime()

    # The lights are under the override: the command's level, no end (no expiry and no schedule).
    lights = await _lights(grid.app, *[f"sl-{n:02d}" for n in range(1, 13)])
    assert {(row.desired_source, row.desired_level, row.override_control_id) for row in lights.values()} == {
        (OVERRIDE, 40, "dim-g1")
    }
    assert {row.override_until for row in lights.values()} == {None}

    created = await grid.events("streetlights.control.")
    assert [(e.type, e.subject) for e in created] == [("streetlights.control.created", "controls/dim-g1")]
    started = await grid.events("streetlights.override.")
    assert [e.type for e in started] == ["streetlights.override.started"]
    payload = ctl.OverrideChanged()
    started[0].payload.Unpack(payload)
    assert (payload.control, len(payload.lights), payload.dim_level) == ("controls/dim-g1", 12, 40)


@pytest.mark.req("STL-3")
async def test_a_filter_selects_exactly_the_matching_lights(grid):
    await _model(grid.app)
    await _group(grid.app, "g-1")
    await _group(grid.app, "g-2")
    layout = {
        "a-1": {"street": "Elm St", "offset": 0.0, "group": "g-1"},
        "a-2": {"street": "Elm St", "offset": 0.0002, "group": "g-1"},
        "b-1": {"street": "Oak St", "offset": 0.0004, "group": "g-1"},
        "c-1": {"street": "Elm St", "offset": 0.5, "group": "g-2"},  # far east, outside NEAR
    }
    for light_id, fields in layout.items():
        await grid.fleet.device(f"ctl-{light_id}", "ctl")
        await _light(grid.app, light_id, device=f"ctl-{light_id}", **fields)
    cell, coarse = h3.latlng_to_cell(*CENTER, 7), h3.latlng_to_cell(*CENTER, 5)

    cases = [
        ("elm", {"street": "Elm St"}, ["a-1", "a-2", "c-1"]),
        ("near", {"area": NEAR}, ["a-1", "a-2", "b-1"]),
        ("elm-near", {"street": "Elm St", "area": NEAR}, ["a-1", "a-2"]),
        ("elm-g2", {"street": "Elm St", "filter_group": "groups/g-2"}, ["c-1"]),
        ("cell", {"area": f"h3:{cell}"}, ["a-1", "a-2", "b-1"]),
        ("coarse-cell", {"area": f"h3:{coarse}"}, ["a-1", "a-2", "b-1"]),
        ("own-cell", {"area": f"h3:{cell_for(*CENTER)}", "street": "Elm St"}, ["a-1", "a-2"]),
        ("one", {"light": "lights/b-1"}, ["b-1"]),
        ("group-2", {"group": "groups/g-2"}, ["c-1"]),
    ]
    for control_id, selector, expected in cases:
        control = await _control(grid, control_id, dim_level=70, **selector)
        assert control.progress.lights == control.progress.total == len(expected), control_id
        assert await _overridden(grid.app, control_id) == expected, control_id
        jobs = {job.job_id: job for job in await _devices_jobs(grid)}
        assert sorted(jobs[f"sl-{control_id}"].target["devices"]) == [f"devices/ctl-{i}" for i in expected]

    nothing = await refused(_control(grid, "none", street="Birch St", dim_level=10))
    assert _reason(nothing) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_LIGHTS")


@pytest.mark.req("STL-3")
async def test_failures_past_the_abort_threshold_stop_the_job(grid):
    devices = await _lamps(grid, 10)
    await _control(
        grid,
        "off",
        group="groups/g-1",
        dim_level=0,
        rollout_per_minute=4,
        abort_failure_ratio=0.5,
        abort_min_finished=2,
    )
    first = await _deliver(grid, devices)
    assert len(first) == 4
    for index, (device, command) in enumerate(sorted(first.items())):
        await grid.fleet.ack(device, command.name, succeeded=index == 0)  # one success, three failures
    await grid.fleet.app.jobs.tick()
    aborted = await _get(grid, "off")
    assert (aborted.state, _progress(aborted)) == (ctl.CONTROL_STATE_ABORTED, (10, 0, 10, 4, 1, 3))

    # No further lamp is started, minutes later either.
    grid.clock.advance(180)
    await grid.fleet.app.jobs.tick()
    assert await _deliver(grid, devices) == {}
    assert _progress(await _get(grid, "off"))[3] == 4
    # What was sent stays sent: the lights keep the override.
    assert len(await _overridden(grid.app, "off")) == 10


async def _schedule(app: Any, schedule_id: str, steps: list[schedules_pb2.ScheduleStep]) -> None:
    now = app.clock.now()
    async with app.db.transaction() as tx:
        tx.session.add(
            ScheduleRow(
                schedule_id=schedule_id,
                display_name=schedule_id,
                time_zone="UTC",
                steps=program.steps_to_json(steps),
                owner_organization=OWNER,
                etag="s",
                create_time=now,
                update_time=now,
            )
        )


def _fixed(when: datetime, level: int) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(
        anchor=schedules_pb2.STEP_ANCHOR_FIXED_TIME, local_time=when.strftime("%H:%M"), dim_level=level
    )


@pytest.mark.req("STL-3")
async def test_an_override_holds_until_its_expiry_then_the_schedule_returns(grid):
    now = grid.clock.now()
    evening = (now - timedelta(hours=2)).replace(second=0)
    night = (now + timedelta(hours=3)).replace(second=0)
    await _schedule(grid.app, "s-1", [_fixed(evening, 60), _fixed(night, 0)])
    await _model(grid.app)
    await _group(grid.app, "g-1", schedule="s-1")
    for n in (1, 2):
        await grid.fleet.device(f"ctl-{n}", "ctl")
        await _light(grid.app, f"sl-{n}", group="g-1", device=f"ctl-{n}")
    assert grid.app.applier is not None
    await grid.app.applier.tick()
    assert {row.desired_level for row in (await _lights(grid.app, "sl-1", "sl-2")).values()} == {60}

    until = now + timedelta(minutes=10)
    control = await _control(
        grid, "full", group="groups/g-1", dim_level=100, override_expire_time=stamp(until)
    )
    assert control.override_expire_time.ToDatetime().replace(tzinfo=until.tzinfo) == until
    # Without an expiry the override lasts to the light's next schedule step.
    single = await _control(grid, "half", light="lights/sl-2", dim_level=50)
    assert not single.HasField("override_expire_time")
    lights = await _lights(grid.app, "sl-1", "sl-2")
    assert (lights["sl-1"].desired_source, lights["sl-1"].desired_level, lights["sl-1"].override_until) == (
        OVERRIDE,
        100,
        until,
    )
    assert (lights["sl-2"].override_control_id, lights["sl-2"].override_until) == ("half", night)

    grid.clock.advance(300)
    await grid.app.applier.tick()  # not expired yet: the override stands
    assert (await _lights(grid.app, "sl-1"))["sl-1"].desired_source == OVERRIDE

    grid.clock.advance(301)
    await grid.app.applier.tick()
    back = await _lights(grid.app, "sl-1", "sl-2")
    assert (back["sl-1"].desired_source, back["sl-1"].desired_level, back["sl-1"].override_control_id) == (
        SCHEDULE,
        60,
        None,
    )
    assert back["sl-2"].desired_source == OVERRIDE  # its own override ends at the night step
    reply = await grid.fleet.uplink("ctl-1", on=1)
    assert reply.twin.desired["dim_level"] == 60  # the schedule's level set on the twin again
    ended = await grid.events("streetlights.override.ended")
    payload = ctl.OverrideChanged()
    ended[0].payload.Unpack(payload)
    assert (len(ended), payload.control, list(payload.lights)) == (1, "controls/full", ["lights/sl-1"])


# -- the rest of the contract -----------------------------------------------------------------------


async def test_cancel_stops_the_job_and_end_override_returns_lights_to_their_schedule(grid):
    devices = await _lamps(grid, 4)
    await _light(grid.app, "sl-bare", group="g-1")  # no controller
    first = await _control(
        grid, "c-1", request_id="req-1", group="groups/g-1", dim_level=30, rollout_per_minute=2
    )
    assert _progress(first) == (5, 1, 4, 2, 0, 0)
    # A retry returns the first answer and creates no second job; the id is taken for anything else.
    again = await _control(
        grid, "c-1", request_id="req-1", group="groups/g-1", dim_level=30, rollout_per_minute=2
    )
    assert again == first
    assert [job.job_id for job in await _devices_jobs(grid)] == ["sl-c-1"]
    taken = await refused(_control(grid, "c-1", group="groups/g-1", dim_level=31))
    assert _reason(taken) == (grpc.StatusCode.ALREADY_EXISTS, "CONTROL_EXISTS")
    assert await _overridden(grid.app, "c-1") == ["sl-01", "sl-02", "sl-03", "sl-04"]  # not the bare one

    cancelled = await grid.control.CancelControl(
        ctl.CancelControlRequest(name="controls/c-1"), metadata=grid.operator, timeout=10
    )
    assert (cancelled.state, _progress(cancelled)[3]) == (ctl.CONTROL_STATE_CANCELLED, 2)
    assert await _overridden(grid.app, "c-1") == []
    assert {row.desired_source for row in (await _lights(grid.app, "sl-01", "sl-04")).values()} == {
        inventory_pb2.CONTROL_SOURCE_UNSPECIFIED
    }
    grid.clock.advance(120)
    await grid.fleet.app.jobs.tick()
    assert len(await _deliver(grid, devices)) == 2  # the two started before the cancel, no more
    ended = await grid.events("streetlights.override.ended")
    assert [e.subject for e in ended] == ["controls/c-1"]

    # EMPTY: nothing to send when no selected light has a controller.
    empty = await _control(grid, "c-bare", light="lights/sl-bare", dim_level=0)
    assert (empty.state, empty.job, _progress(empty)) == (ctl.CONTROL_STATE_EMPTY, "", (1, 1, 0, 0, 0, 0))

    # EndOverride: the selected lights' overrides end, and only theirs.
    await _control(grid, "c-2", group="groups/g-1", dim_level=80)
    one = await grid.control.EndOverride(
        ctl.EndOverrideRequest(selector=ctl.LightSelector(light="lights/sl-01")), metadata=grid.operator
    )
    assert one.ended == 1
    rest = await grid.control.EndOverride(
        ctl.EndOverrideRequest(selector=ctl.LightSelector(group="groups/g-1")), metadata=grid.operator
    )
    assert rest.ended == 3
    none = await grid.control.EndOverride(
        ctl.EndOverrideRequest(selector=ctl.LightSelector(group="groups/g-1")), metadata=grid.operator
    )
    assert none.ended == 0
    bad = await refused(grid.control.EndOverride(ctl.EndOverrideRequest(), metadata=grid.operator))
    assert [field for field, _ in field_violations(bad)] == ["selector"]


async def test_controls_are_listed_newest_first(grid):
    await _lamps(grid, 1)
    for control_id in ("l-1", "l-2", "l-3"):
        await _control(grid, control_id, light="lights/sl-01", dim_level=10)
        grid.clock.advance(5)
    page = await grid.control.ListControls(ctl.ListControlsRequest(page_size=2), metadata=grid.operator)
    assert [c.name for c in page.controls] == ["controls/l-3", "controls/l-2"]
    rest = await grid.control.ListControls(
        ctl.ListControlsRequest(page_size=2, page_token=page.next_page_token), metadata=grid.operator
    )
    assert ([c.name for c in rest.controls], rest.next_page_token) == (["controls/l-1"], "")


async def test_bad_requests_are_refused_field_by_field(street):
    now = street.clock.now()
    error = await refused(
        street.control.ControlLights(
            ctl.ControlLightsRequest(
                control_id="Bad_Id",
                control=ctl.Control(
                    selector=ctl.LightSelector(light="lights/x", group="groups/y"),
                    dim_level=101,
                    override_expire_time=stamp(now - timedelta(minutes=1)),
                    rollout_per_minute=100_001,
                    abort_failure_ratio=1.5,
                    abort_min_finished=10_001,
                    command_ttl=duration_pb2.Duration(nanos=500_000_000),
                ),
            ),
            metadata=street.operator,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in field_violations(error)) == [
        "control.abort_failure_ratio",
        "control.abort_min_finished",
        "control.command_ttl",
        "control.dim_level",
        "control.override_expire_time",
        "control.rollout_per_minute",
        "control.selector",
        "control_id",
    ]
    more = [
        ({"control_id": "x" * 61}, "control_id"),  # its job id `sl-<id>` would pass 63 characters
        ({"override_expire_time": stamp(now + timedelta(days=31))}, "control.override_expire_time"),
        ({"command_ttl": duration_pb2.Duration(seconds=8 * 86400)}, "control.command_ttl"),
        ({"command_ttl": duration_pb2.Duration(seconds=2**62)}, "control.command_ttl"),
        ({"override_expire_time": timestamp_pb2.Timestamp(seconds=2**62)}, "control.override_expire_time"),
        ({"selector": ctl.LightSelector(filter_group="groups/g-1")}, "control.selector.filter_group"),
        ({"selector": ctl.LightSelector(area="h3:nonsense")}, "control.selector.area"),
        ({"selector": ctl.LightSelector(area="bbox:1,2,3")}, "control.selector.area"),
        ({"selector": ctl.LightSelector(light="light/x")}, "control.selector.light"),
        ({"selector": ctl.LightSelector()}, "control.selector"),
    ]
    for change, field in more:
        control = ctl.Control(selector=ctl.LightSelector(group="groups/g-1"), dim_level=50)
        request = ctl.ControlLightsRequest(control_id=change.pop("control_id", "ok"), control=control)
        for key, value in change.items():
            getattr(request.control, key).CopyFrom(value)
        error = await refused(street.control.ControlLights(request, metadata=street.operator))
        assert [f for f, _ in field_violations(error)] == [field], change
    missing = await refused(
        street.control.ControlLights(ctl.ControlLightsRequest(control_id="x"), metadata=street.operator)
    )
    assert [f for f, _ in field_violations(missing)] == ["control"]
    name = await refused(
        street.control.GetControl(ctl.GetControlRequest(name="control/x"), metadata=street.operator)
    )
    assert [f for f, _ in field_violations(name)] == ["name"]
    # The analyst reads; it does not switch.
    denied = await refused(_control(street, "an", street.analyst, group="groups/g-1", dim_level=10))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_without_a_devices_service_commands_are_refused_for_good(street):
    await _light(street.app, "sl-1", device="ctl-1")
    error = await refused(_control(street, "c-1", light="lights/sl-1", dim_level=10))
    assert _reason(error) == (grpc.StatusCode.FAILED_PRECONDITION, "DEVICES_NOT_CONFIGURED")
    assert detail(rich_status(error), error_details_pb2.RetryInfo) is None
    assert await _overridden(street.app, "c-1") == []
    # Lights without a controller need no devices service: the control is recorded, EMPTY, no job.
    async with street.app.db.transaction() as tx:
        tx.session.add(LightRow(**_light_values("sl-2", now=street.app.clock.now())))
    empty = await _control(street, "c-2", light="lights/sl-2", dim_level=10)
    assert (empty.state, empty.job, empty.progress.without_device) == (ctl.CONTROL_STATE_EMPTY, "", 1)
    cancelled = await street.control.CancelControl(
        ctl.CancelControlRequest(name=empty.name), metadata=street.operator, timeout=10
    )
    assert cancelled.state == ctl.CONTROL_STATE_EMPTY


async def test_when_the_devices_service_is_away_nothing_changes_and_the_last_state_is_shown(grid):
    await _lamps(grid, 2)
    control = await _control(grid, "c-1", light="lights/sl-01", dim_level=10)
    await grid.fleet.server.stop(grace=0)
    grid.clock.advance(60)
    stale = await _get(grid, "c-1")
    assert (stale.state, stale.update_time) == (control.state, control.update_time)
    error = await refused(_control(grid, "c-2", light="lights/sl-02", dim_level=10))
    assert _reason(error) == (grpc.StatusCode.UNAVAILABLE, "DEVICES_UNAVAILABLE")
    assert detail(rich_status(error), error_details_pb2.RetryInfo) is not None
    async with grid.app.db.read() as session:
        assert await session.get(ControlRow, "c-2") is None
    assert await _overridden(grid.app, "c-2") == []
    cancel = await refused(
        grid.control.CancelControl(ctl.CancelControlRequest(name="controls/c-1"), metadata=grid.operator)
    )
    assert cancel.code() == grpc.StatusCode.UNAVAILABLE
    assert await _overridden(grid.app, "c-1") == ["sl-01"]  # nothing changed: retry later


async def test_each_organization_controls_its_own_lights_and_sees_its_own_controls(grid):
    await _lamps(grid, 2, street="Elm St")
    await _group(grid.app, "g-u", owner="utilities")
    await grid.fleet.device("ctl-u", "ctl")
    await _light(grid.app, "sl-u", group="g-u", device="ctl-u", street="Elm St", owner="utilities")

    for selector in ({"light": "lights/sl-u"}, {"group": "groups/g-u"}):
        error = await refused(_control(grid, "x", dim_level=10, **selector))
        assert error.code() == grpc.StatusCode.NOT_FOUND, selector
    mine = await _control(grid, "mine", street="Elm St", dim_level=10)
    assert mine.progress.lights == 2
    assert await _overridden(grid.app, "mine") == ["sl-01", "sl-02"]
    theirs = await _control(grid, "theirs", grid.other_org, street="Elm St", dim_level=20)
    assert (theirs.progress.lights, theirs.owner_organization) == (1, "utilities")
    assert await _overridden(grid.app, "theirs") == ["sl-u"]

    assert _reason(await refused(_get(grid, "theirs")))[0] == grpc.StatusCode.NOT_FOUND
    listed = await grid.control.ListControls(ctl.ListControlsRequest(), metadata=grid.operator)
    assert [c.name for c in listed.controls] == ["controls/mine"]
    cancel = await refused(
        grid.control.CancelControl(ctl.CancelControlRequest(name="controls/theirs"), metadata=grid.operator)
    )
    assert cancel.code() == grpc.StatusCode.NOT_FOUND
    # Ending overrides reaches only lights the caller may change.
    ended = await grid.control.EndOverride(
        ctl.EndOverrideRequest(selector=ctl.LightSelector(street="Elm St")), metadata=grid.operator
    )
    assert ended.ended == 2
    assert await _overridden(grid.app, "theirs") == ["sl-u"]
    # City-wide callers see every control.
    admin = grid.token("users/root", "city", "city-admin")
    everything = await grid.control.ListControls(ctl.ListControlsRequest(), metadata=admin)
    assert sorted(c.name for c in everything.controls) == ["controls/mine", "controls/theirs"]


async def test_one_command_reaches_at_most_ten_thousand_lights(grid):
    await _model(grid.app)
    await _group(grid.app, "big")
    now = grid.clock.now()
    async with grid.app.db.transaction() as tx:
        await tx.session.execute(
            insert(LightRow),
            [_light_values(f"b-{n:05d}", now=now, group="big", offset=n * 1e-6) for n in range(10_001)],
        )
    error = await refused(_control(grid, "too-many", group="groups/big", dim_level=0))
    assert _reason(error) == (grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_LIGHTS")
    assert error_info(error).metadata["lights"] == "10001"
    async with grid.app.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(ControlRow)) == 0
