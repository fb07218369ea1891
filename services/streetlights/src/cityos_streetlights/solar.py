"""The sun at a place and date, from the `astral` library (NOAA's solar equations).

Sunrise and sunset are the instants the sun's upper limb touches the horizon with standard refraction
(the centre 0.833° below it), as almanacs publish them; civil dawn and dusk are the sun's centre 6° below.
On a date the sun does not reach an angle (polar day or night) that time is None. Everything here is
pure and cheap; `sun_times` is cached per place (rounded to 0.001°, about 100 m: seconds of sun time)
and date, since a district's lights share a handful of places.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from astral import Observer, SunDirection
from astral import sun as astral_sun

# The sun's centre at sunrise and sunset: its upper limb (16') on the horizon under standard refraction
# (34'), as the almanacs (USNO, HMNAO) and NOAA take it; and at civil dawn and dusk: 6° below, no refraction.
SUNRISE_ZENITH = 90.833
CIVIL_ZENITH = 96.0
CIVIL_DEPRESSION = CIVIL_ZENITH - 90.0


@dataclass(frozen=True)
class SunTimes:
    """The sun's times on a local date at a place (aware UTC datetimes; None when it does not happen)."""

    civil_dawn: datetime | None
    sunrise: datetime | None
    sunset: datetime | None
    civil_dusk: datetime | None


def _crossing(
    observer: Observer, day: date, zenith: float, direction: SunDirection, zone: tzinfo
) -> datetime | None:
    """When the sun's centre crosses `zenith` (degrees from the zenith, no refraction added: the
    constants above include it) going `direction` on the local date `day` in `zone`, or None.

    astral's `time_of_transit` answers for a UTC date, and the crossing it finds may fall on the local
    date before or after; the three UTC dates around `day` cover every crossing on it."""
    found: list[tuple[int, datetime]] = []
    for shift in (0, -1, 1):
        try:
            moment = astral_sun.time_of_transit(
                observer, day + timedelta(days=shift), zenith, direction, with_refraction=False
            )
        except ValueError:  # the sun never reaches that angle on that date there (polar day or night)
            continue
        if moment.astimezone(zone).date() == day:
            found.append((shift, moment.astimezone(UTC)))
    return found[0][1] if found else None


@lru_cache(maxsize=4096)
def _sun_times(latitude: float, longitude: float, day: date, zone: tzinfo) -> SunTimes:
    observer = Observer(latitude=latitude, longitude=longitude)
    return SunTimes(
        civil_dawn=_crossing(observer, day, CIVIL_ZENITH, SunDirection.RISING, zone),
        sunrise=_crossing(observer, day, SUNRISE_ZENITH, SunDirection.RISING, zone),
        sunset=_crossing(observer, day, SUNRISE_ZENITH, SunDirection.SETTING, zone),
        civil_dusk=_crossing(observer, day, CIVIL_ZENITH, SunDirection.SETTING, zone),
    )


def sun_times(latitude: float, longitude: float, day: date, time_zone: str = "Asia/Shanghai") -> SunTimes:
    """The sun's times on the local date `day` (in `time_zone`) at the place."""
    return _sun_times(round(latitude, 3), round(longitude, 3), day, ZoneInfo(time_zone))


def elevation(latitude: float, longitude: float, when: datetime) -> float:
    """The sun's elevation above the horizon (degrees, refraction included) at `when`."""
    return float(astral_sun.elevation(Observer(latitude=latitude, longitude=longitude), when.astimezone(UTC)))


def is_daylight(latitude: float, longitude: float, when: datetime, margin: timedelta = timedelta(0)) -> bool:
    """Whether `when` lies between sunrise + margin and sunset - margin of the place's solar day (its
    date at the whole-hour offset nearest its mean solar time; polar day: always; polar night: never)."""
    zone = timezone(timedelta(hours=round(longitude / 15.0)))
    moment = when.astimezone(UTC)
    times = _sun_times(round(latitude, 3), round(longitude, 3), moment.astimezone(zone).date(), zone)
    if times.sunrise is None or times.sunset is None:
        return elevation(latitude, longitude, moment) > 0
    return times.sunrise + margin <= moment <= times.sunset - margin
