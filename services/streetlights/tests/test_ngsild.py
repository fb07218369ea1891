"""STL-7: the NGSI-LD view — the keyValues form of lights, groups and cabinets validates against the
Smart Data Models Streetlighting schemas (every `$ref` resolved from local files, never the network), the
normalized form is well-formed NGSI-LD and reduces to the keyValues form.

The schemas are the vendored copies in `smart-data-models/` (verbatim from ../shared/domain, so a clean
clone runs these tests); one test proves the copies equal ../shared's where that folder exists (absent:
skipped with the reason, a failure under CI=true)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from referencing import Registry
from referencing.exceptions import Unresolvable

from cityos_platform.testing.fixtures import unreachable
from cityos_platform.testing.ngsild import SmartDataModels, build_registry, normalized_problems
from cityos_streetlights import ngsild
from cityos_streetlights.ngsild import (
    GeoPoint,
    Streetlight,
    StreetlightControlCabinet,
    StreetlightGroup,
    key_values,
    normalized,
    reduce,
)

pytestmark = pytest.mark.req("STL-7")

MODELS = Path(__file__).parent / "smart-data-models"
SHARED = Path(__file__).parents[3] / ".." / "shared" / "domain" / "smart-data-models"
SHOWN_MODELS = ("Streetlight", "StreetlightGroup", "StreetlightControlCabinet")
ALL_MODELS = (*SHOWN_MODELS, "StreetlightModel", "StreetlightFeeder")
COMMON = "https://smart-data-models.github.io/data-models/common-schema.json"

# --- the checks, over the vendored schemas (cityos_platform.testing.ngsild) ----------------------------

CHECKS = SmartDataModels(MODELS)
schema_errors = CHECKS.schema_errors
declared_attributes = CHECKS.declared_attributes


def registry() -> Registry[Any]:
    return CHECKS.registry


# --- realistic inputs ---------------------------------------------------------------------------------

T = datetime(2025, 11, 14, 9, 30, 5, tzinfo=UTC)
READ = datetime(2025, 11, 14, 18, 42, 7, 125000, tzinfo=timezone(timedelta(hours=8)))


def full_light(**fields: Any) -> Streetlight:
    base: dict[str, Any] = {
        "id": "rd-0042",
        "name": "Rongdong Ave 42",
        "location": GeoPoint(lat=39.0501, lng=115.9503),
        "status": "ok",
        "date_created": T - timedelta(days=90),
        "date_modified": T,
        "owner_organization": "public-works",
        "model_id": "led-60",
        "rated_power_w": 60.0,
        "cabinet_id": "cab-rd-1",
        "feeder_id": "cab-rd-1-c3",
        "group_id": "rongdong-ave",
        "device_id": "slc-0042",
        "street": "Rongdong Avenue",
        "pole_number": "RD-42",
        "location_category": "central-island",
        "lantern_height_m": 10.5,
        "last_lamp_change": datetime(2024, 6, 1, 10, 0, tzinfo=UTC),
        "reading_time": READ,
        "power_state": "low",
        "dim_level": 50.0,
        "power_w": 31.2,
        "voltage_v": 229.8,
        "current_a": 0.142,
        "power_factor": 0.95,
        "energy_wh": 93412.5,
    }
    return Streetlight(**{**base, **fields})


def bare_light() -> Streetlight:
    """The least a light says: a new pole, no controller, nothing reported."""
    return Streetlight(id="new-1", name="New 1", location=GeoPoint(lat=-33.8688, lng=151.2093), status="ok")


def full_group(**fields: Any) -> StreetlightGroup:
    base: dict[str, Any] = {
        "id": "rongdong-ave",
        "name": "Rongdong Avenue",
        "location": GeoPoint(lat=39.0502, lng=115.9504),
        "light_ids": ("rd-0041", "rd-0042", "rd-0043"),
        "cabinet_id": "cab-rd-1",
        "schedule_id": "dusk-to-dawn-50",
        "description": "Main avenue, dimmed to 50 % after 23:00",
        "power_state": "low",
        "dim_level": 50,
        "switching_modes": ("night-ON", "night-LOW", "day-OFF"),
        "circuit_id": "cab-rd-1-c3",
        "date_created": T - timedelta(days=90),
        "date_modified": T,
        "owner_organization": "public-works",
    }
    return StreetlightGroup(**{**base, **fields})


def bare_group() -> StreetlightGroup:
    return StreetlightGroup(id="spare", name="Spare", location=GeoPoint(lat=39.05, lng=115.95))


def full_cabinet(**fields: Any) -> StreetlightControlCabinet:
    base: dict[str, Any] = {
        "id": "cab-rd-1",
        "name": "Rongdong cabinet 1",
        "location": GeoPoint(lat=39.0499, lng=115.9497),
        "working_mode": "semiautomatic",
        "group_ids": ("rongdong-ave", "rongdong-park"),
        "serial_number": "SC-2024-00017",
        "maximum_power_w": 15000.0,
        "device_id": "cc-rd-1",
        "reading_time": READ,
        "voltage_l1_v": 231.0,
        "voltage_l2_v": 229.5,
        "voltage_l3_v": 230.2,
        "active_power_w": 4380.0,
        "energy_wh": 162456000.0,
        "power_factor": 0.93,
        "date_created": T - timedelta(days=400),
        "date_modified": T,
        "owner_organization": "public-works",
    }
    return StreetlightControlCabinet(**{**base, **fields})


def bare_cabinet() -> StreetlightControlCabinet:
    return StreetlightControlCabinet(
        id="cab-2",
        name="Cabinet 2",
        location=GeoPoint(lat=39.06, lng=115.96),
        working_mode="manual",
        group_ids=("g-1",),
    )


STATES = [
    full_light(id=f"rd-{state}", power_state=state, dim_level=level, status=status)
    for state, level, status in (
        ("on", 100.0, "ok"),
        ("off", 0.0, "defectiveLamp"),
        ("bootingUp", 100.0, "columnIssue"),
        ("low", 1.0, "brokenLantern"),
    )
]
ENTITIES = [full_light(), bare_light(), *STATES, full_group(), bare_group(), full_cabinet(), bare_cabinet()]
IDS = [f"{type(e).__name__}:{e.id}" for e in ENTITIES]


# --- STL-7 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_the_key_values_form_validates_against_its_smart_data_model(entity):
    document = key_values(entity)
    assert document["type"] in SHOWN_MODELS
    assert schema_errors(document) == []


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_the_normalized_form_is_well_formed_ngsi_ld_and_reduces_to_the_key_values_form(entity):
    document = normalized(entity)
    assert normalized_problems(document) == []
    assert reduce(document) == key_values(entity)
    assert schema_errors(reduce(document)) == []
    assert json.loads(json.dumps(document, allow_nan=False)) == document  # plain JSON


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_every_attribute_shown_is_one_the_model_declares(entity):
    """The schemas allow additional properties, so a misspelt name would validate: check names here."""
    document = key_values(entity)
    kind = document["type"]
    shown = set(document) - {"id", "type", "@context"}
    assert shown - declared_attributes(kind) <= ngsild.EXTENSIONS[kind], shown - declared_attributes(kind)


def test_a_light_maps_every_attribute_with_urns_units_and_lng_lat():
    assert key_values(full_light()) == {
        "id": "urn:ngsi-ld:Streetlight:rd-0042",
        "type": "Streetlight",
        "name": "Rongdong Ave 42",
        "location": {"type": "Point", "coordinates": [115.9503, 39.0501]},
        "status": "ok",
        "address": {"streetAddress": "Rongdong Avenue"},
        "owner": ["urn:ngsi-ld:Organization:public-works"],
        "dateCreated": "2025-08-16T09:30:05Z",
        "dateModified": "2025-11-14T09:30:05Z",
        "refStreetlightModel": "urn:ngsi-ld:StreetlightModel:led-60",
        "powerRating": 60.0,
        "refStreetlightControlCabinet": "urn:ngsi-ld:StreetlightControlCabinet:cab-rd-1",
        "circuit": "cab-rd-1-c3",
        "refStreetlightGroup": "urn:ngsi-ld:StreetlightGroup:rongdong-ave",
        "refDevice": ["urn:ngsi-ld:Device:slc-0042"],
        "controllingMethod": "individual",
        "streetPoleNum": "RD-42",
        "locationCategory": "centralIsland",
        "lanternHeight": 10.5,
        "dateLastLampChange": "2024-06-01T10:00:00Z",
        "powerState": "low",
        "illuminanceLevel": 0.5,  # the model's 0..1, not our percent
        "powerConsumption": 31.2,
        "voltage": 229.8,
        "current": 0.142,
        "powerFactor": 0.95,
        "lifetimePowerConsumption": 93.4125,  # kWh
        "observationDateTime": "2025-11-14T10:42:07.125Z",  # +08:00 shown in UTC
        "@context": [
            "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld",
            "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld",
        ],
    }
    document = normalized(full_light())
    assert document["powerConsumption"] == {
        "type": "Property",
        "value": 31.2,
        "observedAt": "2025-11-14T10:42:07.125Z",
        "unitCode": "WTT",
    }
    assert document["lifetimePowerConsumption"]["unitCode"] == "KWH"
    assert document["lanternHeight"] == {"type": "Property", "value": 10.5, "unitCode": "MTR"}
    assert document["refStreetlightGroup"] == {
        "type": "Relationship",
        "object": "urn:ngsi-ld:StreetlightGroup:rongdong-ave",
    }
    assert document["status"] == {"type": "Property", "value": "ok"}


def test_a_bare_light_shows_only_what_is_known():
    assert set(key_values(bare_light())) == {"id", "type", "name", "location", "status", "@context"}
    # Zero as "not set" is not shown as a measurement, and a category the model lacks is not invented.
    light = key_values(full_light(lantern_height_m=0.0, location_category="motorway", device_id=None))
    assert not {"lanternHeight", "locationCategory", "refDevice", "controllingMethod"} & set(light)
    # A reading of 0 is a reading: shown.
    dark = key_values(full_light(power_w=0.0, dim_level=0.0, power_state="off"))
    assert (dark["powerConsumption"], dark["illuminanceLevel"], dark["powerState"]) == (0.0, 0.0, "off")


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("road", "road"),
        ("Sidewalk", "sidewalk"),
        ("central-island", "centralIsland"),
        ("central_island", "centralIsland"),
        ("Central Island", "centralIsland"),
        ("pedestrian path", "pedestrianPath"),
        ("motorway", None),
        ("", None),
        ("--", None),
        (None, None),
    ],
)
def test_location_categories_map_to_the_model_enumeration_or_nothing(text, category):
    assert ngsild.location_category(text) == category


def test_a_group_maps_lights_cabinet_program_and_state():
    document = key_values(full_group())
    assert document["id"] == "urn:ngsi-ld:StreetlightGroup:rongdong-ave"
    assert document["refStreetlight"] == [
        "urn:ngsi-ld:Streetlight:rd-0041",
        "urn:ngsi-ld:Streetlight:rd-0042",
        "urn:ngsi-ld:Streetlight:rd-0043",
    ]
    assert document["refStreetlightControlCabinet"] == "urn:ngsi-ld:StreetlightControlCabinet:cab-rd-1"
    assert document["activeProgramId"] == "dusk-to-dawn-50"
    assert document["switchingMode"] == ["night-ON", "night-LOW", "day-OFF"]
    assert (document["powerState"], document["illuminanceLevel"]) == ("low", 0.5)
    assert document["circuitId"] == "cab-rd-1-c3"
    assert document["location"] == {"type": "Point", "coordinates": [115.9504, 39.0502]}
    assert normalized(full_group())["refStreetlight"]["type"] == "Relationship"
    assert set(key_values(bare_group())) == {"id", "type", "name", "location", "@context"}


def test_a_cabinet_maps_working_mode_groups_and_meter_in_the_models_units():
    document = key_values(full_cabinet())
    assert document["workingMode"] == "semiautomatic"
    assert document["refStreetlightGroup"] == [
        "urn:ngsi-ld:StreetlightGroup:rongdong-ave",
        "urn:ngsi-ld:StreetlightGroup:rongdong-park",
    ]
    assert document["maximumPowerAvailable"] == 15.0  # kW
    assert document["totalActivePower"] == 4.38  # kW
    assert document["energyConsumed"] == 162456.0  # kWh
    assert (document["voltageR"], document["voltageS"], document["voltageT"]) == (231.0, 229.5, 230.2)
    assert document["cosPhi"] == 0.93
    assert document["serialNumber"] == "SC-2024-00017"
    assert document["refDevice"] == ["urn:ngsi-ld:Device:cc-rd-1"]
    body = normalized(full_cabinet())["totalActivePower"]
    assert body == {
        "type": "Property",
        "value": 4.38,
        "observedAt": "2025-11-14T10:42:07.125Z",
        "unitCode": "KWT",
    }
    assert set(key_values(bare_cabinet())) == {
        "id",
        "type",
        "name",
        "location",
        "workingMode",
        "refStreetlightGroup",
        "@context",
    }


def test_the_centroid_of_a_groups_lights():
    points = [GeoPoint(39.0, 115.9), GeoPoint(39.1, 116.0), GeoPoint(39.2, 116.2)]
    middle = ngsild.centroid(points)
    assert middle is not None
    assert (middle.lat, middle.lng) == (pytest.approx(39.1), pytest.approx(116.03333333))
    assert ngsild.centroid([]) is None


@pytest.mark.parametrize(
    ("states", "group"),
    [
        (["on", "on"], "on"),
        (["off", "off", "off"], "off"),
        (["on", "low"], "low"),
        (["low", "low"], "low"),
        (["on", "bootingUp", "low"], "bootingUp"),
        (["on", "off"], None),  # half dark: no single state
        (["low", None], None),  # one not reported yet
        ([], None),
    ],
)
def test_a_groups_power_state_comes_from_its_lights(states, group):
    assert ngsild.group_power_state(states) == group


@pytest.mark.parametrize(
    ("night", "day", "modes"),
    [
        ({100}, {0}, ("night-ON", "day-OFF")),
        ({100, 50}, {0}, ("night-ON", "night-LOW", "day-OFF")),
        ({100, 0}, {0}, ("night-ON", "night-OFF", "day-OFF")),
        ({100}, {100}, ("always-ON",)),
        ({30}, {10}, ("night-LOW", "day-LOW")),
        ({100}, {100, 0}, ("night-ON", "day-ON", "day-OFF")),
        (set(), set(), ()),
    ],
)
def test_switching_modes_from_the_night_and_day_levels(night, day, modes):
    assert ngsild.switching_modes(night, day) == modes
    group = full_group(switching_modes=modes)
    assert schema_errors(key_values(group)) == []


# --- the checks can fail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "change", "complaint"),
    [
        (full_light(), {"status": "broken"}, "status: 'broken' is not one of"),
        (full_light(), {"status": None}, "'status' is a required property"),
        (full_light(), {"powerState": "ON"}, "powerState: 'ON' is not one of"),
        (full_light(), {"illuminanceLevel": 50}, "illuminanceLevel: 50 is greater than the maximum of 1"),
        (
            full_light(),
            {"locationCategory": "central-island"},
            "locationCategory: 'central-island' is not one",
        ),
        (full_light(), {"lanternHeight": -1}, "lanternHeight: -1 is less than the minimum of 0"),
        (
            full_light(),
            {"refDevice": "urn:ngsi-ld:Device:x"},
            "refDevice: 'urn:ngsi-ld:Device:x' is not of type",
        ),
        (full_light(), {"refDevice": []}, "refDevice: [] should be non-empty"),
        (full_light(), {"dateLastLampChange": "2024-06-01 10:00"}, "is not a 'date-time'"),
        (full_light(), {"controllingMethod": "cabinet"}, "controllingMethod: 'cabinet' is not one of"),
        (full_light(), {"location": None}, "'location' is a required property"),
        (full_group(), {"switchingMode": "night-ON"}, "switchingMode: 'night-ON' is not of type 'array'"),
        (full_group(), {"switchingMode": ["night-on"]}, "switchingMode/0: 'night-on' is not one of"),
        (full_group(), {"refStreetlight": []}, "refStreetlight: [] should be non-empty"),
        (full_group(), {"illuminanceLevel": 1.5}, "illuminanceLevel: 1.5 is greater than the maximum of 1"),
        (full_cabinet(), {"refStreetlightGroup": None}, "'refStreetlightGroup' is a required property"),
        (full_cabinet(), {"refStreetlightGroup": []}, "refStreetlightGroup: [] should be non-empty"),
        (full_cabinet(), {"workingMode": "auto"}, "workingMode: 'auto' is not one of"),
        (full_cabinet(), {"workingMode": None}, "'workingMode' is a required property"),
        (full_cabinet(), {"voltageR": -1}, "voltageR: -1 is less than the minimum of 0"),
        (full_cabinet(), {"cosPhi": 1.2}, "cosPhi: 1.2 is greater than the maximum of 1"),
    ],
)
def test_the_schema_validation_rejects_what_the_model_forbids(entity, change, complaint):
    document = {**key_values(entity), **change}
    document = {key: value for key, value in document.items() if value is not None}
    errors = schema_errors(document)
    assert any(complaint in error for error in errors), errors


def test_swapped_coordinates_pass_the_schemas_so_the_view_refuses_them():
    """[lat, lng] instead of GeoJSON's [lng, lat]: the models do not constrain coordinates, so the schema
    validation cannot see it; GeoPoint refuses it on the way in and the NGSI-LD check on the way out."""
    swapped = {"type": "Point", "coordinates": [39.05, 115.95]}
    assert schema_errors({**key_values(full_light()), "location": swapped}) == []
    with pytest.raises(ValueError, match="swapped"):
        GeoPoint(lat=115.95, lng=39.05)
    problems = normalized_problems(
        {**normalized(full_light()), "location": {"type": "GeoProperty", "value": swapped}}
    )
    assert problems == ["location.value: [39.05, 115.95] is not [lng, lat] in range"]


@pytest.mark.parametrize(
    ("name", "attribute", "complaint"),
    [
        ("status", {"type": "Property"}, "a Property has a non-null value"),
        ("status", {"type": "Property", "value": None}, "a Property has a non-null value"),
        ("status", "ok", "an attribute is an object"),
        ("status", {"type": "Text", "value": "ok"}, "is not Property, Relationship or GeoProperty"),
        (
            "powerState",
            {"type": "Property", "value": "on", "observedAt": "2025-11-14T10:42:07"},
            "ending in Z",
        ),
        ("powerConsumption", {"type": "Property", "value": 3, "unitCode": ""}, "unitCode: not a code"),
        (
            "refDevice",
            {"type": "Relationship", "value": ["urn:ngsi-ld:Device:d"]},
            "a Relationship has an object",
        ),
        ("refStreetlightGroup", {"type": "Relationship", "object": "rongdong ave"}, "is not a URI"),
        (
            "refStreetlight",
            {"type": "Relationship", "object": ["urn:ngsi-ld:Streetlight:a", "urn:ngsi-ld:Streetlight:a"]},
            "unique URIs",
        ),
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
    document = {**normalized(full_light()), name: attribute}
    problems = normalized_problems(document)
    assert any(complaint in problem for problem in problems), problems


def test_reduce_follows_the_standard_simplification_and_refuses_the_unreducible():
    document = {
        "id": "urn:ngsi-ld:Streetlight:x",
        "type": "Streetlight",
        "powerState": {
            "type": "Property",
            "value": "on",
            "observedAt": "2025-11-14T10:42:07Z",
            "reason": {"type": "Property", "value": "schedule"},
        },
        "refDevice": {"type": "Relationship", "object": ["urn:ngsi-ld:Device:d"]},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1.0, 2.0]}},
    }
    reduced = reduce(document)
    assert reduced == {
        "id": "urn:ngsi-ld:Streetlight:x",
        "type": "Streetlight",
        "powerState": "on",
        "refDevice": ["urn:ngsi-ld:Device:d"],
        "location": {"type": "Point", "coordinates": [1.0, 2.0]},
    }
    reduced["refDevice"].append("urn:ngsi-ld:Device:e")
    assert document["refDevice"]["object"] == ["urn:ngsi-ld:Device:d"]  # a copy, not a view
    for bad in ({"type": "Property"}, {"type": "Relationship", "value": "x"}, "on", {"value": 1}):
        with pytest.raises(ValueError, match="powerState"):
            reduce({**document, "powerState": bad})


def test_the_key_values_form_is_a_copy_not_a_view_of_the_entity():
    group = full_group()
    document = key_values(group)
    document["refStreetlight"].append("urn:ngsi-ld:Streetlight:x")
    document["location"]["coordinates"][0] = 0.0
    assert key_values(group)["refStreetlight"][-1] == "urn:ngsi-ld:Streetlight:rd-0043"
    assert key_values(group)["location"]["coordinates"][0] == 115.9504


@pytest.mark.parametrize("model", ALL_MODELS)
def test_the_upstream_examples_pass_both_checks(model):
    """Positive controls: the validator and the NGSI-LD check accept what the models' authors publish
    (the group's MultiLineString location too)."""
    example = json.loads((MODELS / model / "example.json").read_text(encoding="utf-8"))
    assert schema_errors(example) == [], model
    shipped = json.loads((MODELS / model / "example-normalized.jsonld").read_text(encoding="utf-8"))
    assert normalized_problems(shipped) == [], model


def test_our_entities_have_the_shape_of_the_upstream_normalized_examples():
    """Every attribute the upstream normalized example and our normalized form both carry has the same
    NGSI-LD type (Property/Relationship/GeoProperty) and, for relationships, the same cardinality."""
    for entity in (full_light(), full_group(), full_cabinet()):
        ours = normalized(entity)
        shipped = json.loads(
            (MODELS / ours["type"] / "example-normalized.jsonld").read_text(encoding="utf-8")
        )
        common = (set(ours) & set(shipped)) - {"id", "type", "@context"}
        assert common, ours["type"]
        for name in common:
            assert ours[name]["type"] == shipped[name]["type"], name
            if ours[name]["type"] == "Relationship":
                assert isinstance(ours[name]["object"], list) == isinstance(shipped[name]["object"], list), (
                    name
                )
        assert ours["id"].startswith(f"urn:ngsi-ld:{ours['type']}:")
        assert shipped["id"].startswith(f"urn:ngsi-ld:{ours['type']}:")


def test_a_ref_that_is_not_available_locally_fails_loudly(tmp_path):
    for model in ("Streetlight", "StreetlightGroup"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "schema.json").write_bytes((MODELS / model / "schema.json").read_bytes())
    with pytest.raises(AssertionError, match=r"not available locally .*common-schema\.json"):
        build_registry(tmp_path)
    with pytest.raises(Unresolvable):  # nothing is ever fetched: the registry has no retrieval
        registry().resolver().lookup(
            "https://smart-data-models.github.io/dataModel.Streetlighting/Other/schema.json"
        )
    assert COMMON in {uri for uri in registry()}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: full_light(reading_time=datetime(2025, 11, 14, 10, 42)), "timezone-aware"),
        (lambda: full_light(status="broken"), "status"),
        (lambda: full_light(power_state="ON"), "power state"),
        (lambda: full_light(dim_level=150.0), "dim_level"),
        (lambda: full_light(power_w=float("nan")), "finite"),
        (lambda: full_light(power_factor=1.5), "power_factor"),
        (lambda: full_light(id="a light"), "URN"),
        (lambda: full_light(lantern_height_m=-2.0), "lantern_height_m"),
        (lambda: full_group(light_ids=("a", "a")), "unique"),
        (lambda: full_group(switching_modes=("night-on",)), "switching mode"),
        (lambda: full_cabinet(group_ids=()), "at least one group"),
        (lambda: full_cabinet(working_mode="auto"), "working mode"),
        (lambda: full_cabinet(active_power_w=-5.0), "active_power_w"),
        (lambda: ngsild.switching_modes({101}, set()), "0 to 100"),
    ],
)
def test_the_inputs_refuse_what_the_view_could_not_show_truthfully(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_vendored_models_equal_the_shared_ones():
    if not SHARED.is_dir():
        # A clone elsewhere has no ../shared; the vendored copy is what the other tests validate.
        unreachable(f"{SHARED.resolve()} is absent: cannot compare the vendored Smart Data Models with it")
    vendored = sorted(
        p.relative_to(MODELS) for p in MODELS.rglob("*") if p.is_file() and p.name != "README.md"
    )
    assert len(vendored) == 2 + 3 * len(ALL_MODELS)
    for relative in vendored:
        assert (MODELS / relative).read_bytes() == (SHARED / relative).read_bytes(), f"{relative} drifted"
