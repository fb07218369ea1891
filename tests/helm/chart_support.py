"""Helpers of the chart checks: the scenarios, their renderings (once per run), the workspace's services."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import helm_check

ROOT = helm_check.ROOT
CHART = helm_check.CHART
SKIP_REASON = "needs the helm tool environment (Python 3.12, helm-python-sdk): `make helm-lint` runs it"
# The platform components the chart lists beside the services (issue 11): the lake exporter, the MQTT
# adapter as its own workload, the analytics job runner.
PLATFORM_COMPONENTS = frozenset({"exporter", "mqtt-adapter", "analytics-runner"})
SCENARIOS = helm_check.scenarios()
SCENARIO_IDS = [scenario.name for scenario in SCENARIOS]


def deployed_services() -> list[str]:
    """The workspace services the chart enables by default: every service folder except those that are
    platform components too (the lake exporter), which stay disabled until their chart work lands."""
    return sorted(set(workspace_services()) - PLATFORM_COMPONENTS)


def workspace_services() -> dict[str, list[str]]:
    """Folder name -> the names its `cityos.services` entry points register, for every folder in
    services/ that is a workspace member (has a pyproject.toml) serving gRPC. New folders appear here by
    themselves. A member that registers no service (analytics: the `cityos analytics` command and its
    jobs, run as RayJobs by the analytics-runner component) is not a Deployment of its own."""
    found = {}
    for folder in sorted((ROOT / "services").iterdir()):
        project = folder / "pyproject.toml"
        if not project.is_file():
            continue
        metadata = tomllib.loads(project.read_text())
        entry_points = metadata["project"].get("entry-points", {}).get("cityos.services", {})
        if entry_points:
            found[folder.name] = sorted(entry_points)
    return found


def chart_values() -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


_renderings: dict[str, helm_check.Rendered] = {}


def rendered(scenario: helm_check.Scenario) -> helm_check.Rendered:
    if scenario.name not in _renderings:
        _renderings[scenario.name] = helm_check.render_objects(scenario.values())
    return _renderings[scenario.name]


def scenario_named(name: str) -> helm_check.Scenario:
    return next(scenario for scenario in SCENARIOS if scenario.name == name)


def pod_specs(objects: helm_check.Rendered) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every object that runs pods."""
    specs = []
    for obj in objects.of_kind("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            spec = obj["spec"]
        elif obj["kind"] == "CronJob":
            spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        else:
            spec = obj["spec"]["template"]["spec"]
        specs.append((name, spec))
    return specs


def component(obj: dict[str, Any]) -> str | None:
    labels: dict[str, str] = obj["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")
