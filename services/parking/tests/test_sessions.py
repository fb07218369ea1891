"""Parking sessions (PRK-5's fee engine behind the API): start and stop at a gate or in an app, the fee
on stop equal to `fees.quote` for the same stay (free minutes, a daily cap, an overnight window), the fee
so far while a session runs, overstay detected once, a closed site refusing a start, bad input named.

Time is a manual clock injected into the service's database: 2026-03-02 01:00 UTC, Monday 09:00 in
Asia/Shanghai.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc, reservations_pb2, reservations_pb2_grpc
from cityos_parking import fees
from cityos_parking.app import ParkingApp
from cityos_parking.tariffs import fee_to_proto, to_fees_tariff
from cityos_platform.clock import ManualClock
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import error_info, field_violations, refused, stamp

pytestmark = pytest.mark.req("PRK-5")

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Asia/Shanghai
CENTER = (39.05, 115.95)
ACTIVE = reservations_pb2.SESSION_STATE_ACTIVE
COMPLETED = reservations_pb2.SESSION_STATE_COMPLETED
# 0.05 CNY a minute, 15 free minutes, at most 30 CNY a day, nights 20:00-08:00 a flat 5 CNY, 2 hours max.
TARIFF = parking_pb2.Tariff(
    price_per_minute="0.05",
    currency="CNY",
    time_zone="Asia/Shanghai",
    free_minutes=15,
    daily_cap="30",
    overnight=parking_pb2.Overnight(start="20:00", end="08:00", flat_fee="5"),
    maximum_stay=duration_pb2.Duration(seconds=2 * 3600),
    permits=[
        parking_pb2.PermitClass(name="resident", hours=[parking_pb2.WeeklyWindow(start="18:00", end="08:00")])
    ],
)


class Garage:
    """A running parking service on a manual clock, and callers."""

    def __init__(self, app: ParkingApp, channel: grpc.aio.Channel, mint, clock: ManualClock) -> None:
        self.app, self.channel, self.clock, self._mint = app, channel, clock, mint
        self.parking = parking_pb2_grpc.ParkingServiceStub(channel)
        self.sessions = reservations_pb2_grpc.SessionServiceStub(channel)
        self.operator = self.token("users/olga", "transport", "operator")
        self.other_org = self.token("users/uma", "utilities", "operator")
        self.driver = self.token("users/dan", "public", "citizen")
        self.other_driver = self.token("users/eve", "public", "citizen")

    def token(self, subject: str, organization: str, *roles: str):
        return bearer(self._mint(subject, organization, list(roles)))

    async def site(
        self, site_id: str = "rongdong-a", tariff: parking_pb2.Tariff = TARIFF
    ) -> parking_pb2.Site:
        site = await self.parking.CreateSite(
            parking_pb2.CreateSiteRequest(
                site=parking_pb2.Site(
                    display_name=site_id,
                    kind=parking_pb2.SITE_KIND_ON_STREET,
                    location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                    detection_type=parking_pb2.DETECTION_TYPE_SINGLE_SPACE,
                    allowed_vehicle_types=["car", "motorcycle"],
                    tariff=tariff,
                ),
                site_id=site_id,
            ),
            metadata=self.operator,
        )
        await self.parking.CreateSpot(
            parking_pb2.CreateSpotRequest(
                spot=parking_pb2.Spot(
                    display_name="1",
                    site=site.name,
                    location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                    allowed_vehicle_types=["motorcycle"],
                ),
                spot_id=f"{site_id}-moto",
            ),
            metadata=self.operator,
        )
        return site

    async def start(
        self, plate: str = "京A12345", metadata=None, **fields
    ) -> reservations_pb2.ParkingSession:
        request_id = fields.pop("request_id", uuid.uuid4().hex)
        return await self.sessions.StartSession(
            reservations_pb2.StartSessionRequest(
                session=reservations_pb2.ParkingSession(
                    site=fields.pop("site", "sites/rongdong-a"),
                    plate=plate,
                    vehicle_type=fields.pop("vehicle_type", "car"),
                    **fields,
                ),
                request_id=request_id,
            ),
            metadata=metadata or self.driver,
        )

    async def stop(self, name: str, metadata=None, **fields) -> reservations_pb2.ParkingSession:
        return await self.sessions.StopSession(
            reservations_pb2.StopSessionRequest(name=name, **fields), metadata=metadata or self.driver
        )

    async def events(self) -> list[events_pb2.Event]:
        stream = events_pb2_grpc.EventServiceStub(self.channel).StreamEvents(
            events_pb2.StreamEventsRequest(follow=False), metadata=self.operator
        )
        return [event async for batch in stream for event in batch.events]


@pytest.fixture
async def garage(clocked_service, mint):
    async with clocked_service() as (app, channel, clock):
        yield Garage(app, channel, mint, clock)


async def test_the_fee_on_stop_is_the_fee_engines_quote_with_free_minutes_a_daily_cap_and_a_night(garage):
    await garage.site()
    session = await garage.start()
    assert (session.state, session.source, session.start_time) == (
        ACTIVE,
        reservations_pb2.SESSION_SOURCE_APP,
        stamp(START),
    )
    # Monday 09:00 to Tuesday 10:30 local.
    garage.clock.advance(hours=25, minutes=30)
    stopped = await garage.stop(session.name)
    expected = fee_to_proto(fees.quote(to_fees_tariff(TARIFF), START, garage.clock.now()))
    assert stopped.fee == expected
    assert (stopped.state, stopped.end_time) == (COMPLETED, stamp(garage.clock.now()))
    # Worked by hand: Monday 09:15-20:00 is 645 minutes at 0.05 = 32.25, plus the night's 5 = 37.25, capped
    # at 30; Tuesday's early hours are the same night (no second fee), 08:00-10:30 is 150 minutes = 7.50.
    assert stopped.fee.amount == "37.50"
    assert [(day.day, day.amount, day.capped) for day in stopped.fee.days] == [
        ("2026-03-02", "30.00", True),
        ("2026-03-03", "7.50", False),
    ]
    assert {period.kind for period in stopped.fee.days[0].periods} == {"free", "standard", "overnight"}
    assert stopped.fee.free_minutes == 15
    # QuoteFee gives the same for the same stay, and applies a permit.
    quoted = await garage.sessions.QuoteFee(
        reservations_pb2.QuoteFeeRequest(
            site="sites/rongdong-a", start_time=stamp(START), end_time=stopped.end_time
        ),
        metadata=garage.other_driver,
    )
    assert quoted == expected
    resident = await garage.sessions.QuoteFee(
        reservations_pb2.QuoteFeeRequest(
            site="sites/rongdong-a", start_time=stamp(START), end_time=stopped.end_time, permit="resident"
        ),
        metadata=garage.other_driver,
    )
    assert resident == fee_to_proto(
        fees.quote(to_fees_tariff(TARIFF), START, garage.clock.now(), permit="resident")
    )
    # Stopping again returns it unchanged.
    garage.clock.advance(hours=1)
    assert await garage.stop(session.name) == stopped
    types = [e.type for e in await garage.events() if e.type.startswith("parking.session.")]
    assert types == ["parking.session.started", "parking.session.completed"]


async def test_a_running_session_shows_its_fee_so_far(garage):
    await garage.site()
    session = await garage.start()
    garage.clock.advance(minutes=45)
    got = await garage.sessions.GetSession(
        reservations_pb2.GetSessionRequest(name=session.name), metadata=garage.driver
    )
    assert (got.state, got.fee.minutes, got.fee.amount) == (ACTIVE, 45, "1.50")
    listed = await garage.sessions.ListSessions(
        reservations_pb2.ListSessionsRequest(), metadata=garage.driver
    )
    assert [(s.name, s.fee.amount) for s in listed.sessions] == [(session.name, "1.50")]
    # The site's operator sees it, another driver and another organization do not.
    by_operator = await garage.sessions.ListSessions(
        reservations_pb2.ListSessionsRequest(site="sites/rongdong-a", state=ACTIVE), metadata=garage.operator
    )
    assert [s.name for s in by_operator.sessions] == [session.name]
    for stranger in (garage.other_driver, garage.other_org):
        hidden = await refused(
            garage.sessions.GetSession(
                reservations_pb2.GetSessionRequest(name=session.name), metadata=stranger
            )
        )
        assert hidden.code() == grpc.StatusCode.NOT_FOUND
        none = await garage.sessions.ListSessions(reservations_pb2.ListSessionsRequest(), metadata=stranger)
        assert list(none.sessions) == []
    stranger_stop = await refused(garage.stop(session.name, metadata=garage.other_driver))
    assert stranger_stop.code() == grpc.StatusCode.NOT_FOUND


async def test_an_overstay_is_detected_once(garage):
    await garage.site()
    long_stay = await garage.start()
    short_stay = await garage.start(plate="冀B54321", metadata=garage.other_driver)
    garage.clock.advance(hours=1)
    await garage.stop(short_stay.name, metadata=garage.other_driver)
    assert await garage.app.sweeper.step() == (0, 0)  # one hour in: within the 2-hour maximum stay
    garage.clock.advance(hours=1, minutes=1)
    assert await garage.app.sweeper.step() == (0, 1)
    garage.clock.advance(minutes=30)
    assert await garage.app.sweeper.step() == (0, 0)
    got = await garage.sessions.GetSession(
        reservations_pb2.GetSessionRequest(name=long_stay.name), metadata=garage.driver
    )
    assert (got.overstay, got.fee.overstay_minutes) == (True, 31)
    stopped = await garage.stop(long_stay.name)
    assert stopped.overstay
    overstays = [e for e in await garage.events() if e.type == "parking.overstay"]
    assert len(overstays) == 1
    detected = reservations_pb2.OverstayDetected()
    overstays[0].payload.Unpack(detected)
    assert (detected.session.name, detected.maximum_stay.seconds, detected.over_by.seconds) == (
        long_stay.name,
        7200,
        60,
    )


async def test_a_session_stopped_past_the_maximum_stay_before_the_sweep_gets_its_overstay_event(garage):
    await garage.site()
    session = await garage.start()
    garage.clock.advance(hours=3)
    stopped = await garage.stop(session.name)
    assert (stopped.overstay, stopped.fee.overstay_minutes) == (True, 60)
    assert await garage.app.sweeper.step() == (0, 0)
    types = [
        e.type for e in await garage.events() if e.type != "parking.site.created" and "spot" not in e.type
    ]
    assert types == ["parking.session.started", "parking.overstay", "parking.session.completed"]


async def test_a_closed_site_refuses_a_start(garage):
    hours = parking_pb2.Tariff()
    hours.CopyFrom(TARIFF)
    hours.opening_hours.append(parking_pb2.WeeklyWindow(start="08:00", end="20:00"))
    await garage.site(tariff=hours)
    garage.clock.advance(hours=13)  # 22:00 local
    closed = await refused(garage.start())
    assert (closed.code(), error_info(closed).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SITE_CLOSED")
    garage.clock.advance(hours=11)  # 09:00 the next morning
    assert (await garage.start()).state == ACTIVE


async def test_one_vehicle_runs_one_session_at_a_site_and_a_retry_starts_none(garage):
    await garage.site()
    first = await garage.start(request_id="gate-7-1")
    assert await garage.start(request_id="gate-7-1") == first
    twice = await refused(garage.start(plate="京a-12345"))
    assert (twice.code(), error_info(twice).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PLATE_ALREADY_PARKED",
    )
    # Only the site's operator speaks for its gates.
    gate = await refused(garage.start(plate="冀C00001", source=reservations_pb2.SESSION_SOURCE_GATE))
    assert gate.code() == grpc.StatusCode.PERMISSION_DENIED
    by_gate = await garage.start(
        plate="冀C00001", source=reservations_pb2.SESSION_SOURCE_GATE, metadata=garage.operator
    )
    assert by_gate.source == reservations_pb2.SESSION_SOURCE_GATE


async def test_bad_session_input_is_answered_with_every_field_named(garage):
    await garage.site()
    everything = await refused(
        garage.start(
            plate="?",
            vehicle_type="truck",
            spot="spots/rongdong-a-moto",
            permit="visitor",
            source=reservations_pb2.SESSION_SOURCE_RESERVATION,
            start_time=stamp(START + timedelta(hours=1)),
        )
    )
    assert everything.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(everything)} == {
        "session.plate",
        "session.vehicle_type",
        "session.source",
        "session.start_time",
        "session.permit",
    }
    moto_spot = await refused(garage.start(spot="spots/rongdong-a-moto"))
    assert field_violations(moto_spot) == [("session.vehicle_type", "spots/rongdong-a-moto takes motorcycle")]
    nowhere = await refused(garage.start(site="sites/nowhere"))
    assert field_violations(nowhere) == [("session.site", "sites/nowhere does not exist")]
    session = await garage.start()
    before = await refused(garage.stop(session.name, end_time=stamp(START - timedelta(minutes=1))))
    assert [f for f, _ in field_violations(before)] == ["end_time"]
    quote = reservations_pb2.QuoteFeeRequest
    missing = await refused(garage.sessions.QuoteFee(quote(site="sites/rongdong-a"), metadata=garage.driver))
    assert {f for f, _ in field_violations(missing)} == {"start_time", "end_time"}
    backwards = await refused(
        garage.sessions.QuoteFee(
            quote(
                site="sites/rongdong-a", start_time=stamp(START), end_time=stamp(START - timedelta(hours=1))
            ),
            metadata=garage.driver,
        )
    )
    assert [f for f, _ in field_violations(backwards)] == ["end_time"]
    no_permit = await refused(
        garage.sessions.QuoteFee(
            quote(site="sites/rongdong-a", start_time=stamp(START), end_time=stamp(START), permit="visitor"),
            metadata=garage.driver,
        )
    )
    assert [f for f, _ in field_violations(no_permit)] == ["permit"]
