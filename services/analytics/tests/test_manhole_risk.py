"""The manhole risk job: its features and scores against an independent DuckDB and pandas computation
over the same Parquet files (LAK-4), its scores written back to a real manholes service (and refused
from any other client), and the pure formulas on edge cases.

The generated city: twelve covers over two days (a window that cuts days, with readings and alarms on
either side), each terminal reporting a random subset of its metrics every 30 minutes; among them a
well filling with water, a rocking lid, a lid opened twice, a methane leak, smoke, a displaced lid, a
failing battery, a cover whose terminal is silent but has alarms, alarms of a cover no terminal maps
to, two terminals no cover names, alarms raised before the window, escalated, reopened and resolved.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cityos_analytics.jobs.base import JobContext, JobOutput, model_version
from cityos_analytics.jobs.manhole_risk import (
    RISK_SCORES,
    ManholeRisk,
    device_features,
    gas_peak_ratio,
    risk_scores,
)
from cityos_analytics.runner import run_job
from cityos_analytics.services import Services
from cityos_platform.lake import read_table
from cityos_platform.lake.files import write_rows
from cityos_platform.lake.tables import table

START = datetime(2026, 11, 1, 6, tzinfo=UTC)
END = datetime(2026, 11, 3, 6, tzinfo=UTC)
NOW = END + timedelta(minutes=5)
STEP = timedelta(minutes=30)
VERSION = model_version("manhole-risk", 1, START, END)
# device -> (cover id or None, behaviour)
TERMINALS: dict[str, tuple[str | None, str]] = {
    "t-01": ("xa-0001", "quiet"),
    "t-02": ("xa-0002", "flooding"),
    "t-03": ("xa-0003", "rocking"),
    "t-04": ("xa-0004", "opened"),
    "t-05": ("xa-0005", "methane"),
    "t-06": ("xa-0006", "smoke"),
    "t-07": ("xa-0007", "displaced"),
    "t-08": ("xa-0008", "battery"),
    "t-09": ("xa-0009", "quiet"),
    "t-10": ("xa-0010", "quiet"),
    "t-11": ("xa-0011", "silent"),  # no readings at all: scores from its alarms only
    "t-98": (None, "quiet"),  # no cover names these two
    "t-99": (None, "opened"),
}


def _values(rng: np.random.Generator, behaviour: str, moment: datetime, index: int) -> dict[str, float]:
    hours = (moment - START).total_seconds() / 3600
    values = {
        "open": 0.0,
        "tilt_deg": 2.0 + float(rng.normal(0, 0.1)),
        "displaced": 0.0,
        "water_level_m": 0.2 + float(rng.uniform(0, 0.1)),
        "ch4_pct_lel": float(rng.uniform(0, 2)),
        "h2s_ppm": float(rng.uniform(0, 1)),
        "co_ppm": float(rng.uniform(0, 5)),
        "voc_ppm": float(rng.uniform(0, 5)),
        "smoke": 0.0,
        "battery_v": 3.6 - 0.001 * index,
        "temperature_c": 12.0,  # not a feature
        "rsrp_dbm": -95.0,  # not a feature
    }
    if behaviour == "flooding":
        values["water_level_m"] = max(0.2, min(1.8, 0.05 * hours)) + float(rng.uniform(0, 0.05))
    if behaviour == "rocking":
        values["tilt_deg"] = 2.0 + float(rng.choice([0.0, 6.0, 11.0]))
    if behaviour == "opened" and (10 <= hours < 11 or 30 <= hours < 31.5):
        values["open"] = 1.0
    if behaviour == "methane" and 20 <= hours < 24:
        values["ch4_pct_lel"] = 5.0 + 4 * (hours - 20)
    if behaviour == "smoke" and rng.random() < 0.05:
        values["smoke"] = 1.0
    if behaviour == "displaced" and 40 <= hours < 41:
        values["displaced"] = 1.0
        values["open"] = 1.0
    if behaviour == "battery":
        values["battery_v"] = 3.5 - 0.004 * index
    # a random subset, but always something
    kept = {k: v for k, v in values.items() if rng.random() < 0.7}
    return kept or {"battery_v": values["battery_v"]}


def _reading_rows(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for device, (_cover, behaviour) in TERMINALS.items():
        if behaviour == "silent":
            continue
        moment = START - timedelta(hours=8) + timedelta(minutes=int(rng.integers(0, 29)))
        index = 0
        while moment < END + timedelta(hours=8):
            index += 1
            for metric, value in _values(rng, behaviour, moment, index).items():
                rows.append(
                    {
                        "device_id": device,
                        "device_type": "manhole.terminal",
                        "owner_organization": "drainage",
                        "area_cell": "8931aa1a0afffff",
                        "sequence": index,
                        "metric": metric,
                        "value": round(value, 4),
                        "time": moment,
                        "received_time": moment + timedelta(seconds=3),
                    }
                )
            moment += STEP
    return rows


# (alarm, cover, [(hours after START, event, severity, state)])
ALARMS: list[tuple[str, str, list[tuple[float, str, str, str]]]] = [
    ("a-01", "xa-0002", [(20, "raised", "WARNING", "RAISED"), (30, "updated", "CRITICAL", "RAISED")]),
    ("a-02", "xa-0002", [(-10, "raised", "MAJOR", "RAISED"), (5, "cleared", "MAJOR", "RAISED")]),  # before
    ("a-03", "xa-0003", [(3, "raised", "MAJOR", "RAISED"), (4, "acknowledged", "MAJOR", "ACKNOWLEDGED")]),
    ("a-04", "xa-0004", [(10.2, "raised", "CRITICAL", "RAISED"), (12, "resolved", "CRITICAL", "RESOLVED")]),
    ("a-05", "xa-0004", [(-30, "raised", "WARNING", "RAISED"), (31, "reopened", "WARNING", "RAISED")]),
    ("a-06", "xa-0005", [(21, "raised", "MAJOR", "RAISED"), (23, "updated", "CRITICAL", "RAISED")]),
    ("a-07", "xa-0008", [(30, "raised", "INFO", "RAISED")]),
    ("a-08", "xa-0011", [(2, "raised", "CRITICAL", "RAISED"), (6, "raised", "CRITICAL", "RAISED")]),
    ("a-09", "xa-0011", [(7, "raised", "WARNING", "RAISED")]),
    ("a-10", "xa-0012", [(8, "raised", "MAJOR", "RAISED")]),  # a cover no terminal maps to
    ("a-11", "xa-0001", [(50, "raised", "CRITICAL", "RAISED")]),  # after the window
    ("a-12", "xa-0006", [(1, "updated", "CRITICAL", "RAISED")]),  # never raised in the window
]


def _alarm_rows() -> list[dict[str, Any]]:
    rows = []
    for alarm, cover, events in ALARMS:
        for n, (hours, event, severity, state) in enumerate(events):
            rows.append(
                {
                    "event_id": f"{alarm}-{n}",
                    "type": f"manholes.alarm.{event}",
                    "schema_version": 1,
                    "source": "manholes",
                    "subject": f"alarms/{alarm}",
                    "owner_organization": "drainage",
                    "time": START + timedelta(hours=hours),
                    "alarm": f"alarms/{alarm}",
                    "cover": f"covers/{cover}",
                    "condition": "WATER_LEVEL",
                    "severity": severity,
                    "state": state,
                }
            )
    return rows


def _write_city(lake: Any) -> None:
    rng = np.random.default_rng(20261102)
    write_rows(lake, table("manhole_readings"), pa.Table.from_pylist(_reading_rows(rng)), "gen-1")
    write_rows(lake, table("manhole_alarms"), pa.Table.from_pylist(_alarm_rows()), "gen-1")


# -- the independent computation ------------------------------------------------------------------------


def _expected(lake: Any) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per cover, features in DuckDB SQL over the Parquet files and the score from the documented
    formula in pandas."""
    import duckdb

    window = f"time >= TIMESTAMPTZ '{START.isoformat()}' AND time < TIMESTAMPTZ '{END.isoformat()}'"
    mapping = pd.DataFrame(
        [(d, f"covers/{c}") for d, (c, _b) in TERMINALS.items() if c], columns=["device_id", "cover"]
    )
    devices = duckdb.sql(
        f"""
        WITH r AS (
          SELECT * FROM read_parquet('{lake.root}/manhole_readings/dt=*/*.parquet') WHERE {window}
        ),
        steps AS (
          SELECT device_id, metric, value,
            value - lag(value) OVER (PARTITION BY device_id, metric ORDER BY time, sequence) AS step,
            lag(value) OVER (PARTITION BY device_id, metric ORDER BY time, sequence) AS previous
          FROM r WHERE metric IN ('tilt_deg', 'open')
        ),
        series AS (
          SELECT device_id,
            max(abs(step)) FILTER (WHERE metric = 'tilt_deg') AS tilt_step_max_deg,
            stddev_samp(step) FILTER (WHERE metric = 'tilt_deg') AS tilt_step_std_deg,
            count(*) FILTER (WHERE metric = 'open' AND value >= 0.5 AND (previous IS NULL OR previous < 0.5))
              AS open_events
          FROM steps GROUP BY device_id
        )
        SELECT device_id, count(DISTINCT sequence) AS readings,
          series.tilt_step_max_deg, series.tilt_step_std_deg, coalesce(series.open_events, 0) AS open_events,
          max(value) FILTER (WHERE metric = 'water_level_m') AS water_level_max_m,
          quantile_cont(value, 0.95) FILTER (WHERE metric = 'water_level_m') AS water_level_p95_m,
          max(value) FILTER (WHERE metric = 'ch4_pct_lel') AS ch4_max_pct_lel,
          max(value) FILTER (WHERE metric = 'h2s_ppm') AS h2s_max_ppm,
          max(value) FILTER (WHERE metric = 'co_ppm') AS co_max_ppm,
          max(value) FILTER (WHERE metric = 'voc_ppm') AS voc_max_ppm,
          min(value) FILTER (WHERE metric = 'battery_v') AS battery_min_v,
          count(*) FILTER (WHERE metric = 'open' AND value >= 0.5) AS open_readings,
          count(*) FILTER (WHERE metric = 'displaced' AND value >= 0.5) AS displaced_readings,
          count(*) FILTER (WHERE metric = 'smoke' AND value >= 0.5) AS smoke_readings,
          count(*) FILTER (WHERE metric = 'battery_v' AND value < 3.3) AS low_battery_readings
        FROM r LEFT JOIN series USING (device_id)
        GROUP BY device_id, series.tilt_step_max_deg, series.tilt_step_std_deg, series.open_events
        """
    ).df()
    alarms = duckdb.sql(
        f"""
        WITH per_alarm AS (
          SELECT cover, alarm,
            bool_or(type IN ('manholes.alarm.raised', 'manholes.alarm.reopened')) AS raised,
            max(CASE severity WHEN 'INFO' THEN 1 WHEN 'WARNING' THEN 2 WHEN 'MAJOR' THEN 3
                              WHEN 'CRITICAL' THEN 4 ELSE 0 END) AS worst
          FROM read_parquet('{lake.root}/manhole_alarms/dt=*/*.parquet') WHERE {window}
          GROUP BY cover, alarm
        )
        SELECT cover, count(*) AS alarms,
          count(*) FILTER (WHERE worst = 1) AS alarms_info,
          count(*) FILTER (WHERE worst = 2) AS alarms_warning,
          count(*) FILTER (WHERE worst = 3) AS alarms_major,
          count(*) FILTER (WHERE worst = 4) AS alarms_critical
        FROM per_alarm WHERE raised GROUP BY cover
        """
    ).df()
    placed = devices.merge(mapping, on="device_id", how="left")
    unmapped = placed[placed["cover"].isna()]
    covers = sorted({*mapping["cover"], *alarms["cover"]})
    expected = (
        pd.DataFrame({"cover": covers})
        .merge(placed.drop(columns="device_id"), on="cover", how="left")
        .merge(alarms, on="cover", how="left")
    )
    counts = [
        c
        for c in expected.columns
        if c.endswith("_readings") or c.startswith("alarms") or c in ("readings", "open_events")
    ]
    expected[counts] = expected[counts].fillna(0)
    limits = {"ch4_max_pct_lel": 20.0, "h2s_max_ppm": 10.0, "co_max_ppm": 35.0, "voc_max_ppm": 50.0}
    expected["gas_peak_ratio"] = pd.concat([expected[c] / limit for c, limit in limits.items()], axis=1).max(
        axis=1
    )
    f = expected.fillna(0)
    load = (
        0.05 * f["alarms_info"]
        + 0.1 * f["alarms_warning"]
        + 0.25 * f["alarms_major"]
        + 0.5 * f["alarms_critical"]
        + 0.5 * f["water_level_p95_m"].clip(lower=0) / 1.0
        + 0.3 * f["tilt_step_max_deg"] / 10.0
        + 0.2 * f["open_events"]
        + 0.5 * f["gas_peak_ratio"]
        + 0.5 * (f["smoke_readings"] > 0)
        + 0.5 * (f["displaced_readings"] > 0)
        + 0.1 * (f["low_battery_readings"] > 0)
    )
    expected["score"] = 1 - np.exp(-load)
    return expected.set_index("cover"), {
        "unmapped_devices": len(unmapped),
        "unmapped_readings": int(unmapped["readings"].sum()),
    }


