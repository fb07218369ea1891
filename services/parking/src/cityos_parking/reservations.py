"""Reservations: a spot, or a space anywhere at a site, held for a window of time (PRK-4).

Life of a hold: HELD on create; CHECKED_IN when the vehicle arrives (CheckIn by plate at the site, which
starts its session in the same transaction); CANCELLED by its holder or the site's operator; EXPIRED
when not checked in by `hold_expire_time` (its start plus the grace period, `hold_grace_s`). HELD and
CHECKED_IN are *live*: they hold their spot or space for the whole window.

No double booking
-----------------
Every create takes the site row's lock (`SELECT … FOR NO KEY UPDATE`; SQLite serialises writers
anyway), expires the overdue holds of the site, and then checks, in this order:

* a spot hold: the spot is not closed (`SPOT_CLOSED`), and no live hold of the spot overlaps the window
  (`SPOT_ALREADY_RESERVED`);
* every hold: the live holds at the site whose windows overlap the window (spot and capacity holds
  alike) are fewer than the site's usable spaces — its spots not closed, or a BALANCING site's
  `capacity` — else `SITE_FULLY_RESERVED`. This is conservative: holds that overlap the window but not
  each other are counted together, so a site may refuse a hold it could just fit; it never overbooks.

Windows are half-open, `[start, end)`: a hold ending at 10:00 and one starting at 10:00 do not overlap.

Both refusals are FAILED_PRECONDITION (AIP-193: the system is not in a state that allows the request;
retrying the same request will not help, choosing another window or spot will), with the reason in
ErrorInfo. ALREADY_EXISTS would claim that the new reservation itself exists, which it does not.

The site lock serialises the holds of one site in the service, which is what makes the capacity count
exact — a spot hold counts against the site's spaces too, so spot holds cannot run beside each other
without it. The database is still the last word on spots: on PostgreSQL the exclusion constraint
`ex_reservations_spot_window` (btree_gist: same spot, overlapping `tstzrange(start, end, '[)')`, state
HELD or CHECKED_IN) makes two live overlapping holds of one spot impossible whatever writes them; its
violation (SQLSTATE 23P01) is answered with the same FAILED_PRECONDITION `SPOT_ALREADY_RESERVED`.

Who sees what: a reservation is its holder's (the caller's subject and organization) and the site's
owner's and operator's (and city-wide roles'); to anyone else it does not exist (NOT_FOUND, the same
message as for a missing one). Anyone signed in may reserve at any site: parking is public.

Plates are taken in, never given out: responses and the events `parking.reservation.created`,
`.cancelled`, `.expired`, `.checked_in` (ReservationChanged, scoped to the site's owner and cell)
carry only the pseudonym (`plates.py`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import grpc
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cityos.parking.v1 import parking_pb2, reservations_pb2, reservations_pb2_grpc
from cityos_parking.models import ReservationRow, SessionRow, SiteRow, SpotRow
from cityos_parking.plates import PLATE_RULE, PlatePseudonyms, normalise_plate, without_plate
from cityos_parking.registry import emit, name_id
from cityos_parking.sessions import (
    ACTIVE,
    MAX_START_DELAY,
    SKEW,
    Violations,
    detect_overstays,
    ensure_open,
    holds,
    open_session,
    operates,
    session_to_proto,
    site_and_spot,
    site_tariff,
    stay_problems,
    to_datetime,
    to_stamp,
    vehicle_problems,
    visible_rows,
)
from cityos_platform.db import Database, Tx
from cityos_platform.errors import FailedPrecondition, InvalidArgument, NotFound
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tasks import PeriodicTask
from cityos_platform.tenancy import not_found

HELD = reservations_pb2.RESERVATION_STATE_HELD
CHECKED_IN = reservations_pb2.RESERVATION_STATE_CHECKED_IN
CANCELLED = reservations_pb2.RESERVATION_STATE_CANCELLED
EXPIRED = reservations_pb2.RESERVATION_STATE_EXPIRED
LIVE = (int(HELD), int(CHECKED_IN))

MAX_WINDOW = timedelta(hours=24)
MAX_AHEAD = timedelta(days=30)
# A start this far in the past is still accepted (a driver reserving "now" on a slow network).
PAST_TOLERANCE = timedelta(minutes=1)
# A vehicle may check in this long before its window starts.
EARLY_CHECK_IN = timedelta(minutes=15)
EXCLUSION_VIOLATION = "23P01"
SPOT_CONSTRAINT = "ex_reservations_spot_window"
EXPIRE_BATCH = 500


def reservation_to_proto(row: ReservationRow) -> reservations_pb2.Reservation:
    """The API's form of a reservation (never the plate: its pseudonym)."""
    return reservations_pb2.Reservation(
        name=f"reservations/{row.reservation_id}",
        site=f"sites/{row.site_id}",
        spot=f"spots/{row.spot_id}" if row.spot_id else "",
        start_time=to_stamp(row.start_time),
        end_time=to_stamp(row.end_time),
        plate_pseudonym=row.plate_pseudonym,
        vehicle_type=row.vehicle_type,
        permit=row.permit,
        state=row.state,  # type: ignore[arg-type]
        hold_expire_time=to_stamp(row.hold_expire_time),
        holder=row.holder,
        session=f"sessions/{row.session_id}" if row.session_id else "",
        etag=row.etag,
        create_time=to_stamp(row.create_time),
        update_time=to_stamp(row.update_time),
    )


