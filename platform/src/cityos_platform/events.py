"""Event streams: the `StreamEvents` servicer every service mounts, and the consumer helper.

The stream reads the service's outbox in sequence order, which is commit order (see `db`). A response
carries a batch and the cursor after it; a consumer that stores that cursor with the effects of the
batch (one transaction, `EventConsumer`) sees every event exactly once across restarts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from sqlalchemy import ColumnElement, func, or_, select

from cityos.common.v1 import events_pb2, events_pb2_grpc
from cityos_platform.db import Database, Tx
from cityos_platform.errors import InvalidArgument
from cityos_platform.interceptor import current_call
from cityos_platform.models import ConsumerCheckpoint, Outbox
from cityos_platform.server import Mount
from cityos_platform.tenancy import is_city_wide

log = logging.getLogger(__name__)

CURSOR_VERSION = "v1"
DEFAULT_BATCH = 500
MAX_BATCH = 1000
MAX_FILTER_ITEMS = 4096


def _prefix(stream: str) -> bytes:
    return f"cityos-{stream}:{CURSOR_VERSION}:".encode()


def encode_cursor(seq: int, stream: str = "events") -> str:
    """An opaque cursor for position `seq` of a stream (`events`, `telemetry`, …)."""
    return base64.urlsafe_b64encode(_prefix(stream) + str(seq).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, field: str = "after_cursor", stream: str = "events") -> int:
    """The position a cursor of `stream` names; INVALID_ARGUMENT on `field` for anything else."""
    if not cursor:
        return 0
    prefix = _prefix(stream)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if not raw.startswith(prefix):
            raise ValueError("foreign cursor")
        seq = int(raw[len(prefix) :])
        if seq < 0:
            raise ValueError("negative position")
    except (ValueError, binascii.Error):
        raise InvalidArgument.field(field, "not a cursor this stream issued") from None
    return seq


def to_event(row: Outbox) -> events_pb2.Event:
    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(row.occurred_at)
    return events_pb2.Event(
        id=row.event_id,
        type=row.type,
        schema_version=row.schema_version,
        source=row.source,
        subject=row.subject,
        owner_organization=row.owner_organization,
        area_cell=row.area_cell,
        occurred_at=occurred,
        traceparent=row.traceparent,
        payload=any_pb2.Any(type_url=row.payload_type, value=row.payload),
        cursor=encode_cursor(row.seq),
    )


@dataclass(frozen=True)
class EventQuery:
    after: int
    type_prefixes: tuple[str, ...]
    area_cells: tuple[str, ...]
    organization: str | None  # None: city-wide
    limit: int


T = TypeVar("T")


async def read_ordered(
    db: Database, model: type[T], after: int, conditions: Sequence[ColumnElement[bool]], limit: int
) -> tuple[list[T], int]:
    """The next rows of an ordered log table (a `seq` column in commit order) after position `after`
    that meet `conditions`, and the position after them.

    The end of the log is read first; rows up to it are all committed (sequence numbers are handed out
    in commit order, see `Tx.lock_ordered_log`), so when fewer than `limit` rows match, the position
    moves to that end and rows the conditions left out are never scanned again.
    """
    seq: Any = model.seq  # type: ignore[attr-defined]
    async with db.read() as session:
        end = int(await session.scalar(select(func.coalesce(func.max(seq), 0))) or 0)
        if end <= after:
            return [], after
        statement = select(model).where(seq > after, seq <= end, *conditions).order_by(seq).limit(limit)
        rows = list((await session.scalars(statement)).all())
    if len(rows) == limit:
        return rows, int(rows[-1].seq)  # type: ignore[attr-defined]
    return rows, end


async def follow_ordered(
    db: Database,
    model: type[T],
    after: int,
    conditions: Sequence[ColumnElement[bool]],
    limit: int,
    *,
    follow: bool,
    poll_interval_s: float,
) -> AsyncIterator[tuple[list[T], int]]:
    """Batches of an ordered log after `after`: what is committed, then (with `follow`) what commits.

    Woken at once by commits in this process, and polling every `poll_interval_s` for other
    replicas'. A batch may be empty when the position moved past rows the conditions left out.
    """
    async with db.notifier.subscription() as committed:
        while True:
            committed.clear()
            rows, position = await read_ordered(db, model, after, conditions, limit)
            if position != after:
                yield rows, position
                after = position
                if len(rows) == limit:
                    continue  # more is waiting
            if not follow:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(committed.wait(), poll_interval_s)


def event_conditions(query: EventQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.organization is not None:
        conditions.append(Outbox.owner_organization == query.organization)
    if query.type_prefixes:
        conditions.append(or_(*(Outbox.type.startswith(p) for p in query.type_prefixes)))
    if query.area_cells:
        conditions.append(Outbox.area_cell.in_(query.area_cells))
    return conditions


async def read_batch(db: Database, query: EventQuery) -> tuple[list[Outbox], int]:
    """The next events matching `query` and the position after them."""
    return await read_ordered(db, Outbox, query.after, event_conditions(query), query.limit)


class EventStreamServicer(events_pb2_grpc.EventServiceServicer):
    """`cityos.common.v1.EventService` over one service's outbox."""

    def __init__(self, db: Database, *, poll_interval_s: float = 1.0) -> None:
        self.db = db
        self.poll_interval_s = poll_interval_s

    async def StreamEvents(
        self, request: events_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.StreamEventsResponse]:
        principal = current_call().principal
        violations = []
        if len(request.type_prefixes) > MAX_FILTER_ITEMS:
            violations.append(("type_prefixes", f"at most {MAX_FILTER_ITEMS} prefixes"))
        if len(request.area_cells) > MAX_FILTER_ITEMS:
            violations.append(("area_cells", f"at most {MAX_FILTER_ITEMS} cells"))
        if request.max_batch > MAX_BATCH:
            violations.append(("max_batch", f"at most {MAX_BATCH}"))
        if violations:
            raise InvalidArgument.many(violations)
        query = EventQuery(
            after=decode_cursor(request.after_cursor),
            type_prefixes=tuple(request.type_prefixes),
            area_cells=tuple(request.area_cells),
            organization=None if is_city_wide(principal) else principal.organization,
            limit=request.max_batch or DEFAULT_BATCH,
        )
        async for rows, position in follow_ordered(
            self.db,
            Outbox,
            query.after,
            event_conditions(query),
            query.limit,
            follow=request.follow,
            poll_interval_s=self.poll_interval_s,
        ):
            yield events_pb2.StreamEventsResponse(
                events=[to_event(row) for row in rows], cursor=encode_cursor(position)
            )


