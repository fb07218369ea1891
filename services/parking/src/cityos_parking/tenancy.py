"""What the parking service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's site with a group and spots, a request about them for every RPC that changes them;
reading is exempt, since parking is public information."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

SERVICE = "/cityos.parking.v1.ParkingService/"
PUBLIC = "parking is public information: every signed-in caller reads sites, groups and spots"
EXEMPT = {
    SERVICE + method: PUBLIC
    for method in ("GetSite", "ListSites", "GetGroup", "ListGroups", "GetSpot", "ListSpots")
}
POINT = resources_pb2.GeoPoint(latitude=39.05, longitude=115.95)


def _site(organization: str) -> parking_pb2.Site:
    return parking_pb2.Site(
        display_name="B street",
        kind=parking_pb2.SITE_KIND_ON_STREET,
        location=POINT,
        ownership=resources_pb2.Ownership(owner_organization=organization),
        detection_type=parking_pb2.DETECTION_TYPE_SINGLE_SPACE,
        allowed_vehicle_types=["car"],
        tariff=parking_pb2.Tariff(price_per_minute="0.05", currency="CNY", time_zone="Asia/Shanghai"),
    )


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    owner = token(organization, ["org-admin", "operator"])
    parking = parking_pb2_grpc.ParkingServiceStub(channel)
    for site_id in ("b-street", "b-empty-street"):
        await parking.CreateSite(
            parking_pb2.CreateSiteRequest(site=_site(organization), site_id=site_id), metadata=owner
        )
    for group_id in ("b-side", "b-empty-side"):
        await parking.CreateGroup(
            parking_pb2.CreateGroupRequest(
                group=parking_pb2.Group(display_name="B side", site="sites/b-street"), group_id=group_id
            ),
            metadata=owner,
        )
    for spot_id in ("b-spot", "b-spot-extra"):
        await parking.CreateSpot(
            parking_pb2.CreateSpotRequest(
                spot=parking_pb2.Spot(
                    display_name="1", site="sites/b-street", group="groups/b-side", location=POINT
                ),
                spot_id=spot_id,
            ),
            metadata=owner,
        )
    case = TenancyCase(names=["b-street", "b-side", "b-spot"])
    add = case.requests.__setitem__
    add(
        SERVICE + "CreateSite",
        parking_pb2.CreateSiteRequest(site=_site(organization), site_id="b-new-street"),
    )
    add(
        SERVICE + "UpdateSite",
        parking_pb2.UpdateSiteRequest(
            site=parking_pb2.Site(name="sites/b-street", display_name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
    )
    add(
        SERVICE + "CreateGroup",
        parking_pb2.CreateGroupRequest(
            group=parking_pb2.Group(display_name="New", site="sites/b-street"), group_id="b-new-side"
        ),
    )
    add(
        SERVICE + "UpdateGroup",
        parking_pb2.UpdateGroupRequest(
            group=parking_pb2.Group(name="groups/b-side", display_name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
    )
    add(
        SERVICE + "CreateSpot",
        parking_pb2.CreateSpotRequest(
            spot=parking_pb2.Spot(display_name="2", site="sites/b-street", location=POINT),
            spot_id="b-new-spot",
        ),
    )
    add(
        SERVICE + "UpdateSpot",
        parking_pb2.UpdateSpotRequest(
            spot=parking_pb2.Spot(name="spots/b-spot", width_m=2.5),
            update_mask=field_mask_pb2.FieldMask(paths=["width_m"]),
        ),
    )
    add(
        SERVICE + "SetSpotStatus",
        parking_pb2.SetSpotStatusRequest(
            name="spots/b-spot", status=parking_pb2.SPOT_STATUS_CLOSED, reason="works"
        ),
    )
    add(SERVICE + "DeleteSpot", parking_pb2.DeleteSpotRequest(name="spots/b-spot-extra"))
    add(SERVICE + "DeleteGroup", parking_pb2.DeleteGroupRequest(name="groups/b-empty-side"))
    add(SERVICE + "DeleteSite", parking_pb2.DeleteSiteRequest(name="sites/b-empty-street"))
    add("/cityos.common.v1.EventService/StreamEvents", events_pb2.StreamEventsRequest(follow=False))
    case.listings = {"/cityos.common.v1.EventService/StreamEvents"}
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
