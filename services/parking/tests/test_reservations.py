"""PRK-4: reservations — a spot or a space held for a window, no double booking under concurrency (on
PostgreSQL the exclusion constraint decides), holds that expire, cancel, check-in by plate, who sees
what, and bad input answered with every field named.

Time is a manual clock injected into the service's database (`tx.now`): 2026-03-02 01:00 UTC, a Monday,
09:00 in Asia/Shanghai; tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc, reservations_pb2, reservations_pb2_grpc
from cityos_parking.app import ParkingApp
from cityos_parking.models import ReservationRow
from cityos_parking.reservations import is_spot_conflict
from cityos_platform.clock import ManualClock
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import error_info, field_violations, refused, stamp

pytestmark = pytest.mark.req("PRK-4")

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Asia/Shanghai
CENTER = (39.05, 115.95)
HELD = reservations_pb2.RESERVATION_STATE_HELD
POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


class Garage:
    """A running parking service on a manual clock, and callers."""

    def __init__(self, app: ParkingApp, channel: grpc.aio.Channel, mint, clock: ManualClock) -> None:
        self.app, self.channel, self.clock, self._mint = app, channel, clock, mint
        self.parking = parking_pb2_grpc.ParkingServiceStub(channel)
        self.reservations = reservations_pb2_grpc.ReservationServiceStub(channel)
        self.sessions = reservations_pb2_grpc.SessionServiceStub(channel)
        self.operator = self.token("users/olga", "transport", "operator")
        self.other_org = self.token("users/uma", "utilities", "operator")
        self.driver = self.token("users/dan", "public", "citizen")
        self.other_driver = self.token("users/eve", "public", "citizen")

    def token(self, subject: str, organization: str, *roles: str):
        return bearer(self._mint(subject, organization, list(roles)))

    def at(self, minutes: float) -> timestamp_pb2.Timestamp:
        """The clock's now plus some minutes."""
        return stamp(self.clock.now() + timedelta(minutes=minutes))

    async def site(self, site_id: str = "rongdong-a", spots: int = 0, **fields) -> parking_pb2.Site:
        tariff = fields.pop(
            "tariff",
            parking_pb2.Tariff(
                price_per_minute="0.05", currency="CNY", time_zone="Asia/Shanghai", free_minutes=15
            ),
        )
        site = await self.parking.CreateSite(
            parking_pb2.CreateSiteRequest(
                site=parking_pb2.Site(
                    display_name=site_id,
                    kind=fields.pop("kind", parking_pb2.SITE_KIND_ON_STREET),
                    location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                    detection_type=fields.pop("detection_type", parking_pb2.DETECTION_TYPE_SINGLE_SPACE),
                    allowed_vehicle_types=fields.pop("allowed_vehicle_types", ["car"]),
                    tariff=tariff,
                    **fields,
                ),
                site_id=site_id,
            ),
            metadata=self.operator,
        )
        for index in range(1, spots + 1):
            await self.parking.CreateSpot(
                parking_pb2.CreateSpotRequest(
                    spot=parking_pb2.Spot(
                        display_name=str(index),
                        site=site.name,
                        location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                    ),
                    spot_id=f"{site_id}-{index}",
                ),
                metadata=self.operator,
            )
        return site

    async def reserve(
        self,
        start: float,
        minutes: float,
        *,
        spot: str = "",
        metadata=None,
        plate: str = "京A12345",
        request_id: str = "",
        **fields,
    ) -> reservations_pb2.Reservation:
        return await self.reservations.CreateReservation(
            reservations_pb2.CreateReservationRequest(
                reservation=reservations_pb2.Reservation(
                    site=fields.pop("site", "sites/rongdong-a"),
                    spot=spot,
                    start_time=self.at(start),
                    end_time=self.at(start + minutes),
                    plate=plate,
                    vehicle_type=fields.pop("vehicle_type", "car"),
                    **fields,
                ),
                request_id=request_id or uuid.uuid4().hex,
            ),
            metadata=metadata or self.driver,
        )

    async def events(self) -> list[events_pb2.Event]:
        stream = events_pb2_grpc.EventServiceStub(self.channel).StreamEvents(
            events_pb2.StreamEventsRequest(follow=False), metadata=self.operator
        )
        return [event async for batch in stream for event in batch.events]


