"""Manhole cover risk: features per cover over the window, a deterministic score, written back to the
manholes service.

`cityos analytics run manhole-risk` reads `manhole_alarms` and `manhole_readings` over the window,
writes `manhole_risk_scores` (one row per cover) and a report, then hands the scores to the manholes
service (`CoverService/SetRiskScores`), which orders `ListCoversByRisk` by them. Why here and not in
the service: the service scores a cover from its own alarm history alone (`cityos_manholes.risk`, until
a job has scored it); this job also weighs what never crossed a threshold — water that keeps rising, a
lid that keeps rocking, a gas level at half its limit — over any window of the lake's history.

Features of a cover (its terminal's readings, `manhole.terminal`; flags true at >= 0.5):

- alarms: the distinct alarms (`alarm`) raised or reopened in the window (an event of type
  `manholes.alarm.raised` or `.reopened`), each counted once under the highest severity any of its
  events in the window carried (an alarm that escalated from WARNING to CRITICAL is CRITICAL);
- water: the highest and the 95th percentile (linear interpolation) of `water_level_m`;
- tilt instability: the steps of `tilt_deg` between consecutive samples (time order): the largest step
  in absolute value and the standard deviation of the steps (sample, n - 1; null below two steps);
- the lid: open events (`open` going from closed to open between consecutive samples, a first sample
  already open counting as one) and readings with it open; readings with it `displaced`;
- gases: the peaks of `ch4_pct_lel`, `h2s_ppm`, `co_ppm`, `voc_ppm`, and the largest peak as a share of
  its default alarm threshold (`GAS_LIMITS`, the manholes rules' defaults); readings with `smoke`;
- battery: the lowest `battery_v` and the readings below 3.3 V (the rules' default).

The score (`risk_scores`), in [0, 1), deterministic, every missing feature taken as 0:

    load  = 0.05 x INFO + 0.1 x WARNING + 0.25 x MAJOR + 0.5 x CRITICAL alarms
            (the weights of the service's alarm-history score)
          + 0.5 x max(0, water p95) / 1 m            (a well 1 m deep in water weighs like a critical alarm)
          + 0.3 x largest tilt step / 10°            (10°: the default tilt threshold)
          + 0.2 x open events
          + 0.5 x gas peak / its threshold           (the worst gas)
          + 0.5 if smoke was seen + 0.5 if the lid was displaced
          + 0.1 if the battery went low              (a terminal about to go blind)
    score = 1 - exp(-load)

so one critical alarm alone scores 0.39, two 0.63, and a quiet cover 0. `model_version` is
`base.model_version("manhole-risk", VERSION, start, end)`: the formula's version and the window.

Covers: a reading belongs to the cover whose terminal made it. `ctx.params["covers"]` maps a device id
to a cover (`devices/` and `covers/` prefixes optional); without it the job reads the mapping from the
manholes service (ListCovers: each cover's `device`). Readings of devices no cover names are dropped and
counted in the summary (`unmapped_devices`, `unmapped_readings`). A cover gets a row when the mapping
names it or an alarm of the window does: a mapped cover whose terminal said nothing scores from its
alarms alone, or 0. A cover whose terminal was replaced during the window (two devices) adds up its
counts and takes the larger of each maximum, percentile and deviation.

Engine (Dask): the readings are read once with the columns and metrics the features need; the
order-free features are a tree reduction (`groupby("device_id").agg`, `nunique`), the order-dependent
ones (tilt steps, open events, the water percentile) a `groupby("device_id").apply(device_features)`
that shuffles only those three metrics; devices are mapped to covers partition by partition and grouped
by cover; alarms are grouped by (cover, alarm), then by cover. One `dask.compute` runs both.

Publishing: `publish` calls SetRiskScores as the `cityos-analytics` client (the only one the manholes
service accepts, `ManholesSettings.risk_writers`) in batches of at most 10,000 scores, with the model
version and `computed_time` = `ctx.now`, and returns `{"updated": n, "stale": m}` (stale: a newer
analytics score is already stored). Rows carry `time` = `ctx.now`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from cityos_analytics import report
from cityos_analytics.jobs.base import Engine, Job, JobContext, JobOutput, model_version
from cityos_platform.lake import TableSpec
from cityos_platform.lake.tables import TIME, column

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

VERSION = 1
RAISING = ("manholes.alarm.raised", "manholes.alarm.reopened")
SEVERITY_RANK = {"INFO": 1, "WARNING": 2, "MAJOR": 3, "CRITICAL": 4}
SEVERITY_WEIGHTS = {"INFO": 0.05, "WARNING": 0.1, "MAJOR": 0.25, "CRITICAL": 0.5}
GAS_LIMITS = {"ch4_pct_lel": 20.0, "h2s_ppm": 10.0, "co_ppm": 35.0, "voc_ppm": 50.0}
GAS_COLUMNS = {
    "ch4_pct_lel": "ch4_max_pct_lel",
    "h2s_ppm": "h2s_max_ppm",
    "co_ppm": "co_max_ppm",
    "voc_ppm": "voc_max_ppm",
}
TILT_LIMIT_DEG = 10.0
BATTERY_LOW_V = 3.3
WATER_REFERENCE_M = 1.0
WEIGHTS = {
    "water": 0.5,
    "tilt": 0.3,
    "open_event": 0.2,
    "gas": 0.5,
    "smoke": 0.5,
    "displaced": 0.5,
    "low_battery": 0.1,
}
FLAG_AT = 0.5
SERIES_METRICS = ("open", "tilt_deg", "water_level_m")
READ_METRICS = (*SERIES_METRICS, "displaced", *GAS_LIMITS, "smoke", "battery_v")
MAX_SCORES = 10_000
PAGE_SIZE = 500

RISK_SCORES = TableSpec(
    name="manhole_risk_scores",
    version=1,
    schema=pa.schema(
        [
            column("cover", pa.string(), "the cover, `covers/{cover}`"),
            column("score", pa.float64(), "the risk score, 0 to 1 (see the job's doc for the formula)"),
            column("device", pa.string(), "its terminal(s) (device ids, comma-separated)", nullable=True),
            column("readings", pa.int64(), "its terminal's readings in the window"),
            column("alarms", pa.int64(), "distinct alarms raised or reopened in the window"),
            column("alarms_info", pa.int64(), "of which INFO at their worst in the window"),
            column("alarms_warning", pa.int64(), "of which WARNING"),
            column("alarms_major", pa.int64(), "of which MAJOR"),
            column("alarms_critical", pa.int64(), "of which CRITICAL"),
            column("water_level_max_m", pa.float64(), "highest water level, m", nullable=True),
            column("water_level_p95_m", pa.float64(), "95th percentile of the water level, m", nullable=True),
            column(
                "tilt_step_max_deg", pa.float64(), "largest tilt change between samples, °", nullable=True
            ),
            column("tilt_step_std_deg", pa.float64(), "std of the tilt changes, ° (n - 1)", nullable=True),
            column("open_events", pa.int64(), "times the lid went open"),
            column("open_readings", pa.int64(), "readings with the lid open"),
            column("displaced_readings", pa.int64(), "readings with the lid out of its frame"),
            column("ch4_max_pct_lel", pa.float64(), "methane peak, % LEL", nullable=True),
            column("h2s_max_ppm", pa.float64(), "hydrogen sulphide peak, ppm", nullable=True),
            column("co_max_ppm", pa.float64(), "carbon monoxide peak, ppm", nullable=True),
            column("voc_max_ppm", pa.float64(), "VOC peak, ppm", nullable=True),
            column(
                "gas_peak_ratio", pa.float64(), "the worst gas peak / its default threshold", nullable=True
            ),
            column("smoke_readings", pa.int64(), "readings with smoke"),
            column("battery_min_v", pa.float64(), "lowest battery voltage, V", nullable=True),
            column("low_battery_readings", pa.int64(), "readings below 3.3 V"),
            column("model_version", pa.string(), "the formula's version and the window's hash"),
            column("run_id", pa.string(), "the run: job and window"),
            column("window_start", TIME, "the window's start (UTC)"),
            column("window_end", TIME, "the window's end (UTC, excluded)"),
            column("time", TIME, "when the score was computed (the run's `now`)"),
        ]
    ),
    time_column="time",
    description="Per manhole cover and window: alarm, water, tilt, lid, gas and battery features and the "
    "risk score the manholes service orders covers by (see the job's doc).",
    source="analytics: job manhole-risk",
    key=("run_id", "cover"),
    owner="utilities",
    sensitive=("cover", "score"),
    update_frequency="per job run",
)
COUNTS = (
    "readings",
    "alarms",
    "alarms_info",
    "alarms_warning",
    "alarms_major",
    "alarms_critical",
    "open_events",
    "open_readings",
    "displaced_readings",
    "smoke_readings",
    "low_battery_readings",
)


# -- the pure parts -----------------------------------------------------------------------------------


def device_features(rows: pd.DataFrame) -> pd.Series:
    """The order-dependent features of one terminal from its rows (columns time, sequence, metric,
    value; any order): the water level's 95th percentile, the tilt steps' largest absolute value and
    standard deviation, and the open events (see the module doc)."""
    ordered = rows.sort_values(["time", "sequence"], kind="stable")
    metric = ordered["metric"]
    water = ordered.loc[metric == "water_level_m", "value"].to_numpy(dtype=float, na_value=np.nan)
    water = water[~np.isnan(water)]
    tilt = ordered.loc[metric == "tilt_deg", "value"].to_numpy(dtype=float, na_value=np.nan)
    steps = np.diff(tilt[~np.isnan(tilt)])
    lid = ordered.loc[metric == "open", "value"].to_numpy(dtype=float, na_value=np.nan)
    is_open = lid[~np.isnan(lid)] >= FLAG_AT
    opened = int(is_open[0]) + int((is_open[1:] & ~is_open[:-1]).sum()) if len(is_open) else 0
    return pd.Series(
        {
            "water_level_p95_m": float(np.quantile(water, 0.95)) if len(water) else math.nan,
            "tilt_step_max_deg": float(np.abs(steps).max()) if len(steps) else math.nan,
            "tilt_step_std_deg": float(np.std(steps, ddof=1)) if len(steps) >= 2 else math.nan,
            "open_events": float(opened),
        },
        dtype="float64",
    )


def risk_scores(features: pd.DataFrame) -> pd.Series:
    """The score of each row of `features` (the output's feature columns; missing columns and nulls
    count as 0), by the module doc's formula."""

    def col(name: str) -> pd.Series:
        if name not in features.columns:
            return pd.Series(0.0, index=features.index)
        return pd.to_numeric(features[name], errors="coerce").astype("float64").fillna(0.0)

    load = sum(
        (weight * col(f"alarms_{severity.lower()}") for severity, weight in SEVERITY_WEIGHTS.items()),
        start=pd.Series(0.0, index=features.index),
    )
    load = load + WEIGHTS["water"] * col("water_level_p95_m").clip(lower=0) / WATER_REFERENCE_M
    load = load + WEIGHTS["tilt"] * col("tilt_step_max_deg").abs() / TILT_LIMIT_DEG
    load = load + WEIGHTS["open_event"] * col("open_events")
    load = load + WEIGHTS["gas"] * col("gas_peak_ratio").clip(lower=0)
    load = load + WEIGHTS["smoke"] * (col("smoke_readings") > 0)
    load = load + WEIGHTS["displaced"] * (col("displaced_readings") > 0)
    load = load + WEIGHTS["low_battery"] * (col("low_battery_readings") > 0)
    return (1.0 - np.exp(-load)).astype("float64")


