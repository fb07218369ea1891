"""Device anomalies: which devices depart from the other devices of their class (the city's "active defense").

A tampered, failing or spoofed device rarely breaks a rule anyone wrote down; it behaves unlike its
peers. So instead of thresholds per metric, this job describes every device by what it did over the
window and asks, per device class (`device_type`: devices of one model report the same metrics and
should behave alike), which devices are isolated from the rest:

- features per device, for each metric its class reports: the mean, population std, min and max of
  its values, and how many values per hour it sent (0 when it sent none of that metric, whose other
  four features then take the class median, so a missing metric shows as a low rate, not as a gap);
  plus the fraction of its readings that arrived late (`received_time - time` above `late_after_s`,
  60 s unless the run's params say otherwise). Rows whose value is NaN or infinite are ignored;
- a model per class: scikit-learn's IsolationForest (100 trees, `random_state` 0, contamination
  `auto`), fitted on that class's devices and scoring them. `score` is its `decision_function`: below
  0 means the device is isolated in fewer random splits than its peers are, i.e. anomalous; the lower,
  the more so. A class with fewer than `min_devices` (5) devices has no baseline worth the name and is
  skipped (no rows; the summary and the report list it);
- an explanation: the features that depart most from the class, by robust z-score against the class
  median and MAD (`(x - median) / (1.4826 MAD)`, the MAD replaced by 1.2533 times the mean absolute
  deviation when it is 0, and z = 0 when both are), the three largest |z| as `top_features`.

Isolation forests need no scaling (each split is drawn uniformly within a feature's range) and no
labelled attacks, which the city does not have; the fixed seed and the devices' stable order make a
re-run of a window give the same scores.

Engine: Ray, one task per device class (`fit_class`, a module-level function taking an Arrow table of
the class's rows, computing the features and fitting the forest), since classes are independent and a
forest is CPU-bound: the driver reads the window once with `ctx.read_arrow`, puts each class's rows in
the object store and gathers the results with `ray.wait`, advancing the progress bar per class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cityos_analytics import report
from cityos_analytics.jobs.base import Engine, Job, JobContext, JobOutput, model_version
from cityos_platform.lake import TableSpec
from cityos_platform.lake.tables import TIME, column

if TYPE_CHECKING:
    from numpy.typing import NDArray

MODEL_VERSION = 1
#: Per-metric features, in the order of the feature matrix's columns (metrics sorted by name).
METRIC_STATS = ("mean", "std", "min", "max", "per_hour")
LATE_FRACTION = "late_fraction"
DEFAULTS: dict[str, Any] = {
    "late_after_s": 60.0,
    "min_devices": 5,
    "n_estimators": 100,
    "contamination": "auto",
    "random_state": 0,
    "top_features": 3,
}
#: The MAD of a normal sample times this is its std; the mean absolute deviation's factor likewise.
MAD_SCALE, MEAN_AD_SCALE = 1.4826, 1.2533
#: The columns the job reads (all of device_telemetry's).
COLUMNS = [
    "device_id",
    "device_type",
    "owner_organization",
    "area_cell",
    "sequence",
    "metric",
    "value",
    "time",
    "received_time",
]
#: What `fit_class` returns per device, as the output's columns.
SCORED = ("device_id", "score", "anomalous", "top_features", "owner_organization", "area_cell", "readings")

ANOMALIES = TableSpec(
    name="device_anomalies",
    version=1,
    schema=pa.schema(
        [
            column("device_id", pa.string(), "the device"),
            column("device_type", pa.string(), "its class: the device type whose devices it was scored with"),
            column("owner_organization", pa.string(), "the device's owner (of its latest reading)"),
            column(
                "area_cell", pa.string(), "its H3 cell (of its latest reading); null when none", nullable=True
            ),
            column(
                "score",
                pa.float64(),
                "the class's IsolationForest decision function: below 0 is anomalous, the lower the more",
            ),
            column(
                "anomalous", pa.bool_(), "whether the score is below 0: the device departs from its class"
            ),
            column(
                "top_features",
                pa.string(),
                "the features furthest from the class median, by robust z-score, e.g. "
                "`temperature_c.mean z=+14.2, temperature_c.max z=+9.8, late_fraction z=+0.0`",
            ),
            column("readings", pa.int64(), "how many readings (sequences) of the device the window holds"),
            column("class_devices", pa.int32(), "how many devices of its class the model was fitted on"),
            column("time", TIME, "the window's end: when the score was current"),
            column("run_id", pa.string(), "the run that wrote the row: job and window (a re-run overwrites)"),
            column("window_start", TIME, "the start of the window the features cover (UTC)"),
            column("window_end", TIME, "the end of the window the features cover (UTC, exclusive)"),
            column("model_version", pa.string(), "the algorithm version and a hash of the window"),
        ]
    ),
    time_column="time",
    description=(
        "Per device and window: its IsolationForest score against the other devices of its type, "
        "whether it is anomalous and which features depart most from the type's median. Types with "
        "too few devices are not scored. Key: (run_id, device_type, device_id)."
    ),
    source="analytics: job device-anomalies",
    key=("run_id", "device_type", "device_id"),
    owner="data-office",
    update_frequency="per job run",
)


# -- features, model and explanation (pure functions; `fit_class` runs as a Ray task) ------------------


def device_features(rows: pd.DataFrame, window_hours: float, late_after_s: float) -> pd.DataFrame:
    """The feature matrix of one class's rows (the table's columns): a row per device (sorted by id), a
    column per feature (`<metric>.<stat>` for the sorted metrics and METRIC_STATS, then
    `late_fraction`). A metric a device never sent has `per_hour` 0 and its other stats imputed with the
    class median (0 when no device has one)."""
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
    if rows.empty:
        return pd.DataFrame(index=pd.Index([], name="device_id", dtype=object))
    grouped = rows.groupby(["device_id", "metric"], sort=True)["value"]
    stats = pd.DataFrame(
        {
            "mean": grouped.mean(),
            "std": grouped.std(ddof=0),
            "min": grouped.min(),
            "max": grouped.max(),
            "per_hour": grouped.size() / window_hours,
        }
    )
    wide = stats.unstack("metric")
    metrics = sorted(rows["metric"].unique())
    features = pd.DataFrame(index=wide.index)
    for metric in metrics:
        for stat in METRIC_STATS:
            values = wide[(stat, metric)].astype(float)
            if stat == "per_hour":
                values = values.fillna(0.0)
            else:
                median = values.median()
                values = values.fillna(0.0 if np.isnan(median) else median)
            features[f"{metric}.{stat}"] = values
    lag_s = (rows["received_time"] - rows["time"]).dt.total_seconds()
    readings = pd.DataFrame({"device_id": rows["device_id"], "sequence": rows["sequence"], "lag": lag_s})
    late = readings.groupby(["device_id", "sequence"], sort=True)["lag"].max() > late_after_s
    features[LATE_FRACTION] = late.groupby(level="device_id").mean().astype(float)
    features.index = features.index.astype(object)
    return features


def robust_z(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each value's robust z-score against its column: (x - median) / (1.4826 MAD), the MAD replaced by
    1.2533 times the mean absolute deviation when it is 0, and 0 where both are 0 (a constant column)."""
    median = np.median(matrix, axis=0)
    deviation = np.abs(matrix - median)
    scale = MAD_SCALE * np.median(deviation, axis=0)
    scale = np.where(scale > 0, scale, MEAN_AD_SCALE * deviation.mean(axis=0))
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, (matrix - median) / safe, 0.0)


