"""Availability: live counts per site and group, the nearest-space search, a live watch, gate counts.

Counting (`Occupancy`)
----------------------
A site's spaces are its spots, or, for a BALANCING site with `capacity > 0`, that capacity.

* SINGLE_SPACE and MANUAL sites count their spots by `SpotRow.status`: free, occupied, closed, unknown.
* A BALANCING site knows only how many vehicles passed its gates (`SiteRow.gate_occupied`, clamped to
  the spaces not closed); closed spaces are its CLOSED spots; the rest are free; nothing is unknown.
* `reserved` is the part of the free spaces a live reservation holds now (state HELD or CHECKED_IN,
  `start_time <= now < end_time`): a FREE spot with such a reservation on it, and one space for each
  capacity hold (a reservation without a spot). At a BALANCING site every live reservation holds one
  space. `free` is what is left, so `total = free + reserved + occupied + closed + unknown`.
* `occupancy_ratio = occupied / (total - closed)` (0 when nothing is usable).
* `status`: CLOSED outside the tariff's opening hours, else FULL when nothing is free, else
  ALMOST_FULL from a ratio of 0.9, else SPACES_AVAILABLE.

A group counts its spots the same way (a BALANCING site's groups from their spots' statuses, since gates
count the whole site); capacity holds belong to no group. `count_occupancy` counts many sites and their
groups in two GROUP BY queries (spots by site, group, status and allowed vehicle types; live
reservations), so listing pages and searches stay a fixed number of round trips.

Search
------
Candidates come from a latitude/longitude bounding box around the circle (in SQL; it always contains the
circle, with a margin), then the exact great-circle distance (haversine on a sphere of radius
6,371,008.8 m, the IUGG mean Earth radius) keeps those within `radius_m`, ordered by distance, then
display name, then id. For a vehicle type, a spot takes the types it lists, or its site's when it lists
none. Now, a site's spaces for the vehicle are its free spots that take it, minus the reserved ones
among them and minus its capacity holds (a held space is not chosen yet, so it counts against every
type); a BALANCING site has its free count when it takes the type. At a later time, they are its spots
not closed that take the type minus the reservations over that time, and the site must be open then;
live sensor state counts only for now. The SPOTS level lists free spots (now) or unreserved spots not
closed (later) of open sites; capacity holds do not pin a spot, so they do not hide one.

On PostgreSQL the SITES search reads an in-memory snapshot of every site's counts kept current from the
outbox (`SiteSnapshot`: one index lookup of the outbox head per search, and the sites touched by new
events read again), and the SPOTS search is one SQL statement (`PgReader`); the embedded SQLite mode
reads through the ORM on each call. Both give the same answers (the tests run on both).

Watch
-----
The snapshot of every watched site, then the service's own outbox (through the platform's
`read_ordered`, so it works across replicas: the outbox is in the database) for `parking.spot.*`,
`parking.site.*`, `parking.reservation.*` and `parking.gate.*` events touching a watched site; each such
batch recounts the sites it touched and sends those whose counts changed. Opening hours and
reservations start and end without an event, so the watched sites are also recounted every
`recheck_s`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import ColumnElement, and_, cast, event, exists, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from cityos.common.v1 import resources_pb2
from cityos.parking.v1 import availability_pb2, availability_pb2_grpc, parking_pb2, reservations_pb2
from cityos_parking import fees
from cityos_parking.models import GroupRow, ReservationRow, SiteRow, SpotRow
from cityos_parking.registry import RESOURCE_ID, VEHICLE_TYPES, emit, name_id, spot_to_proto
from cityos_parking.tariffs import to_fees_tariff
from cityos_platform.areas import AreaRegistry
from cityos_platform.db import Database, Tx
from cityos_platform.errors import FailedPrecondition, InvalidArgument
from cityos_platform.events import read_ordered
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.models import Outbox
from cityos_platform.server import Mount
from cityos_platform.tenancy import Access, can_reach, not_found

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6_371_008.8
MAX_RADIUS_M = 5_000.0
DEFAULT_RESULTS = 20
MAX_RESULTS = 200
MAX_AHEAD = timedelta(days=30)
# An `at` this little in the past is taken as now (clocks differ); earlier is refused.
PAST_SLACK = timedelta(minutes=5)
MAX_WATCHED_SITES = 100
MAX_GATE_COUNT = 1_000
# A gate clock this far ahead of the service is refused (a wrong clock, not a passage).
GATE_CLOCK_SKEW = timedelta(minutes=5)
ALMOST_FULL_RATIO = 0.9
PERMIT = re.compile(r"^[a-z][a-z0-9-]{1,62}$")

FREE = parking_pb2.SPOT_STATUS_FREE
OCCUPIED = parking_pb2.SPOT_STATUS_OCCUPIED
CLOSED = parking_pb2.SPOT_STATUS_CLOSED
LIVE_RESERVATIONS = (reservations_pb2.RESERVATION_STATE_HELD, reservations_pb2.RESERVATION_STATE_CHECKED_IN)
WATCHED_EVENTS = ("parking.spot.", "parking.site.", "parking.reservation.", "parking.gate.")

Violations = list[tuple[str, str]]


# -- geometry ---------------------------------------------------------------------------------------


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres on the mean Earth sphere."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lng2 - lng1) / 2
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bounding_box(lat: float, lng: float, radius_m: float) -> tuple[float, float, list[tuple[float, float]]]:
    """(min_lat, max_lat, longitude ranges) of a box containing every point within `radius_m`.

    The longitude half-width is the exact one of a spherical cap (asin(sin d / cos lat)); a cap that
    reaches a pole takes every longitude; a box crossing the antimeridian is split in two ranges. A
    relative margin of 1e-6 (plus a few nanodegrees) absorbs rounding, so the box never cuts the circle.
    """
    angular = radius_m / EARTH_RADIUS_M
    dlat = math.degrees(angular) * (1 + 1e-6) + 1e-9
    min_lat, max_lat = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    cos_lat = math.cos(math.radians(lat))
    if min_lat <= -90.0 or max_lat >= 90.0 or math.sin(angular) >= cos_lat:
        return min_lat, max_lat, [(-180.0, 180.0)]
    dlng = math.degrees(math.asin(math.sin(angular) / cos_lat)) * (1 + 1e-6) + 1e-9
    west, east = lng - dlng, lng + dlng
    if west < -180.0:
        return min_lat, max_lat, [(west + 360.0, 180.0), (-180.0, east)]
    if east > 180.0:
        return min_lat, max_lat, [(west, 180.0), (-180.0, east - 360.0)]
    return min_lat, max_lat, [(west, east)]


def _box_clause(
    lat_column: Any, lng_column: Any, lat: float, lng: float, radius_m: float
) -> ColumnElement[bool]:
    min_lat, max_lat, ranges = bounding_box(lat, lng, radius_m)
    return and_(
        lat_column.between(min_lat, max_lat), or_(*(lng_column.between(low, high) for low, high in ranges))
    )


# -- what counting needs of a site ------------------------------------------------------------------

SITE_COLUMNS = (
    SiteRow.site_id,
    SiteRow.display_name,
    SiteRow.kind,
    SiteRow.detection_type,
    SiteRow.allowed_vehicle_types,
    SiteRow.tariff,
    SiteRow.capacity,
    SiteRow.gate_occupied,
    SiteRow.latitude,
    SiteRow.longitude,
    SiteRow.area_cell,
)


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """The columns of a site that counting and answering need (read as columns: no ORM object)."""

    site_id: str
    display_name: str
    kind: int
    detection_type: int
    allowed_vehicle_types: Sequence[str]
    tariff: dict[str, Any]
    capacity: int
    gate_occupied: int
    latitude: float
    longitude: float
    area_cell: str

    @classmethod
    def of(cls, row: SiteRow | SiteFacts | Any) -> SiteFacts:
        """From a `SiteRow`, a row of `SITE_COLUMNS`, or facts already."""
        if isinstance(row, SiteFacts):
            return row
        return cls(*(getattr(row, column.key) for column in SITE_COLUMNS))

    @property
    def balancing(self) -> bool:
        return self.detection_type == parking_pb2.DETECTION_TYPE_BALANCING

    def takes(self, vehicle_type: str, spot_types: Sequence[str]) -> bool:
        """Whether a spot listing `spot_types` (empty: its site's) takes the vehicle type ('' any)."""
        return not vehicle_type or vehicle_type in (spot_types or self.allowed_vehicle_types)


@functools.lru_cache(maxsize=256)
def _types(text: str | None) -> tuple[str, ...]:
    """Allowed vehicle types from their JSON text (few distinct values: cached)."""
    return tuple(json.loads(text)) if text else ()


@functools.lru_cache(maxsize=1024)
def _tariff_dict(text: str) -> dict[str, Any]:
    """A stored tariff from its JSON text (shared between calls: never changed in place)."""
    parsed: dict[str, Any] = json.loads(text)
    return parsed


@functools.lru_cache(maxsize=1024)
def _engine_tariff(key: str) -> fees.Tariff | None:
    """The fee engine's form of a stored tariff (by its JSON), None when it no longer converts (a
    tariff stored before a rule it breaks; counted as always open, and logged)."""
    try:
        return to_fees_tariff(json_format.ParseDict(json.loads(key), parking_pb2.Tariff()))
    except (fees.TariffError, json_format.ParseError) as error:
        log.warning("stored tariff does not convert (%s); treating the site as always open", error)
        return None


def _tariff_key(tariff: dict[str, Any]) -> str:
    return json.dumps(tariff, sort_keys=True, separators=(",", ":"))


def tariff_open_at(tariff: dict[str, Any], at: datetime, key: str | None = None) -> bool:
    """Whether a stored tariff's opening hours include the instant (no hours: always open); `key`, its
    JSON text when at hand, saves serialising it again for the cache."""
    if not tariff.get("openingHours"):
        return True
    engine = _engine_tariff(key or _tariff_key(tariff))
    return engine is None or fees.is_open(engine, at)


def is_open_at(site: SiteFacts, at: datetime) -> bool:
    """Whether the site's opening hours include the instant (no hours: always open)."""
    return tariff_open_at(site.tariff, at)


def price_text(site: SiteFacts, permit: str = "", at: datetime | None = None) -> str:
    """The per-minute price and currency for a result list (`0.05 CNY`); a permit class of the
    tariff that covers `at` gives its own price (empty: free)."""
    tariff = site.tariff
    price = tariff.get("pricePerMinute", "0")
    if permit and at is not None and any(p.get("name") == permit for p in tariff.get("permits", ())):
        engine = _engine_tariff(_tariff_key(tariff))
        permit_class = engine.permit(permit) if engine else None
        if permit_class is not None and permit_class.covers(at.astimezone(ZoneInfo(engine.time_zone))):  # type: ignore[union-attr]
            price = format(permit_class.price_per_minute, "f")
    currency = tariff.get("currency", "")
    return f"{price} {currency}".strip()


# -- counting ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation (HELD or CHECKED_IN) as counting sees it: the spot it pins (None: a capacity
    hold), that spot's group, status and allowed types, and its window."""

    spot_id: str | None
    group_id: str | None
    spot_status: int | None
    spot_types: tuple[str, ...]
    start_time: datetime
    end_time: datetime

    def at(self, instant: datetime) -> bool:
        return self.start_time <= instant < self.end_time