def gas_peak_ratio(features: pd.DataFrame) -> pd.Series:
    """The worst gas peak as a share of its default threshold (null when no gas was measured)."""
    ratios = pd.DataFrame(
        {gas: features[name].astype("float64") / GAS_LIMITS[gas] for gas, name in GAS_COLUMNS.items()},
        index=features.index,
    )
    return ratios.max(axis=1, skipna=True)


# -- the mapping of terminals to covers ---------------------------------------------------------------


def cover_mapping(covers: Mapping[str, str]) -> pd.DataFrame:
    """`ctx.params["covers"]` (device id -> cover id, prefixes optional) as a frame (device_id, cover)."""
    rows = [
        (
            str(device).removeprefix("devices/"),
            cover if str(cover).startswith("covers/") else f"covers/{cover}",
        )
        for device, cover in sorted(covers.items())
        if cover
    ]
    return pd.DataFrame(rows, columns=["device_id", "cover"]).astype("string[pyarrow]")


async def fetch_covers(channel: grpc.aio.Channel) -> dict[str, str]:
    """Every cover with a terminal, from the manholes service: device id -> `covers/{cover}`."""
    from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc

    stub = manholes_pb2_grpc.CoverServiceStub(channel)
    mapping: dict[str, str] = {}
    token = ""
    while True:
        page = await stub.ListCovers(
            manholes_pb2.ListCoversRequest(page_size=PAGE_SIZE, page_token=token), timeout=30
        )
        for cover in page.covers:
            if cover.device:
                mapping[cover.device.removeprefix("devices/")] = cover.name
        token = page.next_page_token
        if not token:
            return mapping


