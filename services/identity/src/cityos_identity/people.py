"""People (users) and service accounts, and the embedded client-credentials grant.

An org-admin manages the people and service accounts of their own organization and grants roles below
city-admin; the city-wide and separated roles (`city-admin`, `auditor`, `service`) are granted by a
city-admin only. Every role or state change is mirrored into the directory and audited.
"""

from __future__ import annotations

import hmac
import uuid

import grpc
from sqlalchemy import select

from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity import audit, domain
from cityos_identity.directory import Directory, DirectoryServiceAccount, DirectoryUser
from cityos_identity.models import OrganizationRow, ServiceAccountRow, UserRow
from cityos_identity.tokens import TokenMinter
from cityos_platform.auth import Principal
from cityos_platform.authz import SUPERUSER_ROLE
from cityos_platform.db import Database, Tx
from cityos_platform.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import is_city_wide, not_found

USER_UPDATABLE = {"display_name", "email", "roles"}


def _may_manage(caller: Principal, organization_id: str) -> bool:
    return caller.has_role(SUPERUSER_ROLE) or (
        caller.has_role("org-admin") and caller.organization == organization_id
    )


def _check_grant(caller: Principal, roles: list[str], field: str) -> None:
    reserved = sorted(set(roles) & domain.CITY_GRANTED_ROLES)
    if reserved and not caller.has_role(SUPERUSER_ROLE):
        raise PermissionDenied(
            f"only a city-admin grants {', '.join(reserved)}",
            reason="ROLE_NOT_GRANTABLE",
            metadata={"field": field, "roles": ",".join(reserved)},
        )


async def _organization(tx: Tx, organization_name: str, field: str) -> OrganizationRow:
    organization_id = domain.name_id(organization_name, "organizations", field)
    row = await tx.session.get(OrganizationRow, organization_id)
    if row is None:
        raise InvalidArgument.field(field, f"{organization_name} does not exist")
    return row


def _directory_user(row: UserRow) -> DirectoryUser:
    return DirectoryUser(
        user_id=row.user_id,
        username=row.username,
        email=row.email,
        display_name=row.display_name,
        organization=row.organization_id,
        roles=frozenset(row.roles),
        enabled=not row.disabled,
    )


