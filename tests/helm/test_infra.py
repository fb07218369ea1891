"""infra/: the collector's pipelines are complete and listen where the chart sends telemetry; the
dashboards query only what the runtime really records; the kind cluster runs the Kubernetes version the
chart is validated against."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from chart_support import ROOT, SKIP_REASON, chart_values

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check
import yaml

INFRA = ROOT / "infra"
PLATFORM = ROOT / "platform" / "src" / "cityos_platform"
# grpc status codes by name (the gRPC spec's numbering).
GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip


def collector() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((INFRA / "otel" / "collector.yaml").read_text())
    return loaded


def test_every_pipeline_uses_defined_components() -> None:
    config = collector()
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config[section], f"{name}: {section} {component} is not defined"
        assert "debug" in pipeline["exporters"]
        assert "otlp/backend" in pipeline["exporters"]
    assert config["exporters"]["otlp/backend"]["endpoint"] == "${env:OTEL_BACKEND_ENDPOINT}"
    assert config["service"]["pipelines"]["metrics"]["processors"][-1] == "batch"


def test_the_collector_listens_where_the_chart_sends() -> None:
    grpc_endpoint = collector()["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    port = int(grpc_endpoint.rsplit(":", 1)[1])
    assert port == 4317  # OTEL_EXPORTER_OTLP_ENDPOINT of the chart (otel gRPC exporter)
    objects = helm_check.render_objects({"opentelemetry-collector": {"enabled": True}})
    endpoint = objects.named("ConfigMap", "cityos-config")["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.endswith(f":{port}")
    allowed = [rule["port"] for rule in chart_values()["networkPolicy"]["destinations"]["otel"]["ports"]]
    assert port in allowed


def runtime_metric() -> tuple[str, str]:
    source = (PLATFORM / "telemetry.py").read_text()
    name = re.search(r'DURATION_METRIC = "([^"]+)"', source)
    unit = re.search(r'DURATION_METRIC, unit="([^"]+)"', source)
    assert name
    assert unit
    return name.group(1), unit.group(1)


def recorded_attributes() -> set[str]:
    source = (PLATFORM / "interceptor.py").read_text()
    block = re.search(r"attributes = \{(.*?)\}", source, flags=re.DOTALL)
    assert block
    return set(re.findall(r'"([a-z_.]+)":', block.group(1)))


def server_fault_codes() -> set[int]:
    source = (PLATFORM / "interceptor.py").read_text()
    block = re.search(r"_SERVER_FAULTS = \{(.*?)\}", source, flags=re.DOTALL)
    assert block
    return {GRPC_CODES[name] for name in re.findall(r"StatusCode\.([A-Z_]+)", block.group(1))}


def dashboards() -> list[Path]:
    found = sorted((INFRA / "grafana" / "dashboards").glob("*.json"))
    assert found
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboards_query_the_runtimes_metric_with_its_labels() -> None:
    name, unit = runtime_metric()
    assert unit == "ms"
    prometheus = name.replace(".", "_") + "_milliseconds"
    labels = {attribute.replace(".", "_") for attribute in recorded_attributes()} | {"job", "instance", "le"}
    for path in dashboards():
        dashboard = json.loads(path.read_text())
        exprs = expressions(dashboard)
        assert exprs, path.name
        for expr in exprs:
            metrics = set(re.findall(r"\b(rpc_[a-z_]+?)(?:_bucket|_count|_sum)\b", expr))
            assert metrics == {prometheus}, f"{path.name}: {expr}"
            used = set(re.findall(r"(?:by \(|,\s*|\{)\s*([a-z_]+)\s*(?:=~|!=|=|,|\))", expr))
            assert used <= labels, f"{path.name}: labels {used - labels} are not recorded: {expr}"


def test_the_error_panel_counts_the_runtimes_server_faults() -> None:
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "cityos-rpc.json").read_text())
    errors = next(panel for panel in dashboard["panels"] if panel["title"].startswith("Server errors"))
    match = re.search(r'rpc_grpc_status_code=~"([0-9|]+)"', errors["targets"][0]["expr"])
    assert match
    assert {int(code) for code in match.group(1).split("|")} == server_fault_codes()


def test_the_gap_is_said_on_the_dashboard() -> None:
    """Consumer lag and buffer depth have no metric in the runtime yet; the dashboard says so rather
    than plotting a query that can never return data."""
    devices = ROOT / "services" / "devices" / "src" / "cityos_devices"
    for source in (PLATFORM / "events.py", devices / "telemetry.py"):
        text = source.read_text()
        assert "create_gauge" not in text, f"{source.name} records a gauge now: add its panel"
        assert "create_histogram" not in text, f"{source.name} records a histogram now: add its panel"
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "cityos-rpc.json").read_text())
    assert any("not instrumented yet" in panel["title"] for panel in dashboard["panels"])


def test_kind_runs_the_validated_kubernetes_version() -> None:
    cluster = yaml.safe_load((INFRA / "kind" / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster"
    images = {node["image"] for node in cluster["nodes"]}
    assert images == {f"kindest/node:v{helm_check.KUBE_VERSION}"}
    assert sum(node["role"] == "worker" for node in cluster["nodes"]) >= 2
