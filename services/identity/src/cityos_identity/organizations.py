"""Organizations: departments in a hierarchy, private operators under a concession, and the public.

A concession has a window. Before it starts the operator is CONCESSION_PENDING; once it ends,
CONCESSION_ENDED, and its access ends with it: tokens this service issues to its people, service
accounts and API keys never outlive the end (their `exp` is capped at it), none are issued after it,
CheckPermission denies its subjects, and the `ConcessionEnforcer` disables its people and service
accounts in the directory (Keycloak: no more sign-ins, sessions ended), recording that in the audit
trail.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import grpc
from sqlalchemy import select

from cityos.common.v1 import resources_pb2
from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity import audit, domain
from cityos_identity.directory import Directory, DirectoryUser
from cityos_identity.models import OrganizationRow, ServiceAccountRow, UserRow
from cityos_platform.areas import AreaRegistry
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import Aborted, AlreadyExists, InvalidArgument
from cityos_platform.idempotency import idempotent
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tasks import PeriodicTask
from cityos_platform.tenancy import not_found

log = logging.getLogger(__name__)

UPDATABLE = {"display_name", "parent", "concession"}
# Who the concession enforcer acts as in the audit trail.
_SYSTEM = Principal(subject="system:identity", organization="", kind="service")
KINDS = {
    resources_pb2.ORGANIZATION_KIND_DEPARTMENT,
    resources_pb2.ORGANIZATION_KIND_OPERATOR,
    resources_pb2.ORGANIZATION_KIND_PUBLIC,
}


def _concession_problems(
    organization: identity_pb2.Organization, areas: AreaRegistry, field: str
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    is_operator = organization.kind == resources_pb2.ORGANIZATION_KIND_OPERATOR
    if not organization.HasField("concession"):
        return [(field, "an operator needs its concession")] if is_operator else []
    if not is_operator:
        return [(field, "only a private operator has a concession")]
    concession = organization.concession
    if not 1 <= len(concession.reference) <= 100:
        problems.append((f"{field}.reference", "must be 1 to 100 characters"))
    if not concession.services:
        problems.append((f"{field}.services", "name at least one service the operator runs"))
    for index, area in enumerate(concession.areas):
        if area not in areas.names():
            problems.append((f"{field}.areas[{index}]", f"{area!r} is not a known area"))
    if not concession.HasField("start_time") or not concession.HasField("end_time"):
        problems.append((field, "a concession has a start_time and an end_time"))
    elif concession.end_time.ToDatetime() <= concession.start_time.ToDatetime():
        problems.append((f"{field}.end_time", "must be after start_time"))
    return problems


def _apply_concession(row: OrganizationRow, organization: identity_pb2.Organization) -> None:
    if not organization.HasField("concession"):
        row.concession = row.concession_start = row.concession_end = None
        return
    concession = organization.concession
    row.concession = {
        "reference": concession.reference,
        "services": list(concession.services),
        "areas": list(concession.areas),
    }
    row.concession_start = concession.start_time.ToDatetime(tzinfo=UTC)
    row.concession_end = concession.end_time.ToDatetime(tzinfo=UTC)
    if row.concession_end > datetime.now(UTC):
        row.access_ended_time = None  # extended: the enforcer will act again at the new end


async def _parent_problem(tx: Tx, parent: str, organization_id: str) -> list[tuple[str, str]]:
    """The parent must be an existing department, and not the organization itself or under it."""
    if not parent:
        return []
    parent_id = domain.name_id(parent, "organizations", "organization.parent")
    seen = {organization_id}
    current: str | None = parent_id
    while current is not None:
        if current in seen:
            return [("organization.parent", "would make the hierarchy a cycle")]
        seen.add(current)
        row = await tx.session.get(OrganizationRow, current)
        if row is None:
            return [("organization.parent", f"organizations/{current} does not exist")]
        if current == parent_id and row.kind != resources_pb2.ORGANIZATION_KIND_DEPARTMENT:
            return [("organization.parent", "a parent is a city department")]
        current = row.parent_id
    return []


class OrganizationServicer(identity_pb2_grpc.OrganizationServiceServicer):
    def __init__(
        self, db: Database, page_tokens: PageTokens, areas: AreaRegistry, directory: Directory
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.directory = directory

    async def CreateOrganization(
        self, request: identity_pb2.CreateOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.Organization:
        organization = request.organization
        problems = domain.check_new_id(request.organization_id, "organization_id")
        problems += domain.check_display_name(organization.display_name, "organization.display_name")
        if organization.kind not in KINDS:
            problems.append(("organization.kind", "must be DEPARTMENT, OPERATOR or PUBLIC"))
        problems += _concession_problems(organization, self.areas, "organization.concession")
        if problems:
            raise InvalidArgument.many(problems)

        async def create(tx: Tx) -> identity_pb2.Organization:
            if await tx.session.get(OrganizationRow, request.organization_id) is not None:
                raise AlreadyExists(
                    f"organizations/{request.organization_id} already exists", reason="ORGANIZATION_EXISTS"
                )
            parent_problems = await _parent_problem(tx, organization.parent, request.organization_id)
            if parent_problems:
                raise InvalidArgument.many(parent_problems)
            row = OrganizationRow(
                organization_id=request.organization_id,
                display_name=organization.display_name,
                kind=organization.kind,
                parent_id=organization.parent.partition("/")[2] or None,
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            _apply_concession(row, organization)
            tx.session.add(row)
            await tx.session.flush()
            audit.record(
                tx,
                identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                "organization.created",
                resource=f"organizations/{row.organization_id}",
            )
            await self.directory.ensure_organization(row.organization_id, row.display_name)
            created = domain.organization_to_proto(row, tx.now)
            tx.emit(
                "identity.organization.created",
                created,
                subject=created.name,
                owner_organization=row.organization_id,
            )
            return created

        return await idempotent(self.db, request, identity_pb2.Organization, create)

    async def GetOrganization(
        self, request: identity_pb2.GetOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.Organization:
        organization_id = domain.name_id(request.name, "organizations")
        async with self.db.read() as session:
            row = await session.get(OrganizationRow, organization_id)
        if row is None:
            raise not_found("organization", request.name)
        return domain.organization_to_proto(row, self.db.clock.now())

    async def ListOrganizations(
        self, request: identity_pb2.ListOrganizationsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListOrganizationsResponse:
        statement = select(OrganizationRow)
        if request.kind:
            statement = statement.where(OrganizationRow.kind == request.kind)
        if request.parent:
            parent_id = domain.name_id(request.parent, "organizations", "parent")
            statement = statement.where(OrganizationRow.parent_id == parent_id)
        rows, next_token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            OrganizationRow.organization_id,
            size=page_size(request.page_size),
        )
        now = self.db.clock.now()
        return identity_pb2.ListOrganizationsResponse(
            organizations=[domain.organization_to_proto(row, now) for row in rows], next_page_token=next_token
        )

    async def UpdateOrganization(
        self, request: identity_pb2.UpdateOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.Organization:
        organization = request.organization
        organization_id = domain.name_id(organization.name, "organizations", "organization.name")
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument.field(
                "update_mask", f"name the fields to change: {', '.join(sorted(UPDATABLE))}"
            )
        unknown = [path for path in paths if path not in UPDATABLE]
        if unknown:
            raise InvalidArgument.many(
                [
                    ("update_mask", f"{path!r} cannot be updated (updatable: {', '.join(sorted(UPDATABLE))})")
                    for path in unknown
                ]
            )
        async with self.db.transaction() as tx:
            row = await tx.session.get(OrganizationRow, organization_id, with_for_update=True)
            if row is None:
                raise not_found("organization", organization.name)
            if organization.etag and organization.etag != row.etag:
                raise Aborted(
                    "the organization changed since it was read; read it again and reapply the change",
                    reason="ETAG_MISMATCH",
                    metadata={"current_etag": row.etag},
                )
            problems: list[tuple[str, str]] = []
            if "display_name" in paths:
                problems += domain.check_display_name(organization.display_name, "organization.display_name")
            if "concession" in paths:
                candidate = identity_pb2.Organization(
                    kind=row.kind,  # type: ignore[arg-type]
                    concession=organization.concession,
                )
                if not organization.HasField("concession"):
                    candidate.ClearField("concession")
                problems += _concession_problems(candidate, self.areas, "organization.concession")
            if "parent" in paths:
                problems += await _parent_problem(tx, organization.parent, organization_id)
            if problems:
                raise InvalidArgument.many(problems)
            before = domain.organization_to_proto(row, tx.now)
            if "display_name" in paths:
                row.display_name = organization.display_name
            if "parent" in paths:
                row.parent_id = organization.parent.partition("/")[2] or None
            if "concession" in paths:
                _apply_concession(row, organization)
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            after = domain.organization_to_proto(row, tx.now)
            details = {"fields": ",".join(sorted(paths))}
            if "concession" in paths:
                details["concession_end_before"] = (
                    before.concession.end_time.ToJsonString() if before.HasField("concession") else ""
                )
                details["concession_end_after"] = (
                    after.concession.end_time.ToJsonString() if after.HasField("concession") else ""
                )
            audit.record(
                tx,
                identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                "organization.updated",
                resource=organization.name,
                details=details,
            )
            tx.emit(
                "identity.organization.updated", after, subject=after.name, owner_organization=organization_id
            )
        await self.directory.ensure_organization(row.organization_id, row.display_name)
        return after


class ConcessionEnforcer:
    """Ends the access of operators whose concession has ended: disables their people and service
    accounts in the directory and records it. Runs periodically; each ended concession once."""

    def __init__(self, db: Database, directory: Directory, interval_s: float) -> None:
        self.db = db
        self.directory = directory
        self._periodic = PeriodicTask("concession enforcement", interval_s, self.enforce)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def enforce(self) -> list[str]:
        """The organizations whose access was ended now."""
        now = self.db.clock.now()
        async with self.db.read() as session:
            due = list(
                (
                    await session.scalars(
                        select(OrganizationRow.organization_id).where(
                            OrganizationRow.concession_end <= now, OrganizationRow.access_ended_time.is_(None)
                        )
                    )
                ).all()
            )
        ended = []
        for organization_id in due:
            async with self.db.transaction() as tx:
                row = await tx.session.get(OrganizationRow, organization_id, with_for_update=True)
                if row is None or row.access_ended_time is not None or row.concession_end is None:
                    continue
                if row.concession_end > tx.now:
                    continue
                users = list(
                    (
                        await tx.session.scalars(
                            select(UserRow).where(UserRow.organization_id == organization_id)
                        )
                    ).all()
                )
                accounts = list(
                    (
                        await tx.session.scalars(
                            select(ServiceAccountRow).where(
                                ServiceAccountRow.organization_id == organization_id
                            )
                        )
                    ).all()
                )
                for user in users:
                    await self.directory.ensure_user(
                        DirectoryUser(
                            user.user_id,
                            user.username,
                            user.email,
                            user.display_name,
                            organization_id,
                            frozenset(user.roles),
                            enabled=False,
                        )
                    )
                for account in accounts:
                    await self.directory.set_service_account_enabled(account.client_id, False)
                row.access_ended_time = tx.now
                tx.emit(
                    "identity.organization.access_ended",
                    domain.organization_to_proto(row, tx.now),
                    subject=f"organizations/{organization_id}",
                    owner_organization=organization_id,
                )
                audit.record(
                    tx,
                    identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                    "organization.access_ended",
                    actor=_SYSTEM,
                    resource=f"organizations/{organization_id}",
                    details={
                        "reason": "concession ended",
                        "people_disabled": str(len(users)),
                        "service_accounts_disabled": str(len(accounts)),
                    },
                    organization=organization_id,
                )
            ended.append(organization_id)
            log.info("concession of organizations/%s ended: its access is ended", organization_id)
        return ended
