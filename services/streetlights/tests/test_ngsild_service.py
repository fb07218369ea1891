"""STL-7 over the API: NgsiLdService serves the service's own lights, groups and cabinets — with their live
state, faults and schedules — as Smart Data Models entities the caller reaches; keyValues validates
against the schemas, normalized is well-formed NGSI-LD and reduces to keyValues; paging, areas, tenancy
and refusals."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from cityos.streetlights.v1 import faults_pb2, inventory_pb2, ngsild_pb2, schedules_pb2
from cityos_platform.areas import cell_for
from cityos_platform.testing.ngsild import SmartDataModels, normalized_problems
from cityos_platform.testing.status import error_info, field_violations, refused
from cityos_streetlights.models import (
    CabinetRow,
    FaultRow,
    FeederRow,
    GroupRow,
    LightModelRow,
    LightRow,
    ScheduleRow,
)
from cityos_streetlights.ngsild import GeoPoint, reduce
from cityos_streetlights.ngsild_service import program_levels

# The offline Smart Data Models validation, over the vendored schemas.
schema_errors = SmartDataModels(Path(__file__).parent / "smart-data-models").schema_errors

pytestmark = pytest.mark.req("STL-7")
KEY_VALUES, NORMALIZED = ngsild_pb2.ENTITY_FORMAT_KEY_VALUES, ngsild_pb2.ENTITY_FORMAT_NORMALIZED
OWNER = "public-works"
LAT, LNG = 39.05, 115.95
READ = datetime(2025, 11, 14, 10, 42, 7, tzinfo=UTC)
URN = "urn:ngsi-ld:"


def _versioned() -> dict[str, Any]:
    now = datetime(2025, 11, 1, 8, 0, tzinfo=UTC)
    return {"etag": "e0", "create_time": now, "update_time": now}


def _at(offset: float) -> dict[str, Any]:
    """A point `offset` degrees east of the centre (about 8.6 km a tenth at 39° N)."""
    return {"latitude": LAT, "longitude": LNG + offset, "area_cell": cell_for(LAT, LNG + offset)}


def _step(anchor: int, level: int, *, local_time: str = "", offset_s: int = 0) -> dict[str, Any]:
    step = schedules_pb2.ScheduleStep(
        anchor=anchor,  # type: ignore[arg-type]
        local_time=local_time,
        offset=duration_pb2.Duration(seconds=offset_s),
        dim_level=level,
    )
    return json_format.MessageToDict(step)


def _light(light_id: str, offset: float, **fields: Any) -> LightRow:
    base: dict[str, Any] = {
        "light_id": light_id,
        "display_name": light_id.upper(),
        "light_model_id": "led-60",
        "controller_faults": [],
        "owner_organization": OWNER,
        **_at(offset),
        **_versioned(),
    }
    return LightRow(**{**base, **fields})


async def district(street: Any) -> None:
    """The rows (the inventory's CRUD is another module's subject):

    cab-1 (semiautomatic, live readings) feeds f-1; cab-2 supplies nothing; cab-3 has no working mode.
    g-1 (cab-1, schedule dusk-dawn): sl-1 (dimmed, full live state), sl-2 (on, lamp failure open),
        sl-3 (owned by `utilities`). g-3 (cab-1): no lights. g-2: no lights, no cabinet.
    g-4 (cab-3). g-5 (no cabinet): sl-6 on cab-1's feeder. sl-4: a bare light. sl-5: column issue."""
    async with street.app.db.transaction() as tx:
        s = tx.session
        s.add(
            LightModelRow(
                light_model_id="led-60",
                display_name="LED 60 W",
                lamp_technology=inventory_pb2.LAMP_TECHNOLOGY_LED,
                rated_power_w=60.0,
                owner_organization=OWNER,
                **_versioned(),
            )
        )
        s.add(
            CabinetRow(
                cabinet_id="cab-1",
                display_name="Cabinet 1",
                working_mode=inventory_pb2.WORKING_MODE_SEMIAUTOMATIC,
                device_id="cc-1",
                serial_number="SC-17",
                maximum_power_w=15000.0,
                voltage_l1_v=231.0,
                voltage_l2_v=229.5,
                voltage_l3_v=230.2,
                active_power_w=4380.0,
                energy_wh=162456000.0,
                power_factor=0.93,
                circuits={"1": True},
                reading_time=READ,
                owner_organization=OWNER,
                **_at(0.001),
                **_versioned(),
            )
        )
        s.add(
            CabinetRow(
                cabinet_id="cab-2",
                display_name="Cabinet 2",
                working_mode=inventory_pb2.WORKING_MODE_AUTOMATIC,
                circuits={},
                owner_organization=OWNER,
                **_at(0.2),
                **_versioned(),
            )
        )
        s.add(
            CabinetRow(
                cabinet_id="cab-3",
                display_name="Cabinet 3",
                working_mode=inventory_pb2.WORKING_MODE_UNSPECIFIED,
                circuits={},
                owner_organization=OWNER,
                **_at(0.3),
                **_versioned(),
            )
        )
        s.add(
            ScheduleRow(
                schedule_id="dusk-dawn",
                display_name="Dusk to dawn, 50 % after 23:00",
                time_zone="Asia/Shanghai",
                steps=[
                    _step(schedules_pb2.STEP_ANCHOR_SUNSET, 100),
                    _step(schedules_pb2.STEP_ANCHOR_FIXED_TIME, 50, local_time="23:00"),
                    _step(schedules_pb2.STEP_ANCHOR_SUNRISE, 0),
                ],
                owner_organization=OWNER,
                **_versioned(),
            )
        )
        await s.flush()
        s.add(
            FeederRow(
                feeder_id="f-1",
                display_name="F-1",
                cabinet_id="cab-1",
                circuit=1,
                phase=inventory_pb2.PHASE_L1,
                **_versioned(),
            )
        )
        for group_id, cabinet_id, schedule_id in (
            ("g-1", "cab-1", "dusk-dawn"),
            ("g-2", None, None),
            ("g-3", "cab-1", None),
            ("g-4", "cab-3", None),
            ("g-5", None, None),
        ):
            s.add(
                GroupRow(
                    group_id=group_id,
                    display_name=group_id.upper(),
                    description="Main avenue" if group_id == "g-1" else "",
                    cabinet_id=cabinet_id,
                    schedule_id=schedule_id,
                    owner_organization=OWNER,
                    **_versioned(),
                )
            )
        await s.flush()
        on_feeder = {"feeder_id": "f-1", "cabinet_id": "cab-1"}
        s.add_all(
            [
                _light(
                    "sl-1",
                    0.0,
                    group_id="g-1",
                    device_id="slc-1",
                    street="Rongdong Avenue",
                    pole_number="RD-1",
                    location_category="sidewalk",
                    lantern_height_m=10.0,
                    last_lamp_change_time=datetime(2024, 6, 1, tzinfo=UTC),
                    power_state=inventory_pb2.POWER_STATE_LOW,
                    dim_level=50.0,
                    power_w=31.0,
                    voltage_v=230.0,
                    current_a=0.14,
                    power_factor=0.95,
                    energy_wh=93412.5,
                    reading_time=READ,
                    desired_level=50,
                    **on_feeder,
                ),
                _light(
                    "sl-2",
                    0.002,
                    group_id="g-1",
                    device_id="slc-2",
                    power_state=inventory_pb2.POWER_STATE_ON,
                    reading_time=READ,
                    desired_level=50,
                    **on_feeder,
                ),
                _light("sl-3", 0.004, group_id="g-1", owner_organization="utilities", **on_feeder),
                _light("sl-4", 0.1),
                _light("sl-5", 0.006, reported_status=inventory_pb2.LIGHT_STATUS_COLUMN_ISSUE),
                _light("sl-6", 0.008, group_id="g-5", **on_feeder),
            ]
        )
        for fault_id, subject, state in (
            ("ft-1", "lights/sl-2", faults_pb2.FAULT_STATE_OPEN),
            ("ft-2", "lights/sl-5", faults_pb2.FAULT_STATE_CLEARED),
        ):
            s.add(
                FaultRow(
                    fault_id=fault_id,
                    kind=faults_pb2.FAULT_KIND_LAMP_FAILURE,
                    subject=subject,
                    state=state,
                    affected_lights=[],
                    raise_time=READ,
                    update_time=READ,
                    area_cell=cell_for(LAT, LNG),
                    owner_organization=OWNER,
                )
            )


