"""STL-4 and STL-5: lights' and cabinets' live state and faults from their controllers' readings, through
the service.

A real devices service and a real streetlights service run in-process on one ManualClock (the `grid`
fixture): controllers report as themselves, the service follows the feed. The clock is set so that it is
night (23:00 at the lights, UTC+8) or day (noon) for sure. The inventory (model, cabinet, feeders,
lights) is written directly to the database, and what is in force (`desired_level`, `desired_since`)
too, standing in for the schedule applier. The pure rules at their edges are test_rules.py's; here each
fault kind is raised from telemetry and cleared on recovery, and the root-cause outages are proven end
to end: one fault listing the lights, no lamp faults while it lasts, folding, recovery, and the feeder
outage inferred from silence.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from cityos.streetlights.v1 import faults_pb2, inventory_pb2
from cityos_platform.areas import cell_for
from cityos_platform.testing.waiting import eventually
from cityos_streetlights.models import (
    CabinetRow,
    EnergyHourRow,
    FaultRow,
    FeederRow,
    LightModelRow,
    LightRow,
)

pb = faults_pb2
CENTER = (39.05, 115.95)
OWNER = "public-works"
OPEN, CLEARED = pb.FAULT_STATE_OPEN, pb.FAULT_STATE_CLEARED
LAMP_FAILURE, DAY_BURNER, LAMP_OUT = (
    pb.FAULT_KIND_LAMP_FAILURE,
    pb.FAULT_KIND_DAY_BURNER,
    pb.FAULT_KIND_LAMP_OUT,
)
POWER_ANOMALY, RELAY_FAILURE = pb.FAULT_KIND_POWER_ANOMALY, pb.FAULT_KIND_RELAY_FAILURE
OFFLINE, CABINET_OUTAGE, FEEDER_OUTAGE = (
    pb.FAULT_KIND_CONTROLLER_OFFLINE,
    pb.FAULT_KIND_CABINET_OUTAGE,
    pb.FAULT_KIND_FEEDER_OUTAGE,
)
SCHEDULE, OVERRIDE = inventory_pb2.CONTROL_SOURCE_SCHEDULE, inventory_pb2.CONTROL_SOURCE_OVERRIDE
TIMEOUT = timedelta(seconds=7200)  # the lights' and the cabinet's default heartbeat timeout
BURNING = {"on": 1.0, "dim_level": 100.0, "power_w": 60.5}
DARK = {"on": 0.0, "power_w": 0.0}
MAINS = {
    "voltage_l1_v": 230.0,
    "voltage_l2_v": 231.0,
    "voltage_l3_v": 229.0,
    "circuit_1": 1.0,
    "circuit_2": 1.0,
}


def local(clock, utc_hour: int) -> datetime:
    """Move the clock forward to the next whole `utc_hour` (15: 23:00 at the lights; 4: noon)."""
    now = clock.now()
    target = now.replace(hour=utc_hour, minute=0, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    clock.set(target)
    return target


def night(clock) -> datetime:
    return local(clock, 15)


def day(clock) -> datetime:
    return local(clock, 4)


class Streetlights:
    """The inventory written directly, controllers reporting, and the faults as stored."""

    def __init__(self, grid, clock):
        self.grid, self.clock, self.db = grid, clock, grid.app.db

    async def build(
        self,
        lights: dict[str, str | None],
        feeders: dict[str, tuple[int, int]] | None = None,
        *,
        cabinet_device: str | None = None,
    ) -> None:
        """Model led-60 (60 W, 0.5 W standby), cabinet cab-1 (with `cabinet_device`), `feeders` (id ->
        circuit, phase) and `lights` (id -> feeder), each light with its controller `ctl-<id>`."""
        cell = cell_for(*CENTER)
        async with self.db.transaction() as tx:
            now = tx.now
            common: dict[str, Any] = {"etag": "e", "create_time": now, "update_time": now}
            owned = {"owner_organization": OWNER, "operator_organization": "", "maintainer_organization": ""}
            place = {"latitude": CENTER[0], "longitude": CENTER[1], "area_cell": cell}
            tx.session.add(
                LightModelRow(
                    light_model_id="led-60",
                    display_name="LED 60 W",
                    lamp_technology=inventory_pb2.LAMP_TECHNOLOGY_LED,
                    rated_power_w=60.0,
                    standby_power_w=0.5,
                    **owned,
                    **common,
                )
            )
            tx.session.add(
                CabinetRow(
                    cabinet_id="cab-1",
                    display_name="CAB-1",
                    working_mode=inventory_pb2.WORKING_MODE_AUTOMATIC,
                    device_id=cabinet_device,
                    circuits={},
                    **owned,
                    **place,
                    **common,
                )
            )
            await tx.session.flush()
            for feeder_id, (circuit, phase) in (feeders or {}).items():
                tx.session.add(
                    FeederRow(
                        feeder_id=feeder_id,
                        display_name=feeder_id.upper(),
                        cabinet_id="cab-1",
                        circuit=circuit,
                        phase=phase,
                        **common,
                    )
                )
            await tx.session.flush()
            for light_id, feeder_id in lights.items():
                tx.session.add(
                    LightRow(
                        light_id=light_id,
                        display_name=light_id.upper(),
                        light_model_id="led-60",
                        feeder_id=feeder_id,
                        cabinet_id="cab-1" if feeder_id else None,
                        device_id=f"ctl-{light_id}",
                        controller_faults=[],
                        **owned,
                        **place,
                        **common,
                    )
                )
        for light_id in lights:
            await self.grid.fleet.device(f"ctl-{light_id}", "ctl", CENTER)
        if cabinet_device:
            await self.grid.fleet.device(cabinet_device, "cab", CENTER)

    async def in_force(
        self, light_ids: Iterable[str], level: int, *, since: datetime, source: int = SCHEDULE
    ):
        """What the schedule applier (or a control) would have set."""
        async with self.db.transaction() as tx:
            for light_id in light_ids:
                row = await tx.session.get(LightRow, light_id)
                row.desired_level, row.desired_source, row.desired_since = level, source, since

    async def light(self, light_id: str) -> LightRow:
        async with self.db.read() as session:
            return await session.get(LightRow, light_id)

    async def cabinet(self) -> CabinetRow:
        async with self.db.read() as session:
            return await session.get(CabinetRow, "cab-1")

    async def report(self, light_id: str, **values: float) -> LightRow:
        """Report as the light's controller and wait until the light has applied it."""
        measured = await self.grid.fleet.report(f"ctl-{light_id}", **values)
        return await eventually(lambda: self.light(light_id), lambda row: row.reading_time == measured)

    async def report_cabinet(self, device: str, **values: float) -> CabinetRow:
        measured = await self.grid.fleet.report(device, **values)
        return await eventually(self.cabinet, lambda row: row.reading_time == measured)

    async def faults(self, *, open_only: bool = False) -> list[FaultRow]:
        async with self.db.read() as session:
            statement = select(FaultRow).order_by(FaultRow.raise_time, FaultRow.subject, FaultRow.kind)
            if open_only:
                statement = statement.where(FaultRow.state != CLEARED)
            return list(await session.scalars(statement))

    async def open(self) -> set[tuple[str, int]]:
        return {(fault.subject, fault.kind) for fault in await self.faults(open_only=True)}

    async def events(self) -> list[tuple[str, pb.FaultChanged]]:
        found = []
        for event in await self.grid.events("streetlights."):
            if event.type.startswith(
                ("streetlights.fault.", "streetlights.cabinet.", "streetlights.feeder.")
            ):
                changed = pb.FaultChanged()
                assert event.payload.Unpack(changed)
                found.append((event.type, changed))
        return found


