"""PRK-3: availability — live counts per site and group, the nearest search checked against brute-force
distances over the seeded spots, the live watch, and gate counts."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.parking.v1 import availability_pb2, availability_pb2_grpc, parking_pb2, reservations_pb2
from cityos_parking.availability import bounding_box, haversine_m
from cityos_parking.models import ReservationRow, SiteRow
from cityos_platform.testing.status import error_info, field_violations, stamp

CENTER = (39.05, 115.95)
FREE, OCCUPIED, CLOSED = (
    parking_pb2.SPOT_STATUS_FREE,
    parking_pb2.SPOT_STATUS_OCCUPIED,
    parking_pb2.SPOT_STATUS_CLOSED,
)


def fields_of(error) -> set[str]:
    return {field for field, _ in field_violations(error)}


def point(lat: float, lng: float) -> resources_pb2.GeoPoint:
    return resources_pb2.GeoPoint(latitude=lat, longitude=lng)


def availability(lot) -> availability_pb2_grpc.AvailabilityServiceStub:
    return availability_pb2_grpc.AvailabilityServiceStub(lot.channel)


async def make_site(lot, site_id, lat, lng, *, types=("car",), tariff=None, **fields):
    site = parking_pb2.Site(
        display_name=fields.pop("display_name", site_id.replace("-", " ").title()),
        kind=fields.pop("kind", parking_pb2.SITE_KIND_ON_STREET),
        location=point(lat, lng),
        detection_type=fields.pop("detection_type", parking_pb2.DETECTION_TYPE_SINGLE_SPACE),
        allowed_vehicle_types=list(types),
        tariff=tariff or lot.tariff(),
        **fields,
    )
    return await lot.parking.CreateSite(
        parking_pb2.CreateSiteRequest(site=site, site_id=site_id), metadata=lot.operator, timeout=10
    )


async def make_spot(lot, spot_id, site_id, lat, lng, *, status=None, **fields):
    spot = await lot.parking.CreateSpot(
        parking_pb2.CreateSpotRequest(
            spot=parking_pb2.Spot(
                display_name=fields.pop("display_name", spot_id),
                site=f"sites/{site_id}",
                location=point(lat, lng),
                **fields,
            ),
            spot_id=spot_id,
        ),
        metadata=lot.operator,
        timeout=10,
    )
    if status is not None:
        spot = await set_status(lot, spot.name, status)
    return spot


async def set_status(lot, name, status):
    return await lot.parking.SetSpotStatus(
        parking_pb2.SetSpotStatusRequest(name=name, status=status, reason="test"),
        metadata=lot.operator,
        timeout=10,
    )


async def reserve(lot, site_id, spot_id, start, end, *, state=reservations_pb2.RESERVATION_STATE_HELD):
    """A reservation row written straight into the service's database (the reservations RPCs are not
    what this file tests), with its event, as every change of the service commits with one."""
    reservation_id = f"r-{uuid.uuid4().hex[:12]}"
    async with lot.app.db.transaction() as tx:
        site = await tx.session.get(SiteRow, site_id)
        tx.emit(
            "parking.reservation.created",
            reservations_pb2.Reservation(name=f"reservations/{reservation_id}", site=f"sites/{site_id}"),
            subject=f"reservations/{reservation_id}",
            owner_organization=site.owner_organization,
            area_cell=site.area_cell,
        )
        tx.session.add(
            ReservationRow(
                reservation_id=reservation_id,
                site_id=site_id,
                spot_id=spot_id,
                start_time=start,
                end_time=end,
                state=int(state),
                hold_expire_time=start + timedelta(minutes=15),
                plate=None,
                plate_pseudonym="p" * 64,
                vehicle_type="car",
                permit="",
                holder="users/olga",
                holder_organization="transport",
                session_id=None,
                reason="",
                etag="e",
                create_time=tx.now,
                update_time=tx.now,
            )
        )


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A point about `north_m` north and `east_m` east of another (good enough for seeding)."""
    return lat + north_m / 111_195.0, lng + east_m / (111_195.0 * 0.7771)


# -- a seeded city ----------------------------------------------------------------------------------


class City:
    """Sites and spots at random points (fixed seed), as the service was told about them."""

    def __init__(self) -> None:
        self.sites: dict[str, dict] = {}
        self.spots: dict[str, dict] = {}


