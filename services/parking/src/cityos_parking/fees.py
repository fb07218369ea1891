"""Parking fees: what a stay at a site costs under its tariff.

A pure module (standard library only, no I/O, no gRPC): the service turns a `cityos.parking.v1.Tariff`
into a `Tariff` here and calls `quote()` when a session stops (and `is_open()` when one starts).
Field names follow the proto (`price_per_minute`, `free_minutes`, `daily_cap`, `maximum_stay`,
`permits`, `opening_hours`, `time_zone`) and map onto the Smart Data Models OffStreetParking /
OnStreetParking attributes `priceRatePerMinute`, `priceCurrency`, `maximumParkingDuration`,
`requiredPermit` + `permitActiveHours` and `openingHours`.

The rules
---------
* **Money** is `decimal.Decimal`, never float. Rates may carry more decimals than the currency
  (0.0125 CNY a minute); caps and flat fees may not. A tariff's `currency` is an active ISO 4217 code
  with a minor unit (`CNY` 2 decimals, `JPY` 0, `KWD` 3).
* **Time** is the site's IANA zone (`Asia/Shanghai` for Xiong'an). `start` and `end` must be aware;
  the length of a stay is real elapsed time (computed in UTC), so a 23-hour or 25-hour DST day is
  billed as 23 or 25 hours. Every wall-clock rule (windows, calendar days) is read on the site's clock.
* **Minutes.** A stay is cut into minutes from its start; a started minute is a whole minute
  (10:00:00-10:15:01 is 16 minutes). Each minute follows the rule in force at the instant it starts.
* **Free minutes**: the first `free_minutes` minutes of every stay are free, however long the stay
  (not a grace period that is lost when exceeded). 15 free minutes: a 15-minute stay costs 0,
  a 16-minute stay costs one minute.
* **Precedence** for a minute after the free ones: a permit whose hours cover it (the permit's
  rate, 0 = free), else the overnight window (see below), else `price_per_minute`.
* **Overnight** (`Overnight(start, end, flat_fee)`, every night, e.g. 20:00-08:00): minutes inside
  the window are not charged per minute; instead each night in which the stay has at least one such
  minute costs `flat_fee` once (0 makes the nights free). A night is the window occurrence that began
  on a given date; its flat fee is booked on the calendar day of its first charged minute.
* **Daily cap**: the most charged per *calendar day in the site's time zone* (not per rolling 24 h),
  covering everything booked on that day (per-minute charges, permit rates, overnight fees).
* **Rounding**: each day's (capped) amount is rounded half-up to the currency's minor unit, and the
  total is the sum of the days, so a receipt always adds up.
* **Maximum stay**: the fee does not change at the limit. Minutes beyond `maximum_stay` are charged
  like any other minute (caps still apply) and reported as `Fee.overstay_minutes`, from which the
  service emits its `overstay` event; penalties belong to enforcement, not to the tariff.
* **Opening hours** (weekday -> intervals; empty = always open): `quote()` *flags*, it never refuses.
  Minutes while the site is closed are charged under the same rules and counted in
  `Fee.closed_minutes` (and marked on each `Period`). Refusing belongs to the moment a session
  starts: the service calls `is_open(tariff, at)` and refuses a start while the site is closed.
* **Windows** (`Window(start, end, weekdays)`, as the proto's `WeeklyWindow`): ISO weekdays 1 (Monday)
  to 7 (Sunday), empty = every day; `end` not after `start` runs past midnight into the next day, and
  the weekday is that of the day the window *starts* (Fri 18:00-08:00 covers Saturday 07:00).
  Windows are wall-clock: on a fall-back night a window edge such as 01:30 is passed twice.
* **Permits**: `quote(..., permit="resident")` names one of the tariff's `PermitClass`es; its
  `hours` (empty = always) say when it applies, its `price_per_minute` what holders pay then.

Errors: `quote()` raises `TariffError(field, message)` (a ValueError) for bad arguments
(`start`, `end`, `permit`) and for the first problem of an invalid tariff (`tariff.<field>`);
`tariff_problems()` lists every problem of a tariff as `(field, description)` so the gRPC layer can
return them all as field violations.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DayCharge",
    "Fee",
    "Overnight",
    "Period",
    "PeriodKind",
    "PermitClass",
    "Tariff",
    "TariffError",
    "Window",
    "is_open",
    "minor_unit",
    "quote",
    "tariff_problems",
]

MINUTE = timedelta(minutes=1)
# The longest stay quote() prices (an abandoned car is a case for enforcement, not a receipt).
MAX_QUOTED_STAY = timedelta(days=400)
MAX_FREE_MINUTES = 24 * 60
PERMIT_NAME = re.compile(r"[a-z][a-z0-9-]{1,62}")
_MICROSECOND = timedelta(microseconds=1)

# Active ISO 4217 currencies and their minor units (decimals). Funds and precious metals without a
# minor unit (gold, special drawing rights, the "no currency" code) are not money a car park takes.
_DECIMALS_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_DECIMALS_3 = "BHD IQD JOD KWD LYD OMR TND"
_DECIMALS_4 = "CLF UYW"
_DECIMALS_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS "
    "GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL "
    "MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK "
    "PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
CURRENCY_DECIMALS: dict[str, int] = {
    code: decimals
    for codes, decimals in ((_DECIMALS_0, 0), (_DECIMALS_2, 2), (_DECIMALS_3, 3), (_DECIMALS_4, 4))
    for code in codes.split()
}


class TariffError(ValueError):
    """A bad tariff or quote argument; `field` names it (e.g. `end`, `tariff.daily_cap`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def minor_unit(currency: str) -> int:
    """The decimals of an ISO 4217 currency (CNY 2, JPY 0, KWD 3)."""
    try:
        return CURRENCY_DECIMALS[currency]
    except KeyError:
        raise TariffError("currency", f"{currency!r} is not an ISO 4217 currency code") from None


@dataclass(frozen=True)
class Window:
    """A weekly interval on the site's wall clock: `start` to `end` on the given ISO weekdays."""

    start: time
    end: time
    # ISO weekdays on which the window starts, 1 (Monday) to 7 (Sunday); empty means every day.
    weekdays: tuple[int, ...] = ()

    @property
    def wraps(self) -> bool:
        """Whether it runs past midnight (an end not after the start)."""
        return self.end <= self.start

    def _on(self, weekday: int) -> bool:
        return not self.weekdays or weekday in self.weekdays

    def contains(self, local: datetime) -> bool:
        """Whether a wall-clock moment (in the site's zone) lies inside the window."""
        clock, weekday = local.time(), local.isoweekday()
        if not self.wraps:
            return self._on(weekday) and self.start <= clock < self.end
        yesterday = (weekday - 2) % 7 + 1
        return (self._on(weekday) and clock >= self.start) or (self._on(yesterday) and clock < self.end)


@dataclass(frozen=True)
class PermitClass:
    """A class of permit (residents, deliveries, disabled badge) and when and what its holders pay."""

    name: str
    # When it applies; empty means always.
    hours: tuple[Window, ...] = ()
    # What holders pay per minute while it applies; 0 means they park free.
    price_per_minute: Decimal = Decimal(0)

    def covers(self, local: datetime) -> bool:
        return not self.hours or any(window.contains(local) for window in self.hours)


@dataclass(frozen=True)
class Overnight:
    """Every night from `start` to `end` (e.g. 20:00-08:00): a flat fee per night instead of minutes."""

    start: time
    end: time
    # Charged once per night the stay has a chargeable minute in; 0 makes nights free.
    flat_fee: Decimal = Decimal(0)

    @property
    def window(self) -> Window:
        return Window(self.start, self.end)

    def night_of(self, local: datetime) -> date:
        """The date on which the night containing `local` began."""
        if self.window.wraps and local.time() < self.end:
            return local.date() - timedelta(days=1)
        return local.date()


@dataclass(frozen=True)
class Tariff:
    """What parking at a site costs and when it is open (see the module docstring for the rules)."""

    price_per_minute: Decimal
    currency: str
    time_zone: str
    free_minutes: int = 0
    daily_cap: Decimal | None = None
    maximum_stay: timedelta | None = None
    overnight: Overnight | None = None
    permits: tuple[PermitClass, ...] = ()
    # When the site is open; empty means always.
    opening_hours: tuple[Window, ...] = ()

    def permit(self, name: str) -> PermitClass | None:
        return next((permit for permit in self.permits if permit.name == name), None)


class PeriodKind(enum.StrEnum):
    """Which rule priced a stretch of a stay."""

    FREE = "free"  # the free minutes at the start
    STANDARD = "standard"  # price_per_minute
    PERMIT = "permit"  # the permit's rate
    OVERNIGHT = "overnight"  # inside the overnight window (flat fee per night)


@dataclass(frozen=True)
class Period:
    """A stretch of a stay under one rule, within one calendar day: one line of a receipt."""

    start: datetime  # in the site's zone
    end: datetime
    kind: PeriodKind
    minutes: int
    price_per_minute: Decimal
    # minutes x price_per_minute, plus the night's flat fee on the first overnight period of a night;
    # exact (not rounded, before the daily cap).
    amount: Decimal
    # False when the site was closed (outside its opening hours) during this period.
    open: bool


@dataclass(frozen=True)
class DayCharge:
    """What one calendar day (site time zone) of a stay costs."""

    day: date
    periods: tuple[Period, ...]
    subtotal: Decimal  # exact sum of the periods, before the cap
    amount: Decimal  # after the cap, rounded half-up to the currency's minor unit
    capped: bool

    @property
    def minutes(self) -> int:
        return sum(period.minutes for period in self.periods)


@dataclass(frozen=True)
class Fee:
    """The price of a stay, with the receipt's lines and what the service must report."""

    amount: Decimal  # the sum of the days' amounts, in the currency's minor unit
    currency: str
    minutes: int  # the stay in started minutes
    free_minutes: int  # of those, free at the start
    billable_minutes: int  # minutes - free_minutes: the minutes the tariff's rules priced
    overstay_minutes: int  # started minutes beyond maximum_stay (0 without one)
    closed_minutes: int  # minutes while the site was closed
    days: tuple[DayCharge, ...]

    @property
    def overstay(self) -> bool:
        return self.overstay_minutes > 0

    @property
    def outside_opening_hours(self) -> bool:
        return self.closed_minutes > 0


# --- validation --------------------------------------------------------------------------------------


def _money(value: object, field: str, problems: list[tuple[str, str]], decimals: int | None = None) -> None:
    if not isinstance(value, Decimal):
        problems.append((field, "must be a decimal.Decimal (money is never a float)"))
    elif not value.is_finite() or value < 0:
        problems.append((field, "must be a finite amount of at least 0"))
    elif decimals is not None and value != value.quantize(Decimal(1).scaleb(-decimals)):
        problems.append((field, f"has more than {decimals} decimals, the currency's minor unit"))


def _clock(value: object, field: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(value, time) or value.tzinfo is not None or value.second or value.microsecond:
        problems.append((field, "must be a wall-clock time in whole minutes (datetime.time, no zone)"))


def _windows(windows: object, field: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(windows, tuple):
        problems.append((field, "must be a tuple of Window"))
        return
    for index, window in enumerate(windows):
        where = f"{field}[{index}]"
        if not isinstance(window, Window):
            problems.append((where, "must be a Window"))
            continue
        _clock(window.start, f"{where}.start", problems)
        _clock(window.end, f"{where}.end", problems)
        if not isinstance(window.weekdays, tuple):
            problems.append((f"{where}.weekdays", "must be a tuple of ISO weekdays"))
            continue
        for day_index, day in enumerate(window.weekdays):
            if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 7:
                problems.append((f"{where}.weekdays[{day_index}]", "ISO weekdays: 1 (Monday) to 7 (Sunday)"))
            elif day in window.weekdays[:day_index]:
                problems.append((f"{where}.weekdays[{day_index}]", f"weekday {day} is listed twice"))


def tariff_problems(tariff: Tariff) -> list[tuple[str, str]]:
    """Every problem of a tariff as (field, description); empty when the tariff is valid."""
    problems: list[tuple[str, str]] = []
    decimals: int | None = None
    if not isinstance(tariff.currency, str) or tariff.currency not in CURRENCY_DECIMALS:
        problems.append(("currency", "an active ISO 4217 code with a minor unit, e.g. CNY"))
    else:
        decimals = CURRENCY_DECIMALS[tariff.currency]
    _money(tariff.price_per_minute, "price_per_minute", problems)
    try:
        if not isinstance(tariff.time_zone, str):
            raise ValueError(tariff.time_zone)
        ZoneInfo(tariff.time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.append(("time_zone", "an IANA time zone, e.g. Asia/Shanghai"))
    free = tariff.free_minutes
    if isinstance(free, bool) or not isinstance(free, int) or not 0 <= free <= MAX_FREE_MINUTES:
        problems.append(("free_minutes", f"a whole number of minutes from 0 to {MAX_FREE_MINUTES}"))
    if tariff.daily_cap is not None:
        _money(tariff.daily_cap, "daily_cap", problems, decimals)
    stay = tariff.maximum_stay
    if stay is not None and (not isinstance(stay, timedelta) or stay < MINUTE or stay % MINUTE):
        problems.append(("maximum_stay", "a positive whole number of minutes (or None for no limit)"))
    if tariff.overnight is not None:
        night = tariff.overnight
        _clock(night.start, "overnight.start", problems)
        _clock(night.end, "overnight.end", problems)
        if night.start == night.end:
            problems.append(("overnight.end", "must differ from the start (a night is not a whole day)"))
        _money(night.flat_fee, "overnight.flat_fee", problems, decimals)
    if not isinstance(tariff.permits, tuple):
        problems.append(("permits", "must be a tuple of PermitClass"))
    else:
        names: set[str] = set()
        for index, permit in enumerate(tariff.permits):
            where = f"permits[{index}]"
            if not isinstance(permit, PermitClass):
                problems.append((where, "must be a PermitClass"))
                continue
            if not isinstance(permit.name, str) or not PERMIT_NAME.fullmatch(permit.name):
                problems.append((f"{where}.name", "must match [a-z][a-z0-9-]{1,62}"))
            elif permit.name in names:
                problems.append((f"{where}.name", f"{permit.name!r} is listed twice"))
            else:
                names.add(permit.name)
            _windows(permit.hours, f"{where}.hours", problems)
            _money(permit.price_per_minute, f"{where}.price_per_minute", problems)
    _windows(tariff.opening_hours, "opening_hours", problems)
    return problems


def _check(tariff: Tariff) -> None:
    problems = tariff_problems(tariff)
    if problems:
        field, message = problems[0]
        raise TariffError(f"tariff.{field}", message)


def _aware(value: object, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise TariffError(field, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise TariffError(field, "must be timezone-aware (a naive datetime has no instant)")
    return value


# --- quoting -----------------------------------------------------------------------------------------


def is_open(tariff: Tariff, at: datetime) -> bool:
    """Whether the site is open at an instant (the service refuses to start a session otherwise)."""
    _check(tariff)
    local = _aware(at, "at").astimezone(ZoneInfo(tariff.time_zone))
    return not tariff.opening_hours or any(window.contains(local) for window in tariff.opening_hours)


def _ceil_minutes(span: timedelta) -> int:
    whole, rest = divmod(span, MINUTE)
    return int(whole) + (1 if rest else 0)


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant (to the microsecond) at which the zone's offset becomes that of `after`."""
    target = _offset(zone, after)
    low, high = before, after
    while high - low > _MICROSECOND:
        middle = low + (high - low) // 2
        if _offset(zone, middle) == target:
            high = middle
        else:
            low = middle
    return high


def _change_points(
    tariff: Tariff, permit: PermitClass | None, zone: ZoneInfo, t0: datetime, t1: datetime
) -> list[datetime]:
    """Every instant in (t0, t1) at which the rule for a minute can change: local midnights, window edges
    (both readings of an ambiguous wall time) and the zone's offset transitions."""
    edges = {time(0)}
    windows = list(tariff.opening_hours) + (list(permit.hours) if permit else [])
    if tariff.overnight is not None:
        windows.append(tariff.overnight.window)
    for window in windows:
        edges.update((window.start, window.end))
    instants: set[datetime] = set()
    day, last = t0.astimezone(zone).date() - timedelta(days=1), t1.astimezone(zone).date() + timedelta(days=1)
    while day <= last:
        for edge in edges:
            for fold in (0, 1):
                at = datetime.combine(day, edge, tzinfo=zone).replace(fold=fold).astimezone(UTC)
                if t0 < at < t1:
                    instants.add(at)
        day += timedelta(days=1)
    # Points are at most a day apart (every local midnight is one), and no zone changes its offset
    # twice in a day, so one bisection per changed pair finds every transition.
    points = sorted(instants | {t0, t1})
    for before, after in pairwise(points):
        if _offset(zone, before) != _offset(zone, after):
            instants.add(_transition(zone, before, after))
    return sorted(instants)


@dataclass(frozen=True)
class _Rule:
    day: date
    kind: PeriodKind
    price: Decimal
    open: bool
    night: date | None


def _rule(tariff: Tariff, permit: PermitClass | None, local: datetime, free: bool) -> _Rule:
    opened = not tariff.opening_hours or any(window.contains(local) for window in tariff.opening_hours)
    if free:
        return _Rule(local.date(), PeriodKind.FREE, Decimal(0), opened, None)
    if permit is not None and permit.covers(local):
        return _Rule(local.date(), PeriodKind.PERMIT, permit.price_per_minute, opened, None)
    night = tariff.overnight
    if night is not None and night.window.contains(local):
        return _Rule(local.date(), PeriodKind.OVERNIGHT, Decimal(0), opened, night.night_of(local))
    return _Rule(local.date(), PeriodKind.STANDARD, tariff.price_per_minute, opened, None)


def _stretches(
    tariff: Tariff, permit: PermitClass | None, zone: ZoneInfo, t0: datetime, t1: datetime, minutes: int
) -> Iterator[tuple[int, int, _Rule]]:
    """(first minute, end minute, rule) for maximal runs of minutes under one rule."""
    end_of_minutes = t0 + minutes * MINUTE
    cuts = {0, minutes, min(tariff.free_minutes, minutes)}
    cuts.update(_ceil_minutes(at - t0) for at in _change_points(tariff, permit, zone, t0, end_of_minutes))
    current: tuple[int, int, _Rule] | None = None
    for first, end in pairwise(sorted(cuts)):
        local = (t0 + first * MINUTE).astimezone(zone)
        rule = _rule(tariff, permit, local, first < tariff.free_minutes)
        if current is not None and current[2] == rule:
            current = (current[0], end, rule)
            continue
        if current is not None:
            yield current
        current = (first, end, rule)
    if current is not None:
        yield current


def quote(tariff: Tariff, start: datetime, end: datetime, *, permit: str | None = None) -> Fee:
    """The fee for a stay from `start` to `end` (aware datetimes), optionally under a permit class."""
    _check(tariff)
    start, end = _aware(start, "start"), _aware(end, "end")
    if end < start:
        raise TariffError("end", "must not be before start")
    if end - start > MAX_QUOTED_STAY:
        raise TariffError("end", f"a stay longer than {MAX_QUOTED_STAY.days} days is not quoted")
    permit_class = None
    if permit is not None:
        permit_class = tariff.permit(permit)
        if permit_class is None:
            raise TariffError("permit", f"{permit!r} is not a permit class of this tariff")
    zone = ZoneInfo(tariff.time_zone)
    quantum = Decimal(1).scaleb(-CURRENCY_DECIMALS[tariff.currency])
    t0, t1 = start.astimezone(UTC), end.astimezone(UTC)
    minutes = _ceil_minutes(t1 - t0)

    by_day: dict[date, list[Period]] = {}
    nights: set[date] = set()
    closed = 0
    for first, last, rule in _stretches(tariff, permit_class, zone, t0, t1, minutes):
        count = last - first
        amount = rule.price * count
        if rule.night is not None and rule.night not in nights:
            nights.add(rule.night)
            amount += tariff.overnight.flat_fee if tariff.overnight is not None else Decimal(0)
        if not rule.open:
            closed += count
        period = Period(
            start=(t0 + first * MINUTE).astimezone(zone),
            end=min(t0 + last * MINUTE, t1).astimezone(zone),
            kind=rule.kind,
            minutes=count,
            price_per_minute=rule.price,
            amount=amount,
            open=rule.open,
        )
        by_day.setdefault(rule.day, []).append(period)

    days = []
    for day, periods in by_day.items():
        subtotal = sum((period.amount for period in periods), Decimal(0))
        cap = tariff.daily_cap
        capped = cap is not None and subtotal > cap
        charged = min(subtotal, cap) if cap is not None else subtotal
        days.append(
            DayCharge(
                day=day,
                periods=tuple(periods),
                subtotal=subtotal,
                amount=charged.quantize(quantum, rounding=ROUND_HALF_UP),
                capped=capped,
            )
        )
    free = min(tariff.free_minutes, minutes)
    overstay = 0
    if tariff.maximum_stay is not None:
        overstay = max(0, minutes - tariff.maximum_stay // MINUTE)
    return Fee(
        amount=sum((day.amount for day in days), Decimal(0)).quantize(quantum),
        currency=tariff.currency,
        minutes=minutes,
        free_minutes=free,
        billable_minutes=minutes - free,
        overstay_minutes=overstay,
        closed_minutes=closed,
        days=tuple(days),
    )
