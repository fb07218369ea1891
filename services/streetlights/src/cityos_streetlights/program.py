"""Dimming programs, evaluated: which step is in force at a place and instant, and when it changes.

Pure (no database, no gRPC). A schedule is a list of steps, each a time and a level; the same program
runs every day. A step's time on a local date (in the schedule's IANA time zone) is either

- FIXED_TIME: the wall-clock `HH:MM` of that date. A time the clock skips (the spring DST gap: 02:30
  in Europe/Berlin on the last Sunday of March) takes effect when the clock jumps over it (03:00 CEST);
  a time the clock repeats (the autumn fallback) takes effect the first time; or
- a sun anchor plus the step's offset (-6 h to +6 h, whole seconds): SUNSET and SUNRISE are the
  instants the sun's upper limb touches the horizon under standard refraction (its centre 0.833° below
  the horizon), CIVIL_DUSK and CIVIL_DAWN the sun's centre 6° below, on that local date at the place
  (`solar.sun_times`, NOAA's equations through `astral`). The offset may carry the step past midnight;
  it still belongs to the date of its anchor. On a date the sun does not reach the anchor's angle
  (polar day or night) the step does not occur at all.

On each date the steps are taken in the order of their times there, whatever their order in the list;
steps at the same instant in the order of the wall times they name (02:30 before 03:00 when both fall
on the jump), then of the list — the last of them wins. The level in force at an instant is that of
the last occurrence at or before it, looking back over the dates before — so the last step of a day
carries over past midnight until the next day's first step, and a date with no occurrence at all (a
sun-only program in polar night) keeps the level of the last one. `in_force` looks two local dates
back and two ahead; a program with nothing at or before the instant in that window has nothing in
force (None: nothing to set).

Steps are stored as the proto's JSON (`steps_to_json`, `steps_from_json`) and validated field by field
(`step_problems`) before they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf import duration_pb2, json_format

from cityos.streetlights.v1 import schedules_pb2
from cityos_streetlights import solar

FIXED_TIME = schedules_pb2.STEP_ANCHOR_FIXED_TIME
SUNSET = schedules_pb2.STEP_ANCHOR_SUNSET
SUNRISE = schedules_pb2.STEP_ANCHOR_SUNRISE
CIVIL_DUSK = schedules_pb2.STEP_ANCHOR_CIVIL_DUSK
CIVIL_DAWN = schedules_pb2.STEP_ANCHOR_CIVIL_DAWN
SUN_ANCHORS = frozenset({SUNSET, SUNRISE, CIVIL_DUSK, CIVIL_DAWN})
ANCHORS = SUN_ANCHORS | {FIXED_TIME}

DEFAULT_TIME_ZONE = "Asia/Shanghai"
MAX_STEPS = 24
MAX_OFFSET_S = 6 * 3600
# How far `in_force` looks for the last occurrence and the next one (local dates).
WINDOW_DAYS = 2

LOCAL_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
ZONE_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
ANCHOR_NAMES = "FIXED_TIME, SUNSET, SUNRISE, CIVIL_DUSK, CIVIL_DAWN"

Violations = list[tuple[str, str]]


@dataclass(frozen=True)
class Step:
    """One step of a program, as evaluated."""

    anchor: int  # schedules_pb2.StepAnchor value
    local_time: str  # "HH:MM" for FIXED_TIME, else ""
    offset_s: int  # seconds added to the sun's time (sun anchors; may be negative)
    dim_level: int  # 0 (off) to 100


@dataclass(frozen=True)
class Occurrence:
    """A step taking effect: which, when (aware UTC) and at what level."""

    step_index: int
    time: datetime
    dim_level: int


@dataclass(frozen=True)
class InForce:
    """The step in force at an instant, since when, and when the next step takes effect (None: none
    within the window)."""

    dim_level: int
    step_index: int
    since: datetime
    next_change: datetime | None


# -- conversions --------------------------------------------------------------------------------------


def step_from_proto(step: schedules_pb2.ScheduleStep) -> Step:
    return Step(
        anchor=int(step.anchor),
        local_time=step.local_time,
        offset_s=int(step.offset.seconds),
        dim_level=int(step.dim_level),
    )


def step_to_proto(step: Step) -> schedules_pb2.ScheduleStep:
    message = schedules_pb2.ScheduleStep(
        anchor=step.anchor,  # type: ignore[arg-type]
        local_time=step.local_time,
        dim_level=step.dim_level,
    )
    if step.anchor in SUN_ANCHORS:
        message.offset.CopyFrom(duration_pb2.Duration(seconds=step.offset_s))
    return message


def steps_from_protos(steps: Sequence[schedules_pb2.ScheduleStep]) -> list[Step]:
    return [step_from_proto(step) for step in steps]


def steps_to_json(steps: Sequence[schedules_pb2.ScheduleStep]) -> list[dict[str, Any]]:
    """The steps in the proto's JSON form, as `ScheduleRow.steps` holds them."""
    return [json_format.MessageToDict(step) for step in steps]


