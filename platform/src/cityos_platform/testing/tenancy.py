"""The cross-service tenancy check (IDN-2): what each service shows it, and how it is run.

Every service registers, beside its `cityos.services` entry point, a `cityos.tenancy` entry point of
the same name naming a `TenancyExamples`: how to seed resources of one organization through the API,
and for each of its RPCs a request about those resources — or the reason organization scoping does not
apply to that RPC (a city-wide catalog, a device speaking as itself, city-admin only…). The check
(tests/test_tenancy.py) starts every installed service, seeds organization B's resources as B, and
calls every RPC as a user of organization A holding every role the RPC's policy names (the city-wide
ones aside): a call about B's resources must be refused (NOT_FOUND or PERMISSION_DENIED), a listing
must answer without any of B's resources — and, as a control, the same call as B must succeed (and a
listing must then differ). An RPC with neither an example nor a stated reason fails the check, and so
does a service without examples, so new services and new RPCs are covered by themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

# `token(organization, roles)`: call metadata of a person of that organization with those roles.
TokenFor = Callable[[str, Sequence[str]], tuple[tuple[str, str], ...]]


@dataclass
class TenancyCase:
    """Organization B's resources as a service's seed made them, and the requests about them."""

    # Full method -> a request about B's resources, in the order the check calls them (put the ones
    # that end a resource, such as a decommission, last).
    requests: dict[str, Message] = field(default_factory=dict)
    # Methods whose answer is a listing or a summary: A's call succeeds but shows nothing of B's.
    listings: set[str] = field(default_factory=set)
    # Text that must not appear in A's answers (B's resource names and ids).
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TenancyExamples:
    # Seeds B's resources (through `channel`, as B via `token`) and returns the requests about them.
    seed: Callable[[grpc.aio.Channel, TokenFor, str], Awaitable[TenancyCase]]
    # Full method -> why organization scoping does not apply to it.
    exempt: Mapping[str, str] = field(default_factory=dict)
