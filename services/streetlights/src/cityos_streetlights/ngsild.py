"""The streetlights service's NGSI-LD view: lights, groups and cabinets as FIWARE Smart Data Models
entities (``dataModel.Streetlighting`` Streetlight, StreetlightGroup, StreetlightControlCabinet).

A pure module: frozen dataclasses in (built by `ngsild_service` from the rows, independent of the
database), JSON-ready dicts out, nothing fetched over the network. Three entry points:

- `key_values(entity)`: the NGSI-LD simplified (keyValues) form, what the models' schemas describe.
- `normalized(entity)`: every attribute a Property, Relationship or GeoProperty object; live readings
  carry ``observedAt`` (the time the controller measured them) and measurements a UN/CEFACT
  ``unitCode`` (WTT watt, KWT kilowatt, KWH kilowatt-hour, VLT volt, AMP ampere, MTR metre).
- `reduce(normalized_entity)`: the standard simplification (Property and GeoProperty to their value,
  Relationship to its object, sub-attributes dropped). ``reduce(normalized(x)) == key_values(x)`` for
  every input: both forms are built from one attribute list.

Entity ids are ``urn:ngsi-ld:<Type>:<our id>``; references to the lamp model are
``urn:ngsi-ld:StreetlightModel:<id>``, to controllers ``urn:ngsi-ld:Device:<device id>`` (the Device
model's ids, as the devices service names them), to organisations ``urn:ngsi-ld:Organization:<id>``.
`@context` is the Smart Data Models ``dataModel.Streetlighting`` context followed by the NGSI-LD core
context pinned to v1.8 (last, as NGSI-LD treats it anyway), as the parking service does.

Mappings (every attribute shown; nothing is shown that is not known — unset, empty, zero-as-unknown
values and readings never reported are left out rather than shown wrongly):

Streetlight (a light):
- ``name`` display name; ``location`` GeoJSON Point ``[lng, lat]``; ``address.streetAddress`` the
  street; ``owner`` the owner organisation; ``dateCreated``/``dateModified`` its create/update time.
- ``status`` (required): ``defectiveLamp`` while a lamp-failure fault is open, else the crew's report
  ``columnIssue``/``brokenLantern``, else ``ok`` (the Light's output-only status).
- ``refStreetlightModel`` its lamp model; ``powerRating`` the model's rated power (W).
- ``refStreetlightControlCabinet`` its feeder's cabinet; ``circuit`` its feeder's id (a feeder is one
  circuit of a cabinet, and the id finds it: ``feeders/{id}``); ``refStreetlightGroup`` its group.
  ``feederID`` is not shown: in the model it names the feeder *panel* (pillar), which here is the
  cabinet, already referenced.
- ``refDevice`` ``[its controller]`` and ``controllingMethod`` ``individual`` when it has a controller
  (an addressable controller per light); without one the method is not known and not shown.
- ``streetPoleNum`` pole number; ``locationCategory`` our free text mapped to the model's enumeration
  (``central-island``/``central_island``/``Central Island`` -> ``centralIsland``; a category the model
  does not know is not shown); ``lanternHeight`` (m, when above 0); ``dateLastLampChange``.
- the latest reading (observedAt = its time, also ``observationDateTime``): ``powerState``
  ON/OFF/LOW/BOOTING_UP -> ``on``/``off``/``low``/``bootingUp``; ``illuminanceLevel`` the reported
  dimming level as the model's 0..1 fraction (dim level % / 100); ``powerConsumption`` (W),
  ``voltage`` (V), ``current`` (A), ``powerFactor``; ``lifetimePowerConsumption`` the controller's
  lifetime meter in kWh.

StreetlightGroup (a group):
- ``location`` (required): the centroid of its lights (the mean of their latitudes and longitudes; a
  group spans a few streets, far from the poles and the antimeridian), or, with no light, its cabinet's
  location (`centroid`). A group with neither has no location and is not representable.
- ``refStreetlight`` its lights (when it has any); ``refStreetlightControlCabinet`` its cabinet;
  ``activeProgramId`` its schedule's id; ``circuitId`` the feeder's id when all its lights hang on one.
- ``powerState`` from its lights' reported states (`group_power_state`): all off -> ``off``; all
  burning -> ``on`` when all are on, ``bootingUp`` when any is booting up, else ``low``; a mix of dark
  and burning lights, or a light not reported yet, has no single state and is not shown.
- ``illuminanceLevel`` the desired level in force when all its lights share one (% / 100).
- ``switchingMode`` from the levels its schedule sets at night and by day (`switching_modes`): 100 %
  -> ``*-ON``, 1-99 % -> ``*-LOW``, 0 -> ``*-OFF`` for ``night``/``day``; 100 % at night and by day
  -> ``always-ON`` alone.
- ``name``, ``description``, ``owner``, ``dateCreated``, ``dateModified``.

StreetlightControlCabinet (a cabinet):
- ``workingMode`` (required) automatic/manual/semiautomatic; ``refStreetlightGroup`` (required, at least
  one, unique): the groups it supplies. A cabinet without a working mode or a group is not
  representable (the constructor refuses it; the service answers FAILED_PRECONDITION).
- ``serialNumber``; ``maximumPowerAvailable`` the contracted power in kW (when above 0); ``refDevice``
  its controller.
- the latest reading: ``voltageR``/``voltageS``/``voltageT`` phases L1/L2/L3 (V); ``totalActivePower``
  (kW); ``energyConsumed`` the meter in kWh; ``cosPhi`` the power factor. ``dateMeteringStarted`` is not
  known and not shown.
- ``name``, ``owner``, ``dateCreated``, ``dateModified``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
STREETLIGHTING_CONTEXT: Final = (
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld"
)
CONTEXT: Final = (STREETLIGHTING_CONTEXT, CORE_CONTEXT)

Status = Literal["ok", "defectiveLamp", "columnIssue", "brokenLantern"]
PowerState = Literal["on", "off", "low", "bootingUp"]
WorkingMode = Literal["automatic", "manual", "semiautomatic"]
AttributeType = Literal["Property", "Relationship", "GeoProperty"]

ENTITY_TYPES: Final = ("Streetlight", "StreetlightGroup", "StreetlightControlCabinet")
STATUSES: Final = frozenset({"ok", "defectiveLamp", "columnIssue", "brokenLantern"})
POWER_STATES: Final = frozenset({"on", "off", "low", "bootingUp"})
WORKING_MODES: Final = frozenset({"automatic", "manual", "semiautomatic"})
# The model's order.
SWITCHING_MODES: Final = ("night-ON", "night-OFF", "night-LOW", "always-ON", "day-ON", "day-OFF", "day-LOW")
LOCATION_CATEGORIES: Final = frozenset(
    {
        "bridge",
        "centralIsland",
        "facade",
        "garden",
        "park",
        "parking",
        "pedestrianPath",
        "playground",
        "road",
        "sidewalk",
        "tunnel",
    }
)
# Attributes shown on an entity whose own schema does not declare them (none: every attribute shown is
# declared by the entity's model or the common schemas it includes).
EXTENSIONS: Final[Mapping[str, frozenset[str]]] = {kind: frozenset() for kind in ENTITY_TYPES}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,199}$")
_WORDS = re.compile(r"[^A-Za-z0-9]+")


def _check_id(value: str, what: str) -> None:
    if not _ID.match(value):
        raise ValueError(f"{what} {value!r} cannot be part of an NGSI-LD URN ([A-Za-z0-9._~-], 1-200)")


def _check_ids(values: Iterable[str | None], what: str) -> None:
    for value in values:
        if value is not None:
            _check_id(value, what)


def _check_time(value: datetime | None, what: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _check_number(value: float | None, what: str, low: float = -math.inf, high: float = math.inf) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be from {low} to {high}, got {value}")


@dataclass(frozen=True)
class GeoPoint:
    """WGS 84 degrees. GeoJSON writes it [lng, lat]."""

    lat: float
    lng: float

    def __post_init__(self) -> None:
        # The schemas accept any numbers as coordinates, so a swapped pair would pass them: refuse it here.
        _check_number(self.lat, "latitude")
        _check_number(self.lng, "longitude")
        if not -90 <= self.lat <= 90:
            raise ValueError(f"latitude {self.lat} is outside -90..90 (lat and lng swapped?)")
        if not -180 <= self.lng <= 180:
            raise ValueError(f"longitude {self.lng} is outside -180..180")

    def geometry(self) -> dict[str, Any]:
        return {"type": "Point", "coordinates": [self.lng, self.lat]}


def centroid(points: Iterable[GeoPoint]) -> GeoPoint | None:
    """The mean of the points' latitudes and longitudes (None for no points)."""
    listed = list(points)
    if not listed:
        return None
    return GeoPoint(
        lat=sum(p.lat for p in listed) / len(listed),
        lng=sum(p.lng for p in listed) / len(listed),
    )


