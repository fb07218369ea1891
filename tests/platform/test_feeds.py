"""cityos_platform.feeds: the paths of the telemetry follower its services' tests do not reach.

Following, resuming from the checkpoint, two replicas and the missing configuration are proven through
the parking service (services/parking/tests/test_occupancy.py) and the manholes service
(services/manholes/tests/test_state.py); here: the compare-and-set of the cursor and the backoff while
the devices service is away.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime

import grpc
import pytest
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.db import Database
from cityos_platform.feeds import FEED, CursorMoved, TelemetryFollower, load_cursor, move_cursor
from cityos_platform.models import UtcDateTime


class Base(DeclarativeBase):
    pass


class CursorRow(Base):
    __tablename__ = "feed_cursors"

    feed: Mapped[str] = mapped_column(String(63), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(200))
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


@pytest.fixture
async def db(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'feeds.sqlite'}", source="feeds")
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield database
    await database.close()


async def test_the_cursor_moves_only_from_where_the_follower_read_it(db):
    assert await load_cursor(db, CursorRow) == ""
    async with db.transaction() as tx:
        await move_cursor(tx, CursorRow, "", "c1")
    with pytest.raises(CursorMoved):  # another replica moved it from "" first
        async with db.transaction() as tx:
            await move_cursor(tx, CursorRow, "", "c2")
    async with db.transaction() as tx:
        await move_cursor(tx, CursorRow, "c1", "c2")
    assert await load_cursor(db, CursorRow) == "c2"
    assert await load_cursor(db, CursorRow, "another.feed") == ""
    assert FEED == "devices.telemetry"


async def test_an_unreachable_feed_is_retried_with_backoff_until_stopped(db, caplog):
    applied = []

    async def apply(tx, records):
        applied.append(records)
        return len(records)

    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # nothing listens there
    follower = TelemetryFollower(
        db, channel, types=["x.sensor"], cursor_model=CursorRow, apply=apply, retry_s=0.05
    )
    caplog.set_level(logging.WARNING, logger="cityos_platform.feeds")
    follower.start()
    for _ in range(500):
        if caplog.text.count("telemetry feed unavailable") >= 4:
            break
        await asyncio.sleep(0.01)
    await follower.stop()
    retries = [r.getMessage() for r in caplog.records if "telemetry feed unavailable" in r.getMessage()]
    assert len(retries) >= 4
    delays = [float(re.search(r"retrying in ([0-9.]+) s", message)[1]) for message in retries[:4]]
    assert delays == [0.1, 0.1, 0.2, 0.4]  # 0.05 s doubling (logged to a tenth)
    assert applied == []
    assert (follower.records, follower.batches) == (0, 0)
    assert await load_cursor(db, CursorRow) == ""
