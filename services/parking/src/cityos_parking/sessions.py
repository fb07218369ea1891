"""Parking sessions: a stay from start to stop, its fee from the site's tariff, and overstays.

A session starts at a gate (the site's operator), in an app (any signed-in driver), or by checking in
a reservation (`reservations.py`). It is refused while the site is closed (`fees.is_open`,
FAILED_PRECONDITION `SITE_CLOSED`) and when the same vehicle already has a session running at the site
(`PLATE_ALREADY_PARKED`). Stopping prices it with `fees.quote` under the site's tariff *at stop time*
and the session's permit, and stores the Fee; stopping it again returns it unchanged. While it runs,
GetSession and ListSessions show the fee so far.

The sweep (`detect_overstays`, run by `reservations.Sweeper`) flags a running session once it is past
the tariff's maximum stay and emits `parking.overstay` (OverstayDetected) exactly once; a session
stopped past the limit before the sweep saw it gets the flag and the event at stop.

Who sees what: a session is its holder's (the caller that started it, or the reservation's holder for a
check-in) and the site's owner's and operator's; anyone else gets NOT_FOUND, the same as for a name
that does not exist. Plates are input only (see `plates.py`): responses and events carry the pseudonym.

Events (`parking.session.started`, `parking.session.completed`: SessionChanged; `parking.overstay`:
OverstayDetected) are scoped to the site's owner and cell.

The shared pieces of reservations and sessions (names, times, the site checks, who may see a row)
live here too; `reservations.py` imports them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from sqlalchemy import ColumnElement, and_, or_, select

from cityos.parking.v1 import parking_pb2, reservations_pb2, reservations_pb2_grpc
from cityos_parking import fees
from cityos_parking.models import SessionRow, SiteRow, SpotRow
from cityos_parking.plates import PLATE_RULE, PlatePseudonyms, normalise_plate, without_plate
from cityos_parking.registry import VEHICLE_TYPES, emit, name_id
from cityos_parking.tariffs import fee_to_proto, to_fees_tariff
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Access, can_reach, not_found, visible_clause

Violations = list[tuple[str, str]]
RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# How far ahead of the service's clock a caller's time may be (clock skew of a gate or a phone).
SKEW = timedelta(minutes=1)
# How late a gate may report a start it buffered while offline.
MAX_START_DELAY = timedelta(hours=24)
OVERSTAY_BATCH = 500

ACTIVE = reservations_pb2.SESSION_STATE_ACTIVE
COMPLETED = reservations_pb2.SESSION_STATE_COMPLETED


# -- shared with reservations.py ----------------------------------------------------------------------


def to_datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def to_stamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_duration(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def id_of(name: str, collection: str, field: str, problems: Violations) -> str | None:
    """The id in `{collection}/{id}`, or None with the problem noted (so every problem is named)."""
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        problems.append((field, f"must look like {collection}/{{id}}, the id [a-z0-9][a-z0-9-]{{0,62}}"))
        return None
    return resource_id


def operates(site: SiteRow, caller: Principal) -> bool:
    """The site's owner, its operator, or a city-wide role: sees every holder's rows at the site."""
    return can_reach(site, caller, Access.WRITE)


def holds(row: Any, caller: Principal) -> bool:
    return bool(row.holder) and (row.holder, row.holder_organization) == (
        caller.subject,
        caller.organization,
    )


def visible_rows(model: Any, caller: Principal) -> ColumnElement[bool]:
    """The rows of `model` (reservations or sessions) a caller sees: its own, and all of the sites it
    owns or operates."""
    own = and_(model.holder == caller.subject, model.holder_organization == caller.organization)
    operated = model.site_id.in_(select(SiteRow.site_id).where(visible_clause(SiteRow, caller, Access.WRITE)))
    return or_(own, operated)


def site_tariff(site: SiteRow) -> fees.Tariff:
    """The fee engine's form of a site's stored tariff; FAILED_PRECONDITION when it breaks a rule of
    the fee engine (a tariff stored before that rule existed: its operator must fix it)."""
    try:
        return to_fees_tariff(json_format.ParseDict(site.tariff, parking_pb2.Tariff()))
    except fees.TariffError as error:
        raise FailedPrecondition(
            f"the tariff of sites/{site.site_id} is not valid ({error}); its operator must update it",
            reason="TARIFF_INVALID",
            metadata={"field": error.field},
        ) from None


def permit_names(site: SiteRow) -> list[str]:
    return [permit.get("name", "") for permit in site.tariff.get("permits", [])]


def stay_problems(
    site: SiteRow, spot: SpotRow | None, vehicle_type: str, permit: str, prefix: str
) -> Violations:
    """Whether the site (and the spot) take the vehicle, and the permit is one of the tariff's."""
    problems: Violations = []
    if vehicle_type in VEHICLE_TYPES:
        if vehicle_type not in site.allowed_vehicle_types:
            problems.append(
                (
                    f"{prefix}.vehicle_type",
                    f"sites/{site.site_id} takes {', '.join(site.allowed_vehicle_types)}",
                )
            )
        elif (
            spot is not None and spot.allowed_vehicle_types and vehicle_type not in spot.allowed_vehicle_types
        ):
            problems.append(
                (
                    f"{prefix}.vehicle_type",
                    f"spots/{spot.spot_id} takes {', '.join(spot.allowed_vehicle_types)}",
                )
            )
    if permit and permit not in permit_names(site):
        names = permit_names(site)
        problems.append(
            (
                f"{prefix}.permit",
                f"not a permit of sites/{site.site_id}'s tariff"
                + (f" ({', '.join(names)})" if names else " (it has none)"),
            )
        )
    return problems


