"""PRK-6: the NGSI-LD view — the keyValues form validates against the Smart Data Models schemas (every
`$ref` resolved from local files, never the network), the normalized form is well-formed NGSI-LD and
reduces to the keyValues form.

The schemas are the vendored copies in `smart-data-models/` (verbatim from ../shared/domain, so a clean
clone runs these tests); one test proves the copies equal ../shared's where that folder exists."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from referencing import Registry
from referencing.exceptions import Unresolvable

from cityos_parking import ngsild
from cityos_parking.ngsild import (
    Address,
    GeoPoint,
    ParkingGroup,
    ParkingSite,
    ParkingSpot,
    Permit,
    Tariff,
    WeeklyWindow,
    key_values,
    normalized,
    reduce,
)
from cityos_platform.testing.ngsild import SmartDataModels, build_registry, normalized_problems

pytestmark = pytest.mark.req("PRK-6")

MODELS = Path(__file__).parent / "smart-data-models"
SHARED = Path(__file__).parents[3] / ".." / "shared" / "domain" / "smart-data-models"
PARKING_MODELS = ("ParkingSpot", "OnStreetParking", "OffStreetParking", "ParkingGroup")
COMMON = "https://smart-data-models.github.io/data-models/common-schema.json"

# --- the checks, over the vendored schemas (cityos_platform.testing.ngsild) ----------------------------

CHECKS = SmartDataModels(MODELS)
schema_errors = CHECKS.schema_errors
declared_attributes = CHECKS.declared_attributes


def registry() -> Registry[Any]:
    return CHECKS.registry


# --- realistic inputs ---------------------------------------------------------------------------------

T = datetime(2025, 3, 14, 8, 30, 5, tzinfo=UTC)
BEIJING = timezone(timedelta(hours=8))


def street(total: int = 40) -> ParkingSite:
    return ParkingSite(
        id="rongdong-a",
        name="Rongdong Avenue A (north kerb)",
        kind="on-street",
        location=GeoPoint(lat=39.0501, lng=115.9502),
        polygon=(
            GeoPoint(39.0500, 115.9490),
            GeoPoint(39.0502, 115.9490),
            GeoPoint(39.0502, 115.9514),
            GeoPoint(39.0500, 115.9514),
        ),
        total_spots=total,
        available_spots=12,
        occupied_spots=26,
        out_of_service_spots=2,
        detection="single-space",
        allowed_vehicle_types=("car", "motorcycle", "electric-vehicle"),
        address=Address(street_address="Rongdong Avenue", locality="Xiong'an", country="CN"),
        area_name="Rongdong",
        description="Metered kerbside parking with a sensor in every bay",
        permits=(
            Permit("residents", (WeeklyWindow("19:00", "08:00", (1, 2, 3, 4, 5)),)),
            Permit("deliveries", (WeeklyWindow("06:00", "10:00"),)),
            Permit("disabled"),
        ),
        tariff=Tariff(Decimal("0.05"), "CNY", maximum_stay=timedelta(hours=2)),
        owner_organization="transport",
        occupancy_modified=datetime(2025, 3, 14, 16, 29, 58, 250000, tzinfo=BEIJING),
        date_modified=T,
    )


def garage(total: int = 420, status: Any = "almostFull") -> ParkingSite:
    return ParkingSite(
        id="civic-centre-garage",
        name="Civic Centre Garage",
        kind="off-street",
        location=GeoPoint(lat=39.0462, lng=115.9391),
        total_spots=total,
        available_spots=min(25, total),
        occupied_spots=max(0, min(390, total - 25)),
        out_of_service_spots=5 if total >= 420 else 0,
        detection="balancing",
        allowed_vehicle_types=("car", "van", "truck"),
        permits=(
            Permit("employees", (WeeklyWindow("07:00", "19:00", (1, 2, 3, 4, 5)),)),
            Permit("season-ticket"),
        ),
        tariff=Tariff(
            Decimal("0.08"),
            "CNY",
            maximum_stay=timedelta(days=1, minutes=30),
            opening_hours=(
                WeeklyWindow("07:00", "23:00", (1, 2, 3, 4, 5, 6)),
                WeeklyWindow("09:00", "21:00", (7,)),
            ),
        ),
        off_street_status=status,
        owner_organization="civic-centre-ppp",
        occupancy_modified=T,
        entrance_count=128,
        exit_count=97,
        access_modified=T,
        date_modified=T,
    )


def bare_lot() -> ParkingSite:
    """The least a site can say: free of charge, no spots counted yet, no tariff."""
    return ParkingSite(
        id="school-lot",
        name="School lot",
        kind="off-street",
        location=GeoPoint(lat=-33.8688, lng=151.2093),
        total_spots=0,
        available_spots=0,
        occupied_spots=0,
        out_of_service_spots=0,
        detection="manual",
        date_modified=T,
    )


def free_street() -> ParkingSite:
    return ParkingSite(
        id="lane-7",
        name="Lane 7",
        kind="on-street",
        location=GeoPoint(lat=51.5072, lng=-0.1276),
        total_spots=0,
        available_spots=0,
        occupied_spots=0,
        out_of_service_spots=0,
        detection="manual",
        tariff=Tariff(Decimal("0"), "GBP"),
        date_modified=T,
    )


def level_two() -> ParkingGroup:
    return ParkingGroup(
        id="civic-p2",
        name="Level 2",
        site_id="civic-centre-garage",
        site_kind="off-street",
        categories=("floor-2", "residents", "north", "adjacentSpaces"),
        total_spots=120,
        available_spots=7,
        location=GeoPoint(lat=39.0462, lng=115.9391),
        date_modified=T,
    )


def kerb_zone() -> ParkingGroup:
    return ParkingGroup(
        id="rongdong-a-loading",
        name="Loading bays",
        site_id="rongdong-a",
        site_kind="on-street",
        categories=("deliveries",),
        total_spots=0,
        available_spots=0,
        polygon=(GeoPoint(39.05, 115.949), GeoPoint(39.0502, 115.949), GeoPoint(39.0502, 115.9495)),
        location=GeoPoint(lat=39.0501, lng=115.9492),
        date_modified=T,
    )


def spot(status: Any, category: Any = "on-street", **fields: Any) -> ParkingSpot:
    base: dict[str, Any] = {
        "id": f"rongdong-a-{status}",
        "name": "A-13",
        "site_id": "rongdong-a" if category == "on-street" else "civic-centre-garage",
        "category": category,
        "location": GeoPoint(lat=39.0501, lng=115.9503),
        "status": status,
        "status_time": datetime(2025, 3, 14, 8, 29, 1, tzinfo=UTC),
        "group_id": "rongdong-a-loading",
        "device_id": "sensor-0042",
        "width_m": 2.5,
        "length_m": 5.0,
        "date_modified": T,
    }
    return ParkingSpot(**{**base, **fields})


SPOTS = [spot(s) for s in ("free", "occupied", "closed", "unknown")] + [
    spot("free", "off-street", group_id=None),
    spot("unknown", "off-street", device_id=None, status_time=None, width_m=0.0, length_m=None),
]
ENTITIES = [street(), garage(), bare_lot(), free_street(), level_two(), kerb_zone(), *SPOTS]
IDS = [f"{type(e).__name__}:{e.id}" for e in ENTITIES]


# --- PRK-6 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_the_key_values_form_validates_against_its_smart_data_model(entity):
    document = key_values(entity)
    assert document["type"] in PARKING_MODELS
    assert schema_errors(document) == []


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_the_normalized_form_is_well_formed_ngsi_ld_and_reduces_to_the_key_values_form(entity):
    document = normalized(entity)
    assert normalized_problems(document) == []
    assert reduce(document) == key_values(entity)
    # Plain JSON: Decimals became numbers, datetimes strings.
    assert json.loads(json.dumps(document, allow_nan=False)) == document


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_every_attribute_shown_is_one_the_model_declares(entity):
    """The schemas allow additional properties, so a misspelt name would validate: check names here."""
    document = key_values(entity)
    kind = document["type"]
    shown = set(document) - {"id", "type", "@context"}
    assert shown - declared_attributes(kind) <= ngsild.EXTENSIONS[kind], shown - declared_attributes(kind)


def test_extensions_are_terms_of_a_sibling_parking_model():
    for kind, extra in ngsild.EXTENSIONS.items():
        for name in extra:
            assert name not in declared_attributes(kind), f"{name} is declared by {kind}: not an extension"
            assert any(name in declared_attributes(other) for other in PARKING_MODELS if other != kind), name


def test_a_spot_in_every_status_keeps_the_model_vocabulary_and_says_when_it_changed():
    seen = set()
    for entity in SPOTS[:4]:
        document = normalized(entity)
        seen.add(document["status"]["value"])
        assert document["status"]["observedAt"] == "2025-03-14T08:29:01Z"
    assert seen == {"free", "occupied", "closed", "unknown"}
    assert "observedAt" not in normalized(SPOTS[-1])["status"]  # no time known, none invented


def test_a_spot_maps_to_parking_spot_with_urns_and_lng_lat():
    assert key_values(spot("occupied")) == {
        "id": "urn:ngsi-ld:ParkingSpot:rongdong-a-occupied",
        "type": "ParkingSpot",
        "name": "A-13",
        "location": {"type": "Point", "coordinates": [115.9503, 39.0501]},
        "status": "occupied",
        "category": ["onStreet"],
        "refParkingSite": "urn:ngsi-ld:OnStreetParking:rongdong-a",
        "refParkingGroup": "urn:ngsi-ld:ParkingGroup:rongdong-a-loading",
        "refDevice": ["urn:ngsi-ld:Device:sensor-0042"],
        "width": 2.5,
        "length": 5.0,
        "dateModified": "2025-03-14T08:30:05Z",
        "@context": [
            "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld",
            "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld",
        ],
    }
    unknown = key_values(SPOTS[-1])
    assert unknown["refParkingSite"] == "urn:ngsi-ld:OffStreetParking:civic-centre-garage"
    assert unknown["category"] == ["offStreet"]
    assert not {"refDevice", "width", "length"} & set(unknown)  # unknown sizes are not shown as 0
    relationship = normalized(spot("free"))["refParkingSite"]
    assert relationship == {"type": "Relationship", "object": "urn:ngsi-ld:OnStreetParking:rongdong-a"}


def test_an_on_street_site_maps_tariff_permits_vehicles_and_counts():
    document = key_values(street())
    assert document["id"] == "urn:ngsi-ld:OnStreetParking:rongdong-a"
    assert document["location"]["type"] == "Polygon"
    ring = document["location"]["coordinates"][0]
    assert ring[0] == ring[-1] == [115.949, 39.05]
    assert len(ring) == 5
    assert document["priceRatePerMinute"] == 0.05
    assert isinstance(document["priceRatePerMinute"], float)
    assert document["priceCurrency"] == "CNY"
    assert document["maximumParkingDuration"] == "PT2H"
    assert document["category"] == ["feeCharged", "forElectricalCharging"]
    assert document["allowedVehicleType"] == ["car", "motorcycle"]
    assert document["occupancyDetectionType"] == ["singleSpaceDetection"]
    assert document["requiredPermit"] == ["residentPermit", "deliveriesPermit", "disabledPermit"]
    assert document["permitActiveHours"] == {
        "residentPermit": "Mo-Fr 19:00-08:00",
        "deliveriesPermit": "Mo-Su 06:00-10:00",
    }
    assert (document["totalSpotNumber"], document["availableSpotNumber"]) == (40, 12)
    assert (document["occupiedSpotNumber"], document["outOfServiceSlotNumber"]) == (26, 2)
    assert document["owner"] == ["urn:ngsi-ld:Organization:transport"]
    assert document["address"] == {
        "streetAddress": "Rongdong Avenue",
        "addressLocality": "Xiong'an",
        "addressCountry": "CN",
    }
    assert document["occupancyModified"] == "2025-03-14T08:29:58.250Z"  # +08:00 shown in UTC
    assert normalized(street())["availableSpotNumber"]["observedAt"] == "2025-03-14T08:29:58.250Z"
    assert key_values(free_street())["category"] == ["free"]
    assert key_values(free_street())["priceRatePerMinute"] == 0


def test_an_off_street_garage_maps_status_hours_and_gate_counts():
    document = key_values(garage())
    assert document["id"] == "urn:ngsi-ld:OffStreetParking:civic-centre-garage"
    assert document["location"] == {"type": "Point", "coordinates": [115.9391, 39.0462]}
    assert document["status"] == ["almostFull"]
    assert document["allowedVehicleType"] == ["car", "van", "lorry"]
    assert document["occupancyDetectionType"] == ["balancing"]
    assert document["openingHours"] == "Mo-Sa 07:00-23:00; Su 09:00-21:00"
    assert document["maximumParkingDuration"] == "P1DT30M"
    assert document["requiredPermit"] == ["employeePermit", "specificIdentifiedVehiclePermit"]
    assert document["occupancy"] == round(390 / 420, 4)
    assert (document["vehicleEntranceCount"], document["vehicleExitCount"]) == (128, 97)
    for status in ("open", "full", "spacesAvailable", "closedAbnormal"):
        assert schema_errors(key_values(garage(status=status))) == []
    lot = key_values(bare_lot())
    assert "totalSpotNumber" not in lot  # the model requires at least 1
    assert not {"openingHours", "priceRatePerMinute", "category", "status", "requiredPermit"} & set(lot)


def test_group_labels_map_to_parking_group_categories():
    assert key_values(level_two())["category"] == [
        "offStreet",
        "completeFloor",
        "onlyResidents",
        "adjacentSpaces",
    ]
    zone = key_values(kerb_zone())
    assert zone["category"] == ["onStreet", "loadUnloadZone"]
    assert zone["refParkingSite"] == "urn:ngsi-ld:OnStreetParking:rongdong-a"
    assert "totalSpotNumber" not in zone  # an empty group: the model requires at least 1
    assert zone["location"]["type"] == "Polygon"


def test_every_vehicle_type_the_service_accepts_has_a_model_value():
    from cityos_parking.registry import VEHICLE_TYPES

    assert set(VEHICLE_TYPES) == set(ngsild.VEHICLE_TYPES)
    every = ParkingSite(**{**street().__dict__, "allowed_vehicle_types": tuple(sorted(VEHICLE_TYPES))})
    other = ParkingSite(**{**garage().__dict__, "allowed_vehicle_types": tuple(sorted(VEHICLE_TYPES))})
    assert schema_errors(key_values(every)) == []
    assert schema_errors(key_values(other)) == []


def test_any_permit_name_gives_a_valid_site_of_either_kind():
    permits = tuple(Permit(name) for name in [*ngsild.PERMIT_NAMES, "night-shift", "zone-b2"])
    for site in (street(), garage()):
        assert schema_errors(key_values(ParkingSite(**{**site.__dict__, "permits": permits}))) == []


# --- the checks can fail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "change", "complaint"),
    [
        (spot("free"), {"status": "reserved"}, "status: 'reserved' is not one of"),
        (spot("free"), {"category": ["sideStreet"]}, "category/0: 'sideStreet' is not one of"),
        (spot("free"), {"refParkingSite": None}, "'refParkingSite' is a required property"),
        (spot("free"), {"location": {"type": "Point", "coordinates": "115.95,39.05"}}, "location:"),
        (spot("free"), {"dateModified": "2025-03-14 08:30"}, "is not a 'date-time'"),
        (spot("free"), {"width": -1}, "width: -1 is less than the minimum of 0"),
        (garage(), {"status": "almostFull"}, "status: 'almostFull' is not of type 'array'"),
        (garage(), {"status": ["closed-abnormal"]}, "status/0: 'closed-abnormal' is not one of"),
        (garage(), {"allowedVehicleType": ["truck"]}, "allowedVehicleType/0: 'truck' is not one of"),
        (garage(), {"totalSpotNumber": 0}, "totalSpotNumber: 0 is less than the minimum of 1"),
        (street(), {"availableSpotNumber": 1.5}, "availableSpotNumber: 1.5 is not of type 'integer'"),
        (level_two(), {"allowedVehicleType": "lorry"}, "allowedVehicleType: 'lorry' is not one of"),
        (level_two(), {"refParkingSite": "two words"}, "refParkingSite: 'two words' is not valid"),
    ],
)
def test_the_schema_validation_rejects_what_the_model_forbids(entity, change, complaint):
    document = {**key_values(entity), **change}
    document = {key: value for key, value in document.items() if value is not None}
    errors = schema_errors(document)
    assert any(complaint in error for error in errors), errors


def test_swapped_coordinates_pass_the_schemas_so_the_view_refuses_them():
    """[lat, lng] instead of GeoJSON's [lng, lat]: the models do not constrain coordinates at all, so the
    schema validation cannot see it; GeoPoint refuses it on the way in and the NGSI-LD check on the way
    out. (A swap that stays in range, e.g. lat 30 / lng 60, no check can see.)"""
    swapped = {"type": "Point", "coordinates": [39.05, 115.95]}
    assert schema_errors({**key_values(spot("free")), "location": swapped}) == []
    with pytest.raises(ValueError, match="swapped"):
        GeoPoint(lat=115.95, lng=39.05)
    problems = normalized_problems(
        {**normalized(spot("free")), "location": {"type": "GeoProperty", "value": swapped}}
    )
    assert problems == ["location.value: [39.05, 115.95] is not [lng, lat] in range"]


@pytest.mark.parametrize(
    ("name", "attribute", "complaint"),
    [
        ("status", {"type": "Property"}, "a Property has a non-null value"),
        ("status", {"type": "Property", "value": None}, "a Property has a non-null value"),
        ("status", "free", "an attribute is an object"),
        ("status", {"type": "Text", "value": "free"}, "is not Property, Relationship or GeoProperty"),
        ("status", {"type": "Property", "value": "free", "observedAt": "2025-03-14T08:29:01"}, "ending in Z"),
        ("status", {"type": "Property", "value": "free", "note": "x"}, "an attribute is an object"),
        (
            "refParkingSite",
            {"type": "Relationship", "value": "urn:ngsi-ld:X:y"},
            "a Relationship has an object",
        ),
        ("refParkingSite", {"type": "Relationship", "object": "rongdong a"}, "is not a URI"),
        ("location", {"type": "Property", "value": {"type": "Point", "coordinates": [1, 2]}}, "GeoProperty"),
        (
            "location",
            {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [200, 2]}},
            "in range",
        ),
        ("location", {"type": "GeoProperty", "value": [115.9, 39.0]}, "not a GeoJSON geometry"),
        ("value", {"type": "Property", "value": 1}, "not a valid attribute name"),
    ],
)
def test_the_normalized_check_rejects_malformed_attributes(name, attribute, complaint):
    document = {**normalized(spot("free")), name: attribute}
    problems = normalized_problems(document)
    assert any(complaint in problem for problem in problems), problems


def test_reduce_follows_the_standard_simplification_and_refuses_the_unreducible():
    document = {
        "id": "urn:ngsi-ld:ParkingSpot:x",
        "type": "ParkingSpot",
        "status": {
            "type": "Property",
            "value": "free",
            "observedAt": "2025-03-14T08:29:01Z",
            "reason": {"type": "Property", "value": "sensor"},
        },
        "refParkingSite": {"type": "Relationship", "object": "urn:ngsi-ld:OnStreetParking:y"},
        "refDevice": {"type": "Relationship", "object": ["urn:ngsi-ld:Device:d"]},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1.0, 2.0]}},
    }
    reduced = reduce(document)
    assert reduced == {
        "id": "urn:ngsi-ld:ParkingSpot:x",
        "type": "ParkingSpot",
        "status": "free",
        "refParkingSite": "urn:ngsi-ld:OnStreetParking:y",
        "refDevice": ["urn:ngsi-ld:Device:d"],
        "location": {"type": "Point", "coordinates": [1.0, 2.0]},
    }
    reduced["refDevice"].append("urn:ngsi-ld:Device:e")
    assert document["refDevice"]["object"] == ["urn:ngsi-ld:Device:d"]
    reduced["location"]["coordinates"].append(3.0)
    assert document["location"]["value"]["coordinates"] == [1.0, 2.0]  # a copy, not a view
    for bad in ({"type": "Property"}, {"type": "Relationship", "value": "x"}, "free", {"value": 1}):
        with pytest.raises(ValueError, match="status"):
            reduce({**document, "status": bad})


def test_the_upstream_examples_pass_both_checks():
    """Positive controls: the validator and the NGSI-LD check accept what the models' authors publish."""
    for model in PARKING_MODELS:
        example = json.loads((MODELS / model / "example.json").read_text(encoding="utf-8"))
        assert schema_errors(example) == [], model
        shipped = json.loads((MODELS / model / "example-normalized.jsonld").read_text(encoding="utf-8"))
        assert normalized_problems(shipped) == [], model