@pytest.fixture
async def garage(clocked_service, mint):
    async with clocked_service(hold_grace_s=900) as (app, channel, clock):
        yield Garage(app, channel, mint, clock)


# -- no double booking --------------------------------------------------------------------------------


@POSTGRES_ONLY
async def test_fifty_concurrent_conflicting_holds_of_one_spot_leave_exactly_one(garage):
    await garage.site(spots=3)
    drivers = [garage.token(f"users/driver-{n:02d}", "public", "citizen") for n in range(50)]

    async def attempt(n: int):
        # Every window overlaps every other one: starts a minute apart, each an hour long.
        return await garage.reserve(10 + n, 60, spot="spots/rongdong-a-1", metadata=drivers[n])

    began = time.perf_counter()
    outcomes = await asyncio.gather(*(attempt(n) for n in range(50)), return_exceptions=True)
    elapsed = time.perf_counter() - began
    won = [o for o in outcomes if isinstance(o, reservations_pb2.Reservation)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 49), [
        o for o in outcomes if not isinstance(o, (reservations_pb2.Reservation, grpc.aio.AioRpcError))
    ]
    assert won[0].state == HELD
    assert {(e.code(), error_info(e).reason) for e in lost} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "SPOT_ALREADY_RESERVED")
    }
    async with garage.app.db.read() as session:
        live = await session.scalar(
            select(func.count()).where(ReservationRow.spot_id == "rongdong-a-1", ReservationRow.state == HELD)
        )
    assert live == 1
    print(f"\n50 concurrent conflicting CreateReservation calls on PostgreSQL: {elapsed:.2f} s")


@POSTGRES_ONLY
async def test_the_exclusion_constraint_itself_refuses_an_overlapping_hold_written_past_the_service(garage):
    """Two transactions insert overlapping live holds of one spot directly (no service check, no site
    lock): the second waits for the first and then fails with the exclusion violation, which the service
    recognises as SPOT_ALREADY_RESERVED. A cancelled hold in the same window is not refused."""
    await garage.site(spots=1)
    db = garage.app.db

    def hold(n: int, state: int = HELD) -> ReservationRow:
        return ReservationRow(
            reservation_id=f"direct-{n}",
            site_id="rongdong-a",
            spot_id="rongdong-a-1",
            start_time=START + timedelta(hours=1, minutes=n),
            end_time=START + timedelta(hours=2, minutes=n),
            state=state,
            hold_expire_time=START + timedelta(hours=1, minutes=n + 15),
            plate=None,
            plate_pseudonym="x" * 32,
            vehicle_type="car",
            permit="",
            holder=f"users/direct-{n}",
            holder_organization="public",
            session_id=None,
            reason="",
            etag="e",
            create_time=START,
            update_time=START,
        )

    async def insert(row: ReservationRow) -> None:
        async with db.transaction() as tx:
            tx.session.add(row)
            await tx.session.flush()

    async with db.transaction() as first:
        first.session.add(hold(1))
        await first.session.flush()
        second = asyncio.create_task(insert(hold(2)))
        await asyncio.sleep(0.3)
        assert not second.done(), "the overlapping insert waits for the first transaction's outcome"
    with pytest.raises(IntegrityError) as clash:
        await second
    assert getattr(clash.value.orig, "sqlstate", None) == "23P01"
    assert is_spot_conflict(clash.value)
    await insert(hold(3, state=reservations_pb2.RESERVATION_STATE_CANCELLED))
    # And through the API the same window is refused with the documented status.
    error = await refused(garage.reserve(70, 30, spot="spots/rongdong-a-1"))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPOT_ALREADY_RESERVED",
    )


