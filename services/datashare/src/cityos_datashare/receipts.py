"""Receipts: every access to shared data leaves a signed link in a hash chain.

Each access — a Query stream, an Export, an open-data read, an NGSI-LD HTTP read — ends with
`ReceiptLog.append(AccessRecord(...))`: who read (subject, consumer organization), whose data (owner
organization, dataset), under which agreement and purpose, which columns, how many rows, a hash of the
request, the kind of access and whether it ran to its end. The receipt is committed in its own
transaction before `append` returns, so a read whose receipt cannot be written fails rather than going
unrecorded.

The chain
- `sequence` starts at 1 and has no gaps. `previous_hash` is the hash of receipt `sequence - 1` (64
  zeros for the first).
- `hash` = SHA-256 of `previous_hash` followed by the canonical JSON (sorted keys, no spaces, UTF-8) of
  the receipt's fields: sequence, time (RFC 3339 UTC with microseconds), subject, consumer and owner
  organizations, dataset, agreement, purpose, columns, row_count, query_hash, kind, completed and
  previous_hash. `hash`, `signature` and `key_id` are not in it.
- `signature` = the service's Ed25519 signature of the hash (its hex text), base64; `key_id` = the
  first 16 hex digits of the SHA-256 of the signing key's raw public key.

Appends never fork the chain. They are serialized three ways: an asyncio lock in the process, the
database's ordered-log lock in the transaction (`Tx.lock_ordered_log`: a PostgreSQL advisory lock held
to commit, so replicas take turns; SQLite serializes writers itself), and the sequence primary key as
the last guard (an append that loses a race anyway rolls back and retries on the new head). The head is
read inside the locked transaction, and the receipt's time is taken there too.

Verification (`ReceiptLog.verify`, `VerifyReceipts`) walks the whole chain in sequence order, a page of
rows at a time, and stops at the first receipt that does not hold: a sequence gap (a receipt removed),
a `previous_hash` that is not the hash before it (removed or reordered receipts), a hash that does not
match the fields (a changed receipt), a key id the service does not know, or a signature that does not
verify. It reports that sequence and a one-line problem. The cost is honest O(n): every receipt is read
and its hash and signature recomputed (tens of microseconds each, in a worker thread so other calls keep
being served); a chain of millions of receipts takes minutes. It is meant for auditors, not for every
request. The chain alone cannot show that its newest receipts were cut off (the rest still holds): an
auditor keeps the `head_hash` a verification returned and checks a later verification still contains
that receipt.

Keys: `CITYOS_DATASHARE_RECEIPT_SIGNING_KEY` (PEM, PKCS#8 Ed25519) signs; production mode requires it
(every replica signs with the same key). In embedded mode without it a key is created once under
`var/secrets/` (owner-readable only) and reused. After a rotation the earlier public keys go in
`CITYOS_DATASHARE_RECEIPT_PREVIOUS_PUBLIC_KEYS`, so receipts signed before still verify;
`VerifyReceipts` returns every key it verifies with, so an auditor can check signatures independently.

Who sees receipts (`ListReceipts`): an organization sees the receipts about its data (it is the owner)
and about its own reads (it is the consumer); city-wide roles (city-admin, service) see all — the
`auditor` role reads the audit trail and nothing else (IDN-6). Newest first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.exc import IntegrityError

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare.agreements import parse_agreement_name
from cityos_datashare.catalog import parse_dataset_name
from cityos_datashare.models import ReceiptRow
from cityos_datashare.settings import DatashareSettings, receipt_key_path
from cityos_platform.auth import Principal
from cityos_platform.config import ConfigError
from cityos_platform.db import Database
from cityos_platform.errors import InvalidArgument
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tenancy import is_city_wide

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64
SIGNING_KEY_VARIABLE: Final = "CITYOS_DATASHARE_RECEIPT_SIGNING_KEY"
PREVIOUS_KEYS_VARIABLE: Final = "CITYOS_DATASHARE_RECEIPT_PREVIOUS_PUBLIC_KEYS"
VERIFY_PAGE_ROWS: Final = 1000
APPEND_ATTEMPTS: Final = 5


# -- what is recorded -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessRecord:
    """One access, as the reader reports it."""

    subject: str
    consumer_organization: str
    owner_organization: str
    dataset_id: str
    agreement_id: str  # "" for open data
    purpose: str
    columns: tuple[str, ...]
    row_count: int
    query_hash: str
    kind: int  # a pb.AccessKind value
    completed: bool


def query_hash(request: Message | bytes | str) -> str:
    """SHA-256 (hex) of a request's deterministic serialization, or of the bytes or text given."""
    if isinstance(request, Message):
        data = request.SerializeToString(deterministic=True)
    elif isinstance(request, str):
        data = request.encode("utf-8")
    else:
        data = bytes(request)
    return hashlib.sha256(data).hexdigest()


