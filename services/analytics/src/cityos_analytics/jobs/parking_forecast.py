"""Parking occupancy: each site's hourly occupancy rate, its weekly profile and a next-24-hours forecast.

The lake keeps parking occupancy as a change log (`parking_occupancy`: one row per spot status change),
not as snapshots, because that is what the parking service emits and because any snapshot or aggregate
can be derived from it exactly. This job derives one: a spot's status holds from its change until its
next change, or until the window's end, so a site's occupancy is a step function and its hourly rate is
an integral:

    rate(site, hour) = occupied spot-seconds / known spot-seconds        (within the hour and the window)

"Known" means FREE or OCCUPIED. CLOSED and UNKNOWN seconds are neither occupied nor free (a closed spot
is not a free one, and an unknown one is not evidence either way), and so are the seconds before a spot's
first change in the window: the job reads only the window, and what the spot did before it is not
looked up. An hour with no known second has no rate (it is not a rate of 0).

From the hourly rates it fits, per site, the simplest model that is honest about its data: the profile,
i.e. the mean and spread of the hourly rates per (day type, hour of day) — weekday and weekend, in UTC —
with the number of hours behind each mean. The forecast of the 24 hours from the window's end takes
each hour's profile value, falling back to the site's hour-of-day mean over all days when the profile
has no value for that day type, then to the site's overall mean; its bounds are mean ± std of the rates
behind it, clipped to [0, 1], and each row says which basis it used and how many hours were behind it.

Engine: Ray, one task per site (`fit_site`, a module-level function taking plain numpy arrays, so it
runs unchanged on a remote cluster): the driver reads the window's change log once with
`ctx.read_arrow`, splits it by site, puts each site's arrays in the object store and gathers the models
with `ray.wait`, advancing the progress bar per finished site. Sites are independent, and a city has
hundreds of them. The arithmetic is integer microseconds, so every run over the same rows gives the
same numbers.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
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
HOUR_US = 3_600_000_000
#: The status codes of `fit_site`'s input: FREE and OCCUPIED are known, anything else is not.
FREE, OCCUPIED, NOT_KNOWN = 0, 1, 2
STATUS_CODES = {"FREE": FREE, "OCCUPIED": OCCUPIED}
WEEKDAY, WEEKEND = "weekday", "weekend"
FORECAST_HOURS = 24
#: How many sites the report draws (the tables hold them all).
REPORT_SITES = 30


def _run_columns() -> list[pa.Field]:
    return [
        column("run_id", pa.string(), "the run that wrote the row: job and window (a re-run overwrites)"),
        column("window_start", TIME, "the start of the window the model was fitted on (UTC)"),
        column("window_end", TIME, "the end of the window the model was fitted on (UTC, exclusive)"),
        column("model_version", pa.string(), "the algorithm version and a hash of the training window"),
    ]


PROFILE = TableSpec(
    name="parking_occupancy_profile",
    version=1,
    schema=pa.schema(
        [
            column("site", pa.string(), "the site, `sites/{site}`"),
            column("owner_organization", pa.string(), "the site's owner"),
            column("day_type", pa.string(), "`weekday` (Monday to Friday) or `weekend`, of the UTC date"),
            column("hour", pa.int32(), "the hour of day, 0-23 (UTC)"),
            column("mean_rate", pa.float64(), "the mean of the site's hourly occupancy rates, 0-1"),
            column("std_rate", pa.float64(), "their standard deviation (population: 0 for one hour)"),
            column("hours", pa.int32(), "how many hourly rates the mean is over"),
            column("time", TIME, "the window's end: when the profile was current"),
            *_run_columns(),
        ]
    ),
    time_column="time",
    description=(
        "Each site's occupancy profile over the window: the mean and spread of its hourly occupancy "
        "rates (occupied / known spot-seconds) per day type and hour of day (UTC). Key: (run_id, site, "
        "day_type, hour)."
    ),
    source="analytics: job parking-forecast",
    key=("run_id", "site", "day_type", "hour"),
    owner="transport",
    public=("site", "day_type", "hour", "mean_rate", "std_rate", "hours", "time"),
    update_frequency="per job run",
    licence="CC-BY-4.0",
)

FORECAST = TableSpec(
    name="parking_occupancy_forecast",
    version=1,
    schema=pa.schema(
        [
            column("site", pa.string(), "the site, `sites/{site}`"),
            column("owner_organization", pa.string(), "the site's owner"),
            column("time", TIME, "the forecast hour's start (UTC): one of the 24 hours from the window end"),
            column("rate", pa.float64(), "the forecast occupancy rate, 0-1"),
            column("lower", pa.float64(), "rate minus the std of the rates behind it, clipped to 0-1"),
            column("upper", pa.float64(), "rate plus the std of the rates behind it, clipped to 0-1"),
            column(
                "basis",
                pa.string(),
                "what the rate is the mean of: `profile` (the hour's day type and hour of day), "
                "`hour_of_day` (that hour of day on all days) or `overall` (all the site's hours)",
            ),
            column("hours", pa.int32(), "how many hourly rates the forecast is the mean of"),
            *_run_columns(),
        ]
    ),
    time_column="time",
    description=(
        "Each site's occupancy forecast for the 24 hours after the window: the profile's mean for the "
        "hour's day type and hour of day, else the hour of day's mean, else the site's mean, with "
        "mean ± std bounds. Key: (run_id, site, time)."
    ),
    source="analytics: job parking-forecast",
    key=("run_id", "site", "time"),
    owner="transport",
    public=("site", "time", "rate", "lower", "upper", "basis", "hours"),
    update_frequency="per job run",
    licence="CC-BY-4.0",
)


# -- the model (pure functions on plain data; `fit_site` runs as a Ray task) ------------------------


def _floor_hour(moment_us: int) -> int:
    return moment_us - moment_us % HOUR_US


def _integral(
    times: NDArray[np.int64], deltas: NDArray[np.int64], at: NDArray[np.int64]
) -> NDArray[np.int64]:
    """The integral, from the first change to each of `at`, of the step function that starts at 0 and
    jumps by `deltas[i]` at `times[i]` (`times` sorted; several jumps at one time add up)."""
    if times.size == 0:
        return np.zeros(at.size, dtype=np.int64)
    level = np.cumsum(deltas)  # the level from times[i] until times[i + 1]
    area = np.concatenate([[0], np.cumsum(level[:-1] * np.diff(times))])  # the integral up to times[i]
    i = np.searchsorted(times, at, side="right") - 1
    inside = i >= 0
    j = np.where(inside, i, 0)
    return np.where(inside, area[j] + level[j] * (at - times[j]), 0).astype(np.int64)


def hourly_occupancy(
    spots: NDArray[Any], statuses: NDArray[Any], times_us: NDArray[np.int64], start_us: int, end_us: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """A site's occupied and known spot-microseconds in each UTC hour overlapping [start, end).

    `spots`, `statuses` (FREE, OCCUPIED or NOT_KNOWN codes) and `times_us` are the site's changes in any
    order (ties at one spot and time: the last in the input order wins, as the job sorts by event id).
    Each status holds from its change until the spot's next change or `end_us`; a change before
    `start_us` counts from `start_us`. Returns (hour starts, occupied µs, known µs), one entry per hour
    from the hour of `start_us` to the hour before `end_us`, the first and last clipped to the window.
    """
    first = _floor_hour(start_us)
    starts = np.arange(first, end_us, HOUR_US, dtype=np.int64)
    bounds = np.append(np.maximum(starts, start_us), end_us)
    if len(times_us) == 0:
        zeros = np.zeros(starts.size, dtype=np.int64)
        return starts, zeros, zeros.copy()
    times = np.clip(np.asarray(times_us, dtype=np.int64), start_us, end_us)
    order = np.lexsort((np.arange(times.size), times, np.asarray(spots)))
    spot, time, status = np.asarray(spots)[order], times[order], np.asarray(statuses)[order]
    occupied = (status == OCCUPIED).astype(np.int64)
    known = ((status == OCCUPIED) | (status == FREE)).astype(np.int64)
    new_spot = np.ones(spot.size, dtype=bool)
    new_spot[1:] = spot[1:] != spot[:-1]
    previous_occupied = np.where(new_spot, 0, np.roll(occupied, 1))
    previous_known = np.where(new_spot, 0, np.roll(known, 1))
    by_time = np.argsort(time, kind="stable")
    t = time[by_time]
    occupied_at = _integral(t, (occupied - previous_occupied)[by_time], bounds)
    known_at = _integral(t, (known - previous_known)[by_time], bounds)
    return starts, np.diff(occupied_at), np.diff(known_at)


def day_type(moment: pd.Series) -> pd.Series:
    """`weekday` or `weekend` of each (UTC) time."""
    return pd.Series(np.where(moment.dt.day_of_week >= 5, WEEKEND, WEEKDAY), index=moment.index)


def occupancy_profile(hourly: pd.DataFrame) -> pd.DataFrame:
    """The profile of hourly rates (`hourly`: columns `time`, UTC hour starts, and `rate`): mean,
    population std and count per (day_type, hour), sorted."""
    if hourly.empty:
        return pd.DataFrame({name: [] for name in ("day_type", "hour", "mean_rate", "std_rate", "hours")})
    frame = pd.DataFrame(
        {"day_type": day_type(hourly["time"]), "hour": hourly["time"].dt.hour, "rate": hourly["rate"]}
    )
    grouped = frame.groupby(["day_type", "hour"], sort=True)["rate"]
    profile = grouped.agg(mean_rate="mean", std_rate=lambda r: r.std(ddof=0), hours="size")
    return profile.reset_index()


def _stats(rates: pd.Series) -> tuple[float, float, int]:
    values = rates.to_numpy(dtype=float)
    return float(values.mean()), float(values.std()), int(values.size)


def forecast(hourly: pd.DataFrame, origin: datetime, hours: int = FORECAST_HOURS) -> pd.DataFrame:
    """The forecast of the `hours` hours from `origin` (rounded up to an hour) from the hourly rates:
    each hour's (day type, hour of day) profile mean, else the hour of day's mean over all days, else the
    overall mean; bounds mean ± std clipped to [0, 1]. No rows when there are no rates."""
    columns = ["time", "rate", "lower", "upper", "basis", "hours"]
    if hourly.empty:
        return pd.DataFrame({name: [] for name in columns})
    first = pd.Timestamp(origin).tz_convert(UTC).ceil("h")
    times = pd.Series(pd.date_range(first, periods=hours, freq="h"))
    rate_day = day_type(hourly["time"])
    rate_hour = hourly["time"].dt.hour
    overall = _stats(hourly["rate"])
    rows = []
    for moment, kind in zip(times, day_type(times), strict=True):
        same_hour = rate_hour == moment.hour
        profile = hourly["rate"][same_hour & (rate_day == kind)]
        if not profile.empty:
            (mean, std, count), basis = _stats(profile), "profile"
        elif same_hour.any():
            (mean, std, count), basis = _stats(hourly["rate"][same_hour]), "hour_of_day"
        else:
            (mean, std, count), basis = overall, "overall"
        rows.append((moment, mean, max(0.0, mean - std), min(1.0, mean + std), basis, count))
    return pd.DataFrame(rows, columns=columns)


def fit_site(data: dict[str, Any]) -> dict[str, Any]:
    """One site's model (a Ray task): `data` holds the site's `spots`, `statuses` (codes) and `times_us`
    arrays and the window's `start_us`, `end_us`. Returns the profile and the forecast as column dicts
    (plain data, cheap to ship back) and how many hours of the window had a known status."""
    start_us, end_us = int(data["start_us"]), int(data["end_us"])
    starts, occupied, known = hourly_occupancy(
        data["spots"], data["statuses"], data["times_us"], start_us, end_us
    )
    rated = known > 0
    hourly = pd.DataFrame(
        {
            "time": pd.to_datetime(starts[rated], unit="us", utc=True),
            "rate": occupied[rated] / known[rated],
        }
    )
    origin = pd.Timestamp(end_us, unit="us", tz="UTC").to_pydatetime()
    return {
        "profile": occupancy_profile(hourly).to_dict("list"),
        "forecast": forecast(hourly, origin).to_dict("list"),
        "known_hours": int(rated.sum()),
        "window_hours": int(starts.size),
    }


# -- the job ------------------------------------------------------------------------------------------


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def split_sites(changes: pa.Table, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    """The change log split into each site's `fit_site` input (sorted by spot, time and event id, so the
    order of ties is the same in every run), with the site's owner (of its latest change)."""
    ordered = changes.sort_by(
        [("site", "ascending"), ("spot", "ascending"), ("time", "ascending"), ("event_id", "ascending")]
    )
    sites = ordered.column("site").to_numpy(zero_copy_only=False)
    spots = pc.dictionary_encode(ordered.column("spot")).combine_chunks().indices.to_numpy()
    status = ordered.column("status")
    statuses = np.full(ordered.num_rows, NOT_KNOWN, dtype=np.int8)
    for name, code in STATUS_CODES.items():
        statuses[pc.fill_null(pc.equal(status, name), False).to_numpy(zero_copy_only=False)] = code
    times = pc.cast(ordered.column("time"), pa.int64()).to_numpy()
    owners = ordered.column("owner_organization").to_numpy(zero_copy_only=False)
    out: dict[str, dict[str, Any]] = {}
    if len(sites) == 0:
        return out
    cuts = np.flatnonzero(sites[1:] != sites[:-1]) + 1
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(sites)]]), strict=True):
        part = slice(int(lo), int(hi))
        out[str(sites[lo])] = {
            "spots": spots[part].astype(np.int64),
            "statuses": statuses[part],
            "times_us": times[part],
            "start_us": _us(start),
            "end_us": _us(end),
            "owner": str(owners[part][np.argmax(times[part])]),
            "spot_count": int(np.unique(spots[part]).size),
        }
    return out


