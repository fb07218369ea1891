"""HLM-4: values.schema.json rejects a misspelled key and a wrong type (Helm's own validation), accepts
the default and scenario values, and closes every object with additionalProperties: false."""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import CHART, SCENARIO_IDS, SCENARIOS, SKIP_REASON, schema

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check
import helm_python

# Sections whose keys are not this chart's: Helm's `global` and the subcharts' values.
OPEN_SECTIONS = {
    "global",
    "postgresql",
    "minio",
    "keycloak",
    "kuberay-operator",
    "ray-cluster",
    "dask",
    "opentelemetry-collector",
}
# Kubernetes API fragments passed through whole (the rendered objects are checked by kubernetes-validate).
PASSED_THROUGH = {"#/definitions/workload/properties/affinity"}


def validate(values: dict[str, Any]) -> None:
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)


@pytest.mark.req("HLM-4")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_accepts_the_default_and_scenario_values(scenario: helm_check.Scenario) -> None:
    validate(scenario.values())


@pytest.mark.req("HLM-4")
@pytest.mark.parametrize(
    "values",
    [
        {"imgae": {"repository": "x"}},
        {"image": {"respository": "x"}},
        {"config": {"logLevle": "INFO"}},
        {"defaults": {"replica": 2}},
        {"services": {"devcies": {}}},
        {"services": {"devices": {"autoscaling": {"maxReplica": 3}}}},
        {"networkPolicy": {"destinations": {"databse": {"ports": [{"port": 5432}], "to": []}}}},
        {"tests": {"enable": True}},
        {"networkPolicy": {"ingressFrom": [{"namespaceSelecter": {}}]}},
        {"defaults": {"tolerations": [{"key": "a", "efect": "NoSchedule"}]}},
        {"services": {"datashare": {"generatedSecrets": [{"name": "CITYOS_X", "generat": "ed25519"}]}}},
    ],
    ids=lambda values: str(values),
)
def test_rejects_a_misspelled_key(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=r"not allowed|propertyName"):
        validate(values)


@pytest.mark.req("HLM-4")
@pytest.mark.parametrize(
    "values",
    [
        {"grpcPort": "50051"},
        {"defaults": {"replicas": "two"}},
        {"services": {"devices": {"enabled": "yes"}}},
        {"services": {"devices": {"kind": "daemon"}}},
        {"services": {"devices": {"egressTo": ["internet"]}}},
        {"services": {"devices": {"resources": {"limits": {"memory": "lots"}}}}},
        {"image": {"digest": "latest"}},
        {"database": {"waitTimeoutSeconds": 0}},
        {"postgresql": {"enabled": "true"}},
        {"services": {"datashare": {"httpPort": "http"}}},
        {"services": {"datashare": {"httpPort": 70000}}},
        {"services": {"datashare": {"generatedSecrets": [{"name": "CITYOS_X", "generate": "rsa"}]}}},
        {"services": {"datashare": {"generatedSecrets": ["cityos_lowercase"]}}},
    ],
    ids=lambda values: str(values),
)
def test_rejects_a_wrong_type(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        validate(values)


def objects_without_closed_properties(node: Any, path: str = "#") -> list[str]:
    """JSON pointers of object schemas that leave additionalProperties open."""
    found = []
    if isinstance(node, dict):
        declares_object = node.get("type") == "object" or "properties" in node
        if declares_object and path.rsplit("/", 1)[-1] not in OPEN_SECTIONS:
            closed = node.get("additionalProperties") is False or isinstance(
                node.get("additionalProperties"), dict
            )
            # A map with typed values (additionalProperties: {schema}) is closed in its value type.
            if not closed and path not in PASSED_THROUGH:
                found.append(path)
        for key, value in node.items():
            if path.rsplit("/", 1)[-1] in OPEN_SECTIONS:
                break
            found += objects_without_closed_properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += objects_without_closed_properties(value, f"{path}/{index}")
    return found


@pytest.mark.req("HLM-4")
def test_every_object_of_the_schema_is_closed() -> None:
    document = schema()
    assert document["additionalProperties"] is False
    assert objects_without_closed_properties(document) == []
    assert set(document["properties"]) - set(OPEN_SECTIONS) >= {
        "image",
        "services",
        "defaults",
        "networkPolicy",
    }


@pytest.mark.req("HLM-4")
def test_the_open_sections_are_the_subcharts_and_global() -> None:
    """The only open objects are the subcharts' values (their own schemas check them) and `global`."""
    import yaml

    dependencies = {d["name"] for d in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]}
    assert dependencies | {"global"} == OPEN_SECTIONS
