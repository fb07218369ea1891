"""PRK-7: plates are personal data — normalised, pseudonymised under a key before anything leaves the
service (responses, events and so the lake that copies the events), and erased in clear after the
retention.

Time is a manual clock injected into the service's database: 2026-03-02 01:00 UTC, Monday 09:00 in
Asia/Shanghai.
"""

from __future__ import annotations

import stat
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, json_format
from pydantic import SecretStr
from sqlalchemy import MetaData, select

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc, reservations_pb2, reservations_pb2_grpc
from cityos_parking.app import ParkingApp
from cityos_parking.plates import KEY_FILE, PlatePseudonyms, normalise_plate
from cityos_parking.settings import ParkingSettings
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import stamp

pytestmark = pytest.mark.req("PRK-7")

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Asia/Shanghai
CENTER = (39.05, 115.95)
RETENTION_DAYS = 30
PLATE, SPELLED = "京A12345", "京a·123 45"  # one plate, as stored and as a gate may read it
OTHER_PLATE = "冀B54321"


# -- normalisation and pseudonyms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("京A·12345", "京A12345"),
        ("京a 12345", "京A12345"),
        ("冀F-D1234", "冀FD1234"),  # a new-energy plate: six after the letter
        ("粤B1234学", "粤B1234学"),  # a learner's plate ends in 学
        ("使123456", "使123456"),
        ("ab-123-cd", "AB123CD"),
        ("\uff21\uff22\uff11\uff12\uff13", "AB123"),  # full-width forms read as ASCII
        ("m.12.34", "M1234"),
        ("AB", "AB"),
        ("A" * 16, "A" * 16),
    ],
)
def test_a_plate_is_normalised_to_one_spelling(raw, normalised):
    assert normalise_plate(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    ["", "A", "-", "A" * 17, "京京123", "京", "AB#12", "AB12京", "学AB12", "AB😀12", "Ω123"],
)
def test_what_is_not_a_plate_is_refused(raw):
    assert normalise_plate(raw) is None


def test_a_pseudonym_is_keyed_stable_and_32_hex_characters():
    key = PlatePseudonyms(b"k" * 32)
    plate = normalise_plate(SPELLED)
    assert plate == PLATE
    pseudonym = key.of(plate)
    assert len(pseudonym) == 32
    assert int(pseudonym, 16) >= 0
    assert key.of(PLATE) == pseudonym  # the same plate, the same pseudonym
    assert key.of(OTHER_PLATE) != pseudonym  # another plate, another one
    assert PlatePseudonyms(b"j" * 32).of(PLATE) != pseudonym  # another key, another one
    with pytest.raises(ValueError, match="16 bytes"):
        PlatePseudonyms(b"short")


