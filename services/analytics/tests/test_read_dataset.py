"""`read_dataset`: a lake table as a Ray Dataset, with the same pushdown as `read_table` (LAK-3).

tests/platform/lake proves, by counting bytes, what the shared reader reads for a query; here the Ray
side is shown to run that same plan — the one day's file, only the asked columns, the filter applied —
and to return the rows `read_table` returns."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from cityos_platform.lake import read_dataset, read_table, table, write_rows
from cityos_platform.lake.read import plan_read

DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]


def _telemetry(day: date, rows: int, seed: int) -> pa.Table:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    times = [start + timedelta(seconds=i * 86_400 / rows) for i in range(rows)]
    return pa.table(
        {
            "device_id": [f"mh-{(i * 7 + seed) % 50:04d}" for i in range(rows)],
            "device_type": ["manhole.terminal"] * rows,
            "owner_organization": ["utilities"] * rows,
            "area_cell": [None] * rows,
            "sequence": list(range(seed * rows, (seed + 1) * rows)),
            "metric": [("tilt_deg", "water_level_m", "battery_v")[i % 3] for i in range(rows)],
            "value": [float((i * 13 + seed) % 97) for i in range(rows)],
            "time": times,
            "received_time": times,
        }
    )


@pytest.fixture
def three_days(lake):
    for n, day in enumerate(DAYS):
        write_rows(lake, table("device_telemetry"), _telemetry(day, 3_000, n), f"d{n}")
    return lake


@pytest.mark.slow
@pytest.mark.req("LAK-3")
def test_a_ray_dataset_reads_one_days_file_and_the_asked_columns_with_the_filter(ray_local, three_days):
    lake = three_days
    day = datetime(2026, 3, 2, tzinfo=UTC)
    args = (
        "device_telemetry",
        day,
        day + timedelta(days=1),
        ["device_id", "value"],
        [("metric", "==", "tilt_deg")],
    )

    plan = plan_read(*args, lake=lake)
    assert [len(group) for group in plan.groups] == [1]
    assert "dt=2026-03-02" in plan.groups[0][0]
    assert plan.reader.columns == ["device_id", "value"]  # projection: what the Parquet reader is asked for

    dataset = read_dataset(*args, lake=lake)
    assert dataset.schema().names == ["device_id", "value"]
    rows = dataset.to_pandas()
    expected = read_table(*args, lake=lake).compute()
    assert len(rows) == len(expected) == 1_000  # the day's tilt rows only
    assert sorted(zip(rows.device_id, rows.value, strict=True)) == sorted(
        zip(expected.device_id, expected.value, strict=True)
    )


@pytest.mark.slow
def test_an_empty_window_is_an_empty_dataset_with_the_columns(ray_local, lake):
    dataset = read_dataset(
        "device_telemetry",
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2030, 1, 2, tzinfo=UTC),
        ["value"],
        lake=lake,
    )
    assert dataset.count() == 0
    assert dataset.schema().names == ["value"]
