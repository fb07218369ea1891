"""The `cityos analytics` command in-process (typer's runner): the job list, a window and parameters
parsed or refused with a clear message, and `--kubernetes --dry-run` printing the RayJob it would create
— the same command, parameters included, as its entrypoint."""

from __future__ import annotations

import json

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from cityos_analytics import cli
from cityos_analytics.cli import app, parse_params

runner = CliRunner()


def test_jobs_lists_every_job_with_its_engine_and_tables(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=240))  # wide enough that no name wraps
    result = runner.invoke(app, ["jobs"])
    assert result.exit_code == 0, result.output
    for name in ("parking-forecast", "streetlight-report", "manhole-risk", "device-anomalies"):
        assert name in result.output
    assert "manhole_risk_scores" in result.output


def test_params_are_json_values_or_text():
    assert parse_params(
        ["min_devices=10", "contamination=0.05", "label=north", 'covers={"mt-1": "c-1"}']
    ) == {
        "min_devices": 10,
        "contamination": 0.05,
        "label": "north",
        "covers": {"mt-1": "c-1"},
    }
    with pytest.raises(typer.BadParameter, match="not name=value"):
        parse_params(["min_devices"])


def test_an_unknown_job_and_a_backwards_window_are_refused_without_a_trace():
    unknown = runner.invoke(app, ["run", "no-such-job"])
    assert unknown.exit_code == 2
    assert "no analytics job 'no-such-job'" in unknown.output
    backwards = runner.invoke(app, ["run", "manhole-risk", "--start", "2026-11-08", "--end", "2026-11-01"])
    assert backwards.exit_code == 2
    assert "must be after --start" in backwards.output
    assert "Traceback" not in backwards.output


def test_kubernetes_dry_run_prints_the_rayjob_with_the_same_command_and_params():
    result = runner.invoke(
        app,
        [
            "run", "device-anomalies", "--start", "2026-11-01", "--end", "2026-11-08", "--kubernetes",
            "--dry-run", "--namespace", "city-b", "--param", "min_devices=10",
        ],
        terminal_width=10_000,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["kind"] == "RayJob"
    assert manifest["metadata"]["namespace"] == "city-b"
    assert manifest["spec"]["entrypoint"] == (
        "cityos analytics run device-anomalies --start 2026-11-01T00:00:00+00:00 "
        "--end 2026-11-08T00:00:00+00:00 --ray-address auto --no-progress --param min_devices=10"
    )