def vehicle_problems(plate: str, vehicle_type: str, prefix: str) -> Violations:
    problems: Violations = []
    if not plate:
        problems.append((f"{prefix}.plate", "is required"))
    elif normalise_plate(plate) is None:
        problems.append((f"{prefix}.plate", PLATE_RULE))
    if vehicle_type not in VEHICLE_TYPES:
        problems.append((f"{prefix}.vehicle_type", f"one of {', '.join(sorted(VEHICLE_TYPES))}"))
    return problems


async def site_and_spot(
    tx: Tx, site_name: str, spot_name: str, prefix: str, problems: Violations, *, lock: bool
) -> tuple[SiteRow | None, SpotRow | None]:
    """The site and (when named) the spot of a request, with problems noted: a site that does not exist,
    a spot that is not of that site. Parking is public, so saying so leaks nothing. `lock`: the site row
    FOR NO KEY UPDATE, which serialises the holds and starts at one site (see reservations.py)."""
    site_id = id_of(site_name, "sites", f"{prefix}.site", problems) if site_name else None
    if not site_name:
        problems.append((f"{prefix}.site", "is required"))
    spot_id = id_of(spot_name, "spots", f"{prefix}.spot", problems) if spot_name else None
    site = spot = None
    if site_id is not None:
        site = await tx.session.get(SiteRow, site_id, with_for_update={"key_share": True} if lock else None)
        if site is None:
            problems.append((f"{prefix}.site", f"{site_name} does not exist"))
    if spot_id is not None and site is not None:
        spot = await tx.session.get(SpotRow, spot_id)
        if spot is None or spot.site_id != site.site_id:
            problems.append((f"{prefix}.spot", f"{spot_name} is not a spot of {site_name}"))
            spot = None
    return site, spot


# -- sessions -------------------------------------------------------------------------------------


def session_to_proto(
    row: SessionRow, fee: reservations_pb2.Fee | None = None
) -> reservations_pb2.ParkingSession:
    """The API's form of a session: the stored fee once completed, else `fee` (so far) when given."""
    if row.fee is not None:
        fee = json_format.ParseDict(row.fee, reservations_pb2.Fee())
    return reservations_pb2.ParkingSession(
        name=f"sessions/{row.session_id}",
        site=f"sites/{row.site_id}",
        spot=f"spots/{row.spot_id}" if row.spot_id else "",
        plate_pseudonym=row.plate_pseudonym,
        vehicle_type=row.vehicle_type,
        permit=row.permit,
        source=row.source,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        start_time=to_stamp(row.start_time),
        end_time=to_stamp(row.end_time),
        fee=fee,
        reservation=f"reservations/{row.reservation_id}" if row.reservation_id else "",
        overstay=row.overstay,
        holder=row.holder,
        etag=row.etag,
        create_time=to_stamp(row.create_time),
        update_time=to_stamp(row.update_time),
    )


