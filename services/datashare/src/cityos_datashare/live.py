"""The live views: the domain services' NGSI-LD entity types, each a dataset of the catalog
(`ngsi-ld.<Type>`, kind LIVE_VIEW) that datashare serves over the NGSI-LD HTTP API (`cityos_datashare.http`)
under the caller's agreements.

A view names the entity type, the service whose `NgsiLdService` serves it (parking, streetlights), the
organization that owns the data (who reads it without an agreement) and its fields: every attribute the
service emits for that type (taken from `cityos_parking.ngsild` and `cityos_streetlights.ngsild`, whose
module docs describe them), with a description and a classification. An agreement's `columns` are names
of these fields. `id`, `type` and `@context` are no fields: every entity served carries them.

Classifications: `public` for what the city publishes anyway (names, places, counts, tariffs, the state a
passer-by sees), `internal` for operational detail (device references, owners, metering, serial numbers,
modification times). None of these entities describes a person, so nothing is `personal` or
`sensitive`; a field so classified could only be granted with an aggregation floor, which the NGSI-LD
API (row by row) cannot serve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

CLASSIFICATIONS: Final = frozenset({"public", "internal", "personal", "sensitive"})
# Always returned, never fields.
CORE_MEMBERS: Final = ("id", "type", "@context")
DATASET_PREFIX: Final = "ngsi-ld."

# The Smart Data Models context each service's entities name first (the NGSI-LD core context follows);
# the `Link` header of an `application/json` answer points at it.
CONTEXTS: Final[Mapping[str, str]] = {
    "parking": "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld",
    "streetlights": (
        "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld"
    ),
}

Field = tuple[str, str, str]


@dataclass(frozen=True)
class LiveView:
    dataset_id: str
    entity_type: str
    service: str
    owner: str
    description: str
    # (attribute, description, classification)
    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        if self.dataset_id != DATASET_PREFIX + self.entity_type:
            raise ValueError(f"the dataset of {self.entity_type} is {DATASET_PREFIX}{self.entity_type}")
        names = [name for name, _, _ in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.dataset_id}: a field is listed twice")
        for name, _, classification in self.fields:
            if name in CORE_MEMBERS:
                raise ValueError(f"{self.dataset_id}: {name} is always returned and is no field")
            if classification not in CLASSIFICATIONS:
                raise ValueError(f"{self.dataset_id}.{name}: classification {classification!r}")

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(name for name, _, _ in self.fields)

    @property
    def classification(self) -> dict[str, str]:
        return {name: classification for name, _, classification in self.fields}

    @property
    def context(self) -> str:
        """The domain @context of the view's entities (the core context is implied)."""
        return CONTEXTS[self.service]


def _view(entity_type: str, service: str, owner: str, description: str, *fields: Field) -> LiveView:
    return LiveView(DATASET_PREFIX + entity_type, entity_type, service, owner, description, fields)


# -- parking (cityos_parking.ngsild) ---------------------------------------------------------------------

_SITE_COMMON: tuple[Field, ...] = (
    ("name", "The site's display name", "public"),
    ("location", "GeoJSON Point (or Polygon) of the site", "public"),
    ("dateModified", "When the site's record last changed", "internal"),
    (
        "occupancyDetectionType",
        "How occupancy is detected (singleSpaceDetection, balancing, manual)",
        "internal",
    ),
    ("description", "Free description of the site", "public"),
    ("address", "Postal address", "public"),
    ("areaServed", "The district the site serves", "public"),
    ("owner", "Owner organisation (urn:ngsi-ld:Organization:<id>)", "internal"),
    ("totalSpotNumber", "Number of spots", "public"),
    ("availableSpotNumber", "Free spots now (observedAt: when counted)", "public"),
    ("occupiedSpotNumber", "Occupied spots now", "public"),
    ("outOfServiceSlotNumber", "Spots closed or without a known status", "public"),
    ("occupancyModified", "When the counts last changed", "public"),
    ("allowedVehicleType", "Vehicle types allowed to park", "public"),
    ("category", "Site categories (free, feeCharged, forElectricalCharging)", "public"),
    ("requiredPermit", "Permits of which one is needed to park", "public"),
    ("permitActiveHours", "When each permit is needed (schema.org opening-hours text)", "public"),
    ("priceRatePerMinute", "Price per minute", "public"),
    ("priceCurrency", "ISO 4217 currency of the price", "public"),
    ("openingHours", "When parking is charged / allowed (schema.org text)", "public"),
    ("maximumParkingDuration", "Longest allowed stay (ISO 8601 duration)", "public"),
)