def protos_from_json(steps: list[dict[str, Any]]) -> list[schedules_pb2.ScheduleStep]:
    return [json_format.ParseDict(step, schedules_pb2.ScheduleStep()) for step in steps]


def steps_from_json(steps: list[dict[str, Any]]) -> list[Step]:
    """`ScheduleRow.steps` (the proto's JSON form) as Steps."""
    return [step_from_proto(step) for step in protos_from_json(steps)]


def _steps(steps: Sequence[Step | schedules_pb2.ScheduleStep]) -> list[Step]:
    return [step if isinstance(step, Step) else step_from_proto(step) for step in steps]


def zone(time_zone: str) -> ZoneInfo:
    """The schedule's zone ("" is the default, Asia/Shanghai)."""
    return ZoneInfo(time_zone or DEFAULT_TIME_ZONE)


# -- validation ---------------------------------------------------------------------------------------


def time_zone_problems(time_zone: str, field: str = "schedule.time_zone") -> Violations:
    """A problem unless `time_zone` is an IANA zone name the zone database knows."""
    problem = [(field, "must be an IANA time zone such as Asia/Shanghai or Europe/Berlin")]
    if not time_zone or len(time_zone) > 64 or not ZONE_NAME.match(time_zone):
        return problem
    try:
        ZoneInfo(time_zone)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return problem
    return []


def step_problems(
    steps: Sequence[Step | schedules_pb2.ScheduleStep], time_zone: str, field: str = "schedule"
) -> Violations:
    """Every problem of a program: 1 to 24 steps; each with an anchor; a FIXED_TIME step with a valid
    `HH:MM` and no offset, no two at the same time; a sun step with no local time and an offset of
    whole seconds within ±6 h; levels 0 to 100; and the time zone an IANA zone."""
    problems: Violations = []
    if not 1 <= len(steps) <= MAX_STEPS:
        problems.append((f"{field}.steps", f"1 to {MAX_STEPS} steps"))
    fixed_at: dict[str, int] = {}
    for index, step in enumerate(steps[: MAX_STEPS + 1]):
        path = f"{field}.steps[{index}]"
        message = step if isinstance(step, schedules_pb2.ScheduleStep) else step_to_proto(step)
        anchor = int(message.anchor)
        has_offset = message.offset.seconds != 0 or message.offset.nanos != 0
        if anchor == schedules_pb2.STEP_ANCHOR_UNSPECIFIED:
            problems.append((f"{path}.anchor", f"is required: one of {ANCHOR_NAMES}"))
        elif anchor not in ANCHORS:
            problems.append((f"{path}.anchor", f"must be one of {ANCHOR_NAMES}"))
        elif anchor == FIXED_TIME:
            if not LOCAL_TIME.match(message.local_time):
                problems.append((f"{path}.local_time", "must be HH:MM (00:00 to 23:59) for FIXED_TIME"))
            elif message.local_time in fixed_at:
                problems.append(
                    (
                        f"{path}.local_time",
                        f"{message.local_time} is also steps[{fixed_at[message.local_time]}]",
                    )
                )
            else:
                fixed_at[message.local_time] = index
            if has_offset:
                problems.append(
                    (f"{path}.offset", "must be unset for FIXED_TIME (offsets apply to sun anchors)")
                )
        else:
            if message.local_time:
                problems.append((f"{path}.local_time", "must be empty for a sun anchor (use offset)"))
            if message.offset.nanos != 0 or abs(message.offset.seconds) > MAX_OFFSET_S:
                problems.append((f"{path}.offset", "whole seconds from -6 hours to +6 hours"))
        if not 0 <= message.dim_level <= 100:
            problems.append((f"{path}.dim_level", "from 0 (off) to 100"))
    problems += time_zone_problems(time_zone, f"{field}.time_zone")
    return problems


# -- evaluation ---------------------------------------------------------------------------------------