def _same(actual: Any, expected: Any, what: str) -> None:
    if expected is None or pd.isna(expected):
        assert actual is None or pd.isna(actual), f"{what}: {actual} != null"
    else:
        assert float(actual) == pytest.approx(float(expected), rel=1e-9, abs=1e-12), what


FEATURES = [
    "readings", "alarms", "alarms_info", "alarms_warning", "alarms_major", "alarms_critical",
    "water_level_max_m", "water_level_p95_m", "tilt_step_max_deg", "tilt_step_std_deg", "open_events",
    "open_readings", "displaced_readings", "ch4_max_pct_lel", "h2s_max_ppm", "co_max_ppm", "voc_max_ppm",
    "gas_peak_ratio", "smoke_readings", "battery_min_v", "low_battery_readings", "score",
]  # fmt: skip


@pytest.mark.req("LAK-4")
@pytest.mark.slow
def test_features_and_scores_per_cover_match_an_independent_duckdb_computation(lake, engines):
    """Every cover's alarm counts (distinct alarms raised or reopened in the window, at their worst
    severity), water maximum and 95th percentile, tilt steps, lid openings, gas peaks, smoke,
    displacement and battery, and its score from the documented formula, equal DuckDB's over the same
    files; readings of unmapped terminals are dropped and counted; nothing outside the window counts."""
    _write_city(lake)
    covers = {device: cover for device, (cover, _b) in TERMINALS.items() if cover}
    result = run_job(
        "manhole-risk", START, END, lake=lake, engines=engines, now=NOW, params={"covers": covers}
    )

    got = read_table("manhole_risk_scores", lake=lake).compute().set_index("cover")
    expected, unmapped = _expected(lake)
    assert sorted(got.index) == sorted(expected.index)
    for cover, row in expected.iterrows():
        for name in FEATURES:
            _same(got.loc[cover, name], row[name], f"{cover} {name}")
        assert got.loc[cover, "model_version"] == VERSION
        assert got.loc[cover, "time"] == pd.Timestamp(NOW)
        assert got.loc[cover, "window_start"] == pd.Timestamp(START)
    assert {k: result.summary[k] for k in unmapped} == unmapped
    assert unmapped["unmapped_devices"] == 2

    # What the generated behaviours should show.
    assert got.loc["covers/xa-0002", "alarms_critical"] == 1  # escalated; the earlier alarm is before
    assert got.loc["covers/xa-0004", "alarms"] == 2  # raised, and another reopened in the window
    assert got.loc["covers/xa-0004", "open_events"] == 2
    assert got.loc["covers/xa-0011", "readings"] == 0
    assert got.loc["covers/xa-0011", "alarms_critical"] == 1
    assert got.loc["covers/xa-0011", "device"] == "t-11"
    assert pd.isna(got.loc["covers/xa-0012", "device"])
    assert got.loc["covers/xa-0012", "alarms_major"] == 1
    assert got.loc["covers/xa-0006", "alarms"] == 0  # only updated, never raised, in the window
    quiet = got.loc["covers/xa-0001", "score"]
    assert all(got.loc[f"covers/{c}", "score"] > quiet for c in ("xa-0002", "xa-0003", "xa-0004", "xa-0005"))
    assert _report_top_cover(result.report) == got["score"].idxmax()  # the report leads with it
    assert set(result.published) == {"skipped"}  # no services given: nothing published


