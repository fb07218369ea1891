"""STL-1: the inventory — lamp models, cabinets, feeders, groups and lights: create (idempotent by
request_id), get, list with filters and pages, update with a field mask and the etag read, delete —
with bad input answered field by field, references checked, what others lean on kept from deletion, the
topology kept in step (a light's cabinet is its feeder's), each organization seeing its own, and every
change an event."""

from __future__ import annotations

from datetime import UTC, timedelta

import grpc
import h3
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from cityos.common.v1 import resources_pb2
from cityos.streetlights.v1 import faults_pb2, inventory_pb2
from cityos_platform.testing.status import error_info, field_violations, refused, stamp
from cityos_streetlights.models import (
    FAULT_CLEARED,
    CabinetRow,
    EnergyHourRow,
    FaultRow,
    LightRow,
    ScheduleRow,
)

inv = inventory_pb2
CENTER = (39.05, 115.95)
OWNER = "public-works"
NEAR = "bbox:39.04,115.94,39.06,115.96"


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error_info(error).reason


def _fields(error: grpc.aio.AioRpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    return sorted(field for field, _ in field_violations(error))


async def _names(call, request, field: str, metadata) -> list[str]:
    """Every name a list returns, page by page (each page at most `request.page_size`)."""
    names: list[str] = []
    while True:
        page = await call(request, metadata=metadata, timeout=10)
        items = getattr(page, field)
        assert not request.page_size or len(items) <= request.page_size
        names += [item.name for item in items]
        if not page.next_page_token:
            return names
        request.page_token = page.next_page_token


def _schedule(schedule_id: str, owner: str, now) -> ScheduleRow:
    return ScheduleRow(
        schedule_id=schedule_id,
        display_name=schedule_id,
        time_zone="Asia/Shanghai",
        steps=[],
        owner_organization=owner,
        operator_organization="",
        maintainer_organization="",
        etag="e",
        create_time=now,
        update_time=now,
    )


def _fault(fault_id: str, light_id: str, kind: int, state: int, now) -> FaultRow:
    return FaultRow(
        fault_id=fault_id,
        kind=kind,
        subject=f"lights/{light_id}",
        state=state,
        affected_lights=[],
        raise_time=now,
        update_time=now,
        area_cell="",
        owner_organization=OWNER,
    )


def _cabinet_message(**fields) -> inv.Cabinet:
    offset = fields.pop("offset", 0.0)
    return inv.Cabinet(
        display_name=fields.pop("display_name", "Cabinet"),
        location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1] + offset),
        working_mode=fields.pop("working_mode", inv.WORKING_MODE_AUTOMATIC),
        **fields,
    )


@pytest.mark.req("STL-1")
async def test_light_models_through_their_life(street):
    model = await street.model(
        "led-60",
        60.0,
        standby_power_w=0.5,
        luminous_flux_lm=8000,
        color_temperature_k=3000,
        working_life_h=100_000,
        minimum_dim_level=10,
        manufacturer="Acme",
    )
    assert (model.name, model.ownership.owner_organization, model.lamp_technology) == (
        "lightModels/led-60",
        OWNER,
        inv.LAMP_TECHNOLOGY_LED,
    )
    assert (model.rated_power_w, model.color_temperature_k, model.minimum_dim_level) == (60.0, 3000, 10)
    assert model.etag
    got = await street.inventory.GetLightModel(
        inv.GetLightModelRequest(name=model.name), metadata=street.operator
    )
    assert got == model
    await street.model("hps-150", 150.0, lamp_technology=inv.LAMP_TECHNOLOGY_HPS)
    await street.model("led-30", 30.0)
    listed = await _names(
        street.inventory.ListLightModels,
        inv.ListLightModelsRequest(page_size=2),
        "light_models",
        street.operator,
    )
    assert listed == ["lightModels/hps-150", "lightModels/led-30", "lightModels/led-60"]

    updated = await street.inventory.UpdateLightModel(
        inv.UpdateLightModelRequest(
            light_model=inv.LightModel(
                name=model.name, etag=model.etag, rated_power_w=55, manufacturer="not asked for"
            ),
            update_mask=_mask("rated_power_w"),
        ),
        metadata=street.operator,
    )
    assert (updated.rated_power_w, updated.manufacturer) == (55.0, "Acme")
    assert updated.etag != model.etag
    stale = await refused(
        street.inventory.UpdateLightModel(
            inv.UpdateLightModelRequest(
                light_model=inv.LightModel(name=model.name, etag=model.etag, rated_power_w=50),
                update_mask=_mask("rated_power_w"),
            ),
            metadata=street.operator,
        )
    )
    assert _reason(stale) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    bad_mask = await refused(
        street.inventory.UpdateLightModel(
            inv.UpdateLightModelRequest(
                light_model=inv.LightModel(name=model.name), update_mask=_mask("etag")
            ),
            metadata=street.operator,
        )
    )
    assert _fields(bad_mask) == ["update_mask"]

    # A model a light uses stays; one no light uses goes.
    await street.light("sl-1")
    in_use = await refused(
        street.inventory.DeleteLightModel(
            inv.DeleteLightModelRequest(name=model.name), metadata=street.operator
        )
    )
    assert _reason(in_use) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_IN_USE")
    await street.inventory.DeleteLightModel(
        inv.DeleteLightModelRequest(name="lightModels/hps-150"), metadata=street.operator
    )
    gone = await refused(
        street.inventory.GetLightModel(
            inv.GetLightModelRequest(name="lightModels/hps-150"), metadata=street.operator
        )
    )
    assert _reason(gone) == (grpc.StatusCode.NOT_FOUND, "LIGHT_MODEL_NOT_FOUND")