def explain(names: list[str], z: NDArray[np.float64], top: int) -> list[str]:
    """Per row of `z`, its `top` features by |z| (ties: the earlier feature), as `name z=+1.2, …`."""
    order = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :top]
    return [
        ", ".join(f"{names[j]} z={row[j]:+.1f}" for j in picks) for row, picks in zip(z, order, strict=True)
    ]


def score_class(features: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Fit the class's IsolationForest on its feature matrix and score its devices (see the module doc)."""
    from sklearn.ensemble import IsolationForest

    matrix = features.to_numpy(dtype=np.float64)
    model = IsolationForest(
        n_estimators=int(params["n_estimators"]),
        contamination=params["contamination"],
        random_state=int(params["random_state"]),
    ).fit(matrix)
    score = model.decision_function(matrix)
    return {
        "device_id": list(features.index),
        "score": score.tolist(),
        "anomalous": (score < 0).tolist(),
        "top_features": explain(list(features.columns), robust_z(matrix), int(params["top_features"])),
    }


def fit_class(rows: pa.Table, window_hours: float, params: dict[str, Any]) -> dict[str, Any]:
    """One device class (a Ray task): its rows' features, model, scores and explanations, and each
    device's owner, cell (of its latest row) and reading count, as plain lists."""
    frame = rows.to_pandas()
    features = device_features(frame, window_hours, float(params["late_after_s"]))
    result = score_class(features, params)
    ordered = frame.sort_values(["device_id", "time"], kind="stable")
    latest = ordered.drop_duplicates("device_id", keep="last").set_index("device_id")
    readings = frame.groupby("device_id", sort=True)["sequence"].nunique()
    ids = result["device_id"]
    result["owner_organization"] = latest["owner_organization"].reindex(ids).tolist()
    result["area_cell"] = [None if pd.isna(v) else v for v in latest["area_cell"].reindex(ids)]
    result["readings"] = readings.reindex(ids).astype(int).tolist()
    return result


def job_params(given: dict[str, Any]) -> dict[str, Any]:
    """The run's params over DEFAULTS, typed (strings such as a command line gives are accepted); params
    the job does not know are ignored."""
    params = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    contamination = params["contamination"]
    if contamination != "auto":
        params["contamination"] = float(contamination)
    for name in ("min_devices", "n_estimators", "random_state", "top_features"):
        params[name] = int(params[name])
    params["late_after_s"] = float(params["late_after_s"])
    return params


def class_sizes(rows: pa.Table) -> dict[str, int]:
    """Distinct devices per device type, by type."""
    counts = rows.group_by("device_type").aggregate([("device_id", "count_distinct")])
    return dict(
        sorted(
            zip(
                counts["device_type"].to_pylist(), counts["device_id_count_distinct"].to_pylist(), strict=True
            )
        )
    )


class DeviceAnomalies(Job):
    """Per device class, an IsolationForest over the devices' window features (module doc)."""

    name: ClassVar[str] = "device-anomalies"
    title: ClassVar[str] = "Device anomalies"
    engine: ClassVar[Engine] = "ray"
    inputs: ClassVar[tuple[str, ...]] = ("device_telemetry",)
    outputs: ClassVar[tuple[TableSpec, ...]] = (ANOMALIES,)
    steps: ClassVar[tuple[str, ...]] = ("reading device_telemetry", "fitting the class models", "the report")

    def run(self, ctx: JobContext) -> JobOutput:
        params = job_params(ctx.params)
        rows = ctx.read_arrow("device_telemetry", columns=COLUMNS)
        rows = rows.filter(pc.is_finite(rows.column("value")))  # a class's size counts devices with values
        sizes = class_sizes(rows)
        modelled = {kind: n for kind, n in sizes.items() if n >= params["min_devices"]}
        skipped = {kind: n for kind, n in sizes.items() if n < params["min_devices"]}
        ctx.advance("reading device_telemetry")
        window_hours = (ctx.end - ctx.start).total_seconds() / 3600
        results = self._fit(ctx, rows, modelled, window_hours, params)
        ctx.advance("fitting the class models")
        version = model_version(self.name, MODEL_VERSION, ctx.start, ctx.end)
        frames = [
            pd.DataFrame({name: results[kind][name] for name in SCORED}).assign(
                device_type=kind, class_devices=len(results[kind]["device_id"])
            )
            for kind in sorted(results)
            if results[kind]["device_id"]
        ]
        if frames:
            frame = pd.concat(frames, ignore_index=True).assign(
                time=ctx.end,
                run_id=ctx.run_id,
                window_start=ctx.start,
                window_end=ctx.end,
                model_version=version,
            )
            output = pa.Table.from_pandas(
                frame[ANOMALIES.schema.names], schema=ANOMALIES.schema, preserve_index=False
            )
        else:
            output = ANOMALIES.schema.empty_table()
        flagged = int(pc.sum(output.column("anomalous")).as_py() or 0)
        html = self._report(ctx, output, sizes, skipped, params)
        ctx.advance("the report")
        summary = {
            "devices": output.num_rows,
            "flagged": flagged,
            "classes": sorted(results),
            "skipped_classes": skipped,
            "min_devices": params["min_devices"],
        }
        return JobOutput(tables={ANOMALIES.name: output}, report_html=html, summary=summary)

    def _fit(
        self,
        ctx: JobContext,
        rows: pa.Table,
        modelled: dict[str, int],
        window_hours: float,
        params: dict[str, Any],
    ) -> dict[str, dict[str, Any]]:
        """One Ray task per modelled class; advance the progress bar as each one finishes."""
        types = rows.column("device_type")
        inputs = {kind: (rows.filter(pc.equal(types, kind)), window_hours, params) for kind in modelled}
        results: dict[str, dict[str, Any]] = ctx.ray_map(fit_class, inputs, "class")
        return results

    def _report(
        self,
        ctx: JobContext,
        output: pa.Table,
        sizes: dict[str, int],
        skipped: dict[str, int],
        params: dict[str, Any],
    ) -> str:
        frame = output.to_pandas()
        flagged = frame[frame["anomalous"]] if len(frame) else frame
        figures = {
            "devices scored": f"{len(frame):,}",
            "flagged": f"{len(flagged):,}",
            "classes modelled": f"{len(sizes) - len(skipped):,}",
            "classes skipped": f"{len(skipped):,}",
        }
        classes = pd.DataFrame(
            {
                "device_type": list(sizes),
                "devices": list(sizes.values()),
                "flagged": [
                    int((flagged["device_type"] == kind).sum()) if len(flagged) else 0 for kind in sizes
                ],
                "model": [
                    f"skipped: fewer than {params['min_devices']} devices"
                    if kind in skipped
                    else "IsolationForest"
                    for kind in sizes
                ],
            }
        )
        sections = [
            ("Summary", report.figure_html(figures)),
            ("Device classes", report.table_html(classes, max_rows=200)),
        ]
        for kind in sorted(set(flagged["device_type"])) if len(flagged) else []:
            rows = flagged[flagged["device_type"] == kind].sort_values("score")
            sections.append(
                (
                    f"Flagged {kind} devices",
                    report.table_html(
                        rows[["device_id", "owner_organization", "score", "readings", "top_features"]],
                        max_rows=100,
                    ),
                )
            )
        if not len(flagged):
            sections.append(("Flagged devices", "<p>No device departs from its class in this window.</p>"))
        return report.page(self.title, ctx.start, ctx.end, sections)
