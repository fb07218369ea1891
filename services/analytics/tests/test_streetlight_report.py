"""The streetlight report job: its figures per light, cabinet and district against an independent DuckDB
computation over the same Parquet files (LAK-4), its topology read from a real streetlights service, and
the pure formulas (counter resets, burning steps, districts) on edge cases.

The generated city: 13 light controllers over 42 hours (six hours either side of a window that cuts a
day), on from 18:00 to 06:00 UTC, at full power until 23:00 and at 50 % after; each reading carries a
random subset of the metrics and random fault flags. Among them: a counter reset, a controller without
`on` (dim level only), one reporting only its operating-hours and energy counters, one with an eight-hour
gap, one unknown to the topology, one without a cabinet, one in the hole of Rongdong's polygon (so in
`city`), one outside every area, and lamps with and without a rated power. Two cabinet controllers
meter their cabinets; a third is unknown to the topology.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cityos_analytics.jobs.base import JobContext
from cityos_analytics.jobs.streetlight_report import (
    FLAGS,
    NO_TOPOLOGY,
    StreetlightReport,
    counter_rise,
    district_of,
    districts_by_size,
    light_figures,
    topology_frames,
)
from cityos_analytics.runner import run_job
from cityos_analytics.services import Services
from cityos_platform.areas import AreaRegistry
from cityos_platform.lake import read_table
from cityos_platform.lake.files import write_rows
from cityos_platform.lake.tables import table

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 2, 12, tzinfo=UTC)
STEP = timedelta(minutes=30)
SERIES = ("on", "dim_level", "power_w", "energy_wh", "operating_hours")

# device -> (lat, lng, cabinet, rated power or None, in the topology, behaviour)
LIGHTS: dict[str, tuple[float, float, str | None, float | None, bool, str]] = {
    "ctl-01": (38.993, 115.958, "c1", 60.0, True, "normal"),
    "ctl-02": (38.9935, 115.9585, "c1", 60.0, True, "faulty"),
    "ctl-03": (38.994, 115.959, "c1", None, True, "normal"),
    "ctl-04": (39.005, 115.95, "c1", 90.0, True, "normal"),  # in Rongdong's hole: `city`
    "ctl-05": (39.0, 115.90, "c2", 60.0, True, "faulty"),
    "ctl-06": (39.001, 115.901, "c2", 120.0, True, "normal"),
    "ctl-07": (39.0, 115.99, "c2", 60.0, True, "normal"),
    "ctl-08": (39.001, 115.991, "c2", 60.0, True, "reset"),
    "ctl-09": (39.02, 115.99, "c3", 60.0, True, "dim_only"),
    "ctl-10": (39.2, 116.3, None, 60.0, True, "counters_only"),
    "ctl-11": (39.002, 115.992, None, None, False, "gap"),
    "ctl-12": (38.9925, 115.9575, "c1", 60.0, True, "subsets"),
    "ctl-13": (39.0015, 115.9015, "c2", None, True, "faulty"),
}
CABINET_DEVICES = {"cc-1": "c1", "cc-2": "c2", "cc-9": None}


def _level(moment: datetime) -> float:
    hour = moment.hour
    if 18 <= hour < 23:
        return 100.0
    if hour >= 23 or hour < 6:
        return 50.0
    return 0.0


def _light_rows(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    first, last = START - timedelta(hours=6), END + timedelta(hours=6)
    for device, (lat, lng, _cabinet, rated, _known, behaviour) in LIGHTS.items():
        cell = h3.latlng_to_cell(lat, lng, 9)
        power_rating = rated or 75.0
        energy, hours, sequence = float(rng.uniform(1e5, 4e5)), float(rng.uniform(1000, 9000)), 0
        moment = first + timedelta(minutes=int(rng.integers(0, 29)))
        while moment < last:
            if behaviour == "gap" and START + timedelta(hours=19) <= moment < START + timedelta(hours=27):
                moment += STEP
                continue
            level = _level(moment)
            on = level > 0
            power = power_rating * level / 100 * float(rng.uniform(0.97, 1.03)) if on else 0.8
            energy += power * STEP.total_seconds() / 3600
            hours += STEP.total_seconds() / 3600 if on else 0.0
            if behaviour == "reset" and moment == START + timedelta(hours=20, minutes=moment.minute):
                energy = float(rng.uniform(0, 50))
            values: dict[str, float] = {
                "on": 1.0 if on else 0.0,
                "dim_level": level,
                "power_w": round(power, 2),
                "energy_wh": round(energy, 1),
                "operating_hours": round(hours, 2),
            }
            fault_rate = 0.3 if behaviour == "faulty" else 0.004
            for flag in FLAGS:
                if rng.random() < 0.5:
                    values[flag] = 1.0 if rng.random() < fault_rate else 0.0
            if behaviour == "dim_only":
                del values["on"]
            if behaviour == "counters_only":
                values = {"energy_wh": values["energy_wh"], "operating_hours": values["operating_hours"]}
            if behaviour == "subsets":
                values = {k: v for k, v in values.items() if rng.random() < 0.6} or {"power_w": power}
            sequence += 1
            for metric, value in values.items():
                rows.append(
                    {
                        "device_id": device,
                        "device_type": "streetlight.controller",
                        "owner_organization": "public-works",
                        "area_cell": cell,
                        "sequence": sequence,
                        "metric": metric,
                        "value": value,
                        "time": moment,
                        "received_time": moment + timedelta(seconds=4),
                    }
                )
            moment += STEP
    return rows


def _cabinet_rows(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for device in CABINET_DEVICES:
        energy, moment, sequence = float(rng.uniform(1e6, 2e6)), START - timedelta(hours=3), 0
        while moment < END + timedelta(hours=3):
            energy += float(rng.uniform(100, 900))
            sequence += 1
            values = {
                "energy_wh": round(energy, 1),
                "active_power_w": float(rng.uniform(500, 1500)),
                "door_open": 1.0 if rng.random() < 0.1 else 0.0,
                "voltage_l1_v": 230.0,
                **{f"circuit_{n}": 0.0 if rng.random() < 0.05 else 1.0 for n in (1, 2, 3)},
            }
            for metric, value in values.items():
                rows.append(
                    {
                        "device_id": device,
                        "device_type": "streetlight.cabinet",
                        "owner_organization": "public-works",
                        "area_cell": h3.latlng_to_cell(39.0, 115.95, 9),
                        "sequence": sequence,
                        "metric": metric,
                        "value": value,
                        "time": moment,
                        "received_time": moment,
                    }
                )
            moment += timedelta(hours=1)
    return rows


def _topology() -> dict[str, dict[str, Any]]:
    topology: dict[str, dict[str, Any]] = {}
    for device, (_lat, _lng, cabinet, rated, known, _behaviour) in LIGHTS.items():
        if known:
            topology[device] = {
                "light": f"lights/sl-{device[-2:]}",
                "cabinet": f"cabinets/{cabinet}" if cabinet else None,
                "rated_power_w": rated,
            }
    for device, cabinet in CABINET_DEVICES.items():
        if cabinet:
            topology[f"devices/{device}"] = {"cabinet": f"cabinets/{cabinet}"}
    return topology


def _write_city(lake: Any) -> None:
    rng = np.random.default_rng(20261101)
    rows = pd.DataFrame(_light_rows(rng) + _cabinet_rows(rng))
    write_rows(lake, table("streetlight_readings"), pa.Table.from_pandas(rows, preserve_index=False), "gen-1")


# -- the independent computation ------------------------------------------------------------------------


def _expected_lights(lake: Any) -> pd.DataFrame:
    """Per light, in DuckDB SQL over the Parquet files, and the derived figures in pandas."""
    import duckdb

    files = f"{lake.root}/streetlight_readings/dt=*/*.parquet"
    flag_counts = ", ".join(
        f"count(*) FILTER (WHERE metric = '{flag}' AND value >= 0.5) AS {flag}_readings" for flag in FLAGS
    )
    burning = "coalesce(on_h >= 0.5, dim_h > 0)"
    counted = f"step > 0 AND step <= 21600 AND {burning}"
    sql = f"""
    WITH c AS (
      SELECT * FROM read_parquet('{files}')
      WHERE time >= TIMESTAMPTZ '{START.isoformat()}' AND time < TIMESTAMPTZ '{END.isoformat()}'
        AND device_type = 'streetlight.controller'
    ),
    wide AS (
      SELECT device_id, time, sequence,
        max(value) FILTER (WHERE metric = 'on') AS on_v,
        max(value) FILTER (WHERE metric = 'dim_level') AS dim_v,
        max(value) FILTER (WHERE metric = 'power_w') AS power_v
      FROM c WHERE metric IN {SERIES}
      GROUP BY device_id, time, sequence
    ),
    held AS (
      SELECT *,
        last_value(on_v IGNORE NULLS) OVER w AS on_h,
        last_value(dim_v IGNORE NULLS) OVER w AS dim_h,
        epoch(lead(time) OVER (PARTITION BY device_id ORDER BY time, sequence)) - epoch(time) AS step
      FROM wide
      WINDOW w AS (PARTITION BY device_id ORDER BY time, sequence
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    ),
    burn AS (
      SELECT device_id,
        coalesce(sum(step) FILTER (WHERE {counted}), 0) AS burning_s,
        bool_or(on_h IS NOT NULL OR dim_h IS NOT NULL) AS known,
        sum(step * dim_h) FILTER (WHERE {counted} AND dim_h IS NOT NULL) AS dim_seconds,
        sum(step) FILTER (WHERE {counted} AND dim_h IS NOT NULL) AS dim_burning_s,
        median(power_v) FILTER (WHERE power_v IS NOT NULL AND {burning} AND dim_h >= 100) AS measured
      FROM held GROUP BY device_id
    ),
    deltas AS (
      SELECT device_id, metric,
        value - lag(value) OVER (PARTITION BY device_id, metric ORDER BY time, sequence) AS d
      FROM c WHERE metric IN ('energy_wh', 'operating_hours')
    ),
    counters AS (
      SELECT device_id,
        CASE WHEN count(*) FILTER (WHERE metric = 'energy_wh') >= 2
             THEN coalesce(sum(d) FILTER (WHERE metric = 'energy_wh' AND d >= 0), 0) END AS energy_wh,
        count(*) FILTER (WHERE metric = 'energy_wh' AND d < 0) AS counter_resets,
        CASE WHEN count(*) FILTER (WHERE metric = 'operating_hours') >= 2
             THEN coalesce(sum(d) FILTER (WHERE metric = 'operating_hours' AND d >= 0), 0) END
             AS operating_hours
      FROM deltas GROUP BY device_id
    ),
    totals AS (
      SELECT device_id, count(DISTINCT sequence) AS readings,
        arg_max(area_cell, time) FILTER (WHERE area_cell IS NOT NULL) AS area_cell, {flag_counts}
      FROM c GROUP BY device_id
    )
    SELECT * FROM totals LEFT JOIN counters USING (device_id) LEFT JOIN burn USING (device_id)
    ORDER BY device_id
    """
    lights = duckdb.sql(sql).df()
    topology = pd.DataFrame(
        [
            {
                "device_id": device,
                "light": f"lights/sl-{device[-2:]}" if known else None,
                "cabinet": f"cabinets/{cabinet}" if known and cabinet else None,
                "rated": rated if known else None,
            }
            for device, (_a, _b, cabinet, rated, known, _c) in LIGHTS.items()
        ]
    )
    lights = lights.merge(topology, on="device_id", how="left")
    lights["counter_resets"] = lights["counter_resets"].fillna(0)
    lights["burning_hours"] = np.where(
        lights["known"].fillna(False).astype(bool),
        lights["burning_s"].fillna(0) / 3600,
        lights["operating_hours"],
    )
    lights["full_power_w"] = lights["rated"].astype(float).fillna(lights["measured"].astype(float))
    lights["full_power_wh"] = lights["full_power_w"] * lights["burning_hours"]
    lights["savings_wh"] = (lights["full_power_wh"] - lights["energy_wh"]).clip(lower=0)
    lights["mean_dim_level"] = lights["dim_seconds"] / lights["dim_burning_s"]
    lights["fault_readings"] = lights[[f"{flag}_readings" for flag in FLAGS]].sum(axis=1)
    lights["district"] = [_oracle_district(cell) for cell in lights["area_cell"]]
    return lights


def _oracle_district(cell: str | None) -> str | None:
    """With shapely (the product does not use it): the smallest area containing the cell's centre."""
    from shapely.geometry import Point, shape

    if not cell:
        return None
    from importlib.resources import files

    document = json.loads((files("cityos_platform") / "data/areas/xiongan-demo.geojson").read_text())
    lat, lng = h3.cell_to_latlng(cell)
    containing = [
        (shape(feature["geometry"]).area, feature["properties"]["name"])
        for feature in document["features"]
        if shape(feature["geometry"]).covers(Point(lng, lat))
    ]
    return min(containing)[1] if containing else None


def _expected_rollup(lights: pd.DataFrame, key: str) -> pd.DataFrame:
    import duckdb

    frame = lights.copy()
    frame["full_for_savings"] = frame["full_power_wh"].where(frame["savings_wh"].notna())
    for flag in FLAGS:
        frame[f"{flag}_light"] = (frame[f"{flag}_readings"] > 0).astype(int)
    per_flag = ", ".join(
        f"sum({flag}_readings) AS {flag}_readings, sum({flag}_light) AS {flag}_lights" for flag in FLAGS
    )
    return duckdb.sql(
        f"""
        SELECT {key}, count(*) AS lights, count(DISTINCT cabinet) AS cabinets,
          sum(energy_wh) AS energy_wh, sum(burning_hours) AS burning_hours,
          sum(dim_seconds) / nullif(sum(dim_burning_s), 0) AS mean_dim_level,
          sum(full_power_wh) AS full_power_wh, sum(savings_wh) AS savings_wh,
          sum(savings_wh) / nullif(sum(full_for_savings), 0) AS savings_ratio,
          count(*) FILTER (WHERE fault_readings > 0) AS faulty_lights, {per_flag}
        FROM frame GROUP BY {key} ORDER BY {key} NULLS LAST
        """
    ).df()


def _expected_meters(lake: Any) -> pd.DataFrame:
    import duckdb

    files = f"{lake.root}/streetlight_readings/dt=*/*.parquet"
    return duckdb.sql(
        f"""
        WITH c AS (
          SELECT * FROM read_parquet('{files}')
          WHERE time >= TIMESTAMPTZ '{START.isoformat()}' AND time < TIMESTAMPTZ '{END.isoformat()}'
            AND device_type = 'streetlight.cabinet'
        )
        SELECT device_id,
          max(value) FILTER (WHERE metric = 'energy_wh') - min(value) FILTER (WHERE metric = 'energy_wh')
            AS meter_energy_wh,
          count(*) FILTER (WHERE metric = 'door_open' AND value >= 0.5) AS door_open_readings,
          count(*) FILTER (WHERE metric LIKE 'circuit_%' AND value < 0.5) AS breaker_open_readings
        FROM c GROUP BY device_id ORDER BY device_id
        """
    ).df()


def _text(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _close(actual: Any, expected: Any, what: str) -> None:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)) or expected is pd.NA:
        assert actual is None or (isinstance(actual, float) and math.isnan(actual)), f"{what}: {actual}"
        return
    assert actual == pytest.approx(float(expected), rel=1e-9, abs=1e-9), what