async def seed_city(lot, *, sites=8, spots_per_site=40, seed=20240611) -> City:
    rng = random.Random(seed)
    city = City()
    in_flight = asyncio.Semaphore(8)

    async def one_spot(spot_id, site_id, lat, lng, types, status):
        async with in_flight:
            await make_spot(lot, spot_id, site_id, lat, lng, allowed_vehicle_types=types, status=status)

    jobs = []
    for s in range(sites):
        site_id = f"site-{s:02d}"
        lat, lng = offset(*CENTER, rng.uniform(-2500, 2500), rng.uniform(-2500, 2500))
        types = ["car", "motorcycle"] if s % 3 == 0 else ["car"]
        # Two sites share a name, so ties in distance order fall back on names, then ids.
        name = "Shared Name" if s in (1, 2) else f"Site {s:02d}"
        await make_site(lot, site_id, lat, lng, types=types, display_name=name)
        city.sites[site_id] = {"lat": lat, "lng": lng, "types": types, "name": name}
        for k in range(spots_per_site):
            spot_id = f"s{s:02d}-{k:03d}"
            spot_lat, spot_lng = offset(lat, lng, rng.uniform(-400, 400), rng.uniform(-400, 400))
            spot_types = ["motorcycle"] if k % 10 == 0 else []
            status = rng.choice([FREE, FREE, OCCUPIED, CLOSED, None])
            city.spots[spot_id] = {
                "site": site_id,
                "lat": spot_lat,
                "lng": spot_lng,
                "types": spot_types,
                "status": status or parking_pb2.SPOT_STATUS_UNKNOWN,
                "name": spot_id,
            }
            jobs.append(one_spot(spot_id, site_id, spot_lat, spot_lng, spot_types, status))
    await asyncio.gather(*jobs)
    return city


def takes(city: City, spot: dict, vehicle_type: str) -> bool:
    return not vehicle_type or vehicle_type in (spot["types"] or city.sites[spot["site"]]["types"])


def brute_sites(city: City, lat, lng, radius, vehicle_type="") -> list[tuple[str, int]]:
    """Sites within the radius with free spots for the vehicle, nearest first (name, then id), and how
    many — by looking at every seeded spot."""
    found = []
    for site_id, site in city.sites.items():
        distance = haversine_m(lat, lng, site["lat"], site["lng"])
        if distance > radius:
            continue
        free = sum(
            1
            for spot in city.spots.values()
            if spot["site"] == site_id and spot["status"] == FREE and takes(city, spot, vehicle_type)
        )
        if free:
            found.append((distance, site["name"], site_id, free))
    return [(f"sites/{site_id}", free) for *_, site_id, free in sorted(found)]


def brute_spots(city: City, lat, lng, radius, vehicle_type="", limit=20) -> list[str]:
    found = sorted(
        (haversine_m(lat, lng, spot["lat"], spot["lng"]), spot["name"], spot_id)
        for spot_id, spot in city.spots.items()
        if spot["status"] == FREE and takes(city, spot, vehicle_type)
    )
    return [f"spots/{spot_id}" for distance, _, spot_id in found if distance <= radius][:limit]


