"""PRK-1: sites, groups and spots — create, get, list, update with a field mask, delete — and bad input
answered with the fields named."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from cityos.common.v1 import events_pb2, events_pb2_grpc
from cityos.parking.v1 import parking_pb2
from cityos_platform.testing.status import error_info, field_violations

pytestmark = pytest.mark.req("PRK-1")


async def test_a_site_with_groups_and_spots_through_its_life(lot):
    site = await lot.site()
    assert (site.name, site.total_spots, site.ownership.owner_organization) == (
        "sites/rongdong-a",
        0,
        "transport",
    )
    assert site.area_cell
    group = await lot.parking.CreateGroup(
        parking_pb2.CreateGroupRequest(
            group=parking_pb2.Group(display_name="North side", site=site.name, categories=["north"]),
            group_id="north",
        ),
        metadata=lot.operator,
    )
    spot = await lot.spot("a-001", group=group.name, sensor="devices/pk-001", width_m=2.5, length_m=5.0)
    assert (spot.status, spot.sensor) == (parking_pb2.SPOT_STATUS_UNKNOWN, "devices/pk-001")
    await lot.spot("a-002", group=group.name)
    # Everyone signed in reads parking.
    got = await lot.parking.GetSite(parking_pb2.GetSiteRequest(name=site.name), metadata=lot.citizen)
    assert got.total_spots == 2
    listed = await lot.parking.ListSpots(
        parking_pb2.ListSpotsRequest(group=group.name, page_size=1), metadata=lot.citizen
    )
    assert [s.name for s in listed.spots] == ["spots/a-001"]
    rest = await lot.parking.ListSpots(
        parking_pb2.ListSpotsRequest(group=group.name, page_size=1, page_token=listed.next_page_token),
        metadata=lot.citizen,
    )
    assert ([s.name for s in rest.spots], rest.next_page_token) == (["spots/a-002"], "")
    # Update with a mask and the etag read.
    updated = await lot.parking.UpdateSite(
        parking_pb2.UpdateSiteRequest(
            site=parking_pb2.Site(
                name=site.name,
                etag=site.etag,
                tariff=lot.tariff(daily_cap="60", maximum_stay=duration_pb2.Duration(seconds=7200)),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["tariff"]),
        ),
        metadata=lot.operator,
    )
    assert (updated.tariff.daily_cap, updated.tariff.maximum_stay.seconds) == ("60", 7200)
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await lot.parking.UpdateSite(
            parking_pb2.UpdateSiteRequest(
                site=parking_pb2.Site(name=site.name, etag=site.etag, display_name="X"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=lot.operator,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    # An operator closes a spot; the change is an event with how long the previous status lasted.
    closed = await lot.parking.SetSpotStatus(
        parking_pb2.SetSpotStatusRequest(
            name=spot.name, status=parking_pb2.SPOT_STATUS_CLOSED, reason="road works"
        ),
        metadata=lot.operator,
    )
    assert closed.status == parking_pb2.SPOT_STATUS_CLOSED
    # Deleting in order: a site or group that still holds spots is refused.
    with pytest.raises(grpc.aio.AioRpcError) as not_empty:
        await lot.parking.DeleteSite(parking_pb2.DeleteSiteRequest(name=site.name), metadata=lot.operator)
    assert error_info(not_empty.value).reason == "SITE_NOT_EMPTY"
    for name in ("spots/a-001", "spots/a-002"):
        await lot.parking.DeleteSpot(parking_pb2.DeleteSpotRequest(name=name), metadata=lot.operator)
    await lot.parking.DeleteGroup(parking_pb2.DeleteGroupRequest(name=group.name), metadata=lot.operator)
    await lot.parking.DeleteSite(parking_pb2.DeleteSiteRequest(name=site.name), metadata=lot.operator)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await lot.parking.GetSite(parking_pb2.GetSiteRequest(name=site.name), metadata=lot.citizen)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    events = [
        event
        async for batch in events_pb2_grpc.EventServiceStub(lot.channel).StreamEvents(
            events_pb2.StreamEventsRequest(follow=False), metadata=lot.operator
        )
        for event in batch.events
    ]
    types = [event.type for event in events]
    assert types[:5] == [
        "parking.site.created",
        "parking.group.created",
        "parking.spot.created",
        "parking.spot.created",
        "parking.site.updated",
    ]
    assert "parking.spot.closed" in types
    assert types[-1] == "parking.site.deleted"


async def test_bad_input_is_answered_with_every_field_named(lot):
    with pytest.raises(grpc.aio.AioRpcError) as bad_site:
        await lot.parking.CreateSite(
            parking_pb2.CreateSiteRequest(
                site=parking_pb2.Site(
                    kind=0,
                    allowed_vehicle_types=["hovercraft"],
                    tariff=parking_pb2.Tariff(
                        price_per_minute="cheap",
                        currency="yuan",
                        free_minutes=-5,
                        maximum_stay=duration_pb2.Duration(seconds=10),
                        opening_hours=[parking_pb2.WeeklyWindow(weekdays=[8], start="25:00", end="08:00")],
                        permits=[parking_pb2.PermitClass(name="Residents")],
                        time_zone="Mars/Olympus",
                    ),
                ),
                site_id="Bad Id",
            ),
            metadata=lot.operator,
        )
    assert bad_site.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {field for field, _ in field_violations(bad_site.value)} == {
        "site.display_name",
        "site.kind",
        "site.detection_type",
        "site.allowed_vehicle_types[0]",
        "site.location",
        "site.tariff.price_per_minute",
        "site.tariff.currency",
        "site.tariff.free_minutes",
        "site.tariff.maximum_stay",
        "site.tariff.permits[0].name",
        "site.tariff.opening_hours[0].weekdays[0]",
        "site.tariff.opening_hours[0].start",
        "site.tariff.time_zone",
        "site_id",
    }
    await lot.site()
    with pytest.raises(grpc.aio.AioRpcError) as bad_spot:
        await lot.spot("a-1", width_m=-1, display_name="", allowed_vehicle_types=["spaceship"])
    assert {field for field, _ in field_violations(bad_spot.value)} == {
        "spot.display_name",
        "spot.width_m",
        "spot.allowed_vehicle_types[0]",
    }
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await lot.spot("a-2", group="groups/nowhere")
    assert field_violations(elsewhere.value) == [
        ("spot.group", "groups/nowhere is not a group of sites/rongdong-a")
    ]
    await lot.spot("a-3", sensor="devices/pk-9")
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await lot.spot("a-4", sensor="devices/pk-9")
    assert error_info(twice.value).reason == "SENSOR_BOUND"
    with pytest.raises(grpc.aio.AioRpcError) as no_mask:
        await lot.parking.UpdateSpot(
            parking_pb2.UpdateSpotRequest(spot=parking_pb2.Spot(name="spots/a-3")), metadata=lot.operator
        )
    assert [f for f, _ in field_violations(no_mask.value)] == ["update_mask"]
    with pytest.raises(grpc.aio.AioRpcError) as bad_name:
        await lot.parking.GetSpot(parking_pb2.GetSpotRequest(name="spot/a-3"), metadata=lot.citizen)
    assert [f for f, _ in field_violations(bad_name.value)] == ["name"]
    with pytest.raises(grpc.aio.AioRpcError) as no_status:
        await lot.parking.SetSpotStatus(
            parking_pb2.SetSpotStatusRequest(name="spots/a-3"), metadata=lot.operator
        )
    assert [f for f, _ in field_violations(no_status.value)] == ["status"]
    # A citizen reads but does not change parking.
    with pytest.raises(grpc.aio.AioRpcError) as citizen:
        await lot.parking.DeleteSpot(parking_pb2.DeleteSpotRequest(name="spots/a-3"), metadata=lot.citizen)
    assert citizen.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Another organization's operator cannot change it, and learns nothing beyond "not found".
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await lot.parking.DeleteSpot(parking_pb2.DeleteSpotRequest(name="spots/a-3"), metadata=lot.other_org)
    assert other.value.code() == grpc.StatusCode.NOT_FOUND


async def test_only_a_balancing_site_has_a_capacity(lot):
    garage = await lot.site(
        "station-garage",
        kind=parking_pb2.SITE_KIND_OFF_STREET,
        detection_type=parking_pb2.DETECTION_TYPE_BALANCING,
        capacity=400,
    )
    assert garage.capacity == 400
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await lot.site("street", capacity=20)  # SINGLE_SPACE counts its spots
    assert field_violations(refused.value) == [
        ("site.capacity", "only a BALANCING site has a capacity; other sites count their spots")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await lot.parking.UpdateSite(
            parking_pb2.UpdateSiteRequest(
                site=parking_pb2.Site(name=garage.name, capacity=-1),
                update_mask=field_mask_pb2.FieldMask(paths=["capacity"]),
            ),
            metadata=lot.operator,
        )
    assert [field for field, _ in field_violations(refused.value)] == ["site.capacity"]
    updated = await lot.parking.UpdateSite(
        parking_pb2.UpdateSiteRequest(
            site=parking_pb2.Site(name=garage.name, capacity=450),
            update_mask=field_mask_pb2.FieldMask(paths=["capacity"]),
        ),
        metadata=lot.operator,
    )
    assert updated.capacity == 450