@dataclass
class Tally:
    """One site's spots by (group, status, allowed types) and its reservations live now or at the
    later time asked about."""

    site: SiteFacts
    spots: list[tuple[str | None, int, tuple[str, ...], int]] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)

    def total_spots(self) -> int:
        return sum(n for *_, n in self.spots)


async def load_tallies(
    session: AsyncSession, sites: Sequence[SiteFacts], now: datetime, at: datetime | None = None
) -> dict[str, Tally]:
    """The spot counts and the reservations live now (or at `at`) of many sites: two queries."""
    at = at or now
    tallies = {site.site_id: Tally(site) for site in sites}
    if not tallies:
        return tallies
    ids = list(tallies)
    types_text = cast(SpotRow.allowed_vehicle_types, Text)
    rows = await session.execute(
        select(SpotRow.site_id, SpotRow.group_id, SpotRow.status, types_text, func.count())
        .where(SpotRow.site_id.in_(ids))
        .group_by(SpotRow.site_id, SpotRow.group_id, SpotRow.status, types_text)
    )
    for site_id, group_id, status, types, count in rows:
        tallies[site_id].spots.append((group_id, status, _types(types), count))
    live = or_(
        *(
            and_(ReservationRow.start_time <= instant, ReservationRow.end_time > instant)
            for instant in {now, at}
        )
    )
    holds = await session.execute(
        select(
            ReservationRow.site_id,
            ReservationRow.spot_id,
            SpotRow.group_id,
            SpotRow.status,
            types_text,
            ReservationRow.start_time,
            ReservationRow.end_time,
        )
        .outerjoin(SpotRow, SpotRow.spot_id == ReservationRow.spot_id)
        .where(ReservationRow.site_id.in_(ids), ReservationRow.state.in_(LIVE_RESERVATIONS), live)
    )
    for site_id, spot_id, group_id, status, types, start, end in holds:
        tallies[site_id].holds.append(Hold(spot_id, group_id, status, _types(types), start, end))
    return tallies