@pytest.mark.req("STL-1")
async def test_cabinets_through_their_life(street):
    cabinet = await street.cabinet(
        "cab-1", device="devices/cc-1", serial_number="S-001", maximum_power_w=15_000
    )
    assert (cabinet.name, cabinet.device, cabinet.ownership.owner_organization) == (
        "cabinets/cab-1",
        "devices/cc-1",
        OWNER,
    )
    assert cabinet.area_cell == h3.latlng_to_cell(*CENTER, 9)
    assert not cabinet.state.HasField("reading_time")
    assert not cabinet.state.HasField("voltage_l1_v")

    # The state is the controller's latest readings (written by the telemetry follower).
    now = street.clock.now()
    async with street.app.db.transaction() as tx:
        row = await tx.session.get(CabinetRow, "cab-1")
        row.voltage_l1_v, row.active_power_w = 231.5, 4200.0
        row.circuits = {"1": True, "2": False}
        row.door_open = True
        row.reading_time = row.heard_time = now
    live = await street.inventory.GetCabinet(
        inv.GetCabinetRequest(name=cabinet.name), metadata=street.operator
    )
    assert (live.state.voltage_l1_v, live.state.active_power_w, live.state.door_open) == (231.5, 4200.0, True)
    assert not live.state.HasField("voltage_l2_v")
    assert dict(live.state.circuits) == {1: True, 2: False}
    assert live.state.reading_time.ToDatetime(tzinfo=UTC) == now

    # One controller per cabinet.
    bound = await refused(street.cabinet("cab-2", device="devices/cc-1"))
    assert _reason(bound) == (grpc.StatusCode.ALREADY_EXISTS, "DEVICE_BOUND")
    await street.cabinet("cab-2", device="devices/cc-2")
    await street.inventory.CreateCabinet(
        inv.CreateCabinetRequest(cabinet=_cabinet_message(offset=0.5), cabinet_id="cab-far"),
        metadata=street.operator,
    )
    moved = await refused(
        street.inventory.UpdateCabinet(
            inv.UpdateCabinetRequest(
                cabinet=inv.Cabinet(name="cabinets/cab-2", device="devices/cc-1"), update_mask=_mask("device")
            ),
            metadata=street.operator,
        )
    )
    assert _reason(moved) == (grpc.StatusCode.ALREADY_EXISTS, "DEVICE_BOUND")

    # Lists: pages, area (bbox and exact cell).
    every = await _names(
        street.inventory.ListCabinets, inv.ListCabinetsRequest(page_size=2), "cabinets", street.operator
    )
    assert every == ["cabinets/cab-1", "cabinets/cab-2", "cabinets/cab-far"]
    near = await _names(
        street.inventory.ListCabinets,
        inv.ListCabinetsRequest(area=NEAR, page_size=1),
        "cabinets",
        street.operator,
    )
    assert near == ["cabinets/cab-1", "cabinets/cab-2"]
    in_cell = await _names(
        street.inventory.ListCabinets,
        inv.ListCabinetsRequest(area=f"h3:{cabinet.area_cell}"),
        "cabinets",
        street.operator,
    )
    assert in_cell == ["cabinets/cab-1", "cabinets/cab-2"]

    # Another controller: the old one's readings go; the other fields stay.
    rebound = await street.inventory.UpdateCabinet(
        inv.UpdateCabinetRequest(
            cabinet=inv.Cabinet(
                name=cabinet.name,
                etag=live.etag,
                device="devices/cc-9",
                working_mode=inv.WORKING_MODE_MANUAL,
                serial_number="not asked for",
            ),
            update_mask=_mask("device", "working_mode"),
        ),
        metadata=street.operator,
    )
    assert (rebound.device, rebound.working_mode, rebound.serial_number) == (
        "devices/cc-9",
        inv.WORKING_MODE_MANUAL,
        "S-001",
    )
    assert not rebound.state.HasField("voltage_l1_v")
    assert not rebound.state.HasField("reading_time")
    assert (dict(rebound.state.circuits), rebound.state.door_open) == ({}, False)
    stale = await refused(
        street.inventory.UpdateCabinet(
            inv.UpdateCabinetRequest(
                cabinet=inv.Cabinet(name=cabinet.name, etag=live.etag, display_name="X"),
                update_mask=_mask("display_name"),
            ),
            metadata=street.operator,
        )
    )
    assert _reason(stale) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    relocated = await street.inventory.UpdateCabinet(
        inv.UpdateCabinetRequest(
            cabinet=inv.Cabinet(
                name="cabinets/cab-far",
                location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
            ),
            update_mask=_mask("location"),
        ),
        metadata=street.operator,
    )
    assert relocated.area_cell == cabinet.area_cell

    # A cabinet with feeders or groups stays.
    await street.feeder("f-1", "cabinets/cab-1")
    await street.group("g-1", cabinet="cabinets/cab-2")
    for name in ("cabinets/cab-1", "cabinets/cab-2"):
        in_use = await refused(
            street.inventory.DeleteCabinet(inv.DeleteCabinetRequest(name=name), metadata=street.operator)
        )
        assert _reason(in_use) == (grpc.StatusCode.FAILED_PRECONDITION, "CABINET_IN_USE")
    await street.inventory.DeleteFeeder(inv.DeleteFeederRequest(name="feeders/f-1"), metadata=street.operator)
    await street.inventory.DeleteCabinet(
        inv.DeleteCabinetRequest(name=cabinet.name), metadata=street.operator
    )
    gone = await refused(
        street.inventory.GetCabinet(inv.GetCabinetRequest(name=cabinet.name), metadata=street.operator)
    )
    assert _reason(gone) == (grpc.StatusCode.NOT_FOUND, "CABINET_NOT_FOUND")


