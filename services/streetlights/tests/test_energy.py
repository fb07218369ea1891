"""STL-6: energy and dimming savings per light, group and cabinet, as a table of cases.

The metering rules (`measure`, `split_by_hour`) as a table of reading sequences with the kWh, full-power
kWh, savings and ratio they must give; then the same rules through `meter` and a running service:
readings of four lights in two groups on two cabinets metered in transactions, and GetEnergyReport per
light, group and cabinet (totals, hours and days) equal to the table; validation and tenancy refusals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from sqlalchemy import select

from cityos.streetlights.v1 import energy_pb2, inventory_pb2
from cityos_platform.areas import cell_for
from cityos_platform.testing.status import field_violations, refused, stamp
from cityos_streetlights.energy import MAX_GAP_S, measure, meter, split_by_hour
from cityos_streetlights.models import CabinetRow, EnergyHourRow, FeederRow, GroupRow, LightModelRow, LightRow

ON, LOW, OFF = inventory_pb2.POWER_STATE_ON, inventory_pb2.POWER_STATE_LOW, inventory_pb2.POWER_STATE_OFF
BOOTING = inventory_pb2.POWER_STATE_BOOTING_UP
HOUR_, DAY_ = energy_pb2.ENERGY_INTERVAL_HOUR, energy_pb2.ENERGY_INTERVAL_DAY
D = datetime(2025, 1, 15, tzinfo=UTC)


def at(hours: float) -> datetime:
    """`hours` after 2025-01-15T00:00Z."""
    return D + timedelta(hours=hours)


@dataclass(frozen=True)
class Reading:
    """One controller reading: its time (hours after D), lifetime counter (Wh), power (W) and state."""

    time: float
    energy_wh: float | None = None
    power_w: float | None = None
    state: int = ON


@dataclass(frozen=True)
class Live:
    """The light's live columns as the live-state code keeps them: a value a reading leaves out keeps
    its last one."""

    reading_time: datetime | None = None
    energy_wh: float | None = None
    power_w: float | None = None
    power_state: int = inventory_pb2.POWER_STATE_UNSPECIFIED

    def after(self, reading: Reading) -> Live:
        return Live(
            reading_time=at(reading.time),
            energy_wh=reading.energy_wh if reading.energy_wh is not None else self.energy_wh,
            power_w=reading.power_w if reading.power_w is not None else self.power_w,
            power_state=reading.state,
        )


def run(readings: list[Reading], rated_w: float, *, merged: bool) -> dict[datetime, list[float]]:
    """Meter the readings in order (pure): hour -> [energy Wh, burning s, full Wh]. `merged`: the caller
    hands over this reading's counter or, when it carries none, the kept one (else None)."""
    live, hours = Live(), {}
    for reading in readings:
        counter = reading.energy_wh if reading.energy_wh is not None or not merged else live.energy_wh
        interval = measure(
            previous_time=live.reading_time,
            previous_energy_wh=live.energy_wh,
            previous_power_w=live.power_w,
            previous_state=live.power_state,
            rated_power_w=rated_w,
            time=at(reading.time),
            energy_wh=counter,
        )
        if interval is not None:
            for hour, energy, burning, full in split_by_hour(
                interval.start, interval.end, interval.energy_wh, interval.burning_s, interval.full_power_wh
            ):
                bucket = hours.setdefault(hour, [0.0, 0.0, 0.0])
                bucket[0] += energy
                bucket[1] += burning
                bucket[2] += full
        live = live.after(reading)
    return hours


def hourly(start: float, stop: float, step: float, **fields: Any) -> list[Reading]:
    """Readings every `step` hours from `start` to `stop` (inclusive), counter from `counter0` rising by
    `wh_per_h`, at `power_w`, in `state`."""
    counter0 = fields.pop("counter0", None)
    per_h = fields.pop("wh_per_h", 0.0)
    out, t = [], start
    while t <= stop + 1e-9:
        counter = None if counter0 is None else counter0 + per_h * (t - start)
        out.append(Reading(t, counter, **fields))
        t += step
    return out


