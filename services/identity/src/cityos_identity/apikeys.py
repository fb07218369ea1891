"""API keys of third-party developers: scopes and a quota, shown once, stored hashed, revocable, and
exchanged here for a short-lived token that every other service verifies locally.

A key is `cak_<key id>_<secret>`; only the SHA-256 of the whole key is kept. Its scopes are
permissions, each one the `developer` role holds in the policy table (a key can never do more than a
developer could). The token an exchange returns carries the scopes and no roles (so the runtime
admits exactly the scoped permissions), the key as subject (`apiKeys/<id>`), the key's organization,
and its quota (`cityos_quota`), which every service's runtime enforces per minute and per replica
(RESOURCE_EXHAUSTED `API_KEY_QUOTA`). Exchanges are metered (count, last use) and audited. A revoked
key is refused at once; a token it got before lives at most `CITYOS_IDENTITY_TOKEN_TTL_S` (300 s).
"""

from __future__ import annotations

import hmac

import grpc
from sqlalchemy import select

from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity import audit, domain
from cityos_identity.models import ApiKeyRow, OrganizationRow
from cityos_identity.policies import permissions
from cityos_identity.tokens import TokenMinter
from cityos_platform.auth import Principal
from cityos_platform.authz import SUPERUSER_ROLE
from cityos_platform.db import Database, Tx
from cityos_platform.errors import AlreadyExists, InvalidArgument, PermissionDenied, Unauthenticated
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import is_city_wide, not_found

MAX_SCOPES = 64


def grantable_scopes() -> set[str]:
    """The permissions a key may carry: those the developer role holds."""
    return {permission for permission, roles in permissions().items() if domain.API_KEY_ROLE in roles}


def _parse_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    if not key.startswith(domain.API_KEY_PREFIX):
        return None
    key_id, separator, secret = key[len(domain.API_KEY_PREFIX) :].partition("_")  # ids have no "_"
    if not separator or not domain.RESOURCE_ID.match(key_id) or len(secret) < 20:
        return None
    return key_id


