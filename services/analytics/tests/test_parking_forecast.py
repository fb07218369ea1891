"""The parking-forecast job: occupancy as an integral of the change log, its profile and forecast.

The slow tests (LAK-4) write a generated change log with a known daily pattern to a local lake, run the
job on the session's local Ray and recompute every output independently with DuckDB over the same
Parquet files (the intervals from `lead()` over each spot's changes, intersected with each hour) and a
few lines of pandas for the forecast's fallbacks. The fast tests pin down the interval arithmetic and
the forecast's fallbacks on hand-worked cases, and the empty window, without an engine.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cityos_analytics.engines import Engines
from cityos_analytics.jobs.base import JobContext
from cityos_analytics.jobs.parking_forecast import (
    FREE,
    HOUR_US,
    NOT_KNOWN,
    OCCUPIED,
    ParkingForecast,
    forecast,
    hourly_occupancy,
)
from cityos_analytics.runner import run_job
from cityos_platform.lake import Lake, read_table, table, write_rows

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
END = datetime(2026, 3, 14, tzinfo=UTC)  # a Saturday: the forecast covers a weekend day
PROFILE, FORECAST = "parking_occupancy_profile", "parking_occupancy_forecast"


# -- the generated change log -----------------------------------------------------------------------


def _busy(moment: datetime) -> float:
    """The truth: weekdays 90 % occupied from 08:00 to 18:00 and 10 % at night; weekends 30 %."""
    if moment.weekday() >= 5:
        return 0.3
    return 0.9 if 8 <= moment.hour < 18 else 0.1


def _changes(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(site: str, spot: str, status: str, moment: datetime, previous: str | None) -> None:
        rows.append(
            {
                "event_id": str(uuid.UUID(int=int(rng.integers(2**63)))),
                "site": site,
                "spot": spot,
                "status": status,
                "previous_status": previous,
                "owner_organization": "organizations/city",
                "time": moment,
            }
        )

    # sites/central: 20 spots changing every ~80 minutes (whole microseconds), the status drawn from the
    # daily pattern at the change, and now and then CLOSED or UNKNOWN.
    for n in range(20):
        moment, previous = START + timedelta(minutes=float(rng.uniform(0, 60))), None
        while moment < END:
            draw = rng.uniform()
            status = "CLOSED" if draw < 0.02 else "UNKNOWN" if draw < 0.04 else None
            status = status or ("OCCUPIED" if rng.uniform() < _busy(moment) else "FREE")
            add("sites/central", f"spots/c-{n:02d}", status, moment, previous)
            previous = status
            moment += timedelta(microseconds=int(rng.exponential(80 * 60 * 1e6)) + 1)
    # sites/late-start: 5 spots first seen on Monday 9 March: no weekend in its known hours.
    for n in range(5):
        moment = datetime(2026, 3, 9, tzinfo=UTC) + timedelta(minutes=float(rng.uniform(0, 120)))
        while moment < END:
            add(
                "sites/late-start",
                f"spots/l-{n}",
                "OCCUPIED" if rng.uniform() < 0.5 else "FREE",
                moment,
                None,
            )
            moment += timedelta(minutes=float(rng.exponential(120)))
    # sites/one-spot: one spot, known from Friday 13 March 22:30 only (hours 22 and 23 of a weekday).
    add("sites/one-spot", "spots/o-1", "OCCUPIED", datetime(2026, 3, 13, 22, 30, tzinfo=UTC), "FREE")
    add("sites/one-spot", "spots/o-1", "FREE", datetime(2026, 3, 13, 23, 15, tzinfo=UTC), "OCCUPIED")
    # sites/closed: its spots are never known, so it has no profile and no forecast.
    add("sites/closed", "spots/x-1", "CLOSED", START + timedelta(hours=5), None)
    add("sites/closed", "spots/x-2", "UNKNOWN", START + timedelta(hours=7), None)
    return rows


@pytest.fixture
def change_log(lake: Lake) -> Lake:
    rows = _changes(np.random.default_rng(20260302))
    write_rows(lake, table("parking_occupancy"), pa.Table.from_pylist(rows), "gen-1")
    return lake


# -- the independent computation -------------------------------------------------------------------


def _expected_hourly(lake: Lake) -> pd.DataFrame:
    """Each site's hourly rate, by DuckDB alone: each change's interval until the spot's next change
    (or the window end), intersected with each hour; occupied over FREE-or-OCCUPIED microseconds."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = f"{lake.root}/parking_occupancy/dt=*/*.parquet"
    return (
        con.execute(
            f"""
        WITH changes AS (
            SELECT site, spot, status, time, event_id FROM read_parquet('{files}')
            WHERE time >= $start AND time < $end
        ), intervals AS (
            SELECT site, status, time AS since,
                   coalesce(lead(time) OVER (PARTITION BY site, spot ORDER BY time, event_id), $end) AS until
            FROM changes
        ), hours AS (
            SELECT unnest(generate_series($start, $end - INTERVAL 1 HOUR, INTERVAL 1 HOUR)) AS hour
        ), overlap AS (
            SELECT site, hour, status,
                   epoch_us(least(until, hour + INTERVAL 1 HOUR)) - epoch_us(greatest(since, hour)) AS us
            FROM intervals JOIN hours ON since < hour + INTERVAL 1 HOUR AND until > hour
        )
        SELECT site, hour AS time,
               sum(us) FILTER (WHERE status = 'OCCUPIED') AS occupied,
               sum(us) FILTER (WHERE status IN ('FREE', 'OCCUPIED')) AS known
        FROM overlap GROUP BY site, hour
        HAVING sum(us) FILTER (WHERE status IN ('FREE', 'OCCUPIED')) > 0
        ORDER BY site, hour
        """,
            {"start": START, "end": END},
        )
        .df()
        .assign(rate=lambda f: f["occupied"].fillna(0) / f["known"])
    )


def _expected_profile(hourly: pd.DataFrame) -> pd.DataFrame:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("hourly", hourly[["site", "time", "rate"]])
    return con.execute(
        """
        SELECT site, CASE WHEN isodow(time) >= 6 THEN 'weekend' ELSE 'weekday' END AS day_type,
               hour(time) AS hour, avg(rate) AS mean_rate, stddev_pop(rate) AS std_rate, count(*) AS hours
        FROM hourly GROUP BY ALL ORDER BY site, day_type, hour
        """
    ).df()


def _expected_forecast(hourly: pd.DataFrame) -> pd.DataFrame:
    """The 24 hours from END, each the mean (and population std) of the rates of the same day type and
    hour of day, else of the same hour of day, else of all the site's hours."""
    rows = []
    for site, rates in hourly.groupby("site"):
        weekend = rates["time"].dt.day_of_week >= 5
        for k in range(24):
            moment = pd.Timestamp(END) + pd.Timedelta(hours=k)
            same_hour = rates["time"].dt.hour == moment.hour
            chosen = rates[same_hour & (weekend == (moment.day_of_week >= 5))]
            basis = "profile"
            if chosen.empty:
                chosen, basis = rates[same_hour], "hour_of_day"
            if chosen.empty:
                chosen, basis = rates, "overall"
            mean, std = chosen["rate"].mean(), chosen["rate"].std(ddof=0)
            rows.append((site, moment, mean, max(0, mean - std), min(1, mean + std), basis, len(chosen)))
    return pd.DataFrame(rows, columns=["site", "time", "rate", "lower", "upper", "basis", "hours"])


def _written(result_files: list[str]) -> pd.DataFrame:
    return pa.concat_tables([pq.read_table(path) for path in result_files]).to_pandas()


# -- the job on Ray against the independent computation (LAK-4) ------------------------------------


@pytest.mark.req("LAK-4")
@pytest.mark.slow
def test_profile_and_forecast_match_an_independent_duckdb_computation(change_log: Lake, ray_local) -> None:
    """The job's profile and forecast equal DuckDB's hour-by-hour integral of the same change log, and
    recover the generated pattern (busy weekday working hours, quiet nights, a flat weekend)."""
    progress: list[tuple[int, int, str]] = []
    result = run_job(
        "parking-forecast", START, END, lake=change_log, on_progress=lambda *p: progress.append(p)
    )
    hourly = _expected_hourly(change_log)
    profile = _written(result.files[PROFILE]).sort_values(["site", "day_type", "hour"], ignore_index=True)
    expected = _expected_profile(hourly)

    assert sorted(set(profile["site"])) == ["sites/central", "sites/late-start", "sites/one-spot"]
    assert list(profile[["site", "day_type", "hour", "hours"]].itertuples(index=False)) == list(
        expected[["site", "day_type", "hour", "hours"]].itertuples(index=False)
    )
    np.testing.assert_allclose(profile["mean_rate"], expected["mean_rate"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(profile["std_rate"], expected["std_rate"], rtol=0, atol=1e-12)
    assert (profile["run_id"] == result.run_id).all()
    assert (profile["time"] == pd.Timestamp(END)).all()
    assert profile["model_version"].nunique() == 1

    # The truth behind the generated data: 12 days, of which 10 weekdays and 2 weekend days.
    central = profile[profile["site"] == "sites/central"].set_index(["day_type", "hour"])
    assert central.loc["weekday", "hours"].eq(10).all()
    assert central.loc["weekend", "hours"].eq(2).all()
    assert central.loc[[("weekday", h) for h in range(10, 16)], "mean_rate"].min() > 0.75
    assert central.loc[[("weekday", h) for h in range(0, 6)], "mean_rate"].max() < 0.25
    assert 0.15 < central.loc["weekend", "mean_rate"].mean() < 0.45

    ahead = _written(result.files[FORECAST]).sort_values(["site", "time"], ignore_index=True)
    want = _expected_forecast(hourly)
    assert list(ahead[["site", "time", "basis", "hours"]].itertuples(index=False)) == list(
        want[["site", "time", "basis", "hours"]].itertuples(index=False)
    )
    for name in ("rate", "lower", "upper"):
        np.testing.assert_allclose(ahead[name], want[name], rtol=0, atol=1e-12)
    # Saturday: the busy site uses its weekend profile, the late starter (weekdays only) falls back to the
    # hour of day, the one-spot site knows hours 22 and 23 only, and the closed site has no forecast.
    bases = {site: set(rows["basis"]) for site, rows in ahead.groupby("site")}
    assert bases == {
        "sites/central": {"profile"},
        "sites/late-start": {"hour_of_day"},
        "sites/one-spot": {"hour_of_day", "overall"},
    }
    # One spot: OCCUPIED 22:30-23:15, then FREE: hour 22 is all occupied (of its known 30 minutes), hour
    # 23 a quarter; the other hours take their mean.
    one_spot = ahead[ahead["site"] == "sites/one-spot"]
    one_spot = one_spot.set_index(one_spot["time"].dt.hour)
    assert one_spot.loc[22, "rate"] == 1.0
    assert one_spot.loc[23, "rate"] == 0.25
    assert one_spot.loc[0, "rate"] == pytest.approx(0.625)
    assert one_spot.loc[0, "basis"] == "overall"
    assert ((ahead["lower"] <= ahead["rate"]) & (ahead["rate"] <= ahead["upper"])).all()
    assert ((ahead["lower"] >= 0) & (ahead["upper"] <= 1)).all()

    # One Ray task per site: the progress bar grew by the four sites and named each as it finished.
    assert {step for _, _, step in progress if step.startswith("site ")} == {
        "site sites/central",
        "site sites/late-start",
        "site sites/one-spot",
        "site sites/closed",
    }
    assert progress[-1][0] == progress[-1][1]
    assert result.summary["sites"] == 4
    assert result.summary["sites_forecast"] == 3
    page = change_log.read_bytes(result.report).decode()
    assert "sites/central: next 24 hours" in page
    assert "sites/closed" in page


@pytest.mark.req("LAK-4")
@pytest.mark.slow
def test_a_rerun_of_the_window_leaves_one_copy_of_each_row(change_log: Lake, ray_local) -> None:
    """Running the same window twice rewrites the same files with the same rows: the tables read back
    hold each (site, day type, hour) and (site, hour) once, with the first run's values."""
    first = run_job("parking-forecast", START, END, lake=change_log)
    again = run_job("parking-forecast", START, END, lake=change_log)
    assert again.rows == first.rows
    assert again.files == first.files
    profile = read_table(PROFILE, lake=change_log).compute()
    ahead = read_table(FORECAST, lake=change_log).compute()
    assert len(profile) == first.rows[PROFILE]
    assert len(ahead) == first.rows[FORECAST]
    assert not profile.duplicated(["run_id", "site", "day_type", "hour"]).any()
    assert not ahead.duplicated(["run_id", "site", "time"]).any()


# -- the pure parts (no engine) --------------------------------------------------------------------

H = HOUR_US


def test_occupancy_is_split_exactly_at_hour_boundaries() -> None:
    """Spot a is OCCUPIED 00:30-02:15 then FREE; spot b is FREE 01:00-01:30 then CLOSED. Each status
    holds until the spot's next change or the window end; CLOSED and the seconds before a spot's first
    change are not known."""
    starts, occupied, known = hourly_occupancy(
        np.array([0, 0, 1, 1]),
        np.array([OCCUPIED, FREE, FREE, NOT_KNOWN]),
        np.array([H // 2, 2 * H + H // 4, H, H + H // 2]),
        0,
        3 * H,
    )
    assert starts.tolist() == [0, H, 2 * H]
    assert occupied.tolist() == [H // 2, H, H // 4]
    assert known.tolist() == [H // 2, H + H // 2, H]


def test_a_window_not_on_the_hour_clips_its_first_and_last_hours() -> None:
    """Window 00:30-02:30, one spot OCCUPIED from 01:00 (+10 µs): hour 0 has no known second, hour 1 is
    fully occupied but for 10 µs, hour 2 counts its 30 minutes inside the window only."""
    starts, occupied, known = hourly_occupancy(
        np.array([7]), np.array([OCCUPIED]), np.array([H + 10]), H // 2, 2 * H + H // 2
    )
    assert starts.tolist() == [0, H, 2 * H]
    assert occupied.tolist() == known.tolist() == [0, H - 10, H // 2]


def test_changes_at_the_same_time_count_the_last_one_and_unknown_status_names_are_not_known() -> None:
    """Two changes of one spot at one instant: the later in input order holds (the job sorts ties by
    event id); an UNKNOWN status ends the known time like CLOSED does."""
    _, occupied, known = hourly_occupancy(
        np.array([1, 1, 1]), np.array([FREE, OCCUPIED, NOT_KNOWN]), np.array([0, 0, H // 4]), 0, H
    )
    assert occupied.tolist() == known.tolist() == [H // 4]
    _, occupied, known = hourly_occupancy(np.array([], dtype=np.int64), np.array([]), np.array([]), 0, 2 * H)
    assert occupied.tolist() == known.tolist() == [0, 0]


def _hourly(*rates: tuple[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"time": pd.to_datetime([t for t, _ in rates], utc=True), "rate": [r for _, r in rates]}
    )


def test_the_forecast_falls_back_from_profile_to_hour_of_day_to_overall() -> None:
    """Rates at 10:00 on two weekdays and one Saturday, and at 05:00 on one weekday: a Saturday forecast
    uses the weekend profile at 10:00, the weekday 05:00 for 05:00 (hour of day), the mean of all four
    elsewhere; bounds are mean ± population std clipped to [0, 1]."""
    hourly = _hourly(
        ("2026-03-02T10:00", 0.9),
        ("2026-03-03T10:00", 0.7),
        ("2026-03-07T10:00", 0.2),
        ("2026-03-04T05:00", 1.0),
    )
    ahead = forecast(hourly, datetime(2026, 3, 14, tzinfo=UTC)).set_index("time")
    at = ahead.index.hour
    assert len(ahead) == 24
    assert ahead.index[0] == pd.Timestamp("2026-03-14T00:00Z")
    assert ahead.loc[at == 10, ["rate", "basis", "hours"]].iloc[0].tolist() == [0.2, "profile", 1]
    assert ahead.loc[at == 5, ["rate", "basis", "hours"]].iloc[0].tolist() == [1.0, "hour_of_day", 1]
    overall = ahead.loc[at == 3].iloc[0]
    std = float(np.std([0.9, 0.7, 0.2, 1.0]))
    assert (overall["basis"], overall["hours"]) == ("overall", 4)
    assert overall["rate"] == pytest.approx(0.7)
    assert (overall["lower"], overall["upper"]) == pytest.approx((0.7 - std, min(1.0, 0.7 + std)))
    # A weekday forecast uses the weekday profile at 10:00, clipped at 1: 0.8 ± 0.1.
    weekday = forecast(hourly, datetime(2026, 3, 12, 9, 30, tzinfo=UTC))
    assert weekday["time"].iloc[0] == pd.Timestamp("2026-03-12T10:00Z")  # rounded up to the hour
    assert weekday.iloc[0][["rate", "lower", "upper", "basis", "hours"]].tolist() == pytest.approx(
        [0.8, 0.7, 0.9, "profile", 2]
    )
    assert forecast(_hourly(), datetime(2026, 3, 12, tzinfo=UTC)).empty


def test_an_empty_window_gives_empty_outputs_and_starts_no_engine(lake: Lake) -> None:
    """No change in the window: both tables are empty (with their schemas) and the report says so; the
    job never touches Ray (there is nothing to fit)."""
    import ray

    connected = ray.is_initialized()
    ctx = JobContext(job="parking-forecast", start=START, end=END, lake=lake, engines=Engines(), now=END)
    output = ParkingForecast().run(ctx)
    assert {name: t.num_rows for name, t in output.tables.items()} == {PROFILE: 0, FORECAST: 0}
    assert output.tables[PROFILE].schema == table(PROFILE).schema
    assert output.summary["sites"] == 0
    assert "Parking occupancy" in output.report_html
    assert ray.is_initialized() == connected  # a Ray call would have started (connected) Ray