# -- the Dask parts (module-level, so they pickle to a remote cluster) --------------------------------


def _reading_indicators(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row: the value under its metric's column (NaN elsewhere) and 0/1 counters."""
    metric = rows["metric"].astype(object)
    value = rows["value"].astype("float64")

    def only(name: str) -> pd.Series:
        return value.where(metric == name)

    def count(condition: pd.Series) -> pd.Series:
        return condition.fillna(False).astype("int64")

    out = pd.DataFrame({"device_id": rows["device_id"]})
    out["water_level_max_m"] = only("water_level_m")
    for gas, name in GAS_COLUMNS.items():
        out[name] = only(gas)
    out["battery_min_v"] = only("battery_v")
    out["open_readings"] = count((metric == "open") & (value >= FLAG_AT))
    out["displaced_readings"] = count((metric == "displaced") & (value >= FLAG_AT))
    out["smoke_readings"] = count((metric == "smoke") & (value >= FLAG_AT))
    out["low_battery_readings"] = count((metric == "battery_v") & (value < BATTERY_LOW_V))
    return out


_DEVICE_AGG = {
    "water_level_max_m": "max",
    **{name: "max" for name in GAS_COLUMNS.values()},
    "battery_min_v": "min",
    "open_readings": "sum",
    "displaced_readings": "sum",
    "smoke_readings": "sum",
    "low_battery_readings": "sum",
}
_SERIES = {
    "water_level_p95_m": "max",
    "tilt_step_max_deg": "max",
    "tilt_step_std_deg": "max",
    "open_events": "sum",
}
_COVER_AGG = {**_DEVICE_AGG, **_SERIES, "readings": "sum", "devices": "sum"}


def _to_covers(devices: pd.DataFrame, mapping: pd.DataFrame) -> pd.DataFrame:
    """Per-device features with the cover each device's terminal watches (null: no cover names it)."""
    frame = devices.reset_index().merge(mapping, on="device_id", how="left")
    frame["devices"] = np.int64(1)
    return frame


def _alarm_indicators(rows: pd.DataFrame) -> pd.DataFrame:
    severity = rows["severity"].astype(object)
    return pd.DataFrame(
        {
            "cover": rows["cover"],
            "alarm": rows["alarm"],
            "raised": rows["type"].isin(list(RAISING)).fillna(False).astype("int64"),
            "rank": severity.map(SEVERITY_RANK).fillna(0).astype("int64"),
        }
    ).dropna(subset=["cover", "alarm"])


def _alarm_counts(alarms: pd.DataFrame) -> pd.DataFrame:
    """Per (cover, alarm) row: 1 under the column of its worst severity, if it was raised."""
    frame = alarms.reset_index()
    raised = frame[frame["raised"] > 0]
    out = pd.DataFrame({"cover": raised["cover"], "alarms": np.ones(len(raised), dtype="int64")})
    for severity, rank in SEVERITY_RANK.items():
        out[f"alarms_{severity.lower()}"] = (raised["rank"] == rank).astype("int64")
    return out


# -- the job ------------------------------------------------------------------------------------------


class ManholeRisk(Job):
    """Manhole cover risk scores (see the module doc)."""

    name: ClassVar[str] = "manhole-risk"
    title: ClassVar[str] = "Manhole cover risk"
    engine: ClassVar[Engine] = "dask"
    inputs: ClassVar[tuple[str, ...]] = ("manhole_alarms", "manhole_readings")
    outputs: ClassVar[tuple[TableSpec, ...]] = (RISK_SCORES,)
    steps: ClassVar[tuple[str, ...]] = (
        "reading the covers",
        "aggregating alarms and readings per cover",
        "scoring",
    )
    calls: ClassVar[tuple[str, ...]] = ("manholes",)

    def run(self, ctx: JobContext) -> JobOutput:
        mapping = cover_mapping(self._covers(ctx))
        ctx.advance("reading the covers")
        covers, unmapped = self._aggregate(ctx, mapping)
        ctx.advance("aggregating alarms and readings per cover")
        version = model_version(self.name, VERSION, ctx.start, ctx.end)
        covers["gas_peak_ratio"] = gas_peak_ratio(covers)
        covers["score"] = risk_scores(covers)
        covers = covers.sort_values(["score", "cover"], ascending=[False, True], kind="stable").reset_index(
            drop=True
        )
        scores = _table(covers, ctx, version)
        summary = {
            "covers": len(covers),
            "covers_at_risk": int((covers["score"] >= 0.5).sum()),
            "max_score": round(float(covers["score"].max()), 6) if len(covers) else 0.0,
            "alarms": int(covers["alarms"].sum()) if len(covers) else 0,
            "unmapped_devices": unmapped[0],
            "unmapped_readings": unmapped[1],
            "model_version": version,
        }
        ctx.advance("scoring")
        return JobOutput(
            tables={RISK_SCORES.name: scores}, report_html=_report(ctx, covers, summary), summary=summary
        )

    async def publish(self, ctx: JobContext, output: JobOutput) -> dict[str, Any]:
        """SetRiskScores in batches of at most 10,000 (see the module doc)."""
        from google.protobuf import timestamp_pb2

        from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc

        scores = output.tables[RISK_SCORES.name]
        pairs = list(zip(scores.column("cover").to_pylist(), scores.column("score").to_pylist(), strict=True))
        if not pairs:
            return {"updated": 0, "stale": 0}
        if ctx.services is None:
            log.warning(
                "manhole-risk: no services to publish to; %d scores stay in the lake only", len(pairs)
            )
            return {"updated": 0, "stale": 0, "skipped": len(pairs)}
        version = model_version(self.name, VERSION, ctx.start, ctx.end)
        computed = timestamp_pb2.Timestamp()
        computed.FromDatetime(ctx.now)

        async def send(channel: grpc.aio.Channel) -> dict[str, Any]:
            stub = manholes_pb2_grpc.CoverServiceStub(channel)
            updated = stale = 0
            for start in range(0, len(pairs), MAX_SCORES):
                batch = [
                    manholes_pb2.CoverRiskScore(cover=c, score=s)
                    for c, s in pairs[start : start + MAX_SCORES]
                ]
                response = await stub.SetRiskScores(
                    manholes_pb2.SetRiskScoresRequest(
                        scores=batch, model_version=version, computed_time=computed
                    ),
                    timeout=60,
                )
                updated += response.updated
                stale += response.stale
            return {"updated": updated, "stale": stale}

        result: dict[str, Any] = await ctx.services.call("manholes", send)
        return result

    @staticmethod
    def _covers(ctx: JobContext) -> dict[str, str]:
        given = ctx.params.get("covers")
        if given is not None:
            return {str(device): str(cover) for device, cover in dict(given).items()}
        if ctx.services is None:
            from cityos_analytics.services import ServicesUnavailable

            raise ServicesUnavailable(
                "manhole-risk needs the covers' terminals: pass params['covers'] or the manholes service's "
                "address and the analytics client's credentials"
            )
        services = ctx.services
        mapping: dict[str, str] = asyncio.run(services.call("manholes", fetch_covers))
        log.info("manhole-risk: %d covers with a terminal", len(mapping))
        return mapping

    @staticmethod
    def _aggregate(ctx: JobContext, mapping: pd.DataFrame) -> tuple[pd.DataFrame, tuple[int, int]]:
        from dask.base import compute

        readings: Any = ctx.read(
            "manhole_readings",
            columns=["device_id", "sequence", "metric", "value", "time"],
            filters=[("metric", "in", list(READ_METRICS))],
        )
        indicator_meta = _reading_indicators(_empty_readings())
        simple = (
            readings.map_partitions(_reading_indicators, meta=indicator_meta)
            .groupby("device_id")
            .agg(_DEVICE_AGG)
        )
        counted = readings.groupby("device_id")["sequence"].nunique().to_frame("readings")
        series_meta = pd.DataFrame({name: pd.Series(dtype="float64") for name in _SERIES})
        series = (
            readings[readings["metric"].isin(list(SERIES_METRICS))]
            .groupby("device_id")
            .apply(device_features, meta=series_meta)
        )
        devices = counted.join(simple, how="left").join(series, how="left")
        placed_meta = _to_covers(
            pd.DataFrame(
                {
                    "device_id": pd.Series(dtype="string[pyarrow]"),
                    "readings": pd.Series(dtype="int64"),
                    **{name: pd.Series(dtype="float64") for name in (*_DEVICE_AGG, *_SERIES)},
                }
            ).set_index("device_id"),
            mapping,
        )
        placed = devices.map_partitions(_to_covers, mapping, meta=placed_meta)
        per_cover = placed.groupby("cover", dropna=False).agg(_COVER_AGG)

        alarms: Any = ctx.read("manhole_alarms", columns=["alarm", "cover", "type", "severity"])
        alarm_meta = _alarm_indicators(
            pd.DataFrame(
                {name: pd.Series(dtype="string[pyarrow]") for name in ("alarm", "cover", "type", "severity")}
            )
        )
        per_alarm = (
            alarms.map_partitions(_alarm_indicators, meta=alarm_meta)
            .groupby(["cover", "alarm"])
            .agg({"raised": "max", "rank": "max"})
        )
        count_meta = _alarm_counts(
            pd.DataFrame(
                {
                    "cover": pd.Series(dtype="string[pyarrow]"),
                    "alarm": pd.Series(dtype="string[pyarrow]"),
                    "raised": pd.Series(dtype="int64"),
                    "rank": pd.Series(dtype="int64"),
                }
            ).set_index(["cover", "alarm"])
        )
        alarm_covers = per_alarm.map_partitions(_alarm_counts, meta=count_meta).groupby("cover").sum()

        covers, alarm_counts = compute(  # type: ignore[no-untyped-call]
            per_cover, alarm_covers
        )
        return _combine(covers, alarm_counts, mapping)


def _empty_readings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": pd.Series(dtype="string[pyarrow]"),
            "sequence": pd.Series(dtype="Int64"),
            "metric": pd.Series(dtype="string[pyarrow]"),
            "value": pd.Series(dtype="float64"),
        }
    )