def _changed(
    tx: Tx, event: str, row: ReservationRow, previous: int, site: SiteRow
) -> reservations_pb2.Reservation:
    reservation = reservation_to_proto(row)
    emit(
        tx,
        f"reservation.{event}",
        reservations_pb2.ReservationChanged(reservation=reservation, previous_state=previous),  # type: ignore[arg-type]
        reservation.name,
        site,
    )
    return reservation


def _touch(tx: Tx, row: ReservationRow, state: int) -> int:
    previous, row.state = row.state, state
    row.etag = uuid.uuid4().hex[:16]
    row.update_time = tx.now
    return previous


def spot_taken(spot_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"spots/{spot_id} is already reserved for part of that window; choose another window or spot",
        reason="SPOT_ALREADY_RESERVED",
        metadata={"spot": f"spots/{spot_id}"},
    )


def is_spot_conflict(error: IntegrityError) -> bool:
    """Whether an IntegrityError is PostgreSQL's exclusion constraint on overlapping spot holds."""
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return sqlstate == EXCLUSION_VIOLATION or SPOT_CONSTRAINT in str(error.orig)


async def expire_overdue(tx: Tx, site_id: str | None = None, limit: int | None = None) -> int:
    """HELD holds past their `hold_expire_time` become EXPIRED, one `parking.reservation.expired` event
    each. Rows are locked in id order, and a row another transaction expired meanwhile no longer matches
    when its lock is granted (PostgreSQL re-reads it), so no hold expires twice."""
    statement = select(ReservationRow).where(
        ReservationRow.state == HELD, ReservationRow.hold_expire_time < tx.now
    )
    if site_id is not None:
        statement = statement.where(ReservationRow.site_id == site_id)
    statement = statement.order_by(ReservationRow.reservation_id).with_for_update()
    if limit is not None:
        statement = statement.limit(limit)
    rows = (await tx.session.scalars(statement)).all()
    sites: dict[str, SiteRow | None] = {}
    for row in rows:
        if row.site_id not in sites:
            sites[row.site_id] = await tx.session.get(SiteRow, row.site_id)
        site = sites[row.site_id]
        previous = _touch(tx, row, int(EXPIRED))
        if site is not None:
            _changed(tx, "expired", row, previous, site)
    return len(rows)


async def usable_spaces(tx: Tx, site: SiteRow) -> int:
    """A BALANCING site's capacity when it has one, else its spots that are not closed."""
    if site.detection_type == parking_pb2.DETECTION_TYPE_BALANCING and site.capacity > 0:
        return site.capacity
    count = await tx.session.scalar(
        select(func.count()).where(
            SpotRow.site_id == site.site_id, SpotRow.status != parking_pb2.SPOT_STATUS_CLOSED
        )
    )
    return int(count or 0)