def _occupancy(
    spots: Iterable[tuple[int, int]],
    holds: Iterable[Hold],
    now: datetime,
    *,
    open_now: bool,
    balancing: SiteFacts | None = None,
    capacity_holds: bool = True,
) -> parking_pb2.Occupancy:
    """Counts from (status, n) pairs and reservations; `balancing`: the site, counted at its gates."""
    by_status: dict[int, int] = {}
    for status, n in spots:
        by_status[status] = by_status.get(status, 0) + n
    live = [hold for hold in holds if hold.at(now) and (capacity_holds or hold.spot_id is not None)]
    spot_count = sum(by_status.values())
    closed = by_status.get(CLOSED, 0)
    if balancing is not None:
        total = balancing.capacity if balancing.capacity > 0 else spot_count
        closed = min(closed, total)
        occupied = min(max(balancing.gate_occupied, 0), total - closed)
        unknown = 0
        free_raw = total - closed - occupied
        held = len(live)
    else:
        total = spot_count
        occupied = by_status.get(OCCUPIED, 0)
        unknown = total - closed - occupied - by_status.get(FREE, 0)
        free_raw = by_status.get(FREE, 0)
        held_spots = {hold.spot_id for hold in live if hold.spot_id is not None and hold.spot_status == FREE}
        held = len(held_spots) + sum(1 for hold in live if hold.spot_id is None)
    reserved = min(held, free_raw)
    free = free_raw - reserved
    usable = total - closed
    ratio = occupied / usable if usable > 0 else 0.0
    if not open_now:
        status = parking_pb2.SITE_STATUS_CLOSED
    elif free == 0:
        status = parking_pb2.SITE_STATUS_FULL
    elif ratio >= ALMOST_FULL_RATIO:
        status = parking_pb2.SITE_STATUS_ALMOST_FULL
    else:
        status = parking_pb2.SITE_STATUS_SPACES_AVAILABLE
    return parking_pb2.Occupancy(
        total=total,
        free=free,
        occupied=occupied,
        closed=closed,
        unknown=unknown,
        reserved=reserved,
        occupancy_ratio=ratio,
        status=status,
    )


def site_occupancy(tally: Tally, now: datetime) -> parking_pb2.Occupancy:
    site = tally.site
    return _occupancy(
        ((status, n) for _, status, _, n in tally.spots),
        tally.holds,
        now,
        open_now=is_open_at(site, now),
        balancing=site if site.balancing else None,
    )


def group_occupancies(
    tally: Tally, now: datetime, group_ids: Iterable[str]
) -> dict[str, parking_pb2.Occupancy]:
    """The counts of each named group of the site (from its spots; capacity holds are in no group)."""
    open_now = is_open_at(tally.site, now)
    return {
        group_id: _occupancy(
            ((status, n) for group, status, _, n in tally.spots if group == group_id),
            (hold for hold in tally.holds if hold.group_id == group_id),
            now,
            open_now=open_now,
            capacity_holds=False,
        )
        for group_id in group_ids
    }


def spaces_for(
    tally: Tally, vehicle_type: str, at: datetime, *, live: bool, occupancy: parking_pb2.Occupancy
) -> int:
    """Spaces for the vehicle type at `at` (see the module doc); 0 when the site is closed then."""
    site = tally.site
    if live:
        if occupancy.status == parking_pb2.SITE_STATUS_CLOSED:
            return 0
    elif not is_open_at(site, at):
        return 0
    holds = [hold for hold in tally.holds if hold.at(at)]
    if site.balancing:
        if vehicle_type and vehicle_type not in site.allowed_vehicle_types:
            return 0
        if live:
            return occupancy.free
        return max(0, occupancy.total - occupancy.closed - len(holds))
    wanted = FREE if live else None
    spaces = sum(
        n
        for _, status, types, n in tally.spots
        if (status == wanted if live else status != CLOSED) and site.takes(vehicle_type, types)
    )
    pinned = {
        hold.spot_id
        for hold in holds
        if hold.spot_id is not None
        and hold.spot_status is not None
        and (hold.spot_status == wanted if live else hold.spot_status != CLOSED)
        and site.takes(vehicle_type, hold.spot_types)
    }
    unpinned = sum(1 for hold in holds if hold.spot_id is None)
    available = max(0, spaces - len(pinned) - unpinned)
    return min(available, occupancy.free) if live else available


@dataclass
class Counts:
    sites: dict[str, parking_pb2.Occupancy]
    groups: dict[str, parking_pb2.Occupancy]


async def count_occupancy(
    session: AsyncSession, sites: Sequence[SiteRow | SiteFacts], now: datetime, *, with_groups: bool = False
) -> Counts:
    """The live counts of many sites (and, with `with_groups`, of every group with spots in them) in
    two queries; for `Site.occupancy` in GetSite and ListSites, and for this service's answers."""
    facts = [SiteFacts.of(site) for site in sites]
    tallies = await load_tallies(session, facts, now)
    counts = Counts(sites={}, groups={})
    for site_id, tally in tallies.items():
        counts.sites[site_id] = site_occupancy(tally, now)
        if with_groups:
            groups = {group for group, *_ in tally.spots if group is not None}
            counts.groups.update(group_occupancies(tally, now, groups))
    return counts


async def announce_site_status(tx: Tx, site_row: SiteRow) -> parking_pb2.Occupancy:
    """Recount a site in the transaction and announce when its status crosses FULL: `parking.site.full`
    when it became full, `parking.site.available` when it has space again after an announced full
    (payload `SiteOccupancyChanged`). `SiteRow.announced_status` keeps the last status seen here,
    except CLOSED, which is not a change of space: a site full at closing time and with space when it
    opens again announces `available` then. Returns the counts."""
    occupancy = (await count_occupancy(tx.session, [site_row], tx.now)).sites[site_row.site_id]
    previous, status = site_row.announced_status, occupancy.status
    if status == parking_pb2.SITE_STATUS_CLOSED or status == previous:
        return occupancy
    name = f"sites/{site_row.site_id}"
    changed = parking_pb2.SiteOccupancyChanged(
        site=name,
        occupancy=occupancy,
        previous_status=previous,  # type: ignore[arg-type]
    )
    if status == parking_pb2.SITE_STATUS_FULL:
        emit(tx, "site.full", changed, name, site_row)
    elif previous == parking_pb2.SITE_STATUS_FULL:
        emit(tx, "site.available", changed, name, site_row)
    site_row.announced_status = status
    return occupancy