class ParkingForecast(Job):
    """Per site: hourly occupancy, its (day type, hour) profile and the next 24 hours (module doc)."""

    name: ClassVar[str] = "parking-forecast"
    title: ClassVar[str] = "Parking occupancy profile and forecast"
    engine: ClassVar[Engine] = "ray"
    inputs: ClassVar[tuple[str, ...]] = ("parking_occupancy",)
    outputs: ClassVar[tuple[TableSpec, ...]] = (PROFILE, FORECAST)
    steps: ClassVar[tuple[str, ...]] = ("reading parking_occupancy", "fitting the site models", "the report")

    def run(self, ctx: JobContext) -> JobOutput:
        changes = ctx.read_arrow(
            "parking_occupancy", columns=["event_id", "site", "spot", "status", "time", "owner_organization"]
        )
        sites = split_sites(changes, ctx.start, ctx.end)
        ctx.advance("reading parking_occupancy")
        results = self._fit(ctx, sites)
        ctx.advance("fitting the site models")
        version = model_version(self.name, MODEL_VERSION, ctx.start, ctx.end)
        run = {
            "run_id": ctx.run_id,
            "window_start": ctx.start,
            "window_end": ctx.end,
            "model_version": version,
        }
        profiles, forecasts = [], []
        for site in sorted(results):
            owner = sites[site]["owner"]
            profile = pd.DataFrame(results[site]["profile"])
            profiles.append(profile.assign(site=site, owner_organization=owner, time=ctx.end, **run))
            ahead = pd.DataFrame(results[site]["forecast"])
            forecasts.append(ahead.assign(site=site, owner_organization=owner, **run))
        tables = {
            PROFILE.name: _table(PROFILE, profiles),
            FORECAST.name: _table(FORECAST, forecasts),
        }
        page = self._report(ctx, sites, results, tables[FORECAST.name])
        ctx.advance("the report")
        summary = {
            "sites": len(sites),
            "sites_forecast": sum(1 for r in results.values() if r["forecast"]["time"]),
            "changes": changes.num_rows,
            "profile_rows": tables[PROFILE.name].num_rows,
            "forecast_rows": tables[FORECAST.name].num_rows,
        }
        return JobOutput(tables=tables, report_html=page, summary=summary)

    def _fit(self, ctx: JobContext, sites: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Fit every site as its own Ray task; advance the progress bar as each one finishes."""
        results: dict[str, dict[str, Any]] = ctx.ray_map(
            fit_site, {site: (data,) for site, data in sites.items()}, "site"
        )
        return results

    def _report(
        self,
        ctx: JobContext,
        sites: dict[str, dict[str, Any]],
        results: dict[str, dict[str, Any]],
        forecasts: pa.Table,
    ) -> str:
        figures = {
            "sites": f"{len(sites):,}",
            "spots": f"{sum(s['spot_count'] for s in sites.values()):,}",
            "status changes": f"{sum(len(s['times_us']) for s in sites.values()):,}",
            "forecast from": f"{pd.Timestamp(ctx.end).ceil('h'):%Y-%m-%d %H:%M} UTC",
        }
        sections = [("Summary", report.figure_html(figures))]
        frame = forecasts.to_pandas()
        shown = sorted(set(frame["site"])) if len(frame) else []
        blank = sorted(set(sites) - set(shown))
        if blank:
            sections.append(
                (
                    "Sites without a forecast",
                    "<p>No known (FREE or OCCUPIED) spot-second in the window: "
                    + html.escape(", ".join(blank[:100]))
                    + (" …" if len(blank) > 100 else "")
                    + "</p>",
                )
            )
        for site in shown[:REPORT_SITES]:
            rows = frame[frame["site"] == site].sort_values("time")
            labels = [f"{t:%a %H:%M}" for t in rows["time"]]
            known = results[site]["known_hours"]
            body = (
                f"<p>{sites[site]['spot_count']} spots; {known} of {results[site]['window_hours']} hours "
                "of the window with a known status.</p>"
                + report.bars_html(labels, list(rows["rate"] * 100), unit=" %")
                + report.table_html(
                    rows[["time", "rate", "lower", "upper", "basis", "hours"]].assign(
                        time=[f"{t:%Y-%m-%d %H:%M}" for t in rows["time"]]
                    ),
                    max_rows=FORECAST_HOURS,
                )
            )
            sections.append((f"{site}: next {FORECAST_HOURS} hours", body))
        if len(shown) > REPORT_SITES:
            sections.append(
                (
                    "More sites",
                    f"<p>{len(shown) - REPORT_SITES} more sites in parking_occupancy_forecast.</p>",
                )
            )
        return report.page(self.title, ctx.start, ctx.end, sections)


def _table(spec: TableSpec, frames: list[pd.DataFrame]) -> pa.Table:
    """The frames as one table of the spec's schema (none: an empty table)."""
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return spec.schema.empty_table()
    frame = pd.concat(frames, ignore_index=True)[spec.schema.names]
    return pa.Table.from_pandas(frame, schema=spec.schema, preserve_index=False)