def _report_top_cover(path: str) -> str:
    """The first cover the report's "Highest risk" section names (after checking it names the model)."""
    html = Path(path).read_text()
    assert "Highest risk" in html
    assert VERSION in html
    start = html.index("Highest risk")
    return html[html.index("covers/", start) :].split("<", 1)[0]


# -- publishing to a real manholes service ------------------------------------------------------------


@pytest.fixture
async def manholes(start_server, mint, tmp_path):
    from cityos_manholes.app import ManholesApp
    from cityos_platform.config import load_settings

    app = ManholesApp(
        load_settings(var_dir=tmp_path / "manholes"),
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'manholes.sqlite'}",
        run_tasks=False,
    )
    server = await start_server(await app.start())
    yield server
    await server.stop(grace=0)
    await app.stop()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.slow
async def test_scores_are_written_back_to_the_manholes_service_by_the_analytics_client_only(
    lake, engines, manholes, mint
):
    """With no `covers` parameter the job reads the covers' terminals with ListCovers, and publish writes
    its scores with SetRiskScores: GetCover shows the analytics score with the job's model version and
    the run's time, ListCoversByRisk orders by them; a later run of an earlier `now` is stale; and the
    same call with another client's service token is refused (PERMISSION_DENIED)."""
    from cityos.common.v1 import resources_pb2
    from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc

    operator = _bearer(mint("users/wei", "drainage", ["operator"]))
    async with grpc.aio.insecure_channel(manholes.address) as channel:
        stub = manholes_pb2_grpc.CoverServiceStub(channel)
        for n in range(1, 5):
            await stub.CreateCover(
                manholes_pb2.CreateCoverRequest(
                    cover=manholes_pb2.Cover(
                        display_name=f"XA-000{n}",
                        kind=manholes_pb2.COVER_KIND_SEWER,
                        location=resources_pb2.GeoPoint(latitude=39.0, longitude=115.95 + n / 1000),
                        road_class=manholes_pb2.ROAD_CLASS_ARTERIAL,
                        device=f"devices/t-0{n}" if n < 4 else "",
                    ),
                    cover_id=f"xa-000{n}",
                ),
                metadata=operator,
                timeout=10,
            )
    rng = np.random.default_rng(7)
    readings = [row for row in _reading_rows(rng) if row["device_id"] in ("t-01", "t-02", "t-03")]
    write_rows(lake, table("manhole_readings"), pa.Table.from_pylist(readings), "gen-1")
    write_rows(lake, table("manhole_alarms"), pa.Table.from_pylist(_alarm_rows()[:2]), "gen-1")  # xa-0002
    analytics = mint(
        "service-account-cityos-analytics", "city", ["service"], client="cityos-analytics", kind="service"
    )
    services = Services.with_token({"manholes": manholes.address}, analytics)

    result = await asyncio.to_thread(
        run_job, "manhole-risk", START, END, lake=lake, engines=engines, services=services, now=NOW
    )

    assert result.published == {"updated": 3, "stale": 0}  # xa-0004 has no terminal and no alarm
    scores = read_table("manhole_risk_scores", lake=lake).compute().set_index("cover")
    assert sorted(scores.index) == ["covers/xa-0001", "covers/xa-0002", "covers/xa-0003"]
    async with grpc.aio.insecure_channel(manholes.address) as channel:
        stub = manholes_pb2_grpc.CoverServiceStub(channel)
        for cover in scores.index:
            got = await stub.GetCover(manholes_pb2.GetCoverRequest(name=cover), metadata=operator, timeout=10)
            assert got.risk.source == manholes_pb2.RISK_SOURCE_ANALYTICS
            assert got.risk.model_version == VERSION
            assert got.risk.score == pytest.approx(scores.loc[cover, "score"])
            assert got.risk.computed_time.ToDatetime(tzinfo=UTC) == NOW
        ranked = await stub.ListCoversByRisk(
            manholes_pb2.ListCoversByRiskRequest(), metadata=operator, timeout=10
        )
        order = [
            cover.name for cover in ranked.covers if cover.risk.source == manholes_pb2.RISK_SOURCE_ANALYTICS
        ]
        assert order == list(scores.sort_values("score", ascending=False).index)
        assert order[0] == "covers/xa-0002"  # flooding, with a critical alarm

    output = JobOutput(
        tables={
            RISK_SCORES.name: read_table("manhole_risk_scores", lake=lake)
            .compute()
            .pipe(lambda frame: pa.Table.from_pandas(frame, preserve_index=False))
        },
        report_html="",
    )
    earlier = _context(lake, engines, services, NOW - timedelta(hours=1))
    assert await ManholeRisk().publish(earlier, output) == {"updated": 0, "stale": 3}

    parking = mint(
        "service-account-cityos-parking", "city", ["service"], client="cityos-parking", kind="service"
    )
    other = _context(lake, engines, Services.with_token({"manholes": manholes.address}, parking), NOW)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ManholeRisk().publish(other, output)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _context(lake: Any, engines: Any, services: Services, now: datetime) -> JobContext:
    return JobContext(
        job="manhole-risk", start=START, end=END, lake=lake, engines=engines, now=now, services=services
    )