def location_category(text: str | None) -> str | None:
    """Our free location category as the model's enumeration value, or None when it has none."""
    if not text:
        return None
    words = [word for word in _WORDS.split(text.strip()) if word]
    if not words:
        return None
    camel = words[0].lower() + "".join(word[:1].upper() + word[1:].lower() for word in words[1:])
    return camel if camel in LOCATION_CATEGORIES else None


def group_power_state(states: Iterable[PowerState | None]) -> PowerState | None:
    """A group's power state from its lights' (see the module doc); None when there is no single one."""
    listed = list(states)
    if not listed or any(state is None for state in listed):
        return None
    seen = set(listed)
    if seen == {"off"}:
        return "off"
    if "off" in seen:
        return None
    if seen == {"on"}:
        return "on"
    return "bootingUp" if "bootingUp" in seen else "low"


def switching_modes(night_levels: Iterable[int], day_levels: Iterable[int]) -> tuple[str, ...]:
    """The model's switchingMode values for the levels (%) a program sets at night and by day."""
    night, day = set(night_levels), set(day_levels)
    for level in night | day:
        if not 0 <= level <= 100:
            raise ValueError(f"a dimming level is 0 to 100, got {level}")
    if night == {100} and day == {100}:
        return ("always-ON",)
    modes = set()
    for period, levels in (("night", night), ("day", day)):
        for level in levels:
            modes.add(f"{period}-{'ON' if level == 100 else 'OFF' if level == 0 else 'LOW'}")
    return tuple(mode for mode in SWITCHING_MODES if mode in modes)