def dark(t: float, counter: float | None = None) -> Reading:
    return Reading(t, counter, 0.0, OFF)


# name, rated W, readings, energy kWh, full kWh, savings kWh, ratio, {hour offset: energy Wh} (or None)
CASES = [
    (
        "full power 10 h (counter)",
        60.0,
        [*hourly(18, 27, 1, counter0=1000.0, wh_per_h=60.0, power_w=60.0), dark(28, 1600.0)],
        0.6,
        0.6,
        0.0,
        0.0,
        {18: 60.0, 27: 60.0},
    ),
    (
        "50 % dimming 10 h (counter)",
        60.0,
        [*hourly(18, 27, 1, counter0=0.0, wh_per_h=30.0, power_w=30.0, state=LOW), dark(28, 300.0)],
        0.3,
        0.6,
        0.3,
        0.5,
        {20: 30.0},
    ),
    (
        "a dimming program mixing levels (power only): 4 h 100 %, 4 h 50 %, 2 h 20 %",
        100.0,
        [
            *hourly(18, 21.5, 0.5, power_w=100.0),
            *hourly(22, 25.5, 0.5, power_w=50.0, state=LOW),
            *hourly(26, 27.5, 0.5, power_w=20.0, state=LOW),
            dark(28),
        ],
        0.64,
        1.0,
        0.36,
        0.36,
        {18: 100.0, 23: 50.0, 27: 20.0},
    ),
    (
        "a counter reset: that interval falls back to the previous power",
        60.0,
        [
            Reading(18, 5000.0, 60.0),
            Reading(19, 5060.0, 60.0),
            Reading(20, 7.0, 60.0),
            Reading(21, 67.0, 60.0),
            dark(22, 127.0),
        ],
        0.24,
        0.24,
        0.0,
        0.0,
        {19: 60.0, 20: 60.0},
    ),
    (
        "a replaced controller with a used meter (a counter jump): the previous power",
        60.0,
        [
            Reading(18, 100.0, 60.0),
            Reading(19, 880_000.0, 60.0),
            Reading(20, 880_060.0, 60.0),
            dark(21, 880_120.0),
        ],
        0.18,
        0.18,
        0.0,
        0.0,
        {18: 60.0},
    ),
    (
        "a gap over the 6 h cap is not metered (18-19 and 02-03 are)",
        60.0,
        [Reading(18, 0.0, 60.0), Reading(19, 60.0, 60.0), Reading(26, 480.0, 60.0), Reading(27, 540.0, 60.0)],
        0.12,
        0.12,
        0.0,
        0.0,
        {18: 60.0, 26: 60.0, 19: None, 25: None},
    ),
    (
        "a gap at the cap is metered",
        60.0,
        [Reading(18, 0.0, 60.0), Reading(18 + MAX_GAP_S / 3600, 360.0, 60.0)],
        0.36,
        0.36,
        0.0,
        0.0,
        {18: 60.0, 23: 60.0},
    ),
    (
        "hour-boundary splits in proportion to time: 18:40-19:10 and 19:10-21:25 at 60 W",
        60.0,
        [Reading(18 + 40 / 60, None, 60.0), Reading(19 + 10 / 60, None, 60.0), dark(21 + 25 / 60)],
        0.165,
        0.165,
        0.0,
        0.0,
        {18: 20.0, 19: 60.0, 20: 60.0, 21: 25.0},
    ),
    (
        "off intervals: standby only, no burning time, no savings",
        60.0,
        [Reading(t, 10.0 + 0.5 * (t - 8), 0.5, OFF) for t in range(8, 19)],
        0.005,
        0.0,
        0.0,
        0.0,
        {8: 0.5},
    ),
    (
        "a reading without the counter: the next counter reading carries its energy, nothing twice",
        60.0,
        [Reading(18, 0.0, 60.0), Reading(19, None, 60.0), Reading(20, 120.0, 60.0), dark(21, 180.0)],
        0.18,
        0.18,
        0.0,
        0.0,
        {18: 0.0, 19: 120.0, 20: 60.0},
    ),
    (
        "no counter and no power before: not metered at all (no savings invented)",
        60.0,
        [Reading(18, None, None, ON), Reading(19, None, None, ON), Reading(20, None, 60.0), dark(21)],
        0.06,
        0.06,
        0.0,
        0.0,
        {18: None, 20: 60.0},
    ),
    (
        "an HPS lamp booting up burns; a retransmission (same time) meters nothing",
        100.0,
        [
            Reading(18, None, 110.0, BOOTING),
            Reading(18.25, None, 100.0),
            Reading(18.25, None, 100.0),
            dark(19.25),
        ],
        0.1275,
        0.125,
        0.0,
        0.0,
        {18: 102.5, 19: 25.0},
    ),
]


