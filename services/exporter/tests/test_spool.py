"""The spool (cityos_exporter.spool) and the flusher on a local lake: a batch's rows and its cursor commit
together or not at all; parts are planned once, recorded, and come back unchanged until completed; a
part written again after a crash before its completion rewrites the same files, so the lake holds each
row once; sequence numbers and part ids are never reused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cityos_exporter.flusher import Flusher
from cityos_exporter.spool import CursorMoved, Spool
from cityos_platform.lake import files, tables
from cityos_platform.lake.location import Lake

T0 = datetime(2026, 5, 1, 23, 59, 58, tzinfo=UTC)


def _readings(device: str, first: int, count: int, *, start: datetime = T0) -> pa.Table:
    """`count` rows of device_telemetry, sequences first.., one second apart."""
    rows = [
        {
            "device_id": device,
            "device_type": "parking.sensor",
            "owner_organization": "transport",
            "area_cell": None,
            "sequence": first + n,
            "metric": "occupied",
            "value": float(n % 2),
            "time": start + timedelta(seconds=n),
            "received_time": start + timedelta(seconds=n),
        }
        for n in range(count)
    ]
    return pa.Table.from_pylist(rows, schema=tables.table("device_telemetry").schema)


def _lake_rows(root: Path, table: str) -> list[tuple[str, int]]:
    """(device, sequence) of every row in the lake's data files of `table`, read with pyarrow."""
    found = []
    for path in sorted((root / table).rglob("*.parquet")):
        if not path.name.startswith((".", "_")):
            data = pq.read_table(path, columns=["device_id", "sequence"])
            found += list(
                zip(data.column("device_id").to_pylist(), data.column("sequence").to_pylist(), strict=True)
            )
    return sorted(found)