def event_stream_mount(db: Database, *, poll_interval_s: float = 1.0) -> Mount:
    return Mount(
        descriptor=events_pb2.DESCRIPTOR.services_by_name["EventService"],
        servicer=EventStreamServicer(db, poll_interval_s=poll_interval_s),
        add_to_server=events_pb2_grpc.add_EventServiceServicer_to_server,
    )


# -- consuming another service's stream -------------------------------------------------------------

Handler = Callable[[Tx, Sequence[events_pb2.Event]], Awaitable[None]]
MetadataProvider = Callable[[], Awaitable[Sequence[tuple[str, str]]]]


async def load_checkpoint(db: Database, consumer: str) -> str:
    async with db.read() as session:
        row = await session.get(ConsumerCheckpoint, consumer)
    return row.cursor if row else ""


async def save_checkpoint(tx: Tx, consumer: str, cursor: str, processed: int) -> None:
    row = await tx.session.get(ConsumerCheckpoint, consumer)
    if row is None:
        tx.session.add(
            ConsumerCheckpoint(
                consumer=consumer, cursor=cursor, events_processed=processed, updated_at=tx.now
            )
        )
    else:
        row.cursor = cursor
        row.events_processed += processed
        row.updated_at = tx.now


class EventConsumer:
    """Follows another service's `StreamEvents` into this service's database, exactly once.

    For each batch, `handler(tx, events)` runs in one transaction with the checkpoint update, so after a
    crash or restart the consumer resumes after the last batch whose effects committed.
    """

    def __init__(
        self,
        name: str,
        db: Database,
        channel: grpc.aio.Channel,
        handler: Handler,
        *,
        type_prefixes: Sequence[str] = (),
        area_cells: Sequence[str] = (),
        metadata: MetadataProvider | None = None,
        max_batch: int = DEFAULT_BATCH,
        backoff_s: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.name = name
        self.db = db
        self.stub = events_pb2_grpc.EventServiceStub(channel)
        self.handler = handler
        self.type_prefixes = list(type_prefixes)
        self.area_cells = list(area_cells)
        self.metadata = metadata
        self.max_batch = max_batch
        self.backoff_s = backoff_s
        self.processed = 0

    async def _consume(self, follow: bool) -> int:
        cursor = await load_checkpoint(self.db, self.name)
        request = events_pb2.StreamEventsRequest(
            after_cursor=cursor,
            type_prefixes=self.type_prefixes,
            area_cells=self.area_cells,
            follow=follow,
            max_batch=self.max_batch,
        )
        metadata = tuple(await self.metadata()) if self.metadata else ()
        count = 0
        async for response in self.stub.StreamEvents(request, metadata=metadata):
            async with self.db.transaction() as tx:
                if response.events:
                    await self.handler(tx, response.events)
                await save_checkpoint(tx, self.name, response.cursor, len(response.events))
            count += len(response.events)
            self.processed += len(response.events)
        return count

    async def catch_up(self) -> int:
        """Process everything committed so far, then return how many events were processed."""
        return await self._consume(follow=False)

    async def run(self) -> None:
        """Follow the stream until cancelled, reconnecting with backoff when the source is away."""
        delay = self.backoff_s[0]
        while True:
            try:
                await self._consume(follow=True)
                delay = self.backoff_s[0]
            except grpc.aio.AioRpcError as error:
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise
                log.warning(
                    "consumer %s: source unavailable (%s); retrying in %.1f s",
                    self.name,
                    error.code().name,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_s[1])