def fee_so_far(site: SiteRow, row: SessionRow, now: datetime) -> reservations_pb2.Fee | None:
    """What a running session costs up to now; None when the site's tariff cannot price it."""
    try:
        tariff = to_fees_tariff(json_format.ParseDict(site.tariff, parking_pb2.Tariff()))
        return fee_to_proto(
            fees.quote(tariff, row.start_time, max(now, row.start_time), permit=row.permit or None)
        )
    except fees.TariffError:
        return None


def open_session(
    tx: Tx,
    site: SiteRow,
    *,
    spot_id: str | None,
    plate: str,
    pseudonym: str,
    vehicle_type: str,
    permit: str,
    source: int,
    start: datetime,
    holder: str,
    holder_organization: str,
    reservation_id: str | None = None,
) -> SessionRow:
    """A new ACTIVE session and its `parking.session.started` event (the site must be open at `start`;
    the caller checks)."""
    row = SessionRow(
        session_id=uuid.uuid4().hex,
        site_id=site.site_id,
        spot_id=spot_id,
        plate=plate,
        plate_pseudonym=pseudonym,
        vehicle_type=vehicle_type,
        permit=permit,
        source=source,
        state=int(ACTIVE),
        start_time=start,
        end_time=None,
        fee=None,
        reservation_id=reservation_id,
        overstay=False,
        holder=holder,
        holder_organization=holder_organization,
        etag=uuid.uuid4().hex[:16],
        create_time=tx.now,
        update_time=tx.now,
    )
    tx.session.add(row)
    started = session_to_proto(row)
    emit(tx, "session.started", reservations_pb2.SessionChanged(session=started), started.name, site)
    return row


def ensure_open(tariff: fees.Tariff, site: SiteRow, at: datetime) -> None:
    if not fees.is_open(tariff, at):
        raise FailedPrecondition(
            f"sites/{site.site_id} is closed at that time (see its tariff's opening hours)",
            reason="SITE_CLOSED",
        )


def _overstay_event(tx: Tx, site: SiteRow, row: SessionRow, maximum_stay: timedelta, at: datetime) -> None:
    session = session_to_proto(row)
    emit(
        tx,
        "overstay",
        reservations_pb2.OverstayDetected(
            session=session,
            maximum_stay=to_duration(maximum_stay),
            over_by=to_duration(at - row.start_time - maximum_stay),
        ),
        session.name,
        site,
    )


async def detect_overstays(db: Database) -> int:
    """Flag the running sessions past their site's maximum stay, one `parking.overstay` event each
    (once: the flag is set in the same transaction, under the row's lock). Returns how many."""
    async with db.read() as session:
        candidates = (
            await session.execute(
                select(SessionRow.session_id, SessionRow.start_time, SiteRow.tariff)
                .join(SiteRow, SiteRow.site_id == SessionRow.site_id)
                .where(SessionRow.state == ACTIVE, SessionRow.overstay.is_(False))
            )
        ).all()
    now = db.clock.now()
    overdue = []
    for session_id, start, tariff in candidates:
        limit = _maximum_stay(tariff)
        if limit is not None and now - start > limit:
            overdue.append(session_id)
    flagged = 0
    for first in range(0, len(overdue), OVERSTAY_BATCH):
        async with db.transaction() as tx:
            rows = (
                await tx.session.scalars(
                    select(SessionRow)
                    .where(
                        SessionRow.session_id.in_(overdue[first : first + OVERSTAY_BATCH]),
                        SessionRow.state == ACTIVE,
                        SessionRow.overstay.is_(False),
                    )
                    .order_by(SessionRow.session_id)
                    .with_for_update()
                )
            ).all()
            for row in rows:
                site = await tx.session.get(SiteRow, row.site_id)
                limit = _maximum_stay(site.tariff) if site is not None else None
                if site is None or limit is None or tx.now - row.start_time <= limit:
                    continue  # the tariff changed since the candidates were read
                row.overstay = True
                row.etag = uuid.uuid4().hex[:16]
                row.update_time = tx.now
                _overstay_event(tx, site, row, limit, tx.now)
                flagged += 1
    return flagged