def test_a_batch_and_its_cursor_commit_together_or_not_at_all(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite")
    assert spool.commit("devices.telemetry", "", "c1", {"device_telemetry": _readings("pk-1", 1, 3)}) == 3
    with pytest.raises(CursorMoved):  # read after a cursor that is not the stored one: nothing written
        spool.commit("devices.telemetry", "", "c2", {"device_telemetry": _readings("pk-1", 4, 3)})

    def fail(point: str) -> None:
        raise RuntimeError(f"killed at {point}")

    spool.pause = fail  # a failure inside the transaction, after the rows and the cursor were written
    with pytest.raises(RuntimeError, match="spool_commit"):
        spool.commit("devices.telemetry", "c1", "c2", {"device_telemetry": _readings("pk-1", 4, 3)})
    spool.close()

    again = Spool(tmp_path / "spool.sqlite")  # what a restarted exporter finds
    assert again.cursor("devices.telemetry") == "c1"
    assert again.rows == 3
    assert again.stats().chunks == 1
    assert again.cursor("parking") == ""


def test_parts_are_planned_per_table_and_source_in_order_recorded_and_returned_unchanged(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite")
    cursor = ""
    for n in range(5):  # five batches of 4 rows of the feed
        spool.commit("devices.telemetry", cursor, f"t{n}", {"device_telemetry": _readings("pk-1", 4 * n, 4)})
        cursor = f"t{n}"
    spool.commit("parking", "", "p1", {"device_telemetry": _readings("pk-9", 0, 2)})
    parts = spool.parts(max_rows=10)
    by_source = {(part.source, part.first_seq, part.last_seq, part.rows) for part in parts}
    assert by_source == {
        ("devices.telemetry", 1, 2, 8),
        ("devices.telemetry", 3, 4, 8),
        ("devices.telemetry", 5, 5, 4),
        ("parking", 6, 6, 2),
    }
    assert spool.read(parts[0]).column("sequence").to_pylist() == list(range(8))

    spool.commit("devices.telemetry", cursor, "t5", {"device_telemetry": _readings("pk-1", 20, 4)})
    assert spool.parts(max_rows=1000) == parts  # recorded: the same parts until completed, new rows wait
    spool.close()
    reopened = Spool(tmp_path / "spool.sqlite")
    assert reopened.parts(max_rows=1000) == parts
    assert reopened.epoch == parts[0].epoch
    for part in parts:
        reopened.complete(part)
    assert reopened.rows == 4
    (last,) = reopened.parts(max_rows=1000)
    assert (last.first_seq, last.last_seq) == (7, 7)
    reopened.complete(last)
    reopened.commit("devices.telemetry", "t5", "t6", {"device_telemetry": _readings("pk-1", 24, 1)})
    (after_empty,) = reopened.parts(max_rows=1000)
    assert after_empty.first_seq == 8, "a sequence number is never reused, so neither is a part id"


def test_a_part_written_again_after_a_crash_leaves_each_row_once(tmp_path):
    lake = Lake.local(tmp_path / "lake")
    spool = Spool(tmp_path / "spool.sqlite")
    # Readings across midnight: the part is split into two day partitions.
    spool.commit("devices.telemetry", "", "t1", {"device_telemetry": _readings("pk-1", 1, 5)})

    def crash(point: str) -> None:
        raise SystemExit(f"killed at {point}")  # after the files are written, before the rows leave

    flusher = Flusher(spool, lake, interval_s=60, flush_rows=1000, retry_s=0.1, max_backoff_s=1, pause=crash)
    with pytest.raises(SystemExit, match="lake_written"):
        flusher.flush_once()
    written = sorted(p.relative_to(tmp_path / "lake") for p in (tmp_path / "lake").rglob("*.parquet"))
    assert [p.parent.name for p in written] == ["dt=2026-05-01", "dt=2026-05-02"]
    assert spool.rows == 5, "the rows are still spooled"
    spool.commit("devices.telemetry", "t1", "t2", {"device_telemetry": _readings("pk-1", 6, 2)})
    spool.close()

    restarted = Spool(tmp_path / "spool.sqlite")
    flusher = Flusher(restarted, lake, interval_s=60, flush_rows=1000, retry_s=0.1, max_backoff_s=1)
    assert flusher.flush_once() == 7
    assert restarted.rows == 0
    assert restarted.parts(1000) == []
    assert _lake_rows(tmp_path / "lake", "device_telemetry") == [("pk-1", n) for n in range(1, 8)]
    again = sorted(p.relative_to(tmp_path / "lake") for p in (tmp_path / "lake").rglob("*.parquet"))
    assert set(written) <= set(again), "the crashed part was rewritten under the same names"


def test_the_flusher_keeps_the_rows_while_the_lake_fails_and_writes_them_once_it_works(tmp_path):
    blocker = tmp_path / "lake"
    blocker.write_text("not a folder")  # the lake's root cannot be created: every write fails
    spool = Spool(tmp_path / "spool.sqlite")
    spool.commit("devices.telemetry", "", "t1", {"device_telemetry": _readings("pk-1", 1, 3)})
    flusher = Flusher(
        spool, Lake.local(blocker), interval_s=60, flush_rows=1000, retry_s=0.1, max_backoff_s=1
    )
    for _ in range(3):
        with pytest.raises(OSError, match="lake"):
            flusher.flush_once()
    assert spool.rows == 3
    blocker.unlink()
    assert flusher.flush_once() == 3
    assert _lake_rows(blocker, "device_telemetry") == [("pk-1", 1), ("pk-1", 2), ("pk-1", 3)]


def test_compaction_merges_a_closed_days_parts_and_every_row_is_read_once(tmp_path):
    lake = Lake.local(tmp_path / "lake")
    spool = Spool(tmp_path / "spool.sqlite")
    flusher = Flusher(
        spool, lake, interval_s=60, flush_rows=1000, retry_s=0.1, max_backoff_s=1, compact_days=2
    )
    day = datetime(2026, 5, 1, 8, tzinfo=UTC)
    cursor = ""
    for n in range(4):  # four flushes: four small parts of 2026-05-01
        spool.commit(
            "devices.telemetry",
            cursor,
            f"t{n}",
            {"device_telemetry": _readings("pk-1", 10 * n, 10, start=day)},
        )
        cursor = f"t{n}"
        flusher.flush_once()
    spec = tables.table("device_telemetry")

    def live() -> list[str]:
        return files.live_files(lake, spec, day.date())

    def sequences() -> list[int]:
        return sorted(
            n for path in live() for n in files.read_file(lake, spec, path).column("sequence").to_pylist()
        )

    assert len(live()) == 4
    assert flusher.compact_once(now=day) == 0, "today's partition is still being written: left alone"
    assert flusher.compact_once(now=day + timedelta(days=1)) == 1
    assert len(live()) == 1
    assert sequences() == list(range(40))
    # A late reading for that day: a new part beside the compacted file, read once, merged next time.
    spool.commit(
        "devices.telemetry", cursor, "late", {"device_telemetry": _readings("pk-1", 40, 1, start=day)}
    )
    flusher.flush_once()
    assert len(live()) == 2
    assert sequences() == list(range(41))
    flusher.compact_once(now=day + timedelta(days=2))
    assert len(live()) == 1
    assert sequences() == list(range(41))
    spool.commit(
        "devices.telemetry", "late", "later", {"device_telemetry": _readings("pk-1", 41, 1, start=day)}
    )
    flusher.flush_once()
    assert flusher.compact_once(now=day + timedelta(days=3)) == 0, "older than compact_days: not looked at"
    assert len(live()) == 2
    assert sequences() == list(range(42))