@pytest.mark.req("STL-1")
async def test_feeders_and_the_topology_of_lights(street):
    await street.model()
    await street.cabinet("cab-a")
    await street.cabinet("cab-b", ownership=resources_pb2.Ownership(maintainer_organization="utilities"))
    feeder = await street.feeder("f-1", "cabinets/cab-a", circuit=1)
    assert (feeder.name, feeder.cabinet, feeder.circuit, feeder.phase) == (
        "feeders/f-1",
        "cabinets/cab-a",
        1,
        inv.PHASE_L1,
    )
    assert (feeder.ownership.owner_organization, feeder.energized, feeder.light_count) == (OWNER, True, 0)
    taken = await refused(street.feeder("f-2", "cabinets/cab-a", circuit=1))
    assert _reason(taken) == (grpc.StatusCode.ALREADY_EXISTS, "CIRCUIT_TAKEN")
    await street.feeder("f-2", "cabinets/cab-b", circuit=1)  # the same number in another cabinet
    missing = await refused(street.feeder("f-3", "cabinets/nowhere", circuit=1))
    assert _reason(missing) == (grpc.StatusCode.NOT_FOUND, "CABINET_NOT_FOUND")

    # A light's cabinet is its feeder's.
    first = await street.light("sl-1", feeder="feeders/f-1")
    await street.light("sl-2", feeder="feeders/f-1")
    await street.light("sl-3", feeder="feeders/f-2")
    assert (first.feeder, first.cabinet) == ("feeders/f-1", "cabinets/cab-a")
    counted = await street.inventory.GetFeeder(
        inv.GetFeederRequest(name=feeder.name), metadata=street.operator
    )
    assert counted.light_count == 2
    on_a = await _names(
        street.inventory.ListFeeders,
        inv.ListFeedersRequest(cabinet="cabinets/cab-a"),
        "feeders",
        street.operator,
    )
    assert on_a == ["feeders/f-1"]

    # Moving the feeder: refused onto a taken circuit (nothing changes), then done — its lights follow.
    clash = await refused(
        street.inventory.UpdateFeeder(
            inv.UpdateFeederRequest(
                feeder=inv.Feeder(name=feeder.name, cabinet="cabinets/cab-b"), update_mask=_mask("cabinet")
            ),
            metadata=street.operator,
        )
    )
    assert _reason(clash) == (grpc.StatusCode.ALREADY_EXISTS, "CIRCUIT_TAKEN")
    assert (await street.get_light("sl-1")).cabinet == "cabinets/cab-a"
    moved = await street.inventory.UpdateFeeder(
        inv.UpdateFeederRequest(
            feeder=inv.Feeder(name=feeder.name, etag=feeder.etag, cabinet="cabinets/cab-b", circuit=2),
            update_mask=_mask("cabinet", "circuit"),
        ),
        metadata=street.operator,
    )
    assert (moved.cabinet, moved.circuit, moved.light_count) == ("cabinets/cab-b", 2, 2)
    assert moved.ownership.maintainer_organization == "utilities"  # the new cabinet's
    assert (await street.get_light("sl-1")).cabinet == "cabinets/cab-b"
    on_b = await _names(
        street.inventory.ListLights,
        inv.ListLightsRequest(cabinet="cabinets/cab-b"),
        "lights",
        street.operator,
    )
    assert on_b == ["lights/sl-1", "lights/sl-2", "lights/sl-3"]
    stale = await refused(
        street.inventory.UpdateFeeder(
            inv.UpdateFeederRequest(
                feeder=inv.Feeder(name=feeder.name, etag=feeder.etag, display_name="X"),
                update_mask=_mask("display_name"),
            ),
            metadata=street.operator,
        )
    )
    assert _reason(stale) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")

    # A light off its feeder has no cabinet.
    loose = await street.inventory.UpdateLight(
        inv.UpdateLightRequest(light=inv.Light(name="lights/sl-3"), update_mask=_mask("feeder")),
        metadata=street.operator,
    )
    assert (loose.feeder, loose.cabinet) == ("", "")

    # Energized follows the cabinet's readings: a circuit whose breaker is open is not.
    async with street.app.db.transaction() as tx:
        (await tx.session.get(CabinetRow, "cab-a")).circuits = {"3": False}
    tripped = await street.feeder("f-3", "cabinets/cab-a", circuit=3)
    assert not tripped.energized

    # A feeder with lights stays; an empty one goes.
    in_use = await refused(
        street.inventory.DeleteFeeder(inv.DeleteFeederRequest(name=feeder.name), metadata=street.operator)
    )
    assert _reason(in_use) == (grpc.StatusCode.FAILED_PRECONDITION, "FEEDER_IN_USE")
    await street.inventory.DeleteFeeder(inv.DeleteFeederRequest(name="feeders/f-3"), metadata=street.operator)
    left = await _names(
        street.inventory.ListFeeders, inv.ListFeedersRequest(page_size=1), "feeders", street.operator
    )
    assert left == ["feeders/f-1", "feeders/f-2"]


