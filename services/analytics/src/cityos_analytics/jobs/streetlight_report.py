"""Street light energy, burning hours, dimming savings and faults per light, cabinet and district.

`cityos analytics run streetlight-report` reads `streetlight_readings` over the window and writes three
tables and a report. Why a job when the streetlights service meters energy itself: the service keeps
hourly buckets for its own energy report (`streetlight_energy`), but only while it runs and only what
its inventory knows; this job recomputes the figures from the raw readings the lake keeps for years, for
any window, alongside the fault flags the controllers reported, and rolls them up by cabinet and by the
platform's named districts, which the service does not.

Per light controller (`streetlight.controller`), its readings in the window ordered by (time, sequence),
each metric holding its last value until the next reading that carries it (a reading may carry any
subset; `cityos_streetlights.metrics`):

- energy: the sum of the non-negative steps of the lifetime counter `energy_wh` between consecutive
  samples. For a counter that only grows this is max - min; a step down is a reset (a replaced
  controller, a meter reset) and counts nothing: the counter's rise after it counts from the first
  value after the reset, so no energy is invented on either side (`counter_resets` says how many). A
  light with fewer than two counter samples has no energy figure (null). A large step up (a controller
  swapped for one with a used meter) is not detected: the service's hourly metering caps those against
  the lamp's rating, this job reports the counter as read.
- burning hours: the time between consecutive readings whose held state is burning (`on` >= 0.5;
  before the first `on` sample, `dim_level` > 0), counting only steps of at most `MAX_GAP_S` (6 hours,
  the service's default): a gap in the data is not guessed at. "Readings" here are those carrying any
  of `SERIES_METRICS` (a reading of fault flags alone neither starts nor ends a step). The interval
  from the last reading to the window's end (and from the last reading before the window to the first
  in it) is not counted. Without any `on`/`dim_level` sample the figure is the `operating_hours`
  counter's rise (same reset rule); `burning_hours_source` says which (`samples` or
  `operating_hours`).
- mean dim level while on: the held `dim_level` weighted by time over the burning steps (null when no
  burning step has a known dim level).
- full-power power: the lamp model's rated power when the topology gives it (`rated_power_w`), else
  the median `power_w` of the readings taken while burning at `dim_level` >= 100 (`full_power_source`:
  `rated` or `measured`; null when neither is known). Full-power energy = that power x burning hours:
  what the burning time would have taken undimmed, as the service computes it. Savings =
  max(0, full-power energy - energy), null unless both are known. The counter also meters standby
  draw and data gaps that burning hours leave out, so savings err low, never high.
- faults: for each flag (`FLAGS`), the readings with it set (>= 0.5).

Topology: which cabinet a light hangs on comes from the streetlights inventory. `ctx.params["topology"]`
maps a device id (with or without `devices/`) to `{"light": "lights/…", "cabinet": "cabinets/…" or
None, "rated_power_w": …}`; an entry without `light` names the cabinet a cabinet controller meters.
Without the parameter the job reads it from the service (`InventoryService` ListLights, ListLightModels
and ListCabinets, as the `cityos-analytics` service account) before computing. With neither (a run given
no services) every light is reported under cabinet null, no rated power is known, and the summary's
`topology` and the report say so. A light without a known cabinet is reported under cabinet null; a
controller the topology does not know has light null too.

District: the named areas of the platform's registry (`AreaRegistry.default()`, or a GeoJSON
FeatureCollection in `ctx.params["areas"]`) that contain the centre of the H3 cell of the light's latest
reading (`area_cell`). Areas nest (the demo's `city` contains every district), so the smallest
containing area wins: a light in Rongdong is in `rongdong`, one elsewhere in the town in `city`, one
outside every area in district null.

Roll-ups: per cabinet and per district, the sums of the lights' figures, the time-weighted mean dim
level, savings as the sum of the lights' savings with the ratio to the full-power energy of the same
lights, and for each flag the readings with it and the number of lights that reported it at least once.
A cabinet row also carries its cabinet controller's figures: the `energy_wh` counter's rise (same
rule), readings with the door open and readings with a breaker (`circuit_<n>`) open.

Engine (Dask): the readings are read twice with pushdown (controllers: their columns and metrics; cabinet
controllers: theirs). Fault counts and reading counts are tree reductions (`groupby(...).sum()`,
`nunique`); the order-dependent figures (counters, burning steps) are a `groupby("device_id").apply` of
`light_figures`, which shuffles only the five metrics they need (the cabinet controllers' counter
likewise, `_meter_figures`); the per-light frame is joined to the
topology and districts partition by partition and grouped by cabinet and by district, and one
`dask.compute` computes all three tables, sharing the reads.

Every output row carries `run_id`, `window_start`, `window_end`, and `time` = the window's start, so a
daily run lands in its own day's partition.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from cityos_analytics import report
from cityos_analytics.jobs.base import Engine, Job, JobContext, JobOutput
from cityos_platform.lake import TableSpec
from cityos_platform.lake.tables import TIME, column

if TYPE_CHECKING:
    import grpc

    from cityos_platform.areas import Area

log = logging.getLogger(__name__)

CONTROLLER = "streetlight.controller"
CABINET = "streetlight.cabinet"
FLAGS = (
    "lamp_failure",
    "control_gear_failure",
    "relay_failure",
    "day_burner",
    "cycling",
    "thermal_derating",
    "thermal_shutdown",
)
#: The controller metrics whose order matters (counters, held state); the flags only need counting.
SERIES_METRICS = ("on", "dim_level", "power_w", "energy_wh", "operating_hours")
CONTROLLER_READ = (*SERIES_METRICS, *FLAGS)
MAX_CIRCUITS = 64
CIRCUITS = tuple(f"circuit_{n}" for n in range(1, MAX_CIRCUITS + 1))
CABINET_READ = ("energy_wh", "door_open", *CIRCUITS)
#: Steps between readings longer than this are gaps in the data (the service's `energy_max_gap_s`).
MAX_GAP_S = 6 * 3600.0
FLAG_AT = 0.5
FULL_DIM = 100.0
PAGE_SIZE = 500
NO_TOPOLOGY = "none (no topology parameter and no services)"

_RUN = [
    column("run_id", pa.string(), "the run that computed the row: job and window"),
    column("window_start", TIME, "the window's start (UTC)"),
    column("window_end", TIME, "the window's end (UTC, excluded)"),
    column("time", TIME, "the window's start (the row's partition day)"),
]
_ENERGY = [
    column("energy_wh", pa.float64(), "energy metered by the counters, Wh", nullable=True),
    column("burning_hours", pa.float64(), "hours the lamps burned", nullable=True),
    column(
        "mean_dim_level",
        pa.float64(),
        "dim level while burning, %, weighted by burning time",
        nullable=True,
    ),
    column("full_power_wh", pa.float64(), "the burning time's energy undimmed, Wh", nullable=True),
    column("savings_wh", pa.float64(), "max(0, full-power energy - energy), Wh", nullable=True),
    column(
        "savings_ratio",
        pa.float64(),
        "savings / full-power energy (of the lights with savings)",
        nullable=True,
    ),
]


def _flag_columns(per_light: bool) -> list[pa.Field]:
    fields = [
        column(f"{flag}_readings", pa.int64(), f"readings with `{flag}` set (>= 0.5)") for flag in FLAGS
    ]
    if not per_light:
        fields += [
            column(f"{flag}_lights", pa.int64(), f"lights that reported `{flag}` at least once")
            for flag in FLAGS
        ]
        fields.append(column("faulty_lights", pa.int64(), "lights that reported any fault flag"))
    else:
        fields.append(column("fault_readings", pa.int64(), "readings with any fault flag, summed per flag"))
    return fields


LIGHT_REPORT = TableSpec(
    name="streetlight_light_report",
    version=1,
    schema=pa.schema(
        [
            column("device_id", pa.string(), "the light's controller (device id without `devices/`)"),
            column("light", pa.string(), "the light, `lights/{light}`; null when unknown", nullable=True),
            column(
                "cabinet", pa.string(), "its cabinet, `cabinets/{cabinet}`; null when none", nullable=True
            ),
            column("district", pa.string(), "the smallest named area containing it", nullable=True),
            column("area_cell", pa.string(), "the H3 cell of its latest reading", nullable=True),
            column("readings", pa.int64(), "its readings in the window"),
            *_ENERGY,
            column("counter_resets", pa.int64(), "steps down of the `energy_wh` counter (ignored)"),
            column("operating_hours", pa.float64(), "the `operating_hours` counter's rise", nullable=True),
            column("burning_hours_source", pa.string(), "`samples` or `operating_hours`", nullable=True),
            column("full_power_w", pa.float64(), "the lamp's undimmed power, W", nullable=True),
            column("full_power_source", pa.string(), "`rated` (the model) or `measured`", nullable=True),
            *_flag_columns(per_light=True),
            *_RUN,
        ]
    ),
    time_column="time",
    description="Per street light and window: energy, burning hours, mean dim level, full-power energy, "
    "dimming savings and fault-flag readings, from its controller's readings (see the job's doc).",
    source="analytics: job streetlight-report",
    key=("run_id", "device_id"),
    owner="public-works",
    update_frequency="per job run",
)
CABINET_REPORT = TableSpec(
    name="streetlight_cabinet_report",
    version=1,
    schema=pa.schema(
        [
            column(
                "cabinet",
                pa.string(),
                "the cabinet, `cabinets/{cabinet}`; null: lights without one",
                nullable=True,
            ),
            column("lights", pa.int64(), "lights with readings in the window"),
            *_ENERGY,
            column(
                "meter_energy_wh", pa.float64(), "the cabinet controller's counter rise, Wh", nullable=True
            ),
            column("door_open_readings", pa.int64(), "cabinet readings with the door open"),
            column("breaker_open_readings", pa.int64(), "cabinet readings with a circuit breaker open"),
            *_flag_columns(per_light=False),
            *_RUN,
        ]
    ),
    time_column="time",
    description="Per lighting cabinet and window: its lights' energy, savings and faults, and its own "
    "meter, door and breakers.",
    source="analytics: job streetlight-report",
    key=("run_id", "cabinet"),
    owner="public-works",
    update_frequency="per job run",
)
DISTRICT_REPORT = TableSpec(
    name="streetlight_district_report",
    version=1,
    schema=pa.schema(
        [
            column(
                "district", pa.string(), "the area's name; null: lights outside every area", nullable=True
            ),
            column("lights", pa.int64(), "lights with readings in the window"),
            column("cabinets", pa.int64(), "distinct known cabinets of those lights"),
            *_ENERGY,
            *_flag_columns(per_light=False),
            *_RUN,
        ]
    ),
    time_column="time",
    description="Per named district and window: its lights' energy, savings and faults.",
    source="analytics: job streetlight-report",
    key=("run_id", "district"),
    owner="public-works",
    update_frequency="per job run",
)


# -- the pure parts (one light's series; a district lookup) ---------------------------------------------


def counter_rise(values: Sequence[float] | np.ndarray[Any, Any]) -> tuple[float | None, int]:
    """A lifetime counter's rise over its samples (in time order): the sum of the non-negative steps,
    and the number of steps down (resets, which count nothing). None with fewer than two samples."""
    samples = np.asarray(values, dtype=float)
    samples = samples[~np.isnan(samples)]
    if len(samples) < 2:
        return None, 0
    steps = np.diff(samples)
    return float(steps[steps >= 0].sum()), int((steps < 0).sum())


LIGHT_FIGURES = {
    "energy_wh": "float64",
    "counter_resets": "int64",
    "operating_hours": "float64",
    "burning_s": "float64",
    "burning_known": "bool",
    "dim_seconds": "float64",
    "dim_burning_s": "float64",
    "measured_full_power_w": "float64",
    "area_cell": "string[pyarrow]",
}


def light_figures(rows: pd.DataFrame, max_gap_s: float = MAX_GAP_S) -> pd.Series:
    """The order-dependent figures of one controller from its rows (columns time, sequence, metric,
    value, area_cell; any order) as the module doc defines them: the counters' rises, burning seconds,
    dim-level seconds while burning, the measured full power and the latest cell."""
    out: dict[str, Any] = {
        "energy_wh": math.nan,
        "counter_resets": 0,
        "operating_hours": math.nan,
        "burning_s": 0.0,
        "burning_known": False,
        "dim_seconds": 0.0,
        "dim_burning_s": 0.0,
        "measured_full_power_w": math.nan,
        "area_cell": None,
    }
    if rows.empty:
        return pd.Series(out, dtype=object)
    ordered = rows.sort_values(["time", "sequence"], kind="stable")
    cells = ordered["area_cell"].dropna()
    if len(cells):
        out["area_cell"] = str(cells.iloc[-1])
    wide = ordered.pivot_table(
        index=["time", "sequence"], columns="metric", values="value", aggfunc="last", sort=True
    )

    def series(name: str) -> np.ndarray[Any, Any]:
        if name in wide.columns:
            return np.asarray(wide[name].to_numpy(dtype=float, na_value=np.nan))
        return np.full(len(wide), np.nan)

    energy, resets = counter_rise(series("energy_wh"))
    out["energy_wh"] = math.nan if energy is None else energy
    out["counter_resets"] = resets
    hours, _ = counter_rise(series("operating_hours"))
    out["operating_hours"] = math.nan if hours is None else hours

    on_held = pd.Series(series("on")).ffill().to_numpy()
    dim_held = pd.Series(series("dim_level")).ffill().to_numpy()
    state = np.where(~np.isnan(on_held), on_held >= FLAG_AT, dim_held > 0)
    known = ~np.isnan(on_held) | ~np.isnan(dim_held)
    burning = state & known
    out["burning_known"] = bool(known.any())

    times = wide.index.get_level_values("time")
    seconds = (times - times[0]).total_seconds().to_numpy(dtype=float) if len(times) else np.zeros(0)
    steps = np.diff(seconds)
    counted = (steps > 0) & (steps <= max_gap_s) & burning[:-1]
    out["burning_s"] = float(steps[counted].sum())
    with_dim = counted & ~np.isnan(dim_held[:-1])
    out["dim_seconds"] = float((steps[with_dim] * dim_held[:-1][with_dim]).sum())
    out["dim_burning_s"] = float(steps[with_dim].sum())

    power = series("power_w")
    full = ~np.isnan(power) & burning & (dim_held >= FULL_DIM)
    if full.any():
        out["measured_full_power_w"] = float(np.median(power[full]))
    return pd.Series(out, dtype=object)


def _typed(frame: pd.DataFrame, types: Mapping[str, str]) -> pd.DataFrame:
    """`frame` with the columns of `types` cast (object columns out of a groupby-apply)."""
    return frame.astype(dict(types))


def _ring_area(ring: Sequence[tuple[float, float]]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))) / 2


def area_size(area: Area) -> float:
    """An area's size in square degrees (outer rings minus holes): only to rank nested areas."""
    return sum(
        _ring_area(polygon[0]) - sum(_ring_area(hole) for hole in polygon[1:]) for polygon in area.polygons
    )