# -- the pure formulas --------------------------------------------------------------------------------


def test_a_quiet_cover_scores_zero_and_one_critical_alarm_scores_one_minus_e_to_the_minus_half():
    frame = pd.DataFrame({"alarms_critical": [0, 1, 2], "alarms_info": [0, 0, 0]})
    assert list(risk_scores(frame)) == pytest.approx([0.0, 1 - math.exp(-0.5), 1 - math.exp(-1.0)])


def test_a_cover_with_only_alarms_scores_from_its_alarms_and_missing_features_count_as_nothing():
    only_alarms = pd.DataFrame(
        {
            "alarms_warning": [2],
            "alarms_major": [1],
            "water_level_p95_m": [None],
            "tilt_step_max_deg": [float("nan")],
            "open_events": [0],
        }
    )
    assert risk_scores(only_alarms).iloc[0] == pytest.approx(1 - math.exp(-(2 * 0.1 + 0.25)))


def test_every_feature_adds_its_documented_weight_and_the_score_stays_below_one():
    one = pd.DataFrame(
        {
            "water_level_p95_m": [0.4],
            "tilt_step_max_deg": [-5.0],
            "open_events": [3],
            "gas_peak_ratio": [1.5],
            "smoke_readings": [2],
            "displaced_readings": [1],
            "low_battery_readings": [9],
        }
    )
    load = 0.5 * 0.4 + 0.3 * 0.5 + 0.2 * 3 + 0.5 * 1.5 + 0.5 + 0.5 + 0.1
    assert risk_scores(one).iloc[0] == pytest.approx(1 - math.exp(-load))
    assert risk_scores(pd.DataFrame({"alarms_critical": [10_000]})).iloc[0] <= 1.0
    assert risk_scores(pd.DataFrame({"alarms_critical": []})).empty