async def get(street: Any, entity_id: str, form: int = KEY_VALUES, metadata: Any = None) -> dict[str, Any]:
    answer = await street.ngsild.GetEntity(
        ngsild_pb2.GetEntityRequest(id=entity_id, format=form),
        metadata=metadata or street.analyst,
        timeout=10,
    )
    return json.loads(answer.entity_json)


async def listing(
    street: Any, kind: str, form: int = KEY_VALUES, metadata: Any = None, **fields: Any
) -> list[dict]:
    """Every page of ListEntities, in order."""
    found: list[dict] = []
    token = ""
    while True:
        answer = await street.ngsild.ListEntities(
            ngsild_pb2.ListEntitiesRequest(type=kind, format=form, page_token=token, **fields),
            metadata=metadata or street.analyst,
            timeout=10,
        )
        found += [json.loads(text) for text in answer.entities_json]
        token = answer.next_page_token
        if not token:
            return found


REACHABLE = {
    "Streetlight": ["sl-1", "sl-2", "sl-4", "sl-5", "sl-6"],
    "StreetlightGroup": ["g-1", "g-3", "g-4", "g-5"],  # g-2 has no location
    "StreetlightControlCabinet": ["cab-1"],  # cab-2 supplies nothing, cab-3 has no working mode
}


