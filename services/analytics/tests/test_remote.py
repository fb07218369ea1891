"""The same job, unchanged, on a remote cluster by address (LAK-5): a Ray head started with
`ray start --head` in a subprocess, reached through Ray Client (`ray://`), and a Dask scheduler started
with `dask scheduler` plus a `dask worker`, each its own process. The remote runs must give the rows a
local run gives.

The Ray run goes through the `cityos analytics run … --ray-address ray://…` command in a subprocess —
what a data team types — since this test process keeps its own local Ray for the other tests. Ray 2.59+
turns on token authentication for clusters it starts: the head and the client share `RAY_AUTH_MODE=token`
and a `RAY_AUTH_TOKEN` made here."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cityos_analytics.engines import Engines
from cityos_analytics.runner import run_job
from cityos_platform.lake import read_table, table, write_rows

BIN = Path(sys.executable).parent
START = datetime(2026, 10, 5, tzinfo=UTC)
END = START + timedelta(days=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
    # Children that outlived their leader (Ray's raylet, GCS, workers) are still in the process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on {port} after {timeout_s} s:\n{log.read_text()[-3000:]}")


def telemetry(devices: int = 24, odd: tuple[int, ...] = (3, 17)) -> pa.Table:
    """Two days of two-metric readings of `devices` sensors every 10 minutes; the `odd` ones run hot."""
    rng = np.random.default_rng(7)
    times, ids, metrics, values, seqs = [], [], [], [], []
    steps = int((END - START).total_seconds() // 600)
    for d in range(devices):
        for step in range(steps):
            moment = START + timedelta(seconds=600 * step)
            for metric, mean in (("temperature_c", 20.0), ("humidity_pct", 55.0)):
                shift = 25.0 if d in odd and metric == "temperature_c" else 0.0
                times.append(moment)
                ids.append(f"env-{d:03d}")
                metrics.append(metric)
                values.append(float(mean + shift + rng.normal(0, 1.5)))
                seqs.append(step)
    n = len(times)
    return pa.table(
        {
            "device_id": ids,
            "device_type": ["environment.sensor"] * n,
            "owner_organization": ["environment"] * n,
            "area_cell": [None] * n,
            "sequence": seqs,
            "metric": metrics,
            "value": values,
            "time": times,
            "received_time": [t + timedelta(seconds=2) for t in times],
        }
    )


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict[str, str]]:
    """`ray start --head --block` in its own session; yields the address and the client's environment."""
    # Ray's unix sockets live under its temp dir: keep the path short (a socket path has ~107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    gcs, client = _free_port(), _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_DISABLE_USAGE_STATS": "1",
    }
    log = temp / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={gcs}",
                f"--ray-client-server-port={client}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                "--include-dashboard=false",
                f"--temp-dir={temp}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_port(client, head, log)
        yield {
            "address": f"ray://127.0.0.1:{client}",
            **{k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")},
        }
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """`dask scheduler` and one `dask worker` of two processes, each in its own session."""
    folder = tmp_path_factory.mktemp("dask")
    port = _free_port()
    logs = folder / "scheduler.log", folder / "worker.log"
    with logs[0].open("wb") as out:
        scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = None
    try:
        _wait_port(port, scheduler, logs[0])
        with logs[1].open("wb") as out:
            worker = subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "worker",
                    f"tcp://127.0.0.1:{port}",
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--local-directory",
                    str(folder),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield f"tcp://127.0.0.1:{port}"
    finally:
        if worker is not None:
            _stop(worker)
        _stop(scheduler)


def _rows(name: str, lake, sort: list[str]) -> pd.DataFrame:
    frame = read_table(name, lake=lake).compute()
    return frame.sort_values(sort).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.req("LAK-5")
def test_a_ray_job_runs_unchanged_on_a_remote_ray_head_by_address(ray_local, ray_head, tmp_path):
    from cityos_platform.lake import Lake

    local, remote = Lake.local(tmp_path / "local"), Lake.local(tmp_path / "remote")
    for lake in (local, remote):
        write_rows(lake, table("device_telemetry"), telemetry(), "gen-1")

    run_job("device-anomalies", START, END, lake=local, engines=Engines(workers=2))

    env = {
        **os.environ,
        "CITYOS_VAR_DIR": str(tmp_path / "var"),
        "CITYOS_LAKE_URL": remote.url,
        "RAY_AUTH_MODE": ray_head["RAY_AUTH_MODE"],
        "RAY_AUTH_TOKEN": ray_head["RAY_AUTH_TOKEN"],
    }
    command = [
        str(BIN / "cityos"),
        "analytics",
        "run",
        "device-anomalies",
        "--start",
        START.isoformat(),
        "--end",
        END.isoformat(),
        "--ray-address",
        ray_head["address"],
        "--no-progress",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["rows"]["device_anomalies"] == 24

    remote_rows = _rows("device_anomalies", remote, ["device_id"])
    pd.testing.assert_frame_equal(remote_rows, _rows("device_anomalies", local, ["device_id"]))
    flagged = set(remote_rows.device_id[remote_rows.anomalous])
    assert {"env-003", "env-017"} <= flagged


def manhole_readings(terminals: int = 12) -> pa.Table:
    """Two days of hourly terminal readings: water level, tilt and the lid switch; two terminals flood."""
    rng = np.random.default_rng(11)
    rows: dict[str, list] = {name: [] for name in ("device_id", "sequence", "metric", "value", "time")}
    for t in range(terminals):
        for step in range(48):
            moment = START + timedelta(hours=step)
            water = 0.3 + rng.normal(0, 0.02) + (1.5 if t in (2, 9) and step > 30 else 0.0)
            for metric, value in (
                ("water_level_m", water),
                ("tilt_deg", 1.0 + rng.normal(0, 0.1)),
                ("open", 0.0),
            ):
                rows["device_id"].append(f"mt-{t:03d}")
                rows["sequence"].append(step)
                rows["metric"].append(metric)
                rows["value"].append(float(value))
                rows["time"].append(moment)
    n = len(rows["time"])
    return pa.table(
        {
            **rows,
            "device_type": ["manhole.terminal"] * n,
            "owner_organization": ["utilities"] * n,
            "area_cell": [None] * n,
            "received_time": rows["time"],
        }
    )


@pytest.mark.slow
@pytest.mark.req("LAK-5")
def test_a_dask_job_runs_unchanged_on_a_remote_dask_scheduler_by_address(dask_cluster, tmp_path):
    from cityos_platform.lake import Lake

    covers = {f"mt-{t:03d}": f"cover-{t:03d}" for t in range(12)}
    results = {}
    for where, engines in (("local", Engines(workers=2)), ("remote", Engines(dask_scheduler=dask_cluster))):
        lake = Lake.local(tmp_path / where)
        write_rows(lake, table("manhole_readings"), manhole_readings(), "gen-1")
        result = run_job("manhole-risk", START, END, lake=lake, engines=engines, params={"covers": covers})
        assert result.rows == {"manhole_risk_scores": 12}
        assert result.published == {"skipped": "no services given: the results stay in the lake"}
        results[where] = _rows("manhole_risk_scores", lake, ["cover"])

    pd.testing.assert_frame_equal(results["remote"], results["local"])
    top = results["remote"].nlargest(2, "score")
    assert set(top.cover) == {"covers/cover-002", "covers/cover-009"}
