"""cityos_platform.lake.read: what a query touches (LAK-3), old and new schema versions together (LAK-7),
and the time window's semantics.

The pushdown proof reads through `CountingFS` (conftest.py), a LocalFileSystem subclass that records the
folders listed, the files opened and every (offset, length) read; pyarrow reads it through its fsspec
handler, with the same Parquet reader (and the same pushdown) as on the native local or S3 filesystems.
What was read is compared with the file's own layout: each column chunk's byte range from the Parquet
metadata.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cityos_platform.lake import REGISTRY, read_table, table, table_files, write_rows
from cityos_platform.lake.tables import column

DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)]
ROWS_PER_DAY = 24_000
ROW_GROUP = 4_000
FOOTER_PROBE = 64 * 1024  # Arrow reads up to the last 64 KiB of a file at once to find its footer


def _utc(day: date, hour: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _chunks(path: str) -> list[tuple[int, str, int, int]]:
    """Every column chunk of the file: (row group, column, start offset, end offset)."""
    metadata = pq.ParquetFile(path).metadata
    out = []
    for rg in range(metadata.num_row_groups):
        for c in range(metadata.num_columns):
            chunk = metadata.row_group(rg).column(c)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            out.append((rg, chunk.path_in_schema, start, start + chunk.total_compressed_size))
    return out


def _split_reads(fs, path: str, size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The reads of `path` as (start, end): the footer probes (reads that end at the end of the file) and
    the others."""
    reads = [(offset, offset + length) for p, offset, length in fs.reads if p == path and length]
    tail = [r for r in reads if r[1] == size]
    return tail, [r for r in reads if r[1] != size]


@pytest.fixture
def three_days(counting_lake, telemetry):
    lake, fs = counting_lake
    spec = table("device_telemetry")
    written = {}
    for n, day in enumerate(DAYS):
        (written[day],) = write_rows(
            lake, spec, telemetry(day, ROWS_PER_DAY, seed=n), f"d{n}", row_group_rows=ROW_GROUP
        )
    fs.reset()
    return lake, fs, written


@pytest.mark.req("LAK-3")
def test_one_day_and_two_columns_reads_only_that_days_file_and_those_columns(three_days, telemetry):
    lake, fs, written = three_days
    day = DAYS[1]
    path = written[day]
    size = lake.fs.size(path)

    frame = read_table(
        "device_telemetry", _utc(day), _utc(day) + timedelta(days=1), ["device_id", "value"], lake=lake
    )
    result = frame.compute()

    # The right rows: the day's, those two columns, in the file's (time) order.
    expected = telemetry(day, ROWS_PER_DAY, seed=1).select(["device_id", "value"]).to_pandas()
    assert list(result.columns) == ["device_id", "value"]
    assert len(result) == ROWS_PER_DAY
    assert result["device_id"].tolist() == expected["device_id"].tolist()
    assert result["value"].tolist() == pytest.approx(expected["value"].tolist())

    # Partition pruning: only the table's folder and that day's folder were listed, only its file opened.
    table_folder = lake.path("device_telemetry")
    assert set(fs.listed) <= {table_folder, f"{table_folder}/dt={day.isoformat()}"}, fs.listed
    assert set(fs.opened) == {path}
    assert {p for p, _, _ in fs.reads} == {path}

    # Projection: apart from the footer probe at the end of the file, every byte read lies in a column
    # chunk of device_id or value, and all of those chunks were read — no more, no less.
    chunks = _chunks(path)
    assert len({rg for rg, *_ in chunks}) == ROWS_PER_DAY // ROW_GROUP
    wanted = [(start, end) for _, name, start, end in chunks if name in ("device_id", "value")]
    tail, body = _split_reads(fs, path, size)
    assert tail
    assert all(end - start <= FOOTER_PROBE for start, end in tail)
    for start, end in body:
        assert any(c0 <= start and end <= c1 for c0, c1 in wanted), (
            f"read {start}..{end} is outside the columns"
        )
    probe_start = min(start for start, _ in tail)
    for c0, c1 in wanted:
        if c1 <= probe_start:  # a chunk before the probe must have been read on its own
            assert (
                sum(min(end, c1) - max(start, c0) for start, end in body if start < c1 and end > c0)
                == c1 - c0
            )
    body_bytes = sum(end - start for start, end in body)
    wanted_bytes = sum(end - start for start, end in wanted)
    assert body_bytes <= wanted_bytes
    other_bytes = sum(end - start for _, name, start, end in chunks if name not in ("device_id", "value"))
    assert fs.bytes_read() <= wanted_bytes + len(tail) * FOOTER_PROBE < size
    assert other_bytes > wanted_bytes / 2  # the skipped columns were worth skipping