@pytest.fixture
async def sl(grid, clock):
    return Streetlights(grid, clock)


def _only(faults: list[FaultRow], kind: int) -> FaultRow:
    (fault,) = [fault for fault in faults if fault.kind == kind]
    return fault


# -- STL-4: the five lamp faults from telemetry ------------------------------------------------------------


@pytest.mark.req("STL-4")
async def test_a_lamp_failure_reported_by_the_controller_is_raised_and_cleared_when_it_works_again(sl, clock):
    await sl.build({"sl-1": None})
    night(clock)
    await sl.in_force(["sl-1"], 100, since=clock.now() - timedelta(hours=1))
    light = await sl.report("sl-1", **BURNING)
    assert (light.power_state, light.power_w, light.dim_level) == (inventory_pb2.POWER_STATE_ON, 60.5, 100.0)
    assert await sl.faults() == []
    clock.advance(300)
    light = await sl.report("sl-1", lamp_failure=1.0, power_w=0.0)
    assert light.controller_faults == [inventory_pb2.CONTROLLER_FAULT_LAMP_FAILURE]
    (fault,) = await sl.faults()  # no LAMP_OUT: the failure explains the darkness
    assert (fault.kind, fault.subject, fault.state) == (LAMP_FAILURE, "lights/sl-1", OPEN)
    assert fault.detail == "the controller reports lamp failure"
    assert (fault.owner_organization, fault.area_cell) == (OWNER, cell_for(*CENTER))
    clock.advance(300)
    await sl.report("sl-1", power_w=0.0)  # the flag is not repeated: it keeps its value
    assert await sl.open() == {("lights/sl-1", LAMP_FAILURE)}
    clock.advance(300)
    light = await sl.report("sl-1", lamp_failure=0.0, power_w=60.0)
    assert light.controller_faults == []
    (fault,) = await sl.faults()
    assert (fault.state, fault.clear_time) == (CLEARED, clock.now())
    events = await sl.events()
    assert [kind for kind, _ in events] == ["streetlights.fault.raised", "streetlights.fault.cleared"]
    assert events[1][1].previous_state == OPEN
    assert events[1][1].fault.name == f"faults/{fault.fault_id}"