async def test_every_entity_validates_and_its_normalized_form_reduces_to_it(street):
    await district(street)
    for kind, ids in REACHABLE.items():
        documents = await listing(street, kind)
        assert [d["id"] for d in documents] == [f"{URN}{kind}:{i}" for i in ids], kind
        normal = await listing(street, kind, NORMALIZED)
        for key_values, document in zip(documents, normal, strict=True):
            assert schema_errors(key_values) == [], key_values["id"]
            assert normalized_problems(document) == [], document["id"]
            assert reduce(document) == key_values
            # GetEntity answers the same as the listing, in both forms.
            assert await get(street, key_values["id"]) == key_values
            assert await get(street, key_values["id"], NORMALIZED) == document
            assert await get(street, key_values["id"], ngsild_pb2.ENTITY_FORMAT_UNSPECIFIED) == document


async def test_a_light_shows_its_rows_live_state_and_faults(street):
    await district(street)
    light = await get(street, f"{URN}Streetlight:sl-1")
    assert light["location"] == {"type": "Point", "coordinates": [LNG, LAT]}
    assert light["status"] == "ok"
    assert (light["powerState"], light["illuminanceLevel"], light["powerConsumption"]) == ("low", 0.5, 31.0)
    assert light["refStreetlightModel"] == f"{URN}StreetlightModel:led-60"
    assert light["powerRating"] == 60.0
    assert light["refStreetlightControlCabinet"] == f"{URN}StreetlightControlCabinet:cab-1"
    assert light["refStreetlightGroup"] == f"{URN}StreetlightGroup:g-1"
    assert light["circuit"] == "f-1"
    assert light["refDevice"] == [f"{URN}Device:slc-1"]
    assert (light["locationCategory"], light["lanternHeight"], light["streetPoleNum"]) == (
        "sidewalk",
        10.0,
        "RD-1",
    )
    assert light["address"] == {"streetAddress": "Rongdong Avenue"}
    assert light["lifetimePowerConsumption"] == 93.4125
    assert light["observationDateTime"] == "2025-11-14T10:42:07Z"
    assert light["owner"] == [f"{URN}Organization:{OWNER}"]
    normal = await get(street, f"{URN}Streetlight:sl-1", NORMALIZED)
    assert normal["powerState"]["observedAt"] == "2025-11-14T10:42:07Z"
    assert normal["voltage"] == {
        "type": "Property",
        "value": 230.0,
        "observedAt": "2025-11-14T10:42:07Z",
        "unitCode": "VLT",
    }
    # An open lamp failure makes the lamp defective; a cleared one does not; a crew's report shows.
    assert (await get(street, f"{URN}Streetlight:sl-2"))["status"] == "defectiveLamp"
    assert (await get(street, f"{URN}Streetlight:sl-5"))["status"] == "columnIssue"
    bare = await get(street, f"{URN}Streetlight:sl-4")
    assert set(bare) == {
        "id",
        "type",
        "name",
        "location",
        "status",
        "owner",
        "dateCreated",
        "dateModified",
        "refStreetlightModel",
        "powerRating",
        "@context",
    }