def rfc3339(value: datetime) -> str:
    """`2026-01-02T03:04:05.000006Z`: UTC, always with microseconds (the hashed form of a time)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hashed_fields(row: ReceiptRow) -> dict[str, Any]:
    """The receipt's fields that its hash covers (everything but hash, signature and key id)."""
    return {
        "sequence": int(row.sequence),
        "time": rfc3339(row.time),
        "subject": row.subject,
        "consumer_organization": row.consumer_organization,
        "owner_organization": row.owner_organization,
        "dataset_id": row.dataset_id,
        "agreement_id": row.agreement_id,
        "purpose": row.purpose,
        "columns": [str(column) for column in row.columns],
        "row_count": int(row.row_count),
        "query_hash": row.query_hash,
        "kind": int(row.kind),
        "completed": bool(row.completed),
        "previous_hash": row.previous_hash,
    }


def chain_hash(previous_hash: str, fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of the previous hash followed by the canonical JSON of the fields."""
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((previous_hash + body).encode("utf-8")).hexdigest()


# -- keys --------------------------------------------------------------------------------------------------


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _pem_text(value: str) -> bytes:
    """A PEM as given in an environment variable (which may carry `\\n` for its line breaks)."""
    text = value.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    return text.encode()


def _private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: not a PEM PKCS#8 private key without a password ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source}: the receipt signing key must be an Ed25519 key")
    return key


def _public_key(pem: bytes, source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: not a PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{source}: receipt keys are Ed25519 keys")
    return key


def _load_or_create(path: Path) -> Ed25519PrivateKey:
    """The embedded mode's signing key: created once (atomically: a half-written key is never seen and,
    of two processes starting together, one key wins), readable by its owner only, reused after."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=".datashare-receipts-", suffix=".tmp")
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            # Creates `path` only if nothing is there yet; if another process was first, use its key.
            with contextlib.suppress(FileExistsError):
                os.link(scratch, path)
        finally:
            Path(scratch).unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by others; restricting it to its owner", path)
        path.chmod(0o600)
    return _private_key(path.read_bytes(), str(path))


class ReceiptSigner:
    """Signs receipt hashes with the current key; verifies with it and with the earlier keys."""

    def __init__(
        self, private_key: Ed25519PrivateKey, previous_public_keys: Sequence[Ed25519PublicKey] = ()
    ) -> None:
        self._private_key = private_key
        self.key_id = key_id_of(private_key.public_key())
        self._keys: dict[str, Ed25519PublicKey] = {self.key_id: private_key.public_key()}
        for public_key in previous_public_keys:
            self._keys.setdefault(key_id_of(public_key), public_key)

    @classmethod
    def from_settings(cls, settings: DatashareSettings, var_dir: Path, production: bool) -> ReceiptSigner:
        """The configured key; in embedded mode without one, the key kept under `var_dir`; production
        mode without one is a ConfigError."""
        configured = settings.receipt_signing_key.get_secret_value().strip()
        if configured:
            private_key = _private_key(_pem_text(configured), SIGNING_KEY_VARIABLE)
        elif production:
            raise ConfigError(
                f"production mode needs {SIGNING_KEY_VARIABLE} (an Ed25519 private key, PEM PKCS#8) to "
                "sign data-access receipts; every replica must use the same key"
            )
        else:
            private_key = _load_or_create(receipt_key_path(var_dir))
        previous = [
            _public_key(_pem_text(pem), f"{PREVIOUS_KEYS_VARIABLE}[{index}]")
            for index, pem in enumerate(settings.receipt_previous_public_keys)
        ]
        return cls(private_key, previous)

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    def sign(self, digest_hex: str) -> str:
        """The base64 Ed25519 signature of a hash (of its hex text)."""
        return base64.b64encode(self._private_key.sign(digest_hex.encode("ascii"))).decode("ascii")

    def verify(self, key_id: str, digest_hex: str, signature: str) -> bool:
        """Whether `signature` is a known key's signature of the hash; False for an unknown key."""
        public_key = self._keys.get(key_id)
        if public_key is None:
            return False
        try:
            public_key.verify(base64.b64decode(signature, validate=True), digest_hex.encode("ascii"))
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def public_keys(self) -> dict[str, str]:
        """key id -> PEM SubjectPublicKeyInfo, the current key and the earlier ones."""
        return {
            key_id: key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
            for key_id, key in self._keys.items()
        }


