"""The fault rules of streetlights and cabinets (cityos_streetlights.rules): pure, no service needed.

Each rule is proven raising and not raising at its edges. The model: 60 W LED, 0.5 W standby, so the
expected power at 100 % is 60.5 W, the burning line 6 W, dark below 6.05 W (10 % of 60.5 W)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from cityos.streetlights.v1 import inventory_pb2 as inv
from cityos_streetlights import rules, solar
from cityos_streetlights.rules import InForce, LampModel, LightReading, Limits

T0 = datetime(2026, 7, 1, 15, 0, tzinfo=UTC)  # 23:00 at Baoding (UTC+8): night
LED = LampModel(rated_power_w=60.0, standby_power_w=0.5)
LIMITS = Limits()
GRACE = LIMITS.lamp_out_grace
SCHEDULE, OVERRIDE = inv.CONTROL_SOURCE_SCHEDULE, inv.CONTROL_SOURCE_OVERRIDE
PLACE = (39.05, 115.95)


def on_since(level: int = 100, held: timedelta = GRACE, source: int = SCHEDULE) -> InForce:
    """`level` in force since `held` before T0."""
    return InForce(level=level, source=source, since=T0 - held)


def judge(
    in_force: InForce | None = None,
    *,
    daylight: bool = False,
    model: LampModel = LED,
    limits: Limits = LIMITS,
    under_outage: bool = False,
    **values: object,
) -> dict[int, rules.Finding]:
    reading = LightReading(time=T0, **values)  # type: ignore[arg-type]
    return rules.evaluate_light(
        model, reading, in_force or InForce(), daylight=daylight, limits=limits, under_outage=under_outage
    )


# -- the model ---------------------------------------------------------------------------------------


def test_expected_power_is_standby_plus_rating_at_the_level_raised_to_the_minimum():
    model = LampModel(rated_power_w=100.0, standby_power_w=1.0, minimum_dim_level=30)
    assert model.expected_w(100) == pytest.approx(101.0)
    assert model.expected_w(50) == pytest.approx(51.0)
    assert model.expected_w(10) == pytest.approx(31.0)  # the driver does not go below 30 %
    assert model.expected_w(0) == pytest.approx(1.0)
    assert LED.burning_w == pytest.approx(6.0)  # 10 % of 60 W beats standby + 2 W
    assert LampModel(rated_power_w=10.0, standby_power_w=0.5).burning_w == pytest.approx(2.5)


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="power_tolerance"):
        Limits(power_tolerance=0)
    with pytest.raises(ValueError, match="outage_voltage_v"):
        Limits(outage_voltage_v=float("nan"))
    with pytest.raises(ValueError, match="negative"):
        Limits(lamp_out_grace=timedelta(seconds=-1))


# -- LAMP_FAILURE --------------------------------------------------------------------------------------


@pytest.mark.req("STL-4")
@pytest.mark.parametrize(
    ("flag", "named"),
    [
        (rules.CF_LAMP_FAILURE, "lamp failure"),
        (rules.CF_CONTROL_GEAR_FAILURE, "control gear failure"),
        (rules.CF_THERMAL_SHUTDOWN, "thermal shutdown"),
    ],
)
def test_lamp_failure_is_raised_by_each_failure_flag_of_the_controller(flag, named):
    found = judge(on=True, controller_faults=frozenset({flag}))
    assert set(found) == {rules.LAMP_FAILURE}
    assert named in found[rules.LAMP_FAILURE].detail


@pytest.mark.req("STL-4")
def test_lamp_failure_is_not_raised_by_other_flags_nor_under_an_outage():
    others = frozenset({rules.CF_CYCLING, rules.CF_THERMAL_DERATING})
    assert rules.LAMP_FAILURE not in judge(on=True, controller_faults=others)
    assert judge(on=True, controller_faults=frozenset({rules.CF_LAMP_FAILURE}), under_outage=True) == {}


# -- DAY_BURNER ----------------------------------------------------------------------------------------


@pytest.mark.req("STL-4")
def test_day_burner_is_burning_in_daylight_by_the_on_flag_or_by_power():
    by_flag = judge(on=True, daylight=True)
    assert set(by_flag) == {rules.DAY_BURNER}
    assert by_flag[rules.DAY_BURNER].detail == "burning in daylight"
    by_power = judge(power_w=6.01, daylight=True)
    assert set(by_power) == {rules.DAY_BURNER}
    assert by_power[rules.DAY_BURNER].value == pytest.approx(6.01)
    assert by_power[rules.DAY_BURNER].expected == pytest.approx(0.5)


@pytest.mark.req("STL-4")
def test_day_burner_is_not_raised_at_night_off_or_at_the_burning_line():
    assert judge(on=True, daylight=False) == {}
    assert judge(on=False, daylight=True) == {}
    assert judge(power_w=6.0, daylight=True) == {}  # exactly at the line: standby noise, not burning
    assert judge(daylight=True) == {}  # nothing reported: nothing judged


@pytest.mark.req("STL-4")
def test_an_override_asking_for_light_is_no_day_burner_but_a_schedule_is():
    assert judge(on_since(80, source=OVERRIDE), on=True, daylight=True) == {}
    assert set(judge(on_since(80, source=SCHEDULE), on=True, power_w=48.5, dim_level=80, daylight=True)) == {
        rules.DAY_BURNER
    }
    # An override switching off does not excuse burning.
    assert rules.DAY_BURNER in judge(on_since(0, source=OVERRIDE), on=True, daylight=True)


@pytest.mark.req("STL-4")
def test_the_controllers_day_burner_flag_raises_it_unless_an_override_asked_for_light():
    found = judge(on=True, day_burner=True, daylight=False)
    assert set(found) == {rules.DAY_BURNER}
    assert "controller reports day burning" in found[rules.DAY_BURNER].detail
    assert judge(on_since(100, source=OVERRIDE), on=True, day_burner=True) == {}
    assert judge(on=True, day_burner=False) == {}


@pytest.mark.req("STL-4")
def test_daylight_for_day_burners_starts_a_margin_after_sunrise_and_ends_a_margin_before_sunset():
    times = solar.sun_times(*PLACE, date(2026, 7, 1), "Etc/GMT-8")
    assert times.sunrise is not None
    assert times.sunset is not None
    margin = LIMITS.day_burner_margin
    second = timedelta(seconds=1)
    assert not rules.daylight(*PLACE, times.sunrise + margin - second, LIMITS)
    assert rules.daylight(*PLACE, times.sunrise + margin + second, LIMITS)
    assert rules.daylight(*PLACE, times.sunset - margin - second, LIMITS)
    assert not rules.daylight(*PLACE, times.sunset - margin + second, LIMITS)
    assert not rules.daylight(*PLACE, T0, LIMITS)  # 23:00 local


# -- LAMP_OUT --------------------------------------------------------------------------------------------


@pytest.mark.req("STL-4")
def test_lamp_out_is_dark_once_on_has_been_in_force_for_the_grace():
    found = judge(on_since(100, held=GRACE), on=False)
    assert set(found) == {rules.LAMP_OUT}
    assert found[rules.LAMP_OUT].expected == pytest.approx(60.5)
    assert "100 % is in force" in found[rules.LAMP_OUT].detail
    # Not a moment before: the controller gets its desired state with its next uplink.
    assert judge(on_since(100, held=GRACE - timedelta(seconds=1)), on=False) == {}


@pytest.mark.req("STL-4")
def test_lamp_out_by_power_is_below_a_tenth_of_the_expected_power():
    assert set(judge(on_since(100), on=True, power_w=6.04)) == {rules.LAMP_OUT}
    # At a tenth it is dim, not dark (and far off its rating: a power anomaly instead).
    assert set(judge(on_since(100), on=True, power_w=rules.DARK_SHARE * 60.5)) == {rules.POWER_ANOMALY}
    # Dimmed to 50 %: expected 30.5 W, dark below 3.05 W.
    assert set(judge(on_since(50), power_w=3.0)) == {rules.LAMP_OUT}
    assert rules.LAMP_OUT not in judge(on_since(50), power_w=3.1)


@pytest.mark.req("STL-4")
def test_lamp_out_is_not_raised_without_on_in_force_nor_when_a_failure_or_an_outage_explains_it():
    assert judge(on_since(0), on=False) == {}
    assert judge(InForce(), on=False) == {}
    assert judge(InForce(level=100, source=SCHEDULE, since=None), on=False) == {}
    failed = judge(on_since(100), on=False, controller_faults=frozenset({rules.CF_LAMP_FAILURE}))
    assert set(failed) == {rules.LAMP_FAILURE}
    assert judge(on_since(100), on=False, under_outage=True) == {}
    assert judge(on_since(100), on=True, power_w=60.5) == {}  # burning as asked


@pytest.mark.req("STL-4")
def test_a_fresh_power_wins_over_the_on_flag():
    # Relay reported on, no current: dark (and no day burner by day).
    assert set(judge(on_since(100), on=True, power_w=0.0)) == {rules.LAMP_OUT}
    assert judge(on=True, power_w=0.4, daylight=True) == {}
    # Relay reported off, current through the lamp: it burns.
    assert set(judge(on=False, power_w=60.0, daylight=True)) == {rules.DAY_BURNER}


# -- POWER_ANOMALY ---------------------------------------------------------------------------------


@pytest.mark.req("STL-4")
def test_power_anomaly_is_raised_just_outside_the_tolerance_and_not_at_it():
    low, high = 60.5 * 0.75, 60.5 * 1.25
    assert judge(on_since(100), on=True, dim_level=100, power_w=low) == {}
    assert judge(on_since(100), on=True, dim_level=100, power_w=high) == {}
    below = judge(on_since(100), on=True, dim_level=100, power_w=low - 0.01)
    assert set(below) == {rules.POWER_ANOMALY}
    finding = below[rules.POWER_ANOMALY]
    assert (finding.value, finding.expected) == (pytest.approx(low - 0.01), pytest.approx(60.5))
    assert finding.detail == "power 45 W, expected 60 W ± 25 % at 100 %"
    assert set(judge(on_since(100), on=True, dim_level=100, power_w=high + 0.01)) == {rules.POWER_ANOMALY}


@pytest.mark.req("STL-4")
def test_power_anomaly_judges_the_reported_dim_level_else_what_is_in_force_else_full_power():
    # Reported 50 %: 30.5 W expected, 60 W is far off.
    assert set(judge(on_since(100), on=True, dim_level=50, power_w=60.0)) == {rules.POWER_ANOMALY}
    assert judge(on_since(100), on=True, dim_level=50, power_w=30.0) == {}
    # No reported level: the level in force (50 %).
    assert judge(on_since(50), on=True, power_w=30.0) == {}
    assert set(judge(on_since(50), on=True, power_w=60.0)) == {rules.POWER_ANOMALY}
    # Neither: on means 100 %.
    assert judge(on=True, power_w=60.0) == {}
    assert set(judge(on=True, power_w=30.0)) == {rules.POWER_ANOMALY}
    # The model's minimum raises the level: 10 % on a 40 % minimum expects 24.5 W.
    floor = LampModel(rated_power_w=60.0, standby_power_w=0.5, minimum_dim_level=40)
    assert judge(on_since(10), on=True, dim_level=10, power_w=24.5, model=floor) == {}


@pytest.mark.req("STL-4")
def test_power_anomaly_is_not_raised_dark_without_power_derated_failed_or_under_an_outage():
    assert judge(on=True, dim_level=100) == {}  # no power in the reading: nothing to judge
    assert rules.POWER_ANOMALY not in judge(on_since(100), on=True, power_w=3.0)  # dark: LAMP_OUT
    assert judge(on=True, power_w=30.0, controller_faults=frozenset({rules.CF_THERMAL_DERATING})) == {}
    failed = judge(on=True, power_w=30.0, controller_faults=frozenset({rules.CF_CONTROL_GEAR_FAILURE}))
    assert set(failed) == {rules.LAMP_FAILURE}
    assert judge(on=True, power_w=30.0, under_outage=True) == {}
    assert judge(on_since(0), on=True, dim_level=0, power_w=30.0, daylight=True).keys() == {rules.DAY_BURNER}


# -- RELAY_FAILURE ---------------------------------------------------------------------------------


@pytest.mark.req("STL-4")
def test_relay_failure_is_the_controllers_flag():
    found = judge(on=False, controller_faults=frozenset({rules.CF_RELAY_FAILURE}))
    assert set(found) == {rules.RELAY_FAILURE}
    assert found[rules.RELAY_FAILURE].detail == "the controller reports relay failure"
    # Not a symptom an outage explains.
    assert set(judge(controller_faults=frozenset({rules.CF_RELAY_FAILURE}), under_outage=True)) == {
        rules.RELAY_FAILURE
    }


@pytest.mark.req("STL-4")
def test_relay_failure_is_inferred_when_off_has_been_in_force_for_the_grace_and_it_burns_at_night():
    found = judge(on_since(0, held=GRACE), on=True, power_w=60.0)
    assert set(found) == {rules.RELAY_FAILURE}
    assert "stuck relay" in found[rules.RELAY_FAILURE].detail
    assert judge(on_since(0, held=GRACE - timedelta(seconds=1)), on=True, power_w=60.0) == {}
    assert judge(on_since(0), on=False, power_w=0.3) == {}  # off as asked
    assert judge(InForce(), on=True, power_w=60.0) == {}  # nothing in force: nothing to disobey
    # By day the same lamp is a day burner, one fault at a time.
    assert set(judge(on_since(0), on=True, power_w=60.0, daylight=True)) == {rules.DAY_BURNER}


# -- cabinets and feeders ------------------------------------------------------------------------------


@pytest.mark.req("STL-5")
def test_a_cabinet_is_out_when_every_reported_phase_is_below_the_outage_voltage():
    outage = rules.cabinet_outage((0.0, 12.0, 99.9), LIMITS)
    assert outage is not None
    assert (outage.kind, outage.value, outage.expected) == (rules.CABINET_OUTAGE, 99.9, 100.0)
    assert "L1 0 V, L2 12 V, L3 100 V" in outage.detail
    assert rules.cabinet_outage((0.0, 0.0, 100.0), LIMITS) is None  # one phase live: no outage
    assert rules.cabinet_outage((40.0, None, None), LIMITS) is not None  # only reported phases count
    assert rules.cabinet_outage((None, None, None), LIMITS) is None


@pytest.mark.req("STL-5")
def test_a_feeder_is_dead_when_its_breaker_is_open_or_its_phase_is_down():
    live = (230.0, 230.0, 230.0)
    tripped = rules.feeder_dead(3, inv.PHASE_L1, live, {3: False}, LIMITS)
    assert tripped is not None
    assert tripped.detail == "the breaker of circuit 3 is open"
    assert rules.feeder_dead(3, inv.PHASE_L1, live, {3: True, 4: False}, LIMITS) is None
    assert rules.feeder_dead(3, inv.PHASE_L1, live, {}, LIMITS) is None  # breaker never reported
    l2_down = (230.0, 50.0, 230.0)
    assert rules.feeder_dead(1, inv.PHASE_L1, l2_down, {}, LIMITS) is None
    dead = rules.feeder_dead(1, inv.PHASE_L2, l2_down, {}, LIMITS)
    assert dead is not None
    assert (dead.value, dead.detail) == (50.0, "phase L2 at 50 V (below 100 V)")
    assert rules.feeder_dead(1, inv.PHASE_THREE, l2_down, {}, LIMITS) is not None
    assert rules.feeder_dead(1, inv.PHASE_UNSPECIFIED, l2_down, {}, LIMITS) is None  # breaker only
    assert rules.feeder_dead(1, inv.PHASE_L2, (230.0, 100.0, 230.0), {}, LIMITS) is None  # at the line


@pytest.mark.req("STL-5")
def test_silence_is_past_the_timeout_and_a_feeder_is_silent_when_all_its_heard_lights_are():
    hour = timedelta(hours=1)
    assert not rules.silent(T0 - hour, hour, T0)  # exactly at the timeout: not yet
    assert rules.silent(T0 - hour - timedelta(seconds=1), hour, T0)
    assert not rules.silent(None, hour, T0)  # never heard: not judged
    quiet = T0 - 2 * hour
    assert rules.feeder_silent([rules.Listener("a", quiet, hour), rules.Listener("b", quiet, hour)], T0)
    assert not rules.feeder_silent([rules.Listener("a", quiet, hour)], T0)  # one light proves nothing
    assert not rules.feeder_silent([rules.Listener("a", quiet, hour), rules.Listener("b", T0, hour)], T0)
    assert not rules.feeder_silent(
        [rules.Listener("a", quiet, hour), rules.Listener("b", None, hour)], T0
    )  # never heard does not count