def _combine(
    covers: pd.DataFrame, alarms: pd.DataFrame, mapping: pd.DataFrame
) -> tuple[pd.DataFrame, tuple[int, int]]:
    """The covers' reading features (the unmapped group set aside and counted), their alarm counts, and
    a row for every mapped cover without either."""
    covers = covers.reset_index()
    unmapped = covers[covers["cover"].isna()]
    unmapped_counts = (int(unmapped["devices"].sum()), int(unmapped["readings"].sum()))
    covers = covers[covers["cover"].notna()]
    every = pd.DataFrame(
        {
            "cover": sorted(
                {*mapping["cover"].astype(str), *covers["cover"].astype(str), *alarms.index.astype(str)}
            )
        }
    )
    frame = every.merge(covers.astype({"cover": object}), on="cover", how="left").merge(
        alarms.reset_index().astype({"cover": object}), on="cover", how="left"
    )
    for name in COUNTS:
        frame[name] = frame[name].fillna(0).astype("int64") if name in frame.columns else np.int64(0)
    devices = mapping.groupby(mapping["cover"].astype(str))["device_id"].agg(
        lambda ids: ",".join(sorted(ids))
    )
    frame["device"] = frame["cover"].map(devices)
    return frame, unmapped_counts


def _table(frame: pd.DataFrame, ctx: JobContext, version: str) -> pa.Table:
    rows = len(frame)
    data: dict[str, Any] = {}
    for f in RISK_SCORES.schema:
        if f.name == "model_version":
            data[f.name] = pa.array([version] * rows, f.type)
        elif f.name == "run_id":
            data[f.name] = pa.array([ctx.run_id] * rows, f.type)
        elif f.name == "window_start":
            data[f.name] = pa.array([ctx.start] * rows, f.type)
        elif f.name == "window_end":
            data[f.name] = pa.array([ctx.end] * rows, f.type)
        elif f.name == "time":
            data[f.name] = pa.array([ctx.now] * rows, f.type)
        else:
            values = frame[f.name]
            data[f.name] = pa.array(values.astype(object).where(values.notna(), None).tolist(), f.type)
    return pa.table(data, schema=RISK_SCORES.schema)