@pytest.mark.req("STL-1")
async def test_groups_count_their_lights_and_name_a_schedule(street):
    now = street.clock.now()
    async with street.app.db.transaction() as tx:
        tx.session.add(_schedule("night", OWNER, now))
        tx.session.add(_schedule("theirs", "utilities", now))
    await street.model()
    await street.cabinet("cab-1")
    group = await street.group(
        "g-1", cabinet="cabinets/cab-1", schedule="schedules/night", description="Main street"
    )
    assert (group.name, group.cabinet, group.schedule, group.description) == (
        "groups/g-1",
        "cabinets/cab-1",
        "schedules/night",
        "Main street",
    )
    assert (group.light_count, group.lights_on, group.ownership.owner_organization) == (0, 0, OWNER)
    await street.group("g-2")
    for index, power_state in enumerate((inv.POWER_STATE_ON, inv.POWER_STATE_LOW, inv.POWER_STATE_OFF), 1):
        await street.light(f"sl-{index}", group="groups/g-1")
        async with street.app.db.transaction() as tx:
            (await tx.session.get(LightRow, f"sl-{index}")).power_state = power_state
    counted = await street.inventory.GetGroup(inv.GetGroupRequest(name=group.name), metadata=street.operator)
    assert (counted.light_count, counted.lights_on) == (3, 2)
    listed = await street.inventory.ListGroups(inv.ListGroupsRequest(), metadata=street.operator)
    assert [(g.name, g.light_count, g.lights_on) for g in listed.groups] == [
        ("groups/g-1", 3, 2),
        ("groups/g-2", 0, 0),
    ]
    scheduled = await _names(
        street.inventory.ListGroups,
        inv.ListGroupsRequest(schedule="schedules/night"),
        "groups",
        street.operator,
    )
    assert scheduled == ["groups/g-1"]

    # A schedule (or cabinet) must exist and be the caller's to see.
    for schedule in ("schedules/theirs", "schedules/none"):
        hidden = await refused(
            street.inventory.UpdateGroup(
                inv.UpdateGroupRequest(
                    group=inv.Group(name="groups/g-2", schedule=schedule), update_mask=_mask("schedule")
                ),
                metadata=street.operator,
            )
        )
        assert _reason(hidden) == (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    no_cabinet = await refused(street.group("g-3", cabinet="cabinets/none"))
    assert _reason(no_cabinet) == (grpc.StatusCode.NOT_FOUND, "CABINET_NOT_FOUND")
    second = await street.inventory.GetGroup(inv.GetGroupRequest(name="groups/g-2"), metadata=street.operator)
    scheduled = await street.inventory.UpdateGroup(
        inv.UpdateGroupRequest(
            group=inv.Group(
                name="groups/g-2", etag=second.etag, schedule="schedules/night", display_name="Park"
            ),
            update_mask=_mask("schedule", "display_name"),
        ),
        metadata=street.operator,
    )
    assert (scheduled.schedule, scheduled.display_name) == ("schedules/night", "Park")
    stale = await refused(
        street.inventory.UpdateGroup(
            inv.UpdateGroupRequest(
                group=inv.Group(name="groups/g-2", etag=second.etag, schedule=""),
                update_mask=_mask("schedule"),
            ),
            metadata=street.operator,
        )
    )
    assert _reason(stale) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")

    # A light joins its own owner's groups only, unless a city-wide caller puts it there.
    await street.inventory.CreateGroup(
        inv.CreateGroupRequest(
            group=inv.Group(
                display_name="Utilities", ownership=resources_pb2.Ownership(operator_organization=OWNER)
            ),
            group_id="ut-g",
        ),
        metadata=street.other_org,
    )
    foreign = await refused(street.light("sl-9", group="groups/ut-g"))
    assert _reason(foreign) == (grpc.StatusCode.FAILED_PRECONDITION, "GROUP_OF_ANOTHER_OWNER")
    moved = await refused(
        street.inventory.UpdateLight(
            inv.UpdateLightRequest(
                light=inv.Light(name="lights/sl-3", group="groups/ut-g"), update_mask=_mask("group")
            ),
            metadata=street.operator,
        )
    )
    assert _reason(moved) == (grpc.StatusCode.FAILED_PRECONDITION, "GROUP_OF_ANOTHER_OWNER")
    admin = street.token("users/ca", "city-office", "city-admin")
    placed = await street.inventory.UpdateLight(
        inv.UpdateLightRequest(
            light=inv.Light(name="lights/sl-3", group="groups/ut-g"), update_mask=_mask("group")
        ),
        metadata=admin,
    )
    assert placed.group == "groups/ut-g"

    # A group with lights stays; an empty one goes.
    in_use = await refused(
        street.inventory.DeleteGroup(inv.DeleteGroupRequest(name=group.name), metadata=street.operator)
    )
    assert _reason(in_use) == (grpc.StatusCode.FAILED_PRECONDITION, "GROUP_IN_USE")
    await street.inventory.DeleteGroup(inv.DeleteGroupRequest(name="groups/g-2"), metadata=street.operator)
    gone = await refused(
        street.inventory.GetGroup(inv.GetGroupRequest(name="groups/g-2"), metadata=street.operator)
    )
    assert _reason(gone) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")


@pytest.mark.req("STL-1")
async def test_lights_through_their_life(street):
    now = street.clock.now()
    await street.model()
    await street.cabinet("cab-1")
    await street.feeder("f-1", "cabinets/cab-1")
    await street.group("g-1")
    changed = now - timedelta(days=30)
    light = await street.light(
        "sl-1",
        feeder="feeders/f-1",
        group="groups/g-1",
        device="devices/lc-1",
        pole_number="P-17",
        street="Main St",
        location_category="sidewalk",
        lantern_height_m=8,
        last_lamp_change_time=stamp(changed),
        reported_status=inv.LIGHT_STATUS_OK,
        heartbeat_timeout=duration_pb2.Duration(seconds=3600),
    )
    assert (light.name, light.model, light.feeder, light.cabinet, light.group, light.device) == (
        "lights/sl-1",
        "lightModels/led-60",
        "feeders/f-1",
        "cabinets/cab-1",
        "groups/g-1",
        "devices/lc-1",
    )
    assert (light.pole_number, light.street, light.location_category, light.lantern_height_m) == (
        "P-17",
        "Main St",
        "sidewalk",
        8.0,
    )
    assert light.last_lamp_change_time.ToDatetime(tzinfo=UTC) == changed
    assert (light.status, list(light.open_faults), light.heartbeat_timeout.seconds) == (
        inv.LIGHT_STATUS_OK,
        [],
        3600,
    )
    assert not light.HasField("control")  # nothing in force yet
    assert light.state.power_state == inv.POWER_STATE_UNSPECIFIED
    second = await street.light(
        "sl-2", offset=0.0001, street="Main St", reported_status=inv.LIGHT_STATUS_COLUMN_ISSUE
    )
    assert (second.heartbeat_timeout.seconds, second.cabinet, second.status) == (
        7200,  # the default: 2 hours
        "",
        inv.LIGHT_STATUS_COLUMN_ISSUE,
    )
    for index in range(3, 6):
        await street.light(f"sl-{index}", offset=0.0001 * index)
    await street.light("sl-far", offset=0.5)

    # Live state and what is in force come from the readings and the appliers' columns.
    async with street.app.db.transaction() as tx:
        row = await tx.session.get(LightRow, "sl-1")
        row.power_state, row.dim_level, row.power_w = inv.POWER_STATE_LOW, 50.0, 31.5
        row.controller_faults = [inv.CONTROLLER_FAULT_THERMAL_DERATING]
        row.reading_time = row.heard_time = now
        row.desired_level, row.desired_source = 50, inv.CONTROL_SOURCE_SCHEDULE
        row.desired_schedule_id, row.desired_step, row.desired_since = "night", 1, now
        row.next_change_time = now + timedelta(hours=3)
        tx.session.add(
            _fault("ft-1", "sl-1", faults_pb2.FAULT_KIND_LAMP_FAILURE, faults_pb2.FAULT_STATE_OPEN, now)
        )
        tx.session.add(
            _fault("ft-2", "sl-1", faults_pb2.FAULT_KIND_LAMP_OUT, faults_pb2.FAULT_STATE_ACKNOWLEDGED, now)
        )
        tx.session.add(_fault("ft-3", "sl-2", faults_pb2.FAULT_KIND_LAMP_FAILURE, FAULT_CLEARED, now))
    live = await street.get_light("sl-1")
    assert (live.state.power_state, live.state.dim_level, live.state.power_w) == (
        inv.POWER_STATE_LOW,
        50.0,
        31.5,
    )
    assert not live.state.HasField("voltage_v")
    assert list(live.state.controller_faults) == [inv.CONTROLLER_FAULT_THERMAL_DERATING]
    assert (live.control.dim_level, live.control.source, live.control.schedule, live.control.step_index) == (
        50,
        inv.CONTROL_SOURCE_SCHEDULE,
        "schedules/night",
        1,
    )
    assert live.control.since.ToDatetime(tzinfo=UTC) == now
    assert live.control.next_change_time.ToDatetime(tzinfo=UTC) == now + timedelta(hours=3)
    assert not live.control.HasField("override_expire_time")
    # An open lamp failure makes the lamp defective; a cleared one says nothing.
    assert (live.status, list(live.open_faults)) == (
        inv.LIGHT_STATUS_DEFECTIVE_LAMP,
        ["LAMP_FAILURE", "LAMP_OUT"],
    )
    assert (await street.get_light("sl-2")).status == inv.LIGHT_STATUS_COLUMN_ISSUE

    async def names(**filters) -> list[str]:
        return await _names(
            street.inventory.ListLights, inv.ListLightsRequest(**filters), "lights", street.operator
        )

    every = [f"lights/sl-{n}" for n in (1, 2, 3, 4, 5)] + ["lights/sl-far"]
    assert await names(page_size=2) == every
    assert await names(street="Main St") == ["lights/sl-1", "lights/sl-2"]
    assert await names(group="groups/g-1") == ["lights/sl-1"]
    assert await names(feeder="feeders/f-1") == ["lights/sl-1"]
    assert await names(cabinet="cabinets/cab-1") == ["lights/sl-1"]
    assert await names(faulty_only=True) == ["lights/sl-1"]
    assert await names(area=NEAR, page_size=2) == every[:-1]
    assert await names(area=NEAR, street="Main St", faulty_only=True) == ["lights/sl-1"]
    listed = await street.inventory.ListLights(inv.ListLightsRequest(page_size=2), metadata=street.operator)
    assert [list(item.open_faults) for item in listed.lights] == [["LAMP_FAILURE", "LAMP_OUT"], []]
    assert listed.lights[0] == live

    # Updates: the mask's fields only, with the etag read.
    updated = await street.inventory.UpdateLight(
        inv.UpdateLightRequest(
            light=inv.Light(
                name=light.name,
                etag=live.etag,
                street="Harbour Rd",
                reported_status=inv.LIGHT_STATUS_BROKEN_LANTERN,
                pole_number="not asked for",
                heartbeat_timeout=duration_pb2.Duration(seconds=600),
            ),
            update_mask=_mask("street", "reported_status", "heartbeat_timeout"),
        ),
        metadata=street.operator,
    )
    assert (
        updated.street,
        updated.reported_status,
        updated.pole_number,
        updated.heartbeat_timeout.seconds,
    ) == (
        "Harbour Rd",
        inv.LIGHT_STATUS_BROKEN_LANTERN,
        "P-17",
        600,
    )
    assert updated.status == inv.LIGHT_STATUS_DEFECTIVE_LAMP  # the open lamp failure comes first
    stale = await refused(
        street.inventory.UpdateLight(
            inv.UpdateLightRequest(
                light=inv.Light(name=light.name, etag=live.etag, street="X"), update_mask=_mask("street")
            ),
            metadata=street.operator,
        )
    )
    assert _reason(stale) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    relocated = await street.inventory.UpdateLight(
        inv.UpdateLightRequest(
            light=inv.Light(
                name="lights/sl-far", location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1])
            ),
            update_mask=_mask("location"),
        ),
        metadata=street.operator,
    )
    assert relocated.area_cell == light.area_cell

    # Another controller: the old one's readings go, what is in force stays.
    rebound = await street.inventory.UpdateLight(
        inv.UpdateLightRequest(
            light=inv.Light(name=light.name, device="devices/lc-9"), update_mask=_mask("device")
        ),
        metadata=street.operator,
    )
    assert rebound.device == "devices/lc-9"
    assert rebound.state.power_state == inv.POWER_STATE_UNSPECIFIED
    assert not rebound.state.HasField("dim_level")
    assert not rebound.state.HasField("reading_time")
    assert list(rebound.state.controller_faults) == []
    assert rebound.control.dim_level == 50
    bound = await refused(street.light("sl-6", device="devices/lc-9"))
    assert _reason(bound) == (grpc.StatusCode.ALREADY_EXISTS, "DEVICE_BOUND")
    taken = await refused(
        street.inventory.UpdateLight(
            inv.UpdateLightRequest(
                light=inv.Light(name="lights/sl-2", device="devices/lc-9"), update_mask=_mask("device")
            ),
            metadata=street.operator,
        )
    )
    assert _reason(taken) == (grpc.StatusCode.ALREADY_EXISTS, "DEVICE_BOUND")

    # A light with open faults stays; once they are cleared it goes, its energy history stays.
    async with street.app.db.transaction() as tx:
        tx.session.add(
            EnergyHourRow(
                light_id="sl-1",
                hour=now.replace(minute=0, second=0),
                group_id="g-1",
                cabinet_id="cab-1",
                energy_wh=30.0,
                full_power_wh=60.0,
                burning_s=3600.0,
            )
        )
    faulty = await refused(
        street.inventory.DeleteLight(inv.DeleteLightRequest(name=light.name), metadata=street.operator)
    )
    assert _reason(faulty) == (grpc.StatusCode.FAILED_PRECONDITION, "LIGHT_HAS_OPEN_FAULTS")
    async with street.app.db.transaction() as tx:
        for fault_id in ("ft-1", "ft-2"):
            (await tx.session.get(FaultRow, fault_id)).state = FAULT_CLEARED
    await street.inventory.DeleteLight(inv.DeleteLightRequest(name=light.name), metadata=street.operator)
    gone = await refused(street.get_light("sl-1"))
    assert _reason(gone) == (grpc.StatusCode.NOT_FOUND, "LIGHT_NOT_FOUND")
    async with street.app.db.read() as session:
        assert await session.get(EnergyHourRow, ("sl-1", now.replace(minute=0, second=0))) is not None


