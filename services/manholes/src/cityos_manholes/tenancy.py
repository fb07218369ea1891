"""What the manholes service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's covers and a request about them for every mounted RPC. Covers are not public: another
organization neither reads nor changes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

COVERS = "/cityos.manholes.v1.CoverService/"
ALARMS = "/cityos.manholes.v1.AlarmService/"
WORK_ORDERS = "/cityos.manholes.v1.WorkOrderService/"
NO_ALARMS_THROUGH_THE_API = (
    "alarms are raised only by the rules applied to a terminal's readings (the devices service's "
    "telemetry), which this check does not run, so its seed cannot make one through the API; alarms "
    "are visible only to the organizations of their cover, and services/manholes/tests/test_alarms.py "
    "proves another organization gets NOT_FOUND (MAN-4) and sees none in WatchAlarms (MAN-5)"
)
EXEMPT = {
    COVERS + "SetRiskScores": "called by the analytics job's service account only (role `service` and its "
    "client named in CITYOS_MANHOLES_RISK_WRITERS): city-wide by design; any other caller, of any "
    "organization, is refused (services/manholes/tests/test_covers.py, MAN-6)",
} | {
    ALARMS + method: NO_ALARMS_THROUGH_THE_API
    for method in ("GetAlarm", "ListAlarms", "AcknowledgeAlarm", "ResolveAlarm", "WatchAlarms")
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


def _work_order() -> manholes_pb2.WorkOrder:
    start = datetime(2026, 12, 1, 8, tzinfo=UTC)
    return manholes_pb2.WorkOrder(
        cover="covers/b-cover",
        kind=manholes_pb2.WORK_ORDER_KIND_INSPECTION,
        assignee_organization="b-crew",
        planned_start_time=_stamp(start),
        planned_end_time=_stamp(start + timedelta(hours=4)),
    )


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    owner = token(organization, ["org-admin", "operator"])
    covers = manholes_pb2_grpc.CoverServiceStub(channel)
    for cover_id in ("b-cover", "b-cover-extra"):
        await covers.CreateCover(
            manholes_pb2.CreateCoverRequest(cover=_cover(organization), cover_id=cover_id), metadata=owner
        )
    work_order = await manholes_pb2_grpc.WorkOrderServiceStub(channel).CreateWorkOrder(
        manholes_pb2.CreateWorkOrderRequest(work_order=_work_order()), metadata=owner
    )
    case = TenancyCase(names=["b-cover", "b-cover-extra", work_order.name])
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
    add(WORK_ORDERS + "CreateWorkOrder", manholes_pb2.CreateWorkOrderRequest(work_order=_work_order()))
    add(WORK_ORDERS + "GetWorkOrder", manholes_pb2.GetWorkOrderRequest(name=work_order.name))
    add(WORK_ORDERS + "ListWorkOrders", manholes_pb2.ListWorkOrdersRequest())
    add(
        WORK_ORDERS + "TransitionWorkOrder",
        manholes_pb2.TransitionWorkOrderRequest(
            name=work_order.name, status=manholes_pb2.WORK_ORDER_STATUS_IN_PROGRESS
        ),
    )
    case.listings = {
        COVERS + "ListCovers",
        COVERS + "ListCoversByRisk",
        WORK_ORDERS + "ListWorkOrders",
        "/cityos.common.v1.EventService/StreamEvents",
    }
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