def test_the_key_is_configured_or_generated_once_and_kept_private(tmp_path):
    generated = PlatePseudonyms.from_settings(ParkingSettings(), tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert PlatePseudonyms.from_settings(ParkingSettings(), tmp_path).of(PLATE) == generated.of(PLATE)
    configured = ParkingSettings(plate_pseudonym_key=SecretStr("a-secret-from-the-deployment-0123"))
    assert PlatePseudonyms.from_settings(configured, tmp_path).of(PLATE) != generated.of(PLATE)


# -- the service: nothing leaves in clear, nothing stays past the retention -----------------------------


@pytest.fixture
async def service(clocked_service, mint):
    async with clocked_service(plate_retention_days=RETENTION_DAYS) as (app, channel, clock):
        yield app, channel, clock, lambda *args: bearer(mint(*args))


async def rows_holding(app: ParkingApp, needles: list[bytes]) -> list[str]:
    """Every `table.column` of the service's database (its tables and the platform's: outbox,
    idempotency keys...) in which a value contains one of `needles`, text or bytes."""
    metadata = MetaData()
    async with app.db.engine.connect() as connection:
        await connection.run_sync(metadata.reflect)
        found = []
        for table in metadata.sorted_tables:
            for row in (await connection.execute(select(table))).mappings():
                for column, value in row.items():
                    data = value if isinstance(value, bytes) else str(value).encode()
                    if any(needle in data for needle in needles):
                        found.append(f"{table.name}.{column}")
    return sorted(found)


async def test_no_plate_leaves_the_service_in_clear_and_none_stays_past_the_retention(service):
    app, channel, clock, token = service
    parking = parking_pb2_grpc.ParkingServiceStub(channel)
    reservations = reservations_pb2_grpc.ReservationServiceStub(channel)
    sessions = reservations_pb2_grpc.SessionServiceStub(channel)
    operator, driver = (
        token("users/olga", "transport", ["operator"]),
        token("users/dan", "public", ["citizen"]),
    )
    await parking.CreateSite(
        parking_pb2.CreateSiteRequest(
            site=parking_pb2.Site(
                display_name="Rongdong A",
                kind=parking_pb2.SITE_KIND_ON_STREET,
                location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
                detection_type=parking_pb2.DETECTION_TYPE_SINGLE_SPACE,
                allowed_vehicle_types=["car"],
                tariff=parking_pb2.Tariff(
                    price_per_minute="0.05",
                    currency="CNY",
                    time_zone="Asia/Shanghai",
                    maximum_stay=duration_pb2.Duration(seconds=3600),
                ),
            ),
            site_id="rongdong-a",
        ),
        metadata=operator,
    )
    await parking.CreateSpot(
        parking_pb2.CreateSpotRequest(
            spot=parking_pb2.Spot(
                display_name="1",
                site="sites/rongdong-a",
                location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
            ),
            spot_id="a-1",
        ),
        metadata=operator,
    )

    def window(start: float, minutes: float) -> dict:
        begin = clock.now() + timedelta(minutes=start)
        return {"start_time": stamp(begin), "end_time": stamp(begin + timedelta(minutes=minutes))}

    # A reservation, a cancelled one, a check-in, an overstay and a stop; another vehicle's session.
    held = await reservations.CreateReservation(
        reservations_pb2.CreateReservationRequest(
            reservation=reservations_pb2.Reservation(
                site="sites/rongdong-a", spot="spots/a-1", plate=SPELLED, vehicle_type="car", **window(5, 180)
            ),
            request_id=uuid.uuid4().hex,
        ),
        metadata=driver,
    )
    cancelled = await reservations.CreateReservation(
        reservations_pb2.CreateReservationRequest(
            reservation=reservations_pb2.Reservation(
                site="sites/rongdong-a", plate=PLATE, vehicle_type="car", **window(600, 60)
            ),
            request_id=uuid.uuid4().hex,
        ),
        metadata=driver,
    )
    await reservations.CancelReservation(
        reservations_pb2.CancelReservationRequest(name=cancelled.name), metadata=driver
    )
    checked_in = await reservations.CheckIn(
        reservations_pb2.CheckInRequest(site="sites/rongdong-a", plate="京A 12345"), metadata=operator
    )
    other = await sessions.StartSession(
        reservations_pb2.StartSessionRequest(
            session=reservations_pb2.ParkingSession(
                site="sites/rongdong-a", plate=OTHER_PLATE, vehicle_type="car"
            ),
            request_id=uuid.uuid4().hex,
        ),
        metadata=driver,
    )
    clock.advance(minutes=61)
    assert await app.sweeper.step() == (0, 2)
    stopped = await sessions.StopSession(
        reservations_pb2.StopSessionRequest(name=checked_in.session.name), metadata=driver
    )

    # Responses carry the pseudonym, never the plate; it is stable for a plate and differs for another.
    answers = [held, cancelled, checked_in.reservation, checked_in.session, other, stopped]
    assert all(not answer.plate for answer in answers)
    pseudonym = held.plate_pseudonym
    assert {cancelled.plate_pseudonym, checked_in.session.plate_pseudonym, stopped.plate_pseudonym} == {
        pseudonym
    }
    assert other.plate_pseudonym not in ("", pseudonym)

    # Every event on the outbox: the plate in no spelling in the payload's bytes or JSON; the pseudonym is.
    stream = events_pb2_grpc.EventServiceStub(channel).StreamEvents(
        events_pb2.StreamEventsRequest(follow=False), metadata=operator
    )
    events = [event async for batch in stream for event in batch.events]
    types = {event.type for event in events}
    assert {
        "parking.reservation.created",
        "parking.reservation.cancelled",
        "parking.reservation.checked_in",
        "parking.session.started",
        "parking.overstay",
        "parking.session.completed",
    } <= types
    clear = [form.encode() for form in (PLATE, SPELLED, "A12345", OTHER_PLATE, "B54321")]
    for event in events:
        text = json_format.MessageToJson(event).encode()
        for blob in (event.payload.value, event.SerializeToString(), text):
            assert not any(form in blob for form in clear), f"{event.type} carries a plate"
        if event.type.startswith(("parking.reservation.", "parking.session.", "parking.overstay")):
            carried = {p for p in (pseudonym, other.plate_pseudonym) if p.encode() in event.payload.value}
            assert len(carried) == 1, f"{event.type} carries the vehicle's pseudonym"

    # In the database the plate is only where it must be, until the retention ends.
    assert await rows_holding(app, clear) == [
        "reservations.plate",  # the checked-in hold
        "reservations.plate",  # the cancelled one
        "sessions.plate",  # the stopped session
        "sessions.plate",  # the other vehicle's, still running
    ]
    clock.advance(days=RETENTION_DAYS - 1)
    assert await app.plate_retention.step() == 0
    assert await rows_holding(app, [PLATE.encode()]) == [
        "reservations.plate",
        "reservations.plate",
        "sessions.plate",
    ]
    clock.advance(days=1, hours=3)
    assert await app.plate_retention.step() == 3  # two reservations and the stopped session
    assert await rows_holding(app, [PLATE.encode(), SPELLED.encode()]) == []
    # The running session keeps its plate until it stops and its own retention has passed.
    assert await rows_holding(app, [OTHER_PLATE.encode()]) == ["sessions.plate"]
    # The erased rows keep their pseudonym.
    got = await reservations.GetReservation(
        reservations_pb2.GetReservationRequest(name=held.name), metadata=driver
    )
    assert got.plate_pseudonym == pseudonym
