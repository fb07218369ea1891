"""Idempotent creates keyed by a client's `request_id` (AIP-155).

The key is scoped to the caller: (organization, subject, method, request_id). The first successful
result is stored in the same transaction as the change it made; a repeat with the same payload returns
that result without doing anything, and the same id with a different payload is refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cityos_platform.db import Database, Tx
from cityos_platform.errors import InvalidArgument
from cityos_platform.interceptor import current_call
from cityos_platform.models import IdempotencyKey

R = TypeVar("R", bound=Message)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_fingerprint(request: Message, request_id_field: str = "request_id") -> str:
    """A hash of the request without its request id (deterministic serialization)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(request_id_field)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


async def idempotent(
    db: Database,
    request: Message,
    response_type: type[R],
    create: Callable[[Tx], Awaitable[R]],
    *,
    request_id_field: str = "request_id",
) -> R:
    """Run `create` once per request id; repeats get the first result, a changed payload is refused.

    The key is scoped to the call being served: the caller's organization and subject, and the method."""
    call = current_call()
    organization, subject, method = (
        call.principal.organization,
        call.principal.subject,
        call.policy.full_method,
    )
    request_id = getattr(request, request_id_field)
    if not request_id:
        async with db.transaction() as tx:
            return await create(tx)
    if not REQUEST_ID.match(request_id):
        raise InvalidArgument.field(request_id_field, "1 to 128 letters, digits or . _ : -")
    fingerprint = request_fingerprint(request, request_id_field)
    key = (organization, subject, method, request_id)
    for _attempt in range(3):
        async with db.read() as session:
            stored = await session.get(IdempotencyKey, key)
        if stored is not None:
            return _replay(stored, fingerprint, response_type, request_id_field)
        try:
            async with db.transaction() as tx:
                await _lock_key(tx, key)  # twins of one request id run one after the other
                stored = await tx.session.get(IdempotencyKey, key)
                if stored is not None:  # a concurrent twin committed between our read and our lock
                    return _replay(stored, fingerprint, response_type, request_id_field)
                result = await create(tx)
                tx.session.add(
                    IdempotencyKey(
                        organization=organization,
                        subject=subject,
                        method=method,
                        request_id=request_id,
                        request_hash=fingerprint,
                        response=result.SerializeToString(),
                        created_at=tx.now,
                    )
                )
                return result
        except IntegrityError:
            continue  # the twin won the insert race on PostgreSQL: read its result
    raise RuntimeError("idempotency key neither stored nor readable after retries")


async def _lock_key(tx: Tx, key: tuple[str, str, str, str]) -> None:
    """On PostgreSQL, a transaction-scoped advisory lock on the key, so concurrent twins of a request
    wait for the first to commit and then replay its result, instead of racing its create (under
    READ COMMITTED the twin could otherwise see the first's new resource but not yet its key, and
    answer ALREADY_EXISTS). SQLite writers are serialized already."""
    connection = await tx.session.connection()
    if connection.dialect.name == "postgresql":
        await tx.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": "\x1f".join(key)}
        )


def _replay(stored: IdempotencyKey, fingerprint: str, response_type: type[R], field: str) -> R:
    if stored.request_hash != fingerprint:
        raise InvalidArgument.field(field, "already used for a different request; choose a new request_id")
    return response_type.FromString(stored.response)
