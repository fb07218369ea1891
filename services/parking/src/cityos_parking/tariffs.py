"""A site's tariff as the API carries it (`cityos.parking.v1.Tariff`) and as the fee engine prices it
(`cityos_parking.fees.Tariff`): one conversion, one validation, and the fee back into the API.

Validation has two layers, reported together so a caller fixes everything in one round:

* the *wire format*, which only the proto form can get wrong: decimals written as strings, `HH:MM`
  clock times, the IANA zone name, sanity bounds on rates, the number of windows;
* the *rules* of `fees.tariff_problems` (an active ISO 4217 currency, free minutes in range, caps in
  the currency's minor unit, a maximum stay in whole minutes, permit names unique, an overnight window
  that is not a whole day...), run on the converted tariff.

Both name proto field paths (`site.tariff.daily_cap`, `site.tariff.permits[0].hours[1].start`); a field
the wire-format layer already faulted is not faulted again by the rules layer (its converted value is a
placeholder then, so a second complaint about it would only be noise).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import available_timezones

from google.protobuf import timestamp_pb2

from cityos.parking.v1 import parking_pb2, reservations_pb2
from cityos_parking import fees

__all__ = ["fee_to_proto", "tariff_problems", "to_fees_tariff"]

CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
# The most a per-minute rate may be (a typo guard: 1000 a minute is no car park's price).
MAX_PRICE = Decimal("1000")
# The most a daily cap or a night's flat fee may be (large enough for currencies without decimals).
MAX_AMOUNT = Decimal("1000000")
MAX_WINDOWS = 28

Problems = list[tuple[str, str]]


class _Converter:
    """Reads a proto tariff into a `fees.Tariff`, noting wire-format problems on the way; a value that
    cannot be read is replaced by a neutral placeholder so the rules layer can still run on the rest."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.problems: Problems = []

    def _note(self, path: str, message: str) -> None:
        self.problems.append((f"{self.field}.{path}", message))

    def decimal(self, value: str, path: str, *, bound: Decimal, default: Decimal | None = None) -> Decimal:
        if not value:
            if default is None:
                self._note(path, "is required (a decimal, e.g. 0.05)")
                return Decimal(0)
            return default
        try:
            amount = Decimal(value)
        except InvalidOperation:
            self._note(path, f"{value!r} is not a decimal number")
            return Decimal(0)
        if not amount.is_finite() or amount < 0 or amount > bound:
            self._note(path, f"must be from 0 to {bound}")
            return Decimal(0)
        return amount

    def clock(self, value: str, path: str) -> time:
        if not CLOCK.match(value):
            self._note(path, "must be HH:MM (24 h)")
            return time(0)
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))

    def windows(self, windows: Sequence[parking_pb2.WeeklyWindow], path: str) -> tuple[fees.Window, ...]:
        if len(windows) > MAX_WINDOWS:
            self._note(path, f"at most {MAX_WINDOWS} windows")
        converted = []
        for index, window in enumerate(windows):
            where = f"{path}[{index}]"
            # Weekdays pass through as given: the rules layer names a bad or repeated one by index.
            converted.append(
                fees.Window(
                    start=self.clock(window.start, f"{where}.start"),
                    end=self.clock(window.end, f"{where}.end"),
                    weekdays=tuple(window.weekdays),
                )
            )
        return tuple(converted)

    def tariff(self, proto: parking_pb2.Tariff) -> fees.Tariff:
        price = self.decimal(proto.price_per_minute, "price_per_minute", bound=MAX_PRICE)
        daily_cap = self.decimal(proto.daily_cap, "daily_cap", bound=MAX_AMOUNT) if proto.daily_cap else None
        maximum_stay = None
        if proto.HasField("maximum_stay"):
            maximum_stay = proto.maximum_stay.ToTimedelta()
            if not timedelta(minutes=1) <= maximum_stay <= timedelta(days=30):
                self._note("maximum_stay", "from 1 minute to 30 days")
                maximum_stay = None
        overnight = None
        if proto.HasField("overnight"):
            overnight = fees.Overnight(
                start=self.clock(proto.overnight.start, "overnight.start"),
                end=self.clock(proto.overnight.end, "overnight.end"),
                # Empty means free nights, as an empty permit rate means free parking.
                flat_fee=self.decimal(
                    proto.overnight.flat_fee, "overnight.flat_fee", bound=MAX_AMOUNT, default=Decimal(0)
                ),
            )
        permits = tuple(
            fees.PermitClass(
                name=permit.name,
                hours=self.windows(permit.hours, f"permits[{index}].hours"),
                price_per_minute=self.decimal(
                    permit.price_per_minute,
                    f"permits[{index}].price_per_minute",
                    bound=MAX_PRICE,
                    default=Decimal(0),
                ),
            )
            for index, permit in enumerate(proto.permits)
        )
        opening_hours = self.windows(proto.opening_hours, "opening_hours")
        if proto.time_zone not in _zones():
            self._note("time_zone", "an IANA time zone, e.g. Asia/Shanghai")
        return fees.Tariff(
            price_per_minute=price,
            currency=proto.currency,
            time_zone=proto.time_zone,
            free_minutes=proto.free_minutes,
            daily_cap=daily_cap,
            maximum_stay=maximum_stay,
            overnight=overnight,
            permits=permits,
            opening_hours=opening_hours,
        )


def tariff_problems(tariff: parking_pb2.Tariff, field: str = "site.tariff") -> Problems:
    """Every problem of a tariff as (field path under `field`, description); empty when it is valid."""
    converter = _Converter(field)
    converted = converter.tariff(tariff)
    problems = list(converter.problems)
    faulted = {path for path, _ in problems}
    for path, message in fees.tariff_problems(converted):
        where = f"{field}.{path}"
        if where not in faulted:
            faulted.add(where)
            problems.append((where, message))
    return problems


def to_fees_tariff(tariff: parking_pb2.Tariff) -> fees.Tariff:
    """The fee engine's form of a tariff; `fees.TariffError` (field `tariff.…`) for the first problem
    of an invalid one (a stored tariff was validated on the way in, so that means it predates a rule)."""
    problems = tariff_problems(tariff, "tariff")
    if problems:
        field, message = problems[0]
        raise fees.TariffError(field, message)
    return _Converter("tariff").tariff(tariff)


def _decimal_text(value: Decimal) -> str:
    """A decimal as plain digits (never `1E+2` or `0E-8`)."""
    return format(value, "f")


def _stamp(value: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


def fee_to_proto(fee: fees.Fee) -> reservations_pb2.Fee:
    """The API's form of a priced stay, line by line (decimals as plain strings)."""
    return reservations_pb2.Fee(
        amount=_decimal_text(fee.amount),
        currency=fee.currency,
        minutes=fee.minutes,
        free_minutes=fee.free_minutes,
        billable_minutes=fee.billable_minutes,
        overstay_minutes=fee.overstay_minutes,
        closed_minutes=fee.closed_minutes,
        days=[
            reservations_pb2.FeeDay(
                day=day.day.isoformat(),
                periods=[
                    reservations_pb2.FeePeriod(
                        start_time=_stamp(period.start),
                        end_time=_stamp(period.end),
                        kind=period.kind.value,
                        minutes=period.minutes,
                        price_per_minute=_decimal_text(period.price_per_minute),
                        amount=_decimal_text(period.amount),
                        open=period.open,
                    )
                    for period in day.periods
                ],
                subtotal=_decimal_text(day.subtotal),
                amount=_decimal_text(day.amount),
                capped=day.capped,
            )
            for day in fee.days
        ],
    )


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return _ZONES