@pytest.mark.req("LAK-4")
@pytest.mark.slow
def test_figures_per_light_cabinet_and_district_match_an_independent_duckdb_computation(lake, engines):
    """Per light (energy with a counter reset, burning hours from samples, from dim levels alone and from
    the operating-hours counter, mean dim level, full power rated or measured, savings, fault counts,
    district), per cabinet (with the cabinet controllers' meters) and per district, the job's Dask
    figures equal DuckDB's over the same files; rows outside the window (which cuts a day) do not count."""
    _write_city(lake)
    result = run_job(
        "streetlight-report", START, END, lake=lake, engines=engines, params={"topology": _topology()}
    )
    assert result.rows["streetlight_light_report"] == len(LIGHTS)

    lights = read_table("streetlight_light_report", lake=lake).compute().set_index("device_id")
    expected = _expected_lights(lake).set_index("device_id")
    assert sorted(lights.index) == sorted(expected.index)
    columns = [
        "energy_wh",
        "operating_hours",
        "burning_hours",
        "mean_dim_level",
        "full_power_w",
        "full_power_wh",
        "savings_wh",
    ]
    for device, row in expected.iterrows():
        got = lights.loc[device]
        assert got["readings"] == row["readings"], device
        assert got["counter_resets"] == row["counter_resets"], device
        for name in columns:
            _close(None if pd.isna(got[name]) else float(got[name]), row[name], f"{device} {name}")
        for flag in FLAGS:
            assert got[f"{flag}_readings"] == row[f"{flag}_readings"], f"{device} {flag}"
        assert got["fault_readings"] == row["fault_readings"], device
        assert _text(got["district"]) == _text(row["district"]), device
        assert _text(got["cabinet"]) == _text(row["cabinet"]), device
        assert got["area_cell"] == row["area_cell"], device
        assert str(got["run_id"]) == result.run_id
        assert got["time"] == pd.Timestamp(START)
        assert got["window_end"] == pd.Timestamp(END)

    # The generated behaviours are what the figures show.
    assert lights.loc["ctl-08", "counter_resets"] == 1
    assert lights.loc["ctl-09", "burning_hours_source"] == "samples"  # from dim levels alone
    assert lights.loc["ctl-10", "burning_hours_source"] == "operating_hours"
    assert pd.isna(lights.loc["ctl-10", "mean_dim_level"])
    assert lights.loc["ctl-03", "full_power_source"] == "measured"
    assert lights.loc["ctl-01", "full_power_source"] == "rated"
    assert pd.isna(lights.loc["ctl-11", "light"])
    assert pd.isna(lights.loc["ctl-11", "cabinet"])
    assert lights.loc["ctl-04", "district"] == "city"
    assert lights.loc["ctl-01", "district"] == "rongdong"
    assert pd.isna(lights.loc["ctl-10", "district"])
    assert 40 < lights.loc["ctl-01", "mean_dim_level"] < 100

    # Per cabinet: the lights' roll-up and the cabinet controllers' meters (cc-9 is unknown: dropped).
    flat = expected.reset_index()
    cabinets = read_table("streetlight_cabinet_report", lake=lake).compute()
    want = _expected_rollup(flat, "cabinet")
    meters = _expected_meters(lake).set_index("device_id")
    assert [None if pd.isna(c) else c for c in cabinets["cabinet"]] == [
        None if pd.isna(c) else c for c in want["cabinet"]
    ]
    for (_, got), (_, row) in zip(cabinets.iterrows(), want.iterrows(), strict=True):
        what = f"cabinet {row['cabinet']}"
        assert got["lights"] == row["lights"], what
        for name in (
            "energy_wh",
            "burning_hours",
            "mean_dim_level",
            "full_power_wh",
            "savings_wh",
            "savings_ratio",
        ):
            _close(None if pd.isna(got[name]) else float(got[name]), row[name], f"{what} {name}")
        for flag in FLAGS:
            assert got[f"{flag}_readings"] == row[f"{flag}_readings"], what
            assert got[f"{flag}_lights"] == row[f"{flag}_lights"], what
        assert got["faulty_lights"] == row["faulty_lights"], what
        device = {"cabinets/c1": "cc-1", "cabinets/c2": "cc-2"}.get(row["cabinet"])
        if device is None:
            assert pd.isna(got["meter_energy_wh"]), what
            assert got["door_open_readings"] == 0, what
        else:
            _close(float(got["meter_energy_wh"]), meters.loc[device, "meter_energy_wh"], what)
            assert got["door_open_readings"] == meters.loc[device, "door_open_readings"], what
            assert got["breaker_open_readings"] == meters.loc[device, "breaker_open_readings"], what

    # Per district.
    districts = read_table("streetlight_district_report", lake=lake).compute()
    want = _expected_rollup(flat, "district")
    assert [None if pd.isna(d) else d for d in districts["district"]] == [
        None if pd.isna(d) else d for d in want["district"]
    ]
    for (_, got), (_, row) in zip(districts.iterrows(), want.iterrows(), strict=True):
        what = f"district {row['district']}"
        assert (got["lights"], got["cabinets"], got["faulty_lights"]) == (
            row["lights"],
            row["cabinets"],
            row["faulty_lights"],
        ), what
        for name in (
            "energy_wh",
            "burning_hours",
            "mean_dim_level",
            "full_power_wh",
            "savings_wh",
            "savings_ratio",
        ):
            _close(None if pd.isna(got[name]) else float(got[name]), row[name], f"{what} {name}")
        for flag in FLAGS:
            assert got[f"{flag}_lights"] == row[f"{flag}_lights"], what

    html = Path(result.report).read_text()
    assert "Cabinets" in html
    assert "Districts" in html
    assert "Most faulty lights" in html
    assert "ctl-02" in html  # a faulty light is listed
    assert result.summary["lights"] == len(LIGHTS)
    assert result.summary["lights_unknown_to_inventory"] == 1
    assert result.summary["topology"] == "params"