@pytest.mark.req("PRK-3")
async def test_nearest_search_matches_brute_force_distances_over_the_seeded_spots(lot):
    city = await seed_city(lot)
    search = availability(lot).SearchAvailability
    rng = random.Random(7)
    queries = [(*CENTER, 5000.0), (*CENTER, 1200.0)] + [
        (*offset(*CENTER, rng.uniform(-3000, 3000), rng.uniform(-3000, 3000)), rng.choice([300.0, 900, 2500]))
        for _ in range(6)
    ]
    for lat, lng, radius in queries:
        for vehicle_type in ("", "motorcycle"):
            answer = await search(
                availability_pb2.SearchAvailabilityRequest(
                    near=point(lat, lng), radius_m=radius, vehicle_type=vehicle_type, max_results=200
                ),
                metadata=lot.citizen,
            )
            expected = brute_sites(city, lat, lng, radius, vehicle_type)
            assert [(m.site.site, m.available) for m in answer.sites] == expected, (lat, lng, radius)
            for match in answer.sites:
                site = city.sites[match.site.site.partition("/")[2]]
                assert match.distance_m == pytest.approx(haversine_m(lat, lng, site["lat"], site["lng"]))
                assert match.distance_m <= radius
                assert match.site.price == "0.05 CNY"
            spots = await search(
                availability_pb2.SearchAvailabilityRequest(
                    near=point(lat, lng),
                    radius_m=radius,
                    vehicle_type=vehicle_type,
                    level=availability_pb2.SEARCH_LEVEL_SPOTS,
                ),
                metadata=lot.citizen,
            )
            assert [m.spot.name for m in spots.spots] == brute_spots(city, lat, lng, radius, vehicle_type)
            assert all(m.spot.status == FREE for m in spots.spots)
    # max_results keeps the nearest; include_full brings back sites with no space, with their counts.
    some = await search(
        availability_pb2.SearchAvailabilityRequest(near=point(*CENTER), radius_m=5000, max_results=3),
        metadata=lot.citizen,
    )
    assert [m.site.site for m in some.sites] == [name for name, _ in brute_sites(city, *CENTER, 5000)][:3]
    every = await search(
        availability_pb2.SearchAvailabilityRequest(
            near=point(*CENTER), radius_m=5000, vehicle_type="truck", include_full=True, max_results=200
        ),
        metadata=lot.citizen,
    )
    within = [s for s in city.sites.values() if haversine_m(*CENTER, s["lat"], s["lng"]) <= 5000]
    assert len(every.sites) == len(within)
    assert all(m.available == 0 and m.site.occupancy.total == 40 for m in every.sites)
    distances = [m.distance_m for m in every.sites]
    assert distances == sorted(distances)


@pytest.mark.req("PRK-3")
async def test_the_radius_edge_is_inclusive_and_the_box_never_cuts_the_circle(lot):
    lat, lng = offset(*CENTER, 1000, 300)
    await make_site(lot, "edge", lat, lng)
    await make_spot(lot, "edge-1", "edge", lat, lng, status=FREE)
    exact = haversine_m(*CENTER, lat, lng)
    search = availability(lot).SearchAvailability
    for radius, found in ((exact, ["sites/edge"]), (exact - 0.01, [])):
        answer = await search(
            availability_pb2.SearchAvailabilityRequest(near=point(*CENTER), radius_m=radius),
            metadata=lot.citizen,
        )
        assert [m.site.site for m in answer.sites] == found
    # The box holds every point of the circle, on the equator, near a pole and across the antimeridian.
    rng = random.Random(3)
    for center in ((0.0, 0.0), (39.0, 115.95), (80.0, 10.0), (-60.0, 179.99)):
        min_lat, max_lat, ranges = bounding_box(*center, 5000)
        for _ in range(500):
            p = (center[0] + rng.uniform(-0.05, 0.05), center[1] + rng.uniform(-0.3, 0.3))
            p = (p[0], (p[1] + 180) % 360 - 180)
            if haversine_m(*center, *p) <= 5000:
                assert min_lat <= p[0] <= max_lat
                assert any(lo <= p[1] <= hi for lo, hi in ranges)


async def test_vehicle_types_come_from_the_spot_else_its_site(lot):
    await make_site(lot, "mixed", *CENTER, types=("car",))
    await make_spot(lot, "m-car", "mixed", *CENTER, status=FREE)
    await make_spot(lot, "m-moto", "mixed", *CENTER, status=FREE, allowed_vehicle_types=["motorcycle"])
    search = availability(lot).SearchAvailability

    async def available(vehicle_type):
        answer = await search(
            availability_pb2.SearchAvailabilityRequest(
                near=point(*CENTER), radius_m=100, vehicle_type=vehicle_type, include_full=True
            ),
            metadata=lot.citizen,
        )
        return answer.sites[0].available

    assert (await available(""), await available("car"), await available("motorcycle")) == (2, 1, 1)
    assert await available("bus") == 0


