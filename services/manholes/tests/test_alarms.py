"""MAN-4: alarms acknowledged and resolved by hand record who and when, are listed newest first with
filters and pages, and are hidden from other organizations. MAN-5: WatchAlarms delivers the raised and
cleared alarms of its area, kinds and severity only, and resumes from a cursor sending nothing twice.

Alarms are set up by writing AlarmRow rows with `alarm_rows.emit_alarm`, as the rules engine does, so
these tests do not depend on telemetry."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import select

from cityos.common.v1 import resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.alarm_rows import emit_alarm
from cityos_manholes.models import AlarmRow, CoverRow
from cityos_platform.events import encode_cursor
from cityos_platform.models import Outbox
from cityos_platform.testing.status import error_info, field_violations

AREA = "bbox:39.04,115.94,39.06,115.96"
RAISED = manholes_pb2.ALARM_STATE_RAISED
ACKNOWLEDGED = manholes_pb2.ALARM_STATE_ACKNOWLEDGED
RESOLVED = manholes_pb2.ALARM_STATE_RESOLVED
MAJOR, WARNING, CRITICAL = (
    manholes_pb2.SEVERITY_MAJOR,
    manholes_pb2.SEVERITY_WARNING,
    manholes_pb2.SEVERITY_CRITICAL,
)


async def raise_alarm(street, alarm_id, cover_id, *, severity=MAJOR, condition=None, minutes=0):
    """An alarm as the rules raise it: one transaction, the row and `manholes.alarm.raised`."""
    async with street.app.db.transaction() as tx:
        cover = await tx.session.get(CoverRow, cover_id)
        when = tx.now + timedelta(minutes=minutes)
        row = AlarmRow(
            alarm_id=alarm_id,
            cover_id=cover_id,
            condition=condition or manholes_pb2.ALARM_CONDITION_TILT,
            severity=severity,
            state=RAISED,
            value=30.0,
            threshold=10.0,
            raise_time=when,
            update_time=when,
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


async def clear_alarm(street, alarm_id):
    async with street.app.db.transaction() as tx:
        row = await tx.session.get(AlarmRow, alarm_id)
        row.cleared, row.clear_time = True, tx.now
        emit_alarm(tx, "cleared", row, row.state)


async def _refused(call):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _alarm_events(street):
    async with street.app.db.read() as session:
        rows = (await session.scalars(select(Outbox).where(Outbox.type.startswith("manholes.alarm.")))).all()
    return [(row.type, row.subject) for row in rows]


@pytest.mark.req("MAN-4")
async def test_acknowledging_and_resolving_by_hand_record_who_and_when(street):
    alarms = manholes_pb2_grpc.AlarmServiceStub(street.channel)
    await street.cover("xa-0001", ownership=resources_pb2.Ownership(maintainer_organization="crews"))
    await raise_alarm(street, "al-1", "xa-0001")
    alarm = await alarms.GetAlarm(manholes_pb2.GetAlarmRequest(name="alarms/al-1"), metadata=street.operator)
    assert (alarm.cover, alarm.state, alarm.acknowledged_by, alarm.work_order) == (
        "covers/xa-0001",
        RAISED,
        "",
        "",
    )

    acknowledged = await alarms.AcknowledgeAlarm(
        manholes_pb2.AcknowledgeAlarmRequest(name="alarms/al-1", note="on it"), metadata=street.operator
    )
    assert (acknowledged.state, acknowledged.acknowledged_by) == (ACKNOWLEDGED, "users/wei")
    assert acknowledged.HasField("acknowledge_time")
    # Twice: unchanged, the first acknowledgement stands (even when someone else asks).
    colleague = street.token("users/li", "drainage", "operator")
    again = await alarms.AcknowledgeAlarm(
        manholes_pb2.AcknowledgeAlarmRequest(name="alarms/al-1"), metadata=colleague
    )
    assert again == acknowledged

    bad = await _refused(
        alarms.ResolveAlarm(manholes_pb2.ResolveAlarmRequest(name="alarm/al-1"), metadata=street.operator)
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(bad)] == ["name", "resolution"]
    noted = await _refused(
        alarms.AcknowledgeAlarm(
            manholes_pb2.AcknowledgeAlarmRequest(name="alarms/", note="x" * 501), metadata=street.operator
        )
    )
    assert [field for field, _ in field_violations(noted)] == ["name", "note"]
    too_long = await _refused(
        alarms.ResolveAlarm(
            manholes_pb2.ResolveAlarmRequest(name="alarms/al-1", resolution="x" * 501),
            metadata=street.operator,
        )
    )
    assert [field for field, _ in field_violations(too_long)] == ["resolution"]

    resolved = await alarms.ResolveAlarm(
        manholes_pb2.ResolveAlarmRequest(name="alarms/al-1", resolution="lid reseated"), metadata=colleague
    )
    assert (resolved.state, resolved.resolved_by, resolved.resolution) == (
        RESOLVED,
        "users/li",
        "lid reseated",
    )
    assert resolved.HasField("resolve_time")
    assert (resolved.acknowledged_by, resolved.acknowledge_time) == (
        "users/wei",
        acknowledged.acknowledge_time,
    )
    # Resolving again changes nothing; acknowledging a resolved alarm is refused with the reason.
    again = await alarms.ResolveAlarm(
        manholes_pb2.ResolveAlarmRequest(name="alarms/al-1", resolution="other"), metadata=street.operator
    )
    assert again == resolved
    late = await _refused(
        alarms.AcknowledgeAlarm(
            manholes_pb2.AcknowledgeAlarmRequest(name="alarms/al-1"), metadata=street.operator
        )
    )
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(late).reason == "ALARM_RESOLVED"
    # Each change once on the outbox, in order.
    assert await _alarm_events(street) == [
        ("manholes.alarm.raised", "alarms/al-1"),
        ("manholes.alarm.acknowledged", "alarms/al-1"),
        ("manholes.alarm.resolved", "alarms/al-1"),
    ]

    # Another organization: it does not exist; the maintainer sees it but may not change it.
    await raise_alarm(street, "al-2", "xa-0001", condition=manholes_pb2.ALARM_CONDITION_OPEN)
    for call in (
        alarms.GetAlarm(manholes_pb2.GetAlarmRequest(name="alarms/al-2"), metadata=street.other_org),
        alarms.AcknowledgeAlarm(
            manholes_pb2.AcknowledgeAlarmRequest(name="alarms/al-2"), metadata=street.other_org
        ),
        alarms.ResolveAlarm(
            manholes_pb2.ResolveAlarmRequest(name="alarms/al-2", resolution="mine"), metadata=street.other_org
        ),
        alarms.GetAlarm(manholes_pb2.GetAlarmRequest(name="alarms/nowhere"), metadata=street.operator),
    ):
        assert (await _refused(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await alarms.ListAlarms(manholes_pb2.ListAlarmsRequest(), metadata=street.other_org)
    assert list(listed.alarms) == []
    crew = street.token("users/chen", "crews", "operator")
    seen = await alarms.GetAlarm(manholes_pb2.GetAlarmRequest(name="alarms/al-2"), metadata=crew)
    assert seen.state == RAISED
    denied = await _refused(
        alarms.AcknowledgeAlarm(manholes_pb2.AcknowledgeAlarmRequest(name="alarms/al-2"), metadata=crew)
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.req("MAN-4")
async def test_alarms_are_listed_newest_first_with_filters_and_pages(street):
    alarms = manholes_pb2_grpc.AlarmServiceStub(street.channel)
    await street.cover("xa-0001")
    await street.cover("xa-0002", offset=0.0002)
    await street.cover("xa-0003", offset=0.5)
    await raise_alarm(street, "al-1", "xa-0001", severity=WARNING, minutes=-30)
    await raise_alarm(street, "al-2", "xa-0002", severity=CRITICAL, minutes=-20)
    await raise_alarm(street, "al-3", "xa-0003", severity=MAJOR, minutes=-10)
    await raise_alarm(street, "al-4", "xa-0001", severity=MAJOR, condition=manholes_pb2.ALARM_CONDITION_OPEN)
    await alarms.ResolveAlarm(
        manholes_pb2.ResolveAlarmRequest(name="alarms/al-2", resolution="checked"), metadata=street.operator
    )

    async def names(**fields):
        seen, token = [], ""
        while True:
            page = await alarms.ListAlarms(
                manholes_pb2.ListAlarmsRequest(page_size=2, page_token=token, **fields),
                metadata=street.operator,
            )
            assert len(page.alarms) <= 2
            seen += [alarm.name for alarm in page.alarms]
            token = page.next_page_token
            if not token:
                return seen

    assert await names() == ["alarms/al-4", "alarms/al-3", "alarms/al-2", "alarms/al-1"]
    assert await names(cover="covers/xa-0001") == ["alarms/al-4", "alarms/al-1"]
    assert await names(states=[RAISED, ACKNOWLEDGED]) == ["alarms/al-4", "alarms/al-3", "alarms/al-1"]
    assert await names(minimum_severity=MAJOR) == ["alarms/al-4", "alarms/al-3", "alarms/al-2"]
    assert await names(area=AREA) == ["alarms/al-4", "alarms/al-2", "alarms/al-1"]
    assert await names(area=AREA, minimum_severity=MAJOR, states=[RAISED]) == ["alarms/al-4"]

    bad = await _refused(
        alarms.ListAlarms(
            manholes_pb2.ListAlarmsRequest(page_size=-1, cover="cover/x", states=[9], minimum_severity=7),
            metadata=street.operator,
        )
    )
    assert [field for field, _ in field_violations(bad)] == [
        "page_size",
        "cover",
        "states[0]",
        "minimum_severity",
    ]


class Watch:
    """A WatchAlarms stream read in the background."""

    def __init__(self, street, request, metadata):
        self.call = manholes_pb2_grpc.AlarmServiceStub(street.channel).WatchAlarms(request, metadata=metadata)
        self.received: list[manholes_pb2.WatchAlarmsResponse] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for response in self.call:
            self.received.append(response)

    async def until(self, count, timeout=10.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return [(r.alarm.name, r.alarm.cleared, r.previous_state) for r in self.received]

    async def close(self):
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.mark.req("MAN-5")
async def test_watch_alarms_delivers_its_area_and_severity_only_and_resumes_from_a_cursor(street):
    await street.cover("xa-0001")
    await street.cover("xa-0002", offset=0.0002, kind=manholes_pb2.COVER_KIND_POWER)
    await street.cover("xa-0003", offset=0.5)  # outside the area
    await street.cover("ut-0001", offset=0.0004, metadata=street.other_org)  # inside, another organization's
    await raise_alarm(street, "al-old", "xa-0001", condition=manholes_pb2.ALARM_CONDITION_SMOKE)
    head = encode_cursor(await street.app.db.last_sequence())

    await raise_alarm(street, "al-1", "xa-0001", severity=MAJOR)
    await raise_alarm(
        street, "al-2", "xa-0001", severity=WARNING, condition=manholes_pb2.ALARM_CONDITION_OPEN
    )
    await raise_alarm(street, "al-3", "xa-0003", severity=CRITICAL)
    await raise_alarm(street, "al-4", "xa-0002", severity=CRITICAL)
    await raise_alarm(street, "al-5", "ut-0001", severity=CRITICAL)
    await clear_alarm(street, "al-1")
    await clear_alarm(street, "al-2")
    await clear_alarm(street, "al-3")
    request = manholes_pb2.WatchAlarmsRequest(after_cursor=head, area=AREA, minimum_severity=MAJOR)
    watch = Watch(street, request, street.operator)
    try:
        expected = [
            ("alarms/al-1", False, manholes_pb2.ALARM_STATE_UNSPECIFIED),
            ("alarms/al-4", False, manholes_pb2.ALARM_STATE_UNSPECIFIED),
            ("alarms/al-1", True, RAISED),
        ]
        assert await watch.until(3) == expected
        # A change made while the stream is open arrives as it commits.
        await clear_alarm(street, "al-4")
        assert (await watch.until(4))[3] == ("alarms/al-4", True, RAISED)
        await asyncio.sleep(0.3)
        assert len(watch.received) == 4  # nothing else: not al-2 (WARNING), al-3 (outside), al-5 (not ours)
        cursor = watch.received[-1].cursor
    finally:
        await watch.close()

    # While nobody watches: more changes; a second watch from the last cursor gets exactly those after it.
    await raise_alarm(street, "al-6", "xa-0002", severity=MAJOR, condition=manholes_pb2.ALARM_CONDITION_OPEN)
    await raise_alarm(
        street, "al-7", "xa-0003", severity=CRITICAL, condition=manholes_pb2.ALARM_CONDITION_OPEN
    )
    resumed = Watch(
        street,
        manholes_pb2.WatchAlarmsRequest(after_cursor=cursor, area=AREA, minimum_severity=MAJOR),
        street.operator,
    )
    try:
        assert await resumed.until(1) == [("alarms/al-6", False, manholes_pb2.ALARM_STATE_UNSPECIFIED)]
        await clear_alarm(street, "al-6")
        assert await resumed.until(2) == [
            ("alarms/al-6", False, manholes_pb2.ALARM_STATE_UNSPECIFIED),
            ("alarms/al-6", True, RAISED),
        ]
        await asyncio.sleep(0.3)
        assert len(resumed.received) == 2
    finally:
        await resumed.close()
    cursors = [r.cursor for r in watch.received + resumed.received]
    assert len(set(cursors)) == len(cursors)

    # Kinds filter, and another organization's watch sees only its own cover's alarms.
    power_only = Watch(
        street,
        manholes_pb2.WatchAlarmsRequest(after_cursor=head, cover_kinds=[manholes_pb2.COVER_KIND_POWER]),
        street.operator,
    )
    theirs = Watch(street, manholes_pb2.WatchAlarmsRequest(after_cursor=head), street.other_org)
    try:
        assert [name for name, _, _ in await power_only.until(4)] == [
            "alarms/al-4",
            "alarms/al-4",
            "alarms/al-6",
            "alarms/al-6",
        ]
        assert [name for name, _, _ in await theirs.until(1)] == ["alarms/al-5"]
        await asyncio.sleep(0.3)
        assert (len(power_only.received), len(theirs.received)) == (4, 1)
    finally:
        await power_only.close()
        await theirs.close()


@pytest.mark.req("MAN-5")
async def test_watch_alarms_without_a_cursor_starts_from_now_and_names_bad_filters(street):
    await street.cover("xa-0001")
    await raise_alarm(street, "al-old", "xa-0001", severity=CRITICAL)
    watch = Watch(street, manholes_pb2.WatchAlarmsRequest(), street.operator)
    try:
        await asyncio.sleep(0.5)  # the stream has taken the head by now
        await raise_alarm(
            street, "al-new", "xa-0001", severity=WARNING, condition=manholes_pb2.ALARM_CONDITION_OPEN
        )
        assert [name for name, _, _ in await watch.until(1)] == ["alarms/al-new"]
    finally:
        await watch.close()

    stream = manholes_pb2_grpc.AlarmServiceStub(street.channel).WatchAlarms(
        manholes_pb2.WatchAlarmsRequest(after_cursor="nonsense", cover_kinds=[42], minimum_severity=9),
        metadata=street.operator,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(caught.value)] == [
        "after_cursor",
        "cover_kinds[0]",
        "minimum_severity",
    ]
