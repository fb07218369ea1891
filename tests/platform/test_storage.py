"""Storage: migrations on a database that holds data (CORE-8) and the transactional outbox (CORE-6),
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from google.protobuf import wrappers_pb2
from sqlalchemy import inspect, select, text

from cityos_platform.db import Database
from cityos_platform.events import EventQuery, decode_cursor, encode_cursor, read_batch
from cityos_platform.migrate import PLATFORM_CHAIN, current_revisions, upgrade
from cityos_platform.models import Outbox
from cityos_platform.testing import markers


async def _platform_db(url: str) -> Database:
    await upgrade(url, [PLATFORM_CHAIN])
    return Database(url, source="test")


async def _emit_one(db: Database, label: str, *, fail: bool = False) -> None:
    async with db.transaction() as tx:
        tx.emit(
            "test.thing.happened",
            wrappers_pb2.StringValue(value=label),
            subject=f"things/{label}",
            owner_organization="org-a",
        )
        if fail:
            raise RuntimeError("rolled back on purpose")


async def _all_events(db: Database, after: int = 0, organization: str | None = None) -> list[Outbox]:
    rows, _ = await read_batch(db, EventQuery(after, (), (), organization, 100_000))
    return rows


@pytest.mark.req("CORE-8")
async def test_migrations_upgrade_a_database_that_holds_data_without_loss(database_url):
    await upgrade(database_url, [PLATFORM_CHAIN, markers.CHAIN], {markers.CHAIN.name: "markers_0001"})
    # The first revision of the markers schema, holding data written by its era's code.
    db = Database(database_url, source="test")
    created = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
    async with db.transaction() as tx:
        for index in range(25):
            await tx.session.execute(
                text(
                    "INSERT INTO markers (marker_id, label, etag, create_time, update_time,"
                    " owner_organization, operator_organization, latitude, longitude, area_cell)"
                    " VALUES (:id, :label, 'e',"
                    " :t, :t, 'org-a', :op, :lat, 115.95, '8931aa')"
                ),
                {
                    "id": f"m-{index:02d}",
                    "label": f"marker {index}",
                    "t": created if db.dialect != "sqlite" else created.replace(tzinfo=None),
                    "op": "op-b" if index % 2 else "",
                    "lat": 39.0 + index / 1000,
                },
            )
        tx.emit(
            "test.before.upgrade",
            wrappers_pb2.StringValue(value="kept"),
            subject="x",
            owner_organization="org-a",
        )
    await db.close()

    await upgrade(database_url, [PLATFORM_CHAIN, markers.CHAIN])
    assert await current_revisions(database_url, [PLATFORM_CHAIN, markers.CHAIN]) == {
        "platform": "platform_0001",
        "cityos_platform.testing": "markers_0002",
    }
    db = Database(database_url, source="test")
    async with db.read() as session:
        rows = (await session.scalars(select(markers.MarkerRow).order_by(markers.MarkerRow.marker_id))).all()
        columns = await session.run_sync(
            lambda s: {c["name"] for c in inspect(s.connection()).get_columns("markers")}
        )
    assert len(rows) == 25
    assert [r.label for r in rows] == [f"marker {i}" for i in range(25)]
    assert [r.operator_organization for r in rows[:3]] == ["", "op-b", ""]
    assert all(r.maintainer_organization == "" for r in rows)  # the new column, filled for old rows
    assert rows[24].latitude == pytest.approx(39.024)
    assert rows[0].create_time == created
    assert "maintainer_organization" in columns
    assert [e.type for e in await _all_events(db)] == ["test.before.upgrade"]
    # Upgrading again is a no-op.
    await upgrade(database_url, [PLATFORM_CHAIN, markers.CHAIN])
    await db.close()


async def test_models_and_migrations_agree(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    await upgrade(database_url, [PLATFORM_CHAIN, markers.CHAIN])
    db = Database(database_url, source="test")

    def diff(connection, metadata):
        def own(obj, name, kind, reflected, compare_to):
            table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", None)
            return table in metadata.tables  # each chain owns its tables; the other chain's are not a diff

        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": own})
        return compare_metadata(context, metadata)

    async with db.engine.connect() as connection:
        for metadata in (PLATFORM_CHAIN.metadata, markers.CHAIN.metadata):
            assert await connection.run_sync(diff, metadata) == []
    await db.close()


@pytest.mark.req("CORE-6")
async def test_events_are_streamed_in_commit_order_and_a_rollback_emits_nothing(database_url):
    db = await _platform_db(database_url)
    await _emit_one(db, "first")
    with pytest.raises(RuntimeError):
        await _emit_one(db, "never", fail=True)
    await _emit_one(db, "second")
    events = await _all_events(db)
    assert [wrappers_pb2.StringValue.FromString(e.payload).value for e in events] == ["first", "second"]
    assert events[0].seq < events[1].seq
    assert events[0].owner_organization == "org-a"
    assert events[0].occurred_at.tzinfo is not None
    # Scoping by owner: another organization sees none of them.
    assert await _all_events(db, organization="org-b") == []
    await db.close()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.req("CORE-6")
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_concurrent_writers_on_postgres_are_seen_exactly_once_in_commit_order(database_url):
    """Writers hold their transactions open for random times, so they commit out of start order; a
    consumer polling all along must still see every committed event once, in commit order."""
    db = await _platform_db(database_url)
    committed: list[str] = []  # labels in the order their commits returned
    stop = asyncio.Event()
    rng = random.Random(7)

    async def writer(worker: int) -> None:
        for n in range(25):
            label = f"w{worker}-{n}"
            fail = rng.random() < 0.1
            try:
                async with db.transaction() as tx:
                    await tx.session.execute(text("SELECT pg_sleep(:s)"), {"s": rng.random() * 0.02})
                    tx.emit(
                        "test.thing.happened",
                        wrappers_pb2.StringValue(value=label),
                        subject=label,
                        owner_organization="org-a",
                    )
                    await tx.session.execute(text("SELECT pg_sleep(:s)"), {"s": rng.random() * 0.02})
                    if fail:
                        raise RuntimeError("abort")
                committed.append(label)
            except RuntimeError:
                pass

    seen: list[str] = []
    positions: list[int] = []

    async def consumer() -> None:
        after = 0
        while True:
            done = stop.is_set()
            rows, after = await read_batch(db, EventQuery(after, (), (), None, 37))
            seen.extend(wrappers_pb2.StringValue.FromString(r.payload).value for r in rows)
            positions.extend(r.seq for r in rows)
            if done and not rows:
                return
            await asyncio.sleep(0.003)

    reading = asyncio.create_task(consumer())
    await asyncio.gather(*(writer(w) for w in range(8)))
    stop.set()
    await reading
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert sorted(seen) == sorted(committed), "a committed event was skipped (or a rolled-back one seen)"
    assert positions == sorted(positions)
    for worker in range(8):  # each writer's transactions are sequential: the stream keeps their order
        own = [label for label in seen if label.startswith(f"w{worker}-")]
        assert own == sorted(own, key=lambda label: int(label.split("-")[1]))
    await db.close()


@pytest.mark.req("CORE-6")
async def test_a_transaction_that_commits_later_comes_later_even_if_it_started_first(database_url):
    """The case that loses events with insert-time sequence numbers: a long transaction started first
    commits after a short one. A consumer reading in between must not move past the long one's event."""
    db = await _platform_db(database_url)
    long_started, release = asyncio.Event(), asyncio.Event()

    async def long_transaction() -> None:
        async with db.transaction() as tx:
            tx.emit(
                "test.slow", wrappers_pb2.StringValue(value="slow"), subject="s", owner_organization="org-a"
            )
            long_started.set()
            await release.wait()

    if db.dialect == "sqlite":
        # SQLite serializes writers: the short transaction waits for the long one, so commit order is
        # start order here; what matters is that the consumer never skips.
        slow = asyncio.create_task(long_transaction())
        await long_started.wait()
        release.set()
        await slow
        await _emit_one(db, "fast")
        assert [e.type for e in await _all_events(db)] == ["test.slow", "test.thing.happened"]
        await db.close()
        return
    slow = asyncio.create_task(long_transaction())
    await long_started.wait()
    await _emit_one(db, "fast")
    rows, position = await read_batch(db, EventQuery(0, (), (), None, 100))
    assert [r.type for r in rows] == ["test.thing.happened"]  # the committed one; the open one is invisible
    release.set()
    await slow
    later, _ = await read_batch(db, EventQuery(position, (), (), None, 100))
    assert [r.type for r in later] == ["test.slow"], "the event committed last was skipped"
    assert later[0].seq > rows[0].seq
    await db.close()


