"""MAN-1: covers — create, get, list with filters and pages, update with a field mask and etag, delete —
with bad input answered field by field, a terminal bound to one cover, and covers hidden from other
organizations. MAN-6: risk scores written by the analytics job only, and covers listed by risk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.manholes.v1 import manholes_pb2
from cityos_manholes.models import AlarmRow, WorkOrderRow
from cityos_platform.testing.status import error_info, field_violations


def _mask(*paths):
    return field_mask_pb2.FieldMask(paths=list(paths))


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def _names(street, request, metadata=None):
    answer = await street.covers.ListCovers(request, metadata=metadata or street.operator)
    return [cover.name for cover in answer.covers], answer.next_page_token


@pytest.mark.req("MAN-1")
async def test_a_cover_through_its_life(street):
    cover = await street.cover(
        "xa-0001",
        device="devices/mh-001",
        material="ductile iron",
        install_angle_deg=2.5,
        thresholds=manholes_pb2.Thresholds(
            tilt_deg=15, ch4_pct_lel=25, heartbeat_timeout=duration_pb2.Duration(seconds=3600)
        ),
        ownership=resources_pb2.Ownership(maintainer_organization="utilities"),
    )
    assert (cover.name, cover.device, cover.ownership.owner_organization) == (
        "covers/xa-0001",
        "devices/mh-001",
        "drainage",
    )
    assert cover.area_cell
    assert cover.etag
    assert (cover.thresholds.tilt_deg, cover.thresholds.HasField("water_level_m")) == (15, False)
    assert cover.thresholds.heartbeat_timeout.seconds == 3600
    # Live state and risk are output only: nothing read yet, no score yet.
    assert not cover.state.HasField("reading_time")
    assert not cover.state.open
    assert cover.risk.source == manholes_pb2.RISK_SOURCE_UNSPECIFIED
    await street.cover("xa-0002", kind=manholes_pb2.COVER_KIND_POWER, offset=0.0002)
    await street.cover("xa-0003", offset=0.5)  # far outside the district's bbox below
    got = await street.covers.GetCover(
        manholes_pb2.GetCoverRequest(name=cover.name), metadata=street.operator
    )
    assert got == cover
    # The maintainer reads it too.
    maintainer = await street.covers.GetCover(
        manholes_pb2.GetCoverRequest(name=cover.name), metadata=street.other_org
    )
    assert maintainer.name == cover.name

    # Lists: pages, kind, area, alarmed only.
    first, token = await _names(street, manholes_pb2.ListCoversRequest(page_size=2))
    assert first == ["covers/xa-0001", "covers/xa-0002"]
    rest, end = await _names(street, manholes_pb2.ListCoversRequest(page_size=2, page_token=token))
    assert (rest, end) == (["covers/xa-0003"], "")
    power, _ = await _names(street, manholes_pb2.ListCoversRequest(kind=manholes_pb2.COVER_KIND_POWER))
    assert power == ["covers/xa-0002"]
    near, _ = await _names(street, manholes_pb2.ListCoversRequest(area="bbox:39.04,115.94,39.06,115.96"))
    assert near == ["covers/xa-0001", "covers/xa-0002"]
    alarmed, _ = await _names(street, manholes_pb2.ListCoversRequest(alarmed_only=True))
    assert alarmed == []
    now = datetime.now(UTC)
    async with street.app.db.transaction() as tx:
        tx.session.add(_alarm("al-1", "xa-0002", now, manholes_pb2.ALARM_STATE_ACKNOWLEDGED))
        tx.session.add(_alarm("al-2", "xa-0003", now, manholes_pb2.ALARM_STATE_RESOLVED))
    alarmed, _ = await _names(street, manholes_pb2.ListCoversRequest(alarmed_only=True))
    assert alarmed == ["covers/xa-0002"]

    # Update with a mask and the etag read; a second update with the old etag is refused.
    updated = await street.covers.UpdateCover(
        manholes_pb2.UpdateCoverRequest(
            cover=manholes_pb2.Cover(
                name=cover.name,
                etag=cover.etag,
                display_name="XA-0001 (north)",
                thresholds=manholes_pb2.Thresholds(water_level_m=1.5),
                material="should not change",
            ),
            update_mask=_mask("display_name", "thresholds"),
        ),
        metadata=street.operator,
    )
    assert (updated.display_name, updated.material, updated.thresholds.water_level_m) == (
        "XA-0001 (north)",
        "ductile iron",
        1.5,
    )
    assert not updated.thresholds.HasField("tilt_deg")  # the thresholds are replaced as a whole
    assert updated.etag != cover.etag
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await street.covers.UpdateCover(
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name=cover.name, etag=cover.etag, display_name="X"),
                update_mask=_mask("display_name"),
            ),
            metadata=street.operator,
        )
    assert (stale.value.code(), error_info(stale.value).reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    with pytest.raises(grpc.aio.AioRpcError) as bad_mask:
        await street.covers.UpdateCover(
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name=cover.name, area_cell="x"), update_mask=_mask("area_cell")
            ),
            metadata=street.operator,
        )
    assert [field for field, _ in field_violations(bad_mask.value)] == ["update_mask"]
    # The maintainer reads but does not change it.
    with pytest.raises(grpc.aio.AioRpcError) as maintainer_writes:
        await street.covers.UpdateCover(
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name=cover.name, display_name="X"), update_mask=_mask("display_name")
            ),
            metadata=street.other_org,
        )
    assert maintainer_writes.value.code() == grpc.StatusCode.NOT_FOUND

    # Delete: refused while an alarm is not resolved or a work order is planned or running.
    with pytest.raises(grpc.aio.AioRpcError) as alarmed_cover:
        await street.covers.DeleteCover(
            manholes_pb2.DeleteCoverRequest(name="covers/xa-0002"), metadata=street.operator
        )
    assert (alarmed_cover.value.code(), error_info(alarmed_cover.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "COVER_IN_USE",
    )
    async with street.app.db.transaction() as tx:
        tx.session.add(_work_order("wo-1", "xa-0001", now, manholes_pb2.WORK_ORDER_STATUS_PLANNED))
    with pytest.raises(grpc.aio.AioRpcError) as planned:
        await street.covers.DeleteCover(
            manholes_pb2.DeleteCoverRequest(name=cover.name), metadata=street.operator
        )
    assert error_info(planned.value).reason == "COVER_IN_USE"
    async with street.app.db.transaction() as tx:
        (await tx.session.get(WorkOrderRow, "wo-1")).status = manholes_pb2.WORK_ORDER_STATUS_COMPLETED
    # A resolved alarm and a finished work order do not hold a cover back.
    for name in (cover.name, "covers/xa-0003"):
        await street.covers.DeleteCover(manholes_pb2.DeleteCoverRequest(name=name), metadata=street.operator)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await street.covers.GetCover(manholes_pb2.GetCoverRequest(name=cover.name), metadata=street.operator)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    left, _ = await _names(street, manholes_pb2.ListCoversRequest())
    assert left == ["covers/xa-0002"]

    # Every change is an event of the owner, in the cover's cell.
    events = [
        event
        async for batch in events_pb2_grpc.EventServiceStub(street.channel).StreamEvents(
            events_pb2.StreamEventsRequest(follow=False), metadata=street.operator
        )
        for event in batch.events
    ]
    assert [event.type for event in events] == [
        "manholes.cover.created",
        "manholes.cover.created",
        "manholes.cover.created",
        "manholes.cover.updated",
        "manholes.cover.deleted",
        "manholes.cover.deleted",
    ]
    assert {(event.owner_organization, event.subject) for event in events[:1]} == {("drainage", cover.name)}
    assert events[0].area_cell == cover.area_cell


def _alarm(alarm_id, cover_id, now, state):
    return AlarmRow(
        alarm_id=alarm_id,
        cover_id=cover_id,
        condition=manholes_pb2.ALARM_CONDITION_TILT,
        severity=manholes_pb2.SEVERITY_MAJOR,
        state=state,
        value=30.0,
        threshold=10.0,
        raise_time=now,
        update_time=now,
        update_count=0,
        cleared=False,
        acknowledged_by="",
        resolved_by="",
        resolution="",
        cover_kind=manholes_pb2.COVER_KIND_SEWER,
        area_cell="",
        owner_organization="drainage",
    )


def _work_order(work_order_id, cover_id, now, status):
    return WorkOrderRow(
        work_order_id=work_order_id,
        cover_id=cover_id,
        kind=manholes_pb2.WORK_ORDER_KIND_INSPECTION,
        assignee_organization="utilities",
        planned_start_time=now,
        planned_end_time=now + timedelta(hours=2),
        status=status,
        alarm_ids=[],
        description="",
        history=[],
        created_by="users/wei",
        etag="e",
        create_time=now,
        update_time=now,
    )


@pytest.mark.req("MAN-1")
async def test_one_open_alarm_per_cover_and_condition(street):
    """The partial unique index: a second open alarm of the same condition is refused by the database;
    once the first is resolved, a new one may be raised."""
    await street.cover("xa-0001")
    now = datetime.now(UTC)
    async with street.app.db.transaction() as tx:
        tx.session.add(_alarm("al-1", "xa-0001", now, manholes_pb2.ALARM_STATE_RAISED))
    with pytest.raises(Exception, match=r"(?i)unique"):
        async with street.app.db.transaction() as tx:
            tx.session.add(_alarm("al-2", "xa-0001", now, manholes_pb2.ALARM_STATE_ACKNOWLEDGED))
    async with street.app.db.transaction() as tx:
        (await tx.session.get(AlarmRow, "al-1")).state = manholes_pb2.ALARM_STATE_RESOLVED
    async with street.app.db.transaction() as tx:
        tx.session.add(_alarm("al-2", "xa-0001", now, manholes_pb2.ALARM_STATE_RAISED))


@pytest.mark.req("MAN-1")
async def test_create_is_idempotent_by_request_id(street):
    request = manholes_pb2.CreateCoverRequest(
        cover=street.cover_message(), cover_id="xa-0001", request_id="create-xa-0001"
    )
    first = await street.covers.CreateCover(request, metadata=street.operator)
    again = await street.covers.CreateCover(request, metadata=street.operator)
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await street.cover("xa-0001")
    assert (exists.value.code(), error_info(exists.value).reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "COVER_EXISTS",
    )


@pytest.mark.req("MAN-1")
async def test_bad_input_names_every_field(street):
    cover = manholes_pb2.Cover(
        display_name="",
        kind=manholes_pb2.COVER_KIND_UNSPECIFIED,
        road_class=manholes_pb2.ROAD_CLASS_UNSPECIFIED,
        material="x" * 51,
        install_angle_deg=91,
        device="sensors/mh-1",
        thresholds=manholes_pb2.Thresholds(
            tilt_deg=0.5,
            water_level_m=25,
            ch4_pct_lel=0,
            h2s_ppm=5000,
            co_ppm=-1,
            voc_ppm=float("nan"),
            battery_low_v=5,
            heartbeat_timeout=duration_pb2.Duration(seconds=30),
            hysteresis=0.9,
        ),
        ownership=resources_pb2.Ownership(operator_organization="o" * 65),
    )
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await street.covers.CreateCover(
            manholes_pb2.CreateCoverRequest(cover=cover, cover_id="Not An Id"), metadata=street.operator
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in field_violations(bad.value)) == sorted(
        [
            "cover.display_name",
            "cover.kind",
            "cover.location",
            "cover.road_class",
            "cover.material",
            "cover.install_angle_deg",
            "cover.device",
            "cover.thresholds.tilt_deg",
            "cover.thresholds.water_level_m",
            "cover.thresholds.ch4_pct_lel",
            "cover.thresholds.h2s_ppm",
            "cover.thresholds.co_ppm",
            "cover.thresholds.voc_ppm",
            "cover.thresholds.battery_low_v",
            "cover.thresholds.heartbeat_timeout",
            "cover.thresholds.hysteresis",
            "cover.ownership.operator_organization",
            "cover_id",
        ]
    )
    # A location out of range names its coordinates.
    off_earth = street.cover_message()
    off_earth.location.latitude, off_earth.location.longitude = 91, -181
    with pytest.raises(grpc.aio.AioRpcError) as off:
        await street.covers.CreateCover(
            manholes_pb2.CreateCoverRequest(cover=off_earth, cover_id="xa-0009"), metadata=street.operator
        )
    assert [field for field, _ in field_violations(off.value)] == [
        "cover.location.latitude",
        "cover.location.longitude",
    ]
    # An update checks only the fields its mask names.
    await street.cover("xa-0001")
    with pytest.raises(grpc.aio.AioRpcError) as bad_update:
        await street.covers.UpdateCover(
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name="covers/xa-0001", install_angle_deg=-1),
                update_mask=_mask("install_angle_deg"),
            ),
            metadata=street.operator,
        )
    assert [field for field, _ in field_violations(bad_update.value)] == ["cover.install_angle_deg"]
    with pytest.raises(grpc.aio.AioRpcError) as bad_name:
        await street.covers.GetCover(
            manholes_pb2.GetCoverRequest(name="spots/xa-0001"), metadata=street.operator
        )
    assert [field for field, _ in field_violations(bad_name.value)] == ["name"]


@pytest.mark.req("MAN-1")
async def test_a_terminal_watches_one_cover(street):
    await street.cover("xa-0001", device="devices/mh-001")
    with pytest.raises(grpc.aio.AioRpcError) as bound:
        await street.cover("xa-0002", device="devices/mh-001")
    assert (bound.value.code(), error_info(bound.value).reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "DEVICE_BOUND",
    )
    second = await street.cover("xa-0002", device="devices/mh-002")
    with pytest.raises(grpc.aio.AioRpcError) as moved:
        await street.covers.UpdateCover(
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name=second.name, device="devices/mh-001"),
                update_mask=_mask("device"),
            ),
            metadata=street.operator,
        )
    assert error_info(moved.value).reason == "DEVICE_BOUND"
    # Unbound from the first cover, the terminal may go to the second; rebinding to itself is no change.
    await street.covers.UpdateCover(
        manholes_pb2.UpdateCoverRequest(
            cover=manholes_pb2.Cover(name="covers/xa-0001"), update_mask=_mask("device")
        ),
        metadata=street.operator,
    )
    for _ in range(2):
        rebound = await street.covers.UpdateCover(
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name=second.name, device="devices/mh-001"),
                update_mask=_mask("device"),
            ),
            metadata=street.operator,
        )
    assert rebound.device == "devices/mh-001"


@pytest.mark.req("MAN-1")
async def test_another_organization_finds_nothing(street):
    cover = await street.cover("xa-0001")
    for call, request in (
        (street.covers.GetCover, manholes_pb2.GetCoverRequest(name=cover.name)),
        (
            street.covers.UpdateCover,
            manholes_pb2.UpdateCoverRequest(
                cover=manholes_pb2.Cover(name=cover.name, display_name="Mine"),
                update_mask=_mask("display_name"),
            ),
        ),
        (street.covers.DeleteCover, manholes_pb2.DeleteCoverRequest(name=cover.name)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call(request, metadata=street.other_org)
        assert (hidden.value.code(), error_info(hidden.value).reason) == (
            grpc.StatusCode.NOT_FOUND,
            "COVER_NOT_FOUND",
        )
    listed, _ = await _names(street, manholes_pb2.ListCoversRequest(), metadata=street.other_org)
    assert listed == []
    by_risk = await street.covers.ListCoversByRisk(
        manholes_pb2.ListCoversByRiskRequest(), metadata=street.other_org
    )
    assert list(by_risk.covers) == []
    # Nor may it create a cover owned by another organization.
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await street.cover(
            "ut-0001",
            metadata=street.other_org,
            ownership=resources_pb2.Ownership(owner_organization="drainage"),
        )
    assert error_info(foreign.value).reason == "FOREIGN_OWNER"


@pytest.mark.req("MAN-6")
async def test_risk_scores_from_the_analytics_job_only_and_covers_by_risk(street):
    for index in range(1, 5):
        await street.cover(f"xa-000{index}", offset=0.0001 * index)
    now = datetime.now(UTC).replace(microsecond=0)

    def scores(computed, model="cover-risk-2026.11", **by_cover):
        return manholes_pb2.SetRiskScoresRequest(
            scores=[manholes_pb2.CoverRiskScore(cover=f"covers/{c}", score=s) for c, s in by_cover.items()],
            model_version=model,
            computed_time=_stamp(computed),
        )

    request = scores(now, **{"xa-0001": 0.2, "xa-0002": 0.9, "xa-0003": 0.2})
    # Not the analytics client: another service's account, a person of any organization.
    admin = street.token("users/ann", "drainage", "org-admin")
    for caller in (street.parking_service, street.operator, admin):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await street.covers.SetRiskScores(request, metadata=caller)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as not_analytics:
        await street.covers.SetRiskScores(request, metadata=street.parking_service)
    assert error_info(not_analytics.value).reason == "NOT_ANALYTICS"

    written = await street.covers.SetRiskScores(request, metadata=street.analytics)
    assert (written.updated, written.stale) == (3, 0)
    again = await street.covers.SetRiskScores(request, metadata=street.analytics)  # idempotent
    assert (again.updated, again.stale) == (3, 0)
    # A newer run rescores one cover; an older one (late) is ignored.
    newer = await street.covers.SetRiskScores(
        scores(now + timedelta(hours=1), "cover-risk-2026.12", **{"xa-0003": 0.95}), metadata=street.analytics
    )
    late = await street.covers.SetRiskScores(
        scores(now - timedelta(hours=1), **{"xa-0003": 0.0, "xa-0004": 0.5}), metadata=street.analytics
    )
    assert ((newer.updated, newer.stale), (late.updated, late.stale)) == ((1, 0), (1, 1))

    # Highest latest score first, ties by name, covers without a score last; pages keep the order.
    order = []
    token = ""
    while True:
        page = await street.covers.ListCoversByRisk(
            manholes_pb2.ListCoversByRiskRequest(page_size=2, page_token=token), metadata=street.operator
        )
        order += [(cover.name, round(cover.risk.score, 2)) for cover in page.covers]
        token = page.next_page_token
        if not token:
            break
    assert order == [
        ("covers/xa-0003", 0.95),
        ("covers/xa-0002", 0.9),
        ("covers/xa-0004", 0.5),
        ("covers/xa-0001", 0.2),
    ]
    await street.cover("xa-0005", offset=0.5)
    everything = await street.covers.ListCoversByRisk(
        manholes_pb2.ListCoversByRiskRequest(), metadata=street.operator
    )
    assert [cover.name for cover in everything.covers][-1] == "covers/xa-0005"
    assert not everything.covers[-1].HasField("risk")
    top = everything.covers[0]
    assert (top.risk.source, top.risk.model_version, top.risk.computed_time.ToDatetime(tzinfo=UTC)) == (
        manholes_pb2.RISK_SOURCE_ANALYTICS,
        "cover-risk-2026.12",
        now + timedelta(hours=1),
    )
    near = await street.covers.ListCoversByRisk(
        manholes_pb2.ListCoversByRiskRequest(area="bbox:39.04,115.94,39.06,115.96"), metadata=street.operator
    )
    assert "covers/xa-0005" not in [cover.name for cover in near.covers]

    # Bad batches name their fields.
    bad = manholes_pb2.SetRiskScoresRequest(
        scores=[
            manholes_pb2.CoverRiskScore(cover="covers/xa-0001", score=1.5),
            manholes_pb2.CoverRiskScore(cover="xa-0002", score=0.5),
            manholes_pb2.CoverRiskScore(cover="covers/xa-0001", score=0.5),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await street.covers.SetRiskScores(bad, metadata=street.analytics)
    assert sorted(field for field, _ in field_violations(invalid.value)) == [
        "computed_time",
        "model_version",
        "scores[0].score",
        "scores[1].cover",
        "scores[2].cover",
    ]