def _report(ctx: JobContext, covers: pd.DataFrame, summary: dict[str, Any]) -> str:
    figures = report.figure_html(
        {
            "covers scored": f"{summary['covers']:,}",
            "at risk (score >= 0.5)": f"{summary['covers_at_risk']:,}",
            "alarms raised": f"{summary['alarms']:,}",
            "readings of unmapped terminals": f"{summary['unmapped_readings']:,}",
            "model": summary["model_version"],
        }
    )
    top = covers.head(20)
    view = top.reindex(
        columns=[
            "cover",
            "score",
            "alarms_critical",
            "alarms_major",
            "alarms_warning",
            "water_level_p95_m",
            "tilt_step_max_deg",
            "open_events",
            "gas_peak_ratio",
            "battery_min_v",
        ]
    )
    sections = [
        ("Summary", figures),
        ("Highest risk", report.bars_html(list(top["cover"]), [float(s) for s in top["score"]])),
        ("Their features", report.table_html(view, max_rows=20)),
        (
            "Method",
            "<p>score = 1 - exp(-load), load = severity-weighted alarms + water p95 + tilt steps + lid "
            "openings + gas peaks + smoke, displacement and low battery (see the job's documentation).</p>",
        ),
    ]
    return report.page(ManholeRisk.title, ctx.start, ctx.end, sections)


__all__ = [
    "RISK_SCORES",
    "ManholeRisk",
    "cover_mapping",
    "device_features",
    "fetch_covers",
    "gas_peak_ratio",
    "risk_scores",
]