# -- the log ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The outcome of a walk of the chain. `checked`: the receipts that held (all of them when valid);
    `first_bad_sequence`: 0 when valid; `head_hash`: the newest receipt's hash ("" when there is none)."""

    valid: bool
    checked: int
    first_bad_sequence: int
    problem: str
    head_hash: str


@dataclass(frozen=True)
class _Link:
    """What verification needs of one receipt, detached from the session."""

    sequence: int
    fields: dict[str, Any]
    hash: str
    signature: str
    key_id: str


class ReceiptLog:
    def __init__(
        self, db: Database, signer: ReceiptSigner, *, verify_page_rows: int = VERIFY_PAGE_ROWS
    ) -> None:
        self.db = db
        self.signer = signer
        self.verify_page_rows = verify_page_rows
        self._lock = asyncio.Lock()

    async def append(self, record: AccessRecord) -> ReceiptRow:
        """Append one receipt, committed before this returns (see the module doc for the locking)."""
        async with self._lock:
            for attempt in range(1, APPEND_ATTEMPTS + 1):
                try:
                    return await self._append_once(record)
                except IntegrityError:
                    if attempt == APPEND_ATTEMPTS:
                        raise
                    log.warning("receipt append lost a race for its sequence number; retrying")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _append_once(self, record: AccessRecord) -> ReceiptRow:
        async with self.db.transaction() as tx:
            await tx.lock_ordered_log()
            head = (
                await tx.session.execute(
                    select(ReceiptRow.sequence, ReceiptRow.hash).order_by(ReceiptRow.sequence.desc()).limit(1)
                )
            ).first()
            sequence, previous_hash = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS)
            row = ReceiptRow(
                sequence=sequence,
                time=self.db.clock.now().astimezone(UTC),
                subject=record.subject,
                consumer_organization=record.consumer_organization,
                owner_organization=record.owner_organization,
                dataset_id=record.dataset_id,
                agreement_id=record.agreement_id,
                purpose=record.purpose,
                columns=list(record.columns),
                row_count=int(record.row_count),
                query_hash=record.query_hash,
                kind=int(record.kind),
                completed=bool(record.completed),
                previous_hash=previous_hash,
            )
            row.hash = chain_hash(previous_hash, hashed_fields(row))
            row.signature = self.signer.sign(row.hash)
            row.key_id = self.signer.key_id
            tx.session.add(row)
        return row

    async def verify(self) -> Verification:
        """Walk the chain up to its current head, a page at a time (O(n): see the module doc)."""
        async with self.db.read() as session:
            head = (
                await session.execute(
                    select(ReceiptRow.sequence, ReceiptRow.hash).order_by(ReceiptRow.sequence.desc()).limit(1)
                )
            ).first()
        if head is None:
            return Verification(valid=True, checked=0, first_bad_sequence=0, problem="", head_hash="")
        head_sequence, head_hash = int(head[0]), str(head[1])
        expected, previous_hash, checked = 1, GENESIS, 0
        while expected <= head_sequence:
            statement = (
                select(ReceiptRow)
                .where(ReceiptRow.sequence >= expected, ReceiptRow.sequence <= head_sequence)
                .order_by(ReceiptRow.sequence)
                .limit(self.verify_page_rows)
            )
            async with self.db.read() as session:
                links = [
                    _Link(row.sequence, hashed_fields(row), row.hash, row.signature, row.key_id)
                    for row in await session.scalars(statement)
                ]
            if not links:
                return _broken(
                    checked, expected, f"receipt {expected} is missing: the chain ends before it", head_hash
                )
            bad = await asyncio.to_thread(self._check_page, links, expected, previous_hash)
            if bad is not None:
                held, sequence, problem = bad
                return _broken(checked + held, sequence, problem, head_hash)
            checked += len(links)
            expected, previous_hash = links[-1].sequence + 1, links[-1].hash
        return Verification(
            valid=True, checked=checked, first_bad_sequence=0, problem="", head_hash=head_hash
        )

    def _check_page(
        self, links: Sequence[_Link], expected: int, previous_hash: str
    ) -> tuple[int, int, str] | None:
        """(receipts that held before it, the first bad sequence, the problem), or None if all hold."""
        for held, link in enumerate(links):
            problem = self._problem(link, expected, previous_hash)
            if problem is not None:
                return held, expected, problem
            expected, previous_hash = link.sequence + 1, link.hash
        return None

    def _problem(self, link: _Link, expected: int, previous_hash: str) -> str | None:
        sequence = link.sequence
        if sequence != expected:
            return f"receipt {expected} is missing: the chain goes from {expected - 1} to {sequence}"
        if link.fields["previous_hash"] != previous_hash:
            return (
                f"receipt {sequence} does not link to receipt {sequence - 1} (its previous_hash is not that "
                "receipt's hash): receipts were removed or reordered"
            )
        if chain_hash(previous_hash, link.fields) != link.hash:
            return f"receipt {sequence} was changed: its hash does not match its contents"
        if not self.signer.knows(link.key_id):
            return f"receipt {sequence} is signed with an unknown key {link.key_id!r}"
        if not self.signer.verify(link.key_id, link.hash, link.signature):
            return f"receipt {sequence} has a bad signature (key {link.key_id})"
        return None