@pytest.mark.req("LAK-3")
def test_a_filter_prunes_row_groups_by_their_statistics(three_days):
    lake, fs, written = three_days
    day = DAYS[2]
    path = written[day]
    size = lake.fs.size(path)
    window = (_utc(day), _utc(day) + timedelta(days=1))

    everything = read_table("device_telemetry", *window, ["device_id", "value"], lake=lake).compute()
    _, unfiltered_body = _split_reads(fs, path, size)
    fs.reset()

    evening = _utc(day, 20)
    filtered = read_table(
        "device_telemetry", *window, ["device_id", "value"], filters=[("time", ">=", evening)], lake=lake
    ).compute()
    _, filtered_body = _split_reads(fs, path, size)

    # The answer is the same as filtering everything afterwards (rows come in time order).
    reference = pq.read_table(path).to_pandas()
    keep = (reference["time"] >= pd.Timestamp(evening)).to_numpy()
    assert filtered["device_id"].tolist() == everything["device_id"][keep].tolist()
    assert 0 < len(filtered) < len(everything) / 4

    # Only the row groups whose time statistics reach 20:00 were read (the file is sorted by time).
    metadata = pq.ParquetFile(path).metadata
    time_index = metadata.schema.names.index("time")
    live = {
        rg
        for rg in range(metadata.num_row_groups)
        if metadata.row_group(rg).column(time_index).statistics.max >= evening
    }
    assert 0 < len(live) < metadata.num_row_groups
    allowed = [
        (s, e) for rg, name, s, e in _chunks(path) if rg in live and name in ("device_id", "value", "time")
    ]
    for start, end in filtered_body:
        assert any(c0 <= start and end <= c1 for c0, c1 in allowed), (
            f"read {start}..{end} outside live groups"
        )
    assert sum(e - s for s, e in filtered_body) < sum(e - s for s, e in unfiltered_body)


def test_the_time_window_cuts_rows_and_days(counting_lake, telemetry):
    lake, _fs = counting_lake
    spec = table("device_telemetry")
    for n, day in enumerate(DAYS):
        write_rows(lake, spec, telemetry(day, 480, seed=n), f"d{n}")  # one row every 3 minutes
    start, end = _utc(DAYS[1], 22), _utc(DAYS[2], 1)

    assert table_files("device_telemetry", start, end, lake) == [
        lake.path("device_telemetry", f"dt={d.isoformat()}", f"part-d{n}.parquet")
        for n, d in ((1, DAYS[1]), (2, DAYS[2]))
    ]
    times = read_table("device_telemetry", start, end, ["time"], lake=lake).compute()["time"]
    assert len(times) == 3 * 20  # [22:00, 01:00) at 3-minute steps
    assert times.min() == pd.Timestamp(start)
    assert times.max() < pd.Timestamp(end)
    # A naive datetime is UTC; an aware one in another zone is converted.
    naive = read_table(
        "device_telemetry", start.replace(tzinfo=None), end.replace(tzinfo=None), ["time"], lake=lake
    )
    assert len(naive.compute()) == 60
    # Nothing there: an empty frame with the right columns and types.
    empty = read_table(
        "device_telemetry", datetime(2030, 1, 1, tzinfo=UTC), columns=["device_id", "time"], lake=lake
    )
    assert list(empty.columns) == ["device_id", "time"]
    assert len(empty.compute()) == 0
    assert str(empty.dtypes["time"]) == "datetime64[us, UTC]"
    with pytest.raises(KeyError, match=r"no column.*nope"):
        read_table("device_telemetry", columns=["nope"], lake=lake)
    with pytest.raises(KeyError, match=r"known: .*device_telemetry"):
        read_table("no_such_table", lake=lake)


@pytest.mark.req("LAK-7")
def test_files_of_an_older_schema_version_read_with_newer_ones(counting_lake, monkeypatch):
    lake, _ = counting_lake
    v1 = table("device_events")
    v2 = dataclasses.replace(
        v1,
        version=2,
        schema=v1.schema.append(
            column("firmware", pa.string(), "firmware at the time", nullable=True, since=2)
        ),
    )
    day = date(2026, 5, 1)

    def events(first: int, count: int, **extra):
        base = _utc(day, 8)
        data = {
            "event_id": [f"e-{i}" for i in range(first, first + count)],
            "type": ["devices.device.updated"] * count,
            "schema_version": [1] * count,
            "source": ["devices"] * count,
            "subject": [f"devices/d{i % 7}" for i in range(first, first + count)],
            "owner_organization": ["utilities"] * count,
            "time": [base + timedelta(minutes=i) for i in range(first, first + count)],
        }
        return pa.table({**data, **extra})

    # Files sort by name within a day, and a reader must not depend on which version comes first: an old
    # file before the new one, and one after it (a version-1 exporter still running during the rollout).
    write_rows(lake, v1, events(0, 300), "a-old")  # written by the version-1 exporter
    monkeypatch.setitem(REGISTRY, "device_events", v2)  # the table gained a column
    write_rows(lake, v2, events(300, 200, firmware=[f"fw-{i % 3}" for i in range(200)]), "b-new")
    write_rows(lake, v1, events(500, 100), "c-old")

    versions = {
        pq.read_metadata(p).metadata[b"cityos.table.version"] for p in table_files("device_events", lake=lake)
    }
    assert versions == {b"1", b"2"}
    frame = read_table("device_events", lake=lake)
    assert "firmware" in frame.columns
    rows = frame.compute().set_index("event_id")
    assert len(rows) == 600
    assert rows.index.is_unique
    assert rows.loc[[f"e-{i}" for i in [*range(300), *range(500, 600)]], "firmware"].isna().all()
    assert rows.loc[[f"e-{i}" for i in range(300, 500)], "firmware"].notna().all()
    assert rows.loc["e-301", "firmware"] == "fw-1"
    # Filtering and projecting on the new column work across both versions.
    only = read_table(
        "device_events", columns=["event_id", "firmware"], filters=[("firmware", "==", "fw-2")], lake=lake
    )
    assert len(only.compute()) == len([i for i in range(200) if i % 3 == 2])
    # A reader still on version 1 reads the newer files too (the extra column is not read).
    monkeypatch.setitem(REGISTRY, "device_events", v1)
    assert len(read_table("device_events", columns=["event_id", "subject"], lake=lake).compute()) == 600