@dataclass(frozen=True)
class Streetlight:
    id: str
    name: str
    location: GeoPoint
    status: Status
    date_created: datetime | None = None
    date_modified: datetime | None = None
    owner_organization: str | None = None
    model_id: str | None = None
    # The model's rated power (W).
    rated_power_w: float | None = None
    cabinet_id: str | None = None
    feeder_id: str | None = None
    group_id: str | None = None
    device_id: str | None = None
    street: str | None = None
    pole_number: str | None = None
    # Our free text; shown only when it maps to the model's enumeration.
    location_category: str | None = None
    lantern_height_m: float | None = None
    last_lamp_change: datetime | None = None
    # -- the latest reading, measured at reading_time --------------------------------------------------
    reading_time: datetime | None = None
    power_state: PowerState | None = None
    # The reported dimming level (%), 0 to 100.
    dim_level: float | None = None
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    power_factor: float | None = None
    # The controller's lifetime meter (Wh).
    energy_wh: float | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "light id")
        _check_ids((self.model_id,), "model id")
        _check_ids((self.cabinet_id, self.feeder_id, self.group_id), "inventory id")
        _check_ids((self.device_id, self.owner_organization), "device or organization id")
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {sorted(STATUSES)}")
        if self.power_state is not None and self.power_state not in POWER_STATES:
            raise ValueError(f"power state {self.power_state!r} is not one of {sorted(POWER_STATES)}")
        _check_number(self.dim_level, "dim_level", 0, 100)
        _check_number(self.power_factor, "power_factor", -1, 1)
        _check_number(self.lantern_height_m, "lantern_height_m", 0)
        _check_number(self.rated_power_w, "rated_power_w", 0)
        for value, what in (
            (self.power_w, "power_w"),
            (self.voltage_v, "voltage_v"),
            (self.current_a, "current_a"),
            (self.energy_wh, "energy_wh"),
        ):
            _check_number(value, what)
        for when, what in (
            (self.date_created, "date_created"),
            (self.date_modified, "date_modified"),
            (self.last_lamp_change, "last_lamp_change"),
            (self.reading_time, "reading_time"),
        ):
            _check_time(when, what)


