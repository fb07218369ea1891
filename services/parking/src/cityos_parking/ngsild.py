"""The parking service's NGSI-LD view: sites, groups and spots as FIWARE Smart Data Model entities.

A pure module: frozen dataclasses in (built by the service from its rows, independent of the database),
JSON-ready dicts out, nothing fetched over the network. Three entry points:

- `key_values(entity)`: the NGSI-LD simplified (keyValues) form. It is what the Smart Data Models schemas
  (``dataModel.Parking`` OnStreetParking, OffStreetParking, ParkingGroup, ParkingSpot) describe.
- `normalized(entity)`: the normalized form, every attribute a Property, Relationship or GeoProperty
  object; `observedAt` where the time of the observation is known (a spot's status, a site's counts).
- `reduce(normalized_entity)`: the standard simplification (Property and GeoProperty to their value,
  Relationship to its object, sub-attributes such as observedAt dropped).
  ``reduce(normalized(x)) == key_values(x)`` for every input: both forms are built from one attribute list.

Entity ids are URNs, ``urn:ngsi-ld:<Type>:<our id>``; a site's type is OnStreetParking or OffStreetParking,
so a spot's ``refParkingSite`` names the site's own entity id. Organisations are
``urn:ngsi-ld:Organization:<id>`` and sensors ``urn:ngsi-ld:Device:<id>`` (the Device model's ids).

`@context` is the Smart Data Models ``dataModel.Parking`` context (it defines every term used here, for
all four Parking models) followed by the NGSI-LD core context, pinned to v1.8 so the meaning of
Property/Relationship/GeoProperty/observedAt cannot drift. The core context comes last: NGSI-LD treats it
as the last, non-overridable context in any case, and putting it there makes that explicit.

Mappings from our vocabulary to the models' (where they differ):

- site kind ``on-street``/``off-street`` -> entity type OnStreetParking/OffStreetParking and a spot's or
  group's ``category`` ``onStreet``/``offStreet``.
- detection ``single-space``/``balancing``/``manual`` -> ``occupancyDetectionType``
  ``singleSpaceDetection``/``balancing``/``manual`` (an array of one).
- vehicle types (registry.VEHICLE_TYPES): ``truck`` -> ``lorry``; ``electric-vehicle`` -> ``car`` plus the
  site category ``forElectricalCharging``; the others keep their names.
- off-street status ``open|full|almostFull|spacesAvailable|closedAbnormal`` -> ``status`` (the model's
  values already; an array of one, as OffStreetParking requires).
- tariff: price per minute (Decimal) -> ``priceRatePerMinute`` (a JSON number) and ``priceCurrency``;
  a zero price adds the category ``free``, any other ``feeCharged``; maximum stay -> ISO 8601 duration in
  ``maximumParkingDuration``; opening hours -> schema.org ``openingHours`` text ("Mo-Fr 08:00-20:00",
  windows joined by "; ", no windows -> "Mo-Su 00:00-24:00"). Free minutes and the daily cap have no
  model attribute and are not shown.
- permits (classes of which one is needed to park, the model's ``requiredPermit`` semantics): well-known
  names map to the DATEX II PermitTypeEnum (PERMIT_NAMES); their hours go to ``permitActiveHours``
  (keyed by the model's permit name, schema.org opening-hours text). OffStreetParking only accepts the
  enum, so an unknown name there becomes ``specificIdentifiedVehiclePermit`` (our permits are checked by
  plate); OnStreetParking takes any text, so an unknown name becomes ``<camelCaseName>Permit``.
- group categories (free labels) -> ParkingGroup ``category`` through GROUP_CATEGORIES (``floor-<n>`` and
  ``level-<n>`` -> ``completeFloor``; labels that already are model values pass); others are not shown.
- spot status ``free|occupied|closed|unknown`` is the model's vocabulary as it is; the time of the last
  change is the ``observedAt`` of ``status`` (normalized form only: keyValues has no place for it).
- sizes of 0 or unknown, counts the model forbids (a group or garage with no spots: ``totalSpotNumber``
  minimum 1) and empty lists are left out rather than shown wrongly.

Attributes the entity's own schema does not define but a sibling Parking model does (so the term is in the
same @context) are listed in EXTENSIONS: an on-street site's tariff and opening hours, an off-street
site's permitActiveHours.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
PARKING_CONTEXT: Final = (
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld"
)
CONTEXT: Final = (PARKING_CONTEXT, CORE_CONTEXT)

SiteKind = Literal["on-street", "off-street"]
DetectionType = Literal["single-space", "balancing", "manual"]
SpotStatus = Literal["free", "occupied", "closed", "unknown"]
OffStreetStatus = Literal["open", "full", "almostFull", "spacesAvailable", "closedAbnormal"]
AttributeType = Literal["Property", "Relationship", "GeoProperty"]

ENTITY_TYPES: Final[Mapping[SiteKind, str]] = {
    "on-street": "OnStreetParking",
    "off-street": "OffStreetParking",
}
KIND_CATEGORY: Final[Mapping[SiteKind, str]] = {"on-street": "onStreet", "off-street": "offStreet"}
DETECTION: Final[Mapping[DetectionType, str]] = {
    "single-space": "singleSpaceDetection",
    "balancing": "balancing",
    "manual": "manual",
}
VEHICLE_TYPES: Final[Mapping[str, str]] = {
    "car": "car",
    "motorcycle": "motorcycle",
    "bicycle": "bicycle",
    "truck": "lorry",
    "bus": "bus",
    "van": "van",
    "electric-vehicle": "car",
}
SPOT_STATUSES: Final = frozenset({"free", "occupied", "closed", "unknown"})
OFF_STREET_STATUSES: Final = frozenset({"open", "full", "almostFull", "spacesAvailable", "closedAbnormal"})
# Our permit class names -> DATEX II PermitTypeEnum (as the Parking models spell it).
PERMIT_NAMES: Final[Mapping[str, str]] = {
    "resident": "residentPermit",
    "residents": "residentPermit",
    "disabled": "disabledPermit",
    "employee": "employeePermit",
    "employees": "employeePermit",
    "staff": "employeePermit",
    "student": "studentPermit",
    "students": "studentPermit",
    "visitor": "visitorPermit",
    "visitors": "visitorPermit",
    "government": "governmentPermit",
    "fair": "fairPermit",
    "taxi": "taxiPermit",
    "car-sharing": "carSharingPermit",
    "carpooling": "carpoolingPermit",
    "emergency": "emergencyVehiclePermit",
    "maintenance": "maintenanceVehiclePermit",
    "road-works": "roadWorksPermit",
    "care-taking": "careTakingPermit",
    "blue-zone": "blueZonePermit",
}
OFF_STREET_PERMITS: Final = frozenset(
    {
        "employeePermit",
        "fairPermit",
        "governmentPermit",
        "noPermitNeeded",
        "residentPermit",
        "specificIdentifiedVehiclePermit",
        "studentPermit",
        "visitorPermit",
    }
)
# Our group labels -> ParkingGroup category.
GROUP_CATEGORIES: Final[Mapping[str, str]] = {
    "residents": "onlyResidents",
    "disabled": "onlyDisabled",
    "ev-charging": "onlyElectricalCharging",
    "electric-vehicle": "onlyElectricalCharging",
    "loading": "loadUnloadZone",
    "deliveries": "loadUnloadZone",
    "permit": "onlyWithPermit",
    "blue-zone": "blueZone",
    "green-zone": "greenZone",
    "free": "free",
    "fee": "feeCharged",
    "statistics": "statisticsOnly",
}
GROUP_MODEL_CATEGORIES: Final = frozenset(
    {
        "adjacentSpaces",
        "blueZone",
        "completeFloor",
        "free",
        "feeCharged",
        "greenZone",
        "loadUnloadZone",
        "nonAdjacentSpaces",
        "offStreet",
        "onlyDisabled",
        "onlyElectricalCharging",
        "onlyResidents",
        "onlyWithPermit",
        "onStreet",
        "particularConditionsSpaces",
        "shortTermMediumTermLongTerm",
        "statisticsOnly",
        "vehicleTypeSpaces",
    }
)
_FLOOR = re.compile(r"^(floor|level)-[a-z0-9]+$")
# Attributes shown on an entity whose schema does not define them; each is defined by a sibling model
# of dataModel.Parking (so PARKING_CONTEXT defines the term).
EXTENSIONS: Final[Mapping[str, frozenset[str]]] = {
    "OnStreetParking": frozenset({"priceRatePerMinute", "priceCurrency", "openingHours"}),
    "OffStreetParking": frozenset({"permitActiveHours"}),
    "ParkingGroup": frozenset(),
    "ParkingSpot": frozenset(),
}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,199}$")
_CLOCK = re.compile(r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DAYS = ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")


def _check_id(value: str, what: str) -> None:
    if not _ID.match(value):
        raise ValueError(f"{what} {value!r} cannot be part of an NGSI-LD URN ([A-Za-z0-9._~-], 1-200)")


def _check_time(value: datetime | None, what: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _check_counts(*pairs: tuple[str, int | None]) -> None:
    for what, count in pairs:
        if count is not None and count < 0:
            raise ValueError(f"{what} must not be negative, got {count}")


@dataclass(frozen=True)
class GeoPoint:
    """WGS 84 degrees. GeoJSON writes it [lng, lat]; see `geojson`."""

    lat: float
    lng: float

    def __post_init__(self) -> None:
        # The schemas accept any numbers as coordinates, so a swapped pair would pass them: refuse it here.
        if not -90 <= self.lat <= 90:
            raise ValueError(f"latitude {self.lat} is outside -90..90 (lat and lng swapped?)")
        if not -180 <= self.lng <= 180:
            raise ValueError(f"longitude {self.lng} is outside -180..180")

    def position(self) -> list[float]:
        return [self.lng, self.lat]


@dataclass(frozen=True)
class Address:
    street_address: str | None = None
    locality: str | None = None
    district: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class WeeklyWindow:
    """ISO weekdays 1 (Monday) to 7; empty means every day. ``HH:MM``; an end not after the start runs past
    midnight."""

    start: str
    end: str
    weekdays: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any(not 1 <= day <= 7 for day in self.weekdays):
            raise ValueError(f"weekdays {self.weekdays} must be 1 (Monday) to 7 (Sunday)")
        for clock in (self.start, self.end):
            if not _CLOCK.match(clock):
                raise ValueError(f"{clock!r} is not HH:MM")


@dataclass(frozen=True)
class Permit:
    """A permit class of which at least one is needed to park (at its hours; no hours: always)."""

    name: str
    hours: tuple[WeeklyWindow, ...] = ()


@dataclass(frozen=True)
class Tariff:
    price_per_minute: Decimal
    currency: str
    maximum_stay: timedelta | None = None
    # None: always open.
    opening_hours: tuple[WeeklyWindow, ...] | None = None

    def __post_init__(self) -> None:
        _number(self.price_per_minute)
        if self.price_per_minute < 0:
            raise ValueError("price_per_minute must not be negative")
        if not _CURRENCY.match(self.currency):
            raise ValueError(f"currency {self.currency!r} is not an ISO 4217 code")
        if self.maximum_stay is not None and self.maximum_stay <= timedelta(0):
            raise ValueError("maximum_stay must be positive")


@dataclass(frozen=True)
class ParkingSite:
    id: str
    name: str
    kind: SiteKind
    location: GeoPoint
    total_spots: int
    available_spots: int
    occupied_spots: int
    out_of_service_spots: int
    detection: DetectionType
    date_modified: datetime
    allowed_vehicle_types: tuple[str, ...] = ()
    # The outline (a street segment, a lot), (lat, lng) pairs; the GeoJSON ring is closed here if needed.
    polygon: tuple[GeoPoint, ...] | None = None
    address: Address | None = None
    area_name: str | None = None
    description: str | None = None
    permits: tuple[Permit, ...] = ()
    tariff: Tariff | None = None
    off_street_status: OffStreetStatus | None = None
    owner_organization: str | None = None
    # When the counts last changed (observedAt of the counts).
    occupancy_modified: datetime | None = None
    # Off-street gate counts over the current period, and when they were taken.
    entrance_count: int | None = None
    exit_count: int | None = None
    access_modified: datetime | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "site id")
        if self.kind not in ENTITY_TYPES:
            raise ValueError(f"site kind {self.kind!r} is not on-street or off-street")
        if self.detection not in DETECTION:
            raise ValueError(f"detection {self.detection!r} is not one of {sorted(DETECTION)}")
        _check_counts(
            ("total_spots", self.total_spots),
            ("available_spots", self.available_spots),
            ("occupied_spots", self.occupied_spots),
            ("out_of_service_spots", self.out_of_service_spots),
            ("entrance_count", self.entrance_count),
            ("exit_count", self.exit_count),
        )
        if self.available_spots + self.occupied_spots + self.out_of_service_spots > self.total_spots:
            raise ValueError("available + occupied + out-of-service spots exceed total_spots")
        for vehicle in self.allowed_vehicle_types:
            if vehicle not in VEHICLE_TYPES:
                raise ValueError(f"vehicle type {vehicle!r} is not one of {sorted(VEHICLE_TYPES)}")
        if self.off_street_status is not None:
            if self.kind != "off-street":
                raise ValueError("off_street_status is for off-street sites only")
            if self.off_street_status not in OFF_STREET_STATUSES:
                raise ValueError(f"off-street status {self.off_street_status!r} is not one of the model's")
        if self.kind != "off-street" and (self.entrance_count is not None or self.exit_count is not None):
            raise ValueError("entrance and exit counts are for off-street sites only")
        if self.polygon is not None and len(self.polygon) < 3:
            raise ValueError("a polygon needs at least three corners")
        if self.owner_organization is not None:
            _check_id(self.owner_organization, "owner organization")
        for when, what in (
            (self.date_modified, "date_modified"),
            (self.occupancy_modified, "occupancy_modified"),
            (self.access_modified, "access_modified"),
        ):
            _check_time(when, what)


@dataclass(frozen=True)
class ParkingGroup:
    id: str
    name: str
    site_id: str
    site_kind: SiteKind
    total_spots: int
    available_spots: int
    date_modified: datetime
    categories: tuple[str, ...] = ()
    location: GeoPoint | None = None
    polygon: tuple[GeoPoint, ...] | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "group id")
        _check_id(self.site_id, "site id")
        if self.site_kind not in ENTITY_TYPES:
            raise ValueError(f"site kind {self.site_kind!r} is not on-street or off-street")
        _check_counts(("total_spots", self.total_spots), ("available_spots", self.available_spots))
        if self.available_spots > self.total_spots:
            raise ValueError("available_spots exceed total_spots")
        if self.polygon is not None and len(self.polygon) < 3:
            raise ValueError("a polygon needs at least three corners")
        _check_time(self.date_modified, "date_modified")


@dataclass(frozen=True)
class ParkingSpot:
    id: str
    name: str
    site_id: str
    category: SiteKind
    location: GeoPoint
    status: SpotStatus
    # When the status last changed (observedAt of status).
    status_time: datetime | None = None
    group_id: str | None = None
    device_id: str | None = None
    width_m: float | None = None
    length_m: float | None = None
    date_modified: datetime | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "spot id")
        _check_id(self.site_id, "site id")
        if self.group_id is not None:
            _check_id(self.group_id, "group id")
        if self.device_id is not None:
            _check_id(self.device_id, "device id")
        if self.category not in ENTITY_TYPES:
            raise ValueError(f"spot category {self.category!r} is not on-street or off-street")
        if self.status not in SPOT_STATUSES:
            raise ValueError(f"spot status {self.status!r} is not one of {sorted(SPOT_STATUSES)}")
        for size, what in ((self.width_m, "width_m"), (self.length_m, "length_m")):
            if size is not None and size < 0:
                raise ValueError(f"{what} must not be negative")
        _check_time(self.status_time, "status_time")
        _check_time(self.date_modified, "date_modified")


Entity = ParkingSite | ParkingGroup | ParkingSpot


@dataclass(frozen=True)
class _Attr:
    name: str
    type: AttributeType
    value: Any
    observed_at: datetime | None = None


def entity_id(entity_type: str, local_id: str) -> str:
    """``urn:ngsi-ld:<Type>:<id>``."""
    _check_id(local_id, f"{entity_type} id")
    return f"urn:ngsi-ld:{entity_type}:{local_id}"


def site_entity_id(site_id: str, kind: SiteKind) -> str:
    return entity_id(ENTITY_TYPES[kind], site_id)


def _instant(value: datetime) -> str:
    """ISO 8601 in UTC with ``Z`` (milliseconds when the time has a fraction)."""
    utc = value.astimezone(UTC)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _number(value: Decimal) -> int | float:
    """A Decimal as a JSON number, refusing one a float would not carry exactly (as written)."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(repr(as_float)) != value.normalize():
        raise ValueError(f"{value} has more digits than a JSON number carries exactly")
    return as_float