def districts_by_size(areas: Sequence[Area]) -> tuple[Area, ...]:
    """The areas smallest first (then by name): the order `district_of` tries them in."""
    return tuple(sorted(areas, key=lambda area: (area_size(area), area.name)))


def district_of(cell: str | None, districts: Sequence[Area]) -> str | None:
    """The first of `districts` (smallest first) containing the centre of H3 `cell`; None for none or
    for a missing or invalid cell."""
    import h3  # type: ignore[import-untyped]

    if not cell:
        return None
    try:
        lat, lng = h3.cell_to_latlng(cell)
    except (ValueError, TypeError):  # h3's invalid-cell errors are ValueErrors
        return None
    return next((area.name for area in districts if area.contains(lat, lng)), None)


# -- topology -----------------------------------------------------------------------------------------


def _device_id(name: str) -> str:
    return name.removeprefix("devices/")


def _prefixed(value: Any, collection: str) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text if text.startswith(f"{collection}/") else f"{collection}/{text}"


def topology_frames(topology: Mapping[str, Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The topology parameter as two frames: lights (device_id, light, cabinet, rated_power_w) and
    cabinet controllers (device_id, cabinet)."""
    lights: list[dict[str, Any]] = []
    meters: list[dict[str, Any]] = []
    for device, entry in sorted(topology.items()):
        cabinet = _prefixed(entry.get("cabinet"), "cabinets")
        if entry.get("light"):
            rated = entry.get("rated_power_w")
            lights.append(
                {
                    "device_id": _device_id(device),
                    "light": _prefixed(entry["light"], "lights"),
                    "cabinet": cabinet,
                    "rated_power_w": float(rated) if rated else math.nan,
                }
            )
        elif cabinet is not None:
            meters.append({"device_id": _device_id(device), "cabinet": cabinet})
    light_frame = pd.DataFrame(lights, columns=["device_id", "light", "cabinet", "rated_power_w"]).astype(
        {"device_id": "string[pyarrow]", "light": "string[pyarrow]", "cabinet": "string[pyarrow]"}
    )
    light_frame["rated_power_w"] = light_frame["rated_power_w"].astype("float64")
    meter_frame = pd.DataFrame(meters, columns=["device_id", "cabinet"]).astype("string[pyarrow]")
    return light_frame, meter_frame


async def fetch_topology(channel: grpc.aio.Channel) -> dict[str, dict[str, Any]]:
    """The topology from the streetlights inventory: every light with a controller (its cabinet and its
    model's rated power) and every cabinet with a controller."""
    from cityos.streetlights.v1 import inventory_pb2, inventory_pb2_grpc

    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    rated: dict[str, float] = {}
    token = ""
    while True:
        models = await stub.ListLightModels(
            inventory_pb2.ListLightModelsRequest(page_size=PAGE_SIZE, page_token=token), timeout=30
        )
        rated.update({model.name: model.rated_power_w for model in models.light_models})
        token = models.next_page_token
        if not token:
            break
    topology: dict[str, dict[str, Any]] = {}
    while True:
        cabinets = await stub.ListCabinets(
            inventory_pb2.ListCabinetsRequest(page_size=PAGE_SIZE, page_token=token), timeout=30
        )
        for cabinet in cabinets.cabinets:
            if cabinet.device:
                topology[_device_id(cabinet.device)] = {"cabinet": cabinet.name}
        token = cabinets.next_page_token
        if not token:
            break
    while True:
        page = await stub.ListLights(
            inventory_pb2.ListLightsRequest(page_size=PAGE_SIZE, page_token=token), timeout=30
        )
        for light in page.lights:
            if light.device:
                topology[_device_id(light.device)] = {
                    "light": light.name,
                    "cabinet": light.cabinet or None,
                    "rated_power_w": rated.get(light.model) or None,
                }
        token = page.next_page_token
        if not token:
            break
    return topology


# -- the Dask parts (module-level, so they pickle to a remote cluster) --------------------------------


def _flag_indicators(rows: pd.DataFrame) -> pd.DataFrame:
    """One 0/1 column per flag: the row is that flag's metric and it is set."""
    out = pd.DataFrame({"device_id": rows["device_id"]})
    set_ = (rows["value"] >= FLAG_AT).to_numpy(dtype=bool, na_value=False)
    for flag in FLAGS:
        out[f"{flag}_readings"] = (
            (rows["metric"] == flag).to_numpy(dtype=bool, na_value=False) & set_
        ).astype("int64")
    return out


def _cabinet_indicators(rows: pd.DataFrame) -> pd.DataFrame:
    metric = rows["metric"]
    value = rows["value"]
    return pd.DataFrame(
        {
            "device_id": rows["device_id"],
            "door_open_readings": ((metric == "door_open") & (value >= FLAG_AT))
            .to_numpy(dtype=bool, na_value=False)
            .astype("int64"),
            "breaker_open_readings": (metric.str.startswith("circuit_") & (value < FLAG_AT))
            .to_numpy(dtype=bool, na_value=False)
            .astype("int64"),
        }
    )


def _meter_figures(rows: pd.DataFrame) -> pd.Series:
    energy = rows[rows["metric"] == "energy_wh"].sort_values(["time", "sequence"], kind="stable")
    rise, _ = counter_rise(energy["value"].to_numpy(dtype=float, na_value=np.nan))
    return pd.Series({"meter_energy_wh": math.nan if rise is None else rise}, dtype=object)


def _place_lights(lights: pd.DataFrame, topology: pd.DataFrame, districts: tuple[Area, ...]) -> pd.DataFrame:
    """Per-light figures joined to the topology, the district added and the derived figures computed."""
    frame = lights.reset_index().merge(topology, on="device_id", how="left")
    cells = frame["area_cell"].astype(object).where(frame["area_cell"].notna(), None)
    found = {cell: district_of(cell, districts) for cell in set(cells) if cell is not None}
    frame["district"] = pd.array(
        [found.get(cell) if cell else None for cell in cells], dtype="string[pyarrow]"
    )
    from_samples = frame["burning_known"].astype(bool)
    frame["burning_hours"] = np.where(
        from_samples, frame["burning_s"] / 3600, frame["operating_hours"]
    ).astype("float64")
    source = pd.Series(pd.NA, index=frame.index, dtype="string[pyarrow]")
    source[frame["burning_hours"].notna()] = "operating_hours"
    source[from_samples] = "samples"
    frame["burning_hours_source"] = source
    rated = frame["rated_power_w"].where(frame["rated_power_w"] > 0)
    frame["full_power_w"] = rated.fillna(frame["measured_full_power_w"]).astype("float64")
    power_source = pd.Series(pd.NA, index=frame.index, dtype="string[pyarrow]")
    power_source[frame["full_power_w"].notna()] = "measured"
    power_source[rated.notna()] = "rated"
    frame["full_power_source"] = power_source
    frame["full_power_wh"] = frame["full_power_w"] * frame["burning_hours"]
    frame["savings_wh"] = (frame["full_power_wh"] - frame["energy_wh"]).clip(lower=0)
    frame["full_for_savings_wh"] = frame["full_power_wh"].where(frame["savings_wh"].notna())
    frame["mean_dim_level"] = (frame["dim_seconds"] / frame["dim_burning_s"]).where(
        frame["dim_burning_s"] > 0
    )
    frame["savings_ratio"] = (frame["savings_wh"] / frame["full_power_wh"]).where(frame["full_power_wh"] > 0)
    flags = frame[[f"{flag}_readings" for flag in FLAGS]]
    frame["fault_readings"] = flags.sum(axis=1).astype("int64")
    for flag in FLAGS:
        frame[f"{flag}_lights"] = (frame[f"{flag}_readings"] > 0).astype("int64")
    frame["faulty_lights"] = (frame["fault_readings"] > 0).astype("int64")
    frame["lights"] = np.int64(1)
    for name in _COUNTED:
        frame[f"{name}_n"] = frame[name].notna().astype("int64")
    return frame


#: Figures a light may lack: a roll-up over lights none of which has one is null, not 0.
_COUNTED = ("energy_wh", "burning_hours", "full_power_wh", "savings_wh")
_ROLLUP_SUMS = [
    "lights",
    "energy_wh",
    "burning_hours",
    "dim_seconds",
    "dim_burning_s",
    "full_power_wh",
    "savings_wh",
    "full_for_savings_wh",
    *(f"{flag}_readings" for flag in FLAGS),
    *(f"{flag}_lights" for flag in FLAGS),
    "faulty_lights",
]


def _finish_rollup(frame: pd.DataFrame) -> pd.DataFrame:
    """Sums of lights' figures as a roll-up row: mean dim level and savings ratio from their parts; a sum
    over lights of which none had the figure is null, not 0."""
    out = frame.copy()
    out["mean_dim_level"] = (out["dim_seconds"] / out["dim_burning_s"]).where(out["dim_burning_s"] > 0)
    out["savings_ratio"] = (out["savings_wh"] / out["full_for_savings_wh"]).where(
        out["full_for_savings_wh"] > 0
    )
    return out


def _rollup(frame: Any, key: str) -> Any:
    """The Dask group-by of the placed lights by `key` (null keys kept as their own group): sums."""
    names = [*_ROLLUP_SUMS, *(f"{name}_n" for name in _COUNTED)]
    return frame.groupby(key, dropna=False)[names].sum()


def _nulls_for_empty(frame: pd.DataFrame) -> pd.DataFrame:
    for name in _COUNTED:
        frame[name] = frame[name].where(frame[f"{name}_n"] > 0)
    return frame


# -- the job ------------------------------------------------------------------------------------------


class StreetlightReport(Job):
    """Street light energy, savings and faults per light, cabinet and district (see the module doc)."""

    name: ClassVar[str] = "streetlight-report"
    title: ClassVar[str] = "Street light energy, savings and faults"
    engine: ClassVar[Engine] = "dask"
    inputs: ClassVar[tuple[str, ...]] = ("streetlight_readings",)
    outputs: ClassVar[tuple[TableSpec, ...]] = (LIGHT_REPORT, CABINET_REPORT, DISTRICT_REPORT)
    #: The inventory (topology) comes from the streetlights service when no `topology` param is given.
    calls: ClassVar[tuple[str, ...]] = ("streetlights",)
    steps: ClassVar[tuple[str, ...]] = (
        "reading the topology",
        "aggregating readings per light, cabinet and district",
        "writing the report",
    )

    def run(self, ctx: JobContext) -> JobOutput:
        topology, topology_source = self._topology(ctx)
        districts = self._districts(ctx)
        ctx.advance("reading the topology")
        lights, cabinets, places = self._aggregate(ctx, topology, districts)
        ctx.advance("aggregating readings per light, cabinet and district")
        tables = {
            LIGHT_REPORT.name: _table(LIGHT_REPORT, lights, ctx),
            CABINET_REPORT.name: _table(CABINET_REPORT, cabinets, ctx),
            DISTRICT_REPORT.name: _table(DISTRICT_REPORT, places, ctx),
        }
        known_lights = int(lights["light"].notna().sum()) if len(lights) else 0
        summary = {
            "lights": len(lights),
            "lights_unknown_to_inventory": len(lights) - known_lights,
            "lights_without_cabinet": int(lights["cabinet"].isna().sum()) if len(lights) else 0,
            "cabinets": int(cabinets["cabinet"].notna().sum()) if len(cabinets) else 0,
            "districts": int(places["district"].notna().sum()) if len(places) else 0,
            "energy_kwh": round(float(lights["energy_wh"].sum()) / 1000, 3) if len(lights) else 0.0,
            "savings_kwh": round(float(lights["savings_wh"].sum()) / 1000, 3) if len(lights) else 0.0,
            "faulty_lights": int((lights["fault_readings"] > 0).sum()) if len(lights) else 0,
            "topology": topology_source,
        }
        html = _report(ctx, lights, cabinets, places, summary)
        ctx.advance("writing the report")
        return JobOutput(tables=tables, report_html=html, summary=summary)

    @staticmethod
    def _topology(ctx: JobContext) -> tuple[dict[str, dict[str, Any]], str]:
        """The topology and where it came from: the parameter, the streetlights service, or nowhere (no
        services given: every light is reported under cabinet null, with districts and figures as usual,
        and the summary and the report say so)."""
        given = ctx.params.get("topology")
        if given is not None:
            return {str(device): dict(entry) for device, entry in dict(given).items()}, "params"
        if ctx.services is None:
            log.warning("streetlight-report: no topology and no services; lights go under cabinet null")
            return {}, NO_TOPOLOGY
        services = ctx.services
        topology: dict[str, dict[str, Any]] = asyncio.run(services.call("streetlights", fetch_topology))
        log.info("streetlight-report: %d controllers in the inventory's topology", len(topology))
        return topology, "streetlights inventory"

    @staticmethod
    def _districts(ctx: JobContext) -> tuple[Area, ...]:
        from cityos_platform.areas import AreaRegistry

        given = ctx.params.get("areas")
        registry = AreaRegistry.from_geojson(given) if given is not None else AreaRegistry.default()
        return districts_by_size(list(registry))

    @staticmethod
    def _aggregate(
        ctx: JobContext, topology: dict[str, dict[str, Any]], districts: tuple[Area, ...]
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        from dask.base import compute

        light_topology, meter_topology = topology_frames(topology)
        max_gap_s = float(ctx.params.get("max_gap_s", MAX_GAP_S))
        controllers: Any = ctx.read(
            "streetlight_readings",
            columns=["device_id", "area_cell", "sequence", "metric", "value", "time"],
            filters=[("device_type", "==", CONTROLLER), ("metric", "in", list(CONTROLLER_READ))],
        )
        flag_meta = pd.DataFrame({"device_id": pd.Series(dtype="string[pyarrow]")}).assign(
            **{f"{flag}_readings": pd.Series(dtype="int64") for flag in FLAGS}
        )
        flags = controllers.map_partitions(_flag_indicators, meta=flag_meta).groupby("device_id").sum()
        readings = controllers.groupby("device_id")["sequence"].nunique().to_frame("readings")
        series_rows = controllers[controllers["metric"].isin(list(SERIES_METRICS))]
        figure_meta = pd.DataFrame({name: pd.Series(dtype=object) for name in LIGHT_FIGURES})
        figures = (
            series_rows.groupby("device_id")
            .apply(light_figures, max_gap_s, meta=figure_meta)
            .map_partitions(_typed, LIGHT_FIGURES, meta=_typed(figure_meta, LIGHT_FIGURES))
        )
        per_light = readings.join(flags, how="left").join(figures, how="left")
        placed_meta = _place_lights(_empty_per_light(), light_topology, districts)
        placed = per_light.map_partitions(_place_lights, light_topology, districts, meta=placed_meta)
        by_cabinet = _rollup(placed, "cabinet")
        by_district = _rollup(placed, "district")
        district_cabinets = placed.groupby("district", dropna=False)["cabinet"].nunique().to_frame("cabinets")

        cabinet_rows: Any = ctx.read(
            "streetlight_readings",
            columns=["device_id", "sequence", "metric", "value", "time"],
            filters=[("device_type", "==", CABINET), ("metric", "in", list(CABINET_READ))],
        )
        cabinet_meta = pd.DataFrame(
            {
                "device_id": pd.Series(dtype="string[pyarrow]"),
                "door_open_readings": pd.Series(dtype="int64"),
                "breaker_open_readings": pd.Series(dtype="int64"),
            }
        )
        cabinet_counts = (
            cabinet_rows.map_partitions(_cabinet_indicators, meta=cabinet_meta).groupby("device_id").sum()
        )
        meters = (
            cabinet_rows[cabinet_rows["metric"] == "energy_wh"]
            .groupby("device_id")
            .apply(_meter_figures, meta=pd.DataFrame({"meter_energy_wh": pd.Series(dtype=object)}))
            .map_partitions(_typed, {"meter_energy_wh": "float64"}, meta={"meter_energy_wh": "float64"})
        )
        per_meter = cabinet_counts.join(meters, how="left")
        lights, cabinets, places, district_cabs, meter_frame = compute(  # type: ignore[no-untyped-call]
            placed, by_cabinet, by_district, district_cabinets, per_meter
        )
        lights = lights.sort_values("device_id", kind="stable").reset_index(drop=True)
        cabinets = _with_meters(_nulls_for_empty(_finish_rollup(cabinets)), meter_frame, meter_topology)
        places = _nulls_for_empty(_finish_rollup(places)).join(district_cabs, how="left")
        places = places.reset_index().sort_values("district", kind="stable", na_position="last")
        return (
            _integers(lights, LIGHT_REPORT),
            _integers(cabinets, CABINET_REPORT),
            _integers(places.reset_index(drop=True), DISTRICT_REPORT),
        )


def _empty_per_light() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "device_id": pd.Series(dtype="string[pyarrow]"),
            "readings": pd.Series(dtype="int64"),
            **{f"{flag}_readings": pd.Series(dtype="int64") for flag in FLAGS},
            **{name: pd.Series(dtype=type_) for name, type_ in LIGHT_FIGURES.items()},
        }
    )
    return frame.set_index("device_id")


def _with_meters(cabinets: pd.DataFrame, meters: pd.DataFrame, meter_topology: pd.DataFrame) -> pd.DataFrame:
    """The cabinets' rows with their cabinet controllers' figures (cabinets with only a controller too)."""
    placed = meters.reset_index().merge(meter_topology, on="device_id", how="inner")
    per_cabinet = placed.groupby("cabinet").agg(
        meter_energy_wh=("meter_energy_wh", lambda values: values.sum(min_count=1)),
        door_open_readings=("door_open_readings", "sum"),
        breaker_open_readings=("breaker_open_readings", "sum"),
    )
    merged = cabinets.reset_index().merge(per_cabinet.reset_index(), on="cabinet", how="outer")
    return merged.sort_values("cabinet", kind="stable", na_position="last").reset_index(drop=True)


def _integers(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """`frame` with the spec's integer columns as int64, a missing count (a cabinet with only a
    controller has no light counts; a light-only cabinet no door readings) being 0."""
    out = frame.copy()
    for f in spec.schema:
        if pa.types.is_integer(f.type) and f.name in out.columns:
            out[f.name] = out[f.name].fillna(0).astype("int64")
    return out


def _table(spec: TableSpec, frame: pd.DataFrame, ctx: JobContext) -> pa.Table:
    """`frame`'s columns of `spec` with the run's columns, as an Arrow table of the spec's schema."""
    data: dict[str, Any] = {}
    rows = len(frame)
    for f in spec.schema:
        if f.name == "run_id":
            data[f.name] = pa.array([ctx.run_id] * rows, f.type)
        elif f.name in ("window_start", "time"):
            data[f.name] = pa.array([ctx.start] * rows, f.type)
        elif f.name == "window_end":
            data[f.name] = pa.array([ctx.end] * rows, f.type)
        else:
            values = frame[f.name] if f.name in frame.columns else pd.Series([None] * rows, dtype=object)
            cleaned = values.astype(object).where(values.notna(), None).tolist()
            if pa.types.is_integer(f.type):
                cleaned = [0 if value is None else int(value) for value in cleaned]
            data[f.name] = pa.array(cleaned, f.type)
    return pa.table(data, schema=spec.schema)


def _report(
    ctx: JobContext,
    lights: pd.DataFrame,
    cabinets: pd.DataFrame,
    places: pd.DataFrame,
    summary: dict[str, Any],
) -> str:
    figures = report.figure_html(
        {
            "lights": f"{summary['lights']:,}",
            "energy": f"{summary['energy_kwh']:,.1f} kWh",
            "dimming savings": f"{summary['savings_kwh']:,.1f} kWh",
            "lights with faults": f"{summary['faulty_lights']:,}",
            "lights without a cabinet": f"{summary['lights_without_cabinet']:,}",
        }
    )
    fault_columns = [f"{flag}_readings" for flag in FLAGS]
    shown = ["energy_wh", "burning_hours", "mean_dim_level", "savings_wh", "savings_ratio"]
    cabinet_view = cabinets.reindex(
        columns=[
            "cabinet",
            "lights",
            *shown,
            "meter_energy_wh",
            "door_open_readings",
            "breaker_open_readings",
            "faulty_lights",
        ]
    )
    cabinet_view["cabinet"] = cabinet_view["cabinet"].astype(object).fillna("(no cabinet)")
    district_view = places.reindex(columns=["district", "lights", "cabinets", *shown, "faulty_lights"])
    district_view["district"] = district_view["district"].astype(object).fillna("(outside every area)")
    faulty = lights[lights["fault_readings"] > 0] if len(lights) else lights
    faulty = faulty.sort_values(["fault_readings", "device_id"], ascending=[False, True], kind="stable")
    faulty_view = faulty.reindex(
        columns=["device_id", "light", "cabinet", "district", "fault_readings", *fault_columns]
    ).astype({"light": object, "cabinet": object, "district": object})
    faulty_view = faulty_view.fillna({"light": "(unknown)", "cabinet": "", "district": ""})
    if summary["topology"] == NO_TOPOLOGY:
        figures += (
            "<p><b>No topology:</b> the run had neither the lights' topology nor the streetlights service, "
            "so every light is under cabinet null and no lamp's rated power is known.</p>"
        )
    sections = [
        ("Summary", figures),
        ("Cabinets", report.table_html(cabinet_view)),
        ("Districts", report.table_html(district_view)),
        ("Most faulty lights", report.table_html(faulty_view, max_rows=20)),
    ]
    if len(places):
        energy = places["energy_wh"].fillna(0) / 1000
        sections.insert(
            3,
            (
                "Energy by district (kWh)",
                report.bars_html(list(district_view["district"]), list(energy)),
            ),
        )
    return report.page(StreetlightReport.title, ctx.start, ctx.end, sections)


__all__ = [
    "CABINET_REPORT",
    "DISTRICT_REPORT",
    "FLAGS",
    "LIGHT_REPORT",
    "StreetlightReport",
    "counter_rise",
    "district_of",
    "fetch_topology",
    "light_figures",
]
