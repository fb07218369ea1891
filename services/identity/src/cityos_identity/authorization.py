"""Authorization in one place: `CheckPermission` over the city's policy table and the subject's
current state, and `ListPolicies`, the table itself (what every service's runtime enforces).

The rules are the runtime's (`cityos_platform.authz`, `cityos_platform.tenancy`) applied to a subject
this service knows rather than to a token: a role listed by the permission's RPCs grants it
(`city-admin` holds every permission except the auditors' alone); an API key holds its scopes and
nothing else; a disabled person or service account, a revoked key, or an organization whose
concession has not started or has ended holds nothing; and a resource of another organization is
reachable only with a city-wide role. A caller without a city-wide role asks about the subjects of its
own organization only.
"""

from __future__ import annotations

import grpc

from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity import domain
from cityos_identity.models import ApiKeyRow, OrganizationRow, ServiceAccountRow, UserRow
from cityos_identity.policies import permissions, policy_table
from cityos_platform.authz import SEPARATED_ROLES, SUPERUSER_ROLE
from cityos_platform.db import Database
from cityos_platform.errors import InvalidArgument
from cityos_platform.interceptor import current_call
from cityos_platform.tenancy import CITY_WIDE_ROLES, is_city_wide, not_found

SUBJECT_KINDS: dict[str, type[UserRow | ServiceAccountRow | ApiKeyRow]] = {
    "users": UserRow,
    "serviceAccounts": ServiceAccountRow,
    "apiKeys": ApiKeyRow,
}


def _denied(reason: str) -> identity_pb2.CheckPermissionResponse:
    return identity_pb2.CheckPermissionResponse(allowed=False, reason=reason)


class AuthorizationServicer(identity_pb2_grpc.AuthorizationServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def CheckPermission(
        self, request: identity_pb2.CheckPermissionRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CheckPermissionResponse:
        collection, _, subject_id = request.subject.partition("/")
        problems: list[tuple[str, str]] = []
        if collection not in SUBJECT_KINDS or not domain.RESOURCE_ID.match(subject_id):
            problems.append(("subject", "must be users/{id}, serviceAccounts/{id} or apiKeys/{id}"))
        table = permissions()
        if request.permission not in table:
            problems.append(("permission", f"{request.permission!r} is not a permission of any CityOS API"))
        resource_organization = ""
        if request.resource_organization:
            resource_organization = domain.name_id(
                request.resource_organization, "organizations", "resource_organization"
            )
        if problems:
            raise InvalidArgument.many(problems)
        holders = set(table[request.permission])
        async with self.db.read() as session:
            row: UserRow | ServiceAccountRow | ApiKeyRow | None = await session.get(
                SUBJECT_KINDS[collection], subject_id
            )
            organization = (
                await session.get(OrganizationRow, row.organization_id) if row is not None else None
            )
        caller = current_call().principal
        if (
            row is None
            or organization is None
            or not (is_city_wide(caller) or row.organization_id == caller.organization)
        ):
            # Another organization's subjects are as unknown as missing ones.
            raise not_found(collection.rstrip("s"), request.subject)
        now = self.db.clock.now()
        if domain.organization_state(organization, now) != identity_pb2.ORGANIZATION_STATE_ACTIVE:
            return _denied(f"organizations/{organization.organization_id} has no access (its concession)")
        if isinstance(row, ApiKeyRow):
            if row.revoke_time is not None:
                return _denied("the API key is revoked")
            if request.permission not in row.scopes:
                return _denied("the permission is not among the API key's scopes")
            roles: set[str] = set()
            granted = ["scope"]
        else:
            if row.disabled:
                return _denied(f"{request.subject} is disabled")
            roles = set(row.roles)
            granted = sorted(roles & holders)
            if not granted and SUPERUSER_ROLE in roles and not holders <= SEPARATED_ROLES:
                granted = [SUPERUSER_ROLE]
            if not granted:
                return _denied(
                    f"none of the subject's roles holds it (held by: {', '.join(sorted(holders))})"
                )
        if (
            resource_organization
            and resource_organization != row.organization_id
            and not roles & CITY_WIDE_ROLES
        ):
            return _denied("the resource belongs to another organization")
        return identity_pb2.CheckPermissionResponse(
            allowed=True, reason="granted by " + ", ".join(granted), granted_by=granted
        )

    async def ListPolicies(
        self, request: identity_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListPoliciesResponse:
        entries = [
            identity_pb2.PolicyEntry(
                method=policy.full_method,
                permission=policy.permission,
                roles=policy.roles,
                public=policy.public,
                idempotent=policy.idempotent,
                resource_field=policy.resource_field,
                max_request_bytes=policy.max_request_bytes,
            )
            for policy in policy_table().values()
            if not request.service or policy.service == request.service
        ]
        if request.service and not entries:
            raise InvalidArgument.field("service", f"{request.service!r} is not a CityOS API service")
        return identity_pb2.ListPoliciesResponse(policies=sorted(entries, key=lambda entry: entry.method))