def test_the_worst_gas_is_taken_against_its_own_threshold():
    frame = pd.DataFrame(
        {
            "ch4_max_pct_lel": [10.0, None],
            "h2s_max_ppm": [8.0, None],
            "co_max_ppm": [0.0, None],
            "voc_max_ppm": [None, None],
        }
    )
    ratios = gas_peak_ratio(frame)
    assert ratios.iloc[0] == pytest.approx(0.8)
    assert pd.isna(ratios.iloc[1])


def _rows(metric: str, values: list[float]) -> pd.DataFrame:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return pd.DataFrame(
        {
            "time": [start + timedelta(minutes=i) for i in range(len(values))],
            "sequence": range(len(values)),
            "metric": metric,
            "value": values,
        }
    )


def test_tilt_steps_open_events_and_the_water_percentile_follow_time_order():
    tilt = device_features(_rows("tilt_deg", [2.0, 2.0, 8.0, 3.0]).iloc[::-1])  # given out of order
    assert tilt["tilt_step_max_deg"] == 6.0
    assert tilt["tilt_step_std_deg"] == pytest.approx(np.std([0.0, 6.0, -5.0], ddof=1))
    lid = device_features(_rows("open", [1, 1, 0, 0, 1, 0, 1, 1]))
    assert lid["open_events"] == 3  # already open at first, then twice more
    water = device_features(_rows("water_level_m", [float(v) for v in range(21)]))
    assert water["water_level_p95_m"] == pytest.approx(19.0)


def test_without_a_cover_mapping_or_services_the_job_says_what_it_needs(lake, engines):
    from cityos_analytics.services import ServicesUnavailable

    ctx = JobContext(job="manhole-risk", start=START, end=END, lake=lake, engines=engines, now=END)
    with pytest.raises(ServicesUnavailable, match="params\\['covers'\\]"):
        ManholeRisk._covers(ctx)


def test_a_terminal_without_readings_has_no_features():
    empty = device_features(pd.DataFrame(columns=["time", "sequence", "metric", "value"]))
    assert math.isnan(empty["water_level_p95_m"])
    assert math.isnan(empty["tilt_step_max_deg"])
    assert empty["open_events"] == 0
    single = device_features(_rows("tilt_deg", [4.0]))
    assert math.isnan(single["tilt_step_max_deg"])
    assert math.isnan(single["tilt_step_std_deg"])