_PARKING: tuple[LiveView, ...] = (
    _view(
        "OnStreetParking",
        "parking",
        "transport",
        "On-street parking sites (street segments) with their live spot counts and tariff",
        *_SITE_COMMON,
    ),
    _view(
        "OffStreetParking",
        "parking",
        "transport",
        "Off-street parking sites (garages, lots) with their live counts, status and gate counts",
        *_SITE_COMMON,
        ("occupancy", "Occupied share of the spots, 0 to 1", "public"),
        ("status", "open, full, almostFull, spacesAvailable or closedAbnormal", "public"),
        ("vehicleEntranceCount", "Vehicles that entered in the current period", "internal"),
        ("vehicleExitCount", "Vehicles that left in the current period", "internal"),
        ("accessModified", "When the gate counts were taken", "internal"),
    ),
    _view(
        "ParkingGroup",
        "parking",
        "transport",
        "Groups of spots within a site (a floor, a residents' zone) with their live counts",
        ("name", "The group's display name", "public"),
        ("category", "Group categories (onStreet/offStreet, onlyResidents, completeFloor, ...)", "public"),
        ("refParkingSite", "The site the group belongs to", "public"),
        ("dateModified", "When the group's record last changed", "internal"),
        ("availableSpotNumber", "Free spots in the group now", "public"),
        ("totalSpotNumber", "Spots in the group", "public"),
        ("location", "GeoJSON geometry of the group, when known", "public"),
        ("description", "Free description of the group", "public"),
    ),
    _view(
        "ParkingSpot",
        "parking",
        "transport",
        "Individual parking spots with their live status",
        ("name", "The spot's display name", "public"),
        ("location", "GeoJSON Point of the spot", "public"),
        ("status", "free, occupied, closed or unknown (observedAt: when it changed)", "public"),
        ("category", "onStreet or offStreet", "public"),
        ("refParkingSite", "The site the spot belongs to", "public"),
        ("refParkingGroup", "The group the spot belongs to", "public"),
        ("refDevice", "The occupancy sensor watching the spot", "internal"),
        ("width", "Width of the spot (m)", "public"),
        ("length", "Length of the spot (m)", "public"),
        ("dateModified", "When the spot's record last changed", "internal"),
    ),
)

# -- streetlights (cityos_streetlights.ngsild) -----------------------------------------------------------

_OWNED: tuple[Field, ...] = (
    ("owner", "Owner organisation (urn:ngsi-ld:Organization:<id>)", "internal"),
    ("dateCreated", "When the record was created", "internal"),
    ("dateModified", "When the record last changed", "internal"),
)

_STREETLIGHTS: tuple[LiveView, ...] = (
    _view(
        "Streetlight",
        "streetlights",
        "public-works",
        "Street lights with their status and latest controller reading",
        ("name", "The light's display name", "public"),
        ("location", "GeoJSON Point of the pole", "public"),
        ("status", "ok, defectiveLamp, columnIssue or brokenLantern", "public"),
        ("address", "Street address", "public"),
        *_OWNED,
        ("refStreetlightModel", "The lamp model", "public"),
        ("powerRating", "Rated power of the lamp (W)", "public"),
        ("refStreetlightControlCabinet", "The cabinet supplying it", "internal"),
        ("circuit", "The feeder (circuit) it hangs on", "internal"),
        ("refStreetlightGroup", "The group it belongs to", "public"),
        ("refDevice", "Its controller", "internal"),
        ("controllingMethod", "individual when it has its own controller", "internal"),
        ("streetPoleNum", "Pole number", "public"),
        ("locationCategory", "Where it stands (road, sidewalk, park, ...)", "public"),
        ("lanternHeight", "Lantern height (m)", "public"),
        ("dateLastLampChange", "When the lamp was last changed", "internal"),
        ("powerState", "on, off, low or bootingUp (observedAt: the reading's time)", "public"),
        ("illuminanceLevel", "Reported dimming level, 0 to 1", "public"),
        ("powerConsumption", "Power drawn (W)", "internal"),
        ("voltage", "Supply voltage (V)", "internal"),
        ("current", "Current (A)", "internal"),
        ("powerFactor", "Power factor", "internal"),
        ("lifetimePowerConsumption", "The controller's lifetime meter (kWh)", "internal"),
        ("observationDateTime", "When the latest reading was taken", "public"),
    ),
    _view(
        "StreetlightGroup",
        "streetlights",
        "public-works",
        "Groups of street lights switched together, with their program and state",
        ("name", "The group's display name", "public"),
        ("location", "Centroid of its lights (or its cabinet's place)", "public"),
        ("description", "Free description of the group", "public"),
        *_OWNED,
        ("refStreetlight", "Its lights", "public"),
        ("refStreetlightControlCabinet", "Its cabinet", "internal"),
        ("activeProgramId", "Its schedule", "internal"),
        ("switchingMode", "night-ON, night-LOW, always-ON, ... from its schedule", "public"),
        ("circuitId", "The feeder all its lights hang on", "internal"),
        ("powerState", "The lights' common power state", "public"),
        ("illuminanceLevel", "The desired level in force, 0 to 1", "public"),
    ),
    _view(
        "StreetlightControlCabinet",
        "streetlights",
        "public-works",
        "Control cabinets feeding street light groups, with their latest metering",
        ("name", "The cabinet's display name", "public"),
        ("location", "GeoJSON Point of the cabinet", "internal"),
        ("workingMode", "automatic, manual or semiautomatic", "internal"),
        ("refStreetlightGroup", "The groups it supplies", "public"),
        *_OWNED,
        ("serialNumber", "Serial number", "internal"),
        ("maximumPowerAvailable", "Contracted power (kW)", "internal"),
        ("refDevice", "Its controller", "internal"),
        ("voltageR", "Phase L1 voltage (V)", "internal"),
        ("voltageS", "Phase L2 voltage (V)", "internal"),
        ("voltageT", "Phase L3 voltage (V)", "internal"),
        ("totalActivePower", "Active power (kW)", "internal"),
        ("energyConsumed", "Energy meter (kWh)", "internal"),
        ("cosPhi", "Power factor", "internal"),
    ),
)

LIVE_VIEWS: Final[tuple[LiveView, ...]] = (*_PARKING, *_STREETLIGHTS)


def views_by_type(views: Iterable[LiveView]) -> dict[str, LiveView]:
    """The views by entity type; a type served twice is a configuration error."""
    by_type: dict[str, LiveView] = {}
    for view in views:
        if view.entity_type in by_type:
            raise ValueError(f"entity type {view.entity_type} is served by two views")
        by_type[view.entity_type] = view
    return by_type