def test_a_ref_that_is_not_available_locally_fails_loudly(tmp_path):
    for model in ("ParkingSpot", "OnStreetParking"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "schema.json").write_bytes((MODELS / model / "schema.json").read_bytes())
    with pytest.raises(AssertionError, match=r"not available locally .*common-schema\.json"):
        build_registry(tmp_path)
    # And nothing is ever fetched: the registry has no retrieval.
    with pytest.raises(Unresolvable):
        registry().resolver().lookup(
            "https://smart-data-models.github.io/dataModel.Parking/Other/schema.json"
        )
    assert COMMON in {uri for uri in registry()}


def test_the_inputs_refuse_what_the_view_could_not_show_truthfully():
    with pytest.raises(ValueError, match="timezone-aware"):
        ParkingSpot(**{**spot("free").__dict__, "status_time": datetime(2025, 3, 14, 8, 29)})
    with pytest.raises(ValueError, match="status"):
        spot("reserved")
    with pytest.raises(ValueError, match="exceed"):
        ParkingSite(**{**street().__dict__, "available_spots": 100})
    with pytest.raises(ValueError, match="off-street sites only"):
        ParkingSite(**{**street().__dict__, "off_street_status": "full"})
    with pytest.raises(ValueError, match="vehicle type"):
        ParkingSite(**{**street().__dict__, "allowed_vehicle_types": ("hovercraft",)})
    with pytest.raises(ValueError, match="URN"):
        spot("free", id="a spot")
    with pytest.raises(ValueError, match="digits"):
        Tariff(Decimal("0.0333333333333333333333"), "CNY")
    with pytest.raises(ValueError, match="finite"):
        Tariff(Decimal("NaN"), "CNY")


def test_the_vendored_models_equal_the_shared_ones():
    if not SHARED.is_dir():
        # A clone elsewhere (CI's) has no ../shared; the vendored copy is what the other tests validate.
        pytest.skip(f"{SHARED.resolve()} is absent: cannot compare the vendored Smart Data Models with it")
    vendored = sorted(
        p.relative_to(MODELS) for p in MODELS.rglob("*") if p.is_file() and p.name != "README.md"
    )
    assert len(vendored) == 2 + 3 * len(PARKING_MODELS)
    for relative in vendored:
        assert (MODELS / relative).read_bytes() == (SHARED / relative).read_bytes(), f"{relative} drifted"
