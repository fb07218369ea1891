"""PRK-5: parking fees as a table of cases, every expected amount worked out by hand beside it.

Dates: 2024-05-06 is a Monday (MON) ... 2024-05-12 a Sunday (SUN), in Asia/Shanghai (no DST) unless a
case says otherwise. The base tariff is 0.05 CNY a minute (3 CNY an hour) with 15 free minutes.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import duration_pb2

from cityos.parking.v1 import parking_pb2
from cityos_parking import tariffs
from cityos_parking.fees import (
    Fee,
    Overnight,
    PeriodKind,
    PermitClass,
    Tariff,
    TariffError,
    Window,
    is_open,
    quote,
    tariff_problems,
)

D = Decimal
SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
MON, TUE, WED, FRI, SAT, SUN = (date(2024, 5, day) for day in (6, 7, 8, 10, 11, 12))
WEEKDAYS = (1, 2, 3, 4, 5)


def at(day: date, clock: str, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime.combine(day, time.fromisoformat(clock), tzinfo=zone)


def ny(day: str, clock: str) -> datetime:
    return at(date.fromisoformat(day), clock, NEW_YORK)


BASE = Tariff(price_per_minute=D("0.05"), currency="CNY", time_zone="Asia/Shanghai", free_minutes=15)
CAPPED = replace(BASE, daily_cap=D("30.00"))
NIGHT_FLAT = replace(BASE, overnight=Overnight(time(20), time(8), flat_fee=D("5.00")))
NIGHT_FREE = replace(BASE, overnight=Overnight(time(20), time(8)))
TWO_HOURS = replace(BASE, maximum_stay=timedelta(hours=2))
RESIDENT = PermitClass("resident", hours=(Window(time(18), time(8), WEEKDAYS),))  # Mon-Fri 18:00-08:00, free
DELIVERY = PermitClass("delivery", hours=(Window(time(9), time(11)),), price_per_minute=D("0.01"))
PERMITS = replace(BASE, permits=(RESIDENT, DELIVERY))
OPEN_HOURS = replace(BASE, opening_hours=(Window(time(7), time(22), (1, 2, 3, 4, 5, 6)),))  # Mon-Sat
FINE = replace(BASE, price_per_minute=D("0.0125"), free_minutes=0)
NY_CENT = Tariff(price_per_minute=D("0.01"), currency="USD", time_zone="America/New_York")

# id, tariff, start, end, permit, amount, amount per calendar day, overstay minutes, closed minutes
CASES = [
    # --- free minutes -------------------------------------------------------------------------------
    # 0 minutes: nothing at all, not even a day line.
    pytest.param(BASE, at(MON, "10:00"), at(MON, "10:00"), None, "0.00", (), 0, 0, id="free-zero-length"),
    # 10 minutes, all inside the 15 free ones.
    pytest.param(BASE, at(MON, "10:00"), at(MON, "10:10"), None, "0.00", ("0.00",), 0, 0, id="free-under"),
    # 15 minutes = exactly the free minutes.
    pytest.param(
        BASE, at(MON, "10:00"), at(MON, "10:15"), None, "0.00", ("0.00",), 0, 0, id="free-at-boundary"
    ),
    # 16 minutes: 16 - 15 = 1 minute x 0.05 = 0.05.
    pytest.param(
        BASE, at(MON, "10:00"), at(MON, "10:16"), None, "0.05", ("0.05",), 0, 0, id="free-one-minute-over"
    ),
    # 15 min 1 s is 16 started minutes: 1 x 0.05 = 0.05.
    pytest.param(
        BASE, at(MON, "10:00"), at(MON, "10:15:01"), None, "0.05", ("0.05",), 0, 0, id="free-one-second-over"
    ),
    # 120 - 15 = 105 minutes x 0.05 = 5.25.
    pytest.param(BASE, at(MON, "10:00"), at(MON, "12:00"), None, "5.25", ("5.25",), 0, 0, id="two-hours"),
    # --- daily cap 30.00 per calendar day -----------------------------------------------------------
    # 480 - 15 = 465 x 0.05 = 23.25, under the cap.
    pytest.param(
        CAPPED, at(MON, "08:00"), at(MON, "16:00"), None, "23.25", ("23.25",), 0, 0, id="cap-one-day-under"
    ),
    # 720 - 15 = 705 x 0.05 = 35.25 -> capped at 30.00.
    pytest.param(
        CAPPED, at(MON, "08:00"), at(MON, "20:00"), None, "30.00", ("30.00",), 0, 0, id="cap-one-day-hit"
    ),
    # Mon 20:00-24:00: 240 - 15 = 225 x 0.05 = 11.25; Tue 00:00-12:00: 720 x 0.05 = 36.00 -> 30.00.
    # 11.25 + 30.00 = 41.25.
    pytest.param(
        CAPPED, at(MON, "20:00"), at(TUE, "12:00"), None, "41.25", ("11.25", "30.00"), 0, 0, id="cap-two-days"
    ),
    # Mon 12:00-24:00: 705 x 0.05 = 35.25 -> 30; Tue: 1440 x 0.05 = 72 -> 30; Wed 00:00-12:00: 720 x 0.05
    # = 36 -> 30. 3 x 30.00 = 90.00.
    pytest.param(
        CAPPED,
        at(MON, "12:00"),
        at(WED, "12:00"),
        None,
        "90.00",
        ("30.00", "30.00", "30.00"),
        0,
        0,
        id="cap-three-days",
    ),
    # 12 h across midnight. Mon 18:00-24:00: 360 - 15 = 345 x 0.05 = 17.25; Tue 00:00-06:00: 360 x 0.05
    # = 18.00. 35.25: the cap is per calendar day (a rolling-24 h cap would charge 30.00).
    pytest.param(
        CAPPED,
        at(MON, "18:00"),
        at(TUE, "06:00"),
        None,
        "35.25",
        ("17.25", "18.00"),
        0,
        0,
        id="cap-is-per-calendar-day",
    ),
    # --- overnight 20:00-08:00 ----------------------------------------------------------------------
    # Mon 18:00-20:00: 120 - 15 = 105 x 0.05 = 5.25, plus the night's flat 5.00 (booked Mon) = 10.25;
    # Tue 08:00-10:00: 120 x 0.05 = 6.00. 10.25 + 6.00 = 16.25.
    pytest.param(
        NIGHT_FLAT,
        at(MON, "18:00"),
        at(TUE, "10:00"),
        None,
        "16.25",
        ("10.25", "6.00"),
        0,
        0,
        id="overnight-flat-crossing",
    ),
    # Same stay, free nights: 5.25 + 0 + 6.00 = 11.25.
    pytest.param(
        NIGHT_FREE,
        at(MON, "18:00"),
        at(TUE, "10:00"),
        None,
        "11.25",
        ("5.25", "6.00"),
        0,
        0,
        id="overnight-free-crossing",
    ),
    # Mon 19:00-20:00: 60 - 15 = 45 x 0.05 = 2.25 + night 5.00 = 7.25; Tue 08:00-20:00: 720 x 0.05 = 36.00
    # + night 5.00 = 41.00; Wed 08:00-09:00: 60 x 0.05 = 3.00. 7.25 + 41.00 + 3.00 = 51.25.
    pytest.param(
        NIGHT_FLAT,
        at(MON, "19:00"),
        at(WED, "09:00"),
        None,
        "51.25",
        ("7.25", "41.00", "3.00"),
        0,
        0,
        id="overnight-two-nights",
    ),
    # Starts inside Monday's night: 02:00-02:15 free, 02:15-08:00 flat 5.00, 08:00-09:00: 60 x 0.05
    # = 3.00. 8.00.
    pytest.param(
        NIGHT_FLAT,
        at(TUE, "02:00"),
        at(TUE, "09:00"),
        None,
        "8.00",
        ("8.00",),
        0,
        0,
        id="overnight-starts-inside-window",
    ),
    # 07:50-08:05 free (covers all 10 night minutes, so no flat fee); 08:05-08:30: 25 x 0.05 = 1.25.
    pytest.param(
        NIGHT_FLAT,
        at(MON, "07:50"),
        at(MON, "08:30"),
        None,
        "1.25",
        ("1.25",),
        0,
        0,
        id="overnight-hidden-by-free-minutes",
    ),
    # --- maximum stay 2 h ---------------------------------------------------------------------------
    # 119 - 15 = 104 x 0.05 = 5.20, no overstay.
    pytest.param(
        TWO_HOURS, at(MON, "10:00"), at(MON, "11:59"), None, "5.20", ("5.20",), 0, 0, id="max-stay-under"
    ),
    # 120 - 15 = 105 x 0.05 = 5.25, exactly the limit: no overstay.
    pytest.param(
        TWO_HOURS, at(MON, "10:00"), at(MON, "12:00"), None, "5.25", ("5.25",), 0, 0, id="max-stay-at"
    ),
    # 150 - 15 = 135 x 0.05 = 6.75 (overstay charged like any minute); 150 - 120 = 30 overstay minutes.
    pytest.param(
        TWO_HOURS, at(MON, "10:00"), at(MON, "12:30"), None, "6.75", ("6.75",), 30, 0, id="max-stay-over"
    ),
    # 2 h 20 s is 121 started minutes: 106 x 0.05 = 5.30; 1 overstay minute.
    pytest.param(
        TWO_HOURS,
        at(MON, "10:00"),
        at(MON, "12:00:20"),
        None,
        "5.30",
        ("5.30",),
        1,
        0,
        id="max-stay-over-by-seconds",
    ),
    # --- permits ------------------------------------------------------------------------------------
    # Resident (Mon-Fri 18:00-08:00, free): 19:00-19:15 free minutes, then the permit. 0.00.
    pytest.param(
        PERMITS,
        at(MON, "19:00"),
        at(MON, "22:00"),
        "resident",
        "0.00",
        ("0.00",),
        0,
        0,
        id="permit-inside-hours",
    ),
    # The same stay without the permit: 180 - 15 = 165 x 0.05 = 8.25.
    pytest.param(
        PERMITS, at(MON, "19:00"), at(MON, "22:00"), None, "8.25", ("8.25",), 0, 0, id="permit-not-presented"
    ),
    # Resident at 10:00-12:00 is outside its hours: 105 x 0.05 = 5.25.
    pytest.param(
        PERMITS,
        at(MON, "10:00"),
        at(MON, "12:00"),
        "resident",
        "5.25",
        ("5.25",),
        0,
        0,
        id="permit-outside-hours",
    ),
    # 17:00-17:15 free; 17:15-18:00: 45 x 0.05 = 2.25; 18:00-19:00 under the permit. 2.25.
    pytest.param(
        PERMITS,
        at(MON, "17:00"),
        at(MON, "19:00"),
        "resident",
        "2.25",
        ("2.25",),
        0,
        0,
        id="permit-partly-inside",
    ),
    # Friday's window runs to Sat 08:00 (the weekday is the start's): Fri 22:00-Sat 08:00 free;
    # Sat 08:00-10:00: 120 x 0.05 = 6.00.
    pytest.param(
        PERMITS,
        at(FRI, "22:00"),
        at(SAT, "10:00"),
        "resident",
        "6.00",
        ("0.00", "6.00"),
        0,
        0,
        id="permit-window-runs-into-saturday",
    ),
    # Saturday evening is not a resident window: 120 - 15 = 105 x 0.05 = 5.25.
    pytest.param(
        PERMITS,
        at(SAT, "19:00"),
        at(SAT, "21:00"),
        "resident",
        "5.25",
        ("5.25",),
        0,
        0,
        id="permit-weekday-not-covered",
    ),
    # Delivery (09:00-11:00 at 0.01): 09:00-09:15 free; 09:15-11:00: 105 x 0.01 = 1.05;
    # 11:00-12:00: 60 x 0.05 = 3.00. 4.05.
    pytest.param(
        PERMITS, at(WED, "09:00"), at(WED, "12:00"), "delivery", "4.05", ("4.05",), 0, 0, id="permit-rate"
    ),
    # A permit wins over the overnight flat fee: 19:00-19:15 free, 19:15-Tue 07:00 resident. 0.00.
    pytest.param(
        replace(NIGHT_FLAT, permits=(RESIDENT,)),
        at(MON, "19:00"),
        at(TUE, "07:00"),
        "resident",
        "0.00",
        ("0.00", "0.00"),
        0,
        0,
        id="permit-before-overnight",
    ),
    # --- opening hours Mon-Sat 07:00-22:00 (flagged, charged as usual) -------------------------------
    # 105 x 0.05 = 5.25, all open.
    pytest.param(
        OPEN_HOURS, at(MON, "10:00"), at(MON, "12:00"), None, "5.25", ("5.25",), 0, 0, id="open-inside"
    ),
    # 105 x 0.05 = 5.25; 22:00-23:00 = 60 closed minutes.
    pytest.param(
        OPEN_HOURS,
        at(MON, "21:00"),
        at(MON, "23:00"),
        None,
        "5.25",
        ("5.25",),
        0,
        60,
        id="open-runs-past-closing",
    ),
    # 06:00-07:00 closed (60); 120 - 15 = 105 x 0.05 = 5.25.
    pytest.param(
        OPEN_HOURS,
        at(MON, "06:00"),
        at(MON, "08:00"),
        None,
        "5.25",
        ("5.25",),
        0,
        60,
        id="open-starts-before-opening",
    ),
    # Sunday is closed all day: 60 closed minutes; 60 - 15 = 45 x 0.05 = 2.25.
    pytest.param(
        OPEN_HOURS,
        at(SUN, "10:00"),
        at(SUN, "11:00"),
        None,
        "2.25",
        ("2.25",),
        0,
        60,
        id="open-sunday-closed",
    ),
    # --- rounding (half-up to the minor unit, per day) ----------------------------------------------
    # 2 x 0.0125 = 0.025 -> 0.03 (half-even would give 0.02).
    pytest.param(FINE, at(MON, "10:00"), at(MON, "10:02"), None, "0.03", ("0.03",), 0, 0, id="round-half-up"),
    # 1 x 0.0125 = 0.0125 -> 0.01.
    pytest.param(FINE, at(MON, "10:00"), at(MON, "10:01"), None, "0.01", ("0.01",), 0, 0, id="round-down"),
    # One minute each side of midnight: 0.0125 -> 0.01 per day, 0.02 in all (rounding the 0.025 total
    # would give 0.03; the receipt's lines must add up).
    pytest.param(
        FINE, at(MON, "23:59"), at(TUE, "00:01"), None, "0.02", ("0.01", "0.01"), 0, 0, id="round-per-day"
    ),
    # JPY has no minor unit: 3 x 2.5 = 7.5 -> 8.
    pytest.param(
        replace(FINE, currency="JPY", price_per_minute=D("2.5")),
        at(MON, "10:00"),
        at(MON, "10:03"),
        None,
        "8",
        ("8",),
        0,
        0,
        id="round-jpy-no-decimals",
    ),
    # KWD has three decimals: 3 x 0.0125 = 0.0375 -> 0.038.
    pytest.param(
        replace(FINE, currency="KWD"),
        at(MON, "10:00"),
        at(MON, "10:03"),
        None,
        "0.038",
        ("0.038",),
        0,
        0,
        id="round-kwd-three-decimals",
    ),
    # --- a DST zone (America/New_York: 2024-03-10 02:00 -> 03:00, 2024-11-03 02:00 -> 01:00) ---------
    # 00:00 EST - 06:00 EDT is 5 real hours: 300 x 0.01 = 3.00 (the wall clock says 6 h).
    pytest.param(
        NY_CENT,
        ny("2024-03-10", "00:00"),
        ny("2024-03-10", "06:00"),
        None,
        "3.00",
        ("3.00",),
        0,
        0,
        id="dst-spring-forward",
    ),
    # 00:00 EDT - 06:00 EST is 7 real hours: 420 x 0.01 = 4.20.
    pytest.param(
        NY_CENT,
        ny("2024-11-03", "00:00"),
        ny("2024-11-03", "06:00"),
        None,
        "4.20",
        ("4.20",),
        0,
        0,
        id="dst-fall-back",
    ),
    # The whole 25-hour fall-back day: 1500 x 0.01 = 15.00.
    pytest.param(
        NY_CENT,
        ny("2024-11-03", "00:00"),
        ny("2024-11-04", "00:00"),
        None,
        "15.00",
        ("15.00",),
        0,
        0,
        id="dst-25-hour-day",
    ),
    # Free nights 22:00-02:30; 02:30 does not exist on 03-10. Night: 00:00-02:00 EST (120 min, then the
    # clock reads 03:00, past 02:30); 03:00-06:00 EDT: 180 x 0.01 = 1.80.
    pytest.param(
        replace(NY_CENT, overnight=Overnight(time(22), time(2, 30))),
        ny("2024-03-10", "00:00"),
        ny("2024-03-10", "06:00"),
        None,
        "1.80",
        ("1.80",),
        0,
        0,
        id="dst-window-edge-in-gap",
    ),
    # Free nights 22:00-01:30 on the wall clock, 00:00 EDT - 03:00 EST (240 real minutes): 00:00-01:30 EDT
    # night (90); 01:30-02:00 EDT charged (30); clocks go back to 01:00 EST, night again to 01:30 (30);
    # 01:30-03:00 EST charged (90). (30 + 90) x 0.01 = 1.20.
    pytest.param(
        replace(NY_CENT, overnight=Overnight(time(22), time(1, 30))),
        ny("2024-11-03", "00:00"),
        ny("2024-11-03", "03:00"),
        None,
        "1.20",
        ("1.20",),
        0,
        0,
        id="dst-window-edge-ambiguous",
    ),
]


@pytest.mark.req("PRK-5")
@pytest.mark.parametrize(
    ("tariff", "start", "end", "permit", "amount", "per_day", "overstay", "closed"), CASES
)
def test_fee(
    tariff: Tariff,
    start: datetime,
    end: datetime,
    permit: str | None,
    amount: str,
    per_day: tuple[str, ...],
    overstay: int,
    closed: int,
) -> None:
    fee = quote(tariff, start, end, permit=permit)
    assert str(fee.amount) == amount
    assert tuple(str(day.amount) for day in fee.days) == per_day
    assert fee.overstay_minutes == overstay
    assert fee.overstay == (overstay > 0)
    assert fee.closed_minutes == closed
    assert fee.outside_opening_hours == (closed > 0)
    assert fee.currency == tariff.currency


@pytest.mark.req("PRK-5")
def test_receipt_of_an_overnight_stay() -> None:
    # Mon 18:00 - Tue 10:00 under 20:00-08:00 at a 5.00 flat fee (see overnight-flat-crossing).
    fee = quote(NIGHT_FLAT, at(MON, "18:00"), at(TUE, "10:00"))
    lines = [
        (
            period.start.strftime("%a %H:%M"),
            period.end.strftime("%H:%M"),
            period.kind,
            period.minutes,
            period.amount,
        )
        for day in fee.days
        for period in day.periods
    ]
    assert lines == [
        ("Mon 18:00", "18:15", PeriodKind.FREE, 15, D("0")),
        ("Mon 18:15", "20:00", PeriodKind.STANDARD, 105, D("5.25")),  # 105 x 0.05
        ("Mon 20:00", "00:00", PeriodKind.OVERNIGHT, 240, D("5.00")),  # the night's flat fee
        ("Tue 00:00", "08:00", PeriodKind.OVERNIGHT, 480, D("0")),  # same night, no second fee
        ("Tue 08:00", "10:00", PeriodKind.STANDARD, 120, D("6.00")),  # 120 x 0.05
    ]
    assert (fee.minutes, fee.free_minutes, fee.billable_minutes) == (960, 15, 945)  # 16 h = 960 min


@pytest.mark.req("PRK-5")
def test_capped_day_is_marked() -> None:
    fee = quote(CAPPED, at(MON, "20:00"), at(TUE, "12:00"))
    assert [(day.day, day.subtotal, day.capped) for day in fee.days] == [
        (MON, D("11.25"), False),  # 225 x 0.05
        (TUE, D("36.00"), True),  # 720 x 0.05, charged 30.00
    ]


@pytest.mark.req("PRK-5")
@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        pytest.param(at(MON, "07:00"), True, id="at-opening"),
        pytest.param(at(MON, "21:59"), True, id="before-closing"),
        pytest.param(at(MON, "22:00"), False, id="at-closing"),
        pytest.param(at(SUN, "12:00"), False, id="closed-day"),
        # 23:30 UTC on Sunday is Monday 07:30 in Shanghai.
        pytest.param(datetime(2024, 5, 12, 23, 30, tzinfo=UTC), True, id="other-zone-converted"),
    ],
)
def test_is_open(moment: datetime, expected: bool) -> None:
    assert is_open(OPEN_HOURS, moment) is expected


def test_no_opening_hours_means_always_open() -> None:
    assert is_open(BASE, at(SUN, "03:00"))


# --- bad input ------------------------------------------------------------------------------------------

NAIVE = datetime(2024, 5, 6, 10, 0)


@pytest.mark.req("PRK-5")
@pytest.mark.parametrize(
    ("tariff", "start", "end", "permit", "field"),
    [
        pytest.param(BASE, NAIVE, at(MON, "11:00"), None, "start", id="naive-start"),
        pytest.param(BASE, at(MON, "09:00"), NAIVE, None, "end", id="naive-end"),
        pytest.param(BASE, at(MON, "11:00"), at(MON, "10:59"), None, "end", id="end-before-start"),
        pytest.param(
            BASE, at(MON, "10:00"), at(MON, "10:00") + timedelta(days=401), None, "end", id="too-long"
        ),
        pytest.param(PERMITS, at(MON, "10:00"), at(MON, "11:00"), "taxi", "permit", id="unknown-permit"),
        pytest.param(
            replace(BASE, price_per_minute=D("-0.01")),
            at(MON, "10:00"),
            at(MON, "11:00"),
            None,
            "tariff.price_per_minute",
            id="negative-rate",
        ),
        pytest.param(
            replace(BASE, price_per_minute=0.05),
            at(MON, "10:00"),
            at(MON, "11:00"),
            None,
            "tariff.price_per_minute",
            id="float-rate",
        ),
        pytest.param(
            replace(BASE, currency="XYZ"),
            at(MON, "10:00"),
            at(MON, "11:00"),
            None,
            "tariff.currency",
            id="currency",
        ),
        pytest.param(
            replace(BASE, time_zone="Mars/Olympus"),
            at(MON, "10:00"),
            at(MON, "11:00"),
            None,
            "tariff.time_zone",
            id="time-zone",
        ),
        pytest.param(
            replace(BASE, daily_cap=D("30.005")),
            at(MON, "10:00"),
            at(MON, "11:00"),
            None,
            "tariff.daily_cap",
            id="cap-finer-than-fen",
        ),
        pytest.param(
            replace(BASE, maximum_stay=timedelta(seconds=90)),
            at(MON, "10:00"),
            at(MON, "11:00"),
            None,
            "tariff.maximum_stay",
            id="max-stay-not-whole-minutes",
        ),
    ],
)
def test_bad_input_names_the_field(
    tariff: Tariff, start: datetime, end: datetime, permit: str | None, field: str
) -> None:
    with pytest.raises(TariffError) as caught:
        quote(tariff, start, end, permit=permit)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.req("PRK-5")
def test_every_tariff_problem_is_named() -> None:
    bad = Tariff(
        price_per_minute=D("-0.01"),
        currency="cny",
        time_zone="Mars/Olympus",
        free_minutes=-1,
        daily_cap=D("NaN"),
        maximum_stay=timedelta(0),
        overnight=Overnight(time(20), time(20), flat_fee=D("-1")),
        permits=(
            PermitClass("Resident"),
            PermitClass("resident", hours=(Window(time(8, 30, 15), time(9), (0,)),)),
            PermitClass("resident"),
        ),
        opening_hours=(Window(time(7), time(22), (1, 1)),),
    )
    assert [field for field, _ in tariff_problems(bad)] == [
        "currency",
        "price_per_minute",
        "time_zone",
        "free_minutes",
        "daily_cap",
        "maximum_stay",
        "overnight.end",
        "overnight.flat_fee",
        "permits[0].name",
        "permits[1].hours[0].start",
        "permits[1].hours[0].weekdays[0]",
        "permits[2].name",
        "opening_hours[0].weekdays[1]",
    ]
    assert tariff_problems(replace(NIGHT_FLAT, daily_cap=D("30"), permits=(RESIDENT, DELIVERY))) == []


# --- properties over random stays (fixed seeds) ----------------------------------------------------------

FULL = Tariff(
    price_per_minute=D("0.05"),
    currency="CNY",
    time_zone="Asia/Shanghai",
    free_minutes=15,
    daily_cap=D("30.00"),
    maximum_stay=timedelta(hours=3),
    overnight=Overnight(time(20), time(8), flat_fee=D("5.00")),
    permits=(RESIDENT, DELIVERY),
    opening_hours=(Window(time(7), time(22), (1, 2, 3, 4, 5, 6)),),
)
POOL = [
    FULL,
    replace(FULL, time_zone="America/New_York", currency="USD"),
    replace(FULL, time_zone="Europe/Berlin", currency="EUR", price_per_minute=D("0.0125"), daily_cap=None),
    replace(NY_CENT, overnight=Overnight(time(22), time(2, 30), flat_fee=D("1.00")), daily_cap=D("5.00")),
    replace(NY_CENT, overnight=Overnight(time(22), time(1, 30)), free_minutes=7),
]
# Starts near both 2024 DST changes in New York and Berlin, and anywhere in the year.
ANCHORS = [datetime(2024, 3, 9, 12, tzinfo=UTC), datetime(2024, 3, 30, 12, tzinfo=UTC)]
ANCHORS += [datetime(2024, 10, 26, 12, tzinfo=UTC), datetime(2024, 11, 2, 12, tzinfo=UTC)]


def random_stay(rng: random.Random, longest: timedelta) -> tuple[Tariff, str | None, datetime, datetime]:
    tariff = rng.choice(POOL)
    permit = rng.choice([None, *(p.name for p in tariff.permits)])
    if rng.random() < 0.6:
        start = rng.choice(ANCHORS) + timedelta(seconds=rng.randrange(2 * 86400))
    else:
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(365 * 86400))
    start = start.replace(second=rng.choice([0, 0, 0, 17]))
    end = start + timedelta(seconds=rng.randrange(int(longest.total_seconds())))
    return tariff, permit, start, end


def reference(
    tariff: Tariff, start: datetime, end: datetime, permit: str | None
) -> tuple[list[Decimal], int]:
    """The rules read literally: walk the stay minute by minute on the site's clock."""
    zone = ZoneInfo(tariff.time_zone)

    def inside(
        window_start: time, window_end: time, weekdays: tuple[int, ...], local: datetime
    ) -> date | None:
        wall = local.replace(tzinfo=None)
        for began in (wall.date() - timedelta(days=1), wall.date()):
            if weekdays and began.isoweekday() not in weekdays:
                continue
            opens = datetime.combine(began, window_start)
            closes = datetime.combine(began + timedelta(days=window_end <= window_start), window_end)
            if opens <= wall < closes:
                return began
        return None

    holder = next((p for p in tariff.permits if p.name == permit), None)
    charged: dict[date, Decimal] = defaultdict(Decimal)
    nights: set[date] = set()
    closed = 0
    minute, moment = 0, start.astimezone(UTC)
    while moment < end:
        local = moment.astimezone(zone)
        if tariff.opening_hours and not any(
            inside(w.start, w.end, w.weekdays, local) for w in tariff.opening_hours
        ):
            closed += 1
        day = local.date()
        charged[day] += 0
        night = tariff.overnight and inside(tariff.overnight.start, tariff.overnight.end, (), local)
        if minute < tariff.free_minutes:
            pass
        elif holder and (
            not holder.hours or any(inside(w.start, w.end, w.weekdays, local) for w in holder.hours)
        ):
            charged[day] += holder.price_per_minute
        elif tariff.overnight and night:
            if night not in nights:
                nights.add(night)
                charged[day] += tariff.overnight.flat_fee
        else:
            charged[day] += tariff.price_per_minute
        minute, moment = minute + 1, moment + timedelta(minutes=1)
    unit = D(1).scaleb(-{"CNY": 2, "USD": 2, "EUR": 2}[tariff.currency])
    cap = tariff.daily_cap
    days = [
        (min(total, cap) if cap is not None else total).quantize(unit, ROUND_HALF_UP)
        for total in charged.values()
    ]
    return days, closed


