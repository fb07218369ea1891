"""Licence plates: personal data, taken in and never given out (PRK-7).

A plate arrives on CreateReservation, StartSession and CheckIn. The service keeps it in clear only
where it must (the reservation and session rows, for an operator's disputes) and only for the configured
retention after the stay ended; everything that leaves the service — responses, events, and so the lake
that copies the events — carries the *pseudonym*: HMAC-SHA256 under the service's key of the normalised
plate, hex, cut to 32 characters (128 bits). The same plate always gives the same pseudonym (check-in
finds a reservation by it, analysts count returning vehicles by it), and without the key nobody can
compute one from a plate they guess — a plain hash of a plate could be reversed by trying every plate.

What is accepted as a plate, after normalisation (Unicode NFKC, so full-width letters and digits read
as their ASCII forms; upper-case; spaces, dashes, dots and middle dots dropped):

* 2 to 16 characters in all;
* an optional first character that is a Chinese province abbreviation (`京`, `冀`, `粤`… the 31 of
  mainland China) or `使` (embassy plates);
* then Latin letters A-Z and digits 0-9 (at least one);
* an optional last character among the special-use suffixes `学 警 挂 领 港 澳 试 超`
  (learner, police, trailer, consulate, Hong Kong and Macau crossing, test, oversize).

So `京A·12345` becomes `京A12345`, `ab-123-cd` becomes `AB123CD`; `京京123` or `A` are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import and_, or_, select, update

from cityos.parking.v1 import reservations_pb2
from cityos_parking.models import ReservationRow, SessionRow
from cityos_parking.settings import ParkingSettings
from cityos_platform.db import Database
from cityos_platform.paging import load_or_create_secret
from cityos_platform.tasks import PeriodicTask

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PREFIXES = PROVINCES + "使"
SUFFIXES = "学警挂领港澳试超"
PLATE = re.compile(rf"^[{PREFIXES}]?[A-Z0-9]+[{SUFFIXES}]?$")
# What a violation says about a bad plate (never the plate itself: an error is a response too).
PLATE_RULE = (
    "2 to 16 letters A-Z and digits (spaces, dashes and dots are dropped), optionally led by a Chinese "
    "province character such as 京 or 冀 and ended by a special-use character such as 学 or 警"
)
_DROPPED = str.maketrans("", "", " \t-.·・‧•_")
PSEUDONYM_LENGTH = 32
MIN_KEY_BYTES = 16
KEY_FILE = Path("secrets") / "plate-pseudonym.key"
RETENTION_INTERVAL_S = 3600.0
ERASE_BATCH = 1000
CreateRequest = TypeVar(
    "CreateRequest", reservations_pb2.CreateReservationRequest, reservations_pb2.StartSessionRequest
)


def normalise_plate(raw: str) -> str | None:
    """The plate in its one spelling, or None when it is not a plate (see the module docstring)."""
    plate = unicodedata.normalize("NFKC", raw).upper().translate(_DROPPED)
    if not 2 <= len(plate) <= 16 or not PLATE.match(plate):
        return None
    return plate


class PlatePseudonyms:
    """Keyed pseudonyms of plates. The key must be the same on every replica (and kept: a new key gives
    every plate a new pseudonym, so check-in would no longer find the reservations held before)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the plate pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def from_settings(cls, settings: ParkingSettings, var_dir: Path) -> PlatePseudonyms:
        """The configured key, or in the embedded mode one generated once under `<var>/secrets/` (0600)."""
        configured = settings.plate_pseudonym_key.get_secret_value().encode()
        return cls(configured or load_or_create_secret(Path(var_dir) / KEY_FILE))

    def of(self, normalised: str) -> str:
        """The pseudonym of a normalised plate (`normalise_plate` first)."""
        digest = hmac.new(self._key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_LENGTH]


def without_plate(request: CreateRequest, pseudonyms: PlatePseudonyms) -> CreateRequest:
    """A copy of a create request whose plate is replaced by its pseudonym: what the idempotency
    store fingerprints, so not even a hash of the clear plate is kept beyond the retention."""
    copy = type(request)()
    copy.CopyFrom(request)
    resource = (
        copy.reservation if isinstance(copy, reservations_pb2.CreateReservationRequest) else copy.session
    )
    plate = normalise_plate(resource.plate)
    resource.plate = pseudonyms.of(plate) if plate else ""
    return copy


async def erase_expired_plates(db: Database, retention: timedelta) -> int:
    """Set the clear plate to NULL where the reservation or session it belongs to ended more than
    `retention` ago (the pseudonym stays). A reservation ended at its window's end, or when it was
    cancelled or expired if that came first; a session when it stopped (a running one keeps its plate).
    Returns how many rows were erased; works in batches so no transaction grows without bound."""
    erased = 0
    while True:
        async with db.transaction() as tx:
            cutoff = tx.now - retention
            ended_early = (
                reservations_pb2.RESERVATION_STATE_CANCELLED,
                reservations_pb2.RESERVATION_STATE_EXPIRED,
            )
            reservations = (
                await tx.session.scalars(
                    select(ReservationRow.reservation_id)
                    .where(
                        ReservationRow.plate.is_not(None),
                        or_(
                            ReservationRow.end_time < cutoff,
                            and_(ReservationRow.state.in_(ended_early), ReservationRow.update_time < cutoff),
                        ),
                    )
                    .limit(ERASE_BATCH)
                )
            ).all()
            if reservations:
                await tx.session.execute(
                    update(ReservationRow)
                    .where(ReservationRow.reservation_id.in_(reservations))
                    .values(plate=None)
                )
            sessions = (
                await tx.session.scalars(
                    select(SessionRow.session_id)
                    .where(
                        SessionRow.plate.is_not(None),
                        SessionRow.end_time.is_not(None),
                        SessionRow.end_time < cutoff,
                    )
                    .limit(ERASE_BATCH)
                )
            ).all()
            if sessions:
                await tx.session.execute(
                    update(SessionRow).where(SessionRow.session_id.in_(sessions)).values(plate=None)
                )
        erased += len(reservations) + len(sessions)
        if len(reservations) < ERASE_BATCH and len(sessions) < ERASE_BATCH:
            return erased


class PlateRetention:
    """Runs `erase_expired_plates` every hour in the service process (`step()` runs it once)."""

    def __init__(self, db: Database, retention: timedelta, interval_s: float = RETENTION_INTERVAL_S) -> None:
        self.db, self.retention = db, retention
        self._periodic = PeriodicTask("plate retention", interval_s, self.step)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def step(self) -> int:
        return await erase_expired_plates(self.db, self.retention)