@pytest.mark.req("STL-1")
async def test_creates_are_idempotent_by_request_id(street):
    calls = [
        (
            street.inventory.CreateLightModel,
            inv.CreateLightModelRequest(
                light_model=inv.LightModel(
                    display_name="LED", lamp_technology=inv.LAMP_TECHNOLOGY_LED, rated_power_w=40
                ),
                light_model_id="led-40",
                request_id="r-model",
            ),
            "LIGHT_MODEL_EXISTS",
        ),
        (
            street.inventory.CreateCabinet,
            inv.CreateCabinetRequest(cabinet=_cabinet_message(), cabinet_id="cab-1", request_id="r-cab"),
            "CABINET_EXISTS",
        ),
        (
            street.inventory.CreateFeeder,
            inv.CreateFeederRequest(
                feeder=inv.Feeder(display_name="F", cabinet="cabinets/cab-1", circuit=1, phase=inv.PHASE_L2),
                feeder_id="f-1",
                request_id="r-feeder",
            ),
            "FEEDER_EXISTS",
        ),
        (
            street.inventory.CreateGroup,
            inv.CreateGroupRequest(group=inv.Group(display_name="G"), group_id="g-1", request_id="r-group"),
            "GROUP_EXISTS",
        ),
        (
            street.inventory.CreateLight,
            inv.CreateLightRequest(
                light=inv.Light(
                    display_name="L",
                    location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                    model="lightModels/led-40",
                    feeder="feeders/f-1",
                    group="groups/g-1",
                ),
                light_id="sl-1",
                request_id="r-light",
            ),
            "LIGHT_EXISTS",
        ),
    ]
    for call, request, exists_reason in calls:
        first = await call(request, metadata=street.operator)
        again = await call(request, metadata=street.operator)
        assert again == first
        # The same request id for another payload is refused; without one, the id is taken.
        changed = type(request)()
        changed.CopyFrom(request)
        getattr(changed, changed.DESCRIPTOR.fields[0].name).display_name = "Another"
        reused = await refused(call(changed, metadata=street.operator))
        assert _fields(reused) == ["request_id"]
        changed.request_id = ""
        exists = await refused(call(changed, metadata=street.operator))
        assert _reason(exists) == (grpc.StatusCode.ALREADY_EXISTS, exists_reason)
    created = await _names(street.inventory.ListLights, inv.ListLightsRequest(), "lights", street.operator)
    assert created == ["lights/sl-1"]
    assert [event.type for event in await street.events()] == [
        "streetlights.light_model.created",
        "streetlights.cabinet.created",
        "streetlights.feeder.created",
        "streetlights.group.created",
        "streetlights.light.created",
    ]