@pytest.mark.req("PRK-5")
def test_agrees_with_a_minute_by_minute_reading_of_the_rules() -> None:
    rng = random.Random(20240506)
    for _ in range(150):
        tariff, permit, start, end = random_stay(rng, timedelta(days=2))
        fee = quote(tariff, start, end, permit=permit)
        days, closed = reference(tariff, start, end, permit)
        context = (tariff.time_zone, permit, start.isoformat(), end.isoformat())
        assert [day.amount for day in fee.days] == days, context
        assert fee.amount == sum(days, D(0)), context
        assert fee.closed_minutes == closed, context


@pytest.mark.req("PRK-5")
def test_fee_never_decreases_as_the_stay_grows() -> None:
    rng = random.Random(7)
    for _ in range(120):
        tariff, permit, start, _ = random_stay(rng, timedelta(days=1))
        ends = sorted(start + timedelta(seconds=rng.randrange(4 * 86400)) for _ in range(8))
        fees = [quote(tariff, start, end, permit=permit) for end in ends]
        amounts = [fee.amount for fee in fees]
        assert amounts == sorted(amounts), (tariff.time_zone, permit, start, ends)
        overstays = [fee.overstay_minutes for fee in fees]
        assert overstays == sorted(overstays)


@pytest.mark.req("PRK-5")
def test_receipt_adds_up_and_covers_the_stay() -> None:
    rng = random.Random(11)
    for _ in range(150):
        tariff, permit, start, end = random_stay(rng, timedelta(days=5))
        fee: Fee = quote(tariff, start, end, permit=permit)
        periods = [period for day in fee.days for period in day.periods]
        assert fee.amount == sum((day.amount for day in fee.days), D(0))
        assert (
            fee.minutes
            == sum(period.minutes for period in periods)
            == fee.free_minutes + fee.billable_minutes
        )
        assert fee.minutes * 60 >= (end - start).total_seconds() > (fee.minutes - 1) * 60
        if periods:
            assert periods[0].start == start
            assert periods[-1].end == end
            assert all(a.end == b.start for a, b in pairwise(periods))
        cap = tariff.daily_cap
        assert all(cap is None or day.amount <= cap for day in fee.days)
        assert all(period.start.date() == day.day for day in fee.days for period in day.periods)


