"""Energy: metering each light's controller readings into hourly buckets, and the energy report.

Metering (`meter`, called by the live-state code for each applied controller reading, in the
transaction that applies it and before the light's live columns are overwritten): the interval from the
light's previous reading to this one, [previous `reading_time`, `time`), is attributed to the light with
what the previous reading said, since that is the state the light was in during the interval:

- energy: the controller's lifetime counter delta (this reading's `energy_wh` minus the previous one)
  when both are known and the delta is plausible: not negative (a meter reset, a replaced controller)
  and not faster than `COUNTER_JUMP_FACTOR` times the lamp's rating (a replaced controller with a used
  meter). Otherwise the previous `power_w` times the duration. When the previous reading had a counter
  but this one leaves it out, the interval's energy is 0 and the next reading with the counter carries
  it (its delta runs from the last counter value), so nothing is counted twice whichever way the caller
  merges readings. With neither a counter delta nor a previous power the interval is not metered at all
  (no energy, no burning time), so savings never count energy nobody measured.
- burning time: the whole interval when the previous power state was burning (ON, LOW or BOOTING_UP),
  else 0. `full_power_wh` = the model's rated power x burning seconds / 3600: what the same burning time
  would have taken undimmed. The savings of a period are max(0, full - energy), computed on the
  period's sums (an off light's standby draw counts as energy with no full-power counterpart).
- not metered: the first reading (there is nothing before it), a reading not after the previous one (a
  retransmission), and an interval longer than `max_gap_s` (default `MAX_GAP_S`, 6 hours; the caller
  passes the setting `energy_max_gap_s`, `CITYOS_STREETLIGHTS_ENERGY_MAX_GAP_S`): a gap in the data is
  a gap in the report, never a guess spread over hours nobody observed. The counter moves on
  regardless, so the next interval is metered from the new value.

The interval is split over the UTC hours it touches in proportion to time (`split_by_hour`) and added
to the light's `EnergyHourRow` of each hour, with the light's current group and cabinet (a light moved
between two readings puts that interval, and the whole of each hour bucket it adds to, under its new
group and cabinet). The add is a read-modify-write: the
caller holds the light's row, so no two transactions write one light's buckets at once; it runs the
same on SQLite and PostgreSQL.

The report (`EnergyServicer.GetEnergyReport`): a light's buckets, or the buckets recorded with a group's
or a cabinet's id (the group and cabinet the lights belonged to then), summed per UTC hour in SQL and per
UTC day here, over [start rounded down to the hour, end rounded up to the hour). Periods carry only hours
or days with data; a day period is clipped to the window. The subject must be reachable by the caller
(tenancy as the inventory: owner, operator, maintainer; city-wide roles), else NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cityos.streetlights.v1 import energy_pb2, energy_pb2_grpc, inventory_pb2
from cityos_platform.db import Database, Tx
from cityos_platform.errors import InvalidArgument
from cityos_platform.interceptor import current_call
from cityos_platform.tenancy import can_reach, not_found
from cityos_streetlights.common import ID_RULE, RESOURCE_ID, Violations, stamp
from cityos_streetlights.models import CabinetRow, EnergyHourRow, GroupRow, LightRow

HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
# Intervals longer than this are gaps in the data and are not metered.
MAX_GAP_S: Final = 6 * 3600.0
# A counter running faster than this many times the lamp's rating (or its last power, if higher) jumped.
COUNTER_JUMP_FACTOR: Final = 3.0
# A report covers at most this long.
MAX_REPORT: Final = timedelta(days=400)
BURNING: Final = frozenset(
    {inventory_pb2.POWER_STATE_ON, inventory_pb2.POWER_STATE_LOW, inventory_pb2.POWER_STATE_BOOTING_UP}
)
SUBJECTS: Final = ("lights", "groups", "cabinets")
INTERVALS: Final = frozenset(energy_pb2.EnergyInterval.values())


@dataclass(frozen=True, slots=True)
class Interval:
    """What one interval between two readings of a light metered."""

    start: datetime
    end: datetime
    energy_wh: float
    burning_s: float
    full_power_wh: float


def measure(
    *,
    previous_time: datetime | None,
    previous_energy_wh: float | None,
    previous_power_w: float | None,
    previous_state: int,
    rated_power_w: float,
    time: datetime,
    energy_wh: float | None,
    max_gap_s: float = MAX_GAP_S,
) -> Interval | None:
    """The interval [previous_time, time) as the module doc meters it, or None when it is not metered."""
    if previous_time is None:
        return None
    duration_s = (time - previous_time).total_seconds()
    if duration_s <= 0 or duration_s > max_gap_s:
        return None
    burning_s = duration_s if previous_state in BURNING else 0.0
    energy: float | None = None
    if previous_energy_wh is not None:
        if energy_wh is None:
            energy = 0.0  # the next reading with the counter carries this interval's energy
        else:
            delta = energy_wh - previous_energy_wh
            ceiling = COUNTER_JUMP_FACTOR * max(rated_power_w, previous_power_w or 0.0) * duration_s / 3600
            if 0 <= delta <= ceiling:
                energy = delta
    if energy is None and previous_power_w is not None:
        energy = max(previous_power_w, 0.0) * duration_s / 3600
    if energy is None:
        return None
    return Interval(previous_time, time, energy, burning_s, rated_power_w * burning_s / 3600)


def floor_hour(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(value: datetime) -> datetime:
    floor = floor_hour(value)
    return floor if floor == value else floor + HOUR


def split_by_hour(
    start: datetime, end: datetime, energy_wh: float, burning_s: float, full_power_wh: float
) -> list[tuple[datetime, float, float, float]]:
    """[start, end) split over the UTC hours it touches, each share in proportion to time:
    (hour, energy_wh, burning_s, full_power_wh). The last share takes the remainder, so the shares add
    up to the whole exactly. Empty for an empty or reversed interval."""
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("split_by_hour needs timezone-aware datetimes")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    total = (end - start).total_seconds()
    if total <= 0:
        return []
    shares: list[tuple[datetime, float, float, float]] = []
    hour = floor_hour(start)
    left = [energy_wh, burning_s, full_power_wh]
    while hour < end:
        following = hour + HOUR
        if following >= end:
            shares.append((hour, left[0], left[1], left[2]))
            break
        fraction = (following - max(start, hour)).total_seconds() / total
        share = (energy_wh * fraction, burning_s * fraction, full_power_wh * fraction)
        shares.append((hour, *share))
        left = [value - part for value, part in zip(left, share, strict=True)]
        hour = following
    return shares


async def meter(
    tx: Tx,
    light: LightRow,
    rated_power_w: float,
    *,
    time: datetime,
    energy_wh: float | None,
    power_w: float | None,
    on: bool | None,
    max_gap_s: float = MAX_GAP_S,
) -> None:
    """Record the interval from the light's previous reading (its live columns, not yet overwritten) to
    this reading at `time` into its hourly buckets. `energy_wh` is this reading's counter (None when it
    carries none); `power_w` and `on` describe this reading's state, which the next interval is metered
    with once it is the previous reading: they are part of the call so the caller hands over the whole
    reading, and do not change this interval."""
    interval = measure(
        previous_time=light.reading_time,
        previous_energy_wh=light.energy_wh,
        previous_power_w=light.power_w,
        previous_state=light.power_state,
        rated_power_w=rated_power_w,
        time=time,
        energy_wh=energy_wh,
        max_gap_s=max_gap_s,
    )
    if interval is None:
        return
    shares = split_by_hour(
        interval.start, interval.end, interval.energy_wh, interval.burning_s, interval.full_power_wh
    )
    for hour, energy, burning, full in shares:
        await _add(tx.session, light, hour, energy, burning, full)


async def _add(
    session: AsyncSession, light: LightRow, hour: datetime, energy: float, burning: float, full: float
) -> None:
    bucket = await session.get(EnergyHourRow, (light.light_id, hour))
    if bucket is None:
        session.add(
            EnergyHourRow(
                light_id=light.light_id,
                hour=hour,
                group_id=light.group_id,
                cabinet_id=light.cabinet_id,
                energy_wh=energy,
                burning_s=burning,
                full_power_wh=full,
            )
        )
        return
    bucket.energy_wh += energy
    bucket.burning_s += burning
    bucket.full_power_wh += full
    bucket.group_id = light.group_id
    bucket.cabinet_id = light.cabinet_id


# -- the report ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sums:
    energy_wh: float = 0.0
    full_power_wh: float = 0.0
    burning_s: float = 0.0

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.energy_wh + other.energy_wh,
            self.full_power_wh + other.full_power_wh,
            self.burning_s + other.burning_s,
        )


def period(start: datetime, end: datetime, sums: Sums) -> energy_pb2.EnergyPeriod:
    """An EnergyPeriod of these sums: kWh, savings = max(0, full - actual), ratio savings / full."""
    savings = max(0.0, sums.full_power_wh - sums.energy_wh)
    return energy_pb2.EnergyPeriod(
        start_time=stamp(start),
        end_time=stamp(end),
        energy_kwh=sums.energy_wh / 1000,
        full_power_kwh=sums.full_power_wh / 1000,
        savings_kwh=savings / 1000,
        savings_ratio=savings / sums.full_power_wh if sums.full_power_wh > 0 else 0.0,
        burning_hours=sums.burning_s / 3600,
    )


def periods(
    hours: Sequence[tuple[datetime, Sums]], interval: int, start: datetime, end: datetime
) -> list[energy_pb2.EnergyPeriod]:
    """The hours with data as hour or UTC-day periods (a day clipped to [start, end)); none for
    UNSPECIFIED."""
    if interval == energy_pb2.ENERGY_INTERVAL_HOUR:
        return [period(hour, hour + HOUR, sums) for hour, sums in hours]
    if interval != energy_pb2.ENERGY_INTERVAL_DAY:
        return []
    days: dict[datetime, Sums] = {}
    for hour, sums in hours:
        day = hour.replace(hour=0)
        days[day] = days.get(day, Sums()) + sums
    return [period(max(day, start), min(day + DAY, end), sums) for day, sums in sorted(days.items())]


def _time(value: timestamp_pb2.Timestamp, present: bool, field: str, problems: Violations) -> datetime | None:
    if not present:
        problems.append((field, "is required"))
        return None
    try:
        moment = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None or moment.year >= 9999:  # rounding up to the hour must stay representable
        problems.append((field, "is not a valid timestamp (before the year 9999)"))
        return None
    return moment


def validate(request: energy_pb2.GetEnergyReportRequest) -> tuple[str, str, datetime, datetime]:
    """(collection, id, start, end) of a valid request — start rounded down and end up to the hour — or
    INVALID_ARGUMENT naming every bad field."""
    problems: Violations = []
    collection, _, subject_id = request.subject.partition("/")
    if collection not in SUBJECTS or not RESOURCE_ID.match(subject_id):
        problems.append(
            ("subject", f"must look like lights/{{id}}, groups/{{id}} or cabinets/{{id}}, the id {ID_RULE}")
        )
    start = _time(request.start_time, request.HasField("start_time"), "start_time", problems)
    end = _time(request.end_time, request.HasField("end_time"), "end_time", problems)
    if start is not None and end is not None:
        if end <= start:
            problems.append(("end_time", "must be after start_time"))
        elif end - start > MAX_REPORT:
            problems.append(("end_time", f"must be at most {MAX_REPORT.days} days after start_time"))
    if request.interval not in INTERVALS:
        problems.append(("interval", "must be one of " + ", ".join(energy_pb2.EnergyInterval.keys())))
    if problems:
        raise InvalidArgument.many(problems)
    assert start is not None
    assert end is not None
    return collection, subject_id, floor_hour(start), ceil_hour(end)


_SUBJECT: Final[dict[str, tuple[str, Any, Any]]] = {
    "lights": ("light", LightRow, EnergyHourRow.light_id),
    "groups": ("group", GroupRow, EnergyHourRow.group_id),
    "cabinets": ("cabinet", CabinetRow, EnergyHourRow.cabinet_id),
}


class EnergyServicer(energy_pb2_grpc.EnergyServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def GetEnergyReport(
        self, request: energy_pb2.GetEnergyReportRequest, context: grpc.aio.ServicerContext
    ) -> energy_pb2.GetEnergyReportResponse:
        collection, subject_id, start, end = validate(request)
        kind, model, column = _SUBJECT[collection]
        async with self.db.read() as session:
            row = await session.get(model, subject_id)
            if row is None or not can_reach(row, current_call().principal):
                raise not_found(kind, request.subject)
            window = (column == subject_id, EnergyHourRow.hour >= start, EnergyHourRow.hour < end)
            result = await session.execute(
                select(
                    EnergyHourRow.hour,
                    func.sum(EnergyHourRow.energy_wh),
                    func.sum(EnergyHourRow.full_power_wh),
                    func.sum(EnergyHourRow.burning_s),
                )
                .where(*window)
                .group_by(EnergyHourRow.hour)
                .order_by(EnergyHourRow.hour)
            )
            hours = [
                (floor_hour(hour), Sums(float(energy or 0), float(full or 0), float(burning or 0)))
                for hour, energy, full, burning in result.all()
            ]
            lights = await session.scalar(select(func.count(distinct(EnergyHourRow.light_id))).where(*window))
        total = sum((sums for _, sums in hours), Sums())
        return energy_pb2.GetEnergyReportResponse(
            subject=request.subject,
            total=period(start, end, total),
            periods=periods(hours, request.interval, start, end),
            light_count=int(lights or 0),
        )


__all__ = ["EnergyServicer", "Interval", "measure", "meter", "split_by_hour"]
