"""The device-anomalies job: per-class isolation forests over the devices' window features.

The slow tests (LAK-4) write a day of telemetry to a local lake — a class of 30 air sensors of which two
misbehave (one reports temperatures 15 °C too high, one sends at half the rate and always late) and a
class of 3 water meters — run the job on the session's local Ray, and recompute the result
independently: the features with DuckDB SQL over the same Parquet files, the forest with scikit-learn's
IsolationForest and the same parameters. The fast tests pin down the features' edge cases (a missing
metric, NaN values, a reading of several metrics), the robust z-score, the params and the skipped class,
without an engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cityos_analytics.engines import Engines
from cityos_analytics.jobs.base import JobContext
from cityos_analytics.jobs.device_anomalies import DeviceAnomalies, device_features, job_params, robust_z
from cityos_analytics.runner import run_job
from cityos_platform.lake import Lake, read_table, table, write_rows

START = datetime(2026, 3, 2, tzinfo=UTC)
END = datetime(2026, 3, 3, tzinfo=UTC)
HOURS = 24.0
SENSOR, METER = "air.sensor", "meter.water"
SPOOFED, LAGGING = "air-07", "air-21"
ANOMALIES = "device_anomalies"


# -- the generated telemetry -----------------------------------------------------------------------


def _reading_rows(
    device: str, kind: str, sequence: int, moment: datetime, delay: timedelta, values: dict[str, float]
) -> list[dict[str, Any]]:
    return [
        {
            "device_id": device,
            "device_type": kind,
            "owner_organization": "organizations/env" if kind == SENSOR else "organizations/water",
            "area_cell": "89283082803ffff",
            "sequence": sequence,
            "metric": metric,
            "value": value,
            "time": moment,
            "received_time": moment + delay,
        }
        for metric, value in values.items()
    ]


def _telemetry(rng: np.random.Generator) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for n in range(30):
        device = f"air-{n:02d}"
        every = timedelta(minutes=40 if device == LAGGING else 20)
        offset = 15.0 if device == SPOOFED else 0.0
        moment, sequence = START + timedelta(seconds=float(rng.uniform(0, 600))), 0
        while moment < END:
            delay = (
                timedelta(minutes=10) if device == LAGGING else timedelta(seconds=float(rng.uniform(0.2, 5)))
            )
            values = {
                "temperature_c": 12 + 6 * np.sin(moment.hour / 24 * 2 * np.pi) + offset + rng.normal(0, 0.5),
                "humidity_pct": 60 + rng.normal(0, 3),
            }
            if n == 3 and sequence == 5:
                values["humidity_pct"] = float("nan")  # ignored by the features
            rows += _reading_rows(device, SENSOR, sequence, moment, delay, values)
            moment, sequence = moment + every, sequence + 1
    for n in range(3):  # too few water meters for a baseline
        for sequence in range(24):
            moment = START + timedelta(hours=sequence)
            rows += _reading_rows(
                f"meter-{n}", METER, sequence, moment, timedelta(seconds=2), {"flow_l": 5.0 * n}
            )
    return pa.Table.from_pylist(rows)


@pytest.fixture
def telemetry(lake: Lake) -> Lake:
    write_rows(lake, table("device_telemetry"), _telemetry(np.random.default_rng(7)), "gen-1")
    return lake


# -- the independent computation -------------------------------------------------------------------

STATS = ("mean", "std", "min", "max", "per_hour")


def _expected_features(lake: Lake, kind: str, late_after_s: float) -> pd.DataFrame:
    """The documented features, by DuckDB SQL alone: per device and metric the mean, population std,
    min, max and values per hour of the finite values; per device the fraction of its readings
    (sequences) whose latest metric arrived more than `late_after_s` after it was measured."""
    import duckdb

    files = f"{lake.root}/device_telemetry/dt=*/*.parquet"
    con = duckdb.connect()
    params = {"start": START, "end": END, "kind": kind, "hours": HOURS, "late": late_after_s}
    base = f"""
        SELECT * FROM read_parquet('{files}')
        WHERE time >= $start AND time < $end AND device_type = $kind AND isfinite(value)
    """
    stats = con.execute(
        f"""
        SELECT device_id, metric, avg(value) AS mean, stddev_pop(value) AS std, min(value) AS min,
               max(value) AS max, count(*) / $hours AS per_hour
        FROM ({base}) GROUP BY device_id, metric
        """,
        {k: params[k] for k in ("start", "end", "kind", "hours")},
    ).df()
    late = con.execute(
        f"""
        SELECT device_id, avg(CASE WHEN lag_s > $late THEN 1.0 ELSE 0.0 END) AS late_fraction
        FROM (SELECT device_id, sequence, max(epoch_us(received_time) - epoch_us(time)) / 1e6 AS lag_s
              FROM ({base}) GROUP BY device_id, sequence)
        GROUP BY device_id
        """,
        {k: params[k] for k in ("start", "end", "kind", "late")},
    ).df()
    wide = stats.pivot(index="device_id", columns="metric", values=list(STATS))
    columns = {
        f"{metric}.{stat}": wide[(stat, metric)]
        for metric in sorted(stats["metric"].unique())
        for stat in STATS
    }
    features = pd.DataFrame(columns).join(late.set_index("device_id"))
    return features.sort_index()


def _written(files: list[str]) -> pd.DataFrame:
    return pa.concat_tables([pq.read_table(path) for path in files]).to_pandas()


# -- the job on Ray against the independent computation (LAK-4) ------------------------------------


@pytest.mark.req("LAK-4")
@pytest.mark.slow
def test_scores_match_an_independent_isolation_forest_and_flag_the_planted_devices(
    telemetry: Lake, ray_local
) -> None:
    """The job's scores equal an IsolationForest with the documented parameters fitted on features
    recomputed with DuckDB (to 1e-9), so the same devices are flagged; the two planted misfits are among
    them, explained by the features that make them differ; the 3 water meters are skipped."""
    from sklearn.ensemble import IsolationForest

    result = run_job("device-anomalies", START, END, lake=telemetry)
    scored = _written(result.files[ANOMALIES]).sort_values("device_id", ignore_index=True)

    features = _expected_features(telemetry, SENSOR, late_after_s=60.0)
    assert len(features) == 30
    matrix = features.to_numpy(dtype=float)
    forest = IsolationForest(n_estimators=100, contamination="auto", random_state=0).fit(matrix)
    expected = forest.decision_function(matrix)

    assert scored["device_id"].tolist() == features.index.tolist()
    np.testing.assert_allclose(scored["score"], expected, rtol=0, atol=1e-9)
    assert scored["anomalous"].tolist() == (expected < 0).tolist()
    assert scored["anomalous"].tolist() == (forest.predict(matrix) == -1).tolist()

    flagged = set(scored.loc[scored["anomalous"], "device_id"])
    assert {SPOOFED, LAGGING} <= flagged
    assert len(flagged) <= 4, flagged  # the 28 alike sensors are, nearly all, not flagged
    explained = scored.set_index("device_id")["top_features"]
    assert explained[SPOOFED].split(" z=")[0].startswith("temperature_c.")
    assert {"late_fraction", "humidity_pct.per_hour", "temperature_c.per_hour"} & {
        part.split(" z=")[0] for part in explained[LAGGING].split(", ")
    }
    assert (scored["device_type"] == SENSOR).all()
    assert (scored["class_devices"] == 30).all()
    assert (scored["owner_organization"] == "organizations/env").all()
    assert scored.set_index("device_id").loc[LAGGING, "readings"] == 36
    assert (scored["time"] == pd.Timestamp(END)).all()
    assert (scored["run_id"] == result.run_id).all()

    assert result.summary["skipped_classes"] == {METER: 3}
    assert result.summary["flagged"] == len(flagged)
    page = telemetry.read_bytes(result.report).decode()
    assert f"Flagged {SENSOR} devices" in page
    assert "skipped: fewer than 5 devices" in page


@pytest.mark.req("LAK-4")
@pytest.mark.slow
def test_a_rerun_of_the_window_leaves_one_copy_of_each_row(telemetry: Lake, ray_local) -> None:
    """Running the same window twice gives the same rows in the same files: the table read back holds
    each device once, with the same scores."""
    first = run_job("device-anomalies", START, END, lake=telemetry)
    again = run_job("device-anomalies", START, END, lake=telemetry)
    assert again.files == first.files
    rows = read_table(ANOMALIES, lake=telemetry).compute()
    assert len(rows) == first.rows[ANOMALIES] == 30
    assert not rows.duplicated(["run_id", "device_id"]).any()
    assert _written(first.files[ANOMALIES]).equals(_written(again.files[ANOMALIES]))


# -- the pure parts (no engine) --------------------------------------------------------------------


def _frame(rows: list[tuple[str, int, str, float, int]]) -> pd.DataFrame:
    """(device, sequence, metric, value, seconds late) rows, measured on the hour of their sequence."""
    times = [START + timedelta(hours=sequence) for _, sequence, _, _, _ in rows]
    return pd.DataFrame(
        {
            "device_id": [r[0] for r in rows],
            "sequence": [r[1] for r in rows],
            "metric": [r[2] for r in rows],
            "value": [r[3] for r in rows],
            "time": pd.to_datetime(times, utc=True),
            "received_time": pd.to_datetime(times, utc=True)
            + pd.to_timedelta([r[4] for r in rows], unit="s"),
        }
    )


def test_features_of_a_missing_metric_nan_values_and_multi_metric_readings() -> None:
    """Device b never sends `rain`: its `rain.per_hour` is 0 and its other rain stats take the class
    median. NaN values are ignored. A reading counts once for lateness, late when its latest metric
    arrived more than the threshold after it was measured; std is the population std."""
    frame = _frame(
        [
            ("a", 0, "rain", 1.0, 0),
            ("a", 0, "temp", 10.0, 120),  # reading 0 of a: late (its temp arrived 120 s after)
            ("a", 1, "rain", 3.0, 0),
            ("a", 1, "temp", 14.0, 0),
            ("b", 0, "temp", 20.0, 0),
            ("b", 1, "temp", float("nan"), 500),  # ignored: b has one reading left, on time
            ("c", 0, "rain", 7.0, 0),
            ("c", 0, "temp", 30.0, 61),
        ]
    )
    features = device_features(frame, window_hours=2.0, late_after_s=60.0)
    assert features.index.tolist() == ["a", "b", "c"]
    assert features.columns.tolist() == [
        *(f"rain.{s}" for s in ("mean", "std", "min", "max", "per_hour")),
        *(f"temp.{s}" for s in ("mean", "std", "min", "max", "per_hour")),
        "late_fraction",
    ]
    assert features.loc["a"].tolist() == [2.0, 1.0, 1.0, 3.0, 1.0, 12.0, 2.0, 10.0, 14.0, 1.0, 0.5]
    # b's rain: per_hour 0; mean, std, min and max the median of a's and c's (2 and 7 -> 4.5, 1 and 0 ->
    # 0.5, 1 and 7 -> 4, 3 and 7 -> 5).
    assert features.loc["b"].tolist() == [4.5, 0.5, 4.0, 5.0, 0.0, 20.0, 0.0, 20.0, 20.0, 0.5, 0.0]
    assert features.loc["c", "late_fraction"] == 1.0


def test_robust_z_uses_the_mad_then_the_mean_deviation_and_zero_for_a_constant_feature() -> None:
    """Column 0 has a MAD (1): z = (x - 2) / 1.4826. Column 1's MAD is 0 but one value differs: its
    scale is 1.2533 times the mean absolute deviation (10 / 5 = 2). Column 2 is constant: z = 0."""
    matrix = np.array([[1.0, 0.0, 4.0], [2.0, 0.0, 4.0], [3.0, 0.0, 4.0], [2.0, 10.0, 4.0], [9.0, 0.0, 4.0]])
    z = robust_z(matrix)
    np.testing.assert_allclose(z[:, 0], (matrix[:, 0] - 2.0) / 1.4826)
    np.testing.assert_allclose(z[:, 1], matrix[:, 1] / (1.2533 * 2.0))
    assert (z[:, 2] == 0).all()


def test_params_given_as_strings_are_typed_and_unknown_ones_ignored() -> None:
    """Params given as strings (as a command line gives them) are typed: numbers become numbers, `auto`
    stays `auto`, and unknown params are dropped."""
    params = job_params({"min_devices": "3", "contamination": "0.1", "late_after_s": "30", "other": "x"})
    assert params["min_devices"] == 3
    assert params["contamination"] == 0.1
    assert params["late_after_s"] == 30.0
    assert "other" not in params
    assert job_params({})["contamination"] == "auto"


def _context(lake: Lake, **params: Any) -> JobContext:
    return JobContext(
        job="device-anomalies", start=START, end=END, lake=lake, engines=Engines(), now=END, params=params
    )


def test_a_class_with_too_few_devices_is_skipped_and_said_so(lake: Lake) -> None:
    """Three water meters are fewer than the 5 a baseline needs: no model, no rows, and the summary and
    the report name the class as skipped (no engine is needed: there is nothing to fit)."""
    rows = _telemetry(np.random.default_rng(1))
    meters = rows.filter(pc.equal(rows.column("device_type"), METER))
    write_rows(lake, table("device_telemetry"), meters, "gen-1")
    output = DeviceAnomalies().run(_context(lake))
    assert output.tables[ANOMALIES].num_rows == 0
    assert output.summary["skipped_classes"] == {METER: 3}
    assert output.summary["classes"] == []
    assert "skipped: fewer than 5 devices" in output.report_html


def test_an_empty_window_gives_an_empty_table(lake: Lake) -> None:
    """No telemetry in the window: an empty table with the output's schema and a report saying nothing
    was flagged."""
    output = DeviceAnomalies().run(_context(lake))
    assert output.tables[ANOMALIES].num_rows == 0
    assert output.tables[ANOMALIES].schema == table(ANOMALIES).schema
    assert output.summary["devices"] == 0
    assert "No device departs from its class" in output.report_html
