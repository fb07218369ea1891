"""The alarm rules of manhole covers (cityos_manholes.rules): pure, no service needed."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from cityos.manholes.v1 import manholes_pb2 as pb
from cityos_manholes import rules
from cityos_manholes.rules import Active, Decision, Kind, Limits, Reading, WorkWindow

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Service:
    """What the service does with decisions: one alarm per condition, cleared ones kept until resolved."""

    def __init__(self, *, resolve_on_clear: bool = False) -> None:
        self.active: dict[rules.Condition, Active] = {}
        self.resolve_on_clear = resolve_on_clear
        self.log: list[Decision] = []
        self.events: list[rules.Event] = []

    def apply(self, evaluation: rules.Evaluation) -> rules.Evaluation:
        for d in evaluation.decisions:
            self.log.append(d)
            if d.kind is Kind.RAISE:
                assert d.condition not in self.active, "a second alarm of one condition"
                self.active[d.condition] = Active(d.condition, d.severity, d.value)
            elif d.kind is Kind.UPDATE:
                self.active[d.condition] = Active(d.condition, d.severity, d.value, cleared=False)
            elif d.kind is Kind.CLEAR:
                if self.resolve_on_clear:
                    del self.active[d.condition]
                else:
                    self.active[d.condition] = replace(self.active[d.condition], cleared=True)
        self.events.extend(evaluation.events)
        return evaluation

    def feed(
        self,
        readings: Iterable[Reading],
        limits: Limits | None = None,
        install: float = 0.0,
        windows: tuple[WorkWindow, ...] = (),
    ) -> list[rules.Evaluation]:
        limits = limits or Limits()
        return [self.apply(rules.evaluate(limits, install, r, self.active, windows)) for r in readings]

    def kinds(self, condition: rules.Condition) -> list[Kind]:
        return [d.kind for d in self.log if d.condition == condition]


# --- The measured rules, one table ------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    condition: rules.Condition
    threshold: float
    reading: Callable[[datetime, float], Reading]
    event: str
    lower: bool = False
    limits: Limits = field(default_factory=Limits)

    def __str__(self) -> str:
        return pb.AlarmCondition.Name(self.condition)

    def at(self, factor: float) -> float:
        """A value `factor` of the threshold."""
        return self.threshold * factor

    def readings(self, factors: Iterable[float]) -> list[Reading]:
        return [self.reading(at(i), self.at(f)) for i, f in enumerate(factors)]

    # Factors of the threshold, mirrored for a lower threshold (the battery).
    def crossing(self) -> float:
        return 0.95 if self.lower else 1.05

    def worse(self) -> float:
        return 0.8 if self.lower else 1.5

    def recovered(self) -> float:
        return 1.15 if self.lower else 0.85

    def hover(self) -> list[float]:
        up = [1.01, 0.99, 1.02, 0.92, 1.005]  # stays within 10 % below the line once over it
        return [2 - f for f in up] if self.lower else up


def _gas(name: str) -> Callable[[datetime, float], Reading]:
    return lambda t, v: Reading(t, gases={name: v})


MEASURED = [
    Rule(rules.TILT, 10.0, lambda t, v: Reading(t, tilt_deg=v), "cover.tilt_exceeded"),
    Rule(
        rules.WATER_LEVEL,
        1.2,
        lambda t, v: Reading(t, water_level_m=v),
        "water.level_exceeded",
        limits=Limits(water_level_m=1.2),
    ),
    Rule(rules.GAS_CH4, 20.0, _gas("ch4_pct_lel"), "gas.exceeded"),
    Rule(rules.GAS_H2S, 10.0, _gas("h2s_ppm"), "gas.exceeded"),
    Rule(rules.GAS_CO, 35.0, _gas("co_ppm"), "gas.exceeded"),
    Rule(rules.GAS_VOC, 50.0, _gas("voc_ppm"), "gas.exceeded"),
    Rule(rules.BATTERY_LOW, 3.3, lambda t, v: Reading(t, battery_v=v), "battery.low", lower=True),
]
measured = pytest.mark.parametrize("rule", MEASURED, ids=str)


@pytest.mark.req("MAN-2")
@measured
def test_a_crossing_raises_once_with_its_event(rule: Rule) -> None:
    service = Service()
    evaluations = service.feed(rule.readings([1.0, rule.crossing(), rule.crossing()]), rule.limits)
    assert evaluations[0].decisions == ()  # exactly at the line: not yet
    (raised,) = evaluations[1].decisions
    assert raised.kind is Kind.RAISE
    assert raised.condition == rule.condition
    assert raised.value == pytest.approx(rule.at(rule.crossing()))
    assert raised.threshold == rule.threshold
    assert raised.severity == rules.severity_for(rule.condition, raised.value, rule.limits)
    (event,) = evaluations[1].events
    assert event.type == rule.event
    assert event.condition == rule.condition
    assert event.time == at(1)
    assert evaluations[2].decisions == ()
    assert evaluations[2].events == ()


@pytest.mark.req("MAN-2")
@measured
def test_a_value_hovering_at_the_line_raises_once_and_never_flaps(rule: Rule) -> None:
    service = Service()
    service.feed(rule.readings(rule.hover() * 3), rule.limits)
    # One raise, never a clear; the one update is the worst value of the series (1.02 x the line).
    assert service.kinds(rule.condition) == [Kind.RAISE, Kind.UPDATE]
    assert len(service.events) == 1


@pytest.mark.req("MAN-2")
@measured
def test_a_worse_value_updates_rather_than_duplicates(rule: Rule) -> None:
    service = Service()
    evaluations = service.feed(
        rule.readings([rule.crossing(), rule.worse(), rule.crossing(), rule.worse()]), rule.limits
    )
    assert [e.decisions[0].kind if e.decisions else None for e in evaluations] == [
        Kind.RAISE,
        Kind.UPDATE,
        None,  # better but still over the line: nothing
        None,  # as bad as the worst: nothing
    ]
    update = evaluations[1].decisions[0]
    assert update.value == pytest.approx(rule.at(rule.worse()))
    assert not update.reopened
    assert evaluations[1].events == ()  # an update publishes nothing
    assert service.active[rule.condition].value == pytest.approx(rule.at(rule.worse()))


@pytest.mark.req("MAN-2")
@measured
def test_recovery_past_the_margin_clears(rule: Rule) -> None:
    service = Service()
    band_edge = 1 + rule.limits.hysteresis if rule.lower else 1 - rule.limits.hysteresis
    evaluations = service.feed(
        rule.readings([rule.crossing(), band_edge * (0.999 if rule.lower else 1.001), rule.recovered()]),
        rule.limits,
    )
    assert evaluations[1].decisions == ()  # inside the band: still alarming
    assert evaluations[2].decisions == (Decision(Kind.CLEAR, rule.condition),)
    assert service.active[rule.condition].cleared
    # Recovered and staying recovered: nothing more.
    assert service.feed(rule.readings([rule.recovered()]), rule.limits)[0].decisions == ()


@pytest.mark.req("MAN-2")
@measured
def test_crossing_again_while_cleared_reopens_the_same_alarm(rule: Rule) -> None:
    service = Service()
    evaluations = service.feed(
        rule.readings([rule.crossing(), rule.recovered(), rule.crossing()]), rule.limits
    )
    (reopened,) = evaluations[2].decisions
    assert reopened.kind is Kind.UPDATE
    assert reopened.reopened
    assert [e.type for e in evaluations[2].events] == [rule.event]
    assert service.kinds(rule.condition) == [Kind.RAISE, Kind.CLEAR, Kind.UPDATE]
    assert not service.active[rule.condition].cleared


@pytest.mark.req("MAN-2")
def test_the_issue_tilt_series_raises_once() -> None:
    service = Service()
    service.feed(Reading(at(i), tilt_deg=v) for i, v in enumerate([10.1, 9.9, 10.2, 9.8, 10.05]))
    assert service.kinds(rules.TILT) == [Kind.RAISE, Kind.UPDATE]  # 10.2 is worse: updated, not raised
    assert service.feed([Reading(at(9), tilt_deg=8.9)])[0].decisions == (Decision(Kind.CLEAR, rules.TILT),)


# --- Tilt ---------------------------------------------------------------------------------------------


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize(
    ("tilt", "relative", "alarms"),
    [(38.0, 8.0, False), (40.0, 10.0, False), (41.0, 11.0, True), (19.0, 11.0, True), (30.0, 0.0, False)],
)
def test_tilt_is_measured_against_the_install_angle(tilt: float, relative: float, alarms: bool) -> None:
    evaluation = rules.evaluate(Limits(), 30.0, Reading(T0, tilt_deg=tilt), {})
    assert evaluation.relative_tilt == pytest.approx(relative)
    assert [d.kind for d in evaluation.decisions] == ([Kind.RAISE] if alarms else [])


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize(
    ("threshold", "hysteresis"), [(90.0, 0.0), (90.0, 0.5), (90.0, 0.99), (120.0, 0.0), (179.0, 0.3)]
)
def test_tilt_at_or_beyond_90_degrees_always_alarms_critical(threshold: float, hysteresis: float) -> None:
    limits = Limits(tilt_deg=threshold, hysteresis=hysteresis)
    service = Service()
    evaluations = service.feed(
        [Reading(at(0), tilt_deg=95.0), Reading(at(1), tilt_deg=100.0), Reading(at(2), tilt_deg=95.0)],
        limits,
        install=5.0,
    )
    (raised,) = evaluations[0].decisions
    assert raised.kind is Kind.RAISE
    assert raised.severity == pb.SEVERITY_CRITICAL
    assert raised.value == 90.0
    assert raised.threshold == min(threshold, 90.0)
    assert [d.kind for d in evaluations[1].decisions] == [Kind.UPDATE]  # 95° is worse
    assert evaluations[2].decisions == ()  # still >= 90: never clears, whatever the hysteresis


@pytest.mark.req("MAN-2")
def test_tilt_reaching_90_degrees_raises_an_open_warning_to_critical() -> None:
    service = Service()
    evaluations = service.feed(
        [Reading(at(0), tilt_deg=12.0), Reading(at(1), tilt_deg=50.0), Reading(at(2), tilt_deg=91.0)]
    )
    assert [(d.kind, d.severity) for e in evaluations for d in e.decisions] == [
        (Kind.RAISE, pb.SEVERITY_WARNING),
        (Kind.UPDATE, pb.SEVERITY_MAJOR),
        (Kind.UPDATE, pb.SEVERITY_CRITICAL),
    ]
    # Back to 40°: not past the margin of the 10° threshold, the severity never drops.
    assert service.feed([Reading(at(3), tilt_deg=40.0)])[0].decisions == ()
    assert service.active[rules.TILT].severity == pb.SEVERITY_CRITICAL


# --- Booleans: open, displaced, smoke -----------------------------------------------------------------

BOOLEANS = [
    (rules.OPEN, "open", "cover.opened", pb.SEVERITY_CRITICAL),
    (rules.DISPLACED, "displaced", "cover.displaced", pb.SEVERITY_CRITICAL),
    (rules.SMOKE, "smoke", "smoke.detected", pb.SEVERITY_CRITICAL),
]


def _flag(attr: str, t: datetime, state: bool | None) -> Reading:
    return {
        "open": Reading(t, open=state),
        "displaced": Reading(t, displaced=state),
        "smoke": Reading(t, smoke=state),
    }[attr]


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize(("condition", "attr", "event", "severity"), BOOLEANS, ids=str)
def test_boolean_rules_raise_when_true_and_clear_when_false(
    condition: rules.Condition, attr: str, event: str, severity: rules.Severity
) -> None:
    service = Service()
    states = [False, True, True, None, True, False, False, True]
    evaluations = service.feed(_flag(attr, at(i), s) for i, s in enumerate(states))
    kinds = [[d.kind for d in e.decisions] for e in evaluations]
    assert kinds == [[], [Kind.RAISE], [], [], [], [Kind.CLEAR], [], [Kind.UPDATE]]
    raised = evaluations[1].decisions[0]
    assert (raised.condition, raised.severity, raised.value, raised.threshold) == (
        condition,
        severity,
        1.0,
        0.0,
    )
    assert evaluations[1].events[0].type == event
    assert evaluations[7].decisions[0].reopened
    restored = [ev.type for ev in evaluations[5].events]
    assert restored == (["cover.restored"] if condition == rules.DISPLACED else [])


# --- Maintenance windows (MAN-3) ----------------------------------------------------------------------


def window(status: rules.WorkOrderStatus, start: float = 0, end: float = 120) -> WorkWindow:
    return WorkWindow("workOrders/wo-1", at(start), at(end), status)


@pytest.mark.req("MAN-2", "MAN-3")
@pytest.mark.parametrize("status", [pb.WORK_ORDER_STATUS_PLANNED, pb.WORK_ORDER_STATUS_IN_PROGRESS])
@pytest.mark.parametrize("minute", [0, 60, 119.9])
def test_an_opening_inside_an_active_work_order_window_is_maintenance(
    status: rules.WorkOrderStatus, minute: float
) -> None:
    evaluation = rules.evaluate(Limits(), 0, Reading(at(minute), open=True), {}, [window(status)])
    assert evaluation.decisions == (
        Decision(Kind.MAINTENANCE_OPEN, rules.OPEN, work_order="workOrders/wo-1"),
    )
    (event,) = evaluation.events
    assert event.type == "maintenance.authorized_open"
    assert event.work_order == "workOrders/wo-1"
    assert not [d for d in evaluation.decisions if d.kind is Kind.RAISE]


@pytest.mark.req("MAN-2", "MAN-3")
@pytest.mark.parametrize(
    ("win", "minute"),
    [
        (window(pb.WORK_ORDER_STATUS_CANCELLED), 60),
        (window(pb.WORK_ORDER_STATUS_COMPLETED), 60),
        (window(pb.WORK_ORDER_STATUS_UNSPECIFIED), 60),
        (window(pb.WORK_ORDER_STATUS_PLANNED), 120),  # the end is outside the window
        (window(pb.WORK_ORDER_STATUS_PLANNED), 121),
        (window(pb.WORK_ORDER_STATUS_IN_PROGRESS), -1),  # before its start
    ],
    ids=["cancelled", "completed", "unspecified", "at-end", "after-end", "before-start"],
)
def test_the_same_opening_outside_an_active_window_raises_a_theft_alarm(
    win: WorkWindow, minute: float
) -> None:
    evaluation = rules.evaluate(Limits(), 0, Reading(at(minute), open=True), {}, [win])
    assert evaluation.decisions == (Decision(Kind.RAISE, rules.OPEN, pb.SEVERITY_CRITICAL, 1.0, 0.0),)
    assert [e.type for e in evaluation.events] == ["cover.opened"]


@pytest.mark.req("MAN-3")
def test_maintenance_is_recorded_once_and_a_lid_left_open_after_the_window_alarms() -> None:
    windows = (window(pb.WORK_ORDER_STATUS_IN_PROGRESS, 0, 60),)
    first = rules.evaluate(Limits(), 0, Reading(at(10), open=True), {}, windows)
    assert [d.kind for d in first.decisions] == [Kind.MAINTENANCE_OPEN]
    still = rules.evaluate(Limits(), 0, Reading(at(20), open=True), {}, windows, was_open=True)
    assert still.decisions == ()
    assert still.events == ()
    left = rules.evaluate(Limits(), 0, Reading(at(61), open=True), {}, windows, was_open=True)
    assert [d.kind for d in left.decisions] == [Kind.RAISE]


@pytest.mark.req("MAN-3")
def test_the_earliest_started_active_window_names_the_work_order() -> None:
    windows = [
        WorkWindow("workOrders/b", at(10), at(100), pb.WORK_ORDER_STATUS_PLANNED),
        WorkWindow("workOrders/a", at(0), at(100), pb.WORK_ORDER_STATUS_CANCELLED),
        WorkWindow("workOrders/c", at(5), at(100), pb.WORK_ORDER_STATUS_IN_PROGRESS),
    ]
    evaluation = rules.evaluate(Limits(), 0, Reading(at(20), open=True), {}, windows)
    assert evaluation.decisions[0].work_order == "workOrders/c"


@pytest.mark.req("MAN-3")
def test_an_open_theft_alarm_stays_when_a_window_begins_and_clears_on_closing() -> None:
    active = {rules.OPEN: Active(rules.OPEN, pb.SEVERITY_CRITICAL, 1.0)}
    windows = [window(pb.WORK_ORDER_STATUS_PLANNED)]
    assert (
        rules.evaluate(Limits(), 0, Reading(at(5), open=True), active, windows, was_open=True).decisions == ()
    )
    closed = rules.evaluate(Limits(), 0, Reading(at(6), open=False), active, windows)
    assert closed.decisions == (Decision(Kind.CLEAR, rules.OPEN),)


# --- Severity -----------------------------------------------------------------------------------------


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize(
    ("condition", "value", "road", "severity"),
    [
        (rules.TILT, 11, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_WARNING),
        (rules.TILT, 45, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_MAJOR),
        (rules.TILT, 90, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_CRITICAL),
        (rules.TILT, 11, pb.ROAD_CLASS_ARTERIAL, pb.SEVERITY_MAJOR),
        (rules.TILT, 45, pb.ROAD_CLASS_EXPRESSWAY, pb.SEVERITY_CRITICAL),
        (rules.OPEN, 1, pb.ROAD_CLASS_SIDEWALK, pb.SEVERITY_CRITICAL),
        (rules.OPEN, 1, pb.ROAD_CLASS_NON_ROAD, pb.SEVERITY_MAJOR),
        (rules.DISPLACED, 1, pb.ROAD_CLASS_UNSPECIFIED, pb.SEVERITY_CRITICAL),
        (rules.GAS_CH4, 21, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_MAJOR),
        (rules.GAS_CH4, 40, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_CRITICAL),
        (rules.GAS_H2S, 19.9, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_MAJOR),
        (rules.GAS_CO, 70, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_CRITICAL),
        (rules.GAS_VOC, 99, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_MAJOR),
        (rules.WATER_LEVEL, 3, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_MAJOR),
        (rules.SMOKE, 1, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_CRITICAL),
        (rules.BATTERY_LOW, 3.0, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_WARNING),
        (rules.HEARTBEAT_MISSED, 9000, pb.ROAD_CLASS_LOCAL, pb.SEVERITY_MAJOR),
    ],
)
def test_severity_for(
    condition: rules.Condition, value: float, road: rules.RoadClass, severity: rules.Severity
) -> None:
    assert rules.severity_for(condition, value, Limits(), road) == severity


@pytest.mark.req("MAN-2")
def test_a_gas_reaching_twice_its_threshold_updates_to_critical() -> None:
    service = Service()
    service.feed(Reading(at(i), gases={"h2s_ppm": v}) for i, v in enumerate([12.0, 19.0, 20.0]))
    assert [(d.kind, d.severity) for d in service.log] == [
        (Kind.RAISE, pb.SEVERITY_MAJOR),
        (Kind.UPDATE, pb.SEVERITY_MAJOR),
        (Kind.UPDATE, pb.SEVERITY_CRITICAL),
    ]


# --- Partial readings ---------------------------------------------------------------------------------

ALL_OPEN = {
    c: Active(c, pb.SEVERITY_MAJOR, 1.0)
    for c in (
        rules.TILT,
        rules.OPEN,
        rules.DISPLACED,
        rules.WATER_LEVEL,
        rules.GAS_CH4,
        rules.GAS_H2S,
        rules.GAS_CO,
        rules.GAS_VOC,
        rules.SMOKE,
        rules.BATTERY_LOW,
    )
}


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize("active", [{}, ALL_OPEN], ids=["none", "all-open"])
def test_an_empty_reading_decides_nothing(active: Mapping[rules.Condition, Active]) -> None:
    evaluation = rules.evaluate(Limits(water_level_m=1.0), 0, Reading(T0), active)
    assert evaluation == rules.Evaluation()


@pytest.mark.req("MAN-2")
def test_a_partial_reading_decides_only_its_values() -> None:
    reading = Reading(T0, gases={"co_ppm": 50.0, "nh3_ppm": 999.0}, battery_v=3.9)
    evaluation = rules.evaluate(Limits(), 0, reading, ALL_OPEN)
    assert [(d.kind, d.condition) for d in evaluation.decisions] == [
        (Kind.UPDATE, rules.GAS_CO),  # 50 is worse than the 1.0 held
        (Kind.CLEAR, rules.BATTERY_LOW),
    ]
    assert evaluation.relative_tilt is None


@pytest.mark.req("MAN-2")
def test_water_without_a_threshold_never_alarms() -> None:
    assert rules.evaluate(Limits(), 0, Reading(T0, water_level_m=50.0), {}).decisions == ()
    active = {rules.WATER_LEVEL: Active(rules.WATER_LEVEL, pb.SEVERITY_MAJOR, 2.0)}
    cleared = rules.evaluate(Limits(), 0, Reading(T0, water_level_m=50.0), active)
    assert cleared.decisions == (Decision(Kind.CLEAR, rules.WATER_LEVEL),)


# --- Heartbeat ----------------------------------------------------------------------------------------

TIMEOUT = timedelta(hours=2, minutes=10)


@pytest.mark.req("MAN-2")
def test_heartbeat_missed_raises_once_after_the_timeout_and_clears_when_heard() -> None:
    service = Service()
    limits = Limits()
    assert service.apply(rules.heartbeat(limits, T0, T0 + TIMEOUT, service.active)).decisions == ()
    late = service.apply(rules.heartbeat(limits, T0, T0 + TIMEOUT + timedelta(seconds=1), service.active))
    (raised,) = late.decisions
    assert (raised.kind, raised.condition, raised.severity) == (
        Kind.RAISE,
        rules.HEARTBEAT_MISSED,
        pb.SEVERITY_MAJOR,
    )
    assert raised.value == TIMEOUT.total_seconds() + 1
    assert raised.threshold == TIMEOUT.total_seconds()
    assert [e.type for e in late.events] == ["heartbeat.missed"]
    # Later sweeps while still silent: nothing more.
    assert rules.heartbeat(limits, T0, T0 + 3 * TIMEOUT, service.active).decisions == ()
    heard = T0 + 3 * TIMEOUT
    assert rules.heartbeat(limits, heard, heard + timedelta(minutes=1), service.active).decisions == (
        Decision(Kind.CLEAR, rules.HEARTBEAT_MISSED),
    )


@pytest.mark.req("MAN-2")
def test_any_reading_clears_a_missed_heartbeat() -> None:
    active = {rules.HEARTBEAT_MISSED: Active(rules.HEARTBEAT_MISSED, pb.SEVERITY_MAJOR, 9000.0)}
    evaluation = rules.evaluate(Limits(), 0, Reading(T0), active)
    assert evaluation.decisions == (Decision(Kind.CLEAR, rules.HEARTBEAT_MISSED),)
    assert rules.evaluate(Limits(), 0, Reading(T0), {}).decisions == ()


@pytest.mark.req("MAN-2")
def test_heartbeat_of_a_terminal_never_heard_decides_nothing_and_follows_its_timeout() -> None:
    assert rules.heartbeat(Limits(), None, T0, {}) == rules.Evaluation()
    limits = Limits(heartbeat_timeout=timedelta(minutes=5))
    assert [d.kind for d in rules.heartbeat(limits, T0, at(6), {}).decisions] == [Kind.RAISE]


# --- Limits -------------------------------------------------------------------------------------------


@pytest.mark.req("MAN-2")
def test_limits_defaults_follow_the_proto() -> None:
    expected = Limits(
        tilt_deg=10.0,
        water_level_m=None,
        ch4_pct_lel=20.0,
        h2s_ppm=10.0,
        co_ppm=35.0,
        voc_ppm=50.0,
        battery_low_v=3.3,
        heartbeat_timeout=TIMEOUT,
        hysteresis=0.1,
    )
    assert Limits() == expected
    assert Limits.from_proto(pb.Thresholds()) == expected
    assert Limits.from_proto(None) == expected
    assert Limits.from_mapping({}) == expected


@pytest.mark.req("MAN-2")
def test_limits_from_proto_and_mapping_take_the_set_fields() -> None:
    message = pb.Thresholds(
        tilt_deg=15, water_level_m=0.8, co_ppm=25, hysteresis=0.0, heartbeat_timeout=Duration(seconds=600)
    )
    limits = Limits.from_proto(message)
    assert limits == Limits(
        tilt_deg=15, water_level_m=0.8, co_ppm=25, hysteresis=0.0, heartbeat_timeout=timedelta(minutes=10)
    )
    assert limits.ch4_pct_lel == 20.0  # unset: the default
    assert (
        Limits.from_mapping(
            {"tilt_deg": 15, "water_level_m": 0.8, "co_ppm": 25, "hysteresis": 0, "heartbeat_timeout": 600}
        )
        == limits
    )
    assert Limits.from_mapping({"tilt_deg": None}) == Limits()


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize(
    "values",
    [
        {"tilt_deg": 0},
        {"co_ppm": -1},
        {"water_level_m": float("nan")},
        {"hysteresis": 1.0},
        {"hysteresis": -0.1},
        {"heartbeat_timeout": 0},
        {"nonsense": 1},
    ],
)
def test_limits_refuse_nonsense(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|unknown"):
        Limits.from_mapping(values)


# --- Property: a random walk against an independent oracle --------------------------------------------


def oracle(values: list[float], threshold: float, hysteresis: float, lower: bool) -> list[str]:
    """A separate two-state machine: what each value does ('raise', 'clear' or '')."""
    alarming = False
    out: list[str] = []
    for v in values:
        over = v < threshold if lower else v > threshold
        back = v > threshold * (1 + hysteresis) if lower else v < threshold * (1 - hysteresis)
        if not alarming and over:
            alarming = True
            out.append("raise")
        elif alarming and back:
            alarming = False
            out.append("clear")
        else:
            out.append("")
    return out


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("resolve_on_clear", [False, True], ids=["kept", "resolved"])
def test_random_walks_agree_with_an_independent_oracle(seed: int, resolve_on_clear: bool) -> None:
    rng = random.Random(seed)
    rule = rng.choice([r for r in MEASURED if r.condition != rules.TILT])
    hysteresis = rng.choice([0.0, 0.05, 0.1, 0.3])
    limits = replace(rule.limits, hysteresis=hysteresis)
    factor, factors = 1.0, []
    for _ in range(300):
        factor = min(max(factor + rng.gauss(0, 0.04), 0.3), 1.7)  # well below 2x: one severity
        factors.append(factor)
    values = [rule.at(f) for f in factors]
    expected = oracle(values, rule.threshold, hysteresis, rule.lower)

    service = Service(resolve_on_clear=resolve_on_clear)
    actual: list[str] = []
    for i, v in enumerate(values):
        evaluation = service.apply(rules.evaluate(limits, 0, rule.reading(at(i), v), service.active))
        kinds = {(d.kind, d.reopened) for d in evaluation.of(rule.condition)}
        if (Kind.RAISE, False) in kinds or (Kind.UPDATE, True) in kinds:
            actual.append("raise")
        elif (Kind.CLEAR, False) in kinds:
            actual.append("clear")
        else:
            actual.append("")
    assert actual == expected
    assert expected.count("raise") >= 1  # the walk does cross (the seeds are chosen to)
    raises = [d for d in service.log if d.kind is Kind.RAISE]
    assert len(raises) == (expected.count("raise") if resolve_on_clear else 1)


@pytest.mark.req("MAN-2")
@pytest.mark.parametrize("seed", range(10))
def test_random_tilt_walks_agree_with_the_oracle_below_90_degrees(seed: int) -> None:
    rng = random.Random(1000 + seed)
    install = rng.uniform(0, 20)
    walk, relatives = 8.0, []
    for _ in range(300):
        walk = min(max(walk + rng.gauss(0, 0.5), 0.0), 80.0)
        relatives.append(walk)
    expected = oracle(relatives, 10.0, 0.1, lower=False)
    service = Service(resolve_on_clear=True)
    sign = rng.choice([-1, 1])
    service.feed(
        (Reading(at(i), tilt_deg=install + sign * r) for i, r in enumerate(relatives)), install=install
    )
    assert service.kinds(rules.TILT).count(Kind.RAISE) == expected.count("raise")
    assert service.kinds(rules.TILT).count(Kind.CLEAR) == expected.count("clear")


@pytest.mark.req("MAN-2")
def test_a_reopened_alarm_keeps_its_worst_value_and_severity() -> None:
    active = {rules.GAS_CO: Active(rules.GAS_CO, pb.SEVERITY_CRITICAL, 90.0, cleared=True)}
    (reopened,) = rules.evaluate(Limits(), 0, Reading(T0, gases={"co_ppm": 40.0}), active).decisions
    assert (reopened.kind, reopened.reopened) == (Kind.UPDATE, True)
    assert (reopened.value, reopened.severity) == (90.0, pb.SEVERITY_CRITICAL)
    battery = {rules.BATTERY_LOW: Active(rules.BATTERY_LOW, pb.SEVERITY_WARNING, 2.9, cleared=True)}
    (reopened,) = rules.evaluate(Limits(), 0, Reading(T0, battery_v=3.2), battery).decisions
    assert reopened.value == 2.9


@pytest.mark.req("MAN-2")
def test_evaluate_applies_the_road_class_to_severity() -> None:
    tilt = rules.evaluate(Limits(), 0, Reading(T0, tilt_deg=12.0), {}, road_class=pb.ROAD_CLASS_ARTERIAL)
    assert tilt.decisions[0].severity == pb.SEVERITY_MAJOR
    assert tilt.events[0].severity == pb.SEVERITY_MAJOR
    yard = rules.evaluate(Limits(), 0, Reading(T0, open=True), {}, road_class=pb.ROAD_CLASS_NON_ROAD)
    assert yard.decisions[0].severity == pb.SEVERITY_MAJOR


@pytest.mark.req("MAN-2")
def test_one_reading_decides_every_condition_it_carries() -> None:
    reading = Reading(
        T0,
        open=True,
        tilt_deg=25.0,
        displaced=True,
        water_level_m=2.0,
        gases={"ch4_pct_lel": 30.0, "h2s_ppm": 11.0, "co_ppm": 36.0, "voc_ppm": 51.0},
        smoke=True,
        battery_v=3.0,
    )
    evaluation = rules.evaluate(Limits(water_level_m=1.0), 5.0, reading, {})
    assert [(d.kind, d.condition) for d in evaluation.decisions] == [
        (Kind.RAISE, c)
        for c in (
            rules.TILT,
            rules.OPEN,
            rules.DISPLACED,
            rules.WATER_LEVEL,
            rules.GAS_CH4,
            rules.GAS_H2S,
            rules.GAS_CO,
            rules.GAS_VOC,
            rules.SMOKE,
            rules.BATTERY_LOW,
        )
    ]
    assert [e.type for e in evaluation.events] == [
        "cover.tilt_exceeded",
        "cover.opened",
        "cover.displaced",
        "water.level_exceeded",
        *["gas.exceeded"] * 4,
        "smoke.detected",
        "battery.low",
    ]
    assert [e.gas for e in evaluation.events if e.type == "gas.exceeded"] == list(rules.GAS_CONDITIONS)
    assert evaluation.relative_tilt == 20.0