# --- the API's tariff: one conversion, one validation (cityos_parking.tariffs) ---------------------------


@pytest.mark.req("PRK-5")
def test_the_api_tariff_converts_to_the_fee_engines() -> None:
    proto = parking_pb2.Tariff(
        price_per_minute="0.05",
        currency="CNY",
        time_zone="Asia/Shanghai",
        free_minutes=15,
        daily_cap="30",
        maximum_stay=duration_pb2.Duration(seconds=7200),
        overnight=parking_pb2.Overnight(start="20:00", end="08:00", flat_fee="5"),
        permits=[
            parking_pb2.PermitClass(
                name="resident",
                hours=[parking_pb2.WeeklyWindow(weekdays=[1, 2, 3, 4, 5], start="18:00", end="08:00")],
            ),
            parking_pb2.PermitClass(
                name="delivery",
                hours=[parking_pb2.WeeklyWindow(start="09:00", end="11:00")],
                price_per_minute="0.01",
            ),
        ],
        opening_hours=[parking_pb2.WeeklyWindow(weekdays=[1, 2, 3, 4, 5, 6], start="07:00", end="22:00")],
    )
    assert tariffs.to_fees_tariff(proto) == replace(
        BASE,
        daily_cap=D("30"),
        maximum_stay=timedelta(hours=2),
        overnight=Overnight(time(20), time(8), flat_fee=D("5")),
        permits=(RESIDENT, DELIVERY),
        opening_hours=OPEN_HOURS.opening_hours,
    )
    # Unset optional parts: no cap, no limit, no night, free permit rates and free nights when empty.
    assert tariffs.to_fees_tariff(
        parking_pb2.Tariff(price_per_minute="0", currency="JPY", time_zone="Asia/Tokyo")
    ) == Tariff(price_per_minute=D(0), currency="JPY", time_zone="Asia/Tokyo")
    free_nights = parking_pb2.Tariff(
        price_per_minute="0.05",
        currency="CNY",
        time_zone="Asia/Shanghai",
        overnight={"start": "20:00", "end": "08:00"},
    )
    assert tariffs.to_fees_tariff(free_nights).overnight == Overnight(time(20), time(8), D(0))