# -- the topology from a real streetlights service ----------------------------------------------------


@pytest.fixture
async def streetlights(start_server, mint, tmp_path):
    from cityos_platform.config import load_settings
    from cityos_streetlights.app import StreetlightsApp

    app = StreetlightsApp(
        load_settings(var_dir=tmp_path / "streetlights"),
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'streetlights.sqlite'}",
        run_tasks=False,
    )
    server = await start_server(await app.start())
    yield server
    await server.stop(grace=0)
    await app.stop()


async def _inventory(address: str, token: str) -> None:
    from cityos.common.v1 import resources_pb2
    from cityos.streetlights.v1 import inventory_pb2 as inv
    from cityos.streetlights.v1 import inventory_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        here = resources_pb2.GeoPoint(latitude=38.993, longitude=115.958)
        await stub.CreateLightModel(
            inv.CreateLightModelRequest(
                light_model=inv.LightModel(
                    display_name="LED 80", lamp_technology=inv.LAMP_TECHNOLOGY_LED, rated_power_w=80.0
                ),
                light_model_id="led-80",
            ),
            metadata=metadata,
        )
        await stub.CreateCabinet(
            inv.CreateCabinetRequest(
                cabinet=inv.Cabinet(
                    display_name="C1",
                    location=here,
                    working_mode=inv.WORKING_MODE_AUTOMATIC,
                    device="devices/cc-1",
                ),
                cabinet_id="c1",
            ),
            metadata=metadata,
        )
        await stub.CreateFeeder(
            inv.CreateFeederRequest(
                feeder=inv.Feeder(display_name="F1", cabinet="cabinets/c1", circuit=1, phase=inv.PHASE_L1),
                feeder_id="f1",
            ),
            metadata=metadata,
        )
        for light_id, device, feeder in (("sl-1", "ctl-1", "feeders/f1"), ("sl-2", "ctl-2", "")):
            await stub.CreateLight(
                inv.CreateLightRequest(
                    light=inv.Light(
                        display_name=light_id.upper(),
                        location=here,
                        model="lightModels/led-80",
                        feeder=feeder,
                        device=f"devices/{device}",
                    ),
                    light_id=light_id,
                ),
                metadata=metadata,
            )