@dataclass(frozen=True)
class StreetlightGroup:
    id: str
    name: str
    # The centroid of its lights, or its cabinet's location (see `centroid`).
    location: GeoPoint
    light_ids: tuple[str, ...] = ()
    cabinet_id: str | None = None
    schedule_id: str | None = None
    description: str | None = None
    power_state: PowerState | None = None
    # The desired level in force (%) when all its lights share one.
    dim_level: float | None = None
    switching_modes: tuple[str, ...] = ()
    # The feeder all its lights hang on.
    circuit_id: str | None = None
    date_created: datetime | None = None
    date_modified: datetime | None = None
    owner_organization: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "group id")
        _check_ids(self.light_ids, "light id")
        if len(set(self.light_ids)) != len(self.light_ids):
            raise ValueError("light ids must be unique")
        _check_ids((self.cabinet_id, self.schedule_id, self.circuit_id, self.owner_organization), "id")
        if self.power_state is not None and self.power_state not in POWER_STATES:
            raise ValueError(f"power state {self.power_state!r} is not one of {sorted(POWER_STATES)}")
        for mode in self.switching_modes:
            if mode not in SWITCHING_MODES:
                raise ValueError(f"switching mode {mode!r} is not one of {SWITCHING_MODES}")
        _check_number(self.dim_level, "dim_level", 0, 100)
        _check_time(self.date_created, "date_created")
        _check_time(self.date_modified, "date_modified")


@dataclass(frozen=True)
class StreetlightControlCabinet:
    id: str
    name: str
    location: GeoPoint
    working_mode: WorkingMode
    # The groups it supplies: at least one (the model requires it).
    group_ids: tuple[str, ...]
    serial_number: str | None = None
    # The contracted power (W).
    maximum_power_w: float | None = None
    device_id: str | None = None
    # -- the latest reading, measured at reading_time --------------------------------------------------
    reading_time: datetime | None = None
    voltage_l1_v: float | None = None
    voltage_l2_v: float | None = None
    voltage_l3_v: float | None = None
    active_power_w: float | None = None
    energy_wh: float | None = None
    power_factor: float | None = None
    date_created: datetime | None = None
    date_modified: datetime | None = None
    owner_organization: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "cabinet id")
        if self.working_mode not in WORKING_MODES:
            raise ValueError(f"working mode {self.working_mode!r} is not one of {sorted(WORKING_MODES)}")
        if not self.group_ids:
            raise ValueError("a StreetlightControlCabinet supplies at least one group (refStreetlightGroup)")
        if len(set(self.group_ids)) != len(self.group_ids):
            raise ValueError("group ids must be unique")
        _check_ids(self.group_ids, "group id")
        _check_ids((self.device_id, self.owner_organization), "device or organization id")
        # The model's minimum for each (kW, kWh and V are never negative).
        for value, what in (
            (self.maximum_power_w, "maximum_power_w"),
            (self.voltage_l1_v, "voltage_l1_v"),
            (self.voltage_l2_v, "voltage_l2_v"),
            (self.voltage_l3_v, "voltage_l3_v"),
            (self.active_power_w, "active_power_w"),
            (self.energy_wh, "energy_wh"),
        ):
            _check_number(value, what, 0)
        _check_number(self.power_factor, "power_factor", -1, 1)
        for when, what in (
            (self.date_created, "date_created"),
            (self.date_modified, "date_modified"),
            (self.reading_time, "reading_time"),
        ):
            _check_time(when, what)


Entity = Streetlight | StreetlightGroup | StreetlightControlCabinet


@dataclass(frozen=True)
class _Attr:
    name: str
    type: AttributeType
    value: Any
    observed_at: datetime | None = None
    unit_code: str | None = None


def entity_id(entity_type: str, local_id: str) -> str:
    """``urn:ngsi-ld:<Type>:<id>``."""
    _check_id(local_id, f"{entity_type} id")
    return f"urn:ngsi-ld:{entity_type}:{local_id}"