async def test_a_later_time_counts_reservations_over_it_and_not_live_sensor_state(lot):
    await make_site(lot, "booked", *CENTER)
    for k, status in enumerate([FREE, OCCUPIED, CLOSED, None, FREE]):
        await make_spot(lot, f"b-{k}", "booked", *CENTER, status=status)
    now = datetime.now(UTC)
    later = now + timedelta(hours=3)
    await reserve(lot, "booked", "b-0", later - timedelta(minutes=30), later + timedelta(hours=1))
    await reserve(lot, "booked", None, later - timedelta(hours=1), later + timedelta(minutes=5))
    # Not counted: cancelled, or over another time.
    await reserve(
        lot,
        "booked",
        "b-4",
        later,
        later + timedelta(hours=1),
        state=reservations_pb2.RESERVATION_STATE_CANCELLED,
    )
    await reserve(lot, "booked", "b-1", later + timedelta(hours=2), later + timedelta(hours=3))
    # A live reservation now on a free spot: reserved, not free.
    await reserve(lot, "booked", "b-4", now - timedelta(minutes=5), now + timedelta(minutes=30))
    search = availability(lot).SearchAvailability

    async def at(when, level=availability_pb2.SEARCH_LEVEL_SITES):
        return await search(
            availability_pb2.SearchAvailabilityRequest(
                near=point(*CENTER), radius_m=100, at=stamp(when), level=level, include_full=True
            ),
            metadata=lot.citizen,
        )

    later_answer = await at(later)
    # 4 spots not closed, one pinned by a reservation, one space held by a capacity hold.
    assert later_answer.sites[0].available == 2
    assert (await at(later + timedelta(hours=1, minutes=30))).sites[0].available == 4
    occupancy = later_answer.sites[0].site.occupancy  # the live counts, whatever the time asked
    assert (occupancy.total, occupancy.free, occupancy.reserved, occupancy.occupied, occupancy.closed) == (
        5,
        1,
        1,
        1,
        1,
    )
    assert occupancy.unknown == 1
    now_answer = await search(
        availability_pb2.SearchAvailabilityRequest(near=point(*CENTER), radius_m=100), metadata=lot.citizen
    )
    assert now_answer.sites[0].available == 1
    spots = await at(later, availability_pb2.SEARCH_LEVEL_SPOTS)
    assert sorted(m.spot.name for m in spots.spots) == ["spots/b-1", "spots/b-3", "spots/b-4"]
    live_spots = await search(
        availability_pb2.SearchAvailabilityRequest(
            near=point(*CENTER), radius_m=100, level=availability_pb2.SEARCH_LEVEL_SPOTS
        ),
        metadata=lot.citizen,
    )
    assert [m.spot.name for m in live_spots.spots] == ["spots/b-0"]


