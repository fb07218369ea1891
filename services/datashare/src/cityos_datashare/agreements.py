"""Agreements: the lifecycle, and who may take each step.

    (request) -> REQUESTED --approve (possibly narrowed)--> APPROVED --revoke--> REVOKED
                           \\--reject--> REJECTED             \\--expire_time passes--> EXPIRED

- A consumer organization requests a dataset for a stated purpose with the terms it needs
  (`cityos_datashare.terms`: columns, areas, a time window, an aggregation floor, an expiry). Its own
  datasets need no agreement. Repeating a request with the same `request_id` returns the same agreement.
- Only the dataset's owner organization (or a city-wide role) decides: approve, possibly on narrower
  terms (each term within the request), reject with a reason, or revoke an approved agreement with a
  reason. An approval may carry the etag the owner saw (ABORTED when the agreement changed since).
- An approved agreement ends by itself at its expire time: every read compares the time itself
  (`grants`), and the sweep (`ExpirySweep`) records the EXPIRED transition and deletes the exports.
- Every transition is a row of `agreement_transitions` (who, which organization, why, when, the terms
  after it), returned as the agreement's `history`, and an event on the service's stream
  (`datashare.agreement.<state>`) in the same transaction; the lake exporter archives the events.
- Revocation and expiry delete the agreement's exports (`on_end`), so an issued download URL stops
  working; a running Query or Export sees the change before its next batch.
- An agreement is visible to its consumer and its owner organization (and to city-wide roles); to anyone
  else it does not exist (NOT_FOUND).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import grpc
from sqlalchemy import and_, or_, select

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare.catalog import classification_of, dataset_name, parse_dataset_name
from cityos_datashare.models import AgreementRow, DatasetRow, TransitionRow
from cityos_datashare.terms import Terms
from cityos_platform.areas import AreaRegistry
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import Aborted, FailedPrecondition, InvalidArgument
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tasks import PeriodicTask
from cityos_platform.tenancy import is_city_wide, not_found

log = logging.getLogger(__name__)

REQUESTED = int(pb.AGREEMENT_STATE_REQUESTED)
APPROVED = int(pb.AGREEMENT_STATE_APPROVED)
REJECTED = int(pb.AGREEMENT_STATE_REJECTED)
REVOKED = int(pb.AGREEMENT_STATE_REVOKED)
EXPIRED = int(pb.AGREEMENT_STATE_EXPIRED)
STATE_NAMES: dict[int, str] = {int(v): pb.AgreementState.Name(v) for v in pb.AgreementState.values()}
EVENT_TYPES = {
    REQUESTED: "datashare.agreement.requested",
    APPROVED: "datashare.agreement.approved",
    REJECTED: "datashare.agreement.rejected",
    REVOKED: "datashare.agreement.revoked",
    EXPIRED: "datashare.agreement.expired",
}
SYSTEM = "system"
OnEnd = Callable[[str], Awaitable[Any]]


def new_agreement_id(now: datetime) -> str:
    """32 hex digits that sort by creation: milliseconds since the epoch, then randomness."""
    return f"{int(now.timestamp() * 1000):012x}{secrets.token_hex(10)}"


def parse_agreement_name(name: str, field: str = "name") -> str:
    prefix, _, agreement_id = name.partition("/")
    if (
        prefix != "agreements"
        or len(agreement_id) != 32
        or not all(c in "0123456789abcdef" for c in agreement_id)
    ):
        raise InvalidArgument.field(field, "must be agreements/{agreement} (32 hex digits)")
    return agreement_id


def agreement_name(agreement_id: str) -> str:
    return f"agreements/{agreement_id}"


def visible(row: AgreementRow, caller: Principal) -> bool:
    return is_city_wide(caller) or caller.organization in (row.consumer_organization, row.owner_organization)


def decides(row: AgreementRow, caller: Principal) -> bool:
    return is_city_wide(caller) or caller.organization == row.owner_organization


def agreement_proto(row: AgreementRow, history: Sequence[TransitionRow]) -> pb.Agreement:
    message = pb.Agreement(
        name=agreement_name(row.agreement_id),
        dataset=dataset_name(row.dataset_id),
        consumer_organization=row.consumer_organization,
        owner_organization=row.owner_organization,
        purpose=row.purpose,
        requested_terms=Terms.from_json(row.requested_terms).to_proto(),
        state=row.state,  # type: ignore[arg-type]
        etag=row.etag,
    )
    if row.terms is not None:
        message.terms.CopyFrom(Terms.from_json(row.terms).to_proto())
    message.create_time.FromDatetime(row.create_time)
    message.update_time.FromDatetime(row.update_time)
    for step in history:
        transition = message.history.add(
            from_state=step.from_state,
            to_state=step.to_state,
            actor=step.actor,
            actor_organization=step.actor_organization,
            reason=step.reason,
        )
        transition.time.FromDatetime(step.time)
        if step.terms is not None:
            transition.terms.CopyFrom(Terms.from_json(step.terms).to_proto())
    return message


async def _history(session: Any, agreement_id: str) -> list[TransitionRow]:
    rows = await session.scalars(
        select(TransitionRow).where(TransitionRow.agreement_id == agreement_id).order_by(TransitionRow.id)
    )
    return list(rows)


async def transition(
    tx: Tx,
    row: AgreementRow,
    to_state: int,
    *,
    actor: str,
    actor_organization: str,
    reason: str,
    terms: dict[str, Any] | None,
) -> pb.Agreement:
    """Record one state change of `row` (already locked in `tx`) with its history row and its event."""
    from_state = 0 if to_state == REQUESTED else row.state
    row.state = to_state
    row.update_time = tx.now
    row.etag = uuid.uuid4().hex
    tx.session.add(
        TransitionRow(
            agreement_id=row.agreement_id,
            from_state=from_state,
            to_state=to_state,
            actor=actor,
            actor_organization=actor_organization,
            reason=reason,
            time=tx.now,
            terms=terms,
        )
    )
    await tx.session.flush()
    message = agreement_proto(row, await _history(tx.session, row.agreement_id))
    tx.emit(
        EVENT_TYPES[to_state],
        message,
        subject=agreement_name(row.agreement_id),
        owner_organization=row.owner_organization,
    )
    return message


def _reason(reason: str, required: bool) -> str:
    text = reason.strip()
    if required and not text:
        raise InvalidArgument.field("reason", "say why (it is recorded and shown to the other party)")
    if len(text) > 2000:
        raise InvalidArgument.field("reason", "at most 2000 characters")
    return text


class AgreementServicer(datashare_pb2_grpc.AgreementServiceServicer):
    def __init__(
        self, db: Database, page_tokens: PageTokens, areas: AreaRegistry, on_end: OnEnd | None = None
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.on_end = on_end

    async def _ended(self, agreement_id: str) -> None:
        if self.on_end is not None:
            await self.on_end(agreement_id)

    async def RequestAgreement(
        self, request: pb.RequestAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.Agreement:
        wanted = request.agreement
        problems: list[tuple[str, str]] = []
        dataset_id = ""
        try:
            dataset_id = parse_dataset_name(wanted.dataset, "agreement.dataset")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        purpose = wanted.purpose.strip()
        if not 10 <= len(purpose) <= 2000:
            problems.append(("agreement.purpose", "state the purpose in 10 to 2000 characters"))
        try:
            terms = Terms.from_proto(wanted.requested_terms, "agreement.requested_terms")
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if problems:
            raise InvalidArgument.many(problems)
        caller = current_call().principal
        if not caller.organization:
            raise InvalidArgument.field("agreement.consumer_organization", "the caller has no organization")
        async with self.db.read() as session:
            dataset = await session.get(DatasetRow, dataset_id)
        if dataset is None:
            raise not_found("dataset", wanted.dataset)
        if dataset.owner_organization == caller.organization:
            raise FailedPrecondition(
                f"{caller.organization} owns {wanted.dataset}: its own data needs no agreement",
                reason="OWN_DATASET",
            )
        terms.validate(
            classification_of(dataset), self.areas, self.db.clock.now(), "agreement.requested_terms"
        )

        async def create(tx: Tx) -> pb.Agreement:
            row = AgreementRow(
                agreement_id=new_agreement_id(tx.now),
                dataset_id=dataset_id,
                consumer_organization=caller.organization,
                owner_organization=dataset.owner_organization,
                purpose=purpose,
                requested_terms=terms.to_json(),
                terms=None,
                state=REQUESTED,
                expire_time=terms.expire_time,
                requester=caller.subject,
                create_time=tx.now,
                update_time=tx.now,
                etag="",
            )
            tx.session.add(row)
            return await transition(
                tx,
                row,
                REQUESTED,
                actor=caller.subject,
                actor_organization=caller.organization,
                reason=purpose,
                terms=terms.to_json(),
            )

        return await idempotent(self.db, request, pb.Agreement, create)

    async def GetAgreement(
        self, request: pb.GetAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.Agreement:
        agreement_id = parse_agreement_name(request.name)
        caller = current_call().principal
        async with self.db.read() as session:
            row = await session.get(AgreementRow, agreement_id)
            if row is None or not visible(row, caller):
                raise not_found("agreement", request.name)
            return agreement_proto(row, await _history(session, agreement_id))

    async def ListAgreements(
        self, request: pb.ListAgreementsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAgreementsResponse:
        problems = []
        if request.page_size < 0:
            problems.append(("page_size", "must not be negative"))
        if request.state not in STATE_NAMES:
            problems.append(("state", "an AgreementState"))
        if request.role not in pb.AgreementRole.values():
            problems.append(("role", "an AgreementRole"))
        dataset_id = ""
        if request.dataset:
            try:
                dataset_id = parse_dataset_name(request.dataset, "dataset")
            except InvalidArgument as error:
                problems += [(v.field, v.description) for v in error.violations]
        if problems:
            raise InvalidArgument.many(problems)
        caller = current_call().principal
        statement = select(AgreementRow)
        mine = {
            pb.AGREEMENT_ROLE_CONSUMER: AgreementRow.consumer_organization == caller.organization,
            pb.AGREEMENT_ROLE_OWNER: AgreementRow.owner_organization == caller.organization,
        }
        if request.role:
            statement = statement.where(mine[request.role])
        elif not is_city_wide(caller):
            statement = statement.where(or_(*mine.values()))
        if request.state:
            statement = statement.where(AgreementRow.state == request.state)
        if dataset_id:
            statement = statement.where(AgreementRow.dataset_id == dataset_id)
        rows, token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            AgreementRow.agreement_id,
            size=page_size(request.page_size),
        )
        async with self.db.read() as session:
            steps = await session.scalars(
                select(TransitionRow)
                .where(TransitionRow.agreement_id.in_([row.agreement_id for row in rows]))
                .order_by(TransitionRow.id)
            )
            history: dict[str, list[TransitionRow]] = {}
            for step in steps:
                history.setdefault(step.agreement_id, []).append(step)
        return pb.ListAgreementsResponse(
            agreements=[agreement_proto(row, history.get(row.agreement_id, [])) for row in rows],
            next_page_token=token,
        )

    async def _decide(self, tx: Tx, name: str, caller: Principal) -> AgreementRow:
        agreement_id = parse_agreement_name(name)
        row = await tx.session.get(AgreementRow, agreement_id, with_for_update=True)
        if row is None or not visible(row, caller):
            raise not_found("agreement", name)
        if not decides(row, caller):
            raise FailedPrecondition(
                f"only the owner ({row.owner_organization}) decides about {name}",
                reason="NOT_DATASET_OWNER",
                metadata={"owner_organization": row.owner_organization},
            )
        return row

    @staticmethod
    def _expect(row: AgreementRow, states: Sequence[int], action: str) -> None:
        if row.state not in states:
            raise FailedPrecondition(
                f"cannot {action} an agreement that is {STATE_NAMES[row.state]}",
                reason="AGREEMENT_STATE",
                metadata={"state": STATE_NAMES[row.state]},
            )

    async def ApproveAgreement(
        self, request: pb.ApproveAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.Agreement:
        reason = _reason(request.reason, required=False)
        granted_proto = Terms.from_proto(request.terms, "terms") if request.HasField("terms") else None
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await self._decide(tx, request.name, caller)
            if request.etag and request.etag != row.etag:
                raise Aborted(
                    "the agreement changed since it was read; read it again", reason="ETAG_MISMATCH"
                )
            if row.state == APPROVED and granted_proto is None:  # a retried approval
                return agreement_proto(row, await _history(tx.session, row.agreement_id))
            self._expect(row, [REQUESTED], "approve")
            requested = Terms.from_json(row.requested_terms)
            granted = granted_proto or requested
            problems = granted.narrowing_problems(requested, "terms") if granted_proto else []
            if problems:
                raise InvalidArgument.many(problems)
            dataset = await tx.session.get(DatasetRow, row.dataset_id)
            if dataset is None:
                raise FailedPrecondition("the dataset is no longer in the catalog", reason="DATASET_GONE")
            granted.validate(classification_of(dataset), self.areas, tx.now, "terms")
            row.terms = granted.to_json()
            row.expire_time = granted.expire_time
            return await transition(
                tx,
                row,
                APPROVED,
                actor=caller.subject,
                actor_organization=caller.organization,
                reason=reason or "approved",
                terms=row.terms,
            )

    async def RejectAgreement(
        self, request: pb.RejectAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.Agreement:
        reason = _reason(request.reason, required=True)
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await self._decide(tx, request.name, caller)
            if row.state == REJECTED:
                return agreement_proto(row, await _history(tx.session, row.agreement_id))
            self._expect(row, [REQUESTED], "reject")
            return await transition(
                tx,
                row,
                REJECTED,
                actor=caller.subject,
                actor_organization=caller.organization,
                reason=reason,
                terms=None,
            )

    async def RevokeAgreement(
        self, request: pb.RevokeAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.Agreement:
        reason = _reason(request.reason, required=True)
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await self._decide(tx, request.name, caller)
            if row.state == REVOKED:
                return agreement_proto(row, await _history(tx.session, row.agreement_id))
            self._expect(row, [APPROVED], "revoke")
            message = await transition(
                tx,
                row,
                REVOKED,
                actor=caller.subject,
                actor_organization=caller.organization,
                reason=reason,
                terms=row.terms,
            )
        await self._ended(row.agreement_id)
        return message


async def expire_due(db: Database, on_end: OnEnd | None = None, limit: int = 500) -> list[str]:
    """Mark APPROVED agreements past their expire time EXPIRED (one transition each, actor `system`),
    then delete their exports; the ids."""
    now = db.clock.now()
    async with db.transaction() as tx:
        rows = list(
            await tx.session.scalars(
                select(AgreementRow)
                .where(and_(AgreementRow.state == APPROVED, AgreementRow.expire_time <= now))
                .order_by(AgreementRow.expire_time)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for row in rows:
            await transition(
                tx,
                row,
                EXPIRED,
                actor=SYSTEM,
                actor_organization="",
                reason=f"the agreement ended at {row.expire_time.isoformat()}",
                terms=row.terms,
            )
    for row in rows:
        if on_end is not None:
            await on_end(row.agreement_id)
    return [row.agreement_id for row in rows]


def expiry_sweep(db: Database, interval_s: float, on_end: OnEnd | None = None) -> PeriodicTask:
    """`expire_due` every `interval_s` (once per replica; its row locks keep replicas apart)."""

    async def step() -> None:
        expired = await expire_due(db, on_end)
        if expired:
            log.info("agreements expired: %s", ", ".join(expired))

    return PeriodicTask("datashare-expiry", interval_s, step)
