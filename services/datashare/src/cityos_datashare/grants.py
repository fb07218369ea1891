"""The agreements in force: what every read (Query, Export, the NGSI-LD API) asks before it returns a
row. A grant is an APPROVED agreement before its expire time; the expiry sweep records EXPIRED later,
but a read never waits for it: it compares the time itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.models import AgreementRow
from cityos_datashare.terms import Grant, Terms
from cityos_platform.areas import AreaRegistry
from cityos_platform.db import Database

APPROVED = int(pb.AGREEMENT_STATE_APPROVED)


def grant_of(row: AgreementRow, areas: AreaRegistry) -> Grant:
    assert row.terms is not None
    return Grant(
        agreement_id=row.agreement_id,
        dataset_id=row.dataset_id,
        owner_organization=row.owner_organization,
        consumer_organization=row.consumer_organization,
        purpose=row.purpose,
        terms=Terms.from_json(row.terms),
    ).with_cells(areas)


def in_force(row: AgreementRow | None, now: datetime) -> bool:
    return row is not None and row.state == APPROVED and row.terms is not None and now < row.expire_time


async def grant_by_id(db: Database, agreement_id: str, areas: AreaRegistry) -> Grant | None:
    """The agreement as a grant if it is in force now (re-read on every batch of a stream)."""
    async with db.read() as session:
        row = await session.get(AgreementRow, agreement_id)
    return grant_of(row, areas) if row is not None and in_force(row, db.clock.now()) else None


async def grants_for(
    db: Database, consumer_organization: str, dataset_id: str, areas: AreaRegistry
) -> list[Grant]:
    """Every agreement in force by which `consumer_organization` reads `dataset_id`."""
    if not consumer_organization:
        return []
    now = db.clock.now()
    async with db.read() as session:
        rows = await session.scalars(
            select(AgreementRow).where(
                AgreementRow.consumer_organization == consumer_organization,
                AgreementRow.dataset_id == dataset_id,
                AgreementRow.state == APPROVED,
                AgreementRow.expire_time > now,
            )
        )
        return [grant_of(row, areas) for row in rows]