@pytest.mark.req("STL-6")
@pytest.mark.parametrize("merged", [False, True], ids=["counter-as-read", "counter-kept"])
@pytest.mark.parametrize(
    ("name", "rated", "readings", "kwh", "full_kwh", "savings_kwh", "ratio", "hours"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_metering_gives_the_energy_and_savings_of_the_table(
    name, rated, readings, kwh, full_kwh, savings_kwh, ratio, hours, merged
):
    buckets = run(readings, rated, merged=merged)
    energy = sum(b[0] for b in buckets.values()) / 1000
    full = sum(b[2] for b in buckets.values()) / 1000
    burning_h = sum(b[1] for b in buckets.values()) / 3600
    savings = max(0.0, full - energy)
    assert energy == pytest.approx(kwh, abs=1e-9)
    assert full == pytest.approx(full_kwh, abs=1e-9)
    assert savings == pytest.approx(savings_kwh, abs=1e-9)
    assert (savings / full if full else 0.0) == pytest.approx(ratio, abs=1e-9)
    assert full == pytest.approx(burning_h * rated / 1000)  # full power = rated x burning time
    for offset, wh in hours.items():
        bucket = buckets.get(at(offset))
        if wh is None:
            assert bucket is None, f"hour +{offset} should not be metered"
        else:
            assert bucket is not None
            assert bucket[0] == pytest.approx(wh), f"hour +{offset}"


@pytest.mark.req("STL-6")
def test_split_by_hour_is_proportional_and_adds_up_exactly():
    start, end = at(18 + 40 / 60), at(21 + 25 / 60)  # 2 h 45 min
    shares = split_by_hour(start, end, 165.0, 9900.0, 137.5)
    assert [hour for hour, *_ in shares] == [at(18), at(19), at(20), at(21)]
    assert [round(energy, 9) for _, energy, _, _ in shares] == [20.0, 60.0, 60.0, 25.0]
    assert [round(burning, 6) for _, _, burning, _ in shares] == [1200.0, 3600.0, 3600.0, 1500.0]
    assert sum(share[1] for share in shares) == 165.0  # exactly: the last share takes the remainder
    assert sum(share[3] for share in shares) == 137.5
    # Within one hour: one share; empty and reversed intervals: none; any zone, split on UTC hours.
    assert split_by_hour(at(3.25), at(3.5), 1.0, 900.0, 2.0) == [(at(3), 1.0, 900.0, 2.0)]
    assert split_by_hour(at(3), at(3), 1.0, 0.0, 0.0) == []
    assert split_by_hour(at(4), at(3), 1.0, 0.0, 0.0) == []
    india = at(3.5).astimezone(ZoneInfo("Asia/Kolkata"))  # +05:30
    assert [hour for hour, *_ in split_by_hour(india, at(4.5), 1.0, 0.0, 0.0)] == [at(3), at(4)]
    with pytest.raises(ValueError, match="timezone-aware"):
        split_by_hour(datetime(2025, 1, 15, 3), at(4), 1.0, 0.0, 0.0)


@pytest.mark.req("STL-6")
def test_the_gap_cap_is_configurable():
    kwargs: dict[str, Any] = {
        "previous_time": at(18),
        "previous_energy_wh": 0.0,
        "previous_power_w": 60.0,
        "previous_state": ON,
        "rated_power_w": 60.0,
        "time": at(20),
        "energy_wh": 120.0,
    }
    assert measure(**kwargs) is not None
    assert measure(**kwargs, max_gap_s=3600) is None
    assert measure(**{**kwargs, "previous_time": None}) is None  # the first reading


# --- through the service ---------------------------------------------------------------------------------

OWNER = "public-works"


def _stamp_fields(now: datetime) -> dict[str, Any]:
    return {"etag": "e0", "create_time": now, "update_time": now}


async def seed(street: Any) -> None:
    """Two models, two cabinets with a feeder each, two groups, four lights (as rows: the inventory's
    own CRUD is not what this test is about)."""
    now = datetime.now(UTC)
    lat, lng = 39.05, 115.95
    cell = cell_for(lat, lng)
    async with street.app.db.transaction() as tx:
        s = tx.session
        for model_id, rated in (("led-60", 60.0), ("led-100", 100.0)):
            s.add(
                LightModelRow(
                    light_model_id=model_id,
                    display_name=model_id,
                    lamp_technology=inventory_pb2.LAMP_TECHNOLOGY_LED,
                    rated_power_w=rated,
                    owner_organization=OWNER,
                    **_stamp_fields(now),
                )
            )
        for cabinet_id in ("cab-a", "cab-b"):
            s.add(
                CabinetRow(
                    cabinet_id=cabinet_id,
                    display_name=cabinet_id,
                    working_mode=inventory_pb2.WORKING_MODE_AUTOMATIC,
                    circuits={},
                    latitude=lat,
                    longitude=lng,
                    area_cell=cell,
                    owner_organization=OWNER,
                    **_stamp_fields(now),
                )
            )
        await s.flush()
        for feeder_id, cabinet_id in (("fa", "cab-a"), ("fb", "cab-b")):
            s.add(
                FeederRow(
                    feeder_id=feeder_id,
                    display_name=feeder_id,
                    cabinet_id=cabinet_id,
                    circuit=1,
                    phase=inventory_pb2.PHASE_L1,
                    **_stamp_fields(now),
                )
            )
        for group_id, cabinet_id in (("north", "cab-a"), ("south", "cab-b")):
            s.add(
                GroupRow(
                    group_id=group_id,
                    display_name=group_id,
                    cabinet_id=cabinet_id,
                    owner_organization=OWNER,
                    **_stamp_fields(now),
                )
            )
        await s.flush()
        for light_id, model_id, feeder_id, cabinet_id, group_id, operator in (
            ("l1", "led-60", "fa", "cab-a", "north", ""),
            ("l2", "led-100", "fa", "cab-a", "north", ""),
            ("l3", "led-60", "fa", "cab-a", "south", ""),
            ("l4", "led-60", "fb", "cab-b", "south", "utilities"),  # operated by a PPP concessionaire
        ):
            s.add(
                LightRow(
                    light_id=light_id,
                    display_name=light_id,
                    light_model_id=model_id,
                    feeder_id=feeder_id,
                    cabinet_id=cabinet_id,
                    group_id=group_id,
                    controller_faults=[],
                    latitude=lat,
                    longitude=lng,
                    area_cell=cell,
                    owner_organization=OWNER,
                    operator_organization=operator,
                    **_stamp_fields(now),
                )
            )


async def apply(street: Any, light_id: str, reading: Reading, *, move_to: str | None = None) -> None:
    """What the live-state code does with a reading: meter it, then overwrite the live columns (a value
    the reading leaves out keeps its last one). `move_to`: the light changes group just before."""
    async with street.app.db.transaction() as tx:
        light = await tx.session.get(LightRow, light_id)
        assert light is not None
        if move_to is not None:
            light.group_id = move_to
        model = await tx.session.get(LightModelRow, light.light_model_id)
        assert model is not None
        await meter(
            tx,
            light,
            model.rated_power_w,
            time=at(reading.time),
            energy_wh=reading.energy_wh,
            power_w=reading.power_w,
            on=reading.state != OFF,
        )
        light.reading_time = at(reading.time)
        light.energy_wh = reading.energy_wh if reading.energy_wh is not None else light.energy_wh
        light.power_w = reading.power_w if reading.power_w is not None else light.power_w
        light.power_state = reading.state


# l1 60 W: 17-21 full (counter, readings every 30 min), 21-23 at 50 %: 300 Wh, full 360.
# l2 100 W: 17-23 at 30 % (power only); moves from north to south after 20:00: 90 + 90 Wh, full 300 + 300.
# l3 60 W: 17-20 full, its counter reset at 19:00 (that hour from its power): 180 Wh, full 180.
# l4 60 W: 17-18 full, then silent 7 h (over the cap), then 01-02 on the 16th: 120 Wh, full 120.
NIGHT: dict[str, list[tuple[Reading, str | None]]] = {
    "l1": [
        *[(r, None) for r in hourly(17, 20.5, 0.5, counter0=0.0, wh_per_h=60.0, power_w=60.0)],
        *[(r, None) for r in hourly(21, 22.5, 0.5, counter0=240.0, wh_per_h=30.0, power_w=30.0, state=LOW)],
        (dark(23, 300.0), None),
    ],
    "l2": [
        *[(r, None) for r in hourly(17, 20, 1, power_w=30.0, state=LOW)],
        (Reading(21, None, 30.0, LOW), "south"),  # moved between the 20:00 and 21:00 readings
        (Reading(22, None, 30.0, LOW), None),
        (dark(23), None),
    ],
    "l3": [
        (Reading(17, 9000.0, 60.0), None),
        (Reading(18, 9060.0, 60.0), None),
        (Reading(19, 3.0, 60.0), None),
        (dark(20, 63.0), None),
    ],
    "l4": [
        (Reading(17, 0.0, 60.0), None),
        (Reading(18, 60.0, 60.0), None),
        (Reading(25, 480.0, 60.0), None),
        (dark(26, 540.0), None),
    ],
}

# subject -> (light_count, energy kWh, full kWh, savings kWh)
TOTALS = {
    "lights/l1": (1, 0.30, 0.36, 0.06),
    "lights/l2": (1, 0.18, 0.60, 0.42),
    "lights/l3": (1, 0.18, 0.18, 0.0),
    "lights/l4": (1, 0.12, 0.12, 0.0),
    "groups/north": (2, 0.39, 0.66, 0.27),
    "groups/south": (3, 0.39, 0.60, 0.21),
    "cabinets/cab-a": (3, 0.66, 1.14, 0.48),
    "cabinets/cab-b": (1, 0.12, 0.12, 0.0),
}
# subject, interval -> [(period start offset h, period end offset h, energy Wh, full Wh, burning h)]
PERIODS = {
    ("lights/l1", HOUR_): [
        (17, 18, 60, 60, 1),
        (18, 19, 60, 60, 1),
        (19, 20, 60, 60, 1),
        (20, 21, 60, 60, 1),
        (21, 22, 30, 60, 1),
        (22, 23, 30, 60, 1),
    ],
    ("groups/south", HOUR_): [
        (17, 18, 120, 120, 2),  # l3 + l4
        (18, 19, 60, 60, 1),  # l3 (l4 is silent)
        (19, 20, 60, 60, 1),  # l3, from its power after the reset
        (20, 21, 30, 100, 1),  # l2 has moved in
        (21, 22, 30, 100, 1),
        (22, 23, 30, 100, 1),
        (25, 26, 60, 60, 1),  # l4 on the 16th
    ],
    ("groups/south", DAY_): [(0, 24, 330, 540, 7), (24, 48, 60, 60, 1)],
    ("cabinets/cab-b", DAY_): [(0, 24, 60, 60, 1), (24, 48, 60, 60, 1)],
    ("groups/north", DAY_): [(0, 24, 390, 660, 9)],
}


async def report(street: Any, subject: str, interval: int = 0, metadata: Any = None, **window: Any):
    request = energy_pb2.GetEnergyReportRequest(
        subject=subject,
        start_time=stamp(window.get("start", at(0))),
        end_time=stamp(window.get("end", at(48))),
        interval=interval,  # type: ignore[arg-type]
    )
    return await street.energy.GetEnergyReport(request, metadata=metadata or street.analyst, timeout=10)


async def metered_night(street: Any) -> None:
    await seed(street)
    for light_id, readings in NIGHT.items():
        for reading, move_to in readings:
            await apply(street, light_id, reading, move_to=move_to)


@pytest.mark.req("STL-6")
async def test_energy_and_savings_per_light_group_and_cabinet_equal_the_table(street):
    await metered_night(street)
    for subject, (count, kwh, full, savings) in TOTALS.items():
        answer = await report(street, subject)
        assert answer.subject == subject
        assert answer.light_count == count, subject
        total = answer.total
        assert total.energy_kwh == pytest.approx(kwh), subject
        assert total.full_power_kwh == pytest.approx(full), subject
        assert total.savings_kwh == pytest.approx(savings, abs=1e-9), subject
        assert total.savings_ratio == pytest.approx(savings / full), subject
        assert (total.start_time.ToDatetime(tzinfo=UTC), total.end_time.ToDatetime(tzinfo=UTC)) == (
            at(0),
            at(48),
        )
        assert not answer.periods  # no interval: the total only
    for (subject, interval), expected in PERIODS.items():
        answer = await report(street, subject, interval)
        got = [
            (
                (p.start_time.ToDatetime(tzinfo=UTC) - D) / timedelta(hours=1),
                (p.end_time.ToDatetime(tzinfo=UTC) - D) / timedelta(hours=1),
                round(p.energy_kwh * 1000, 6),
                round(p.full_power_kwh * 1000, 6),
                round(p.burning_hours, 6),
            )
            for p in answer.periods
        ]
        assert got == [tuple(map(float, row)) for row in expected], (subject, interval)
        for p in answer.periods:
            assert p.savings_kwh == pytest.approx(max(0.0, p.full_power_kwh - p.energy_kwh))
        assert sum(p.energy_kwh for p in answer.periods) == pytest.approx(answer.total.energy_kwh)


@pytest.mark.req("STL-6")
async def test_the_window_rounds_to_hours_and_clips_day_periods(street):
    await metered_night(street)
    # 17:20-22:40 -> 17:00-23:00: all of l1's night; the day period is the window, not the whole day.
    answer = await report(street, "lights/l1", DAY_, start=at(17 + 1 / 3), end=at(22 + 2 / 3))
    assert answer.total.start_time.ToDatetime(tzinfo=UTC) == at(17)
    assert answer.total.end_time.ToDatetime(tzinfo=UTC) == at(23)
    assert answer.total.energy_kwh == pytest.approx(0.30)
    [day] = answer.periods
    assert (day.start_time.ToDatetime(tzinfo=UTC), day.end_time.ToDatetime(tzinfo=UTC)) == (at(17), at(23))
    # 19:00-21:00 of cab-a: l1 120, l2 60, l3 60 (19-20 only) Wh; a window with no data is all zeros.
    answer = await report(street, "cabinets/cab-a", HOUR_, start=at(19), end=at(21))
    assert answer.total.energy_kwh == pytest.approx(0.24)
    assert answer.light_count == 3
    assert len(answer.periods) == 2
    empty = await report(street, "cabinets/cab-a", HOUR_, start=at(100), end=at(120))
    assert (empty.total.energy_kwh, empty.total.savings_ratio, empty.light_count, len(empty.periods)) == (
        0,
        0,
        0,
        0,
    )


@pytest.mark.req("STL-6")
async def test_buckets_keep_the_group_and_cabinet_of_the_time(street):
    await metered_night(street)
    async with street.app.db.read() as session:
        rows = (await session.scalars(select(EnergyHourRow).where(EnergyHourRow.light_id == "l2"))).all()
    by_hour = {row.hour: row.group_id for row in rows}
    assert by_hour == {at(h): "north" for h in (17, 18, 19)} | {at(h): "south" for h in (20, 21, 22)}
    assert {row.cabinet_id for row in rows} == {"cab-a"}


BAD_REQUESTS = [
    ({"subject": "light/l1"}, ["subject"]),
    ({"subject": "lights/"}, ["subject"]),
    ({"subject": "lights/L1"}, ["subject"]),
    ({"subject": "feeders/fa"}, ["subject"]),
    ({"start_time": None}, ["start_time"]),
    ({"end_time": None}, ["end_time"]),
    ({"end_time": at(0)}, ["end_time"]),
    ({"end_time": at(-1)}, ["end_time"]),
    ({"end_time": at(401 * 24)}, ["end_time"]),
    ({"interval": 7}, ["interval"]),
    (
        {"subject": "", "start_time": None, "end_time": None, "interval": -1},
        ["subject", "start_time", "end_time", "interval"],
    ),
]


@pytest.mark.req("STL-6")
async def test_a_bad_request_names_every_bad_field(street):
    await seed(street)
    for change, violations in BAD_REQUESTS:
        fields: dict[str, Any] = {
            "subject": "lights/l1",
            "start_time": at(0),
            "end_time": at(24),
            "interval": 0,
        }
        fields.update(change)
        request = energy_pb2.GetEnergyReportRequest(subject=fields["subject"], interval=fields["interval"])
        for name in ("start_time", "end_time"):
            if fields[name] is not None:
                getattr(request, name).CopyFrom(stamp(fields[name]))
        error = await refused(street.energy.GetEnergyReport(request, metadata=street.analyst, timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, change
        assert [name for name, _ in field_violations(error)] == violations, change
    # The longest window accepted: 400 days.
    answer = await report(street, "lights/l1", start=at(0), end=at(400 * 24))
    assert answer.total.energy_kwh == 0


@pytest.mark.req("STL-6")
async def test_a_subject_the_caller_does_not_reach_is_not_found(street):
    await metered_night(street)
    for subject in ("lights/l1", "groups/north", "cabinets/cab-a", "lights/nowhere", "groups/nowhere"):
        error = await refused(report(street, subject, metadata=street.other_org))
        assert error.code() == grpc.StatusCode.NOT_FOUND, subject
    # The concessionaire operating l4 reaches l4 (and only l4).
    answer = await report(street, "lights/l4", metadata=street.other_org)
    assert answer.total.energy_kwh == pytest.approx(0.12)
    # The owner's analyst and a city-wide service reach everything.
    city = street.token("svc/reporting", "city", "service")
    assert (await report(street, "groups/south", metadata=city)).light_count == 3
    # The missing and the foreign look the same.
    missing = await refused(report(street, "lights/nowhere", metadata=street.analyst))
    foreign = await refused(report(street, "lights/l1", metadata=street.other_org))
    assert missing.code() == foreign.code() == grpc.StatusCode.NOT_FOUND
    assert "not found" in missing.details()
    assert "not found" in foreign.details()