def wall_time_instant(day: date, wall: time, place_zone: ZoneInfo) -> datetime:
    """The instant (aware UTC) the clocks of `place_zone` show `wall` on `day`: the first one when the
    clock repeats it (autumn fallback), the instant the clock jumps over it when it skips it (spring
    DST gap)."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=place_zone, fold=0).astimezone(UTC)
    if first.astimezone(place_zone).replace(tzinfo=None) == naive:
        return first
    # In a gap, fold=0 reads the wall time with the offset before the jump (an instant after it) and
    # fold=1 with the offset after (an instant before it): the jump lies between; find it to the second.
    before = naive.replace(tzinfo=place_zone, fold=1).astimezone(UTC)
    after = first
    while after - before > timedelta(seconds=1):
        middle = before + timedelta(seconds=(after - before).total_seconds() // 2)
        if middle.astimezone(place_zone).replace(tzinfo=None) < naive:
            before = middle
        else:
            after = middle
    return after


@dataclass(frozen=True)
class _Timed:
    """An occurrence with the local wall time it names (the order of steps at one instant)."""

    occurrence: Occurrence
    wall: datetime

    def key(self) -> tuple[datetime, datetime, int]:
        return (self.occurrence.time, self.wall, self.occurrence.step_index)


def _step_time(
    step: Step, place_zone: ZoneInfo, time_zone: str, latitude: float, longitude: float, day: date
) -> tuple[datetime, datetime] | None:
    """The instant of the step on the local date `day` and the local wall time it names."""
    if step.anchor == FIXED_TIME:
        hours, minutes = (int(part) for part in step.local_time.split(":"))
        wall = time(hours, minutes)
        return wall_time_instant(day, wall, place_zone), datetime.combine(day, wall)
    sun = solar.sun_times(latitude, longitude, day, time_zone or DEFAULT_TIME_ZONE)
    anchor_time: datetime | None
    if step.anchor == SUNSET:
        anchor_time = sun.sunset
    elif step.anchor == SUNRISE:
        anchor_time = sun.sunrise
    elif step.anchor == CIVIL_DUSK:
        anchor_time = sun.civil_dusk
    elif step.anchor == CIVIL_DAWN:
        anchor_time = sun.civil_dawn
    else:
        return None
    if anchor_time is None:
        return None
    moment = anchor_time + timedelta(seconds=step.offset_s)
    return moment, moment.astimezone(place_zone).replace(tzinfo=None)


def _timed(steps: list[Step], time_zone: str, latitude: float, longitude: float, day: date) -> list[_Timed]:
    place_zone = zone(time_zone)
    found: list[_Timed] = []
    for index, step in enumerate(steps):
        timed = _step_time(step, place_zone, time_zone, latitude, longitude, day)
        if timed is not None:
            moment, wall = timed
            found.append(_Timed(Occurrence(step_index=index, time=moment, dim_level=step.dim_level), wall))
    found.sort(key=_Timed.key)
    return found


def occurrences(
    steps: Sequence[Step | schedules_pb2.ScheduleStep],
    time_zone: str,
    latitude: float,
    longitude: float,
    day: date,
) -> list[Occurrence]:
    """The steps on the local date `day` at the place, in the order of their times (ties: by the wall
    time they name, then by index); a sun step whose anchor does not happen that date there (polar day
    or night) is absent."""
    return [timed.occurrence for timed in _timed(_steps(steps), time_zone, latitude, longitude, day)]


def _window(
    steps: list[Step], time_zone: str, latitude: float, longitude: float, around: date
) -> list[Occurrence]:
    """The occurrences of the local dates `around` ± WINDOW_DAYS, in order, each once."""
    seen: set[tuple[int, datetime]] = set()
    merged: list[_Timed] = []
    for shift in range(-WINDOW_DAYS, WINDOW_DAYS + 1):
        for timed in _timed(steps, time_zone, latitude, longitude, around + timedelta(days=shift)):
            identity = (timed.occurrence.step_index, timed.occurrence.time)
            if identity not in seen:  # near midnight two dates may name the same sun crossing
                seen.add(identity)
                merged.append(timed)
    merged.sort(key=_Timed.key)
    return [timed.occurrence for timed in merged]


def in_force(
    steps: Sequence[Step | schedules_pb2.ScheduleStep],
    time_zone: str,
    latitude: float,
    longitude: float,
    when: datetime,
) -> InForce | None:
    """The step in force at `when` (aware): the last occurrence at or before it, looking back up to two
    local dates, and the next occurrence after it (whatever its level) looking up to two dates ahead;
    None when no step occurs at or before `when` in that window."""
    if when.tzinfo is None:
        raise ValueError("in_force needs an aware datetime")
    moment = when.astimezone(UTC)
    around = moment.astimezone(zone(time_zone)).date()
    timeline = _window(_steps(steps), time_zone, latitude, longitude, around)
    last: Occurrence | None = None
    following: Occurrence | None = None
    for occurrence in timeline:
        if occurrence.time <= moment:
            last = occurrence
        else:
            following = occurrence
            break
    if last is None:
        return None
    return InForce(
        dim_level=last.dim_level,
        step_index=last.step_index,
        since=last.time,
        next_change=following.time if following is not None else None,
    )


def start_of_day(day: date, time_zone: str) -> datetime:
    """The first instant of the local date `day` (aware UTC)."""
    return datetime.combine(day, time(0, 0), tzinfo=zone(time_zone)).astimezone(UTC)


def level_at_midnight(
    steps: Sequence[Step | schedules_pb2.ScheduleStep],
    time_zone: str,
    latitude: float,
    longitude: float,
    day: date,
) -> int | None:
    """The level in force as the local date `day` begins: that of the last occurrence before its first
    instant (the previous dates' last step), looking back two dates; None when there is none."""
    start = start_of_day(day, time_zone)
    before = [
        occurrence
        for occurrence in _window(_steps(steps), time_zone, latitude, longitude, day)
        if occurrence.time < start
    ]
    return before[-1].dim_level if before else None
