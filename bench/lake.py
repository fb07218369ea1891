"""The analytics engines over the lake: a Dask group-by of telemetry against DuckDB over the same files,
Ray's per-task overhead, and how long the engines take to start — measured in the same run.

- The lake: a temporary local lake holding `device_telemetry` (the long shape: one row per metric of a
  reading) for 5,000 devices of four types over seven days, eight metric names, written by the lake's own
  writer (`write_rows`: zstd Parquet, `dt=` day partitions, rows sorted by time, 131,072-row row groups).
  Each day is one file (parts of at most 4 million rows; about 50 MB a day at 20 million rows): what the
  exporter's compaction leaves of a day this size (it merges a day's small parts into files of about
  64 MiB).
- The query: mean and count of `value` by (device_type, metric), as an analytics job asks it. Dask runs it
  through the product's `cityos_platform.lake.read.aggregate_table` — `read_table`'s plan (the three
  columns it needs, its partitions), each partition aggregated by Arrow on its worker with the string
  keys kept as Parquet dictionary codes, the partial sums and counts combined by a Dask group-by —
  `.compute()` on the product's engine (`cityos_analytics.engines.Engines(workers=N).dask()`: a
  distributed LocalCluster of N worker processes of one thread each, started before any timing). DuckDB
  runs the same aggregation with `SET threads=N` over the same files (`read_parquet` with a glob). The
  results must be equal (counts exactly, means to 1e-9). Each engine runs once to warm up, then three
  times, the two engines alternating so that a neighbour's load hits both alike; `dask_vs_duckdb` is the
  ratio of the medians. The CPU seconds each engine spent are printed beside (Dask: its workers and this
  client), a figure a neighbour's load moves much less. Printed for comparison, not in RESULT: the query
  by (device_id, metric) as the device-anomalies job groups (about 11,500 groups), and the same query as
  `read_table` + a pandas group-by on the workers (decoded strings factorized again by pandas: several
  times slower; a threaded cluster was slower still, the pandas group-by holding the GIL).
- Where Dask's time goes: the biggest Dask partition read, converted and grouped in this process, step
  by step (each on one core), next to DuckDB with one thread over the same files.
- `task_overhead_ms`: what one Ray task costs the parking-forecast job (one `ray.remote` task per site):
  2,000 no-op tasks submitted at once and gathered with `ray.get`, elapsed / 2,000, median of three after
  a warm-up, on a local Ray of N CPUs (`Engines.ray()`: `ray.init(num_cpus=N, include_dashboard=False)`).
  The round trip of one task at a time is printed too.
- `cluster_start_s`: the slower of the two engines' starts (Dask LocalCluster and local Ray, each as
  `Engines` starts it): what a run waits before its first task. Both are printed.

    python bench/lake.py [--rows 20000000] [--workers <cores>] [--keep DIR]

`--keep DIR` keeps the generated lake in DIR and reuses it on the next run with the same `--rows`.
On a shared machine the figures move with the neighbours' load: the load average is printed before and
after.

Why `aggregate_table` (measured with this bench's lake, 2 cores): DuckDB groups on the dictionary-encoded
string columns as they are in the files; `read_table` hands pandas decoded strings, which pandas then
factorizes again — most of a pandas group-by's time. Aggregating each partition in Arrow on the
dictionary codes removes both copies. docs/analytics.md has the figures.

Last line: `RESULT dask_vs_duckdb=<slowdown> task_overhead_ms=<ms> cluster_start_s=<s>`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cityos_platform.lake import Lake, aggregate_table, read_table, table, table_files, write_rows
from cityos_platform.lake.read import plan_read, to_pandas

TABLE = "device_telemetry"
DEVICES = 5_000
DAYS = 7
FIRST_DAY = datetime(2026, 3, 2, tzinfo=UTC)
MAX_PART_ROWS = 4_000_000
DAY_US = 86_400_000_000
SEED = 20260302
MARKER = "bench-lake.json"
#: Bumped whenever `generate` changes, so that a kept lake of an older layout is generated again.
LAYOUT = 2
#: device type -> (owner organization, share of the devices, its metrics as (name, mean, spread)).
TYPES: dict[str, tuple[str, float, list[tuple[str, float, float]]]] = {
    "parking.sensor": ("city-parking", 0.4, [("occupied", 0.6, 0.0), ("battery_v", 3.6, 0.1)]),
    "streetlight.controller": ("public-lighting", 0.3, [("power_w", 60.0, 15.0), ("dim_level", 70.0, 20.0)]),
    "manhole.terminal": (
        "water-utility",
        0.2,
        [("water_level_cm", 35.0, 12.0), ("tilt_deg", 0.5, 0.3), ("battery_v", 3.5, 0.15)],
    ),
    "environment.sensor": (
        "environment-office",
        0.1,
        [("temperature_c", 12.0, 6.0), ("pm25_ugm3", 18.0, 9.0), ("battery_v", 3.7, 0.1)],
    ),
}
BY_TYPE = ["device_type", "metric"]
BY_DEVICE = ["device_id", "metric"]


# -- the lake --------------------------------------------------------------------------------------


def generate(lake: Lake, rows: int) -> int:
    """Write at least `rows` telemetry rows over DAYS days with the lake's writer; returns the rows written.

    Every device reports all its metrics every `interval` (its own phase within it), so a day holds
    `readings` readings of each (device, metric) slot; sequences count each device's readings."""
    rng = np.random.default_rng(SEED)
    spec = table(TABLE)
    types = list(TYPES)
    metrics = sorted({name for _, _, listed in TYPES.values() for name, _, _ in listed})
    device_type = rng.choice(len(types), size=DEVICES, p=[TYPES[t][1] for t in types])
    slots = [
        (device, metrics.index(name), mean, spread)
        for device in range(DEVICES)
        for name, mean, spread in TYPES[types[device_type[device]]][2]
    ]
    slot_device = np.array([s[0] for s in slots])
    slot_metric = np.array([s[1] for s in slots])
    slot_mean = np.array([s[2] for s in slots])
    slot_spread = np.array([s[3] for s in slots])
    per_day = -(-rows // DAYS)
    readings = -(-per_day // len(slots))
    interval = DAY_US // readings
    phase = rng.integers(0, interval, DEVICES)
    counter = rng.integers(0, 5_000_000, DEVICES)  # each device's counter started long ago
    device_ids = pa.array([f"dev-{d:05d}" for d in range(DEVICES)])
    cells = pa.array([f"8931aa{c:05x}ffff" for c in rng.choice(16**5, size=600, replace=False)])
    device_cell = rng.integers(0, len(cells), DEVICES)
    type_names = pa.array(types)
    organizations = pa.array([TYPES[t][0] for t in types])
    metric_names = pa.array(metrics)
    occupied = metrics.index("occupied")
    parts = -(-readings * len(slots) // MAX_PART_ROWS)
    first = int(FIRST_DAY.timestamp() * 1_000_000)
    written = 0
    for day in range(DAYS):
        for part in range(parts):
            k = np.arange(part * readings // parts, (part + 1) * readings // parts)
            slot = np.tile(np.arange(len(slots)), len(k))
            reading = np.repeat(k, len(slots))
            device = slot_device[slot]
            metric = slot_metric[slot]
            value = np.round(slot_mean[slot] + slot_spread[slot] * rng.standard_normal(len(slot)), 3)
            is_occupied = metric == occupied
            value[is_occupied] = rng.random(int(is_occupied.sum())) < 0.6
            time_us = first + day * DAY_US + reading * interval + phase[device]
            latency_us = rng.integers(50_000, 5_000_000, len(slot))
            batch = pa.table(
                {
                    "device_id": device_ids.take(device),
                    "device_type": type_names.take(device_type[device]),
                    "owner_organization": organizations.take(device_type[device]),
                    "area_cell": cells.take(device_cell[device]),
                    "sequence": counter[device] + day * readings + reading + 1,
                    "metric": metric_names.take(metric),
                    "value": value,
                    "time": pa.array(time_us, pa.timestamp("us", tz="UTC")),
                    "received_time": pa.array(time_us + latency_us, pa.timestamp("us", tz="UTC")),
                }
            )
            write_rows(lake, spec, batch, f"bench-{day}-{part}")
            written += batch.num_rows
    return written


def prepare(folder: Path, rows: int) -> tuple[Lake, float | None]:
    """The bench lake in `folder`: reused when it holds this `--rows`'s data, else (re)generated.
    Returns the lake and the generation time (None when reused)."""
    lake = Lake.local(folder)
    marker = folder / MARKER
    wanted = {"rows": rows, "devices": DEVICES, "days": DAYS, "seed": SEED, "layout": LAYOUT}
    if marker.exists():
        if json.loads(marker.read_text()) == wanted:
            return lake, None
        shutil.rmtree(folder / TABLE, ignore_errors=True)  # another --rows, or an interrupted generation
    elif (folder / TABLE).exists():
        raise SystemExit(f"{folder / TABLE} exists but was not written by this bench: use an empty folder")
    marker.write_text(json.dumps({"generating": True}))
    started = time.perf_counter()
    generate(lake, rows)
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps(wanted))
    return lake, seconds


# -- the engines -----------------------------------------------------------------------------------


def _engines(workers: int) -> Any:
    """The product's `Engines`, or None when `cityos_analytics` does not import (then the bench starts the
    same engines itself)."""
    try:
        from cityos_analytics.engines import Engines
    except Exception as error:  # the analytics package is broken or missing: measure the engines anyway
        print(f"cityos_analytics.engines does not import ({error!r}): starting the engines directly")
        return None
    return Engines(workers=workers)


@contextlib.contextmanager
def dask_cluster(workers: int) -> Iterator[tuple[float, str]]:
    """A local Dask cluster of `workers` processes of one thread (the default scheduler while open);
    yields its start time and what started it."""
    engines = _engines(workers)
    if engines is not None:
        with engines.dask():
            yield engines.start_seconds, "Engines.dask()"
        return
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster),  # type: ignore[no-untyped-call]
    ):
        yield time.perf_counter() - started, "distributed.LocalCluster"


@contextlib.contextmanager
def ray_local(workers: int) -> Iterator[float]:
    """A local Ray of `workers` CPUs; yields its start time."""
    engines = _engines(workers)
    if engines is not None:
        with engines.ray():
            yield engines.start_seconds
        return
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


# -- the queries -----------------------------------------------------------------------------------


def tidy(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A result as plain columns (keys as str, mean, count), sorted by the keys, for comparison."""
    frame = frame.reset_index() if keys[0] not in frame.columns else frame
    frame = frame.astype({key: str for key in keys} | {"count": "int64", "mean": "float64"})
    return frame[[*keys, "mean", "count"]].sort_values(keys).reset_index(drop=True)


def dask_query(lake: Lake, keys: list[str]) -> pd.DataFrame:
    """Mean and count of value by `keys` through the product's `aggregate_table`: the same query and
    partitions as `read_table`, each partition aggregated by Arrow on its worker (string keys kept as
    dictionary codes), the partial results combined by a Dask group-by, computed on the cluster."""
    frame = aggregate_table(TABLE, keys, {"mean": ("value", "mean"), "count": ("value", "count")}, lake=lake)
    return frame.compute()


def dask_pandas_query(lake: Lake, keys: list[str]) -> pd.DataFrame:
    """The same through `read_table` and a pandas group-by on the workers (decoded strings, factorized
    again by pandas): printed for comparison."""
    frame = read_table(TABLE, columns=[*keys, "value"], lake=lake)
    return frame.groupby(keys, sort=False).value.agg(["mean", "count"]).compute()


def duckdb_sql(pattern: str, keys: list[str]) -> str:
    names = ", ".join(keys)
    return (
        f"SELECT {names}, avg(value) AS mean, count(value) AS count "
        f"FROM read_parquet('{pattern}') GROUP BY {names}"
    )


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """The seconds `action` took, and its result."""
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _cpu_seconds() -> float:
    """This process's CPU time, all threads (run on each Dask worker too)."""
    return time.process_time()


def dask_cpu() -> float:
    """CPU seconds used so far by the Dask workers and this client process together."""
    from distributed import default_client

    client = default_client()  # type: ignore[no-untyped-call]
    workers: dict[str, float] = client.run(_cpu_seconds)
    return sum(workers.values()) + time.process_time()


def compare(
    lake: Lake,
    connection: Any,
    pattern: str,
    keys: list[str],
    runs: int,
    query: Callable[[Lake, list[str]], pd.DataFrame] = dask_query,
) -> tuple[float, float]:
    """Dask against DuckDB on one query: a warm-up each, then `runs` alternating runs; checks the
    results are equal and returns the two medians (seconds). The CPU seconds each engine spent (Dask:
    its workers and this client; DuckDB: this process) are printed too: unlike the elapsed times they
    hardly move with a neighbour's load."""
    sql = duckdb_sql(pattern, keys)
    dask_seconds: list[float] = []
    duckdb_seconds: list[float] = []
    dask_cpus: list[float] = []
    duckdb_cpus: list[float] = []
    dask_result, duckdb_result = query(lake, keys), connection.execute(sql).df()
    for _ in range(runs):
        cpu = dask_cpu()
        seconds, dask_result = timed(lambda: query(lake, keys))
        dask_cpus.append(dask_cpu() - cpu)
        dask_seconds.append(seconds)
        cpu = time.process_time()
        seconds, duckdb_result = timed(lambda: connection.execute(sql).df())
        duckdb_cpus.append(time.process_time() - cpu)
        duckdb_seconds.append(seconds)
    ours, theirs = tidy(dask_result, keys), tidy(duckdb_result, keys)
    assert ours[keys].equals(theirs[keys]), f"by {keys}: Dask and DuckDB found different groups"
    assert (ours["count"] == theirs["count"]).all(), f"by {keys}: the counts differ"
    assert np.allclose(ours["mean"], theirs["mean"], rtol=1e-9, atol=0), f"by {keys}: the means differ"
    label = ", ".join(keys) + ("" if query is dask_query else "; read_table + pandas group-by")

    def listed(values: list[float]) -> str:
        return " ".join(f"{v:.3f}" for v in values)

    print(f"by ({label}): {len(ours)} groups, results equal")
    print(f"by ({label}): elapsed s per run: dask {listed(dask_seconds)} | duckdb {listed(duckdb_seconds)}")
    print(f"by ({label}): cpu s per run:     dask {listed(dask_cpus)} | duckdb {listed(duckdb_cpus)}")
    dask_median, duckdb_median = statistics.median(dask_seconds), statistics.median(duckdb_seconds)
    cpu_ratio = statistics.median(dask_cpus) / statistics.median(duckdb_cpus)
    print(
        f"by ({label}): dask_s={dask_median:.3f} duckdb_s={duckdb_median:.3f} "
        f"dask_vs_duckdb={dask_median / duckdb_median:.2f} (cpu: {cpu_ratio:.2f})"
    )
    return dask_median, duckdb_median


def breakdown(lake: Lake, keys: list[str], file_rows: dict[str, int]) -> None:
    """Where Dask's time goes: its biggest partition, step by step in this process (each step keeps one
    core busy: pyarrow decodes on its I/O thread while the caller waits), next to DuckDB with one thread
    over the same files (the best of three each)."""
    import duckdb

    plan = plan_read(TABLE, columns=[*keys, "value"], lake=lake)
    sizes = [sum(file_rows[path] for path in group) for group in plan.groups]
    print(
        f"dask partitions: {len(plan.groups)} (files {[len(g) for g in plan.groups]}, "
        f"rows {[f'{n / 1e6:.1f}M' for n in sizes]})"
    )
    group = plan.groups[sizes.index(max(sizes))]

    def best(action: Callable[[], Any]) -> tuple[float, Any]:
        timings = [timed(action) for _ in range(3)]
        return min(t for t, _ in timings), timings[-1][1]

    read_s, arrow = best(lambda: plan.reader.arrow(group))
    pandas_s, frame = best(lambda: to_pandas(arrow))
    group_s, _ = best(lambda: frame.groupby(keys, sort=False).value.agg(["sum", "count"]))
    connection = duckdb.connect()
    connection.execute("SET threads=1")
    files = ", ".join(f"'{path}'" for path in group)
    names = ", ".join(keys)
    duck_s, _ = best(
        lambda: connection.execute(
            f"SELECT {names}, sum(value), count(value) FROM read_parquet([{files}]) GROUP BY {names}"
        ).df()
    )
    connection.close()
    print(
        f"one partition of {arrow.num_rows / 1e6:.1f}M rows on one core: pyarrow read "
        f"(strings decoded) {read_s:.3f}s + to pandas (string[pyarrow]) {pandas_s:.3f}s + pandas group-by "
        f"{group_s:.3f}s = {read_s + pandas_s + group_s:.3f}s; duckdb (1 thread) {duck_s:.3f}s"
    )


# -- Ray -------------------------------------------------------------------------------------------


def _noop() -> None:
    return None


def ray_overhead(workers: int, tasks: int, runs: int) -> tuple[float, float, float]:
    """Ray's start time, the median per-task cost (ms) of `tasks` no-op tasks in flight at once, and the
    median round trip (ms) of one task at a time."""
    import ray

    with ray_local(workers) as start_seconds:
        noop = ray.remote(_noop)
        ray.get([noop.remote() for _ in range(tasks)])  # warm-up: the workers started, the function shipped
        batches = []
        for _ in range(runs):
            started = time.perf_counter()
            ray.get([noop.remote() for _ in range(tasks)])
            batches.append((time.perf_counter() - started) / tasks * 1000)
        trips = []
        for _ in range(runs):
            started = time.perf_counter()
            for _ in range(200):
                ray.get(noop.remote())
            trips.append((time.perf_counter() - started) / 200 * 1000)
    print(
        f"ray: {tasks} no-op tasks in flight, ms per task per run: " + " ".join(f"{x:.3f}" for x in batches)
    )
    print("ray: one task at a time, round trip ms per run: " + " ".join(f"{x:.3f}" for x in trips))
    return start_seconds, statistics.median(batches), statistics.median(trips)


# -- main ------------------------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000_000, help="telemetry rows to generate (at least)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="Dask worker processes, DuckDB and Ray threads",
    )
    parser.add_argument("--keep", type=Path, help="keep the generated lake in this folder and reuse it")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each engine (the median counts)")
    parser.add_argument("--tasks", type=int, default=2_000, help="no-op Ray tasks per overhead run")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

    import duckdb

    versions = ", ".join(f"{name} {version(name)}" for name in ("dask", "duckdb", "ray", "pandas", "pyarrow"))
    print(f"machine: {os.cpu_count()} cores, load average {load()}; workers={args.workers}; {versions}")
    with contextlib.ExitStack() as stack:
        if args.keep:
            folder = args.keep.resolve()
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cityos-bench-lake-")))
        lake, generation_s = prepare(folder, args.rows)
        files = table_files(TABLE, lake=lake)
        pattern = lake.path(TABLE, "dt=*", "*.parquet")
        assert sorted(glob.glob(pattern)) == sorted(files), "DuckDB's glob and the lake's reader differ"
        file_rows = {path: pq.read_metadata(path).num_rows for path in files}
        rows, size = sum(file_rows.values()), sum(os.path.getsize(path) for path in files)
        made = "reused" if generation_s is None else f"generated in {generation_s:.1f}s"
        print(
            f"lake: {TABLE} at {folder}: {rows} rows ({DEVICES} devices, {len(TYPES)} types, "
            f"{len({m for _, _, ms in TYPES.values() for m, _, _ in ms})} metrics, {DAYS} days), "
            f"{len(files)} files, {size / 2**20:.0f} MiB ({made})"
        )

        connection = duckdb.connect()
        connection.execute(f"SET threads={args.workers}")
        with dask_cluster(args.workers) as (dask_start_s, started_by):
            print(
                f"dask: {started_by}: LocalCluster of {args.workers} worker processes x 1 thread, "
                f"started in {dask_start_s:.2f}s; duckdb: threads={args.workers}"
            )
            dask_s, duckdb_s = compare(lake, connection, pattern, BY_TYPE, args.runs)
            compare(lake, connection, pattern, BY_DEVICE, args.runs)
            compare(lake, connection, pattern, BY_TYPE, args.runs, dask_pandas_query)
        connection.close()
        breakdown(lake, BY_TYPE, file_rows)

    ray_start_s, per_task_ms, _ = ray_overhead(args.workers, args.tasks, args.runs)
    print(f"ray: local, num_cpus={args.workers}, started in {ray_start_s:.2f}s")
    cluster_start_s = max(dask_start_s, ray_start_s)
    print(
        f"cluster_start_s = the slower engine start: dask LocalCluster {dask_start_s:.2f}s, "
        f"ray {ray_start_s:.2f}s; load average now {load()}"
    )
    print(
        f"RESULT dask_vs_duckdb={dask_s / duckdb_s:.2f} task_overhead_ms={per_task_ms:.3f} "
        f"cluster_start_s={cluster_start_s:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
