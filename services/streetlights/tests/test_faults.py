"""The FaultService: faults listed newest first with filters and pages, acknowledged by hand (who and
when; a cleared one cannot be), hidden from other organizations, watched from a cursor (its area, its
kinds, resuming without sending anything twice), and bad input refused field by field.

Faults are set up as the rules raise them: `fault_rows.FaultBook` in one transaction (the row and
`streetlights.fault.raised`), so these tests do not depend on telemetry (test_state.py raises them from
readings)."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import grpc
import pytest
from sqlalchemy.exc import IntegrityError

from cityos.streetlights.v1 import faults_pb2, inventory_pb2
from cityos_platform.areas import cell_for
from cityos_platform.events import encode_cursor
from cityos_platform.testing.status import error_info, field_violations, refused
from cityos_streetlights.fault_rows import FaultBook
from cityos_streetlights.models import CabinetRow, FaultRow, FeederRow, LightModelRow, LightRow
from cityos_streetlights.rules import Finding

pb = faults_pb2
CENTER = (39.05, 115.95)
AREA = "bbox:39.04,115.94,39.06,115.96"
OWNER = "public-works"
OPEN, ACKNOWLEDGED, CLEARED = pb.FAULT_STATE_OPEN, pb.FAULT_STATE_ACKNOWLEDGED, pb.FAULT_STATE_CLEARED
UNSPECIFIED = pb.FAULT_STATE_UNSPECIFIED
LAMP_OUT, DAY_BURNER, POWER_ANOMALY = (
    pb.FAULT_KIND_LAMP_OUT,
    pb.FAULT_KIND_DAY_BURNER,
    pb.FAULT_KIND_POWER_ANOMALY,
)
CABINET_OUTAGE, FEEDER_OUTAGE = pb.FAULT_KIND_CABINET_OUTAGE, pb.FAULT_KIND_FEEDER_OUTAGE


async def build(street) -> None:
    """Cabinet cab-1 and feeder f-1 at the centre; lights sl-1 (maintained by `crews`), sl-2 at the
    centre, far-1 half a degree east, all of public-works; uma-1 at the centre, of utilities."""
    async with street.app.db.transaction() as tx:
        now = tx.now
        common: dict[str, Any] = {"etag": "e", "create_time": now, "update_time": now}

        def owned(owner: str = OWNER, maintainer: str = "") -> dict[str, str]:
            return {
                "owner_organization": owner,
                "operator_organization": "",
                "maintainer_organization": maintainer,
            }

        def place(offset: float = 0.0) -> dict[str, Any]:
            point = (CENTER[0], CENTER[1] + offset)
            return {"latitude": point[0], "longitude": point[1], "area_cell": cell_for(*point)}

        tx.session.add(
            LightModelRow(
                light_model_id="led-60",
                display_name="LED",
                lamp_technology=inventory_pb2.LAMP_TECHNOLOGY_LED,
                rated_power_w=60.0,
                **owned(),
                **common,
            )
        )
        tx.session.add(
            CabinetRow(
                cabinet_id="cab-1",
                display_name="CAB",
                working_mode=1,
                circuits={},
                **owned(),
                **place(),
                **common,
            )
        )
        await tx.session.flush()
        tx.session.add(
            FeederRow(feeder_id="f-1", display_name="F", cabinet_id="cab-1", circuit=1, phase=1, **common)
        )
        await tx.session.flush()
        for light_id, owner, maintainer, offset in (
            ("sl-1", OWNER, "crews", 0.0),
            ("sl-2", OWNER, "", 0.0002),
            ("far-1", OWNER, "", 0.5),
            ("uma-1", "utilities", "", 0.0004),
        ):
            tx.session.add(
                LightRow(
                    light_id=light_id,
                    display_name=light_id,
                    light_model_id="led-60",
                    feeder_id="f-1" if owner == OWNER else None,
                    cabinet_id="cab-1" if owner == OWNER else None,
                    controller_faults=[],
                    **owned(owner, maintainer),
                    **place(offset),
                    **common,
                )
            )


async def raise_fault(street, subject: str, kind: int, affected: tuple[str, ...] = ()) -> str:
    """A fault as the rules raise it; the clock then moves a second, so raise times differ."""
    collection, _, subject_id = subject.partition("/")
    async with street.app.db.transaction() as tx:
        if collection == "lights":
            owned = await tx.session.get(LightRow, subject_id)
        else:
            cabinet_id = (
                subject_id
                if collection == "cabinets"
                else (await tx.session.get(FeederRow, subject_id)).cabinet_id
            )
            owned = await tx.session.get(CabinetRow, cabinet_id)
        book = FaultBook(tx)
        await book.load([subject])
        row = book.raise_fault(subject, owned, Finding(kind, 12.0, 60.5, f"{subject} is wrong"), affected)
    street.clock.advance(1)
    return row.fault_id


async def clear_fault(street, fault_id: str) -> None:
    async with street.app.db.transaction() as tx:
        row = await tx.session.get(FaultRow, fault_id)
        book = FaultBook(tx)
        await book.load([row.subject])
        book.clear(row)
    street.clock.advance(1)


def names(faults) -> list[str]:
    return [fault.name for fault in faults]


async def listed(street, metadata=None, **request: Any) -> list[str]:
    response = await street.faults.ListFaults(
        pb.ListFaultsRequest(**request), metadata=metadata or street.operator, timeout=10
    )
    return names(response.faults)


async def test_faults_are_listed_newest_first_with_filters_and_pages_and_hidden_from_other_organizations(
    street,
):
    await build(street)
    f1 = await raise_fault(street, "lights/sl-1", LAMP_OUT)
    f2 = await raise_fault(street, "lights/sl-2", POWER_ANOMALY)
    f3 = await raise_fault(street, "cabinets/cab-1", CABINET_OUTAGE, ("sl-1", "sl-2"))
    f4 = await raise_fault(street, "feeders/f-1", FEEDER_OUTAGE, ("sl-1", "sl-2"))
    f5 = await raise_fault(street, "lights/far-1", pb.FAULT_KIND_DAY_BURNER)
    f6 = await raise_fault(street, "lights/uma-1", LAMP_OUT)
    await clear_fault(street, f1)
    n1, n2, n3, n4, n5, n6 = (f"faults/{fault_id}" for fault_id in (f1, f2, f3, f4, f5, f6))

    assert await listed(street) == [n5, n4, n3, n2, n1]
    assert await listed(street, kinds=[LAMP_OUT, POWER_ANOMALY]) == [n2, n1]
    assert await listed(street, open_only=True) == [n5, n4, n3, n2]
    assert await listed(street, subject="lights/sl-1") == [n1]
    assert await listed(street, subject="feeders/f-1", open_only=True) == [n4]
    assert await listed(street, area=AREA) == [n4, n3, n2, n1]  # far-1 is outside; f-1 stands at its cabinet
    assert await listed(street, metadata=street.analyst, kinds=[CABINET_OUTAGE]) == [n3]

    first = await street.faults.ListFaults(pb.ListFaultsRequest(page_size=2), metadata=street.operator)
    assert names(first.faults) == [n5, n4]
    second = await street.faults.ListFaults(
        pb.ListFaultsRequest(page_size=2, page_token=first.next_page_token), metadata=street.operator
    )
    assert names(second.faults) == [n3, n2]
    last = await street.faults.ListFaults(
        pb.ListFaultsRequest(page_size=2, page_token=second.next_page_token), metadata=street.operator
    )
    assert (names(last.faults), last.next_page_token) == ([n1], "")

    outage = await street.faults.GetFault(pb.GetFaultRequest(name=n3), metadata=street.operator)
    assert (outage.kind, outage.subject, outage.state) == (CABINET_OUTAGE, "cabinets/cab-1", OPEN)
    assert list(outage.affected_lights) == ["lights/sl-1", "lights/sl-2"]
    assert (outage.value, outage.expected, outage.detail) == (12.0, 60.5, "cabinets/cab-1 is wrong")
    assert (outage.owner_organization, outage.area_cell) == (OWNER, cell_for(*CENTER))
    assert not outage.HasField("clear_time")
    cleared = await street.faults.GetFault(pb.GetFaultRequest(name=n1), metadata=street.operator)
    assert cleared.state == CLEARED
    assert cleared.clear_time.ToDatetime(tzinfo=UTC) > cleared.raise_time.ToDatetime(tzinfo=UTC)

    # Another organization sees its own only; a maintainer sees what it maintains.
    assert await listed(street, metadata=street.other_org) == [n6]
    missing = await refused(street.faults.GetFault(pb.GetFaultRequest(name=n1), metadata=street.other_org))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    crews = street.token("users/mo", "crews", "operator")
    assert await listed(street, metadata=crews) == [n1]
    assert (await street.faults.GetFault(pb.GetFaultRequest(name=n1), metadata=crews)).name == n1


async def test_acknowledging_records_who_and_when_once_and_a_cleared_fault_cannot_be(street):
    await build(street)
    fault_id = await raise_fault(street, "lights/sl-1", LAMP_OUT)
    name = f"faults/{fault_id}"
    acknowledged = await street.faults.AcknowledgeFault(
        pb.AcknowledgeFaultRequest(name=name), metadata=street.operator
    )
    assert (acknowledged.state, acknowledged.acknowledged_by) == (ACKNOWLEDGED, "users/li")
    assert acknowledged.acknowledge_time.ToDatetime(tzinfo=UTC) == street.clock.now()
    # Twice: unchanged, the first acknowledgement stands (even when a colleague asks).
    colleague = street.token("users/wu", OWNER, "operator")
    again = await street.faults.AcknowledgeFault(pb.AcknowledgeFaultRequest(name=name), metadata=colleague)
    assert again == acknowledged

    maintainer = await refused(
        street.faults.AcknowledgeFault(
            pb.AcknowledgeFaultRequest(name=name), metadata=street.token("users/mo", "crews", "operator")
        )
    )
    assert (maintainer.code(), error_info(maintainer).reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "FAULT_READ_ONLY",
    )
    stranger = await refused(
        street.faults.AcknowledgeFault(pb.AcknowledgeFaultRequest(name=name), metadata=street.other_org)
    )
    assert stranger.code() == grpc.StatusCode.NOT_FOUND
    analyst = await refused(
        street.faults.AcknowledgeFault(pb.AcknowledgeFaultRequest(name=name), metadata=street.analyst)
    )
    assert analyst.code() == grpc.StatusCode.PERMISSION_DENIED

    # Acknowledged is still open: the one open fault of the light and kind (the partial unique index).
    async def a_second_open_one():
        async with street.app.db.transaction() as tx:
            row = await tx.session.get(FaultRow, fault_id)
            tx.session.add(
                FaultRow(
                    fault_id="second",
                    kind=LAMP_OUT,
                    subject="lights/sl-1",
                    state=OPEN,
                    affected_lights=[],
                    raise_time=tx.now,
                    update_time=tx.now,
                    area_cell=row.area_cell,
                    owner_organization=OWNER,
                )
            )

    with pytest.raises(IntegrityError):
        await a_second_open_one()

    await clear_fault(street, fault_id)  # the lamp burns again
    late = await refused(
        street.faults.AcknowledgeFault(pb.AcknowledgeFaultRequest(name=name), metadata=street.operator)
    )
    assert (late.code(), error_info(late).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FAULT_CLEARED")
    fault = await street.faults.GetFault(pb.GetFaultRequest(name=name), metadata=street.operator)
    assert (fault.state, fault.acknowledged_by) == (CLEARED, "users/li")

    changes = []
    for event in await street.events("streetlights.fault."):
        changed = pb.FaultChanged()
        assert event.payload.Unpack(changed)
        changes.append((event.type, changed.previous_state, changed.fault.state))
    assert changes == [
        ("streetlights.fault.raised", UNSPECIFIED, OPEN),
        ("streetlights.fault.acknowledged", OPEN, ACKNOWLEDGED),
        ("streetlights.fault.cleared", ACKNOWLEDGED, CLEARED),
    ]


class Watch:
    """A WatchFaults stream read in the background."""

    def __init__(self, street, request, metadata):
        self.call = street.faults.WatchFaults(request, metadata=metadata)
        self.received: list[pb.WatchFaultsResponse] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for response in self.call:
            self.received.append(response)

    async def until(self, count, timeout=10.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return [(r.fault.name, r.fault.state, r.previous_state) for r in self.received]

    async def close(self):
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_watch_faults_delivers_its_area_kinds_and_organization_and_resumes_from_a_cursor(street):
    await build(street)
    await raise_fault(street, "lights/sl-2", DAY_BURNER)  # before the cursor
    head = encode_cursor(await street.app.db.last_sequence())
    f1 = await raise_fault(street, "lights/sl-1", LAMP_OUT)
    await raise_fault(street, "lights/far-1", LAMP_OUT)  # outside the area
    f3 = await raise_fault(street, "lights/uma-1", LAMP_OUT)  # inside, another organization's
    f4 = await raise_fault(street, "cabinets/cab-1", CABINET_OUTAGE, ("sl-1", "sl-2"))
    await clear_fault(street, f1)
    n1, n3, n4 = (f"faults/{fault_id}" for fault_id in (f1, f3, f4))

    watch = Watch(street, pb.WatchFaultsRequest(after_cursor=head, area=AREA), street.operator)
    try:
        assert await watch.until(3) == [(n1, OPEN, UNSPECIFIED), (n4, OPEN, UNSPECIFIED), (n1, CLEARED, OPEN)]
        # A change made while the stream is open arrives as it commits.
        await street.faults.AcknowledgeFault(pb.AcknowledgeFaultRequest(name=n4), metadata=street.operator)
        assert (await watch.until(4))[3] == (n4, ACKNOWLEDGED, OPEN)
        await asyncio.sleep(0.3)
        assert len(watch.received) == 4  # nothing else: not far-1 (outside), not uma-1 (not ours)
        cursor = watch.received[-1].cursor
    finally:
        await watch.close()

    # While nobody watches: another fault; a watch from the last cursor gets exactly what came after.
    f5 = await raise_fault(street, "lights/sl-2", POWER_ANOMALY)
    resumed = Watch(street, pb.WatchFaultsRequest(after_cursor=cursor, area=AREA), street.operator)
    try:
        assert await resumed.until(1) == [(f"faults/{f5}", OPEN, UNSPECIFIED)]
        await asyncio.sleep(0.3)
        assert len(resumed.received) == 1
    finally:
        await resumed.close()
    cursors = [r.cursor for r in watch.received + resumed.received]
    assert len(set(cursors)) == len(cursors)

    # The kinds filter; another organization's watch sees its own faults only; from now: only what comes.
    outages = Watch(street, pb.WatchFaultsRequest(after_cursor=head, kinds=[CABINET_OUTAGE]), street.operator)
    theirs = Watch(street, pb.WatchFaultsRequest(after_cursor=head), street.other_org)
    try:
        assert await outages.until(2) == [(n4, OPEN, UNSPECIFIED), (n4, ACKNOWLEDGED, OPEN)]
        assert await theirs.until(1) == [(n3, OPEN, UNSPECIFIED)]
        await asyncio.sleep(0.3)
        assert (len(outages.received), len(theirs.received)) == (2, 1)
    finally:
        await outages.close()
        await theirs.close()
    now = Watch(street, pb.WatchFaultsRequest(), street.operator)
    try:
        await asyncio.sleep(0.3)  # the stream has started from the end of the log
        f6 = await raise_fault(street, "feeders/f-1", FEEDER_OUTAGE, ("sl-1", "sl-2"))
        assert await now.until(1) == [(f"faults/{f6}", OPEN, UNSPECIFIED)]
        await asyncio.sleep(0.3)
        assert len(now.received) == 1
    finally:
        await now.close()


async def test_bad_input_is_refused_field_by_field(street):
    await build(street)
    fault_id = await raise_fault(street, "lights/sl-1", LAMP_OUT)

    error = await refused(
        street.faults.GetFault(pb.GetFaultRequest(name="fault/x"), metadata=street.operator)
    )
    assert (error.code(), [field for field, _ in field_violations(error)]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["name"],
    )
    error = await refused(
        street.faults.AcknowledgeFault(pb.AcknowledgeFaultRequest(name="faults/"), metadata=street.operator)
    )
    assert [field for field, _ in field_violations(error)] == ["name"]
    missing = await refused(
        street.faults.GetFault(pb.GetFaultRequest(name="faults/nope"), metadata=street.operator)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    error = await refused(
        street.faults.ListFaults(
            pb.ListFaultsRequest(
                page_size=-1, subject="lamps/sl-1", kinds=[LAMP_OUT, 99, 0], area="bbox:1,2"
            ),
            metadata=street.operator,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(error)] == [
        "page_size",
        "subject",
        "kinds[1]",
        "kinds[2]",
        "area",
    ]
    error = await refused(
        street.faults.ListFaults(pb.ListFaultsRequest(page_token="forged"), metadata=street.operator)
    )
    assert [field for field, _ in field_violations(error)] == ["page_token"]
    unknown_area = await refused(
        street.faults.ListFaults(pb.ListFaultsRequest(area="atlantis"), metadata=street.operator)
    )
    assert unknown_area.code() == grpc.StatusCode.NOT_FOUND

    watch = street.faults.WatchFaults(
        pb.WatchFaultsRequest(after_cursor="junk", kinds=[0], area="bbox:x"),
        metadata=street.operator,
        timeout=10,
    )
    error = await refused(watch.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(error)] == ["after_cursor", "kinds[0]", "area"]
    # Nothing was changed by any of it.
    fault = await street.faults.GetFault(
        pb.GetFaultRequest(name=f"faults/{fault_id}"), metadata=street.operator
    )
    assert fault.state == OPEN