async def test_adjacent_windows_on_one_spot_both_hold(garage):
    await garage.site(spots=1)
    first = await garage.reserve(60, 60, spot="spots/rongdong-a-1")
    second = await garage.reserve(120, 60, spot="spots/rongdong-a-1", metadata=garage.other_driver)
    assert (first.state, second.state) == (HELD, HELD)
    assert first.end_time == second.start_time
    overlapping = await refused(garage.reserve(179, 30, spot="spots/rongdong-a-1"))
    assert error_info(overlapping).reason == "SPOT_ALREADY_RESERVED"


async def test_capacity_holds_are_granted_up_to_the_usable_spaces(garage):
    await garage.site(spots=3)
    await garage.parking.SetSpotStatus(
        parking_pb2.SetSpotStatusRequest(
            name="spots/rongdong-a-3", status=parking_pb2.SPOT_STATUS_CLOSED, reason="works"
        ),
        metadata=garage.operator,
    )
    # Two usable spaces: two holds anywhere at the site, then the site is full for that window...
    await garage.reserve(60, 60)
    await garage.reserve(90, 60, plate="冀B54321")
    full = await refused(garage.reserve(100, 10, plate="冀C11111"))
    assert (full.code(), error_info(full).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SITE_FULLY_RESERVED",
    )
    # ...for spot holds too (they count against the same spaces), and a closed spot is not reservable.
    spot = await refused(garage.reserve(100, 10, spot="spots/rongdong-a-1", plate="冀C11111"))
    assert error_info(spot).reason == "SITE_FULLY_RESERVED"
    closed = await refused(garage.reserve(300, 10, spot="spots/rongdong-a-3"))
    assert error_info(closed).reason == "SPOT_CLOSED"
    # Outside the window there is room again.
    assert (await garage.reserve(150, 30, plate="冀C11111")).state == HELD
    # A BALANCING garage counts its capacity, not its spots.
    await garage.site(
        "garage-b",
        detection_type=parking_pb2.DETECTION_TYPE_BALANCING,
        capacity=2,
        kind=parking_pb2.SITE_KIND_OFF_STREET,
    )
    for plate in ("京B00001", "京B00002"):
        await garage.reserve(60, 60, site="sites/garage-b", plate=plate)
    third = await refused(garage.reserve(60, 60, site="sites/garage-b", plate="京B00003"))
    assert error_info(third).reason == "SITE_FULLY_RESERVED"


# -- expiry, cancel, check-in -------------------------------------------------------------------------


async def test_an_unused_hold_expires_after_its_grace_and_frees_its_spot(garage):
    await garage.site(spots=1)
    first = await garage.reserve(5, 60, spot="spots/rongdong-a-1")
    assert first.hold_expire_time.ToDatetime(tzinfo=UTC) == START + timedelta(minutes=5 + 15)
    taken = await refused(garage.reserve(30, 60, spot="spots/rongdong-a-1", metadata=garage.other_driver))
    assert error_info(taken).reason == "SPOT_ALREADY_RESERVED"
    # 15 minutes of grace after the start pass without a check-in: the next create expires the hold.
    garage.clock.advance(minutes=20, seconds=1)
    second = await garage.reserve(10, 60, spot="spots/rongdong-a-1", metadata=garage.other_driver)
    assert second.state == HELD
    got = await garage.reservations.GetReservation(
        reservations_pb2.GetReservationRequest(name=first.name), metadata=garage.driver
    )
    assert got.state == reservations_pb2.RESERVATION_STATE_EXPIRED
    # The sweep expires the second one the same way, once.
    garage.clock.advance(minutes=40)
    assert await garage.app.sweeper.step() == (1, 0)
    assert await garage.app.sweeper.step() == (0, 0)
    expired = [e for e in await garage.events() if e.type == "parking.reservation.expired"]
    assert sorted(e.subject for e in expired) == sorted([first.name, second.name])
    changed = reservations_pb2.ReservationChanged()
    expired[0].payload.Unpack(changed)
    assert (changed.previous_state, changed.reservation.state) == (
        HELD,
        reservations_pb2.RESERVATION_STATE_EXPIRED,
    )


