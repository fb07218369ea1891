"""MAN-4: an alarm opens a work order; moving it on records who and when; completing it resolves the
alarms linked to it (and only those); bad moves and bad input are refused with reasons, field by field;
another organization finds nothing.

Alarms are set up by writing AlarmRow rows with `alarm_rows.emit_alarm`, as the rules engine does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import select

from cityos.common.v1 import resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.alarm_rows import emit_alarm
from cityos_manholes.models import AlarmRow, CoverRow
from cityos_platform.models import Outbox
from cityos_platform.testing.status import error_info, field_violations

PLANNED = manholes_pb2.WORK_ORDER_STATUS_PLANNED
IN_PROGRESS = manholes_pb2.WORK_ORDER_STATUS_IN_PROGRESS
COMPLETED = manholes_pb2.WORK_ORDER_STATUS_COMPLETED
CANCELLED = manholes_pb2.WORK_ORDER_STATUS_CANCELLED
START = datetime(2026, 12, 1, 8, tzinfo=UTC)


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _order(cover="covers/xa-0001", *alarms, **fields) -> manholes_pb2.WorkOrder:
    return manholes_pb2.WorkOrder(
        cover=cover,
        kind=fields.pop("kind", manholes_pb2.WORK_ORDER_KIND_REPAIR),
        assignee_organization=fields.pop("assignee_organization", "crews"),
        planned_start_time=fields.pop("planned_start_time", _stamp(START)),
        planned_end_time=fields.pop("planned_end_time", _stamp(START + timedelta(hours=6))),
        alarms=list(alarms),
        **fields,
    )


async def raise_alarm(street, alarm_id, cover_id, condition=manholes_pb2.ALARM_CONDITION_TILT):
    """An alarm as the rules raise it: one transaction, the row and `manholes.alarm.raised`."""
    async with street.app.db.transaction() as tx:
        cover = await tx.session.get(CoverRow, cover_id)
        row = AlarmRow(
            alarm_id=alarm_id,
            cover_id=cover_id,
            condition=condition,
            severity=manholes_pb2.SEVERITY_MAJOR,
            state=manholes_pb2.ALARM_STATE_RAISED,
            value=30.0,
            threshold=10.0,
            raise_time=tx.now,
            update_time=tx.now,
            update_count=0,
            cleared=False,
            acknowledged_by="",
            resolved_by="",
            resolution="",
            cover_kind=cover.kind,
            area_cell=cover.area_cell,
            owner_organization=cover.owner_organization,
        )
        tx.session.add(row)
        emit_alarm(tx, "raised", row, manholes_pb2.ALARM_STATE_UNSPECIFIED)


class Crew:
    def __init__(self, street):
        self.orders = manholes_pb2_grpc.WorkOrderServiceStub(street.channel)
        self.alarms = manholes_pb2_grpc.AlarmServiceStub(street.channel)
        self.crew = street.token("users/chen", "crews", "operator")

    async def create(self, order, metadata, request_id=""):
        return await self.orders.CreateWorkOrder(
            manholes_pb2.CreateWorkOrderRequest(work_order=order, request_id=request_id), metadata=metadata
        )

    async def move(self, name, status, metadata, note=""):
        return await self.orders.TransitionWorkOrder(
            manholes_pb2.TransitionWorkOrderRequest(name=name, status=status, note=note), metadata=metadata
        )

    async def alarm(self, alarm_id, metadata):
        return await self.alarms.GetAlarm(
            manholes_pb2.GetAlarmRequest(name=f"alarms/{alarm_id}"), metadata=metadata
        )


async def _refused(call):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.req("MAN-4")
async def test_an_alarm_opens_a_work_order_and_completing_it_resolves_the_linked_alarms(street):
    crew = Crew(street)
    await street.cover("xa-0001")
    await raise_alarm(street, "al-tilt", "xa-0001")
    await raise_alarm(street, "al-open", "xa-0001", manholes_pb2.ALARM_CONDITION_OPEN)
    await raise_alarm(street, "al-water", "xa-0001", manholes_pb2.ALARM_CONDITION_WATER_LEVEL)

    order = await crew.create(
        _order("covers/xa-0001", "alarms/al-tilt", "alarms/al-open", description="reseat the lid"),
        street.operator,
        request_id="wo-req-1",
    )
    assert order.name.startswith("workOrders/")
    assert (order.status, list(order.alarms), order.assignee_organization) == (
        PLANNED,
        ["alarms/al-tilt", "alarms/al-open"],
        "crews",
    )
    assert [(t.status, t.actor) for t in order.history] == [(PLANNED, "users/wei")]
    assert order.history[0].HasField("time")
    # A retry with the same request id answers the first work order; nothing new is created.
    assert (
        await crew.create(
            _order("covers/xa-0001", "alarms/al-tilt", "alarms/al-open", description="reseat the lid"),
            street.operator,
            request_id="wo-req-1",
        )
        == order
    )
    # The alarms show the work order handling them; the third one does not.
    assert (await crew.alarm("al-tilt", street.operator)).work_order == order.name
    assert (await crew.alarm("al-water", street.operator)).work_order == ""

    # The assignee starts it; the cover's operator completes it.
    started = await crew.move(order.name, IN_PROGRESS, crew.crew, note="crew on site")
    assert started.status == IN_PROGRESS
    done = await crew.move(order.name, COMPLETED, street.operator, note="lid replaced")
    assert done.status == COMPLETED
    assert [(t.status, t.actor, t.note) for t in done.history] == [
        (PLANNED, "users/wei", ""),
        (IN_PROGRESS, "users/chen", "crew on site"),
        (COMPLETED, "users/wei", "lid replaced"),
    ]
    assert all(t.HasField("time") for t in done.history)
    assert (
        done.history[0].time.ToDatetime()
        <= done.history[1].time.ToDatetime()
        <= done.history[2].time.ToDatetime()
    )

    for alarm_id in ("al-tilt", "al-open"):
        alarm = await crew.alarm(alarm_id, street.operator)
        assert (alarm.state, alarm.resolved_by, alarm.resolution) == (
            manholes_pb2.ALARM_STATE_RESOLVED,
            f"{order.name} by users/wei",
            "work order completed: lid replaced",
        )
        assert alarm.resolve_time == done.history[2].time
    untouched = await crew.alarm("al-water", street.operator)
    assert (untouched.state, untouched.resolved_by) == (manholes_pb2.ALARM_STATE_RAISED, "")

    # Completing again changes nothing.
    assert await crew.move(order.name, COMPLETED, street.operator, note="again") == done
    assert (
        await crew.orders.GetWorkOrder(manholes_pb2.GetWorkOrderRequest(name=order.name), metadata=crew.crew)
        == done
    )
    async with street.app.db.read() as session:
        events = [
            (row.type, row.subject)
            for row in (await session.scalars(select(Outbox).order_by(Outbox.seq))).all()
            if row.type.startswith(("manholes.alarm.", "manholes.work_order."))
        ]
    assert events[3:] == [
        ("manholes.alarm.updated", "alarms/al-tilt"),
        ("manholes.alarm.updated", "alarms/al-open"),
        ("manholes.work_order.created", order.name),
        ("manholes.work_order.transitioned", order.name),
        ("manholes.alarm.resolved", "alarms/al-open"),
        ("manholes.alarm.resolved", "alarms/al-tilt"),
        ("manholes.work_order.transitioned", order.name),
    ]

    # Another organization: no such work order, none listed.
    for call in (
        crew.orders.GetWorkOrder(
            manholes_pb2.GetWorkOrderRequest(name=order.name), metadata=street.other_org
        ),
        crew.move(order.name, CANCELLED, street.other_org),
        crew.create(_order("covers/xa-0001"), street.other_org),
    ):
        assert (await _refused(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await crew.orders.ListWorkOrders(manholes_pb2.ListWorkOrdersRequest(), metadata=street.other_org)
    assert list(listed.work_orders) == []


@pytest.mark.req("MAN-4")
async def test_bad_moves_are_refused_naming_the_allowed_ones(street):
    crew = Crew(street)
    await street.cover("xa-0001", ownership=resources_pb2.Ownership(maintainer_organization="inspectors"))
    await raise_alarm(street, "al-tilt", "xa-0001")
    order = await crew.create(_order("covers/xa-0001", "alarms/al-tilt"), street.operator)

    skipped = await _refused(crew.move(order.name, COMPLETED, street.operator))
    assert skipped.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "allowed moves: CANCELLED, IN_PROGRESS" in skipped.details()
    assert error_info(skipped).metadata["allowed"] == "CANCELLED,IN_PROGRESS"
    backwards = await _refused(crew.move(order.name, PLANNED, street.operator))
    assert field_violations(backwards) == [("status", "must be IN_PROGRESS, COMPLETED or CANCELLED")]
    # The maintainer sees it but neither owns nor operates the cover, nor is it the assignee.
    inspector = street.token("users/ines", "inspectors", "operator")
    seen = await crew.orders.GetWorkOrder(
        manholes_pb2.GetWorkOrderRequest(name=order.name), metadata=inspector
    )
    assert seen.status == PLANNED
    denied = await _refused(crew.move(order.name, IN_PROGRESS, inspector))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED

    cancelled = await crew.move(order.name, CANCELLED, crew.crew, note="rained off")
    assert [(t.status, t.actor, t.note) for t in cancelled.history][1:] == [
        (CANCELLED, "users/chen", "rained off")
    ]
    assert await crew.move(order.name, CANCELLED, street.operator) == cancelled
    final = await _refused(crew.move(order.name, IN_PROGRESS, street.operator))
    assert final.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "allowed moves: none (it is final)" in final.details()
    # Cancelling left the alarm open and free for another work order.
    alarm = await crew.alarm("al-tilt", street.operator)
    assert (alarm.state, alarm.work_order) == (manholes_pb2.ALARM_STATE_RAISED, "")
    second = await crew.create(_order("covers/xa-0001", "alarms/al-tilt"), street.operator)
    assert (await crew.alarm("al-tilt", street.operator)).work_order == second.name


@pytest.mark.req("MAN-4")
async def test_bad_work_orders_are_named_field_by_field(street):
    crew = Crew(street)
    await street.cover("xa-0001")
    await street.cover("xa-0002", offset=0.0002)
    await raise_alarm(street, "al-here", "xa-0001")
    await raise_alarm(street, "al-there", "xa-0002")
    await raise_alarm(street, "al-done", "xa-0001", manholes_pb2.ALARM_CONDITION_OPEN)
    await crew.alarms.ResolveAlarm(
        manholes_pb2.ResolveAlarmRequest(name="alarms/al-done", resolution="false alarm"),
        metadata=street.operator,
    )

    everything = await _refused(
        crew.create(
            manholes_pb2.WorkOrder(
                cover="cover/xa-0001",
                assignee_organization="Road Crew",
                description="x" * 2001,
                alarms=["alarm/x", "alarms/al-here", "alarms/al-here"],
            ),
            street.operator,
        )
    )
    assert everything.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(everything)] == [
        "work_order.cover",
        "work_order.kind",
        "work_order.assignee_organization",
        "work_order.planned_start_time",
        "work_order.planned_end_time",
        "work_order.description",
        "work_order.alarms[0]",
        "work_order.alarms[2]",
    ]
    backwards = await _refused(
        crew.create(_order(planned_end_time=_stamp(START - timedelta(minutes=1))), street.operator)
    )
    assert field_violations(backwards) == [
        ("work_order.planned_end_time", "must be after planned_start_time")
    ]
    too_long = await _refused(
        crew.create(_order(planned_end_time=_stamp(START + timedelta(days=31))), street.operator)
    )
    assert field_violations(too_long) == [("work_order.planned_end_time", "the window is at most 30 days")]

    await crew.create(_order("covers/xa-0001", "alarms/al-here"), street.operator)
    alarms = await _refused(
        crew.create(
            _order("covers/xa-0001", "alarms/al-there", "alarms/al-done", "alarms/al-here", "alarms/nowhere"),
            street.operator,
        )
    )
    problems = field_violations(alarms)
    assert [field for field, _ in problems] == [f"work_order.alarms[{index}]" for index in range(4)]
    assert "not an alarm of covers/xa-0001" in problems[0][1]
    assert "resolved already" in problems[1][1]
    assert "is handled by workOrders/" in problems[2][1]
    assert "not an alarm of covers/xa-0001" in problems[3][1]

    # Listing: by cover and status, in pages; the assignee sees them too.
    await crew.create(_order("covers/xa-0002"), street.operator)
    third = await crew.create(_order("covers/xa-0002"), street.operator)
    await crew.move(third.name, IN_PROGRESS, street.operator)

    async def names(metadata, **fields):
        seen, token = [], ""
        while True:
            page = await crew.orders.ListWorkOrders(
                manholes_pb2.ListWorkOrdersRequest(page_size=1, page_token=token, **fields), metadata=metadata
            )
            seen += [(o.cover, o.status) for o in page.work_orders]
            token = page.next_page_token
            if not token:
                return sorted(seen)

    assert await names(street.operator) == [
        ("covers/xa-0001", PLANNED),
        ("covers/xa-0002", PLANNED),
        ("covers/xa-0002", IN_PROGRESS),
    ]
    assert await names(crew.crew, cover="covers/xa-0002") == [
        ("covers/xa-0002", PLANNED),
        ("covers/xa-0002", IN_PROGRESS),
    ]
    assert await names(street.operator, status=IN_PROGRESS) == [("covers/xa-0002", IN_PROGRESS)]
    bad = await _refused(
        crew.orders.ListWorkOrders(
            manholes_pb2.ListWorkOrdersRequest(page_size=-1, cover="x", status=9), metadata=street.operator
        )
    )
    assert [field for field, _ in field_violations(bad)] == ["page_size", "cover", "status"]