@pytest.mark.req("STL-4")
async def test_a_day_burner_is_raised_by_day_and_cleared_when_switched_off_or_asked_for_by_an_override(
    sl, clock
):
    await sl.build({"sl-1": None})
    day(clock)
    await sl.in_force(["sl-1"], 0, since=clock.now() - timedelta(hours=5))
    await sl.report("sl-1", on=1.0, power_w=60.0)
    (fault,) = await sl.faults()
    assert (fault.kind, fault.value, fault.expected) == (DAY_BURNER, 60.0, 0.5)
    assert fault.detail == "burning in daylight (power 60 W)"
    clock.advance(300)
    await sl.report("sl-1", on=0.0, power_w=0.4)
    assert await sl.open() == set()
    # Burning again by day: a new fault; then an operator's override asks for light: not a day burner.
    clock.advance(300)
    await sl.report("sl-1", on=1.0, power_w=60.0)
    assert await sl.open() == {("lights/sl-1", DAY_BURNER)}
    await sl.in_force(["sl-1"], 100, since=clock.now(), source=OVERRIDE)
    clock.advance(300)
    await sl.report("sl-1", on=1.0, power_w=60.0)
    faults = await sl.faults()
    assert [(fault.kind, fault.state) for fault in faults] == [(DAY_BURNER, CLEARED), (DAY_BURNER, CLEARED)]
    assert [kind for kind, _ in await sl.events()] == [
        "streetlights.fault.raised",
        "streetlights.fault.cleared",
        "streetlights.fault.raised",
        "streetlights.fault.cleared",
    ]


@pytest.mark.req("STL-4")
async def test_a_lamp_out_is_raised_after_the_grace_and_cleared_when_it_burns(sl, clock):
    await sl.build({"sl-1": None})
    night(clock)
    await sl.in_force(["sl-1"], 100, since=clock.now())  # just switched on by the schedule
    await sl.report("sl-1", **DARK)
    assert await sl.faults() == []  # within the grace: the controller may not have it yet
    clock.advance(900)  # the grace (lamp_out_grace_s)
    await sl.report("sl-1", **DARK)
    (fault,) = await sl.faults()
    assert (fault.kind, fault.value, fault.expected) == (LAMP_OUT, 0.0, 60.5)
    assert fault.detail == "dark (power 0 W) while 100 % is in force (expected 60 W)"
    clock.advance(300)
    await sl.report("sl-1", **BURNING)
    (fault,) = await sl.faults()
    assert (fault.state, fault.clear_time) == (CLEARED, clock.now())


@pytest.mark.req("STL-4")
async def test_a_power_anomaly_is_raised_updated_and_cleared_when_the_power_is_back_within_tolerance(
    sl, clock
):
    await sl.build({"sl-1": None})
    night(clock)
    await sl.in_force(["sl-1"], 100, since=clock.now() - timedelta(hours=1))
    await sl.report("sl-1", on=1.0, dim_level=100.0, power_w=30.0)
    (fault,) = await sl.faults()
    assert (fault.kind, fault.value, fault.expected) == (POWER_ANOMALY, 30.0, 60.5)
    assert fault.detail == "power 30 W, expected 60 W ± 25 % at 100 %"
    clock.advance(300)
    await sl.report("sl-1", power_w=35.0)  # still off: the same fault, updated
    (fault,) = await sl.faults()
    assert (fault.state, fault.value, fault.detail) == (
        OPEN,
        35.0,
        "power 35 W, expected 60 W ± 25 % at 100 %",
    )
    clock.advance(300)
    await sl.report("sl-1", dim_level=50.0, power_w=30.0)  # dimmed to 50 %: 30.5 W is right
    (fault,) = await sl.faults()
    assert fault.state == CLEARED
    assert [kind for kind, _ in await sl.events()] == [
        "streetlights.fault.raised",
        "streetlights.fault.updated",
        "streetlights.fault.cleared",
    ]


