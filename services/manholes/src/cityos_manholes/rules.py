"""The alarm rules of manhole covers: what a reading means, as data.

A pure module (no I/O, no gRPC calls, no database): the service hands `evaluate()` the cover's
effective `Limits`, its install angle, one `Reading`, the alarms it holds (`Active`, one per
condition) and the cover's work-order windows; it gets back an `Evaluation` whose `decisions` it
stores as they are and whose `events` it publishes. `heartbeat()` does the same for the silence
sweep. Conditions, severities, work-order statuses and road classes are the proto's enum values
(`cityos.manholes.v1.manholes_pb2`), so a decision maps onto an `Alarm` field for field.

The rules
---------
* **Thresholds** (`Limits`, from a `Thresholds` message or a mapping of its field names): tilt 10°,
  CH4 20 %LEL, H2S 10 ppm, CO 35 ppm, VOC 50 ppm, battery 3.3 V, heartbeat 2 h 10 min, hysteresis
  0.1; water level has no default (a well without one never alarms on water). Thresholds must be
  finite and > 0, hysteresis in [0, 1).
* **At the line**: a value *exactly* at its threshold does not raise. Upper thresholds (tilt, water,
  gases) raise when `value > threshold`; the battery (a lower threshold) when `value < threshold`.
* **Hysteresis**: an open alarm clears only once the value is back past the threshold by the
  margin: upper thresholds when `value < threshold * (1 - hysteresis)`, the battery when
  `value > threshold * (1 + hysteresis)`. Between the two lines (both ends included) nothing
  changes, so a value hovering at the threshold raises once and never flaps.
* **Tilt** is measured against the install angle: `relative = |tilt_deg - install_angle_deg|`.
  It raises when `relative > tilt threshold`; a `relative >= 90°` always alarms, whatever the
  threshold and the hysteresis (it raises, it is CRITICAL, and it never clears while it lasts).
* **Booleans** (open, displaced, smoke) raise when true and clear when false. They need no
  hysteresis: the terminal already debounces its contacts and reports a state, not a measurement
  near a line, so there is no value to hover.
* **Open** outside any active work-order window raises OPEN (suspected theft). Inside an active
  window (status PLANNED or IN_PROGRESS and `start <= reading.time < end`) the opening is
  MAINTENANCE_OPEN naming the work order: an event, no alarm. It is decided on the transition to
  open (`was_open=False`), so a lid that stays open during the works is recorded once. A lid still
  open after the window has ended raises OPEN (left open). An OPEN alarm already open stays open
  when a window begins (the work order may resolve it); it clears when the lid is closed.
* **One alarm per condition.** `active` holds the service's unresolved alarm of each condition:
    - none: crossing -> RAISE (with the event);
    - open (`cleared=False`): a worse value (higher; lower for the battery) or a higher severity
      -> UPDATE with the worst value and the higher severity (never lower); a value no worse, in the
      hold band or still over the line -> nothing; back past the margin -> CLEAR;
    - cleared but not yet resolved (`cleared=True`): crossing again -> UPDATE with `reopened=True`
      (the same alarm un-clears, keeping the worst value and the highest severity of its whole life,
      with the event again; never a second alarm); otherwise nothing.
  Booleans and the heartbeat never UPDATE on repetition (their value cannot worsen).
* **Missing values decide nothing**: a reading without a value (None, or a gas absent from
  `gases`) leaves that condition as it is. Gas names other than the four are ignored.
* **Heartbeat**: `heartbeat()` raises HEARTBEAT_MISSED when `now - heard_time > timeout` (exactly
  at the timeout: not yet), and clears it once the terminal is heard within the timeout; any reading
  passed to `evaluate()` clears an open HEARTBEAT_MISSED alarm too.
* **Severity** (`severity_for`): see its docstring.

Events (type strings, as the domain names them): cover.opened (OPEN raised), cover.tilt_exceeded,
cover.displaced, cover.restored (DISPLACED cleared), water.level_exceeded, gas.exceeded (one per
gas), smoke.detected, battery.low, heartbeat.missed, maintenance.authorized_open. Events go with a
RAISE or a reopening (and cover.restored with its CLEAR), never with an UPDATE.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias

from cityos.manholes.v1 import manholes_pb2 as pb

Condition: TypeAlias = pb.AlarmCondition.ValueType
Severity: TypeAlias = pb.Severity.ValueType
WorkOrderStatus: TypeAlias = pb.WorkOrderStatus.ValueType
RoadClass: TypeAlias = pb.RoadClass.ValueType

TILT: Final = pb.ALARM_CONDITION_TILT
OPEN: Final = pb.ALARM_CONDITION_OPEN
DISPLACED: Final = pb.ALARM_CONDITION_DISPLACED
WATER_LEVEL: Final = pb.ALARM_CONDITION_WATER_LEVEL
GAS_CH4: Final = pb.ALARM_CONDITION_GAS_CH4
GAS_H2S: Final = pb.ALARM_CONDITION_GAS_H2S
GAS_CO: Final = pb.ALARM_CONDITION_GAS_CO
GAS_VOC: Final = pb.ALARM_CONDITION_GAS_VOC
SMOKE: Final = pb.ALARM_CONDITION_SMOKE
BATTERY_LOW: Final = pb.ALARM_CONDITION_BATTERY_LOW
HEARTBEAT_MISSED: Final = pb.ALARM_CONDITION_HEARTBEAT_MISSED

#: The gas names of `CoverState.gases` / `Reading.gases`, with their alarm condition.
GAS_CONDITIONS: Final[Mapping[str, Condition]] = {
    "ch4_pct_lel": GAS_CH4,
    "h2s_ppm": GAS_H2S,
    "co_ppm": GAS_CO,
    "voc_ppm": GAS_VOC,
}

#: A relative tilt at or beyond this always alarms, CRITICAL.
ALWAYS_TILT_DEG: Final = 90.0
#: A relative tilt at or beyond this is at least MAJOR.
MAJOR_TILT_DEG: Final = 45.0

ACTIVE_WORK_ORDER_STATUSES: Final = frozenset(
    {pb.WORK_ORDER_STATUS_PLANNED, pb.WORK_ORDER_STATUS_IN_PROGRESS}
)
_FAST_ROADS: Final = frozenset({pb.ROAD_CLASS_EXPRESSWAY, pb.ROAD_CLASS_ARTERIAL})

DEFAULT_HEARTBEAT_TIMEOUT: Final = timedelta(hours=2, minutes=10)

EVENT_COVER_OPENED: Final = "cover.opened"
EVENT_TILT_EXCEEDED: Final = "cover.tilt_exceeded"
EVENT_DISPLACED: Final = "cover.displaced"
EVENT_RESTORED: Final = "cover.restored"
EVENT_WATER_LEVEL: Final = "water.level_exceeded"
EVENT_GAS: Final = "gas.exceeded"
EVENT_SMOKE: Final = "smoke.detected"
EVENT_BATTERY_LOW: Final = "battery.low"
EVENT_HEARTBEAT_MISSED: Final = "heartbeat.missed"
EVENT_MAINTENANCE_OPEN: Final = "maintenance.authorized_open"

_RAISE_EVENTS: Final[Mapping[Condition, str]] = {
    TILT: EVENT_TILT_EXCEEDED,
    OPEN: EVENT_COVER_OPENED,
    DISPLACED: EVENT_DISPLACED,
    WATER_LEVEL: EVENT_WATER_LEVEL,
    GAS_CH4: EVENT_GAS,
    GAS_H2S: EVENT_GAS,
    GAS_CO: EVENT_GAS,
    GAS_VOC: EVENT_GAS,
    SMOKE: EVENT_SMOKE,
    BATTERY_LOW: EVENT_BATTERY_LOW,
    HEARTBEAT_MISSED: EVENT_HEARTBEAT_MISSED,
}

# The value and threshold a boolean alarm records: true is 1, and it raises when value > 0.
_TRUE: Final = 1.0
_BOOLEAN_THRESHOLD: Final = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective thresholds of a cover (the `Thresholds` message with its defaults filled in)."""

    tilt_deg: float = 10.0
    water_level_m: float | None = None
    ch4_pct_lel: float = 20.0
    h2s_ppm: float = 10.0
    co_ppm: float = 35.0
    voc_ppm: float = 50.0
    battery_low_v: float = 3.3
    heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT
    hysteresis: float = 0.1

    def __post_init__(self) -> None:
        for name in (
            "tilt_deg",
            "water_level_m",
            "ch4_pct_lel",
            "h2s_ppm",
            "co_ppm",
            "voc_ppm",
            "battery_low_v",
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
        if not (math.isfinite(self.hysteresis) and 0 <= self.hysteresis < 1):
            raise ValueError(f"hysteresis must be in [0, 1), not {self.hysteresis!r}")
        if self.heartbeat_timeout <= timedelta(0):
            raise ValueError(f"heartbeat_timeout must be positive, not {self.heartbeat_timeout}")

    @classmethod
    def from_proto(cls, thresholds: pb.Thresholds | None) -> Limits:
        """The limits of a `Thresholds` message: its set fields, the defaults for the rest."""
        if thresholds is None:
            return cls()
        values: dict[str, Any] = {}
        for name in (
            "tilt_deg",
            "water_level_m",
            "ch4_pct_lel",
            "h2s_ppm",
            "co_ppm",
            "voc_ppm",
            "battery_low_v",
            "hysteresis",
        ):
            if thresholds.HasField(name):
                values[name] = getattr(thresholds, name)
        if thresholds.HasField("heartbeat_timeout"):
            values["heartbeat_timeout"] = thresholds.heartbeat_timeout.ToTimedelta()
        return cls(**values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Limits:
        """The limits of a mapping of the `Thresholds` field names (None = the default).

        `heartbeat_timeout` is a `timedelta` or a number of seconds. Unknown names are refused.
        """
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown threshold(s): {', '.join(sorted(unknown))}")
        given: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            if name == "heartbeat_timeout" and not isinstance(value, timedelta):
                value = timedelta(seconds=float(value))
            elif name != "heartbeat_timeout":
                value = float(value)
            given[name] = value
        return cls(**given)

    def gas_threshold(self, condition: Condition) -> float:
        """The threshold of a gas condition."""
        return {
            GAS_CH4: self.ch4_pct_lel,
            GAS_H2S: self.h2s_ppm,
            GAS_CO: self.co_ppm,
            GAS_VOC: self.voc_ppm,
        }[condition]


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a cover's terminal. None (or a gas absent from `gases`) = not reported."""

    time: datetime
    open: bool | None = None
    tilt_deg: float | None = None  # absolute, as the terminal reports it
    displaced: bool | None = None
    water_level_m: float | None = None
    gases: Mapping[str, float] = field(default_factory=dict)
    smoke: bool | None = None
    battery_v: float | None = None


@dataclass(frozen=True, slots=True)
class Active:
    """The unresolved alarm the service holds for a condition."""

    condition: Condition
    severity: Severity
    value: float  # the worst value seen while it lasted
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class WorkWindow:
    """A work order's planned window: openings inside it are maintenance while it is active."""

    name: str  # `workOrders/{work_order}`
    start: datetime
    end: datetime
    status: WorkOrderStatus

    def covers(self, at: datetime) -> bool:
        """Active (PLANNED or IN_PROGRESS) and `start <= at < end`."""
        return self.status in ACTIVE_WORK_ORDER_STATUSES and self.start <= at < self.end


class Kind(enum.StrEnum):
    """What the service does with a decision."""

    RAISE = "raise"  # create the condition's alarm (value, severity, threshold)
    UPDATE = "update"  # the open alarm's worst value / severity changed (`reopened`: it un-clears)
    CLEAR = "clear"  # mark the condition's alarm cleared (it stays until resolved)
    MAINTENANCE_OPEN = "maintenance_open"  # an opening inside a work order window: no alarm


@dataclass(frozen=True, slots=True)
class Decision:
    """One thing the service stores. Fields a kind does not use keep their defaults."""

    kind: Kind
    condition: Condition
    severity: Severity = pb.SEVERITY_UNSPECIFIED
    value: float = 0.0
    threshold: float = 0.0
    reopened: bool = False
    work_order: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One event to publish (`type` as the domain names it)."""

    type: str
    condition: Condition
    time: datetime
    value: float = 0.0
    threshold: float = 0.0
    severity: Severity = pb.SEVERITY_UNSPECIFIED
    gas: str = ""  # the gas name, for gas.exceeded
    work_order: str = ""  # for maintenance.authorized_open


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What a reading (or a heartbeat sweep) decided."""

    decisions: tuple[Decision, ...] = ()
    events: tuple[Event, ...] = ()
    relative_tilt: float | None = None  # |tilt - install angle|, when the reading had a tilt

    def of(self, condition: Condition) -> tuple[Decision, ...]:
        """The decisions about one condition."""
        return tuple(d for d in self.decisions if d.condition == condition)


def severity_for(
    condition: Condition,
    value: float,
    limits: Limits,
    road_class: RoadClass = pb.ROAD_CLASS_UNSPECIFIED,
) -> Severity:
    """How urgent an alarm of `condition` at `value` is.

    * TILT (value: relative degrees): WARNING; >= 45° MAJOR; >= 90° CRITICAL. On an expressway or
      arterial road one step higher (a tilted lid under fast traffic), at most CRITICAL.
    * OPEN, DISPLACED: CRITICAL (a hole people and vehicles can fall into); MAJOR off the road
      (ROAD_CLASS_NON_ROAD: green space, yard).
    * Gases: MAJOR; at or beyond twice the threshold CRITICAL.
    * WATER_LEVEL: MAJOR. SMOKE: CRITICAL. BATTERY_LOW: WARNING. HEARTBEAT_MISSED: MAJOR.
    """
    if condition == TILT:
        if value >= ALWAYS_TILT_DEG:
            return pb.SEVERITY_CRITICAL
        severity = pb.SEVERITY_MAJOR if value >= MAJOR_TILT_DEG else pb.SEVERITY_WARNING
        if road_class in _FAST_ROADS:
            severity = pb.SEVERITY_CRITICAL if severity == pb.SEVERITY_MAJOR else pb.SEVERITY_MAJOR
        return severity
    if condition in (OPEN, DISPLACED):
        return pb.SEVERITY_MAJOR if road_class == pb.ROAD_CLASS_NON_ROAD else pb.SEVERITY_CRITICAL
    if condition in (GAS_CH4, GAS_H2S, GAS_CO, GAS_VOC):
        return pb.SEVERITY_CRITICAL if value >= 2 * limits.gas_threshold(condition) else pb.SEVERITY_MAJOR
    if condition == SMOKE:
        return pb.SEVERITY_CRITICAL
    if condition == BATTERY_LOW:
        return pb.SEVERITY_WARNING
    if condition in (WATER_LEVEL, HEARTBEAT_MISSED):
        return pb.SEVERITY_MAJOR
    raise ValueError(f"no severity for condition {condition!r}")


class _Collector:
    """Decisions and events of one evaluation, in condition order."""

    def __init__(self, time: datetime, active: Mapping[Condition, Active], road_class: RoadClass) -> None:
        self.time = time
        self.active = active
        self.road_class = road_class
        self.decisions: list[Decision] = []
        self.events: list[Event] = []

    def raise_(
        self,
        condition: Condition,
        severity: Severity,
        value: float,
        threshold: float,
        *,
        lower: bool = False,
        gas: str = "",
    ) -> None:
        current = self.active.get(condition)
        if current is None:
            self.decisions.append(Decision(Kind.RAISE, condition, severity, value, threshold))
        else:  # cleared but unresolved: the same alarm comes back, keeping its worst value and severity
            worst = min(value, current.value) if lower else max(value, current.value)
            severity = max(severity, current.severity)
            self.decisions.append(Decision(Kind.UPDATE, condition, severity, worst, threshold, reopened=True))
        self.events.append(
            Event(_RAISE_EVENTS[condition], condition, self.time, value, threshold, severity, gas=gas)
        )

    def clear(self, condition: Condition) -> None:
        self.decisions.append(Decision(Kind.CLEAR, condition))
        if condition == DISPLACED:
            self.events.append(Event(EVENT_RESTORED, condition, self.time))

    def update(self, condition: Condition, severity: Severity, value: float, threshold: float) -> None:
        self.decisions.append(Decision(Kind.UPDATE, condition, severity, value, threshold))


def _is_open(active: Active | None) -> bool:
    return active is not None and not active.cleared


def _measured(
    out: _Collector,
    limits: Limits,
    condition: Condition,
    value: float,
    threshold: float,
    *,
    lower: bool = False,
    always: bool = False,
    gas: str = "",
) -> None:
    """A measured value against a threshold with hysteresis (`lower`: alarms below it).

    `always`: the value alarms whatever the threshold (tilt >= 90°): it raises and cannot clear.
    """
    if lower:
        crossed = value < threshold
        recovered = value > threshold * (1 + limits.hysteresis)
    else:
        crossed = value > threshold
        recovered = value < threshold * (1 - limits.hysteresis)
    crossed = crossed or always
    recovered = recovered and not always
    severity = severity_for(condition, value, limits, out.road_class)
    current = out.active.get(condition)
    if not _is_open(current):
        if crossed:
            out.raise_(condition, severity, value, threshold, lower=lower, gas=gas)
        return
    assert current is not None
    if recovered:
        out.clear(condition)
        return
    worse = value < current.value if lower else value > current.value
    if worse or severity > current.severity:
        worst = min(value, current.value) if lower else max(value, current.value)
        out.update(condition, max(severity, current.severity), worst, threshold)


def _boolean(out: _Collector, limits: Limits, condition: Condition, state: bool) -> None:
    current = out.active.get(condition)
    if state and not _is_open(current):
        severity = severity_for(condition, _TRUE, limits, out.road_class)
        out.raise_(condition, severity, _TRUE, _BOOLEAN_THRESHOLD)
    elif not state and _is_open(current):
        out.clear(condition)


def active_window(windows: Sequence[WorkWindow], at: datetime) -> WorkWindow | None:
    """The active work-order window covering `at` (the earliest started, then by name), if any."""
    covering = [w for w in windows if w.covers(at)]
    return min(covering, key=lambda w: (w.start, w.name)) if covering else None


def evaluate(
    limits: Limits,
    install_angle_deg: float,
    reading: Reading,
    active: Mapping[Condition, Active],
    windows: Sequence[WorkWindow] = (),
    *,
    road_class: RoadClass = pb.ROAD_CLASS_UNSPECIFIED,
    was_open: bool = False,
) -> Evaluation:
    """Decide what one reading means for a cover's alarms (see the module docstring for the rules).

    `active`: the service's unresolved alarm per condition. `windows`: the cover's work orders.
    `was_open`: the cover's last known lid state (an opening is the change to open).
    """
    out = _Collector(reading.time, active, road_class)

    # Any reading proves the terminal alive.
    if _is_open(active.get(HEARTBEAT_MISSED)):
        out.clear(HEARTBEAT_MISSED)

    relative_tilt: float | None = None
    if reading.tilt_deg is not None:
        relative_tilt = abs(reading.tilt_deg - install_angle_deg)
        always = relative_tilt >= ALWAYS_TILT_DEG
        threshold = limits.tilt_deg if relative_tilt > limits.tilt_deg or not always else ALWAYS_TILT_DEG
        _measured(out, limits, TILT, relative_tilt, threshold, always=always)

    if reading.open is not None:
        _open(out, limits, reading, windows, was_open)

    if reading.displaced is not None:
        _boolean(out, limits, DISPLACED, reading.displaced)

    if reading.water_level_m is not None:
        if limits.water_level_m is not None:
            _measured(out, limits, WATER_LEVEL, reading.water_level_m, limits.water_level_m)
        elif _is_open(active.get(WATER_LEVEL)):
            out.clear(WATER_LEVEL)  # the well no longer has a water threshold: nothing alarms

    for gas, condition in GAS_CONDITIONS.items():
        level = reading.gases.get(gas)
        if level is not None:
            _measured(out, limits, condition, level, limits.gas_threshold(condition), gas=gas)

    if reading.smoke is not None:
        _boolean(out, limits, SMOKE, reading.smoke)

    if reading.battery_v is not None:
        _measured(out, limits, BATTERY_LOW, reading.battery_v, limits.battery_low_v, lower=True)

    return Evaluation(tuple(out.decisions), tuple(out.events), relative_tilt)


def _open(
    out: _Collector, limits: Limits, reading: Reading, windows: Sequence[WorkWindow], was_open: bool
) -> None:
    current = out.active.get(OPEN)
    if not reading.open:
        if _is_open(current):
            out.clear(OPEN)
        return
    if _is_open(current):
        return  # already alarming: it stays until the lid is closed
    window = active_window(windows, reading.time)
    if window is None:
        _boolean(out, limits, OPEN, True)
    elif not was_open:
        out.decisions.append(Decision(Kind.MAINTENANCE_OPEN, OPEN, work_order=window.name))
        out.events.append(Event(EVENT_MAINTENANCE_OPEN, OPEN, reading.time, work_order=window.name))


def heartbeat(
    limits: Limits, heard_time: datetime | None, now: datetime, active: Mapping[Condition, Active]
) -> Evaluation:
    """The silence sweep: RAISE HEARTBEAT_MISSED when `now - heard_time > timeout`, CLEAR within it.

    The value and threshold are seconds (the silence, the timeout). A terminal never heard from
    (`heard_time` None) decides nothing: it has not started reporting. No UPDATE while it lasts
    (the silence grows every sweep; the alarm's raise time says since when).
    """
    out = _Collector(now, active, pb.ROAD_CLASS_UNSPECIFIED)
    if heard_time is None:
        return Evaluation()
    silence = now - heard_time
    current = active.get(HEARTBEAT_MISSED)
    if silence > limits.heartbeat_timeout:
        if not _is_open(current):
            out.raise_(
                HEARTBEAT_MISSED,
                severity_for(HEARTBEAT_MISSED, silence.total_seconds(), limits),
                silence.total_seconds(),
                limits.heartbeat_timeout.total_seconds(),
            )
    elif _is_open(current):
        out.clear(HEARTBEAT_MISSED)
    return Evaluation(tuple(out.decisions), tuple(out.events))