def availability_of(
    site: SiteFacts, occupancy: parking_pb2.Occupancy, *, permit: str = "", at: datetime | None = None
) -> availability_pb2.SiteAvailability:
    return availability_pb2.SiteAvailability(
        site=f"sites/{site.site_id}",
        display_name=site.display_name,
        kind=site.kind,  # type: ignore[arg-type]
        location=resources_pb2.GeoPoint(latitude=site.latitude, longitude=site.longitude),
        occupancy=occupancy,
        allowed_vehicle_types=site.allowed_vehicle_types,
        price=price_text(site, permit, at),
    )


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


# -- PostgreSQL: one statement per search ----------------------------------------------------------
#
# Search is the hot read path. On PostgreSQL it runs one SQL statement on a connection of the driver
# (`PgReader`): one round trip and one snapshot, with the counting aggregates,
# the distance prefilter and (for spots) the ordering done by the database, in its own processes.
# Through the ORM session the same work cost about five times the CPU of this process per call
# (session, BEGIN and ROLLBACK round trips, statement compilation, result processing), which made
# the service CPU-bound long before the database was. The embedded SQLite mode uses the ORM path.
# The SQL distance only preselects (with a metre of margin); the Python haversine decides.

_SQL_DISTANCE = (
    "2 * 6371008.8 * asin(least(1.0, sqrt(power(sin(radians({t}.latitude - $1) / 2), 2)"
    " + cos(radians($1)) * cos(radians({t}.latitude)) * power(sin(radians({t}.longitude - $2) / 2), 2))))"
)
_SQL_NEAR = (
    "{t}.latitude BETWEEN $4 AND $5 AND ({t}.longitude BETWEEN $6 AND $7 OR {t}.longitude BETWEEN $8 AND $9)"
    " AND " + _SQL_DISTANCE + " <= $3"
)
# Constants only: every value is a bind parameter ($n).
# Every site (or the sites events touched after $3) with its spot counts and reservations, and the
# outbox position the snapshot is at: one statement, so one snapshot.
_PG_SNAPSHOT = (
    "SELECT h.head, h.deleted, s.site_id, s.display_name, s.kind, s.detection_type,"
    " s.allowed_vehicle_types::text, s.tariff::text, s.capacity, s.gate_occupied, s.latitude, s.longitude,"
    " s.area_cell,"
    " (SELECT json_agg(json_build_array(c.group_id, c.status, c.types, c.n))::text FROM"
    "   (SELECT group_id, status, allowed_vehicle_types::text AS types, count(*) AS n FROM spots"
    "    WHERE spots.site_id = s.site_id GROUP BY 1, 2, 3) c),"
    " (SELECT json_agg(json_build_array(r.spot_id, p.group_id, p.status, p.allowed_vehicle_types::text,"
    "         r.start_time, r.end_time))::text"
    "   FROM reservations r LEFT JOIN spots p ON p.spot_id = r.spot_id"
    "   WHERE r.site_id = s.site_id AND r.state = ANY($1::int[]) AND r.end_time > $2)"
    " FROM (SELECT (SELECT coalesce(max(seq), 0) FROM cityos_outbox) AS head,"
    "        (SELECT array_agg(subject) FROM cityos_outbox"
    "         WHERE seq > $3 AND type = 'parking.site.deleted') AS deleted) h"
    " LEFT JOIN sites s ON {touched}"
)
_PG_SNAPSHOT_ALL = _PG_SNAPSHOT.replace("{touched}", "$3 >= 0")
_PG_SNAPSHOT_TOUCHED = _PG_SNAPSHOT.replace(
    "{touched}",
    "(s.area_cell IN (SELECT o.area_cell FROM cityos_outbox o WHERE o.seq > $3)"
    " OR 'sites/' || s.site_id IN (SELECT o.subject FROM cityos_outbox o WHERE o.seq > $3))",
)
_NO_POSITION = 2**62
_PG_HEAD = "SELECT coalesce(max(seq), 0) FROM cityos_outbox"
_PG_SPOTS = (
    "SELECT p.spot_id, p.site_id, p.display_name, p.latitude, p.longitude,"  # noqa: S608
    " p.allowed_vehicle_types::text,"
    " s.allowed_vehicle_types::text, s.tariff::text,"
    " p.group_id, p.sensor_id, p.width_m, p.length_m, p.status, p.status_time, p.area_cell, p.etag,"
    " p.create_time, p.update_time, p.sensor_heard_time, p.forbidden_parking"
    " FROM spots p JOIN sites s ON s.site_id = p.site_id"
    " WHERE " + _SQL_NEAR.format(t="p") + " AND p.status {usable} $10"
    " AND ($11 = '' OR (CASE WHEN json_array_length(p.allowed_vehicle_types) = 0"
    "      THEN s.allowed_vehicle_types ELSE p.allowed_vehicle_types END)::jsonb ? $11)"
    " AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.spot_id = p.spot_id"
    "      AND r.state = ANY($12::int[]) AND r.start_time <= $13 AND r.end_time > $13)"
    " ORDER BY " + _SQL_DISTANCE.format(t="p") + ", p.display_name, p.spot_id LIMIT $14"
)
_PG_SPOTS_NOW = _PG_SPOTS.replace("{usable}", "=")
_PG_SPOTS_LATER = _PG_SPOTS.replace("{usable}", "<>")
# Rows fetched beyond max_results, so ties and rounding between SQL and Python ordering never cut.
_SPOT_MARGIN = 64


def _near_parameters(search: Search) -> list[Any]:
    min_lat, max_lat, ranges = bounding_box(search.lat, search.lng, search.radius_m)
    (west, east), (west2, east2) = ranges[0], ranges[-1]
    return [search.lat, search.lng, search.radius_m + 1.0, min_lat, max_lat, west, east, west2, east2]


class PgReader:
    """A few connections of PostgreSQL's own driver (asyncpg) for the search statements.

    Borrowing from the engine's pool costs two more round trips a call (its pre-ping and its reset
    on return); these connections run single statements in autocommit, so they carry no state
    between calls and need neither. They open on demand, at most `size` (callers queue beyond
    that), and close when the engine is disposed (`Database.close`). A connection that fails is
    dropped and replaced on demand.
    """

    def __init__(self, db: Database, size: int = 10) -> None:
        self.dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self.opened: list[asyncpg.Connection] = []
        self.idle: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        self.prefilled = False
        event.listen(db.engine.sync_engine, "engine_disposed", lambda _engine: self.close())

    async def _connect(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self.dsn, server_settings={"application_name": "cityos-parking-search"}
        )
        self.opened.append(connection)
        return connection

    async def fetch(self, statement: str, *parameters: Any) -> list[asyncpg.Record]:
        if not self.opened and not self.prefilled:
            # Open the whole set at once, on the first search, rather than one by one under load: a new
            # PostgreSQL connection forks a backend, tens of milliseconds of the machine's CPU that
            # would otherwise stall the searches in flight at that moment.
            self.prefilled = True
            opened = await asyncio.gather(
                *(self._connect() for _ in range(self.size - 1)), return_exceptions=True
            )
            for connection in opened:
                if isinstance(connection, asyncpg.Connection):
                    self.idle.put_nowait(connection)
        if self.idle.empty() and len(self.opened) < self.size:
            connection = await self._connect()
        else:
            connection = await self.idle.get()
        try:
            return list(await connection.fetch(statement, *parameters))
        except BaseException:
            self.opened.remove(connection)
            connection.terminate()
            raise
        finally:
            if connection in self.opened:
                self.idle.put_nowait(connection)

    def close(self) -> None:
        for connection in self.opened:
            connection.terminate()
        self.opened.clear()
        self.idle = asyncio.Queue()
        self.prefilled = False