async def test_a_hold_is_cancelled_by_its_holder_or_the_sites_operator_only_while_held(garage):
    await garage.site(spots=1)
    mine = await garage.reserve(60, 60, spot="spots/rongdong-a-1")
    stranger = await refused(
        garage.reservations.CancelReservation(
            reservations_pb2.CancelReservationRequest(name=mine.name), metadata=garage.other_driver
        )
    )
    assert stranger.code() == grpc.StatusCode.NOT_FOUND
    cancel = reservations_pb2.CancelReservationRequest(name=mine.name, reason="plans changed")
    cancelled = await garage.reservations.CancelReservation(cancel, metadata=garage.driver)
    assert cancelled.state == reservations_pb2.RESERVATION_STATE_CANCELLED
    again = await garage.reservations.CancelReservation(cancel, metadata=garage.driver)
    assert again == cancelled  # unchanged, no second event
    # The spot is free again; the operator cancels a hold at its site.
    theirs = await garage.reserve(60, 60, spot="spots/rongdong-a-1", metadata=garage.other_driver)
    by_operator = await garage.reservations.CancelReservation(
        reservations_pb2.CancelReservationRequest(name=theirs.name), metadata=garage.operator
    )
    assert by_operator.state == reservations_pb2.RESERVATION_STATE_CANCELLED
    # A checked-in hold cannot be cancelled.
    arriving = await garage.reserve(5, 60, spot="spots/rongdong-a-1", plate="冀F77777")
    await garage.reservations.CheckIn(
        reservations_pb2.CheckInRequest(site="sites/rongdong-a", plate="冀F77777"), metadata=garage.operator
    )
    late = await refused(
        garage.reservations.CancelReservation(
            reservations_pb2.CancelReservationRequest(name=arriving.name), metadata=garage.driver
        )
    )
    assert (late.code(), error_info(late).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_NOT_HELD",
    )
    types = [e.type for e in await garage.events() if e.type.startswith("parking.reservation.")]
    assert types.count("parking.reservation.cancelled") == 2