def _broken(checked: int, sequence: int, problem: str, head_hash: str) -> Verification:
    return Verification(
        valid=False, checked=checked, first_bad_sequence=sequence, problem=problem, head_hash=head_hash
    )


# -- the API ---------------------------------------------------------------------------------------------


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def receipt_proto(row: ReceiptRow) -> pb.Receipt:
    return pb.Receipt(
        name=f"receipts/{row.sequence}",
        sequence=row.sequence,
        time=_stamp(row.time),
        subject=row.subject,
        consumer_organization=row.consumer_organization,
        owner_organization=row.owner_organization,
        dataset=f"datasets/{row.dataset_id}",
        agreement=f"agreements/{row.agreement_id}" if row.agreement_id else "",
        purpose=row.purpose,
        columns=list(row.columns),
        row_count=row.row_count,
        query_hash=row.query_hash,
        kind=row.kind,  # type: ignore[arg-type]
        completed=row.completed,
        previous_hash=row.previous_hash,
        hash=row.hash,
        signature=row.signature,
        key_id=row.key_id,
    )


def visible_receipts(caller: Principal) -> ColumnElement[bool]:
    """The receipts a caller sees: its organization's as owner or consumer; all for city-wide roles."""
    if is_city_wide(caller):
        return true()
    if not caller.organization:
        return false()
    return or_(
        ReceiptRow.owner_organization == caller.organization,
        ReceiptRow.consumer_organization == caller.organization,
    )


class ReceiptServicer(datashare_pb2_grpc.ReceiptServiceServicer):
    def __init__(self, log: ReceiptLog, page_tokens: PageTokens) -> None:
        self.log = log
        self.page_tokens = page_tokens

    async def ListReceipts(
        self, request: pb.ListReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReceiptsResponse:
        problems: list[tuple[str, str]] = []
        statement = select(ReceiptRow)
        try:
            if request.dataset:
                statement = statement.where(
                    ReceiptRow.dataset_id == parse_dataset_name(request.dataset, "dataset")
                )
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        try:
            if request.agreement:
                statement = statement.where(
                    ReceiptRow.agreement_id == parse_agreement_name(request.agreement, "agreement")
                )
        except InvalidArgument as error:
            problems += [(v.field, v.description) for v in error.violations]
        if request.page_size < 0:
            problems.append(("page_size", "must not be negative"))
        if problems:
            raise InvalidArgument.many(problems)
        size = page_size(request.page_size)
        caller = current_call().principal
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = (
            statement.where(visible_receipts(caller)).order_by(ReceiptRow.sequence.desc()).limit(size + 1)
        )
        if position:
            statement = statement.where(ReceiptRow.sequence < int(position["before"]))
        async with self.log.db.read() as session:
            rows = list((await session.scalars(statement)).all())
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            next_token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"before": rows[-1].sequence},
            )
        return pb.ListReceiptsResponse(
            receipts=[receipt_proto(row) for row in rows], next_page_token=next_token
        )

    async def VerifyReceipts(
        self, request: pb.VerifyReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyReceiptsResponse:
        result = await self.log.verify()
        return pb.VerifyReceiptsResponse(
            valid=result.valid,
            checked=result.checked,
            first_bad_sequence=result.first_bad_sequence,
            problem=result.problem,
            head_hash=result.head_hash,
            public_keys=self.log.signer.public_keys(),
        )


__all__ = [
    "GENESIS",
    "AccessRecord",
    "ReceiptLog",
    "ReceiptServicer",
    "ReceiptSigner",
    "Verification",
    "chain_hash",
    "hashed_fields",
    "query_hash",
    "receipt_proto",
    "visible_receipts",
]