class UserServicer(identity_pb2_grpc.UserServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, directory: Directory) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.directory = directory

    async def CreateUser(
        self, request: identity_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.User:
        caller = current_call().principal
        user = request.user
        problems = domain.check_new_id(request.user_id, "user_id")
        if not domain.USERNAME.match(user.username):
            problems.append(
                ("user.username", "must be 2 to 100 of [a-z0-9._@-], starting with a letter or digit")
            )
        if not domain.EMAIL.match(user.email):
            problems.append(("user.email", "must be an email address"))
        problems += domain.check_display_name(user.display_name, "user.display_name")
        problems += domain.check_roles(list(user.roles), domain.PERSON_ROLES, "user.roles")
        if not user.organization:
            problems.append(("user.organization", "is required"))
        if problems:
            raise InvalidArgument.many(problems)
        organization_id = domain.name_id(user.organization, "organizations", "user.organization")
        if not _may_manage(caller, organization_id):
            raise PermissionDenied(
                "an org-admin manages the people of their own organization only", reason="OTHER_ORGANIZATION"
            )
        _check_grant(caller, list(user.roles), "user.roles")

        async def create(tx: Tx) -> identity_pb2.User:
            await _organization(tx, user.organization, "user.organization")
            if await tx.session.get(UserRow, request.user_id) is not None:
                raise AlreadyExists(f"users/{request.user_id} already exists", reason="USER_EXISTS")
            taken = await tx.session.scalar(select(UserRow.user_id).where(UserRow.username == user.username))
            if taken is not None:
                raise AlreadyExists(f"the username {user.username!r} is taken", reason="USERNAME_TAKEN")
            row = UserRow(
                user_id=request.user_id,
                username=user.username,
                email=user.email,
                display_name=user.display_name,
                organization_id=organization_id,
                roles=sorted(set(user.roles)),
                disabled=False,
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            audit.record(
                tx,
                identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                "user.created",
                resource=f"users/{row.user_id}",
                details={"roles": ",".join(row.roles), "organization": organization_id},
            )
            await self.directory.ensure_user(_directory_user(row))
            created = domain.user_to_proto(row)
            tx.emit(
                "identity.user.created", created, subject=created.name, owner_organization=organization_id
            )
            return created

        return await idempotent(self.db, request, identity_pb2.User, create)

    async def _visible(self, name: str) -> UserRow:
        caller = current_call().principal
        user_id = domain.name_id(name, "users")
        async with self.db.read() as session:
            row = await session.get(UserRow, user_id)
        if row is None or not (is_city_wide(caller) or row.organization_id == caller.organization):
            raise not_found("user", name)
        return row

    async def GetUser(
        self, request: identity_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.User:
        return domain.user_to_proto(await self._visible(request.name))

    async def ListUsers(
        self, request: identity_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListUsersResponse:
        caller = current_call().principal
        statement = select(UserRow)
        if not is_city_wide(caller):
            statement = statement.where(UserRow.organization_id == caller.organization)
        if request.organization:
            organization_id = domain.name_id(request.organization, "organizations", "organization")
            statement = statement.where(UserRow.organization_id == organization_id)
        rows, next_token = await keyset_page(
            self.db, self.page_tokens, request, statement, UserRow.user_id, size=page_size(request.page_size)
        )
        if request.role:  # roles are a JSON list: filtered here (a page may come out short)
            rows = [row for row in rows if request.role in row.roles]
        return identity_pb2.ListUsersResponse(
            users=[domain.user_to_proto(row) for row in rows], next_page_token=next_token
        )

    async def UpdateUser(
        self, request: identity_pb2.UpdateUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.User:
        caller = current_call().principal
        user = request.user
        user_id = domain.name_id(user.name, "users", "user.name")
        paths = list(request.update_mask.paths)
        unknown = [path for path in paths if path not in USER_UPDATABLE]
        if not paths or unknown:
            raise InvalidArgument.field(
                "update_mask", f"name the fields to change among {', '.join(sorted(USER_UPDATABLE))}"
            )
        problems: list[tuple[str, str]] = []
        if "display_name" in paths:
            problems += domain.check_display_name(user.display_name, "user.display_name")
        if "email" in paths and not domain.EMAIL.match(user.email):
            problems.append(("user.email", "must be an email address"))
        if "roles" in paths:
            problems += domain.check_roles(list(user.roles), domain.PERSON_ROLES, "user.roles")
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await tx.session.get(UserRow, user_id, with_for_update=True)
            if row is None or not (is_city_wide(caller) or row.organization_id == caller.organization):
                raise not_found("user", user.name)
            if not _may_manage(caller, row.organization_id):
                raise PermissionDenied("an org-admin manages the people of their own organization only")
            if user.etag and user.etag != row.etag:
                raise Aborted(
                    "the user changed since it was read; read it again and reapply the change",
                    reason="ETAG_MISMATCH",
                    metadata={"current_etag": row.etag},
                )
            if "roles" in paths:
                changed = set(user.roles) ^ set(row.roles)
                _check_grant(caller, sorted(changed), "user.roles")  # granting or taking away
                before = ",".join(row.roles)
                row.roles = sorted(set(user.roles))
                audit.record(
                    tx,
                    identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                    "user.roles_changed",
                    resource=user.name,
                    details={"before": before, "after": ",".join(row.roles)},
                )
            if "display_name" in paths:
                row.display_name = user.display_name
            if "email" in paths:
                row.email = user.email
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            await self.directory.ensure_user(_directory_user(row))
            updated = domain.user_to_proto(row)
            tx.emit(
                "identity.user.updated", updated, subject=updated.name, owner_organization=row.organization_id
            )
            return updated

    async def _set_disabled(self, name: str, disabled: bool) -> identity_pb2.User:
        caller = current_call().principal
        user_id = domain.name_id(name, "users")
        async with self.db.transaction() as tx:
            row = await tx.session.get(UserRow, user_id, with_for_update=True)
            if row is None or not (is_city_wide(caller) or row.organization_id == caller.organization):
                raise not_found("user", name)
            if not _may_manage(caller, row.organization_id):
                raise PermissionDenied("an org-admin manages the people of their own organization only")
            if row.disabled != disabled:
                row.disabled = disabled
                row.etag = uuid.uuid4().hex[:16]
                row.update_time = tx.now
                audit.record(
                    tx,
                    identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                    "user.disabled" if disabled else "user.enabled",
                    resource=name,
                )
                await self.directory.set_user_enabled(row.user_id, not disabled)
                tx.emit(
                    "identity.user.disabled" if disabled else "identity.user.enabled",
                    domain.user_to_proto(row),
                    subject=name,
                    owner_organization=row.organization_id,
                )
            return domain.user_to_proto(row)

    async def DisableUser(
        self, request: identity_pb2.DisableUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.User:
        return await self._set_disabled(request.name, True)

    async def EnableUser(
        self, request: identity_pb2.EnableUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.User:
        return await self._set_disabled(request.name, False)


class ServiceAccountServicer(identity_pb2_grpc.ServiceAccountServiceServicer):
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        directory: Directory,
        minter: TokenMinter | None,
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.directory = directory
        self.minter = minter  # None: Keycloak issues service-account tokens (production)

    async def CreateServiceAccount(
        self, request: identity_pb2.CreateServiceAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CreateServiceAccountResponse:
        caller = current_call().principal
        account = request.service_account
        problems = domain.check_new_id(request.service_account_id, "service_account_id")
        problems += domain.check_display_name(account.display_name, "service_account.display_name")
        problems += domain.check_roles(
            list(account.roles), domain.SERVICE_ACCOUNT_ROLES, "service_account.roles"
        )
        if not account.organization:
            problems.append(("service_account.organization", "is required"))
        if problems:
            raise InvalidArgument.many(problems)
        organization_id = domain.name_id(
            account.organization, "organizations", "service_account.organization"
        )
        if not _may_manage(caller, organization_id):
            raise PermissionDenied(
                "an org-admin manages the service accounts of their own organization only",
                reason="OTHER_ORGANIZATION",
            )
        _check_grant(caller, list(account.roles), "service_account.roles")

        shown: list[str] = []  # the secret, when this call (not a replay) created the account

        async def create(tx: Tx) -> identity_pb2.CreateServiceAccountResponse:
            await _organization(tx, account.organization, "service_account.organization")
            if await tx.session.get(ServiceAccountRow, request.service_account_id) is not None:
                raise AlreadyExists(
                    f"serviceAccounts/{request.service_account_id} already exists",
                    reason="SERVICE_ACCOUNT_EXISTS",
                )
            secret = domain.new_secret()
            row = ServiceAccountRow(
                account_id=request.service_account_id,
                client_id=f"sa-{request.service_account_id}",
                display_name=account.display_name,
                organization_id=organization_id,
                roles=sorted(set(account.roles)),
                secret_sha256=domain.sha256(secret),
                disabled=False,
                create_time=tx.now,
            )
            tx.session.add(row)
            audit.record(
                tx,
                identity_pb2.AUDIT_KIND_ROLE_CHANGE,
                "service_account.created",
                resource=f"serviceAccounts/{row.account_id}",
                details={"roles": ",".join(row.roles), "organization": organization_id},
            )
            await self.directory.ensure_service_account(
                DirectoryServiceAccount(row.client_id, organization_id, frozenset(row.roles)), secret
            )
            shown.append(secret)
            tx.emit(
                "identity.service_account.created",
                domain.service_account_to_proto(row),
                subject=f"serviceAccounts/{row.account_id}",
                owner_organization=organization_id,
            )
            # What the idempotency record keeps has no secret: a replay does not show it again.
            return identity_pb2.CreateServiceAccountResponse(
                service_account=domain.service_account_to_proto(row)
            )

        response = await idempotent(self.db, request, identity_pb2.CreateServiceAccountResponse, create)
        if shown:
            response.client_secret = shown[0]
        return response

    async def _visible(self, name: str) -> ServiceAccountRow:
        caller = current_call().principal
        account_id = domain.name_id(name, "serviceAccounts")
        async with self.db.read() as session:
            row = await session.get(ServiceAccountRow, account_id)
        if row is None or not (is_city_wide(caller) or row.organization_id == caller.organization):
            raise not_found("service account", name)
        return row

    async def GetServiceAccount(
        self, request: identity_pb2.GetServiceAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ServiceAccount:
        return domain.service_account_to_proto(await self._visible(request.name))

    async def ListServiceAccounts(
        self, request: identity_pb2.ListServiceAccountsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListServiceAccountsResponse:
        caller = current_call().principal
        statement = select(ServiceAccountRow)
        if not is_city_wide(caller):
            statement = statement.where(ServiceAccountRow.organization_id == caller.organization)
        rows, next_token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            ServiceAccountRow.account_id,
            size=page_size(request.page_size),
        )
        return identity_pb2.ListServiceAccountsResponse(
            service_accounts=[domain.service_account_to_proto(row) for row in rows],
            next_page_token=next_token,
        )

    async def DisableServiceAccount(
        self, request: identity_pb2.DisableServiceAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ServiceAccount:
        caller = current_call().principal
        account_id = domain.name_id(request.name, "serviceAccounts")
        async with self.db.transaction() as tx:
            row = await tx.session.get(ServiceAccountRow, account_id, with_for_update=True)
            if row is None or not (is_city_wide(caller) or row.organization_id == caller.organization):
                raise not_found("service account", request.name)
            if not _may_manage(caller, row.organization_id):
                raise PermissionDenied("an org-admin manages their own organization's service accounts only")
            if not row.disabled:
                row.disabled = True
                audit.record(
                    tx, identity_pb2.AUDIT_KIND_ROLE_CHANGE, "service_account.disabled", resource=request.name
                )
                await self.directory.set_service_account_enabled(row.client_id, False)
                tx.emit(
                    "identity.service_account.disabled",
                    domain.service_account_to_proto(row),
                    subject=request.name,
                    owner_organization=row.organization_id,
                )
            return domain.service_account_to_proto(row)

    async def IssueServiceToken(
        self, request: identity_pb2.IssueServiceTokenRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.Token:
        if self.minter is None:
            raise FailedPrecondition(
                "service accounts get their tokens from Keycloak's token endpoint (client credentials)",
                reason="USE_KEYCLOAK",
            )
        if not request.client_id or not request.client_secret:
            raise InvalidArgument.many(
                [(f, "is required") for f in ("client_id", "client_secret") if not getattr(request, f)]
            )
        if request.on_behalf_of:
            domain.name_id(request.on_behalf_of, "users", "on_behalf_of")
        async with self.db.transaction() as tx:
            row = await tx.session.scalar(
                select(ServiceAccountRow).where(ServiceAccountRow.client_id == request.client_id)
            )
            valid = row is not None and hmac.compare_digest(
                row.secret_sha256, domain.sha256(request.client_secret)
            )
            organization = await tx.session.get(OrganizationRow, row.organization_id) if row else None
            refused = ""
            if row is None or not valid:
                refused = "CLIENT_CREDENTIALS_INVALID"
            elif row.disabled:
                refused = "SERVICE_ACCOUNT_DISABLED"
            elif organization is not None and domain.organization_state(organization, tx.now) != (
                identity_pb2.ORGANIZATION_STATE_ACTIVE
            ):
                refused = "ORGANIZATION_ACCESS_ENDED"
            subject = f"serviceAccounts/{row.account_id}" if row is not None else request.client_id
            audit.record(
                tx,
                identity_pb2.AUDIT_KIND_SIGN_IN,
                "service_account.token_issued",
                actor=Principal(
                    subject=subject,
                    organization=row.organization_id if row else "",
                    kind="service",
                    on_behalf_of=request.on_behalf_of,
                ),
                resource=subject,
                outcome=refused or "OK",
            )
        if refused or row is None:
            # One answer for a wrong id, a wrong secret, a disabled account or an ended concession.
            raise Unauthenticated(
                "these client credentials are not valid", reason="CLIENT_CREDENTIALS_INVALID"
            )
        assert self.minter is not None
        return self.minter.mint(
            subject,
            row.organization_id,
            roles=row.roles,
            kind="service",
            client=row.client_id,
            on_behalf_of=request.on_behalf_of,
            not_after=organization.concession_end if organization is not None else None,
        )