@pytest.mark.req("STL-4")
async def test_a_relay_failure_is_raised_by_the_flag_or_a_lamp_burning_while_off_is_in_force(sl, clock):
    await sl.build({"sl-1": None, "sl-2": None})
    night(clock)
    await sl.in_force(["sl-1"], 100, since=clock.now() - timedelta(hours=1))
    await sl.in_force(["sl-2"], 0, since=clock.now() - timedelta(hours=1))  # a midnight switch-off
    await sl.report("sl-1", relay_failure=1.0, **BURNING)
    await sl.report("sl-2", on=1.0, power_w=60.0)  # the relay did not open
    assert await sl.open() == {("lights/sl-1", RELAY_FAILURE), ("lights/sl-2", RELAY_FAILURE)}
    stuck = next(fault for fault in await sl.faults() if fault.subject == "lights/sl-2")
    assert stuck.detail == "burning (power 60 W) though off is in force (a stuck relay)"
    clock.advance(300)
    await sl.report("sl-1", relay_failure=0.0)
    await sl.report("sl-2", on=0.0, power_w=0.4)
    assert await sl.open() == set()
    assert {fault.state for fault in await sl.faults()} == {CLEARED}


@pytest.mark.req("STL-4")
async def test_late_readings_only_count_as_heard_and_readings_are_metered_before_they_are_stored(sl, clock):
    await sl.build({"sl-1": None})
    night(clock)
    start = clock.now()
    await sl.report("sl-1", energy_wh=1000.0, **BURNING)
    clock.advance(600)
    light = await sl.report("sl-1", energy_wh=1010.0)
    assert (light.energy_wh, light.power_w) == (1010.0, 60.5)  # what it left out kept its value
    async with sl.db.read() as session:
        (bucket,) = await session.scalars(select(EnergyHourRow))
    assert (bucket.light_id, bucket.energy_wh, bucket.burning_s) == ("sl-1", pytest.approx(10.0), 600.0)
    # A retransmission measured before the state: heard, nothing else.
    clock.advance(60)
    await sl.grid.fleet.report("ctl-sl-1", at=start, power_w=5.0, lamp_failure=1.0)
    light = await eventually(lambda: sl.light("sl-1"), lambda row: row.heard_time == clock.now())
    assert (light.power_w, light.reading_time, light.controller_faults) == (
        60.5,
        start + timedelta(seconds=600),
        [],
    )
    assert await sl.faults() == []


@pytest.mark.req("STL-4")
async def test_a_silent_controller_gets_controller_offline_and_heard_again_clears_it(sl, clock):
    await sl.build({"sl-1": None}, cabinet_device="cab-ctl")
    night(clock)
    await sl.report("sl-1", **BURNING)
    await sl.report_cabinet("cab-ctl", **MAINS)
    async with sl.db.transaction() as tx:  # an hourly bucket past the retention (400 days)
        tx.session.add(EnergyHourRow(light_id="sl-1", hour=tx.now.replace(minute=0) - timedelta(days=401)))
    clock.advance(TIMEOUT.total_seconds())
    assert await sl.grid.app.heartbeat.tick() == 0  # exactly at the timeout: not yet
    clock.advance(1)
    assert await sl.grid.app.heartbeat.tick() == 2  # the cabinet's mark and the light's fault
    (fault,) = await sl.faults()
    assert (fault.kind, fault.subject, fault.expected) == (OFFLINE, "lights/sl-1", 7200.0)
    assert (await sl.light("sl-1")).heartbeat_missed
    assert (await sl.cabinet()).heartbeat_missed
    async with sl.db.read() as session:
        assert list(await session.scalars(select(EnergyHourRow))) == []  # pruned
    clock.advance(60)
    light = await sl.report("sl-1", **BURNING)
    assert not light.heartbeat_missed
    assert (await sl.faults())[0].state == CLEARED
    await sl.report_cabinet("cab-ctl", **MAINS)
    assert not (await sl.cabinet()).heartbeat_missed


