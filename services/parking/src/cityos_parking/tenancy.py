"""What the parking service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's site with a group and spots, a request about them for every RPC that changes them;
reading is exempt, since parking is public information."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.parking.v1 import (
    availability_pb2,
    parking_pb2,
    parking_pb2_grpc,
    reservations_pb2,
    reservations_pb2_grpc,
)
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

SERVICE = "/cityos.parking.v1.ParkingService/"
AVAILABILITY = "/cityos.parking.v1.AvailabilityService/"
NGSI_LD = "/cityos.parking.v1.NgsiLdService/"
PUBLIC = "parking is public information: every signed-in caller reads sites, groups and spots"
EXEMPT = (
    {
        SERVICE + method: PUBLIC
        for method in ("GetSite", "ListSites", "GetGroup", "ListGroups", "GetSpot", "ListSpots")
    }
    | {
        AVAILABILITY + method: PUBLIC + ", and where there is space to park"
        for method in ("GetSiteAvailability", "SearchAvailability", "WatchAvailability")
    }
    | {NGSI_LD + method: PUBLIC + ", in NGSI-LD" for method in ("GetEntity", "ListEntities")}
)
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
    # A garage counting at its gates: only its owner or operator reports its gates.
    garage = _site(organization)
    garage.kind = parking_pb2.SITE_KIND_OFF_STREET
    garage.detection_type = parking_pb2.DETECTION_TYPE_BALANCING
    garage.capacity = 100
    await parking.CreateSite(parking_pb2.CreateSiteRequest(site=garage, site_id="b-garage"), metadata=owner)
    case.names.append("b-garage")
    add(
        AVAILABILITY + "RecordGatePassage",
        availability_pb2.RecordGatePassageRequest(
            site="sites/b-garage", gate="north", direction=availability_pb2.GATE_DIRECTION_ENTRY, count=1
        ),
    )
    await reservation_examples(channel, token, organization, case)
    return case


RESERVATIONS = "/cityos.parking.v1.ReservationService/"
SESSIONS = "/cityos.parking.v1.SessionService/"
RESERVATION_EXEMPT = {
    RESERVATIONS + "CreateReservation": "anyone signed in reserves at any site (parking is public); the "
    "hold is its holder's, and every other reservation RPC is scoped to the holder and the site's operator",
    SESSIONS + "QuoteFee": "a site's prices are public information, like the site itself",
}


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def reservation_examples(
    channel: grpc.aio.Channel, token: TokenFor, organization: str, case: TenancyCase
) -> None:
    owner = token(organization, ["org-admin", "operator"])
    reservations = reservations_pb2_grpc.ReservationServiceStub(channel)
    sessions = reservations_pb2_grpc.SessionServiceStub(channel)
    soon = datetime.now(UTC) + timedelta(minutes=5)

    async def hold(plate: str) -> reservations_pb2.Reservation:
        held: reservations_pb2.Reservation = await reservations.CreateReservation(
            reservations_pb2.CreateReservationRequest(
                reservation=reservations_pb2.Reservation(
                    site="sites/b-street",
                    start_time=_stamp(soon),
                    end_time=_stamp(soon + timedelta(hours=1)),
                    plate=plate,
                    vehicle_type="car",
                ),
                request_id=uuid.uuid4().hex,
            ),
            metadata=owner,
        )
        return held

    # Two holds: the site has two spots (capacity holds count against them).
    kept, to_cancel = await hold("B10001"), await hold("B10002")
    session = await sessions.StartSession(
        reservations_pb2.StartSessionRequest(
            session=reservations_pb2.ParkingSession(
                site="sites/b-street", plate="B20001", vehicle_type="car"
            ),
            request_id=uuid.uuid4().hex,
        ),
        metadata=owner,
    )
    case.names += [
        kept.name.partition("/")[2],
        to_cancel.name.partition("/")[2],
        session.name.partition("/")[2],
    ]
    add = case.requests.__setitem__
    add(RESERVATIONS + "GetReservation", reservations_pb2.GetReservationRequest(name=kept.name))
    add(RESERVATIONS + "ListReservations", reservations_pb2.ListReservationsRequest())
    add(RESERVATIONS + "CancelReservation", reservations_pb2.CancelReservationRequest(name=to_cancel.name))
    add(RESERVATIONS + "CheckIn", reservations_pb2.CheckInRequest(site="sites/b-street", plate="B10001"))
    # At a gate: only the site's operator speaks for its gates (A: PERMISSION_DENIED).
    add(
        SESSIONS + "StartSession",
        reservations_pb2.StartSessionRequest(
            session=reservations_pb2.ParkingSession(
                site="sites/b-street",
                plate="B20002",
                vehicle_type="car",
                source=reservations_pb2.SESSION_SOURCE_GATE,
            ),
            request_id="tenancy-gate-1",
        ),
    )
    add(SESSIONS + "GetSession", reservations_pb2.GetSessionRequest(name=session.name))
    add(SESSIONS + "ListSessions", reservations_pb2.ListSessionsRequest())
    add(SESSIONS + "StopSession", reservations_pb2.StopSessionRequest(name=session.name))
    case.listings |= {RESERVATIONS + "ListReservations", SESSIONS + "ListSessions"}


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT | RESERVATION_EXEMPT)