@pytest.mark.slow
async def test_the_topology_comes_from_the_streetlights_inventory_when_not_given(
    lake, engines, streetlights, mint
):
    """Without `params["topology"]` the job reads lights, models and cabinets from a real streetlights
    service as the `cityos-analytics` service account: a light on a feeder of cabinet c1 is reported
    under it with its model's rated power, a light without a feeder under cabinet null, and the cabinet
    controller named by the cabinet meters c1."""
    operator = mint("users/li", "public-works", ["operator"])
    await _inventory(streetlights.address, operator)
    rows = []
    for device, device_type in (
        ("ctl-1", "streetlight.controller"),
        ("ctl-2", "streetlight.controller"),
        ("cc-1", "streetlight.cabinet"),
    ):
        for step in range(4):
            moment = START + timedelta(hours=20, minutes=30 * step)
            values = (
                {"on": 1.0, "dim_level": 100.0, "power_w": 70.0, "energy_wh": 1000.0 + 35 * step}
                if device_type == "streetlight.controller"
                else {"energy_wh": 5000.0 + 100 * step, "door_open": float(step == 1)}
            )
            for metric, value in values.items():
                rows.append(
                    {
                        "device_id": device,
                        "device_type": device_type,
                        "owner_organization": "public-works",
                        "area_cell": h3.latlng_to_cell(38.993, 115.958, 9),
                        "sequence": step + 1,
                        "metric": metric,
                        "value": value,
                        "time": moment,
                        "received_time": moment,
                    }
                )
    write_rows(lake, table("streetlight_readings"), pa.Table.from_pylist(rows), "gen-1")
    token = mint(
        "service-account-cityos-analytics", "city", ["service"], client="cityos-analytics", kind="service"
    )
    services = Services.with_token({"streetlights": streetlights.address}, token)

    result = await asyncio.to_thread(
        run_job, "streetlight-report", START, END, lake=lake, engines=engines, services=services
    )

    lights = read_table("streetlight_light_report", lake=lake).compute().set_index("device_id")
    assert lights.loc["ctl-1", "light"] == "lights/sl-1"
    assert lights.loc["ctl-1", "cabinet"] == "cabinets/c1"
    assert lights.loc["ctl-1", "full_power_source"] == "rated"
    assert lights.loc["ctl-1", "full_power_w"] == 80.0
    assert lights.loc["ctl-1", "energy_wh"] == pytest.approx(105.0)
    assert lights.loc["ctl-1", "burning_hours"] == pytest.approx(1.5)
    assert lights.loc["ctl-1", "savings_wh"] == pytest.approx(80 * 1.5 - 105)
    assert lights.loc["ctl-2", "light"] == "lights/sl-2"
    assert pd.isna(lights.loc["ctl-2", "cabinet"])
    cabinets = read_table("streetlight_cabinet_report", lake=lake).compute()
    c1 = cabinets[cabinets["cabinet"] == "cabinets/c1"].iloc[0]
    assert c1["lights"] == 1
    assert c1["meter_energy_wh"] == pytest.approx(300.0)
    assert c1["door_open_readings"] == 1
    assert result.summary["lights_without_cabinet"] == 1
    assert result.summary["topology"] == "streetlights inventory"