# -- STL-5: root-cause outages ------------------------------------------------------------------------


LIGHTS = {"sl-1": "f-1", "sl-2": "f-1", "sl-3": "f-1", "sl-4": "f-2", "sl-5": "f-2", "sl-6": "f-2"}
FEEDERS = {"f-1": (1, inventory_pb2.PHASE_L1), "f-2": (2, inventory_pb2.PHASE_L2)}


async def _district(sl, clock) -> None:
    """Cabinet cab-1 (controller cab-ctl) feeding f-1 (sl-1..3) and f-2 (sl-4..6), all burning at night
    with 100 % in force."""
    await sl.build(LIGHTS, FEEDERS, cabinet_device="cab-ctl")
    night(clock)
    await sl.in_force(LIGHTS, 100, since=clock.now() - timedelta(hours=1))
    await sl.report_cabinet("cab-ctl", **MAINS)
    for light_id in LIGHTS:
        await sl.report(light_id, **BURNING)
    assert await sl.faults() == []


async def _feeders(sl) -> dict[str, bool]:
    async with sl.db.read() as session:
        return {row.feeder_id: row.energized for row in await session.scalars(select(FeederRow))}


@pytest.mark.req("STL-5")
async def test_a_cabinet_losing_its_mains_is_one_fault_listing_its_lights_with_no_lamp_faults(sl, clock):
    await _district(sl, clock)
    clock.advance(300)
    for light_id in ("sl-1", "sl-2", "sl-4"):  # they go dark first and raise LAMP_OUT
        await sl.report(light_id, **DARK)
    assert await sl.open() == {
        ("lights/sl-1", LAMP_OUT),
        ("lights/sl-2", LAMP_OUT),
        ("lights/sl-4", LAMP_OUT),
    }
    clock.advance(30)
    cabinet = await sl.report_cabinet("cab-ctl", voltage_l1_v=0.0, voltage_l2_v=3.0, voltage_l3_v=0.0)
    assert cabinet.outage
    assert await _feeders(sl) == {"f-1": False, "f-2": False}
    (outage,) = [fault for fault in await sl.faults(open_only=True)]
    assert (outage.kind, outage.subject, outage.affected_lights) == (
        CABINET_OUTAGE,
        "cabinets/cab-1",
        sorted(LIGHTS),
    )
    assert (outage.value, outage.expected) == (3.0, 100.0)
    folded = [fault for fault in await sl.faults() if fault.kind == LAMP_OUT]
    assert {(fault.state, fault.detail) for fault in folded} == {
        (CLEARED, f"folded into faults/{outage.fault_id}")
    }
    # Every light reports dark while 100 % is in force: no lamp fault of their own.
    clock.advance(300)
    for light_id in LIGHTS:
        await sl.report(light_id, **DARK)
    assert await sl.open() == {("cabinets/cab-1", CABINET_OUTAGE)}
    # Silent for hours: still explained by the outage (no CONTROLLER_OFFLINE, no inferred feeder outage).
    clock.advance(TIMEOUT.total_seconds() + 1)
    await sl.grid.app.heartbeat.tick()
    assert await sl.open() == {("cabinets/cab-1", CABINET_OUTAGE)}
    assert (await sl.light("sl-3")).heartbeat_missed
    # Mains back: the outage clears; the lamps burn again and are judged as usual.
    clock.advance(60)
    cabinet = await sl.report_cabinet("cab-ctl", **MAINS)
    assert not cabinet.outage
    assert await _feeders(sl) == {"f-1": True, "f-2": True}
    for light_id in LIGHTS:
        await sl.report(light_id, **BURNING)
    assert await sl.open() == set()
    (cleared,) = [fault for fault in await sl.faults() if fault.kind == CABINET_OUTAGE]
    assert (cleared.state, cleared.clear_time) == (CLEARED, cabinet.reading_time)
    events = await sl.events()
    offline = [changed for kind, changed in events if kind == "streetlights.cabinet.offline"]
    assert [changed.fault.name for changed in offline] == [f"faults/{outage.fault_id}"]
    assert list(offline[0].fault.affected_lights) == [f"lights/{light_id}" for light_id in sorted(LIGHTS)]
    outage_events = [kind for kind, changed in events if changed.fault.kind == CABINET_OUTAGE]
    assert outage_events == [
        "streetlights.fault.raised",
        "streetlights.cabinet.offline",
        "streetlights.fault.cleared",
    ]


