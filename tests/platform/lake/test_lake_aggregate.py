"""`aggregate_table`: a group-by aggregated per partition by Arrow and combined by Dask gives what pandas
gives over the same rows — counts, sums, minima, maxima and means, null keys as a group of their own,
with the query's window, filters and partitions (several files, so several partial results combine)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dask
import pyarrow as pa
import pytest

from cityos_platform.lake import aggregate_table, read_table, table, write_rows
from cityos_platform.lake import read as read_module

DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
AGGREGATIONS = {
    "mean": ("value", "mean"),
    "n": ("value", "count"),
    "low": ("value", "min"),
    "high": ("value", "max"),
    "total": ("sequence", "sum"),
}


@pytest.fixture
def lake_of_three_days(counting_lake, telemetry, monkeypatch):
    lake, _ = counting_lake
    spec = table("device_telemetry")
    for n, day in enumerate(DAYS):
        rows = telemetry(day, 9_000, seed=n, devices=40)
        # a third of the rows have no cell: a null group key
        cells = [None if i % 3 == 0 else c for i, c in enumerate(rows["area_cell"].to_pylist())]
        rows = rows.set_column(rows.schema.get_field_index("area_cell"), "area_cell", pa.array(cells))
        for part in range(2):  # two files a day: partial results from several partitions combine
            write_rows(lake, spec, rows.slice(part * 4_500, 4_500), f"d{n}-{part}")
    monkeypatch.setattr(read_module, "AGGREGATE_PARTITION_BYTES", 1)  # one file per partition
    return lake


def _expected(lake, by, start=None, end=None, filters=None):
    frame = read_table("device_telemetry", start, end, filters=filters, lake=lake).compute()
    grouped = frame.groupby(by, dropna=False)
    return grouped.agg(
        mean=("value", "mean"), n=("value", "count"), low=("value", "min"), high=("value", "max"),
        total=("sequence", "sum"),
    )  # fmt: skip


def _same(got, expected):
    got, expected = got.sort_index(), expected.sort_index()
    assert list(got.index) == list(expected.index)
    assert got["n"].tolist() == expected["n"].tolist()
    assert got["total"].tolist() == expected["total"].tolist()
    for column in ("mean", "low", "high"):
        assert got[column].astype(float).tolist() == pytest.approx(expected[column].astype(float).tolist())


@pytest.mark.parametrize("by", [["metric"], ["device_id", "metric"], ["area_cell", "metric"]])
def test_a_group_by_matches_pandas_over_the_same_rows(lake_of_three_days, by):
    lake = lake_of_three_days
    with dask.config.set(scheduler="sync"):
        frame = aggregate_table("device_telemetry", by, AGGREGATIONS, lake=lake)
        assert frame.npartitions >= 1
        _same(frame.compute(), _expected(lake, by))


def test_the_window_and_filters_apply_as_in_read_table(lake_of_three_days):
    lake = lake_of_three_days
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    end = start + timedelta(days=1)
    filters = [("metric", "in", ["tilt_deg", "battery_pct"])]
    with dask.config.set(scheduler="sync"):
        got = aggregate_table("device_telemetry", ["metric"], AGGREGATIONS, start, end, filters, lake=lake)
        _same(got.compute(), _expected(lake, ["metric"], start, end, filters))


def test_an_empty_window_is_an_empty_result_with_the_columns(lake_of_three_days):
    got = aggregate_table(
        "device_telemetry",
        ["metric"],
        AGGREGATIONS,
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2030, 1, 2, tzinfo=UTC),
        lake=lake_of_three_days,
    ).compute(scheduler="sync")
    assert len(got) == 0
    assert list(got.columns) == list(AGGREGATIONS)


def test_unknown_aggregates_and_columns_are_refused(lake_of_three_days):
    lake = lake_of_three_days
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        aggregate_table("device_telemetry", ["metric"], {"m": ("value", "median")}, lake=lake)
    with pytest.raises(KeyError, match="no column"):
        aggregate_table("device_telemetry", ["metric"], {"m": ("nope", "sum")}, lake=lake)
    with pytest.raises(ValueError, match="at least one column"):
        aggregate_table("device_telemetry", [], {"m": ("value", "sum")}, lake=lake)