async def test_check_in_by_plate_marks_the_hold_and_starts_its_session(garage):
    await garage.site(spots=2)
    held = await garage.reserve(30, 120, spot="spots/rongdong-a-2", plate="京A·12345", permit="")
    check_in = reservations_pb2.CheckInRequest(site="sites/rongdong-a", plate="京a 12345")
    # Too early: more than 15 minutes before the window.
    early = await refused(garage.reservations.CheckIn(check_in, metadata=garage.operator))
    assert (early.code(), error_info(early).reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    garage.clock.advance(minutes=20)  # 10 minutes before the start: welcome
    answer = await garage.reservations.CheckIn(check_in, metadata=garage.operator)
    assert answer.reservation.name == held.name
    assert answer.reservation.state == reservations_pb2.RESERVATION_STATE_CHECKED_IN
    assert answer.reservation.session == answer.session.name
    session = answer.session
    assert (session.state, session.source, session.spot, session.reservation) == (
        reservations_pb2.SESSION_STATE_ACTIVE,
        reservations_pb2.SESSION_SOURCE_RESERVATION,
        "spots/rongdong-a-2",
        held.name,
    )
    assert session.start_time == stamp(garage.clock.now())
    assert (session.holder, session.plate_pseudonym) == ("users/dan", held.plate_pseudonym)
    # The driver sees the session the check-in started for them.
    got = await garage.sessions.GetSession(
        reservations_pb2.GetSessionRequest(name=session.name), metadata=garage.driver
    )
    assert got.state == reservations_pb2.SESSION_STATE_ACTIVE
    # A gate that retries gets the same answer; another plate finds nothing; a citizen cannot check in.
    retry = await garage.reservations.CheckIn(check_in, metadata=garage.operator)
    assert (retry.reservation.name, retry.session.name) == (held.name, session.name)
    other = await refused(
        garage.reservations.CheckIn(
            reservations_pb2.CheckInRequest(site="sites/rongdong-a", plate="京A54321"),
            metadata=garage.operator,
        )
    )
    assert other.code() == grpc.StatusCode.NOT_FOUND
    citizen = await refused(garage.reservations.CheckIn(check_in, metadata=garage.driver))
    assert citizen.code() == grpc.StatusCode.PERMISSION_DENIED
    elsewhere = await refused(garage.reservations.CheckIn(check_in, metadata=garage.other_org))
    assert elsewhere.code() == grpc.StatusCode.NOT_FOUND
    types = [e.type for e in await garage.events()]
    assert types.count("parking.reservation.checked_in") == 1
    assert types.count("parking.session.started") == 1


async def test_a_hold_past_its_grace_cannot_be_checked_in(garage):
    await garage.site(spots=1)
    await garage.reserve(5, 120, spot="spots/rongdong-a-1", plate="冀F12345")
    garage.clock.advance(minutes=5 + 15, seconds=1)
    late = await refused(
        garage.reservations.CheckIn(
            reservations_pb2.CheckInRequest(site="sites/rongdong-a", plate="冀F12345"),
            metadata=garage.operator,
        )
    )
    assert error_info(late).reason == "RESERVATION_NOT_FOUND"


# -- who sees what, idempotency, bad input ------------------------------------------------------------


async def test_a_reservation_is_seen_by_its_holder_and_the_sites_operator_and_no_one_else(garage):
    await garage.site(spots=1)
    mine = await garage.reserve(60, 60, spot="spots/rongdong-a-1")
    theirs = await garage.reserve(120, 60, metadata=garage.other_driver, plate="冀E00001")
    get = reservations_pb2.GetReservationRequest
    assert (await garage.reservations.GetReservation(get(name=mine.name), metadata=garage.driver)) == mine
    assert (await garage.reservations.GetReservation(get(name=mine.name), metadata=garage.operator)) == mine
    hidden = await refused(
        garage.reservations.GetReservation(get(name=mine.name), metadata=garage.other_driver)
    )
    missing = await refused(
        garage.reservations.GetReservation(get(name="reservations/nothing"), metadata=garage.other_driver)
    )
    assert hidden.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert hidden.details().replace(mine.name, "X") == missing.details().replace("reservations/nothing", "X")
    listing = reservations_pb2.ListReservationsRequest
    own = await garage.reservations.ListReservations(listing(), metadata=garage.driver)
    assert [r.name for r in own.reservations] == [mine.name]
    site = await garage.reservations.ListReservations(
        listing(site="sites/rongdong-a"), metadata=garage.operator
    )
    assert sorted(r.name for r in site.reservations) == sorted([mine.name, theirs.name])
    foreign = await garage.reservations.ListReservations(listing(), metadata=garage.other_org)
    assert list(foreign.reservations) == []
    held = await garage.reservations.ListReservations(
        listing(state=reservations_pb2.RESERVATION_STATE_CANCELLED), metadata=garage.operator
    )
    assert list(held.reservations) == []
    assert (mine.holder, mine.plate) == ("users/dan", "")


async def test_a_retried_create_with_the_same_request_id_holds_once(garage):
    await garage.site(spots=1)
    first = await garage.reserve(60, 60, spot="spots/rongdong-a-1", request_id="trip-1")
    again = await garage.reserve(60, 60, spot="spots/rongdong-a-1", request_id="trip-1")
    assert again == first
    changed = await refused(garage.reserve(60, 45, spot="spots/rongdong-a-1", request_id="trip-1"))
    assert [f for f, _ in field_violations(changed)] == ["request_id"]
    created = [e for e in await garage.events() if e.type == "parking.reservation.created"]
    assert len(created) == 1


async def test_bad_reservations_are_answered_with_every_field_named(garage):
    await garage.site(
        spots=1,
        tariff=parking_pb2.Tariff(
            price_per_minute="0.05",
            currency="CNY",
            time_zone="Asia/Shanghai",
            permits=[parking_pb2.PermitClass(name="resident")],
        ),
    )
    await garage.site("other-street", spots=1)
    request = reservations_pb2.CreateReservationRequest
    window = reservations_pb2.Reservation
    everything_wrong = await refused(
        garage.reservations.CreateReservation(
            request(
                reservation=window(
                    site="sites/rongdong-a",
                    spot="spots/other-street-1",
                    start_time=garage.at(-10),
                    end_time=garage.at(-20),
                    plate="!",
                    vehicle_type="hovercraft",
                    permit="visitor",
                )
            ),
            metadata=garage.driver,
        )
    )
    assert everything_wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(everything_wrong)} == {
        "reservation.start_time",
        "reservation.end_time",
        "reservation.plate",
        "reservation.vehicle_type",
        "reservation.spot",
        "reservation.permit",
    }
    cases = {
        "reservation.site": window(site="sites/nowhere", start_time=garage.at(5), end_time=garage.at(65)),
        "reservation.end_time": window(
            site="sites/rongdong-a", start_time=garage.at(5), end_time=garage.at(25 * 60)
        ),
    }
    for field, reservation in cases.items():
        reservation.plate, reservation.vehicle_type = "京A12345", "car"
        error = await refused(
            garage.reservations.CreateReservation(request(reservation=reservation), metadata=garage.driver)
        )
        assert [f for f, _ in field_violations(error)] == [field]
    far = await refused(garage.reserve(31 * 24 * 60, 60))
    assert field_violations(far) == [("reservation.end_time", "at most 30 days ahead")]
    truck = await refused(garage.reserve(5, 60, vehicle_type="truck"))
    assert field_violations(truck) == [("reservation.vehicle_type", "sites/rongdong-a takes car")]
    missing = await refused(
        garage.reservations.CreateReservation(request(reservation=window()), metadata=garage.driver)
    )
    assert {f for f, _ in field_violations(missing)} == {
        "reservation.site",
        "reservation.start_time",
        "reservation.end_time",
        "reservation.plate",
        "reservation.vehicle_type",
    }
    # No violation repeats the plate it refuses (an error is a response too).
    bad_plate = await refused(garage.reserve(5, 60, plate="ZZ-SECRET-0000-00000"))
    assert "SECRET" not in str(field_violations(bad_plate))
    assert "SECRET" not in bad_plate.details()


