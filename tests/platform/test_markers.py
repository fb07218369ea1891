"""The runtime's contracts through a real resource service (the markers service) over gRPC, on SQLite
and on PostgreSQL: policy (CORE-2), tenancy (CORE-3), area filters (CORE-4), the access log (CORE-5),
event streams (CORE-6), idempotency and page tokens (CORE-7)."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from shapely.geometry import Point, shape

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.testing.v1 import markers_pb2, markers_pb2_grpc
from cityos_platform import accesslog
from cityos_platform.areas import AreaRegistry
from cityos_platform.events import EventConsumer
from cityos_platform.migrate import PLATFORM_CHAIN, upgrade
from cityos_platform.paging import PageTokens
from cityos_platform.testing import markers
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import detail, error_info, rich_status

CENTER = (39.0, 115.95)


@pytest.fixture
async def city(start_server, database_url, mint):
    db = await markers.open_database(database_url)
    server = await start_server(markers.mounts(db, PageTokens(b"page-token-secret-for-tests")))
    channel = grpc.aio.insecure_channel(server.address)

    class City:
        def __init__(self):
            self.server, self.db, self.channel = server, db, channel
            self.stub = markers_pb2_grpc.MarkerServiceStub(channel)
            self.events = events_pb2_grpc.EventServiceStub(channel)

        def token(self, subject, organization, *roles, **claims):
            return bearer(mint(subject, organization, list(roles), **claims))

    yield City()
    await channel.close()
    await db.close()


def _marker(label="bench", lat=CENTER[0], lng=CENTER[1], **ownership) -> markers_pb2.Marker:
    return markers_pb2.Marker(
        label=label,
        location=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
        ownership=resources_pb2.Ownership(**ownership),
    )


async def _create(city, who, marker_id, marker=None, request_id=""):
    return await city.stub.CreateMarker(
        markers_pb2.CreateMarkerRequest(
            marker=marker or _marker(), marker_id=marker_id, request_id=request_id
        ),
        metadata=who,
        timeout=10,
    )


async def _code(awaitable) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value.code()


@pytest.mark.req("CORE-2")
async def test_a_role_without_the_permission_is_denied_and_anonymous_callers_unauthenticated(city):
    analyst = city.token("ann", "transport", "analyst")  # analysts read markers but may not write them
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _create(city, analyst, "m1")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(denied.value)
    assert (info.reason, info.metadata["permission"]) == ("MISSING_PERMISSION", "testing.markers.write")
    assert await _code(city.stub.ListMarkers(markers_pb2.ListMarkersRequest(), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # A role the policy names passes; so does a token scoped to the permission (an API key's token).
    await _create(city, city.token("olga", "transport", "operator"), "m1")
    scoped = city.token("app-42", "public", extra_claims={"scope": "testing.markers.read"})
    listed = await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(), metadata=scoped, timeout=5)
    assert listed.markers == []  # authorized, and scoped to its own organization


@pytest.mark.req("CORE-3")
async def test_another_organization_cannot_read_list_or_change_a_resource(city):
    transport = city.token("olga", "transport", "operator")
    utilities = city.token("uma", "utilities", "operator", "org-admin")
    await _create(city, transport, "bus-stop-1")
    name = "markers/bus-stop-1"
    missing = await _code(
        city.stub.GetMarker(markers_pb2.GetMarkerRequest(name="markers/nope"), metadata=utilities)
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await city.stub.GetMarker(markers_pb2.GetMarkerRequest(name=name), metadata=utilities)
    assert foreign.value.code() == missing == grpc.StatusCode.NOT_FOUND
    assert foreign.value.details() == "marker 'markers/bus-stop-1' not found"  # the same words as for nothing
    listed = await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(), metadata=utilities)
    assert list(listed.markers) == []
    update = markers_pb2.UpdateMarkerRequest(
        marker=markers_pb2.Marker(name=name, label="mine now"),
        update_mask=field_mask_pb2.FieldMask(paths=["label"]),
    )
    assert await _code(city.stub.UpdateMarker(update, metadata=utilities)) == grpc.StatusCode.NOT_FOUND
    delete = markers_pb2.DeleteMarkerRequest(name=name)
    assert await _code(city.stub.DeleteMarker(delete, metadata=utilities)) == grpc.StatusCode.NOT_FOUND
    # Nor can it create one owned by another organization.
    assert await _code(_create(city, utilities, "x", _marker(owner_organization="transport"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # The owner still sees it unchanged.
    kept = await city.stub.GetMarker(markers_pb2.GetMarkerRequest(name=name), metadata=transport)
    assert kept.label == "bench"


@pytest.mark.req("CORE-3")
async def test_an_operator_organization_reaches_what_it_operates(city):
    transport = city.token("olga", "transport", "operator")
    concessionaire = city.token("pete", "parkco", "operator")
    await _create(city, transport, "lot-7", _marker(operator_organization="parkco"))
    await _create(city, transport, "lot-8")
    got = await city.stub.GetMarker(
        markers_pb2.GetMarkerRequest(name="markers/lot-7"), metadata=concessionaire
    )
    assert got.ownership.owner_organization == "transport"
    listed = await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(), metadata=concessionaire)
    assert [m.name for m in listed.markers] == ["markers/lot-7"]
    update = markers_pb2.UpdateMarkerRequest(
        marker=markers_pb2.Marker(name="markers/lot-7", label="operated"),
        update_mask=field_mask_pb2.FieldMask(paths=["label"]),
    )
    assert (await city.stub.UpdateMarker(update, metadata=concessionaire)).label == "operated"
    # City-wide roles see everything.
    admin = city.token("root", "city-office", "city-admin")
    assert len((await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(), metadata=admin)).markers) == 2


@pytest.mark.slow
@pytest.mark.req("CORE-4")
async def test_an_area_filter_returns_exactly_the_markers_inside_the_district(city):
    registry = AreaRegistry.default()
    area = registry.get("rongdong")
    polygon = shape(area.geojson()["geometry"] if "geometry" in area.geojson() else area.geojson())
    owner = city.token("olga", "transport", "operator")
    rng = random.Random(4)
    (min_lng, min_lat, max_lng, max_lat) = polygon.bounds
    pad = 0.01
    points = [
        (rng.uniform(min_lat - pad, max_lat + pad), rng.uniform(min_lng - pad, max_lng + pad))
        for _ in range(400)
    ]
    # And points hugging the boundary, a few metres either side of it.
    boundary = polygon.boundary
    for n in range(100):
        p = boundary.interpolate(n / 100, normalized=True)
        points.append((p.y + rng.uniform(-3e-5, 3e-5), p.x + rng.uniform(-3e-5, 3e-5)))
    for index, (lat, lng) in enumerate(points):
        await _create(city, owner, f"p-{index:04d}", _marker(lat=lat, lng=lng))
    expected = {
        f"markers/p-{i:04d}" for i, (lat, lng) in enumerate(points) if polygon.covers(Point(lng, lat))
    }
    assert 50 < len(expected) < len(points)
    found, token = [], ""
    while True:
        page = await city.stub.ListMarkers(
            markers_pb2.ListMarkersRequest(area="rongdong", page_size=37, page_token=token), metadata=owner
        )
        found.extend(m.name for m in page.markers)
        token = page.next_page_token
        if not token:
            break
    assert len(found) == len(set(found))
    assert set(found) == expected


async def test_an_unknown_area_or_bad_bbox_is_a_clear_error(city):
    owner = city.token("olga", "transport", "operator")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(area="atlantis"), metadata=owner)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(area="bbox:1,2,3"), metadata=owner)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(rich_status(bad.value), error_details_pb2.BadRequest).field_violations[0].field == "area"


@pytest.mark.req("CORE-5")
async def test_every_call_appears_in_the_access_log(city, telemetry_capture):
    olga = city.token("olga", "transport", "operator")
    await _create(city, olga, "m1")
    await city.stub.GetMarker(markers_pb2.GetMarkerRequest(name="markers/m1"), metadata=olga)
    await _code(
        city.stub.GetMarker(
            markers_pb2.GetMarkerRequest(name="markers/m1"),
            metadata=city.token("uma", "utilities", "operator"),
        )
    )
    await _code(city.stub.ListMarkers(markers_pb2.ListMarkersRequest()))  # anonymous, refused
    log = city.server.runtime.access_records
    await log.flush()
    records = list(accesslog.read(log.path))
    assert [(r["subject"], r["organization"], r["method"].rsplit("/", 1)[1], r["code"]) for r in records] == [
        ("olga", "transport", "CreateMarker", "OK"),
        ("olga", "transport", "GetMarker", "OK"),
        ("uma", "utilities", "GetMarker", "NOT_FOUND"),
        ("", "", "ListMarkers", "UNAUTHENTICATED"),
    ]
    assert [r["resource"] for r in records[:3]] == ["m1", "markers/m1", "markers/m1"]
    spans = telemetry_capture.spans.get_finished_spans()
    assert [r["trace_id"] for r in records] == [format(s.context.trace_id, "032x") for s in spans]
    assert all(len(r["trace_id"]) == 32 for r in records)


@pytest.mark.req("CORE-7")
async def test_a_repeated_request_id_returns_the_first_result_and_a_changed_payload_is_rejected(city):
    olga = city.token("olga", "transport", "operator")
    first = await _create(city, olga, "m1", _marker(label="first"), request_id="req-1")
    again = await _create(city, olga, "m1", _marker(label="first"), request_id="req-1")
    assert again == first  # same etag and timestamps: nothing was created twice
    with pytest.raises(grpc.aio.AioRpcError) as changed:
        await _create(city, olga, "m1", _marker(label="second"), request_id="req-1")
    assert changed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = detail(rich_status(changed.value), error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == "request_id"
    # Keys are per caller: another subject's identical request id is its own.
    other = city.token("oscar", "transport", "operator")
    assert await _code(_create(city, other, "m1", _marker(label="first"), request_id="req-1")) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    events = await _all_events(city, city.token("svc", "city", "service"))
    assert [e.type for e in events] == ["testing.marker.created"]


@pytest.mark.req("CORE-7")
async def test_concurrent_repeats_of_one_request_id_create_once(city):
    olga = city.token("olga", "transport", "operator")
    results = await asyncio.gather(
        *(_create(city, olga, "race", _marker(label="r"), request_id="req-race") for _ in range(16))
    )
    assert len({r.etag for r in results}) == 1
    assert len(await _all_events(city, city.token("svc", "city", "service"))) == 1


@pytest.mark.req("CORE-7")
async def test_page_tokens_are_bound_to_the_caller_and_the_query_and_tamper_evident(city):
    olga = city.token("olga", "transport", "operator")
    for n in range(5):
        await _create(city, olga, f"m{n}")
    page = await city.stub.ListMarkers(markers_pb2.ListMarkersRequest(page_size=2), metadata=olga)
    token = page.next_page_token
    assert [m.name for m in page.markers] == ["markers/m0", "markers/m1"]
    follow = await city.stub.ListMarkers(
        markers_pb2.ListMarkersRequest(page_size=2, page_token=token), metadata=olga
    )
    assert [m.name for m in follow.markers] == ["markers/m2", "markers/m3"]

    async def refused(request, who) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await city.stub.ListMarkers(request, metadata=who)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return detail(rich_status(caught.value), error_details_pb2.BadRequest).field_violations[0].description

    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert "altered" in await refused(markers_pb2.ListMarkersRequest(page_size=2, page_token=tampered), olga)
    colleague = city.token("oscar", "transport", "operator")
    assert "another caller" in await refused(markers_pb2.ListMarkersRequest(page_token=token), colleague)
    other_query = markers_pb2.ListMarkersRequest(page_token=token, area="rongdong")
    assert "different query" in await refused(other_query, olga)
    assert "not a page token" in await refused(markers_pb2.ListMarkersRequest(page_token="garbage"), olga)


async def _all_events(city, who, after="") -> list[events_pb2.Event]:
    events = []
    async for response in city.events.StreamEvents(
        events_pb2.StreamEventsRequest(after_cursor=after, follow=False), metadata=who, timeout=10
    ):
        events.extend(response.events)
    return events


@pytest.mark.req("CORE-6")
async def test_stream_events_follows_commits_live_scoped_to_the_callers_organization(city):
    olga = city.token("olga", "transport", "operator")
    uma = city.token("uma", "utilities", "operator")
    stream = city.events.StreamEvents(events_pb2.StreamEventsRequest(follow=True), metadata=olga)
    await _create(city, olga, "t1")
    await _create(city, uma, "u1")
    await _create(city, olga, "t2", _marker(lat=39.01))
    seen = []
    async for response in stream:
        seen.extend(response.events)
        if len(seen) >= 2:
            break
    stream.cancel()
    assert [e.subject for e in seen] == ["markers/t1", "markers/t2"]  # not utilities' marker
    first = markers_pb2.MarkerChanged()
    assert seen[0].payload.Unpack(first)
    assert first.marker.name == "markers/t1"
    assert seen[0].owner_organization == "transport"
    assert seen[1].area_cell == markers.cell_for(39.01, CENTER[1])
    assert seen[0].traceparent.startswith("00-")
    everything = await _all_events(city, city.token("svc", "city", "service"))
    assert [e.subject for e in everything] == ["markers/t1", "markers/u1", "markers/t2"]


@pytest.mark.req("CORE-6")
async def test_a_consumer_resumes_from_its_checkpoint_after_a_restart(city, tmp_path):
    olga = city.token("olga", "transport", "operator")
    service = city.token("exporter", "city", "service", kind="service")

    consumer_url = f"sqlite+aiosqlite:///{tmp_path / 'consumer.sqlite'}"
    await upgrade(consumer_url, [PLATFORM_CHAIN])

    received: list[str] = []

    async def handle(tx, events):
        received.extend(e.subject for e in events)

    async def metadata():
        return service

    def consumer(db):
        return EventConsumer("copy", db, city.channel, handle, metadata=metadata, max_batch=2)

    from cityos_platform.db import Database

    for n in range(3):
        await _create(city, olga, f"a{n}")
    db = Database(consumer_url, source="consumer")
    assert await consumer(db).catch_up() == 3
    await db.close()  # the consumer "restarts"
    for n in range(2):
        await _create(city, olga, f"b{n}")
    db = Database(consumer_url, source="consumer")
    assert await consumer(db).catch_up() == 2
    await db.close()
    assert received == ["markers/a0", "markers/a1", "markers/a2", "markers/b0", "markers/b1"]

    # A handler that fails leaves the checkpoint where it was: the batch is seen again, not lost.
    async def failing(tx, events):
        raise RuntimeError("crash mid-batch")

    await _create(city, olga, "c0")
    db = Database(consumer_url, source="consumer")
    with pytest.raises(RuntimeError):
        await EventConsumer("copy", db, city.channel, failing, metadata=metadata).catch_up()
    assert await consumer(db).catch_up() == 1
    await db.close()
    assert received[-1] == "markers/c0"