def _instant(value: datetime) -> str:
    """ISO 8601 in UTC with ``Z`` (milliseconds when the time has a fraction)."""
    utc = value.astimezone(UTC)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _kilo(value: float | None) -> float | None:
    return None if value is None else value / 1000


def _common(
    attrs: list[_Attr],
    created: datetime | None,
    modified: datetime | None,
    owner: str | None,
) -> None:
    if owner:
        attrs.append(_Attr("owner", "Property", [entity_id("Organization", owner)]))
    if created is not None:
        attrs.append(_Attr("dateCreated", "Property", _instant(created)))
    if modified is not None:
        attrs.append(_Attr("dateModified", "Property", _instant(modified)))


def _light_attrs(light: Streetlight) -> list[_Attr]:
    attrs = [
        _Attr("name", "Property", light.name),
        _Attr("location", "GeoProperty", light.location.geometry()),
        _Attr("status", "Property", light.status),
    ]
    if light.street:
        attrs.append(_Attr("address", "Property", {"streetAddress": light.street}))
    _common(attrs, light.date_created, light.date_modified, light.owner_organization)
    if light.model_id:
        attrs.append(
            _Attr("refStreetlightModel", "Relationship", entity_id("StreetlightModel", light.model_id))
        )
    if light.rated_power_w:
        attrs.append(_Attr("powerRating", "Property", light.rated_power_w, unit_code="WTT"))
    if light.cabinet_id:
        cabinet = entity_id("StreetlightControlCabinet", light.cabinet_id)
        attrs.append(_Attr("refStreetlightControlCabinet", "Relationship", cabinet))
    if light.feeder_id:
        attrs.append(_Attr("circuit", "Property", light.feeder_id))
    if light.group_id:
        group = entity_id("StreetlightGroup", light.group_id)
        attrs.append(_Attr("refStreetlightGroup", "Relationship", group))
    if light.device_id:
        attrs.append(_Attr("refDevice", "Relationship", [entity_id("Device", light.device_id)]))
        attrs.append(_Attr("controllingMethod", "Property", "individual"))
    if light.pole_number:
        attrs.append(_Attr("streetPoleNum", "Property", light.pole_number))
    category = location_category(light.location_category)
    if category is not None:
        attrs.append(_Attr("locationCategory", "Property", category))
    if light.lantern_height_m:
        attrs.append(_Attr("lanternHeight", "Property", light.lantern_height_m, unit_code="MTR"))
    if light.last_lamp_change is not None:
        attrs.append(_Attr("dateLastLampChange", "Property", _instant(light.last_lamp_change)))
    seen = light.reading_time
    if light.power_state is not None:
        attrs.append(_Attr("powerState", "Property", light.power_state, seen))
    if light.dim_level is not None:
        attrs.append(_Attr("illuminanceLevel", "Property", round(light.dim_level / 100, 6), seen))
    for name, value, unit in (
        ("powerConsumption", light.power_w, "WTT"),
        ("voltage", light.voltage_v, "VLT"),
        ("current", light.current_a, "AMP"),
        ("powerFactor", light.power_factor, None),
    ):
        if value is not None:
            attrs.append(_Attr(name, "Property", value, seen, unit))
    if light.energy_wh is not None:
        attrs.append(_Attr("lifetimePowerConsumption", "Property", _kilo(light.energy_wh), seen, "KWH"))
    if seen is not None:
        attrs.append(_Attr("observationDateTime", "Property", _instant(seen)))
    return attrs


def _group_attrs(group: StreetlightGroup) -> list[_Attr]:
    attrs = [
        _Attr("name", "Property", group.name),
        _Attr("location", "GeoProperty", group.location.geometry()),
    ]
    if group.description:
        attrs.append(_Attr("description", "Property", group.description))
    _common(attrs, group.date_created, group.date_modified, group.owner_organization)
    if group.light_ids:
        lights = [entity_id("Streetlight", light) for light in group.light_ids]
        attrs.append(_Attr("refStreetlight", "Relationship", lights))
    if group.cabinet_id:
        cabinet = entity_id("StreetlightControlCabinet", group.cabinet_id)
        attrs.append(_Attr("refStreetlightControlCabinet", "Relationship", cabinet))
    if group.schedule_id:
        attrs.append(_Attr("activeProgramId", "Property", group.schedule_id))
    if group.switching_modes:
        attrs.append(_Attr("switchingMode", "Property", list(group.switching_modes)))
    if group.circuit_id:
        attrs.append(_Attr("circuitId", "Property", group.circuit_id))
    if group.power_state is not None:
        attrs.append(_Attr("powerState", "Property", group.power_state))
    if group.dim_level is not None:
        attrs.append(_Attr("illuminanceLevel", "Property", round(group.dim_level / 100, 6)))
    return attrs


