"""PRK-6 over the API: NgsiLdService serves the service's own sites, groups and spots — with their live
counts — as Smart Data Models entities; keyValues validates against the schemas, normalized is
well-formed NGSI-LD and reduces to keyValues."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from cityos.parking.v1 import ngsild_pb2, ngsild_pb2_grpc, parking_pb2
from cityos_parking import ngsild
from cityos_platform.testing.ngsild import SmartDataModels, normalized_problems
from cityos_platform.testing.status import field_violations

# The offline Smart Data Models validation, over the vendored schemas.
schema_errors = SmartDataModels(Path(__file__).parent / "smart-data-models").schema_errors

pytestmark = pytest.mark.req("PRK-6")
KEY_VALUES, NORMALIZED = ngsild_pb2.ENTITY_FORMAT_KEY_VALUES, ngsild_pb2.ENTITY_FORMAT_NORMALIZED


async def _district(lot):
    await lot.site(
        tariff=lot.tariff(
            permits=[
                parking_pb2.PermitClass(
                    name="resident", hours=[parking_pb2.WeeklyWindow(start="18:00", end="08:00")]
                )
            ],
            opening_hours=[parking_pb2.WeeklyWindow(start="00:00", end="00:00")],
        )
    )
    group = await lot.parking.CreateGroup(
        parking_pb2.CreateGroupRequest(
            group=parking_pb2.Group(
                display_name="North side", site="sites/rongdong-a", categories=["residents"]
            ),
            group_id="north",
        ),
        metadata=lot.operator,
    )
    for index in range(3):
        await lot.spot(f"a-{index}", group=group.name, sensor=f"devices/pk-{index}", width_m=2.5, length_m=5)
    await lot.parking.SetSpotStatus(
        parking_pb2.SetSpotStatusRequest(name="spots/a-0", status=parking_pb2.SPOT_STATUS_OCCUPIED),
        metadata=lot.operator,
    )
    await lot.parking.SetSpotStatus(
        parking_pb2.SetSpotStatusRequest(name="spots/a-1", status=parking_pb2.SPOT_STATUS_FREE),
        metadata=lot.operator,
    )
    await lot.site(
        "station-garage",
        display_name="Station Garage",
        kind=parking_pb2.SITE_KIND_OFF_STREET,
        detection_type=parking_pb2.DETECTION_TYPE_BALANCING,
        capacity=300,
    )


async def _get(lot, entity_id: str, form: int) -> dict:
    answer = await ngsild_pb2_grpc.NgsiLdServiceStub(lot.channel).GetEntity(
        ngsild_pb2.GetEntityRequest(id=entity_id, format=form), metadata=lot.citizen
    )
    return json.loads(answer.entity_json)


async def test_every_entity_validates_and_its_normalized_form_reduces_to_it(lot):
    await _district(lot)
    ids = [
        "urn:ngsi-ld:OnStreetParking:rongdong-a",
        "urn:ngsi-ld:OffStreetParking:station-garage",
        "urn:ngsi-ld:ParkingGroup:north",
        *(f"urn:ngsi-ld:ParkingSpot:a-{index}" for index in range(3)),
    ]
    for entity_id in ids:
        key_values = await _get(lot, entity_id, KEY_VALUES)
        normalized = await _get(lot, entity_id, NORMALIZED)
        assert key_values["id"] == entity_id
        assert schema_errors(key_values) == [], entity_id
        assert normalized_problems(normalized) == [], entity_id
        assert ngsild.reduce(normalized) == key_values
    street = await _get(lot, ids[0], KEY_VALUES)
    # The live counts: one occupied, one free, one not known yet (out of service).
    assert (street["totalSpotNumber"], street["occupiedSpotNumber"], street["availableSpotNumber"]) == (
        3,
        1,
        1,
    )
    garage = await _get(lot, ids[1], KEY_VALUES)
    assert (garage["totalSpotNumber"], garage["availableSpotNumber"], garage["status"]) == (
        300,
        300,
        ["spacesAvailable"],
    )
    spot = await _get(lot, "urn:ngsi-ld:ParkingSpot:a-0", NORMALIZED)
    assert spot["status"]["value"] == "occupied"
    assert "observedAt" in spot["status"]


async def test_entities_of_a_type_come_in_pages(lot):
    await _district(lot)
    service = ngsild_pb2_grpc.NgsiLdServiceStub(lot.channel)
    seen, token = [], ""
    while True:
        page = await service.ListEntities(
            ngsild_pb2.ListEntitiesRequest(
                type="ParkingSpot", page_size=2, page_token=token, format=KEY_VALUES
            ),
            metadata=lot.citizen,
        )
        seen += [json.loads(entity)["id"] for entity in page.entities_json]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"urn:ngsi-ld:ParkingSpot:a-{index}" for index in range(3)]
    garages = await service.ListEntities(
        ngsild_pb2.ListEntitiesRequest(type="OffStreetParking"), metadata=lot.citizen
    )
    assert [json.loads(entity)["id"] for entity in garages.entities_json] == [
        "urn:ngsi-ld:OffStreetParking:station-garage"
    ]


async def test_a_bad_or_unknown_entity_id_is_answered_plainly(lot):
    await _district(lot)
    service = ngsild_pb2_grpc.NgsiLdServiceStub(lot.channel)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await service.GetEntity(ngsild_pb2.GetEntityRequest(id="sites/rongdong-a"), metadata=lot.citizen)
    assert [field for field, _ in field_violations(bad.value)] == ["id"]
    for missing in ("urn:ngsi-ld:ParkingSpot:nowhere", "urn:ngsi-ld:OffStreetParking:rongdong-a"):
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await service.GetEntity(ngsild_pb2.GetEntityRequest(id=missing), metadata=lot.citizen)
        assert absent.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as wrong_type:
        await service.ListEntities(ngsild_pb2.ListEntitiesRequest(type="Streetlight"), metadata=lot.citizen)
    assert [field for field, _ in field_violations(wrong_type.value)] == ["type"]