# -- the pure formulas --------------------------------------------------------------------------------


def test_a_counter_reset_counts_nothing_and_the_rise_after_it_counts_from_the_new_value():
    assert counter_rise([100.0, 110.0, 125.0]) == (25.0, 0)
    # 100 -> 130 (+30), reset to 2 (nothing), 2 -> 12 (+10)
    assert counter_rise([100.0, 130.0, 2.0, 12.0]) == (40.0, 1)
    assert counter_rise([5.0, float("nan"), 7.0]) == (2.0, 0)


def test_a_counter_with_fewer_than_two_samples_has_no_rise():
    assert counter_rise([]) == (None, 0)
    assert counter_rise([42.0]) == (None, 0)


def _rows(samples: list[tuple[int, dict[str, float]]]) -> pd.DataFrame:
    """Rows of one controller: (minutes after START, values)."""
    return pd.DataFrame(
        [
            {
                "time": START + timedelta(minutes=minute),
                "sequence": index,
                "metric": metric,
                "value": value,
                "area_cell": "89283082803ffff",
            }
            for index, (minute, values) in enumerate(samples)
            for metric, value in values.items()
        ]
    )


def test_burning_time_holds_each_state_until_the_next_reading_and_skips_gaps():
    figures = light_figures(
        _rows(
            [
                (0, {"on": 1, "dim_level": 100, "power_w": 60}),
                (30, {"dim_level": 50}),  # still on (held), dimmed
                (60, {"on": 0, "dim_level": 0}),
                (90, {"on": 1, "dim_level": 100, "power_w": 58}),
                (90 + 7 * 60, {"on": 1}),  # a 7-hour gap: not counted
                (90 + 7 * 60 + 10, {"on": 0}),
            ]
        )
    )
    assert figures["burning_s"] == 3600 + 600
    # 30 min at 100, 30 min at 50, 10 min at 100
    assert figures["dim_seconds"] / figures["dim_burning_s"] == pytest.approx(
        (1800 * 100 + 1800 * 50 + 600 * 100) / 4200
    )
    assert figures["measured_full_power_w"] == 59.0
    assert figures["burning_known"] is True


