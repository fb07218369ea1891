"""cityos_platform.lake.files and Lake's writes: idempotent parts, day splitting, schema casting, atomic
files (a reader never sees a partial one, even after kill -9), and compaction that never shows a row
twice or loses one, whatever step it is interrupted at."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cityos_platform.lake import (
    Lake,
    compact,
    live_files,
    partition_path,
    read_table,
    table,
    table_files,
    write_rows,
)
from cityos_platform.lake.files import MANIFEST, read_manifest

DAY = date(2026, 4, 10)


def _start(day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _keys(frame) -> list[tuple[str, int, str]]:
    return sorted(zip(frame["device_id"], frame["sequence"], frame["metric"], strict=True))


def test_writing_a_part_again_rewrites_the_same_files_with_the_same_rows(tmp_path, telemetry):
    lake = Lake.local(tmp_path / "lake")
    spec = table("device_telemetry")
    rows = telemetry(DAY, 2_000, seed=3)

    first = write_rows(lake, spec, rows, "devices-7-100-199")
    content = Path(first[0]).read_bytes()
    again = write_rows(lake, spec, rows, "devices-7-100-199")  # a flusher that crashed before recording it

    assert first == again == [partition_path(lake, spec, DAY) + "/part-devices-7-100-199.parquet"]
    assert Path(again[0]).read_bytes() == content
    assert lake.list_files(lake.path(spec.name)) == first
    frame = read_table(spec.name, lake=lake).compute()
    assert len(frame) == 2_000
    assert len(set(_keys(frame))) == 2_000
    assert pq.read_metadata(first[0]).metadata[b"cityos.table.version"] == str(spec.version).encode()
    assert pq.read_metadata(first[0]).metadata[b"cityos.table"] == b"device_telemetry"
    with pytest.raises(ValueError, match="part id"):
        write_rows(lake, spec, rows, "../escape")
    assert write_rows(lake, spec, rows.slice(0, 0), "empty") == []


def test_rows_are_split_by_their_utc_day_and_sorted_by_time(tmp_path):
    lake = Lake.local(tmp_path / "lake")
    spec = table("device_events")
    berlin = ZoneInfo("Europe/Berlin")
    times = [
        datetime(2026, 4, 11, 0, 30, tzinfo=berlin),  # 2026-04-10 22:30 UTC
        datetime(2026, 4, 11, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 4, 10, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 4, 12, 12, 0, tzinfo=UTC),
        datetime(2026, 4, 10, 0, 0, tzinfo=UTC),
    ]
    rows = pa.table(
        {
            "event_id": [f"e{i}" for i in range(len(times))],
            "type": ["devices.device.updated"] * len(times),
            "schema_version": [1] * len(times),
            "source": ["devices"] * len(times),
            "subject": ["devices/d1"] * len(times),
            "owner_organization": ["utilities"] * len(times),
            "time": pa.array(times, pa.timestamp("us", tz="Europe/Berlin")),
        }
    )
    paths = write_rows(lake, spec, rows, "batch-1")

    assert [Path(p).parent.name for p in paths] == ["dt=2026-04-10", "dt=2026-04-11", "dt=2026-04-12"]
    by_day = {Path(p).parent.name: pq.read_table(p) for p in paths}
    assert by_day["dt=2026-04-10"]["event_id"].to_pylist() == ["e4", "e0", "e2"]  # in time order
    assert by_day["dt=2026-04-11"]["event_id"].to_pylist() == ["e1"]
    assert by_day["dt=2026-04-12"]["event_id"].to_pylist() == ["e3"]
    assert by_day["dt=2026-04-10"].schema.field("time").type == pa.timestamp("us", tz="UTC")
    # Missing nullable columns were written as nulls, in the registry's column order.
    assert by_day["dt=2026-04-11"].column_names == spec.schema.names
    assert by_day["dt=2026-04-11"]["payload"].null_count == 1


def test_casting_to_the_schema_names_what_is_wrong(tmp_path, telemetry):
    lake = Lake.local(tmp_path / "lake")
    spec = table("device_telemetry")
    rows = telemetry(DAY, 10)

    with pytest.raises(ValueError, match=r"missing non-nullable column\(s\) metric$"):
        write_rows(lake, spec, rows.drop_columns(["metric"]), "p")
    with pytest.raises(ValueError, match=r"unknown column\(s\) colour"):
        write_rows(lake, spec, rows.append_column("colour", pa.array(["red"] * 10)), "p")
    with pytest.raises(ValueError, match="column sequence is not nullable but has 1 null"):
        write_rows(
            lake, spec, rows.set_column(4, "sequence", pa.array([None, *list(range(9))], pa.int64())), "p"
        )
    with pytest.raises(ValueError, match=r"column value \(string\) does not cast to double"):
        write_rows(lake, spec, rows.set_column(6, "value", pa.array(["high"] * 10)), "p")
    assert lake.list_files(lake.root) == []
    # What does cast is cast: ints to doubles, int32 sequences, a missing nullable column.
    fine = rows.drop_columns(["area_cell"]).set_column(5, "value", pa.array(range(10), pa.int32()))
    (path,) = write_rows(lake, spec, fine, "p")
    written = pq.read_table(path)
    assert written.schema.field("value").type == pa.float64()
    assert written["area_cell"].null_count == 10


@pytest.mark.slow
def test_a_write_killed_midway_leaves_no_partial_file(tmp_path):
    folder = tmp_path / "lake" / "t" / "dt=2026-04-10"
    path = folder / "part-x.parquet"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import numpy as np, pyarrow as pa
        from cityos_platform.lake import Lake
        lake = Lake.local(Path({str(tmp_path / "lake")!r}))
        lake.write_parquet_atomic(pa.table({{"a": [1, 2, 3]}}), {str(path)!r})
        big = pa.table({{"a": np.random.default_rng(0).random(12_000_000)}})
        print("writing", flush=True)
        lake.write_parquet_atomic(big, {str(path)!r}, row_group_size=50_000)
        print("done", flush=True)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 30
        temporaries: list[Path] = []
        while time.monotonic() < deadline:
            temporaries = [p for p in folder.iterdir() if p.name.startswith(".") and p.stat().st_size > 0]
            if temporaries:
                break
            time.sleep(0.002)
        assert temporaries, "the second write never started"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    finally:
        writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert writer.stdout.read() == ""  # it never finished

    lake = Lake.local(tmp_path / "lake")
    assert [p for p in folder.iterdir() if p.name.startswith(".")], "the interrupted temporary is there"
    assert lake.list_files(lake.root) == [str(path)]  # but never listed
    assert pq.read_table(path)["a"].to_pylist() == [1, 2, 3]  # the previous complete file, untouched


def test_a_write_that_fails_leaves_nothing(tmp_path):
    lake = Lake.local(tmp_path / "lake")
    with pytest.raises(Exception, match="nope"):
        lake.write_parquet_atomic(
            pa.table({"a": [1]}), lake.path("t", "dt=2026-04-10", "part-y.parquet"), compression="nope"
        )
    assert list((tmp_path / "lake" / "t" / "dt=2026-04-10").iterdir()) == []
    (tmp_path / "lake" / "t" / "dt=2026-04-10" / "_compaction.json").write_text("{}")
    assert lake.list_files(lake.root) == []


# -- compaction ------------------------------------------------------------------------------------


@pytest.fixture
def parts(tmp_path, telemetry):
    """A lake with one day of 12 small parts (and one part on the next day)."""
    lake = Lake.local(tmp_path / "a")
    spec = table("device_telemetry")
    for n in range(12):
        write_rows(lake, spec, telemetry(DAY, 500, seed=n), f"src-{n:02d}")
    write_rows(lake, spec, telemetry(DAY + timedelta(days=1), 500, seed=99), "src-next")
    expected = _keys(read_table(spec.name, lake=lake).compute())
    assert len(expected) == 13 * 500
    return lake, spec, expected


def _rows(lake: Lake) -> list[tuple[str, int, str]]:
    return _keys(read_table("device_telemetry", lake=lake).compute())


def _copy_compacted(lake: Lake, spec, tmp_path: Path, *, with_manifest: bool) -> None:
    """Put `lake` in the state a compaction interrupted after writing its output leaves: compact a copy,
    then bring its output (and, `with_manifest`, its manifest) back next to the untouched inputs."""
    copy_root = tmp_path / "copy"
    shutil.copytree(lake.root, copy_root)
    copy = Lake.local(copy_root)
    (output,) = compact(copy, spec, DAY)
    partition = Path(partition_path(lake, spec, DAY))
    shutil.copy(output, partition / Path(output).name)
    if with_manifest:
        shutil.copy(Path(output).parent / MANIFEST, partition / MANIFEST)


def test_compaction_merges_a_days_parts_and_readers_see_the_same_rows(parts):
    lake, spec, expected = parts
    before = live_files(lake, spec, DAY)
    assert len(before) == 12

    outputs = compact(lake, spec, DAY)

    assert len(outputs) == 1
    assert Path(outputs[0]).name.startswith("compact-")
    assert live_files(lake, spec, DAY) == outputs
    assert lake.list_files(partition_path(lake, spec, DAY)) == outputs  # the inputs are gone
    assert _rows(lake) == expected
    manifest = read_manifest(lake, spec, DAY)
    assert manifest["live"] == [Path(outputs[0]).name]
    assert sorted(manifest["retired"]) == sorted(Path(p).name for p in before)
    assert pq.read_metadata(outputs[0]).num_rows == 12 * 500
    assert compact(lake, spec, DAY) == []  # nothing left to merge
    # The next day was not touched.
    assert len(live_files(lake, spec, DAY + timedelta(days=1))) == 1


def test_compaction_interrupted_before_its_manifest_shows_no_row_twice(parts, tmp_path):
    lake, spec, expected = parts
    _copy_compacted(lake, spec, tmp_path, with_manifest=False)
    partition = Path(partition_path(lake, spec, DAY))
    assert len(lake.list_files(str(partition))) == 13  # 12 inputs and an output nobody made live

    assert _rows(lake) == expected  # the orphan output is not read
    outputs = compact(lake, spec, DAY)  # the retry makes the same output, live this time
    assert [Path(p).name for p in outputs] == [p.name for p in partition.glob("compact-*")]
    assert _rows(lake) == expected
    assert lake.list_files(str(partition)) == outputs


def test_compaction_interrupted_before_deleting_its_inputs_shows_no_row_twice(parts, tmp_path):
    lake, spec, expected = parts
    _copy_compacted(lake, spec, tmp_path, with_manifest=True)
    partition = Path(partition_path(lake, spec, DAY))
    assert len(lake.list_files(str(partition))) == 13  # the output went live; the inputs are still there

    assert _rows(lake) == expected  # the retired inputs are not read
    assert len(table_files(spec.name, lake=lake)) == 2  # the output and the next day's part
    assert compact(lake, spec, DAY) == []  # nothing to merge, but the leftovers are removed
    assert len(lake.list_files(str(partition))) == 1
    assert _rows(lake) == expected


def test_a_part_rewritten_after_compaction_is_not_counted_twice(parts, telemetry):
    lake, spec, expected = parts
    compact(lake, spec, DAY)
    # A flusher that crashed after writing src-03 but before recording it writes it again.
    write_rows(lake, spec, telemetry(DAY, 500, seed=3), "src-03")
    assert _rows(lake) == expected
    # New parts after compaction are read, and a second compaction folds them in with the first output.
    write_rows(lake, spec, telemetry(DAY, 500, seed=50), "src-50")
    grown = sorted(expected + _keys(telemetry(DAY, 500, seed=50).to_pandas()))
    assert _rows(lake) == grown
    (second,) = compact(lake, spec, DAY)
    assert lake.list_files(partition_path(lake, spec, DAY)) == [second]
    assert _rows(lake) == grown
    assert json.loads(Path(partition_path(lake, spec, DAY), MANIFEST).read_text())["live"] == [
        Path(second).name
    ]


def test_compaction_aims_at_the_target_size(parts):
    lake, spec, expected = parts
    sizes = [os.path.getsize(p) for p in live_files(lake, spec, DAY)]
    outputs = compact(lake, spec, DAY, target_bytes=4 * max(sizes))
    assert 3 <= len(outputs) <= 4
    assert _rows(lake) == expected
