"""What the streetlights service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's inventory, schedule and a control, and a request about them for every mounted RPC.
Lights are infrastructure of their owner: another organization neither reads nor changes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.streetlights.v1 import (
    control_pb2,
    control_pb2_grpc,
    energy_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    ngsild_pb2,
    schedules_pb2,
    schedules_pb2_grpc,
)
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

INVENTORY = "/cityos.streetlights.v1.InventoryService/"
SCHEDULES = "/cityos.streetlights.v1.ScheduleService/"
CONTROL = "/cityos.streetlights.v1.ControlService/"
FAULTS = "/cityos.streetlights.v1.FaultService/"
ENERGY = "/cityos.streetlights.v1.EnergyService/"
NGSILD = "/cityos.streetlights.v1.NgsiLdService/"
NO_FAULTS_THROUGH_THE_API = (
    "faults are raised only by the rules applied to controllers' readings (the devices service's "
    "telemetry), which this check does not run, so its seed cannot make one through the API; faults are "
    "visible only to the organizations of their subject, and services/streetlights/tests/test_faults.py "
    "proves another organization gets NOT_FOUND and sees none in ListFaults and WatchFaults"
)
EXEMPT = {
    FAULTS + method: NO_FAULTS_THROUGH_THE_API
    for method in ("GetFault", "ListFaults", "AcknowledgeFault", "WatchFaults")
}
POINT = resources_pb2.GeoPoint(latitude=39.05, longitude=115.95)
pb = inventory_pb2


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _owned(organization: str) -> resources_pb2.Ownership:
    return resources_pb2.Ownership(owner_organization=organization)


def _light(organization: str) -> inventory_pb2.Light:
    # No controller: the control below then needs no devices service (its state is EMPTY).
    return pb.Light(
        display_name="B-LIGHT",
        ownership=_owned(organization),
        location=POINT,
        model="lightModels/b-model",
        feeder="feeders/b-feeder",
        group="groups/b-group",
        street="B Street",
    )


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    owner = token(organization, ["org-admin", "operator"])
    inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
    schedules = schedules_pb2_grpc.ScheduleServiceStub(channel)
    await inventory.CreateLightModel(
        pb.CreateLightModelRequest(
            light_model=pb.LightModel(
                display_name="B LED", lamp_technology=pb.LAMP_TECHNOLOGY_LED, rated_power_w=60
            ),
            light_model_id="b-model",
        ),
        metadata=owner,
    )
    for schedule_id in ("b-schedule", "b-schedule-extra"):
        await schedules.CreateSchedule(
            schedules_pb2.CreateScheduleRequest(
                schedule=schedules_pb2.Schedule(
                    display_name="B nights",
                    ownership=_owned(organization),
                    steps=[
                        schedules_pb2.ScheduleStep(anchor=schedules_pb2.STEP_ANCHOR_SUNSET, dim_level=100),
                        schedules_pb2.ScheduleStep(anchor=schedules_pb2.STEP_ANCHOR_SUNRISE, dim_level=0),
                    ],
                ),
                schedule_id=schedule_id,
            ),
            metadata=owner,
        )
    for cabinet_id in ("b-cabinet", "b-cabinet-extra"):
        await inventory.CreateCabinet(
            pb.CreateCabinetRequest(
                cabinet=pb.Cabinet(
                    display_name="B CABINET",
                    ownership=_owned(organization),
                    location=POINT,
                    working_mode=pb.WORKING_MODE_AUTOMATIC,
                ),
                cabinet_id=cabinet_id,
            ),
            metadata=owner,
        )
    for feeder_id, circuit in (("b-feeder", 1), ("b-feeder-extra", 2)):
        await inventory.CreateFeeder(
            pb.CreateFeederRequest(
                feeder=pb.Feeder(
                    display_name="B FEEDER", cabinet="cabinets/b-cabinet", circuit=circuit, phase=pb.PHASE_L1
                ),
                feeder_id=feeder_id,
            ),
            metadata=owner,
        )
    for group_id in ("b-group", "b-group-extra"):
        await inventory.CreateGroup(
            pb.CreateGroupRequest(
                group=pb.Group(
                    display_name="B GROUP",
                    ownership=_owned(organization),
                    cabinet="cabinets/b-cabinet",
                    schedule="schedules/b-schedule",
                ),
                group_id=group_id,
            ),
            metadata=owner,
        )
    for light_id in ("b-light", "b-light-extra"):
        await inventory.CreateLight(
            pb.CreateLightRequest(light=_light(organization), light_id=light_id), metadata=owner
        )
    control = await control_pb2_grpc.ControlServiceStub(channel).ControlLights(
        control_pb2.ControlLightsRequest(
            control=control_pb2.Control(
                selector=control_pb2.LightSelector(light="lights/b-light"), dim_level=50
            ),
            control_id="b-control",
        ),
        metadata=owner,
    )
    case = TenancyCase(
        names=[
            "b-model",
            "b-schedule",
            "b-cabinet",
            "b-feeder",
            "b-group",
            "b-light",
            "b-control",
            control.name,
        ]
    )
    add = case.requests.__setitem__
    mask = field_mask_pb2.FieldMask
    # -- inventory --------------------------------------------------------------------------------------
    add(
        INVENTORY + "CreateLightModel",
        pb.CreateLightModelRequest(
            light_model=pb.LightModel(
                display_name="B LED 2",
                ownership=_owned(organization),
                lamp_technology=pb.LAMP_TECHNOLOGY_LED,
                rated_power_w=40,
            ),
            light_model_id="b-model-new",
        ),
    )
    add(INVENTORY + "GetLightModel", pb.GetLightModelRequest(name="lightModels/b-model"))
    add(INVENTORY + "ListLightModels", pb.ListLightModelsRequest())
    add(
        INVENTORY + "UpdateLightModel",
        pb.UpdateLightModelRequest(
            light_model=pb.LightModel(name="lightModels/b-model", display_name="Renamed"),
            update_mask=mask(paths=["display_name"]),
        ),
    )
    add(
        INVENTORY + "CreateCabinet",
        pb.CreateCabinetRequest(
            cabinet=pb.Cabinet(
                display_name="B NEW",
                ownership=_owned(organization),
                location=POINT,
                working_mode=pb.WORKING_MODE_AUTOMATIC,
            ),
            cabinet_id="b-cabinet-new",
        ),
    )
    add(INVENTORY + "GetCabinet", pb.GetCabinetRequest(name="cabinets/b-cabinet"))
    add(INVENTORY + "ListCabinets", pb.ListCabinetsRequest())
    add(
        INVENTORY + "UpdateCabinet",
        pb.UpdateCabinetRequest(
            cabinet=pb.Cabinet(name="cabinets/b-cabinet", display_name="Renamed"),
            update_mask=mask(paths=["display_name"]),
        ),
    )
    # A feeder on B's cabinet: refused for A (the cabinet does not exist for it).
    add(
        INVENTORY + "CreateFeeder",
        pb.CreateFeederRequest(
            feeder=pb.Feeder(
                display_name="B NEW", cabinet="cabinets/b-cabinet", circuit=3, phase=pb.PHASE_L2
            ),
            feeder_id="b-feeder-new",
        ),
    )
    add(INVENTORY + "GetFeeder", pb.GetFeederRequest(name="feeders/b-feeder"))
    add(INVENTORY + "ListFeeders", pb.ListFeedersRequest())
    add(
        INVENTORY + "UpdateFeeder",
        pb.UpdateFeederRequest(
            feeder=pb.Feeder(name="feeders/b-feeder", display_name="Renamed"),
            update_mask=mask(paths=["display_name"]),
        ),
    )
    add(
        INVENTORY + "CreateGroup",
        pb.CreateGroupRequest(
            group=pb.Group(
                display_name="B NEW", ownership=_owned(organization), cabinet="cabinets/b-cabinet"
            ),
            group_id="b-group-new",
        ),
    )
    add(INVENTORY + "GetGroup", pb.GetGroupRequest(name="groups/b-group"))
    add(INVENTORY + "ListGroups", pb.ListGroupsRequest())
    add(
        INVENTORY + "UpdateGroup",
        pb.UpdateGroupRequest(
            group=pb.Group(name="groups/b-group", display_name="Renamed"),
            update_mask=mask(paths=["display_name"]),
        ),
    )
    # A light of B's model on B's feeder and group: refused for A.
    add(INVENTORY + "CreateLight", pb.CreateLightRequest(light=_light(organization), light_id="b-light-new"))
    add(INVENTORY + "GetLight", pb.GetLightRequest(name="lights/b-light"))
    add(INVENTORY + "ListLights", pb.ListLightsRequest())
    add(
        INVENTORY + "UpdateLight",
        pb.UpdateLightRequest(
            light=pb.Light(name="lights/b-light", display_name="Renamed"),
            update_mask=mask(paths=["display_name"]),
        ),
    )
    # -- schedules --------------------------------------------------------------------------------------
    add(
        SCHEDULES + "CreateSchedule",
        schedules_pb2.CreateScheduleRequest(
            schedule=schedules_pb2.Schedule(
                display_name="B new",
                ownership=_owned(organization),
                steps=[schedules_pb2.ScheduleStep(anchor=schedules_pb2.STEP_ANCHOR_SUNSET, dim_level=100)],
            ),
            schedule_id="b-schedule-new",
        ),
    )
    add(SCHEDULES + "GetSchedule", schedules_pb2.GetScheduleRequest(name="schedules/b-schedule"))
    add(SCHEDULES + "ListSchedules", schedules_pb2.ListSchedulesRequest())
    add(
        SCHEDULES + "UpdateSchedule",
        schedules_pb2.UpdateScheduleRequest(
            schedule=schedules_pb2.Schedule(name="schedules/b-schedule", display_name="Renamed"),
            update_mask=mask(paths=["display_name"]),
        ),
    )
    add(
        SCHEDULES + "EvaluateSchedule",
        schedules_pb2.EvaluateScheduleRequest(
            name="schedules/b-schedule", date="2026-12-21", light="lights/b-light"
        ),
    )
    # -- control ----------------------------------------------------------------------------------------
    add(
        CONTROL + "ControlLights",
        control_pb2.ControlLightsRequest(
            control=control_pb2.Control(
                selector=control_pb2.LightSelector(group="groups/b-group"), dim_level=80
            ),
            control_id="b-control-new",
        ),
    )
    add(CONTROL + "GetControl", control_pb2.GetControlRequest(name=control.name))
    add(CONTROL + "ListControls", control_pb2.ListControlsRequest())
    add(
        CONTROL + "EndOverride",
        control_pb2.EndOverrideRequest(selector=control_pb2.LightSelector(light="lights/b-light")),
    )
    add(CONTROL + "CancelControl", control_pb2.CancelControlRequest(name=control.name))
    # -- energy, NGSI-LD, events ------------------------------------------------------------------------
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    add(
        ENERGY + "GetEnergyReport",
        energy_pb2.GetEnergyReportRequest(
            subject="groups/b-group", start_time=_stamp(now - timedelta(days=1)), end_time=_stamp(now)
        ),
    )
    add(NGSILD + "GetEntity", ngsild_pb2.GetEntityRequest(id="urn:ngsi-ld:Streetlight:b-light"))
    add(NGSILD + "ListEntities", ngsild_pb2.ListEntitiesRequest(type="Streetlight"))
    add("/cityos.common.v1.EventService/StreamEvents", events_pb2.StreamEventsRequest(follow=False))
    # -- the deletes last -------------------------------------------------------------------------------
    add(INVENTORY + "DeleteLight", pb.DeleteLightRequest(name="lights/b-light-extra"))
    add(INVENTORY + "DeleteGroup", pb.DeleteGroupRequest(name="groups/b-group-extra"))
    add(INVENTORY + "DeleteFeeder", pb.DeleteFeederRequest(name="feeders/b-feeder-extra"))
    add(INVENTORY + "DeleteCabinet", pb.DeleteCabinetRequest(name="cabinets/b-cabinet-extra"))
    add(SCHEDULES + "DeleteSchedule", schedules_pb2.DeleteScheduleRequest(name="schedules/b-schedule-extra"))
    add(INVENTORY + "DeleteLightModel", pb.DeleteLightModelRequest(name="lightModels/b-model-new"))
    case.listings = {
        INVENTORY + "ListLightModels",
        INVENTORY + "ListCabinets",
        INVENTORY + "ListFeeders",
        INVENTORY + "ListGroups",
        INVENTORY + "ListLights",
        SCHEDULES + "ListSchedules",
        CONTROL + "ListControls",
        NGSILD + "ListEntities",
        "/cityos.common.v1.EventService/StreamEvents",
    }
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
