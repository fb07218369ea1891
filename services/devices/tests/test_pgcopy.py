"""The spool's binary COPY encoder against a real PostgreSQL: what goes in with `pgcopy.encode` reads
back field for field as what was meant (times before and after 2000, the largest sequence, non-ASCII
text), and data PostgreSQL cannot parse is refused whole, never half-stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from cityos_devices import pgcopy

pytestmark = pytest.mark.postgres

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


async def _spool(dsn: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(dsn)
    await connection.execute(
        "CREATE TEMP TABLE telemetry (seq bigserial PRIMARY KEY, device_id varchar(63) NOT NULL,"
        " sequence bigint NOT NULL, time timestamptz NOT NULL, values json NOT NULL,"
        " type varchar(63) NOT NULL, owner_organization varchar(64) NOT NULL,"
        " area_cell varchar(16) NOT NULL, received_time timestamptz NOT NULL,"
        " UNIQUE (device_id, sequence))"
    )
    return connection


async def test_encoded_rows_read_back_exactly(postgres_dsn):
    received = datetime(2026, 11, 29, 4, 30, 15, 123456, tzinfo=UTC)
    times = [
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before PostgreSQL's epoch
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 29, 4, 30, 0, 1, tzinfo=UTC),
    ]
    devices = [
        pgcopy.DeviceRows(
            "pk-1",
            "parking.sensor",
            "transport",
            "8931aa3b2d7ffff",
            _us(received),
            [(1, _us(times[0]), '{"occupied":1.0}'), (2**63 - 1, _us(times[1]), '{"battery_v":3.6}')],
        ),
        pgcopy.DeviceRows(
            "lamp-7",
            "streetlight.controller",
            "公共工程",
            "8931aa3b2c3ffff",
            _us(received),
            [(7, _us(times[2]), '{"power_w":-0.0,"dim_pct":1e-05}')],
        ),
    ]
    connection = await _spool(postgres_dsn)
    try:
        status = await connection.copy_to_table(
            "telemetry", source=memoryview(pgcopy.encode(devices)), columns=pgcopy.COLUMNS, format="binary"
        )
        assert status == "COPY 3"
        rows = await connection.fetch(
            "SELECT device_id, sequence, time, values::text AS values, type, owner_organization,"
            " area_cell, received_time FROM telemetry ORDER BY seq"
        )
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [
        ("pk-1", 1, times[0], '{"occupied":1.0}', "parking.sensor", "transport", "8931aa3b2d7ffff", received),
        (
            "pk-1",
            2**63 - 1,
            times[1],
            '{"battery_v":3.6}',
            "parking.sensor",
            "transport",
            "8931aa3b2d7ffff",
            received,
        ),
        (
            "lamp-7",
            7,
            times[2],
            '{"power_w":-0.0,"dim_pct":1e-05}',
            "streetlight.controller",
            "公共工程",
            "8931aa3b2c3ffff",
            received,
        ),
    ]


async def test_data_postgres_cannot_parse_is_refused_whole(postgres_dsn):
    good = pgcopy.DeviceRows("pk-1", "parking.sensor", "transport", "c", 0, [(1, 0, '{"occupied":1.0}')])
    bad = pgcopy.DeviceRows("pk-2", "parking.sensor", "transport", "c", 0, [(1, 0, '{"occupied":')])
    connection = await _spool(postgres_dsn)
    try:
        with pytest.raises(asyncpg.InvalidTextRepresentationError):
            await connection.copy_to_table(
                "telemetry",
                source=memoryview(pgcopy.encode([good, bad])),
                columns=pgcopy.COLUMNS,
                format="binary",
            )
        assert await connection.fetchval("SELECT count(*) FROM telemetry") == 0
    finally:
        await connection.close()


def test_the_data_is_framed_as_postgres_expects():
    data = pgcopy.encode([])
    assert data == pgcopy.SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00" + b"\xff\xff"
