"""LAK-1: the exporter, killed with `kill -9` in the middle of a write and restarted, leaves the lake with
every event and every reading exactly once.

A real devices service runs in-process, its devices reporting readings and new devices being created
(events) the whole time. The exporter is the real `cityos serve exporter` subprocess, following the
devices service as client `cityos-exporter` of the development issuer, flushing every 0.3 s to a local
lake. It is killed with SIGKILL in the two dangerous windows — after a part's files are in the lake and
before its rows leave the spool (held open by CITYOS_EXPORTER_DEBUG_PAUSE_AT=lake_written), and inside a
batch's spool transaction (spool_commit) — and at random moments, then restarted; at the end the lake
is compared with what the devices service holds, read back through its own APIs and with pyarrow alone.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

FLUSH = {"CITYOS_EXPORTER_FLUSH_INTERVAL_S": "0.3"}


def _spool(path: Path) -> tuple[list[tuple[str, str, int, int]], dict[str, str]]:
    """The parts recorded in the spool and the streams' cursors, read-only, as a person would."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        parts = conn.execute("SELECT table_name, source, first_seq, last_seq FROM parts").fetchall()
        cursors = dict(conn.execute("SELECT source, cursor FROM cursors").fetchall())
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    return [
        (table, f"{source}-{epoch}-{first:012d}-{last:012d}", first, last)
        for table, source, first, last in parts
    ], cursors


@pytest.mark.slow
@pytest.mark.req("LAK-1")
async def test_killed_mid_write_and_restarted_the_exporter_leaves_every_event_and_reading_exactly_once(
    fleet, producer, source, exporter_env, lake_rows, find_duplicates, tmp_path
):
    exporter = exporter_env({"devices": fleet.server.address}, **FLUSH)
    lake = tmp_path / "exporter-var" / "lake"
    spool = tmp_path / "exporter-var" / "exporter" / "spool.sqlite"
    await producer.start()
    rewritten_parts = 0
    chance = random.Random(9)
    for round_ in range(2):
        # Killed after writing a part's files, before removing its rows from the spool.
        exporter.start(CITYOS_EXPORTER_DEBUG_PAUSE_AT="lake_written", CITYOS_EXPORTER_DEBUG_PAUSE_S="60")
        await exporter.wait_for_log("debug pause at lake_written")
        await exporter.kill()
        parts, _ = _spool(spool)
        assert parts, "killed with parts recorded and their rows still spooled"
        written = [
            table for table, part_id, _, _ in parts if list((lake / table).rglob(f"part-{part_id}.parquet"))
        ]
        assert written, "at least one of those parts is already in the lake: the restart rewrites it"
        rewritten_parts += len(written)

        # Restarted, it reads more before its first flush (1 s), which must write the half-done parts as
        # they were; then killed at a random moment (reading, spooling, flushing or idle).
        exporter.start(CITYOS_EXPORTER_FLUSH_INTERVAL_S="1.0")
        await exporter.wait_for_log("flushed")
        await asyncio.sleep(chance.uniform(0.0, 1.2))
        await exporter.kill()

        if round_ == 1:
            break
        # Killed inside a batch's spool transaction: its rows and its cursor are both not there.
        exporter.start(CITYOS_EXPORTER_DEBUG_PAUSE_AT="spool_commit", CITYOS_EXPORTER_DEBUG_PAUSE_S="60")
        await exporter.wait_for_log("debug pause at spool_commit")
        _, cursors_in_commit = _spool(spool)
        await exporter.kill()
        assert _spool(spool)[1] == cursors_in_commit, "the killed transaction moved no cursor"

    # The last run: the devices stop producing, the exporter catches up and stops gracefully.
    exporter.start()
    await asyncio.sleep(1.0)
    await producer.stop()
    readings = await source.readings()
    events = await source.events()
    telemetry_keys = sorted(
        (record.device.removeprefix("devices/"), record.reading.sequence, metric)
        for record in readings
        for metric in record.reading.values
    )
    fs = LocalFileSystem()

    async def lake_has_everything() -> bool:
        table = lake_rows(fs, str(lake), "device_telemetry", ["device_id"])
        return table.num_rows >= len(telemetry_keys)

    deadline = asyncio.get_running_loop().time() + 30
    while not await lake_has_everything():
        assert asyncio.get_running_loop().time() < deadline, "the lake did not catch up in 30 s"
        await asyncio.sleep(0.2)
    assert await exporter.terminate() == 0
    assert exporter.starts == 6
    assert rewritten_parts >= 2
    assert len(readings) >= producer.readings > 300  # (a report in flight when stopped may count once)

    telemetry = lake_rows(fs, str(lake), "device_telemetry", ["device_id", "sequence", "metric"])
    in_lake = sorted(
        zip(*(telemetry.column(name).to_pylist() for name in telemetry.column_names), strict=True)
    )
    assert find_duplicates(in_lake) == []
    assert in_lake == telemetry_keys

    manholes = lake_rows(fs, str(lake), "manhole_readings", ["device_id", "sequence", "metric"])
    in_manholes = sorted(
        zip(*(manholes.column(name).to_pylist() for name in manholes.column_names), strict=True)
    )
    assert in_manholes == [key for key in telemetry_keys if key[0].startswith("mt-")]

    device_events = lake_rows(fs, str(lake), "device_events", ["event_id"]).column("event_id").to_pylist()
    assert find_duplicates(device_events) == []
    assert sorted(device_events) == sorted(event.id for event in events)
    assert len(events) >= len(producer.ids) + 2  # two models, and every device created