class ApiKeyServicer(identity_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, minter: TokenMinter) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.minter = minter

    async def CreateApiKey(
        self, request: identity_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CreateApiKeyResponse:
        caller = current_call().principal
        key = request.api_key
        problems = domain.check_new_id(request.api_key_id, "api_key_id")
        problems += domain.check_display_name(key.display_name, "api_key.display_name")
        if not key.scopes:
            problems.append(("api_key.scopes", "name at least one permission"))
        elif len(key.scopes) > MAX_SCOPES:
            problems.append(("api_key.scopes", f"at most {MAX_SCOPES}"))
        grantable = grantable_scopes()
        for index, scope in enumerate(key.scopes):
            if scope not in grantable:
                problems.append(
                    (f"api_key.scopes[{index}]", f"{scope!r} is not a permission a developer holds")
                )
        if not 1 <= key.quota_per_minute <= domain.MAX_QUOTA_PER_MINUTE:
            problems.append(("api_key.quota_per_minute", f"must be 1 to {domain.MAX_QUOTA_PER_MINUTE}"))
        if not key.organization:
            problems.append(("api_key.organization", "is required"))
        if problems:
            raise InvalidArgument.many(problems)
        organization_id = domain.name_id(key.organization, "organizations", "api_key.organization")
        if organization_id != caller.organization and not caller.has_role(SUPERUSER_ROLE):
            raise PermissionDenied(
                "API keys are created for the caller's own organization", reason="OTHER_ORGANIZATION"
            )

        shown: list[str] = []  # the key, when this call (not a replay) created it

        async def create(tx: Tx) -> identity_pb2.CreateApiKeyResponse:
            if await tx.session.get(OrganizationRow, organization_id) is None:
                raise InvalidArgument.field("api_key.organization", f"{key.organization} does not exist")
            if await tx.session.get(ApiKeyRow, request.api_key_id) is not None:
                raise AlreadyExists(f"apiKeys/{request.api_key_id} already exists", reason="API_KEY_EXISTS")
            secret = f"{domain.API_KEY_PREFIX}{request.api_key_id}_{domain.new_secret()}"
            row = ApiKeyRow(
                key_id=request.api_key_id,
                display_name=key.display_name,
                organization_id=organization_id,
                scopes=sorted(set(key.scopes)),
                quota_per_minute=key.quota_per_minute,
                secret_sha256=domain.sha256(secret),
                creator=caller.subject,
                exchange_count=0,
                create_time=tx.now,
            )
            tx.session.add(row)
            audit.record(
                tx,
                identity_pb2.AUDIT_KIND_KEY_USE,
                "api_key.created",
                resource=f"apiKeys/{row.key_id}",
                details={"scopes": " ".join(row.scopes), "quota_per_minute": str(row.quota_per_minute)},
            )
            shown.append(secret)
            tx.emit(
                "identity.api_key.created",
                domain.api_key_to_proto(row),
                subject=f"apiKeys/{row.key_id}",
                owner_organization=organization_id,
            )
            # What the idempotency record keeps has no key: a replay does not show it again.
            return identity_pb2.CreateApiKeyResponse(api_key=domain.api_key_to_proto(row))

        response = await idempotent(self.db, request, identity_pb2.CreateApiKeyResponse, create)
        if shown:
            response.key = shown[0]
        return response

    def _reachable(self, row: ApiKeyRow | None, caller: Principal) -> bool:
        return row is not None and (is_city_wide(caller) or row.organization_id == caller.organization)

    async def GetApiKey(
        self, request: identity_pb2.GetApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ApiKey:
        key_id = domain.name_id(request.name, "apiKeys")
        async with self.db.read() as session:
            row = await session.get(ApiKeyRow, key_id)
        if row is None or not self._reachable(row, current_call().principal):
            raise not_found("API key", request.name)
        return domain.api_key_to_proto(row)

    async def ListApiKeys(
        self, request: identity_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListApiKeysResponse:
        caller = current_call().principal
        statement = select(ApiKeyRow)
        if not is_city_wide(caller):
            statement = statement.where(ApiKeyRow.organization_id == caller.organization)
        rows, next_token = await keyset_page(
            self.db, self.page_tokens, request, statement, ApiKeyRow.key_id, size=page_size(request.page_size)
        )
        return identity_pb2.ListApiKeysResponse(
            api_keys=[domain.api_key_to_proto(row) for row in rows], next_page_token=next_token
        )

    async def RevokeApiKey(
        self, request: identity_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ApiKey:
        key_id = domain.name_id(request.name, "apiKeys")
        async with self.db.transaction() as tx:
            row = await tx.session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None or not self._reachable(row, current_call().principal):
                raise not_found("API key", request.name)
            if row.revoke_time is None:
                row.revoke_time = tx.now
                audit.record(tx, identity_pb2.AUDIT_KIND_KEY_USE, "api_key.revoked", resource=request.name)
                tx.emit(
                    "identity.api_key.revoked",
                    domain.api_key_to_proto(row),
                    subject=request.name,
                    owner_organization=row.organization_id,
                )
            return domain.api_key_to_proto(row)

    async def ExchangeApiKey(
        self, request: identity_pb2.ExchangeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.Token:
        if not request.key:
            raise InvalidArgument.field("key", "is required")
        key_id = _parse_key(request.key)
        async with self.db.transaction() as tx:
            row = await tx.session.get(ApiKeyRow, key_id, with_for_update=True) if key_id else None
            valid = row is not None and hmac.compare_digest(row.secret_sha256, domain.sha256(request.key))
            organization = await tx.session.get(OrganizationRow, row.organization_id) if row else None
            refused = ""
            if row is None or not valid:
                refused = "API_KEY_INVALID"
            elif row.revoke_time is not None:
                refused = "API_KEY_REVOKED"
            elif organization is None or domain.organization_state(organization, tx.now) != (
                identity_pb2.ORGANIZATION_STATE_ACTIVE
            ):
                refused = "ORGANIZATION_ACCESS_ENDED"
            if row is not None and not refused:
                row.exchange_count += 1
                row.last_used_time = tx.now
            if row is not None and valid:  # a guess at someone's key id is not their key's use
                audit.record(
                    tx,
                    identity_pb2.AUDIT_KIND_KEY_USE,
                    "api_key.exchanged",
                    actor=Principal(subject=f"apiKeys/{row.key_id}", organization=row.organization_id),
                    resource=f"apiKeys/{row.key_id}",
                    outcome=refused or "OK",
                )
        if refused or row is None:
            raise Unauthenticated(
                "this API key is not valid"
                + (" any more: it was revoked" if refused == "API_KEY_REVOKED" else "")
                + (": its organization's access has ended" if refused == "ORGANIZATION_ACCESS_ENDED" else ""),
                reason=refused,
            )
        return self.minter.mint(
            f"apiKeys/{row.key_id}",
            row.organization_id,
            scopes=row.scopes,
            kind="api_key",
            client=f"apikey-{row.key_id}",
            quota_per_minute=row.quota_per_minute,
            not_after=organization.concession_end if organization is not None else None,
        )
