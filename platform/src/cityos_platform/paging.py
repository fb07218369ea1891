"""Pagination: page sizes and opaque, tamper-evident page tokens bound to the caller and the query.

A token carries the position after the last item of the page (the keyset of the ordering), the caller's
subject and organization, a fingerprint of the query (the request without page_size and page_token),
and an expiry, under an HMAC-SHA256 with the service's page-token secret. A token that was altered,
issued to another caller, or issued for another query is refused as INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.errors import InvalidArgument
from cityos_platform.interceptor import current_call

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import InstrumentedAttribute

    from cityos_platform.db import Database

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
TOKEN_TTL_S = 24 * 3600


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """AIP-158: 0 means the default, larger than the maximum is capped, negative is an error."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


def query_fingerprint(request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    for field in ("page_size", "page_token"):
        if field in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(field)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: Path) -> bytes:
    """The embedded mode's page-token secret: created once under var/, shared by every local service."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    path.touch(mode=0o600)
    path.write_bytes(secret)
    return secret


class PageTokens:
    def __init__(self, secret: bytes, *, clock: Clock = SYSTEM_CLOCK, ttl_s: int = TOKEN_TTL_S) -> None:
        if len(secret) < 16:
            raise ValueError("the page-token secret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock
        self._ttl_s = ttl_s

    def issue(self, *, subject: str, organization: str, request: Message, position: dict[str, Any]) -> str:
        body = {
            "p": position,
            "s": subject,
            "o": organization,
            "q": query_fingerprint(request),
            "e": int(self._clock.timestamp()) + self._ttl_s,
        }
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def parse(
        self, token: str, *, subject: str, organization: str, request: Message
    ) -> dict[str, Any] | None:
        """The position a token resumes at; None for an empty token (the first page)."""
        if not token:
            return None
        try:
            encoded_payload, encoded_mac = token.split(".", 1)
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, binascii.Error):
            raise _invalid("is not a page token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise _invalid("is not a page token this service issued, or was altered")
        body = json.loads(payload)
        if body["s"] != subject or body["o"] != organization:
            raise _invalid("was issued to another caller")
        if body["q"] != query_fingerprint(request):
            raise _invalid("belongs to a different query; keep every other field of the request the same")
        if body["e"] < self._clock.timestamp():
            raise _invalid("has expired; start again from the first page")
        position: dict[str, Any] = body["p"]
        return position

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()


def _invalid(what: str) -> InvalidArgument:
    return InvalidArgument.field("page_token", f"the page token {what}")


async def keyset_page(
    db: Database,
    page_tokens: PageTokens,
    request: Message,
    statement: Select[Any],
    key: InstrumentedAttribute[str],
    *,
    size: int,
) -> tuple[list[Any], str]:
    """One page of `statement`'s rows in `key` order after the request's page token, and the token of
    the next page ("" on the last). The token is bound to the caller and to the query, as `issue` binds
    it. For a listing whose rows all come from one query; one that filters rows in Python after reading
    (an area polygon, say) keeps its own loop."""
    caller = current_call().principal
    position = page_tokens.parse(
        getattr(request, "page_token", ""),
        subject=caller.subject,
        organization=caller.organization,
        request=request,
    )
    statement = statement.order_by(key).limit(size + 1)
    if position:
        statement = statement.where(key > position["after"])
    async with db.read() as session:
        rows = list((await session.scalars(statement)).all())
    if len(rows) <= size:
        return rows, ""
    rows = rows[:size]
    next_token = page_tokens.issue(
        subject=caller.subject,
        organization=caller.organization,
        request=request,
        position={"after": getattr(rows[-1], key.key)},
    )
    return rows, next_token