def _cabinet_attrs(cabinet: StreetlightControlCabinet) -> list[_Attr]:
    attrs = [
        _Attr("name", "Property", cabinet.name),
        _Attr("location", "GeoProperty", cabinet.location.geometry()),
        _Attr("workingMode", "Property", cabinet.working_mode),
        _Attr(
            "refStreetlightGroup",
            "Relationship",
            [entity_id("StreetlightGroup", group) for group in cabinet.group_ids],
        ),
    ]
    _common(attrs, cabinet.date_created, cabinet.date_modified, cabinet.owner_organization)
    if cabinet.serial_number:
        attrs.append(_Attr("serialNumber", "Property", cabinet.serial_number))
    if cabinet.maximum_power_w:
        attrs.append(
            _Attr("maximumPowerAvailable", "Property", _kilo(cabinet.maximum_power_w), unit_code="KWT")
        )
    if cabinet.device_id:
        attrs.append(_Attr("refDevice", "Relationship", [entity_id("Device", cabinet.device_id)]))
    seen = cabinet.reading_time
    for name, value, unit in (
        ("voltageR", cabinet.voltage_l1_v, "VLT"),
        ("voltageS", cabinet.voltage_l2_v, "VLT"),
        ("voltageT", cabinet.voltage_l3_v, "VLT"),
        (
            "totalActivePower",
            None if cabinet.active_power_w is None else _kilo(cabinet.active_power_w),
            "KWT",
        ),
        ("energyConsumed", _kilo(cabinet.energy_wh), "KWH"),
        ("cosPhi", cabinet.power_factor, None),
    ):
        if value is not None:
            attrs.append(_Attr(name, "Property", value, seen, unit))
    return attrs


def _describe(entity: Entity) -> tuple[str, str, list[_Attr]]:
    if isinstance(entity, Streetlight):
        return entity_id("Streetlight", entity.id), "Streetlight", _light_attrs(entity)
    if isinstance(entity, StreetlightGroup):
        return entity_id("StreetlightGroup", entity.id), "StreetlightGroup", _group_attrs(entity)
    if isinstance(entity, StreetlightControlCabinet):
        kind = "StreetlightControlCabinet"
        return entity_id(kind, entity.id), kind, _cabinet_attrs(entity)
    raise TypeError(f"not a streetlighting entity: {type(entity).__name__}")


def key_values(entity: Entity) -> dict[str, Any]:
    """The keyValues (simplified) form, as the Smart Data Models schemas describe it."""
    ident, kind, attrs = _describe(entity)
    out: dict[str, Any] = {"id": ident, "type": kind}
    for attr in attrs:
        out[attr.name] = copy.deepcopy(attr.value)
    out["@context"] = list(CONTEXT)
    return out


def normalized(entity: Entity) -> dict[str, Any]:
    """The normalized form: every attribute a Property, Relationship or GeoProperty object."""
    ident, kind, attrs = _describe(entity)
    out: dict[str, Any] = {"id": ident, "type": kind}
    for attr in attrs:
        body: dict[str, Any] = {"type": attr.type}
        body["object" if attr.type == "Relationship" else "value"] = copy.deepcopy(attr.value)
        if attr.observed_at is not None:
            body["observedAt"] = _instant(attr.observed_at)
        if attr.unit_code is not None:
            body["unitCode"] = attr.unit_code
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


__all__ = [
    "CONTEXT",
    "ENTITY_TYPES",
    "Entity",
    "GeoPoint",
    "Streetlight",
    "StreetlightControlCabinet",
    "StreetlightGroup",
    "centroid",
    "entity_id",
    "group_power_state",
    "key_values",
    "location_category",
    "normalized",
    "reduce",
    "switching_modes",
]