def _duration(value: timedelta) -> str:
    """ISO 8601 duration (``PT2H``, ``P1DT30M``)."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")


def _days(weekdays: tuple[int, ...]) -> str:
    days = sorted(set(weekdays)) or list(range(1, 8))
    runs: list[list[int]] = []
    for day in days:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    parts = []
    for run in runs:
        first, last = _DAYS[run[0] - 1], _DAYS[run[-1] - 1]
        if len(run) >= 3:
            parts.append(f"{first}-{last}")
        else:
            parts.extend(_DAYS[day - 1] for day in run)
    return ",".join(parts)


def opening_hours(windows: tuple[WeeklyWindow, ...] | None) -> str:
    """schema.org openingHours text: ``Mo-Fr 08:00-20:00; Sa 09:00-13:00``; None/empty: always."""
    if not windows:
        return "Mo-Su 00:00-24:00"
    return "; ".join(f"{_days(w.weekdays)} {w.start}-{w.end}" for w in windows)


def _camel_permit(name: str) -> str:
    head, *rest = re.split(r"[^A-Za-z0-9]+", name)
    return head + "".join(part[:1].upper() + part[1:] for part in rest) + "Permit"


def permit_name(name: str, kind: SiteKind) -> str:
    """Our permit class name as the model spells it for a site of this kind."""
    mapped = PERMIT_NAMES.get(name)
    if kind == "off-street":
        return mapped if mapped in OFF_STREET_PERMITS else "specificIdentifiedVehiclePermit"
    return mapped or _camel_permit(name)


def group_categories(labels: tuple[str, ...], kind: SiteKind) -> list[str]:
    """Our free group labels as ParkingGroup categories (first the site kind; unknown labels dropped)."""
    out = [KIND_CATEGORY[kind]]
    for label in labels:
        mapped = GROUP_CATEGORIES.get(label)
        if mapped is None and _FLOOR.match(label):
            mapped = "completeFloor"
        if mapped is None and label in GROUP_MODEL_CATEGORIES:
            mapped = label
        if mapped is not None and mapped not in out:
            out.append(mapped)
    return out


def _geometry(point: GeoPoint, polygon: tuple[GeoPoint, ...] | None) -> dict[str, Any]:
    if polygon is None:
        return {"type": "Point", "coordinates": point.position()}
    ring = [corner.position() for corner in polygon]
    if ring[0] != ring[-1]:
        ring.append(list(ring[0]))
    return {"type": "Polygon", "coordinates": [ring]}


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _site_attrs(site: ParkingSite) -> list[_Attr]:
    off = site.kind == "off-street"
    counted = site.occupancy_modified
    attrs = [
        _Attr("name", "Property", site.name),
        _Attr("location", "GeoProperty", _geometry(site.location, site.polygon)),
        _Attr("dateModified", "Property", _instant(site.date_modified)),
        _Attr("occupancyDetectionType", "Property", [DETECTION[site.detection]]),
    ]
    if site.description:
        attrs.append(_Attr("description", "Property", site.description))
    if site.address is not None:
        fields = {
            "streetAddress": site.address.street_address,
            "addressLocality": site.address.locality,
            "district": site.address.district,
            "addressRegion": site.address.region,
            "postalCode": site.address.postal_code,
            "addressCountry": site.address.country,
        }
        address = {key: value for key, value in fields.items() if value}
        if address:
            attrs.append(_Attr("address", "Property", address))
    if site.area_name:
        attrs.append(_Attr("areaServed", "Property", site.area_name))
    if site.owner_organization is not None:
        attrs.append(_Attr("owner", "Property", [entity_id("Organization", site.owner_organization)]))
    # OffStreetParking requires at least one spot; on-street segments may have unmarked (zero) spots.
    if site.total_spots >= 1 or not off:
        attrs.append(_Attr("totalSpotNumber", "Property", site.total_spots))
    attrs += [
        _Attr("availableSpotNumber", "Property", site.available_spots, counted),
        _Attr("occupiedSpotNumber", "Property", site.occupied_spots, counted),
        _Attr("outOfServiceSlotNumber", "Property", site.out_of_service_spots, counted),
    ]
    if off and site.total_spots:
        ratio = round(site.occupied_spots / site.total_spots, 4)
        attrs.append(_Attr("occupancy", "Property", ratio, counted))
    if counted is not None:
        attrs.append(_Attr("occupancyModified", "Property", _instant(counted)))
    if site.off_street_status is not None:
        attrs.append(_Attr("status", "Property", [site.off_street_status], counted))
    vehicles = _unique([VEHICLE_TYPES[v] for v in site.allowed_vehicle_types])
    if vehicles:
        attrs.append(_Attr("allowedVehicleType", "Property", vehicles))
    categories: list[str] = []
    if site.tariff is not None:
        categories.append("free" if site.tariff.price_per_minute == 0 else "feeCharged")
    if "electric-vehicle" in site.allowed_vehicle_types:
        categories.append("forElectricalCharging")
    if categories:
        attrs.append(_Attr("category", "Property", categories))
    if site.permits:
        names = _unique([permit_name(p.name, site.kind) for p in site.permits])
        attrs.append(_Attr("requiredPermit", "Property", names))
        hours: dict[str, list[str]] = {}
        for permit in site.permits:
            if permit.hours:
                hours.setdefault(permit_name(permit.name, site.kind), []).append(opening_hours(permit.hours))
        if hours:
            active = {name: "; ".join(texts) for name, texts in hours.items()}
            attrs.append(_Attr("permitActiveHours", "Property", active))
    if site.tariff is not None:
        tariff = site.tariff
        attrs += [
            _Attr("priceRatePerMinute", "Property", _number(tariff.price_per_minute)),
            _Attr("priceCurrency", "Property", tariff.currency),
            _Attr("openingHours", "Property", opening_hours(tariff.opening_hours)),
        ]
        if tariff.maximum_stay is not None:
            attrs.append(_Attr("maximumParkingDuration", "Property", _duration(tariff.maximum_stay)))
    gate_time = site.access_modified
    if site.entrance_count is not None:
        attrs.append(_Attr("vehicleEntranceCount", "Property", site.entrance_count, gate_time))
    if site.exit_count is not None:
        attrs.append(_Attr("vehicleExitCount", "Property", site.exit_count, gate_time))
    if gate_time is not None and off:
        attrs.append(_Attr("accessModified", "Property", _instant(gate_time)))
    return attrs


def _group_attrs(group: ParkingGroup) -> list[_Attr]:
    attrs = [
        _Attr("name", "Property", group.name),
        _Attr("category", "Property", group_categories(group.categories, group.site_kind)),
        _Attr("refParkingSite", "Relationship", site_entity_id(group.site_id, group.site_kind)),
        _Attr("dateModified", "Property", _instant(group.date_modified)),
        _Attr("availableSpotNumber", "Property", group.available_spots),
    ]
    # ParkingGroup requires totalSpotNumber >= 1: an empty group does not show it.
    if group.total_spots >= 1:
        attrs.append(_Attr("totalSpotNumber", "Property", group.total_spots))
    if group.location is not None:
        attrs.append(_Attr("location", "GeoProperty", _geometry(group.location, group.polygon)))
    if group.description:
        attrs.append(_Attr("description", "Property", group.description))
    return attrs


def _spot_attrs(spot: ParkingSpot) -> list[_Attr]:
    attrs = [
        _Attr("name", "Property", spot.name),
        _Attr("location", "GeoProperty", _geometry(spot.location, None)),
        _Attr("status", "Property", spot.status, spot.status_time),
        _Attr("category", "Property", [KIND_CATEGORY[spot.category]]),
        _Attr("refParkingSite", "Relationship", site_entity_id(spot.site_id, spot.category)),
    ]
    if spot.group_id is not None:
        attrs.append(_Attr("refParkingGroup", "Relationship", entity_id("ParkingGroup", spot.group_id)))
    if spot.device_id is not None:
        # The model makes refDevice an array (of one: a sensor watches one spot).
        attrs.append(_Attr("refDevice", "Relationship", [entity_id("Device", spot.device_id)]))
    if spot.width_m:
        attrs.append(_Attr("width", "Property", spot.width_m))
    if spot.length_m:
        attrs.append(_Attr("length", "Property", spot.length_m))
    if spot.date_modified is not None:
        attrs.append(_Attr("dateModified", "Property", _instant(spot.date_modified)))
    return attrs


def _describe(entity: Entity) -> tuple[str, str, list[_Attr]]:
    if isinstance(entity, ParkingSite):
        kind = ENTITY_TYPES[entity.kind]
        return entity_id(kind, entity.id), kind, _site_attrs(entity)
    if isinstance(entity, ParkingGroup):
        return entity_id("ParkingGroup", entity.id), "ParkingGroup", _group_attrs(entity)
    if isinstance(entity, ParkingSpot):
        return entity_id("ParkingSpot", entity.id), "ParkingSpot", _spot_attrs(entity)
    raise TypeError(f"not a parking entity: {type(entity).__name__}")


def key_values(entity: Entity) -> dict[str, Any]:
    """The keyValues (simplified) form, as the Smart Data Models schemas describe it."""
    ident, kind, attrs = _describe(entity)
    out: dict[str, Any] = {"id": ident, "type": kind}
    for attr in attrs:
        out[attr.name] = attr.value
    out["@context"] = list(CONTEXT)
    return out


def normalized(entity: Entity) -> dict[str, Any]:
    """The normalized form: every attribute a Property, Relationship or GeoProperty object."""
    ident, kind, attrs = _describe(entity)
    out: dict[str, Any] = {"id": ident, "type": kind}
    for attr in attrs:
        body: dict[str, Any] = {"type": attr.type}
        body["object" if attr.type == "Relationship" else "value"] = attr.value
        if attr.observed_at is not None:
            body["observedAt"] = _instant(attr.observed_at)
        out[attr.name] = body
    out["@context"] = list(CONTEXT)
    return out


def reduce(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The standard NGSI-LD simplification of a normalized entity: Property and GeoProperty to their
    value, Relationship to its object; sub-attributes (observedAt, unitCode, nested properties) dropped.
    Raises ValueError on an attribute that is none of the three (or a multi-instance list)."""
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if name in ("id", "type", "@context"):
            out[name] = copy.deepcopy(attr)
            continue
        if not isinstance(attr, Mapping):
            raise ValueError(f"attribute {name!r} is not a Property/Relationship/GeoProperty object")
        kind = attr.get("type")
        if kind in ("Property", "GeoProperty") and "value" in attr:
            out[name] = copy.deepcopy(attr["value"])
        elif kind == "Relationship" and "object" in attr:
            out[name] = copy.deepcopy(attr["object"])
        else:
            raise ValueError(f"attribute {name!r} of type {kind!r} cannot be reduced")
    return out
