"""Tenancy: which organizations' resources a caller may reach.

Every resource has an owner organization and may have an operator and a maintainer from other
organizations (`models.OwnedMixin`). A caller reaches a resource when its organization is one of the
three; a caller may change it when it is the owner or the operator. Roles in `CITY_WIDE_ROLES` reach
everything. A resource the caller may not reach does not exist for it: NOT_FOUND, with the same message
as for a name that exists nowhere, so nothing leaks.

Data-sharing agreements (the datashare service) grant more, per dataset and purpose, at read time.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from sqlalchemy import ColumnElement, false, or_, true

from cityos_platform.errors import NotFound, PermissionDenied

# Roles whose holders act city-wide: the city administration and the platform's own services.
CITY_WIDE_ROLES = frozenset({"city-admin", "service"})


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"


class Caller(Protocol):
    @property
    def organization(self) -> str: ...

    @property
    def roles(self) -> frozenset[str]: ...


def is_city_wide(caller: Caller) -> bool:
    return bool(caller.roles & CITY_WIDE_ROLES)


def visible_clause(model: Any, caller: Caller, access: Access = Access.READ) -> ColumnElement[bool]:
    """A WHERE clause selecting the rows of `model` (an OwnedMixin model) the caller may reach."""
    if is_city_wide(caller):
        return true()
    if not caller.organization:
        return false()
    clauses = [
        model.owner_organization == caller.organization,
        model.operator_organization == caller.organization,
    ]
    if access is Access.READ:
        clauses.append(model.maintainer_organization == caller.organization)
    return or_(*clauses)


def can_reach(row: Any, caller: Caller, access: Access = Access.READ) -> bool:
    """The same rule as `visible_clause`, for a row already loaded."""
    if is_city_wide(caller):
        return True
    if not caller.organization:
        return False
    organizations = {row.owner_organization, row.operator_organization}
    if access is Access.READ:
        organizations.add(row.maintainer_organization)
    return caller.organization in organizations


def not_found(kind: str, name: str) -> NotFound:
    """The one error for "missing" and "not yours", so existence never leaks across organizations."""
    return NotFound(f"{kind} {name!r} not found", reason=f"{kind.upper()}_NOT_FOUND", metadata={"name": name})


def owner_for_new(caller: Caller, requested_owner: str) -> str:
    """The owner organization of a resource the caller creates: its own, unless it acts city-wide."""
    if not requested_owner or requested_owner == caller.organization:
        if not caller.organization:
            raise PermissionDenied(
                "a caller with no organization cannot own resources", reason="NO_ORGANIZATION"
            )
        return caller.organization
    if is_city_wide(caller):
        return requested_owner
    raise PermissionDenied(
        "only city-wide roles may create resources owned by another organization",
        reason="FOREIGN_OWNER",
        metadata={"requested_owner": requested_owner},
    )