def _overlapping(start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [
        ReservationRow.state.in_(LIVE),
        ReservationRow.start_time < end,
        ReservationRow.end_time > start,
    ]


class ReservationServicer(reservations_pb2_grpc.ReservationServiceServicer):
    def __init__(
        self, db: Database, page_tokens: PageTokens, pseudonyms: PlatePseudonyms, hold_grace: timedelta
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.pseudonyms = pseudonyms
        self.hold_grace = hold_grace

    async def CreateReservation(
        self, request: reservations_pb2.CreateReservationRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.Reservation:
        caller = current_call().principal
        wanted = request.reservation

        async def create(tx: Tx) -> reservations_pb2.Reservation:
            problems = self._window_problems(wanted, tx.now)
            problems += vehicle_problems(wanted.plate, wanted.vehicle_type, "reservation")
            site, spot = await site_and_spot(tx, wanted.site, wanted.spot, "reservation", problems, lock=True)
            if site is not None:
                problems += stay_problems(site, spot, wanted.vehicle_type, wanted.permit, "reservation")
            if problems:
                raise InvalidArgument.many(problems)
            assert site is not None
            start, end = to_datetime(wanted.start_time), to_datetime(wanted.end_time)
            await expire_overdue(tx, site.site_id)
            if spot is not None:
                if spot.status == parking_pb2.SPOT_STATUS_CLOSED:
                    raise FailedPrecondition(
                        f"spots/{spot.spot_id} is closed by its operator", reason="SPOT_CLOSED"
                    )
                clash = await tx.session.scalar(
                    select(ReservationRow.reservation_id)
                    .where(ReservationRow.spot_id == spot.spot_id, *_overlapping(start, end))
                    .limit(1)
                )
                if clash is not None:
                    raise spot_taken(spot.spot_id)
            live = await tx.session.scalar(
                select(func.count()).where(ReservationRow.site_id == site.site_id, *_overlapping(start, end))
            )
            if int(live or 0) >= await usable_spaces(tx, site):
                raise FailedPrecondition(
                    f"sites/{site.site_id} has no space left to reserve for that window",
                    reason="SITE_FULLY_RESERVED",
                )
            plate = normalise_plate(wanted.plate)
            assert plate is not None
            row = ReservationRow(
                reservation_id=uuid.uuid4().hex,
                site_id=site.site_id,
                spot_id=spot.spot_id if spot is not None else None,
                start_time=start,
                end_time=end,
                state=int(HELD),
                hold_expire_time=start + self.hold_grace,
                plate=plate,
                plate_pseudonym=self.pseudonyms.of(plate),
                vehicle_type=wanted.vehicle_type,
                permit=wanted.permit,
                holder=caller.subject,
                holder_organization=caller.organization,
                session_id=None,
                reason="",
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            try:
                await tx.session.flush()  # here, not at commit: the constraint's verdict is ours to word
            except IntegrityError as error:
                if spot is not None and is_spot_conflict(error):
                    raise spot_taken(spot.spot_id) from None
                raise
            return _changed(tx, "created", row, int(reservations_pb2.RESERVATION_STATE_UNSPECIFIED), site)

        return await idempotent(
            self.db, without_plate(request, self.pseudonyms), reservations_pb2.Reservation, create
        )

    @staticmethod
    def _window_problems(wanted: reservations_pb2.Reservation, now: datetime) -> Violations:
        problems: Violations = []
        for field in ("start_time", "end_time"):
            if not wanted.HasField(field):
                problems.append((f"reservation.{field}", "is required"))
        if problems:
            return problems
        start, end = to_datetime(wanted.start_time), to_datetime(wanted.end_time)
        if start < now - PAST_TOLERANCE:
            problems.append(("reservation.start_time", "must not be in the past"))
        if end <= start:
            problems.append(("reservation.end_time", "must be after start_time"))
        elif end - start > MAX_WINDOW:
            problems.append(("reservation.end_time", "at most 24 hours after start_time"))
        elif end > now + MAX_AHEAD:
            problems.append(("reservation.end_time", "at most 30 days ahead"))
        return problems

    @staticmethod
    async def _visible(
        session: AsyncSession, reservation_id: str, name: str, *, lock: bool
    ) -> tuple[ReservationRow, SiteRow]:
        """The reservation and its site, when the caller may see it; else NOT_FOUND as for a missing one."""
        caller = current_call().principal
        row = await session.get(ReservationRow, reservation_id, with_for_update=lock or None)
        site = await session.get(SiteRow, row.site_id) if row is not None else None
        if row is None or site is None or not (holds(row, caller) or operates(site, caller)):
            raise not_found("reservation", name)
        return row, site

    async def GetReservation(
        self, request: reservations_pb2.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.Reservation:
        reservation_id = name_id(request.name, "reservations")
        async with self.db.read() as session:
            row, _site = await self._visible(session, reservation_id, request.name, lock=False)
        return reservation_to_proto(row)

    async def ListReservations(
        self, request: reservations_pb2.ListReservationsRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.ListReservationsResponse:
        caller = current_call().principal
        statement = select(ReservationRow).where(visible_rows(ReservationRow, caller))
        if request.site:
            statement = statement.where(ReservationRow.site_id == name_id(request.site, "sites", "site"))
        if request.state:
            statement = statement.where(ReservationRow.state == request.state)
        rows, token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            ReservationRow.reservation_id,
            size=page_size(request.page_size),
        )
        return reservations_pb2.ListReservationsResponse(
            reservations=[reservation_to_proto(row) for row in rows], next_page_token=token
        )

    async def CancelReservation(
        self, request: reservations_pb2.CancelReservationRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.Reservation:
        reservation_id = name_id(request.name, "reservations")
        if len(request.reason) > 200:
            raise InvalidArgument.field("reason", "at most 200 characters")
        async with self.db.transaction() as tx:
            row, site = await self._visible(tx.session, reservation_id, request.name, lock=True)
            if row.state == CANCELLED:
                return reservation_to_proto(row)  # cancelling again changes nothing
            if row.state == HELD and row.hold_expire_time < tx.now:
                raise FailedPrecondition(
                    f"{request.name} was not checked in in time and has expired", reason="RESERVATION_EXPIRED"
                )
            if row.state != HELD:
                state = reservations_pb2.ReservationState.Name(row.state)  # type: ignore[arg-type]
                raise FailedPrecondition(
                    f"{request.name} is {state.removeprefix('RESERVATION_STATE_')}; "
                    "only a HELD one can be cancelled",
                    reason="RESERVATION_NOT_HELD",
                    metadata={"state": state},
                )
            previous = _touch(tx, row, int(CANCELLED))
            row.reason = request.reason
            return _changed(tx, "cancelled", row, previous, site)

    async def CheckIn(
        self, request: reservations_pb2.CheckInRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.CheckInResponse:
        caller = current_call().principal
        site_id = name_id(request.site, "sites", "site")
        plate = normalise_plate(request.plate)
        if plate is None:
            raise InvalidArgument.field("plate", PLATE_RULE if request.plate else "is required")
        pseudonym = self.pseudonyms.of(plate)
        async with self.db.transaction() as tx:
            site = await tx.session.get(SiteRow, site_id, with_for_update={"key_share": True})
            if site is None or not operates(site, caller):
                raise not_found("site", request.site)
            at = to_datetime(request.time) if request.HasField("time") else tx.now
            if at > tx.now + SKEW:
                raise InvalidArgument.field("time", "must not be in the future")
            if at < tx.now - MAX_START_DELAY:
                raise InvalidArgument.field("time", "at most 24 hours ago")
            in_window = [
                ReservationRow.site_id == site_id,
                ReservationRow.plate_pseudonym == pseudonym,
                ReservationRow.start_time <= at + EARLY_CHECK_IN,
                ReservationRow.end_time > at,
            ]
            row = await tx.session.scalar(
                select(ReservationRow)
                .where(*in_window, ReservationRow.state == HELD, ReservationRow.hold_expire_time >= at)
                .order_by(ReservationRow.start_time, ReservationRow.reservation_id)
                .limit(1)
                .with_for_update()
            )
            if row is None:
                # A retry of a check-in that went through answers as the first call did.
                done = await tx.session.scalar(
                    select(ReservationRow)
                    .join(SessionRow, SessionRow.session_id == ReservationRow.session_id)
                    .where(*in_window, ReservationRow.state == CHECKED_IN, SessionRow.state == ACTIVE)
                    .order_by(ReservationRow.start_time)
                    .limit(1)
                )
                if done is not None and done.session_id is not None:
                    session = await tx.session.get(SessionRow, done.session_id)
                    assert session is not None
                    return reservations_pb2.CheckInResponse(
                        reservation=reservation_to_proto(done), session=session_to_proto(session)
                    )
                raise NotFound(
                    f"no reservation is held for this vehicle at {request.site} at that time",
                    reason="RESERVATION_NOT_FOUND",
                )
            ensure_open(site_tariff(site), site, at)
            session = open_session(
                tx,
                site,
                spot_id=row.spot_id,
                plate=plate,
                pseudonym=pseudonym,
                vehicle_type=row.vehicle_type,
                permit=row.permit,
                source=int(reservations_pb2.SESSION_SOURCE_RESERVATION),
                start=at,
                holder=row.holder,
                holder_organization=row.holder_organization,
                reservation_id=row.reservation_id,
            )
            previous = _touch(tx, row, int(CHECKED_IN))
            row.session_id = session.session_id
            reservation = _changed(tx, "checked_in", row, previous, site)
            return reservations_pb2.CheckInResponse(
                reservation=reservation, session=session_to_proto(session)
            )


class Sweeper:
    """The periodic sweep (`sweep_interval_s`): expires overdue holds and flags overstays (`step()`
    runs it once, which is what tests call with a manual clock)."""

    def __init__(self, db: Database, interval_s: float) -> None:
        self.db = db
        self._periodic = PeriodicTask("reservation and session sweep", interval_s, self.step)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def step(self) -> tuple[int, int]:
        """(holds expired, overstays flagged)."""
        expired = 0
        while True:
            async with self.db.transaction() as tx:
                count = await expire_overdue(tx, limit=EXPIRE_BATCH)
            expired += count
            if count < EXPIRE_BATCH:
                break
        return expired, await detect_overstays(self.db)