class OutboxHead:
    """The outbox head for many concurrent searches with one statement in flight at a time.

    A search must see every change committed before it began, so it may not use a head read that was
    already on its way; it waits for the next one. Searches arriving while a read is in flight all share
    the read sent after it: under load one statement serves a whole batch of searches, alone a search
    pays one round trip as before."""

    def __init__(self, reader: PgReader) -> None:
        self.reader = reader
        self._next: asyncio.Future[int] | None = None
        self._running: asyncio.Task[None] | None = None

    async def read(self) -> int:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(self._next)

    async def _run(self) -> None:
        try:
            while self._next is not None:
                waiting, self._next = self._next, None
                try:
                    head = int((await self.reader.fetch(_PG_HEAD))[0][0])
                except asyncio.CancelledError:
                    waiting.cancel()
                    raise
                except Exception as error:  # every search waiting on this read gets its error
                    waiting.set_exception(error)
                else:
                    waiting.set_result(head)
        finally:
            self._running = None


class SiteSnapshot:
    """Every site's facts, spot counts and reservations as of an outbox position, in memory, for the
    SITES search on PostgreSQL.

    Every change to sites, spots, reservations and gate counts commits with its event, in the site's
    cell (`registry.emit`), and outbox positions are handed out in commit order. So a search first
    reads the outbox head (one index lookup): at the snapshot's position, nothing changed; ahead of
    it, the sites in the cells (or named by the subjects) of the new events are read again, in one
    statement that also returns the new position. A search therefore sees every change committed
    before it began, on any replica, and costs the database one tiny statement while nothing
    changes. Reservations are kept with their windows and opening hours with the tariffs, so what
    time changes (a hold starting, a site closing) is worked out at each search. Far behind (more
    than `MAX_BEHIND` events) or older than `FULL_RELOAD_S`, everything is read again (dropping
    reservations that ended).
    """

    MAX_BEHIND = 1000
    FULL_RELOAD_S = 300.0

    def __init__(self, reader: PgReader) -> None:
        self.reader = reader
        self.head = OutboxHead(reader)
        self.position = -1
        self.loaded_at = 0.0
        self.tallies: dict[str, Tally] = {}
        self.by_latitude: list[tuple[float, str]] = []
        self.lock = asyncio.Lock()

    async def near(self, search: Search, now: datetime) -> list[Tally]:
        """The sites in the search's bounding box, current as of now."""
        await self._refresh(now)
        min_lat, max_lat, ranges = bounding_box(search.lat, search.lng, search.radius_m)
        start = bisect.bisect_left(self.by_latitude, (min_lat, ""))
        found = []
        for latitude, site_id in self.by_latitude[start:]:
            if latitude > max_lat:
                break
            tally = self.tallies[site_id]
            if any(low <= tally.site.longitude <= high for low, high in ranges):
                found.append(tally)
        return found

    async def _refresh(self, now: datetime) -> None:
        loop = asyncio.get_running_loop()
        stale = loop.time() - self.loaded_at > self.FULL_RELOAD_S
        if not stale and await self.head.read() == self.position:
            return
        async with self.lock:
            head = await self.head.read()
            stale = loop.time() - self.loaded_at > self.FULL_RELOAD_S
            if head == self.position and not stale:
                return  # another search refreshed it meanwhile
            full = stale or self.position < 0 or head - self.position > self.MAX_BEHIND
            statement = _PG_SNAPSHOT_ALL if full else _PG_SNAPSHOT_TOUCHED
            after = _NO_POSITION if full else self.position  # a full read looks for no deletions
            rows = await self.reader.fetch(statement, list(LIVE_RESERVATIONS), now, after)
            tallies = {} if full else dict(self.tallies)
            for subject in rows[0][1] or ():
                tallies.pop(subject.partition("/")[2], None)
            for row in rows:
                if row[2] is not None:
                    tally = _tally_of(row)
                    tallies[tally.site.site_id] = tally
            self.tallies = tallies
            self.by_latitude = sorted((t.site.latitude, site_id) for site_id, t in tallies.items())
            self.position = rows[0][0]
            if full:
                self.loaded_at = loop.time()


def _tally_of(row: Sequence[Any]) -> Tally:
    """A row of `_PG_SNAPSHOT` as a site's tally."""
    site = SiteFacts(
        site_id=row[2],
        display_name=row[3],
        kind=row[4],
        detection_type=row[5],
        allowed_vehicle_types=_types(row[6]),
        tariff=_tariff_dict(row[7]),
        capacity=row[8],
        gate_occupied=row[9],
        latitude=row[10],
        longitude=row[11],
        area_cell=row[12],
    )
    tally = Tally(site)
    for group_id, status, types, n in json.loads(row[13] or "[]"):
        tally.spots.append((group_id, status, _types(types), n))
    for spot_id, group_id, status, types, start, end in json.loads(row[14] or "[]"):
        tally.holds.append(
            Hold(
                spot_id,
                group_id,
                status,
                _types(types),
                datetime.fromisoformat(start),
                datetime.fromisoformat(end),
            )
        )
    return tally


def _nearest_spots(search: Search, rows: Iterable[Sequence[Any]]) -> list[tuple[float, str]]:
    """(distance, spot id) of the nearest usable spots: rows of (spot id, site id, display name,
    latitude, longitude, the spot's types, the site's types, the site's tariff), the last three as
    JSON text; within the radius, taking the vehicle, at a site open then."""
    near = []
    for spot_id, _, display_name, lat, lng, spot_types, site_types, tariff, *_ in rows:
        distance = haversine_m(search.lat, search.lng, lat, lng)
        if distance > search.radius_m:
            continue
        if search.vehicle_type and search.vehicle_type not in (_types(spot_types) or _types(site_types)):
            continue
        near.append((distance, display_name, spot_id, tariff))
    near.sort(key=lambda n: n[:3])
    opening: dict[str, bool] = {}
    chosen: list[tuple[float, str]] = []
    for distance, _, spot_id, tariff in near:
        if tariff not in opening:
            opening[tariff] = tariff_open_at(_tariff_dict(tariff), search.at, key=tariff)
        if opening[tariff]:
            chosen.append((distance, spot_id))
            if len(chosen) == search.max_results:
                break
    return chosen


