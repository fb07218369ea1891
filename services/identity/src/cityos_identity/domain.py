"""Names, validation and conversions of the identity resources (no I/O)."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from google.protobuf import timestamp_pb2

from cityos.common.v1 import resources_pb2
from cityos.identity.v1 import identity_pb2
from cityos_identity.models import ApiKeyRow, OrganizationRow, ServiceAccountRow, UserRow
from cityos_platform.errors import InvalidArgument

RESOURCE_ID = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,99}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[a-z]{2,24}$", re.IGNORECASE)
ROLE_NAME = re.compile(r"^[a-z][a-z-]{1,30}$")

# Roles a person may hold; `device` and `service` are kinds of caller, not people's roles.
PERSON_ROLES = frozenset(
    {"city-admin", "org-admin", "operator", "analyst", "auditor", "developer", "citizen"}
)
SERVICE_ACCOUNT_ROLES = frozenset({"service", "operator", "analyst"})
# Roles only a city-admin grants: the superuser itself, the separated auditor, and the city-wide service.
CITY_GRANTED_ROLES = frozenset({"city-admin", "auditor", "service"})
# The role whose permissions an API key's scopes are drawn from.
API_KEY_ROLE = "developer"
MAX_QUOTA_PER_MINUTE = 60_000

API_KEY_PREFIX = "cak_"
CLIENT_SECRET_BYTES = 32


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(CLIENT_SECRET_BYTES)


def name_id(name: str, collection: str, field: str = "name") -> str:
    """`organizations/transport` -> `transport`, or a field violation."""
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        raise InvalidArgument.field(
            field, f"must look like {collection}/{{id}}, the id [a-z][a-z0-9-]{{1,62}}"
        )
    return resource_id


def check_new_id(value: str, field: str) -> list[tuple[str, str]]:
    return [] if RESOURCE_ID.match(value) else [(field, "must be [a-z][a-z0-9-]{1,62}")]


def check_display_name(value: str, field: str) -> list[tuple[str, str]]:
    return [] if 1 <= len(value) <= 200 else [(field, "must be 1 to 200 characters")]


def check_roles(roles: list[str], allowed: frozenset[str], field: str) -> list[tuple[str, str]]:
    problems = []
    if len(set(roles)) != len(roles):
        problems.append((field, "lists a role twice"))
    for index, role in enumerate(roles):
        if role not in allowed:
            problems.append((f"{field}[{index}]", f"{role!r} is not one of {', '.join(sorted(allowed))}"))
    return problems


# -- conversions ------------------------------------------------------------------------------------


def organization_state(row: OrganizationRow, now: datetime) -> int:
    if row.kind != resources_pb2.ORGANIZATION_KIND_OPERATOR:
        return identity_pb2.ORGANIZATION_STATE_ACTIVE
    if row.concession_start is not None and now < row.concession_start:
        return identity_pb2.ORGANIZATION_STATE_CONCESSION_PENDING
    if row.concession_end is not None and now >= row.concession_end:
        return identity_pb2.ORGANIZATION_STATE_CONCESSION_ENDED
    return identity_pb2.ORGANIZATION_STATE_ACTIVE


def organization_to_proto(row: OrganizationRow, now: datetime) -> identity_pb2.Organization:
    organization = identity_pb2.Organization(
        name=f"organizations/{row.organization_id}",
        display_name=row.display_name,
        kind=row.kind,  # type: ignore[arg-type]
        parent=f"organizations/{row.parent_id}" if row.parent_id else "",
        state=organization_state(row, now),  # type: ignore[arg-type]
        etag=row.etag,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )
    if row.concession is not None:
        organization.concession.CopyFrom(
            identity_pb2.Concession(
                reference=row.concession.get("reference", ""),
                services=row.concession.get("services", []),
                areas=row.concession.get("areas", []),
                start_time=timestamp(row.concession_start),
                end_time=timestamp(row.concession_end),
            )
        )
    return organization


def user_to_proto(row: UserRow) -> identity_pb2.User:
    return identity_pb2.User(
        name=f"users/{row.user_id}",
        username=row.username,
        email=row.email,
        display_name=row.display_name,
        organization=f"organizations/{row.organization_id}",
        roles=sorted(row.roles),
        state=identity_pb2.USER_STATE_DISABLED if row.disabled else identity_pb2.USER_STATE_ACTIVE,
        etag=row.etag,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )


def service_account_to_proto(row: ServiceAccountRow) -> identity_pb2.ServiceAccount:
    return identity_pb2.ServiceAccount(
        name=f"serviceAccounts/{row.account_id}",
        client_id=row.client_id,
        display_name=row.display_name,
        organization=f"organizations/{row.organization_id}",
        roles=sorted(row.roles),
        disabled=row.disabled,
        create_time=timestamp(row.create_time),
    )


def api_key_to_proto(row: ApiKeyRow) -> identity_pb2.ApiKey:
    return identity_pb2.ApiKey(
        name=f"apiKeys/{row.key_id}",
        display_name=row.display_name,
        organization=f"organizations/{row.organization_id}",
        scopes=sorted(row.scopes),
        quota_per_minute=row.quota_per_minute,
        revoked=row.revoke_time is not None,
        creator=row.creator,
        create_time=timestamp(row.create_time),
        revoke_time=timestamp(row.revoke_time),
        exchange_count=row.exchange_count,
        last_used_time=timestamp(row.last_used_time),
    )