@pytest.mark.req("PRK-5")
def test_the_api_tariffs_problems_are_named_once_by_their_proto_path() -> None:
    proto = parking_pb2.Tariff(
        price_per_minute="cheap",  # format
        currency="XYZ",  # a rule of the fee engine: not an ISO 4217 code
        time_zone="Mars/Olympus",  # both layers would object: named once
        free_minutes=2000,  # a rule
        daily_cap="30.001",  # fine while the currency is unknown (its minor unit decides; see CNY below)
        maximum_stay=duration_pb2.Duration(seconds=90),  # a rule: whole minutes
        overnight=parking_pb2.Overnight(start="20:00", end="20:00", flat_fee="x"),
        permits=[parking_pb2.PermitClass(name="resident"), parking_pb2.PermitClass(name="resident")],
        opening_hours=[parking_pb2.WeeklyWindow(weekdays=[3, 3, 9], start="7:00", end="22:00")],
    )
    problems = tariffs.tariff_problems(proto)
    fields = [field for field, _ in problems]
    assert len(fields) == len(set(fields))
    assert set(fields) == {
        "site.tariff.price_per_minute",
        "site.tariff.currency",
        "site.tariff.time_zone",
        "site.tariff.free_minutes",
        "site.tariff.maximum_stay",
        "site.tariff.overnight.end",
        "site.tariff.overnight.flat_fee",
        "site.tariff.permits[1].name",
        "site.tariff.opening_hours[0].weekdays[1]",
        "site.tariff.opening_hours[0].weekdays[2]",
        "site.tariff.opening_hours[0].start",
    }
    cny = parking_pb2.Tariff(
        price_per_minute="0.05", currency="CNY", time_zone="Asia/Shanghai", daily_cap="30.001"
    )
    assert tariffs.tariff_problems(cny, "tariff") == [
        ("tariff.daily_cap", "has more than 2 decimals, the currency's minor unit")
    ]
    with pytest.raises(TariffError) as invalid:
        tariffs.to_fees_tariff(cny)
    assert invalid.value.field == "tariff.daily_cap"