async def _pg_search_spots(reader: PgReader, search: Search) -> list[availability_pb2.SpotMatch]:
    statement = _PG_SPOTS_NOW if search.live else _PG_SPOTS_LATER
    parameters = [
        *_near_parameters(search),
        FREE if search.live else CLOSED,
        search.vehicle_type,
        list(LIVE_RESERVATIONS),
        search.at,
    ]
    limit = search.max_results + _SPOT_MARGIN
    rows = await reader.fetch(statement, *parameters, limit)
    chosen = _nearest_spots(search, rows)
    if len(chosen) < search.max_results and len(rows) == limit:  # closed sites took some: read on
        rows = await reader.fetch(statement, *parameters, None)
        chosen = _nearest_spots(search, rows)
    by_id = {row[0]: row for row in rows}
    return [
        availability_pb2.SpotMatch(spot=spot_to_proto(_spot_of(by_id[spot_id])), distance_m=distance)
        for distance, spot_id in chosen
    ]


# The columns of `_PG_SPOTS`, by name.
_SPOT_FIELDS = (
    "spot_id",
    "site_id",
    "display_name",
    "latitude",
    "longitude",
    "allowed_vehicle_types",
    "site_types",
    "tariff",
    "group_id",
    "sensor_id",
    "width_m",
    "length_m",
    "status",
    "status_time",
    "area_cell",
    "etag",
    "create_time",
    "update_time",
    "sensor_heard_time",
    "forbidden_parking",
)


def _spot_of(row: Sequence[Any]) -> SpotRow:
    """A row of `_PG_SPOTS` in the shape `registry.spot_to_proto` reads (one conversion for both
    paths)."""
    values = dict(zip(_SPOT_FIELDS, row, strict=True))
    values["allowed_vehicle_types"] = list(_types(values["allowed_vehicle_types"]))
    return SimpleNamespace(**values)  # type: ignore[return-value]


# -- the search request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    lat: float
    lng: float
    radius_m: float
    vehicle_type: str
    permit: str
    at: datetime
    live: bool
    level: int
    max_results: int
    include_full: bool


def _finite(value: float) -> bool:
    return math.isfinite(value)


def parse_search(request: availability_pb2.SearchAvailabilityRequest, now: datetime) -> Search:
    """The request checked, every problem named at once."""
    problems: Violations = []
    if not request.HasField("near"):
        problems.append(("near", "is required: the point to search around"))
    else:
        if not _finite(request.near.latitude) or not -90 <= request.near.latitude <= 90:
            problems.append(("near.latitude", "must be a number from -90 to 90"))
        if not _finite(request.near.longitude) or not -180 <= request.near.longitude <= 180:
            problems.append(("near.longitude", "must be a number from -180 to 180"))
    if not _finite(request.radius_m) or not 1 <= request.radius_m <= MAX_RADIUS_M:
        problems.append(("radius_m", f"must be from 1 to {MAX_RADIUS_M:,.0f} metres"))
    if request.vehicle_type and request.vehicle_type not in VEHICLE_TYPES:
        problems.append(
            ("vehicle_type", f"{request.vehicle_type!r} is not one of {', '.join(sorted(VEHICLE_TYPES))}")
        )
    if request.permit and not PERMIT.match(request.permit):
        problems.append(("permit", "a permit class name, [a-z][a-z0-9-]{1,62}"))
    if request.level not in (
        availability_pb2.SEARCH_LEVEL_UNSPECIFIED,
        availability_pb2.SEARCH_LEVEL_SITES,
        availability_pb2.SEARCH_LEVEL_SPOTS,
    ):
        problems.append(("level", "must be SITES or SPOTS"))
    if not 0 <= request.max_results <= MAX_RESULTS:
        problems.append(("max_results", f"from 1 to {MAX_RESULTS} (0 means {DEFAULT_RESULTS})"))
    at, live = now, True
    if request.HasField("at"):
        try:
            at = request.at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            problems.append(("at", "is not a valid time"))
        else:
            if at > now + MAX_AHEAD:
                problems.append(("at", f"at most {MAX_AHEAD.days} days ahead"))
            elif at < now - PAST_SLACK:
                problems.append(("at", "must not be in the past (leave it unset for now)"))
            elif at > now:
                live = False
            else:
                at = now
    if problems:
        raise InvalidArgument.many(problems)
    return Search(
        lat=request.near.latitude,
        lng=request.near.longitude,
        radius_m=request.radius_m,
        vehicle_type=request.vehicle_type,
        permit=request.permit,
        at=at,
        live=live,
        level=request.level or availability_pb2.SEARCH_LEVEL_SITES,
        max_results=request.max_results or DEFAULT_RESULTS,
        include_full=request.include_full,
    )


# -- the servicer -----------------------------------------------------------------------------------