def _maximum_stay(tariff: dict[str, Any]) -> timedelta | None:
    if "maximumStay" not in tariff:
        return None
    proto = json_format.ParseDict({"maximumStay": tariff["maximumStay"]}, parking_pb2.Tariff())
    return proto.maximum_stay.ToTimedelta()


def _quote_error(error: fees.TariffError, fields: dict[str, str]) -> Exception:
    """A TariffError of quote(): the request's field when an argument caused it, else the site's tariff."""
    if error.field in fields:
        return InvalidArgument.field(fields[error.field], error.message)
    return FailedPrecondition(
        f"the site's tariff is not valid ({error}); its operator must update it",
        reason="TARIFF_INVALID",
        metadata={"field": error.field},
    )


class SessionServicer(reservations_pb2_grpc.SessionServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, pseudonyms: PlatePseudonyms) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.pseudonyms = pseudonyms

    async def StartSession(
        self, request: reservations_pb2.StartSessionRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.ParkingSession:
        caller = current_call().principal
        wanted = request.session

        async def start(tx: Tx) -> reservations_pb2.ParkingSession:
            problems = vehicle_problems(wanted.plate, wanted.vehicle_type, "session")
            source = wanted.source or reservations_pb2.SESSION_SOURCE_APP
            if source not in (reservations_pb2.SESSION_SOURCE_GATE, reservations_pb2.SESSION_SOURCE_APP):
                problems.append(
                    ("session.source", "GATE or APP (a reservation starts its session by CheckIn)")
                )
            begin = to_datetime(wanted.start_time) if wanted.HasField("start_time") else tx.now
            if begin > tx.now + SKEW:
                problems.append(("session.start_time", "must not be in the future"))
            elif begin < tx.now - MAX_START_DELAY:
                problems.append(("session.start_time", "at most 24 hours ago"))
            site, spot = await site_and_spot(tx, wanted.site, wanted.spot, "session", problems, lock=True)
            if site is not None:
                problems += stay_problems(site, spot, wanted.vehicle_type, wanted.permit, "session")
            if problems:
                raise InvalidArgument.many(problems)
            assert site is not None
            if source == reservations_pb2.SESSION_SOURCE_GATE and not operates(site, caller):
                raise PermissionDenied(
                    f"only the operator of sites/{site.site_id} starts sessions at its gates",
                    reason="NOT_SITE_OPERATOR",
                )
            ensure_open(site_tariff(site), site, begin)
            plate = normalise_plate(wanted.plate)
            assert plate is not None
            pseudonym = self.pseudonyms.of(plate)
            running = await tx.session.scalar(
                select(SessionRow.session_id).where(
                    SessionRow.site_id == site.site_id,
                    SessionRow.plate_pseudonym == pseudonym,
                    SessionRow.state == ACTIVE,
                )
            )
            if running is not None:
                raise FailedPrecondition(
                    f"this vehicle already has a session running at sites/{site.site_id}; stop it first",
                    reason="PLATE_ALREADY_PARKED",
                )
            row = open_session(
                tx,
                site,
                spot_id=spot.spot_id if spot is not None else None,
                plate=plate,
                pseudonym=pseudonym,
                vehicle_type=wanted.vehicle_type,
                permit=wanted.permit,
                source=int(source),
                start=begin,
                holder=caller.subject,
                holder_organization=caller.organization,
            )
            return session_to_proto(row, fee_so_far(site, row, tx.now))

        return await idempotent(
            self.db, without_plate(request, self.pseudonyms), reservations_pb2.ParkingSession, start
        )

    async def StopSession(
        self, request: reservations_pb2.StopSessionRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.ParkingSession:
        caller = current_call().principal
        session_id = name_id(request.name, "sessions")
        async with self.db.transaction() as tx:
            row = await tx.session.get(SessionRow, session_id, with_for_update=True)
            site = await tx.session.get(SiteRow, row.site_id) if row is not None else None
            if row is None or site is None or not (holds(row, caller) or operates(site, caller)):
                raise not_found("session", request.name)
            if row.state == COMPLETED:
                return session_to_proto(row)
            end = to_datetime(request.end_time) if request.HasField("end_time") else tx.now
            if end < row.start_time:
                raise InvalidArgument.field("end_time", "must not be before the session's start_time")
            if end > tx.now + SKEW:
                raise InvalidArgument.field("end_time", "must not be in the future")
            tariff = site_tariff(site)
            try:
                fee = fees.quote(tariff, row.start_time, end, permit=row.permit or None)
            except fees.TariffError as error:
                raise _quote_error(error, {"end": "end_time"}) from None
            row.state = int(COMPLETED)
            row.end_time = end
            row.fee = json_format.MessageToDict(fee_to_proto(fee))
            if fee.overstay and not row.overstay:
                row.overstay = True
                assert tariff.maximum_stay is not None
                _overstay_event(tx, site, row, tariff.maximum_stay, end)
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            completed = session_to_proto(row)
            emit(
                tx,
                "session.completed",
                reservations_pb2.SessionChanged(session=completed),
                completed.name,
                site,
            )
            return completed

    async def GetSession(
        self, request: reservations_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.ParkingSession:
        caller = current_call().principal
        session_id = name_id(request.name, "sessions")
        async with self.db.read() as session:
            row = await session.get(SessionRow, session_id)
            site = await session.get(SiteRow, row.site_id) if row is not None else None
        if row is None or site is None or not (holds(row, caller) or operates(site, caller)):
            raise not_found("session", request.name)
        live = fee_so_far(site, row, self.db.clock.now()) if row.state == ACTIVE else None
        return session_to_proto(row, live)

    async def ListSessions(
        self, request: reservations_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.ListSessionsResponse:
        caller = current_call().principal
        statement = select(SessionRow).where(visible_rows(SessionRow, caller))
        if request.site:
            statement = statement.where(SessionRow.site_id == name_id(request.site, "sites", "site"))
        if request.state:
            statement = statement.where(SessionRow.state == request.state)
        rows, token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            SessionRow.session_id,
            size=page_size(request.page_size),
        )
        sites = await _sites(self.db, {row.site_id for row in rows if row.state == ACTIVE})
        now = self.db.clock.now()
        return reservations_pb2.ListSessionsResponse(
            sessions=[
                session_to_proto(
                    row, fee_so_far(sites[row.site_id], row, now) if row.site_id in sites else None
                )
                for row in rows
            ],
            next_page_token=token,
        )

    async def QuoteFee(
        self, request: reservations_pb2.QuoteFeeRequest, context: grpc.aio.ServicerContext
    ) -> reservations_pb2.Fee:
        site_id = name_id(request.site, "sites", "site")
        problems: Violations = []
        for field in ("start_time", "end_time"):
            if not request.HasField(field):
                problems.append((field, "is required"))
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.read() as session:
            site = await session.get(SiteRow, site_id)
        if site is None:
            raise not_found("site", request.site)
        tariff = site_tariff(site)
        try:
            fee = fees.quote(
                tariff,
                to_datetime(request.start_time),
                to_datetime(request.end_time),
                permit=request.permit or None,
            )
        except fees.TariffError as error:
            raise _quote_error(
                error, {"start": "start_time", "end": "end_time", "permit": "permit"}
            ) from None
        return fee_to_proto(fee)


async def _sites(db: Database, site_ids: Sequence[str] | set[str]) -> dict[str, SiteRow]:
    if not site_ids:
        return {}
    async with db.read() as session:
        rows = (await session.scalars(select(SiteRow).where(SiteRow.site_id.in_(sorted(site_ids))))).all()
    return {row.site_id: row for row in rows}