@pytest.mark.req("STL-5")
async def test_a_tripped_circuit_is_one_feeder_outage_listing_only_its_lights(sl, clock):
    await _district(sl, clock)
    clock.advance(300)
    await sl.report_cabinet("cab-ctl", circuit_2=0.0)
    assert await _feeders(sl) == {"f-1": True, "f-2": False}
    (outage,) = await sl.faults(open_only=True)
    assert (outage.kind, outage.subject, outage.affected_lights) == (
        FEEDER_OUTAGE,
        "feeders/f-2",
        ["sl-4", "sl-5", "sl-6"],
    )
    assert outage.detail == "the breaker of circuit 2 is open"
    assert (outage.owner_organization, outage.area_cell) == (OWNER, cell_for(*CENTER))
    clock.advance(30)
    for light_id in ("sl-4", "sl-5", "sl-6", "sl-1"):
        await sl.report(light_id, **DARK)
    # Its own lights get no lamp fault; a light on the other feeder does.
    assert await sl.open() == {("feeders/f-2", FEEDER_OUTAGE), ("lights/sl-1", LAMP_OUT)}
    clock.advance(60)
    await sl.report_cabinet("cab-ctl", circuit_2=1.0)
    assert await _feeders(sl) == {"f-1": True, "f-2": True}
    assert await sl.open() == {("lights/sl-1", LAMP_OUT)}
    events = await sl.events()
    assert [changed.fault.subject for kind, changed in events if kind == "streetlights.feeder.offline"] == [
        "feeders/f-2"
    ]
    # A dead phase is a dead feeder too (f-1 is on L1).
    clock.advance(60)
    await sl.report_cabinet("cab-ctl", voltage_l1_v=20.0)
    assert ("feeders/f-1", FEEDER_OUTAGE) in await sl.open()
    assert ("lights/sl-1", LAMP_OUT) not in await sl.open()  # folded
    assert await _feeders(sl) == {"f-1": False, "f-2": True}


@pytest.mark.req("STL-5")
async def test_a_feeder_whose_lights_all_fall_silent_is_an_inferred_outage_instead_of_lamp_faults(sl, clock):
    await _district(sl, clock)
    tick = sl.grid.app.heartbeat.tick
    clock.advance(3600)
    for light_id in ("sl-2", "sl-3", "sl-5", "sl-6"):
        await sl.report(light_id, **BURNING)
    clock.advance(3601)  # sl-1 and sl-4 silent past their timeout, their neighbours not
    await tick()
    assert await sl.open() == {("lights/sl-1", OFFLINE), ("lights/sl-4", OFFLINE)}
    assert (await sl.cabinet()).heartbeat_missed  # silent too, and it explains nothing
    for light_id in ("sl-5", "sl-6"):
        await sl.report(light_id, **BURNING)
    clock.advance(3600)  # now sl-2 and sl-3 too: every light of f-1
    await tick()
    assert await sl.open() == {("feeders/f-1", FEEDER_OUTAGE), ("lights/sl-4", OFFLINE)}
    (inferred,) = [fault for fault in await sl.faults(open_only=True) if fault.kind == FEEDER_OUTAGE]
    assert inferred.detail == "inferred: every light on it is silent"
    assert inferred.affected_lights == ["sl-1", "sl-2", "sl-3"]
    sl_1_offline = next(fault for fault in await sl.faults() if fault.subject == "lights/sl-1")
    assert (sl_1_offline.state, sl_1_offline.detail) == (CLEARED, f"folded into faults/{inferred.fault_id}")
    await tick()  # again: nothing changes
    assert await sl.open() == {("feeders/f-1", FEEDER_OUTAGE), ("lights/sl-4", OFFLINE)}
    # One of its lights is heard again: the feeder is live; the others are offline on their own.
    clock.advance(60)
    await sl.report("sl-2", **BURNING)
    assert await sl.open() == {("lights/sl-4", OFFLINE)}
    await tick()
    assert await sl.open() == {("lights/sl-1", OFFLINE), ("lights/sl-3", OFFLINE), ("lights/sl-4", OFFLINE)}
    assert [kind for kind, changed in await sl.events() if changed.fault.kind == FEEDER_OUTAGE] == [
        "streetlights.fault.raised",
        "streetlights.feeder.offline",
        "streetlights.fault.cleared",
    ]