class AvailabilityServicer(availability_pb2_grpc.AvailabilityServiceServicer):
    """`cityos.parking.v1.AvailabilityService`. Reading availability is public, like the sites;
    recording gate passages is the site owner's or operator's."""

    def __init__(
        self, db: Database, areas: AreaRegistry, *, poll_interval_s: float = 1.0, recheck_s: float = 60.0
    ) -> None:
        self.db = db
        self.areas = areas
        self.poll_interval_s = poll_interval_s
        self.recheck_s = recheck_s
        self.pg_reader: PgReader | None = None
        self.site_snapshot: SiteSnapshot | None = None

    def _reader(self) -> PgReader:
        if self.pg_reader is None:
            self.pg_reader = PgReader(self.db)
        return self.pg_reader

    def _snapshot(self) -> SiteSnapshot:
        if self.site_snapshot is None:
            self.site_snapshot = SiteSnapshot(self._reader())
        return self.site_snapshot

    # -- GetSiteAvailability ----------------------------------------------------------------------

    async def GetSiteAvailability(
        self, request: availability_pb2.GetSiteAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> availability_pb2.SiteAvailability:
        site_id = name_id(request.site, "sites", "site")
        now = self.db.clock.now()
        async with self.db.read() as session:
            row = (await session.execute(select(*SITE_COLUMNS).where(SiteRow.site_id == site_id))).first()
            if row is None:
                raise not_found("site", request.site)
            site = SiteFacts.of(row)
            groups = (
                await session.execute(
                    select(GroupRow.group_id, GroupRow.display_name)
                    .where(GroupRow.site_id == site_id)
                    .order_by(GroupRow.group_id)
                )
            ).all()
            tally = (await load_tallies(session, [site], now))[site_id]
        answer = availability_of(site, site_occupancy(tally, now))
        counts = group_occupancies(tally, now, [group_id for group_id, _ in groups])
        answer.groups.extend(
            availability_pb2.GroupAvailability(
                group=f"groups/{group_id}", display_name=display_name, occupancy=counts[group_id]
            )
            for group_id, display_name in groups
        )
        return answer

    # -- SearchAvailability -----------------------------------------------------------------------

    async def SearchAvailability(
        self, request: availability_pb2.SearchAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> availability_pb2.SearchAvailabilityResponse:
        now = self.db.clock.now()
        search = parse_search(request, now)
        if search.level == availability_pb2.SEARCH_LEVEL_SPOTS:
            return availability_pb2.SearchAvailabilityResponse(spots=await self._search_spots(search))
        return availability_pb2.SearchAvailabilityResponse(sites=await self._search_sites(search, now))

    async def _search_sites(self, search: Search, now: datetime) -> list[availability_pb2.SiteMatch]:
        if self.db.dialect == "postgresql":
            tallies = await self._snapshot().near(search, now)
        else:
            async with self.db.read() as session:
                rows = await session.execute(
                    select(*SITE_COLUMNS).where(
                        _box_clause(
                            SiteRow.latitude, SiteRow.longitude, search.lat, search.lng, search.radius_m
                        )
                    )
                )
                sites = [SiteFacts.of(row) for row in rows]
                tallies = list((await load_tallies(session, sites, now, search.at)).values())
        candidates = []
        for tally in tallies:
            site = tally.site
            distance = haversine_m(search.lat, search.lng, site.latitude, site.longitude)
            if distance <= search.radius_m:
                candidates.append((distance, site.display_name, site.site_id, tally))
        candidates.sort(key=lambda c: c[:3])
        matches: list[availability_pb2.SiteMatch] = []
        for distance, _, _, tally in candidates:
            occupancy = site_occupancy(tally, now)
            available = spaces_for(
                tally, search.vehicle_type, search.at, live=search.live, occupancy=occupancy
            )
            if available <= 0 and not search.include_full:
                continue
            matches.append(
                availability_pb2.SiteMatch(
                    site=availability_of(tally.site, occupancy, permit=search.permit, at=search.at),
                    distance_m=distance,
                    available=available,
                )
            )
            if len(matches) == search.max_results:
                break
        return matches

    async def _search_spots(self, search: Search) -> list[availability_pb2.SpotMatch]:
        if self.db.dialect == "postgresql":
            return await _pg_search_spots(self._reader(), search)
        live_hold = exists().where(
            ReservationRow.spot_id == SpotRow.spot_id,
            ReservationRow.state.in_(LIVE_RESERVATIONS),
            ReservationRow.start_time <= search.at,
            ReservationRow.end_time > search.at,
        )
        usable = SpotRow.status == FREE if search.live else SpotRow.status != CLOSED
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(
                        SpotRow.spot_id,
                        SpotRow.site_id,
                        SpotRow.display_name,
                        SpotRow.latitude,
                        SpotRow.longitude,
                        cast(SpotRow.allowed_vehicle_types, Text).label("spot_types"),
                        cast(SiteRow.allowed_vehicle_types, Text).label("site_types"),
                        cast(SiteRow.tariff, Text).label("tariff_text"),
                    )
                    .join(SiteRow, SiteRow.site_id == SpotRow.site_id)
                    .where(
                        _box_clause(
                            SpotRow.latitude, SpotRow.longitude, search.lat, search.lng, search.radius_m
                        ),
                        usable,
                        ~live_hold,
                    )
                )
            ).all()
            chosen = _nearest_spots(search, rows)
            if not chosen:
                return []
            full = {
                row.spot_id: row
                for row in await session.scalars(
                    select(SpotRow).where(SpotRow.spot_id.in_([spot_id for _, spot_id in chosen]))
                )
            }
        return [
            availability_pb2.SpotMatch(spot=spot_to_proto(full[spot_id]), distance_m=distance)
            for distance, spot_id in chosen
            if spot_id in full
        ]

    # -- WatchAvailability ------------------------------------------------------------------------

    async def WatchAvailability(
        self, request: availability_pb2.WatchAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[availability_pb2.WatchAvailabilityResponse]:
        watch = _Watch(self, request)
        async for response in watch.run():
            yield response

    # -- RecordGatePassage ------------------------------------------------------------------------

    async def RecordGatePassage(
        self, request: availability_pb2.RecordGatePassageRequest, context: grpc.aio.ServicerContext
    ) -> availability_pb2.SiteAvailability:
        """Entries raise and exits lower the site's count of vehicles inside. The count is clamped to
        0..the spaces (capacity, or spots) not closed: gate counters miss and double-count vehicles,
        and a count past either end means the counter drifted, not that the site holds -3 cars; the
        clamp lets the next real passages correct it. Emits `parking.gate.passage` (payload: the
        request, with `time` filled in when it was unset) and, when the site crosses FULL,
        `parking.site.full` / `parking.site.available`. Idempotent by request_id."""
        problems: Violations = []
        site_id = ""
        try:
            site_id = name_id(request.site, "sites", "site")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if not RESOURCE_ID.match(request.gate):
            problems.append(("gate", "the gate's name, [a-z0-9][a-z0-9-]{0,62}"))
        if request.direction not in (
            availability_pb2.GATE_DIRECTION_ENTRY,
            availability_pb2.GATE_DIRECTION_EXIT,
        ):
            problems.append(("direction", "must be ENTRY or EXIT"))
        if not 1 <= request.count <= MAX_GATE_COUNT:
            problems.append(("count", f"from 1 to {MAX_GATE_COUNT:,} vehicles"))
        if request.HasField("time"):
            try:
                passed = request.time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                problems.append(("time", "is not a valid time"))
            else:
                if passed > self.db.clock.now() + GATE_CLOCK_SKEW:
                    problems.append(("time", "is in the future; check the gate's clock"))
        if problems:
            raise InvalidArgument.many(problems)

        async def record(tx: Tx) -> availability_pb2.SiteAvailability:
            row = await tx.session.get(SiteRow, site_id, with_for_update=True)
            if row is None or not can_reach(row, current_call().principal, Access.WRITE):
                raise not_found("site", request.site)
            if row.kind != parking_pb2.SITE_KIND_OFF_STREET or not SiteFacts.of(row).balancing:
                raise FailedPrecondition(
                    f"{request.site} does not count at gates: only an off-street site with detection "
                    "BALANCING does (its spots' sensors or operators count the others)",
                    reason="SITE_NOT_GATED",
                    metadata={"site": request.site},
                )
            occupancy = (await count_occupancy(tx.session, [row], tx.now)).sites[site_id]
            top = occupancy.total - occupancy.closed
            change = (
                request.count
                if request.direction == availability_pb2.GATE_DIRECTION_ENTRY
                else -request.count
            )
            row.gate_occupied = min(max(min(row.gate_occupied, top) + change, 0), top)
            row.update_time = tx.now
            passage = availability_pb2.RecordGatePassageRequest()
            passage.CopyFrom(request)
            if not passage.HasField("time"):
                passage.time.CopyFrom(_stamp(tx.now))
            emit(tx, "gate.passage", passage, request.site, row)
            occupancy = await announce_site_status(tx, row)
            return availability_of(SiteFacts.of(row), occupancy)

        return await idempotent(self.db, request, availability_pb2.SiteAvailability, record)


class _Watch:
    """One WatchAvailability stream: its sites, what it last sent of each, and its outbox position."""

    def __init__(
        self, servicer: AvailabilityServicer, request: availability_pb2.WatchAvailabilityRequest
    ) -> None:
        self.db = servicer.db
        self.poll_interval_s = servicer.poll_interval_s
        self.recheck_s = servicer.recheck_s
        problems: Violations = []
        if request.area and request.sites:
            problems.append(("sites", "watch an area or a list of sites, not both"))
        if len(request.sites) > MAX_WATCHED_SITES:
            problems.append(("sites", f"at most {MAX_WATCHED_SITES} sites"))
        self.listed: list[str] = []
        for index, name in enumerate(request.sites):
            try:
                self.listed.append(name_id(name, "sites", f"sites[{index}]"))
            except InvalidArgument as error:
                problems += [(v.field, v.description) for v in error.violations]
        if problems:
            raise InvalidArgument.many(problems)
        self.area = servicer.areas.resolve(request.area) if request.area else None
        self.sites: dict[str, SiteFacts] = {}
        self.sent: dict[str, bytes] = {}

    async def _resolve(self, session: AsyncSession) -> dict[str, SiteFacts]:
        statement = select(*SITE_COLUMNS)
        if self.listed:
            statement = statement.where(SiteRow.site_id.in_(self.listed))
        elif self.area is not None:
            statement = statement.where(SiteRow.area_cell.in_(sorted(self.area.cells)))
        sites = {}
        for row in await session.execute(statement):
            if self.area is None or self.area.contains(row.latitude, row.longitude):
                sites[row.site_id] = SiteFacts.of(row)
        return sites

    async def _changes(
        self, site_ids: Iterable[str] | None, when: datetime, *, resolve: bool = False
    ) -> list[availability_pb2.WatchAvailabilityResponse]:
        """Recount the sites (all watched ones when None) and answer those whose counts changed."""
        now = self.db.clock.now()
        async with self.db.read() as session:
            if resolve or site_ids is None:
                self.sites = await self._resolve(session)
                targets = list(self.sites.values())
            else:
                targets = [self.sites[s] for s in site_ids if s in self.sites]
                # The site's own row may have changed (a gate count, its tariff): read it again.
                if targets:
                    fresh = await session.execute(
                        select(*SITE_COLUMNS).where(SiteRow.site_id.in_([t.site_id for t in targets]))
                    )
                    for row in fresh:
                        self.sites[row.site_id] = SiteFacts.of(row)
                    targets = [self.sites[t.site_id] for t in targets]
            tallies = await load_tallies(session, targets, now)
        responses = []
        for site in sorted(targets, key=lambda s: s.site_id):
            answer = availability_of(site, site_occupancy(tallies[site.site_id], now))
            encoded = answer.SerializeToString(deterministic=True)
            if self.sent.get(site.site_id) != encoded:
                self.sent[site.site_id] = encoded
                responses.append(availability_pb2.WatchAvailabilityResponse(site=answer, time=_stamp(when)))
        return responses

    def _conditions(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [or_(*(Outbox.type.startswith(p) for p in WATCHED_EVENTS))]
        if self.listed:
            cells = sorted({site.area_cell for site in self.sites.values()})
            subjects = [f"sites/{site_id}" for site_id in self.listed]
            conditions.append(or_(Outbox.area_cell.in_(cells), Outbox.subject.in_(subjects)))
        elif self.area is not None:
            conditions.append(Outbox.area_cell.in_(sorted(self.area.cells)))
        return conditions

    def _touched(self, rows: Sequence[Outbox]) -> tuple[set[str], bool, datetime]:
        """The watched sites a batch of events touches, whether the set of sites may have changed, and
        when the last of them committed."""
        by_cell: dict[str, set[str]] = {}
        for site in self.sites.values():
            by_cell.setdefault(site.area_cell, set()).add(site.site_id)
        touched: set[str] = set()
        membership = False
        for row in rows:
            if row.subject.startswith("sites/") and row.type.startswith("parking.site."):
                site_id = row.subject.partition("/")[2]
                if not self.listed or site_id in self.listed:
                    touched.add(site_id)
                    membership = membership or row.type in (
                        "parking.site.created",
                        "parking.site.updated",
                        "parking.site.deleted",
                    )
            touched |= by_cell.get(row.area_cell, set())
        return touched, membership, rows[-1].occurred_at

    async def run(self) -> AsyncIterator[availability_pb2.WatchAvailabilityResponse]:
        position = await self.db.last_sequence()  # read first: nothing committed after it is missed
        for response in await self._changes(None, self.db.clock.now()):
            yield response
        loop = asyncio.get_running_loop()
        next_recheck = loop.time() + self.recheck_s
        async with self.db.notifier.subscription() as committed:
            while True:
                committed.clear()
                rows, moved_to = await read_ordered(self.db, Outbox, position, self._conditions(), 500)
                position = moved_to
                if rows:
                    touched, membership, when = self._touched(rows)
                    if touched or membership:
                        for response in await self._changes(touched, when, resolve=membership):
                            yield response
                    if len(rows) == 500:
                        continue
                if loop.time() >= next_recheck:
                    next_recheck = loop.time() + self.recheck_s
                    for response in await self._changes(None, self.db.clock.now()):
                        yield response
                wait = min(self.poll_interval_s, max(0.0, next_recheck - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(committed.wait(), wait)


def availability_mount(db: Database, areas: AreaRegistry, *, poll_interval_s: float = 1.0) -> Mount:
    """The AvailabilityService mount of the parking app."""
    return Mount(
        descriptor=availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"],
        servicer=AvailabilityServicer(db, areas, poll_interval_s=poll_interval_s),
        add_to_server=availability_pb2_grpc.add_AvailabilityServiceServicer_to_server,
    )


__all__ = [
    "AvailabilityServicer",
    "Counts",
    "SiteFacts",
    "announce_site_status",
    "availability_mount",
    "bounding_box",
    "count_occupancy",
    "haversine_m",
]