@pytest.mark.req("STL-1")
async def test_bad_input_names_every_field(street):
    async def violations(call, request) -> list[str]:
        return _fields(await refused(call(request, metadata=street.operator)))

    assert await violations(
        street.inventory.CreateLightModel,
        inv.CreateLightModelRequest(
            light_model=inv.LightModel(
                display_name="",
                standby_power_w=21,
                luminous_flux_lm=float("nan"),
                color_temperature_k=500,
                working_life_h=200_001,
                minimum_dim_level=101,
                manufacturer="m" * 101,
                ownership=resources_pb2.Ownership(operator_organization="o" * 65),
            ),
            light_model_id="Bad Id",
        ),
    ) == sorted(
        [
            "light_model.display_name",
            "light_model.lamp_technology",
            "light_model.rated_power_w",
            "light_model.standby_power_w",
            "light_model.luminous_flux_lm",
            "light_model.color_temperature_k",
            "light_model.working_life_h",
            "light_model.minimum_dim_level",
            "light_model.manufacturer",
            "light_model.ownership.operator_organization",
            "light_model_id",
        ]
    )
    assert await violations(
        street.inventory.CreateLightModel,
        inv.CreateLightModelRequest(
            light_model=inv.LightModel(
                display_name="Big", lamp_technology=inv.LAMP_TECHNOLOGY_LED, rated_power_w=2001
            ),
            light_model_id="big",
        ),
    ) == ["light_model.rated_power_w"]
    assert await violations(
        street.inventory.CreateCabinet,
        inv.CreateCabinetRequest(
            cabinet=inv.Cabinet(
                display_name="c" * 201,
                device="sensors/cc-1",
                serial_number="s" * 101,
                maximum_power_w=-1,
            ),
            cabinet_id="-cab",
        ),
    ) == sorted(
        [
            "cabinet.display_name",
            "cabinet.location",
            "cabinet.working_mode",
            "cabinet.device",
            "cabinet.serial_number",
            "cabinet.maximum_power_w",
            "cabinet_id",
        ]
    )
    off_earth = _cabinet_message(maximum_power_w=1_000_001)
    off_earth.location.latitude, off_earth.location.longitude = 91, -181
    assert await violations(
        street.inventory.CreateCabinet, inv.CreateCabinetRequest(cabinet=off_earth, cabinet_id="cab-9")
    ) == ["cabinet.location.latitude", "cabinet.location.longitude", "cabinet.maximum_power_w"]
    assert await violations(
        street.inventory.CreateFeeder,
        inv.CreateFeederRequest(feeder=inv.Feeder(circuit=65), feeder_id="f-1"),
    ) == ["feeder.cabinet", "feeder.circuit", "feeder.display_name", "feeder.phase"]
    assert await violations(
        street.inventory.CreateFeeder,
        inv.CreateFeederRequest(
            feeder=inv.Feeder(display_name="F", cabinet="cab-1", phase=inv.PHASE_THREE), feeder_id="f-1"
        ),
    ) == ["feeder.cabinet", "feeder.circuit"]
    assert await violations(
        street.inventory.CreateGroup,
        inv.CreateGroupRequest(
            group=inv.Group(display_name="", description="d" * 2001, cabinet="cabinets/", schedule="plans/x"),
            group_id="g" * 64,
        ),
    ) == ["group.cabinet", "group.description", "group.display_name", "group.schedule", "group_id"]
    assert await violations(
        street.inventory.CreateLight,
        inv.CreateLightRequest(
            light=inv.Light(
                display_name="",
                feeder="feeder/f-1",
                group="groups/G",
                device="devices/",
                pole_number="p" * 51,
                street="s" * 201,
                location_category="highway",
                lantern_height_m=61,
                reported_status=inv.LIGHT_STATUS_DEFECTIVE_LAMP,
                heartbeat_timeout=duration_pb2.Duration(seconds=30),
                ownership=resources_pb2.Ownership(maintainer_organization="m" * 65),
            ),
            light_id="",
        ),
    ) == sorted(
        [
            "light.display_name",
            "light.location",
            "light.model",
            "light.feeder",
            "light.group",
            "light.device",
            "light.pole_number",
            "light.street",
            "light.location_category",
            "light.lantern_height_m",
            "light.reported_status",
            "light.heartbeat_timeout",
            "light.ownership.maintainer_organization",
            "light_id",
        ]
    )
    assert await violations(
        street.inventory.CreateLight,
        inv.CreateLightRequest(
            light=inv.Light(
                display_name="L",
                location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                model="lightModels/led-60",
                reported_status=99,
                heartbeat_timeout=duration_pb2.Duration(seconds=7 * 86400 + 1),
            ),
            light_id="sl-1",
        ),
    ) == ["light.heartbeat_timeout", "light.reported_status"]

    # An update checks only the fields its mask names; a name that is not one is named.
    await street.model()
    await street.cabinet("cab-1")
    await street.feeder("f-1")
    await street.group("g-1")
    await street.light("sl-1")
    assert await violations(
        street.inventory.UpdateLight,
        inv.UpdateLightRequest(
            light=inv.Light(
                name="lights/sl-1", lantern_height_m=-1, reported_status=inv.LIGHT_STATUS_DEFECTIVE_LAMP
            ),
            update_mask=_mask("lantern_height_m", "reported_status"),
        ),
    ) == ["light.lantern_height_m", "light.reported_status"]
    assert await violations(
        street.inventory.UpdateLight,
        inv.UpdateLightRequest(light=inv.Light(name="lights/sl-1"), update_mask=_mask("model")),
    ) == ["light.model"]
    assert await violations(
        street.inventory.UpdateFeeder,
        inv.UpdateFeederRequest(
            feeder=inv.Feeder(name="feeders/f-1", circuit=0), update_mask=_mask("circuit")
        ),
    ) == ["feeder.circuit"]
    assert await violations(
        street.inventory.UpdateCabinet,
        inv.UpdateCabinetRequest(cabinet=inv.Cabinet(name="cabinets/cab-1"), update_mask=_mask("location")),
    ) == ["cabinet.location"]
    assert await violations(
        street.inventory.UpdateGroup,
        inv.UpdateGroupRequest(group=inv.Group(name="groups/g-1"), update_mask=_mask("light_count")),
    ) == ["update_mask"]
    assert await violations(
        street.inventory.UpdateLightModel,
        inv.UpdateLightModelRequest(
            light_model=inv.LightModel(name="lightModels/led-60", rated_power_w=0),
            update_mask=_mask("rated_power_w"),
        ),
    ) == ["light_model.rated_power_w"]
    assert await violations(street.inventory.GetLight, inv.GetLightRequest(name="light/sl-1")) == ["name"]
    assert await violations(
        street.inventory.UpdateGroup,
        inv.UpdateGroupRequest(group=inv.Group(name="g-1"), update_mask=_mask("display_name")),
    ) == ["group.name"]
    assert await violations(
        street.inventory.ListLights,
        inv.ListLightsRequest(
            group="g-1", cabinet="cabinets/", feeder="feeders/F", street="s" * 201, area="bbox:1"
        ),
    ) == ["area", "cabinet", "feeder", "group", "street"]
    assert await violations(street.inventory.ListCabinets, inv.ListCabinetsRequest(area="h3:nonsense")) == [
        "area"
    ]
    assert await violations(street.inventory.ListFeeders, inv.ListFeedersRequest(cabinet="cab-1")) == [
        "cabinet"
    ]
    assert await violations(street.inventory.ListGroups, inv.ListGroupsRequest(schedule="x")) == ["schedule"]
    # Nothing bad was stored: only what the good requests made.
    assert [event.type.rsplit(".", 2)[1] for event in await street.events()] == [
        "light_model",
        "cabinet",
        "feeder",
        "group",
        "light",
    ]


