"""The audit trail: append-only records of calls, sign-ins, role changes and API-key use.

Two sources feed it. The identity service writes its own records (role and state changes, API keys
created, exchanged and revoked, tokens issued) in the same transaction as the change. And an importer
tails the runtime's access logs — the hash-chained files every service process appends one record per
call to (`cityos_platform.accesslog`) — verifying the chain as it reads; a break (a line edited,
removed or reordered) is itself recorded, as `access_log.chain_broken`, and that file's import stops
until an operator looks. Auditors read the trail with `ListAuditRecords`; nobody else can (the policy
names only `auditor`, and city-admin does not hold it implicitly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import grpc
from sqlalchemy import select

from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity.domain import timestamp
from cityos_identity.models import AccessLogOffset, AuditRow
from cityos_platform.accesslog import GENESIS, ChainBroken, read_from
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tasks import PeriodicTask

log = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000
IMPORT_BATCH = 5000
SERVICE = "identity"


def record(
    tx: Tx,
    kind: int,
    action: str,
    *,
    actor: Principal | None = None,
    resource: str = "",
    outcome: str = "OK",
    details: Mapping[str, str] | None = None,
    subject: str = "",
    organization: str = "",
) -> None:
    """Append one record to the trail, in the transaction of the change it describes."""
    actor = actor if actor is not None else current_call().principal
    tx.session.add(
        AuditRow(
            time=tx.now,
            kind=kind,
            subject=subject or actor.subject,
            on_behalf_of=actor.on_behalf_of,
            organization=organization or actor.organization,
            service=SERVICE,
            action=action,
            resource=resource,
            outcome=outcome,
            details=dict(details or {}),
        )
    )


def _to_proto(row: AuditRow) -> identity_pb2.AuditRecord:
    return identity_pb2.AuditRecord(
        kind=row.kind,  # type: ignore[arg-type]
        time=timestamp(row.time),
        subject=row.subject,
        on_behalf_of=row.on_behalf_of,
        organization=row.organization,
        service=row.service,
        action=row.action,
        resource=row.resource,
        outcome=row.outcome,
        details=row.details,
    )


class AccessLogImporter:
    """Tails every `access-<service>.jsonl` in the audit folder into the trail, resuming where it
    stopped (the offset and chain hash per file are kept in the database)."""

    def __init__(self, db: Database, folder: Path, interval_s: float) -> None:
        self.db = db
        self.folder = folder
        self._periodic = PeriodicTask("access log import", interval_s, self.import_all)
        self.broken: set[str] = set()

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def import_all(self) -> int:
        imported = 0
        for path in sorted(self.folder.glob("access-*.jsonl")):
            if path.name not in self.broken:
                imported += await self.import_file(path)
        return imported

    async def import_file(self, path: Path) -> int:
        """Import what was appended to one file since the last time; how many records."""
        async with self.db.transaction() as tx:
            position = await tx.session.get(AccessLogOffset, path.name, with_for_update=True)
            if position is None:
                position = AccessLogOffset(file_name=path.name, offset=0, last_hash=GENESIS)
                tx.session.add(position)
            service = path.stem.removeprefix("access-")
            count = 0
            try:
                for entry, offset, digest in read_from(path, position.offset, position.last_hash):
                    tx.session.add(_call_record(entry, service))
                    position.offset, position.last_hash = offset, digest
                    count += 1
                    if count >= IMPORT_BATCH:
                        break
            except ChainBroken as error:
                self.broken.add(path.name)
                log.error("access log chain broken, import of %s stopped: %s", path.name, error)
                tx.session.add(
                    AuditRow(
                        time=tx.now,
                        kind=identity_pb2.AUDIT_KIND_CALL,
                        subject="",
                        on_behalf_of="",
                        organization="",
                        service=service,
                        action="access_log.chain_broken",
                        resource=path.name,
                        outcome="TAMPERED",
                        details={"error": str(error), "verified_up_to_byte": str(position.offset)},
                    )
                )
        return count


def _call_record(entry: Mapping[str, object], service: str) -> AuditRow:
    when = datetime.fromisoformat(str(entry["time"]))
    return AuditRow(
        time=when if when.tzinfo else when.replace(tzinfo=UTC),
        kind=identity_pb2.AUDIT_KIND_CALL,
        subject=str(entry.get("subject", "")),
        on_behalf_of=str(entry.get("on_behalf_of", "")),
        organization=str(entry.get("organization", "")),
        service=service,
        action=str(entry.get("method", "")),
        resource=str(entry.get("resource", "")),
        outcome=str(entry.get("code", "")),
        details={
            key: str(entry[key])
            for key in ("client", "trace_id", "duration_ms", "peer")
            if entry.get(key) not in (None, "")
        },
    )


class AuditServicer(identity_pb2_grpc.AuditServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens) -> None:
        self.db = db
        self.page_tokens = page_tokens

    async def ListAuditRecords(
        self, request: identity_pb2.ListAuditRecordsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListAuditRecordsResponse:
        caller = current_call().principal
        size = page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = select(AuditRow).order_by(AuditRow.seq.desc()).limit(size + 1)
        if position:
            statement = statement.where(AuditRow.seq < int(position["before"]))
        if request.kind:
            statement = statement.where(AuditRow.kind == request.kind)
        if request.subject:
            statement = statement.where(AuditRow.subject == request.subject)
        if request.HasField("start_time"):
            statement = statement.where(AuditRow.time >= request.start_time.ToDatetime(tzinfo=UTC))
        async with self.db.read() as session:
            rows = list((await session.scalars(statement)).all())
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            next_token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"before": str(rows[-1].seq)},
            )
        return identity_pb2.ListAuditRecordsResponse(
            records=[_to_proto(row) for row in rows], next_page_token=next_token
        )