def test_cursors_are_opaque_and_checked():
    from cityos_platform.errors import InvalidArgument

    assert decode_cursor(encode_cursor(42)) == 42
    assert decode_cursor("") == 0
    for bad in ("42", "garbage!", encode_cursor(1)[:-2] + "zz"):
        with pytest.raises(InvalidArgument):
            decode_cursor(bad)


@pytest.mark.req("CORE-7")
async def test_a_twin_request_waits_for_the_first_and_replays_it(database_url):
    """Two concurrent creates with one request id, the second checking for the resource only after the
    first committed: without serializing twins, it would see the resource but not the stored result
    and answer 'already exists'. It must replay the first result instead."""
    from google.protobuf import wrappers_pb2

    from cityos_platform.auth import Principal
    from cityos_platform.errors import AlreadyExists
    from cityos_platform.idempotency import idempotent
    from cityos_platform.interceptor import CallInfo, _current
    from cityos_platform.policy import Policy

    db = await _platform_db(database_url)
    policy = Policy(
        "/t.v1.S/Create", "t.v1.S", "Create", "t.write", (), False, 0, True, "", 0, None, False, False
    )
    _current.set(CallInfo(policy=policy, caller="u", peer="", metadata={}, principal=Principal("u", "org-a")))
    made: list[str] = []
    first_inside = asyncio.Event()

    def creator(label: str, pause_before_check: float, pause_after: float):
        async def create(tx):
            if label == "first":
                first_inside.set()
            await asyncio.sleep(pause_before_check)
            if made:  # the resource exists already
                raise AlreadyExists("exists")
            made.append(label)
            await asyncio.sleep(pause_after)  # still inside the transaction: not committed yet
            return wrappers_pb2.StringValue(value=label)

        return create

    request = wrappers_pb2.StringValue(value="req-1")

    async def call(label, before, after):
        # StringValue has no request_id field: use its `value` as the request id for this test.
        return await idempotent(
            db, request, wrappers_pb2.StringValue, creator(label, before, after), request_id_field="value"
        )

    async def second():
        await first_inside.wait()
        return await call("second", 0.3, 0)

    results = await asyncio.gather(call("first", 0, 0.2), second())
    assert [r.value for r in results] == ["first", "first"]
    assert made == ["first"]
    await db.close()