@pytest.mark.req("STL-1")
async def test_each_organization_reaches_its_own(street):
    shared = resources_pb2.Ownership(maintainer_organization="utilities")
    await street.model(ownership=shared)
    await street.cabinet("cab-1", ownership=shared)
    await street.feeder("f-1")
    await street.group("g-1", ownership=shared)
    await street.light("sl-1", ownership=shared, feeder="feeders/f-1", group="groups/g-1")
    await street.model("led-own")
    await street.cabinet("cab-own")
    await street.feeder("f-own", "cabinets/cab-own")
    await street.group("g-own")
    await street.light("sl-own", model="lightModels/led-own")
    stranger = street.token("users/sam", "water-board", "operator")
    resources = [
        ("LightModel", "lightModels", "led-60", "led-own", "light_model", "LIGHT_MODEL_NOT_FOUND"),
        ("Cabinet", "cabinets", "cab-1", "cab-own", "cabinet", "CABINET_NOT_FOUND"),
        ("Feeder", "feeders", "f-1", "f-own", "feeder", "FEEDER_NOT_FOUND"),
        ("Group", "groups", "g-1", "g-own", "group", "GROUP_NOT_FOUND"),
        ("Light", "lights", "sl-1", "sl-own", "light", "LIGHT_NOT_FOUND"),
    ]
    for kind, collection, shared_id, own_id, field, reason in resources:
        get, update, delete = (
            getattr(street.inventory, f"{verb}{kind}") for verb in ("Get", "Update", "Delete")
        )
        message = getattr(inv, kind)
        plural = "light_models" if kind == "LightModel" else f"{field}s"
        listing = getattr(street.inventory, f"List{kind}s")
        list_request = getattr(inv, f"List{kind}sRequest")

        def updating(resource_id, message=message, kind=kind, field=field, collection=collection):
            return getattr(inv, f"Update{kind}Request")(
                **{field: message(name=f"{collection}/{resource_id}", display_name="Mine")},
                update_mask=_mask("display_name"),
            )

        # The maintainer (utilities) reads the shared ones but changes nothing; a stranger sees nothing.
        maintained = await get(
            getattr(inv, f"Get{kind}Request")(name=f"{collection}/{shared_id}"), metadata=street.other_org
        )
        assert maintained.name == f"{collection}/{shared_id}"
        assert await _names(listing, list_request(), plural, street.other_org) == [
            f"{collection}/{shared_id}"
        ]
        assert await _names(listing, list_request(), plural, stranger) == []
        for caller, resource_id in (
            (street.other_org, shared_id),
            (stranger, shared_id),
            (street.other_org, own_id),
        ):
            name = f"{collection}/{resource_id}"
            for call, request in (
                (get, getattr(inv, f"Get{kind}Request")(name=name)),
                (update, updating(resource_id)),
                (delete, getattr(inv, f"Delete{kind}Request")(name=name)),
            ):
                if caller is street.other_org and resource_id == shared_id and call is get:
                    continue
                hidden = await refused(call(request, metadata=caller))
                assert _reason(hidden) == (grpc.StatusCode.NOT_FOUND, reason), (kind, resource_id, call)

    # References must be the caller's to see (to change, for a feeder's cabinet): NOT_FOUND otherwise.
    foreign_feeder = await refused(
        street.inventory.CreateFeeder(
            inv.CreateFeederRequest(
                feeder=inv.Feeder(display_name="F", cabinet="cabinets/cab-1", circuit=5, phase=inv.PHASE_L1),
                feeder_id="f-x",
            ),
            metadata=street.other_org,  # maintains cab-1: reads it, may not add to it
        )
    )
    assert _reason(foreign_feeder) == (grpc.StatusCode.NOT_FOUND, "CABINET_NOT_FOUND")
    foreign_model = await refused(street.light("sl-x", model="lightModels/led-own", metadata=stranger))
    assert _reason(foreign_model) == (grpc.StatusCode.NOT_FOUND, "LIGHT_MODEL_NOT_FOUND")
    foreign_group = await refused(
        street.inventory.CreateGroup(
            inv.CreateGroupRequest(
                group=inv.Group(display_name="G", cabinet="cabinets/cab-own"), group_id="g-x"
            ),
            metadata=stranger,
        )
    )
    assert _reason(foreign_group) == (grpc.StatusCode.NOT_FOUND, "CABINET_NOT_FOUND")
    # Nor may anyone but a city-wide caller create for another owner.
    foreign_owner = await refused(
        street.light("sl-y", metadata=stranger, ownership=resources_pb2.Ownership(owner_organization=OWNER))
    )
    assert _reason(foreign_owner) == (grpc.StatusCode.PERMISSION_DENIED, "FOREIGN_OWNER")
    admin = street.token("users/ca", "city-office", "city-admin")
    placed = await street.light(
        "sl-z", metadata=admin, ownership=resources_pb2.Ownership(owner_organization=OWNER)
    )
    assert placed.ownership.owner_organization == OWNER
    # The operator's own are untouched by all of the above.
    own = await street.get_light("sl-own")
    assert own.display_name == "SL-OWN"