async def test_a_site_closed_at_the_time_asked_has_no_space_then(lot):
    hours = [parking_pb2.WeeklyWindow(start="08:00", end="09:00")]
    await make_site(lot, "short-hours", *CENTER, tariff=lot.tariff(opening_hours=hours))
    await make_site(lot, "always", *offset(*CENTER, 50, 0))
    await make_spot(lot, "sh-1", "short-hours", *CENTER, status=FREE)
    await make_spot(lot, "al-1", "always", *offset(*CENTER, 50, 0), status=FREE)
    zone = ZoneInfo("Asia/Shanghai")
    noon = (datetime.now(zone) + timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    eight_thirty = noon.replace(hour=8, minute=30) + timedelta(days=1)
    search = availability(lot).SearchAvailability

    async def sites(when, include_full=False, level=availability_pb2.SEARCH_LEVEL_SITES):
        answer = await search(
            availability_pb2.SearchAvailabilityRequest(
                near=point(*CENTER), radius_m=500, at=stamp(when), include_full=include_full, level=level
            ),
            metadata=lot.citizen,
        )
        return [(m.site.site, m.available) for m in answer.sites] or [m.spot.name for m in answer.spots]

    assert await sites(noon) == [("sites/always", 1)]
    assert await sites(noon, include_full=True) == [("sites/short-hours", 0), ("sites/always", 1)]
    assert await sites(eight_thirty) == [("sites/short-hours", 1), ("sites/always", 1)]
    assert await sites(noon, level=availability_pb2.SEARCH_LEVEL_SPOTS) == ["spots/al-1"]


async def test_bad_searches_are_answered_with_every_field_named(lot):
    search = availability(lot).SearchAvailability
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await search(
            availability_pb2.SearchAvailabilityRequest(
                radius_m=9000,
                vehicle_type="hovercraft",
                permit="Residents!",
                max_results=500,
                level=7,
                at=stamp(datetime.now(UTC) + timedelta(days=45)),
            ),
            metadata=lot.citizen,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(bad.value) == {
        "near",
        "radius_m",
        "vehicle_type",
        "permit",
        "max_results",
        "level",
        "at",
    }
    with pytest.raises(grpc.aio.AioRpcError) as off_earth:
        await search(
            availability_pb2.SearchAvailabilityRequest(
                near=point(91, 181), radius_m=0, at=stamp(datetime.now(UTC) - timedelta(hours=2))
            ),
            metadata=lot.citizen,
        )
    assert fields_of(off_earth.value) == {"near.latitude", "near.longitude", "radius_m", "at"}


async def test_site_and_group_counts_follow_spot_status_changes(lot):
    await make_site(lot, "counted", *CENTER)
    groups = []
    for group_id in ("north", "south"):
        group = await lot.parking.CreateGroup(
            parking_pb2.CreateGroupRequest(
                group=parking_pb2.Group(display_name=group_id.title(), site="sites/counted"),
                group_id=group_id,
            ),
            metadata=lot.operator,
        )
        groups.append(group.name)
    for k in range(10):
        await make_spot(lot, f"n-{k}", "counted", *CENTER, group=groups[0], status=FREE)
    for k in range(2):
        await make_spot(lot, f"s-{k}", "counted", *CENTER, group=groups[1], status=FREE)
    get = availability(lot).GetSiteAvailability

    async def counts():
        answer = await get(
            availability_pb2.GetSiteAvailabilityRequest(site="sites/counted"), metadata=lot.citizen
        )
        return answer, {g.group: g.occupancy for g in answer.groups}

    answer, by_group = await counts()
    assert (answer.occupancy.total, answer.occupancy.free, answer.occupancy.status) == (
        12,
        12,
        parking_pb2.SITE_STATUS_SPACES_AVAILABLE,
    )
    assert [g.display_name for g in answer.groups] == ["North", "South"]
    for k in range(9):
        await set_status(lot, f"spots/n-{k}", OCCUPIED)
    await set_status(lot, "spots/n-9", CLOSED)
    await set_status(lot, "spots/s-0", OCCUPIED)
    answer, by_group = await counts()
    north, south = by_group["groups/north"], by_group["groups/south"]
    assert (north.total, north.free, north.occupied, north.closed, north.occupancy_ratio, north.status) == (
        10,
        0,
        9,
        1,
        1.0,
        parking_pb2.SITE_STATUS_FULL,
    )
    assert (south.free, south.occupancy_ratio, south.status) == (
        1,
        0.5,
        parking_pb2.SITE_STATUS_SPACES_AVAILABLE,
    )
    site = answer.occupancy
    assert (site.total, site.free, site.occupied, site.closed) == (12, 1, 10, 1)
    assert site.occupancy_ratio == pytest.approx(10 / 11)
    assert site.status == parking_pb2.SITE_STATUS_ALMOST_FULL
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await get(availability_pb2.GetSiteAvailabilityRequest(site="sites/nowhere"), metadata=lot.citizen)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sends_the_counts_then_each_change(lot):
    await make_site(lot, "watched", *CENTER)
    await make_site(lot, "elsewhere", *offset(*CENTER, 3000, 0))
    await make_spot(lot, "w-1", "watched", *CENTER, status=FREE)
    await make_spot(lot, "w-2", "watched", *CENTER, status=FREE)
    await make_spot(lot, "e-1", "elsewhere", *offset(*CENTER, 3000, 0), status=FREE)
    stream = availability(lot).WatchAvailability(
        availability_pb2.WatchAvailabilityRequest(sites=["sites/watched"]), metadata=lot.citizen
    )
    responses = stream.__aiter__()
    first = await asyncio.wait_for(responses.__anext__(), 10)
    assert (first.site.site, first.site.occupancy.free) == ("sites/watched", 2)
    await set_status(lot, "spots/e-1", OCCUPIED)  # another site: nothing is sent for it
    await set_status(lot, "spots/w-1", OCCUPIED)
    change = await asyncio.wait_for(responses.__anext__(), 10)
    assert (change.site.site, change.site.occupancy.free, change.site.occupancy.occupied) == (
        "sites/watched",
        1,
        1,
    )
    assert change.time.seconds > 0
    stream.cancel()

    # An area: every site in it, first their counts.
    area = f"bbox:{CENTER[0] - 0.01},{CENTER[1] - 0.01},{CENTER[0] + 0.05},{CENTER[1] + 0.01}"
    both = availability(lot).WatchAvailability(
        availability_pb2.WatchAvailabilityRequest(area=area), metadata=lot.citizen
    )
    seen = []
    async for response in both:
        seen.append(response.site.site)
        if len(seen) == 2:
            break
    assert sorted(seen) == ["sites/elsewhere", "sites/watched"]
    both.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        async for _ in availability(lot).WatchAvailability(
            availability_pb2.WatchAvailabilityRequest(area=area, sites=["nope/x"] + ["sites/a"] * 100),
            metadata=lot.citizen,
        ):
            pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"sites", "sites[0]"} <= fields_of(bad.value)


async def test_gate_passages_count_clamp_announce_and_are_idempotent(lot):
    await make_site(
        lot,
        "garage",
        *CENTER,
        kind=parking_pb2.SITE_KIND_OFF_STREET,
        detection_type=parking_pb2.DETECTION_TYPE_BALANCING,
        capacity=10,
    )
    gates = availability(lot)

    async def passage(direction, count, request_id="", metadata=None):
        return await gates.RecordGatePassage(
            availability_pb2.RecordGatePassageRequest(
                site="sites/garage", gate="north", direction=direction, count=count, request_id=request_id
            ),
            metadata=metadata or lot.operator,
        )

    entry, exit_ = availability_pb2.GATE_DIRECTION_ENTRY, availability_pb2.GATE_DIRECTION_EXIT
    counted = await passage(entry, 4, request_id="gate-1")
    assert (counted.occupancy.total, counted.occupancy.occupied, counted.occupancy.free) == (10, 4, 6)
    again = await passage(entry, 4, request_id="gate-1")  # a retry is counted once
    assert again == counted
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await passage(entry, 5, request_id="gate-1")
    assert fields_of(reused.value) == {"request_id"}
    assert (await passage(exit_, 6)).occupancy.occupied == 0  # clamped at 0
    full = await passage(entry, 1000)  # clamped at the capacity
    assert (full.occupancy.occupied, full.occupancy.free, full.occupancy.status) == (
        10,
        0,
        parking_pb2.SITE_STATUS_FULL,
    )
    assert (await passage(entry, 1)).occupancy.occupied == 10
    spare = await passage(exit_, 2)
    assert (spare.occupancy.occupied, spare.occupancy.status) == (8, parking_pb2.SITE_STATUS_SPACES_AVAILABLE)
    got = await gates.GetSiteAvailability(
        availability_pb2.GetSiteAvailabilityRequest(site="sites/garage"), metadata=lot.citizen
    )
    assert got.occupancy.occupied == 8
    # A search finds the garage's free spaces.
    found = await gates.SearchAvailability(
        availability_pb2.SearchAvailabilityRequest(near=point(*CENTER), radius_m=50), metadata=lot.citizen
    )
    assert [(m.site.site, m.available) for m in found.sites] == [("sites/garage", 2)]

    events = [
        event
        async for batch in events_pb2_grpc.EventServiceStub(lot.channel).StreamEvents(
            events_pb2.StreamEventsRequest(follow=False, type_prefixes=["parking.site.", "parking.gate."]),
            metadata=lot.operator,
        )
        for event in batch.events
    ]
    types = [event.type for event in events]
    assert types.count("parking.gate.passage") == 5
    assert [t for t in types if t in ("parking.site.full", "parking.site.available")] == [
        "parking.site.full",
        "parking.site.available",
    ]
    announced = parking_pb2.SiteOccupancyChanged()
    next(e for e in events if e.type == "parking.site.full").payload.Unpack(announced)
    assert (announced.site, announced.occupancy.status) == ("sites/garage", parking_pb2.SITE_STATUS_FULL)

    # Only an off-street site counting at gates takes passages; only its organizations record them.
    await make_site(lot, "street", *CENTER)
    with pytest.raises(grpc.aio.AioRpcError) as street:
        await gates.RecordGatePassage(
            availability_pb2.RecordGatePassageRequest(
                site="sites/street", gate="g", direction=entry, count=1
            ),
            metadata=lot.operator,
        )
    assert (street.value.code(), error_info(street.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SITE_NOT_GATED",
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await passage(entry, 1, metadata=lot.other_org)
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as citizen:
        await passage(entry, 1, metadata=lot.citizen)
    assert citizen.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await gates.RecordGatePassage(
            availability_pb2.RecordGatePassageRequest(site="garage", gate="North Gate", count=0),
            metadata=lot.operator,
        )
    assert fields_of(bad.value) == {"site", "gate", "direction", "count"}
