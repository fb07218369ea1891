"""Validation of a site's tariff as the API carries it (field by field, so every problem is named)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cityos.parking.v1 import parking_pb2

CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
PERMIT_NAME = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
MAX_PRICE = Decimal("1000")
MAX_WINDOWS = 28


def _decimal(value: str, field: str, problems: list[tuple[str, str]], *, optional: bool = False) -> None:
    if not value:
        if not optional:
            problems.append((field, "is required (a decimal, e.g. 0.05)"))
        return
    try:
        amount = Decimal(value)
    except InvalidOperation:
        problems.append((field, f"{value!r} is not a decimal number"))
        return
    if not amount.is_finite() or amount < 0 or amount > MAX_PRICE:
        problems.append((field, f"must be from 0 to {MAX_PRICE}"))


def _windows(windows: list[parking_pb2.WeeklyWindow], field: str, problems: list[tuple[str, str]]) -> None:
    if len(windows) > MAX_WINDOWS:
        problems.append((field, f"at most {MAX_WINDOWS} windows"))
    for index, window in enumerate(windows):
        where = f"{field}[{index}]"
        for day_index, day in enumerate(window.weekdays):
            if not 1 <= day <= 7:
                problems.append((f"{where}.weekdays[{day_index}]", "ISO weekdays: 1 (Monday) to 7 (Sunday)"))
        for name in ("start", "end"):
            if not CLOCK.match(getattr(window, name)):
                problems.append((f"{where}.{name}", "must be HH:MM (24 h)"))


def tariff_problems(tariff: parking_pb2.Tariff, field: str = "site.tariff") -> list[tuple[str, str]]:
    """Every problem of a tariff, as (field, description)."""
    problems: list[tuple[str, str]] = []
    _decimal(tariff.price_per_minute, f"{field}.price_per_minute", problems)
    if not CURRENCY.match(tariff.currency):
        problems.append((f"{field}.currency", "an ISO 4217 code, e.g. CNY"))
    if not 0 <= tariff.free_minutes <= 24 * 60:
        problems.append((f"{field}.free_minutes", "from 0 to 1440"))
    _decimal(tariff.daily_cap, f"{field}.daily_cap", problems, optional=True)
    if tariff.HasField("maximum_stay"):
        seconds = tariff.maximum_stay.ToTimedelta().total_seconds()
        if not 60 <= seconds <= 30 * 24 * 3600:
            problems.append((f"{field}.maximum_stay", "from 1 minute to 30 days"))
    names = set()
    for index, permit in enumerate(tariff.permits):
        where = f"{field}.permits[{index}]"
        if not PERMIT_NAME.match(permit.name):
            problems.append((f"{where}.name", "must be [a-z][a-z0-9-]{1,62}"))
        elif permit.name in names:
            problems.append((f"{where}.name", f"{permit.name!r} is listed twice"))
        names.add(permit.name)
        _windows(list(permit.hours), f"{where}.hours", problems)
        _decimal(permit.price_per_minute, f"{where}.price_per_minute", problems, optional=True)
    _windows(list(tariff.opening_hours), f"{field}.opening_hours", problems)
    if tariff.time_zone not in _zones():
        problems.append((f"{field}.time_zone", "an IANA time zone, e.g. Asia/Shanghai"))
    else:
        try:
            ZoneInfo(tariff.time_zone)
        except ZoneInfoNotFoundError:
            problems.append((f"{field}.time_zone", "an IANA time zone, e.g. Asia/Shanghai"))
    return problems


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return _ZONES