async def test_a_spot_in_use_is_not_deleted_and_a_site_with_history_is_kept(garage):
    await garage.site(spots=2)
    hold = await garage.reserve(10, 60, spot="spots/rongdong-a-1")
    error = await refused(
        garage.parking.DeleteSpot(
            parking_pb2.DeleteSpotRequest(name="spots/rongdong-a-1"), metadata=garage.operator
        )
    )
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SPOT_IN_USE")
    await garage.reservations.CancelReservation(
        reservations_pb2.CancelReservationRequest(name=hold.name), metadata=garage.driver
    )
    # Once nothing live uses it, the spot goes and its past reservation keeps the site only.
    for spot in ("spots/rongdong-a-1", "spots/rongdong-a-2"):
        await garage.parking.DeleteSpot(parking_pb2.DeleteSpotRequest(name=spot), metadata=garage.operator)
    kept = await garage.reservations.GetReservation(
        reservations_pb2.GetReservationRequest(name=hold.name), metadata=garage.driver
    )
    assert (kept.site, kept.spot, kept.state) == (
        "sites/rongdong-a",
        "",
        reservations_pb2.RESERVATION_STATE_CANCELLED,
    )
    error = await refused(
        garage.parking.DeleteSite(
            parking_pb2.DeleteSiteRequest(name="sites/rongdong-a"), metadata=garage.operator
        )
    )
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SITE_HAS_HISTORY",
    )
