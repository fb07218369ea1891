"""What the manholes service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's covers and a request about them for every mounted RPC. Covers are not public: another
organization neither reads nor changes them."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

COVERS = "/cityos.manholes.v1.CoverService/"
EXEMPT = {
    COVERS + "SetRiskScores": "called by the analytics job's service account only (role `service` and its "
    "client named in CITYOS_MANHOLES_RISK_WRITERS): city-wide by design; any other caller, of any "
    "organization, is refused (services/manholes/tests/test_covers.py, MAN-6)",
}
POINT = resources_pb2.GeoPoint(latitude=39.05, longitude=115.95)


def _cover(organization: str) -> manholes_pb2.Cover:
    return manholes_pb2.Cover(
        display_name="B-0001",
        kind=manholes_pb2.COVER_KIND_SEWER,
        ownership=resources_pb2.Ownership(owner_organization=organization),
        location=POINT,
        road_class=manholes_pb2.ROAD_CLASS_LOCAL,
    )


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    owner = token(organization, ["org-admin", "operator"])
    covers = manholes_pb2_grpc.CoverServiceStub(channel)
    for cover_id in ("b-cover", "b-cover-extra"):
        await covers.CreateCover(
            manholes_pb2.CreateCoverRequest(cover=_cover(organization), cover_id=cover_id), metadata=owner
        )
    case = TenancyCase(names=["b-cover", "b-cover-extra"])
    add = case.requests.__setitem__
    add(
        COVERS + "CreateCover",
        manholes_pb2.CreateCoverRequest(cover=_cover(organization), cover_id="b-new-cover"),
    )
    add(COVERS + "GetCover", manholes_pb2.GetCoverRequest(name="covers/b-cover"))
    add(COVERS + "ListCovers", manholes_pb2.ListCoversRequest())
    add(COVERS + "ListCoversByRisk", manholes_pb2.ListCoversByRiskRequest())
    add(
        COVERS + "UpdateCover",
        manholes_pb2.UpdateCoverRequest(
            cover=manholes_pb2.Cover(name="covers/b-cover", display_name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
    )
    add(COVERS + "DeleteCover", manholes_pb2.DeleteCoverRequest(name="covers/b-cover-extra"))
    add("/cityos.common.v1.EventService/StreamEvents", events_pb2.StreamEventsRequest(follow=False))
    case.listings = {
        COVERS + "ListCovers",
        COVERS + "ListCoversByRisk",
        "/cityos.common.v1.EventService/StreamEvents",
    }
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