@pytest.mark.req("STL-1")
async def test_every_change_is_an_event_carrying_the_resource(street):
    await street.model()
    cabinet = await street.cabinet("cab-1")
    await street.feeder("f-1")
    await street.group("g-1")
    light = await street.light("sl-1", feeder="feeders/f-1", group="groups/g-1")
    for kind, name, field in (
        ("LightModel", "lightModels/led-60", "light_model"),
        ("Cabinet", "cabinets/cab-1", "cabinet"),
        ("Feeder", "feeders/f-1", "feeder"),
        ("Group", "groups/g-1", "group"),
        ("Light", "lights/sl-1", "light"),
    ):
        await getattr(street.inventory, f"Update{kind}")(
            getattr(inv, f"Update{kind}Request")(
                **{field: getattr(inv, kind)(name=name, display_name=f"{kind} renamed")},
                update_mask=_mask("display_name"),
            ),
            metadata=street.operator,
        )
    await street.inventory.UpdateLight(
        inv.UpdateLightRequest(light=inv.Light(name=light.name), update_mask=_mask("feeder", "group")),
        metadata=street.operator,
    )
    for kind, name in (
        ("Light", "lights/sl-1"),
        ("Group", "groups/g-1"),
        ("Feeder", "feeders/f-1"),
        ("Cabinet", "cabinets/cab-1"),
        ("LightModel", "lightModels/led-60"),
    ):
        await getattr(street.inventory, f"Delete{kind}")(
            getattr(inv, f"Delete{kind}Request")(name=name), metadata=street.operator
        )
    events = await street.events()
    assert [(event.type, event.subject) for event in events] == [
        ("streetlights.light_model.created", "lightModels/led-60"),
        ("streetlights.cabinet.created", "cabinets/cab-1"),
        ("streetlights.feeder.created", "feeders/f-1"),
        ("streetlights.group.created", "groups/g-1"),
        ("streetlights.light.created", "lights/sl-1"),
        ("streetlights.light_model.updated", "lightModels/led-60"),
        ("streetlights.cabinet.updated", "cabinets/cab-1"),
        ("streetlights.feeder.updated", "feeders/f-1"),
        ("streetlights.group.updated", "groups/g-1"),
        ("streetlights.light.updated", "lights/sl-1"),
        ("streetlights.light.updated", "lights/sl-1"),
        ("streetlights.light.deleted", "lights/sl-1"),
        ("streetlights.group.deleted", "groups/g-1"),
        ("streetlights.feeder.deleted", "feeders/f-1"),
        ("streetlights.cabinet.deleted", "cabinets/cab-1"),
        ("streetlights.light_model.deleted", "lightModels/led-60"),
    ]
    assert {event.owner_organization for event in events} == {OWNER}
    # Located resources (and feeders, in their cabinet's) carry their cell.
    cells = {event.subject: event.area_cell for event in events}
    assert cells["cabinets/cab-1"] == cells["feeders/f-1"] == cells["lights/sl-1"] == cabinet.area_cell
    # The payload is the resource as it was then.
    created = inv.Light()
    assert events[4].payload.Unpack(created)
    assert (created.name, created.cabinet, created.group) == ("lights/sl-1", "cabinets/cab-1", "groups/g-1")
    renamed = inv.Light()
    assert events[9].payload.Unpack(renamed)
    assert (renamed.display_name, renamed.etag != created.etag) == ("Light renamed", True)
    detached = inv.Feeder()
    assert events[7].payload.Unpack(detached)
    assert (detached.display_name, detached.light_count) == ("Feeder renamed", 1)