async def test_a_group_shows_the_lights_the_caller_reaches_its_program_and_state(street):
    await district(street)
    group = await get(street, f"{URN}StreetlightGroup:g-1")
    assert group["refStreetlight"] == [f"{URN}Streetlight:sl-1", f"{URN}Streetlight:sl-2"]  # not sl-3
    assert group["location"]["coordinates"] == [pytest.approx(LNG + 0.001), pytest.approx(LAT)]
    assert group["refStreetlightControlCabinet"] == f"{URN}StreetlightControlCabinet:cab-1"
    assert group["activeProgramId"] == "dusk-dawn"
    assert group["switchingMode"] == ["night-ON", "night-LOW", "day-OFF"]
    assert (group["powerState"], group["illuminanceLevel"], group["circuitId"]) == ("low", 0.5, "f-1")
    assert group["description"] == "Main avenue"
    # A city-wide caller reaches sl-3 too: it counts in the list and the centroid; sl-3 reports nothing,
    # so the group has no single power state, and no shared desired level.
    city = street.token("svc/broker", "city", "service")
    everything = await get(street, f"{URN}StreetlightGroup:g-1", metadata=city)
    assert len(everything["refStreetlight"]) == 3
    assert everything["location"]["coordinates"][0] == pytest.approx(LNG + 0.002)
    assert not {"powerState", "illuminanceLevel"} & set(everything)
    # Without lights: the cabinet's location; without lights and cabinet: not representable.
    lonely = await get(street, f"{URN}StreetlightGroup:g-3")
    assert lonely["location"]["coordinates"] == [LNG + 0.001, LAT]
    assert "refStreetlight" not in lonely
    error = await refused(get(street, f"{URN}StreetlightGroup:g-2"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert (info.reason, info.metadata["missing"]) == ("ENTITY_INCOMPLETE", "location")


async def test_a_cabinet_shows_the_groups_it_supplies_and_its_meter(street):
    await district(street)
    cabinet = await get(street, f"{URN}StreetlightControlCabinet:cab-1")
    # g-1 and g-3 name it; g-5's light hangs on its feeder.
    assert cabinet["refStreetlightGroup"] == [f"{URN}StreetlightGroup:{g}" for g in ("g-1", "g-3", "g-5")]
    assert cabinet["workingMode"] == "semiautomatic"
    assert (cabinet["maximumPowerAvailable"], cabinet["totalActivePower"]) == (15.0, 4.38)
    assert cabinet["energyConsumed"] == 162456.0
    assert (cabinet["voltageR"], cabinet["voltageS"], cabinet["voltageT"], cabinet["cosPhi"]) == (
        231.0,
        229.5,
        230.2,
        0.93,
    )
    assert (cabinet["serialNumber"], cabinet["refDevice"]) == ("SC-17", [f"{URN}Device:cc-1"])
    for cabinet_id, missing in (("cab-2", "refStreetlightGroup"), ("cab-3", "workingMode")):
        error = await refused(get(street, f"{URN}StreetlightControlCabinet:{cabinet_id}"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, cabinet_id
        assert error_info(error).metadata["missing"] == missing


async def test_only_what_the_caller_reaches(street):
    await district(street)
    utilities = street.other_org
    assert [d["id"] for d in await listing(street, "Streetlight", metadata=utilities)] == [
        f"{URN}Streetlight:sl-3"
    ]
    assert await listing(street, "StreetlightGroup", metadata=utilities) == []
    assert await listing(street, "StreetlightControlCabinet", metadata=utilities) == []
    for entity_id in (
        f"{URN}Streetlight:sl-1",
        f"{URN}StreetlightGroup:g-1",
        f"{URN}StreetlightControlCabinet:cab-1",
        f"{URN}Streetlight:nowhere",
    ):
        error = await refused(get(street, entity_id, metadata=utilities))
        assert error.code() == grpc.StatusCode.NOT_FOUND, entity_id
    light = await get(street, f"{URN}Streetlight:sl-3", metadata=utilities)
    assert light["refStreetlightGroup"] == f"{URN}StreetlightGroup:g-1"
    # The owner does not reach the concessionaire's light.
    error = await refused(get(street, f"{URN}Streetlight:sl-3"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_pages_and_areas(street):
    await district(street)
    first = await street.ngsild.ListEntities(
        ngsild_pb2.ListEntitiesRequest(type="Streetlight", page_size=2), metadata=street.analyst, timeout=10
    )
    assert len(first.entities_json) == 2
    assert first.next_page_token
    pages = await listing(street, "Streetlight", page_size=2)
    assert [d["id"].rsplit(":", 1)[1] for d in pages] == REACHABLE["Streetlight"]
    # A token belongs to its query.
    error = await refused(
        street.ngsild.ListEntities(
            ngsild_pb2.ListEntitiesRequest(
                type="StreetlightGroup", page_size=2, page_token=first.next_page_token
            ),
            metadata=street.analyst,
            timeout=10,
        )
    )
    assert [name for name, _ in field_violations(error)] == ["page_token"]
    # A box around the centre (~1 km): sl-1, sl-2, sl-5, sl-6 and cab-1; not sl-4 (8.6 km east).
    box = f"bbox:{LAT - 0.005},{LNG - 0.005},{LAT + 0.005},{LNG + 0.009}"
    near = await listing(street, "Streetlight", area=box)
    assert [d["id"].rsplit(":", 1)[1] for d in near] == ["sl-1", "sl-2", "sl-5", "sl-6"]
    groups = await listing(street, "StreetlightGroup", area=box)
    assert [d["id"].rsplit(":", 1)[1] for d in groups] == ["g-1", "g-3", "g-5"]  # g-3 by its cabinet
    cabinets = await listing(street, "StreetlightControlCabinet", area=box)
    assert [d["id"].rsplit(":", 1)[1] for d in cabinets] == ["cab-1"]
    far = f"bbox:{LAT - 0.005},{LNG + 0.095},{LAT + 0.005},{LNG + 0.105}"
    assert [d["id"].rsplit(":", 1)[1] for d in await listing(street, "Streetlight", area=far)] == ["sl-4"]
    assert await listing(street, "StreetlightGroup", area=far) == []


async def test_bad_requests_name_every_bad_field(street):
    await district(street)
    cases = [
        ({"id": "urn:ngsi-ld:OnStreetParking:sl-1"}, ["id"]),
        ({"id": "sl-1"}, ["id"]),
        ({"id": f"{URN}Streetlight:"}, ["id"]),
        ({"id": f"{URN}Streetlight:SL 1"}, ["id"]),
        ({"id": f"{URN}Streetlight:sl-1", "format": 9}, ["format"]),
        ({"id": "", "format": -1}, ["id", "format"]),
    ]
    for fields, violations in cases:
        error = await refused(
            street.ngsild.GetEntity(
                ngsild_pb2.GetEntityRequest(**fields), metadata=street.analyst, timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [name for name, _ in field_violations(error)] == violations, fields
    listings = [
        ({"type": "Lamp"}, ["type"]),
        ({"type": ""}, ["type"]),
        ({"type": "Streetlight", "format": 9}, ["format"]),
        ({"type": "Streetlight", "page_size": -1}, ["page_size"]),
        ({"type": "Streetlight", "area": "bbox:1,2"}, ["area"]),
        ({"type": "Lamp", "format": 9, "page_size": -1}, ["type", "format", "page_size"]),
    ]
    for fields, violations in listings:
        error = await refused(
            street.ngsild.ListEntities(
                ngsild_pb2.ListEntitiesRequest(**fields), metadata=street.analyst, timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [name for name, _ in field_violations(error)] == violations, fields


# --- the switching modes of a program (pure) --------------------------------------------------------------

XIONGAN = GeoPoint(LAT, LNG)
SUNSET, SUNRISE = schedules_pb2.STEP_ANCHOR_SUNSET, schedules_pb2.STEP_ANCHOR_SUNRISE
FIXED = schedules_pb2.STEP_ANCHOR_FIXED_TIME


def steps(*items: tuple[int, int, Any]) -> list[schedules_pb2.ScheduleStep]:
    """(anchor, level, local time or offset minutes)."""
    out = []
    for anchor, level, when in items:
        step = schedules_pb2.ScheduleStep(anchor=anchor, dim_level=level)  # type: ignore[arg-type]
        if anchor == FIXED:
            step.local_time = when
        else:
            step.offset.FromTimedelta(timedelta(minutes=when))
        out.append(step)
    return out


@pytest.mark.parametrize(
    ("program", "day", "night_levels", "day_levels"),
    [
        # Dusk to dawn with a night dimming step: the same in winter and summer.
        (steps((SUNSET, 100, 0), (FIXED, 50, "23:00"), (SUNRISE, 0, 0)), date(2025, 12, 21), {100, 50}, {0}),
        (steps((SUNSET, 100, 0), (FIXED, 50, "23:00"), (SUNRISE, 0, 0)), date(2025, 6, 21), {100, 50}, {0}),
        # Switching 15 minutes before sunset and after sunrise is twilight, not "day-ON".
        (steps((SUNSET, 100, -15), (SUNRISE, 0, 15)), date(2025, 3, 20), {100}, {0}),
        # Fixed times burn in June daylight and leave December mornings dark.
        (steps((FIXED, 100, "18:00"), (FIXED, 0, "06:00")), date(2025, 6, 21), {100}, {100, 0}),
        (steps((FIXED, 100, "18:00"), (FIXED, 0, "06:00")), date(2025, 12, 21), {100, 0}, {0}),
        (steps((FIXED, 100, "00:00")), date(2025, 12, 21), {100}, {100}),
    ],
)
def test_the_levels_a_program_sets_at_night_and_by_day(program, day, night_levels, day_levels):
    assert program_levels(program, "Asia/Shanghai", XIONGAN, day) == (night_levels, day_levels)


def test_a_program_whose_night_and_day_cannot_be_told_has_no_levels():
    program = steps((SUNSET, 100, 0), (SUNRISE, 0, 0))
    assert program_levels(program, "Europe/Oslo", GeoPoint(78.22, 15.65), date(2025, 12, 21)) is None  # polar
    assert program_levels(program, "Mars/Olympus", XIONGAN, date(2025, 12, 21)) is None
    assert program_levels([], "Asia/Shanghai", XIONGAN, date(2025, 12, 21)) is None