def test_without_on_samples_the_dim_level_says_whether_the_lamp_burns():
    figures = light_figures(_rows([(0, {"dim_level": 40}), (60, {"dim_level": 0}), (120, {"dim_level": 0})]))
    assert figures["burning_s"] == 3600
    assert figures["dim_seconds"] / figures["dim_burning_s"] == 40


def test_a_controller_without_readings_or_with_one_has_no_figures():
    empty = light_figures(pd.DataFrame(columns=["time", "sequence", "metric", "value", "area_cell"]))
    assert math.isnan(empty["energy_wh"])
    assert empty["burning_s"] == 0
    assert empty["burning_known"] is False
    one = light_figures(_rows([(0, {"on": 1, "energy_wh": 10})]))
    assert math.isnan(one["energy_wh"])
    assert one["burning_s"] == 0
    assert one["area_cell"] == "89283082803ffff"


def test_without_topology_or_services_every_light_goes_under_cabinet_null_and_the_run_says_so(lake, engines):
    """No `topology` parameter and no services (what `cityos analytics run` hands a job that does not
    publish): the topology is empty and named as missing, rather than the run failing."""
    ctx = JobContext(job="streetlight-report", start=START, end=END, lake=lake, engines=engines, now=END)
    assert StreetlightReport._topology(ctx) == ({}, NO_TOPOLOGY)
    lights, meters = topology_frames({})
    assert lights.empty
    assert meters.empty


def test_the_smallest_containing_area_is_the_district():
    areas = districts_by_size(list(AreaRegistry.default()))
    assert district_of(h3.latlng_to_cell(38.993, 115.958, 9), areas) == "rongdong"
    assert district_of(h3.latlng_to_cell(39.005, 115.95, 9), areas) == "city"  # Rongdong's park (a hole)
    assert district_of(h3.latlng_to_cell(39.2, 116.3, 9), areas) is None
    assert district_of(None, areas) is None
    assert district_of("not-a-cell", areas) is None
