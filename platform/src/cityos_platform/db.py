"""Storage: one SQLAlchemy 2 async code path for SQLite (embedded) and PostgreSQL (production).

`Database` owns the engine of one service's database. Write work happens in `db.transaction()`, whose
`Tx` holds the session and buffers the events the work emits; `commit` writes state and events in one
transaction (the outbox), so an event exists if and only if its change committed. Reads that change
nothing use `db.read()`.

Commit order: on PostgreSQL, outbox rows are inserted at the very end of the transaction under a
transaction-scoped advisory lock, so their sequence numbers are assigned in the order the transactions
commit, and a reader never sees a later sequence number before an earlier one. On SQLite, write
transactions start with BEGIN IMMEDIATE and are serialized by the database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message
from opentelemetry import propagate
from sqlalchemy import event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.models import Outbox

# Any constant works; it only has to be the same for every writer of one database.
OUTBOX_LOCK_KEY = 0x0C17_05_0B


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` and `sqlite:///` URLs and pick the async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine with the per-backend settings CityOS relies on."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


#: Every aiosqlite connection an engine opened, so that `Database.close()` can close in its own event
#: loop any that the pool no longer holds (see there).
_AIOSQLITE: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    opened: weakref.WeakSet[Any] = weakref.WeakSet()
    _AIOSQLITE[engine.sync_engine] = opened

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        raw = getattr(dbapi_connection, "_connection", None)  # SQLAlchemy's adapter -> aiosqlite.Connection
        if raw is not None:
            opened.add(raw)
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        # Writers take the write lock up front, so two writers never deadlock upgrading read locks.
        read_only = connection.get_execution_options().get("cityos_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@dataclass
class PendingEvent:
    type: str
    payload: Message
    subject: str
    owner_organization: str
    area_cell: str = ""
    schema_version: int = 1
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


class Tx:
    """One unit of work: a session and the events to commit with it."""

    def __init__(self, session: AsyncSession, source: str, clock: Clock) -> None:
        self.session = session
        self.source = source
        self.now: datetime = clock.now()
        self._events: list[PendingEvent] = []
        self._log_locked = False

    def emit(
        self,
        type: str,
        payload: Message,
        *,
        subject: str,
        owner_organization: str,
        area_cell: str = "",
        schema_version: int = 1,
    ) -> PendingEvent:
        """Record an event; it is written with the transaction's changes, or not at all."""
        pending = PendingEvent(type, payload, subject, owner_organization, area_cell, schema_version)
        self._events.append(pending)
        return pending

    @property
    def events(self) -> list[PendingEvent]:
        return list(self._events)

    async def lock_ordered_log(self) -> None:
        """Take the commit-order lock before inserting into an ordered log table (the outbox, or a
        service's own log such as the telemetry spool): on PostgreSQL the transaction-scoped advisory
        lock, held to commit, so sequence numbers are handed out in commit order. Re-entrant."""
        if self._log_locked:
            return
        connection = await self.session.connection()
        if connection.dialect.name == "postgresql":
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": OUTBOX_LOCK_KEY})
        self._log_locked = True

    async def _flush_outbox(self) -> None:
        if not self._events:
            return
        await self.lock_ordered_log()
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        rows = []
        for pending in self._events:
            packed = any_pb2.Any()
            packed.Pack(pending.payload)
            rows.append(
                {
                    "event_id": pending.id,
                    "type": pending.type,
                    "schema_version": pending.schema_version,
                    "source": self.source,
                    "subject": pending.subject,
                    "owner_organization": pending.owner_organization,
                    "area_cell": pending.area_cell,
                    "occurred_at": self.now,
                    "traceparent": carrier.get("traceparent", ""),
                    "payload_type": packed.type_url,
                    "payload": packed.value,
                }
            )
        await self.session.execute(insert(Outbox), rows)


class EventNotifier:
    """Wakes this process's event streams when a transaction with events commits."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def notify(self) -> None:
        for waiter in list(self._waiters):
            waiter.set()

    @asynccontextmanager
    async def subscription(self) -> AsyncIterator[asyncio.Event]:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


class Database:
    """The database of one service."""

    def __init__(self, url: str, *, source: str, clock: Clock = SYSTEM_CLOCK, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.source = source
        self.clock = clock
        self.engine = create_engine(self.url, echo=echo)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(cityos_read_only=True), expire_on_commit=False
        )
        self.notifier = EventNotifier()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction: commits state and its events together, or rolls both back."""
        async with self._sessions() as session:
            tx = Tx(session, self.source, self.clock)
            try:
                yield tx
                await tx._flush_outbox()
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
        if tx._events or tx._log_locked:
            self.notifier.notify()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session (a snapshot on PostgreSQL, a deferred transaction on SQLite)."""
        # Closing (not rolling back) ends the transaction and keeps what was loaded readable.
        async with self._read_sessions() as session:
            yield session

    async def last_sequence(self) -> int:
        async with self.read() as session:
            value = await session.scalar(select(Outbox.seq).order_by(Outbox.seq.desc()).limit(1))
        return int(value or 0)

    async def close(self, wait_s: float = 2.0) -> None:
        """Close every connection. A session still closing — a cancelled handler's session closes in a
        shielded task of its own (SQLAlchemy's AsyncSession) — is waited for, up to `wait_s`, so that
        `dispose()` closes its connection too: a connection checked out at dispose time is left to the
        garbage collector, which stops an aiosqlite connection's thread with a future on whatever event
        loop is current then, possibly a closed one."""
        pool = self.engine.pool
        checked_out = getattr(pool, "checkedout", None)
        if checked_out is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while checked_out() and loop.time() < deadline:  # noqa: ASYNC110 - the pool has no event to wait on
                await asyncio.sleep(0.01)
        await self.engine.dispose()
        # A connection SQLAlchemy let go of without closing it (one invalidated when a task was cancelled
        # in the middle of a call) still has its aiosqlite thread: close it here, in this loop, rather
        # than leave it to the garbage collector (see above).
        for raw in list(_AIOSQLITE.get(self.engine.sync_engine, ())):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(raw.close(), timeout=wait_s)
