"""HLM-2: every workspace service and platform component has an entry in values, every entry is one of
them, and each renders its workload, Service, ServiceAccount, PodDisruptionBudget and NetworkPolicy —
the workload of the kind its entry names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chart_support import (
    PLATFORM_COMPONENTS,
    SCENARIO_IDS,
    SCENARIOS,
    SKIP_REASON,
    chart_values,
    component,
    deployed_services,
    rendered,
    scenario_named,
    schema,
    workspace_services,
)

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check

ALL = scenario_named("all-components-values.yaml")


def expected_entries() -> set[str]:
    return set(workspace_services()) | PLATFORM_COMPONENTS


@pytest.mark.req("HLM-2")
def test_every_service_folder_registers_the_service_named_after_it() -> None:
    services = workspace_services()
    assert "devices" in services
    for folder, names in services.items():
        assert names == [folder], f"services/{folder} registers {names}; the chart keys entries by folder"


@pytest.mark.req("HLM-2")
def test_values_list_exactly_the_services_and_the_platform_components() -> None:
    entries = set(chart_values()["services"])
    assert entries - expected_entries() == set(), "entries that are neither a service folder nor a component"
    assert expected_entries() - entries == set(), "service folders or components without an entry"


@pytest.mark.req("HLM-2")
def test_the_schema_admits_exactly_those_entry_names() -> None:
    assert set(schema()["properties"]["services"]["propertyNames"]["enum"]) == expected_entries()


@pytest.mark.req("HLM-2")
def test_components_without_code_are_disabled_by_default() -> None:
    services = chart_values()["services"]
    for name in PLATFORM_COMPONENTS:
        assert services[name]["enabled"] is False, f"{name} has no code yet; it must default to disabled"
    for name in deployed_services():
        assert services[name].get("enabled", True) is True


def objects_of(objects: helm_check.Rendered, name: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for _, obj in objects.objects:
        if component(obj) == name:
            found.setdefault(obj["kind"], []).append(obj)
    return found


@pytest.mark.req("HLM-2")
@pytest.mark.parametrize("name", sorted(expected_entries()))
def test_each_entry_renders_its_objects(name: str) -> None:
    found = objects_of(rendered(ALL), name)
    workloads = found.get("Deployment", []) + found.get("StatefulSet", [])
    assert len(workloads) == 1, f"{name}: {sorted(found)}"
    for kind in ("Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"):
        assert len(found.get(kind, [])) == 1, f"{name} renders {len(found.get(kind, []))} {kind}"
    container = workloads[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [name], "the image's `cityos serve` entrypoint gets the entry's name"
    selector = workloads[0]["spec"]["selector"]["matchLabels"]
    for kind in ("Service", "PodDisruptionBudget"):
        obj = found[kind][0]
        chosen = obj["spec"]["selector"] if kind == "Service" else obj["spec"]["selector"]["matchLabels"]
        assert chosen == selector, f"{kind} of {name} selects other pods than its workload"
    policy = found["NetworkPolicy"][0]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector


@pytest.mark.req("HLM-2")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_disabled_entries_render_nothing(scenario: helm_check.Scenario) -> None:
    objects = rendered(scenario)
    enabled = {
        obj["metadata"]["labels"]["app.kubernetes.io/component"]
        for obj in objects.of_kind("Deployment", "StatefulSet")
    }
    values = scenario.values()
    for name in expected_entries():
        default = chart_values()["services"][name].get("enabled", True)
        wanted = (values.get("services", {}).get(name) or {}).get("enabled", default)
        assert (name in enabled) == wanted, f"{scenario.name}: {name} enabled={wanted}"
        if not wanted:
            assert objects_of(objects, name) == {}


@pytest.mark.req("HLM-2")
def test_stateless_is_a_deployment_scaled_by_an_hpa() -> None:
    objects = rendered(ALL)
    deployment = objects.named("Deployment", "cityos-devices")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = objects.named("HorizontalPodAutoscaler", "cityos-devices")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "cityos-devices",
    }
    assert {"cityos-exporter", "cityos-analytics-runner"}.isdisjoint(
        hpa["metadata"]["name"] for hpa in objects.of_kind("HorizontalPodAutoscaler")
    )


@pytest.mark.req("HLM-2")
def test_singleton_is_one_deployment_replica_with_its_lease_named() -> None:
    deployment = rendered(ALL).named("Deployment", "cityos-exporter")
    assert deployment["spec"]["replicas"] == 1
    env = {item["name"]: item for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CITYOS_LEASE_NAME"]["value"] == "cityos-exporter"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.req("HLM-2")
def test_durable_is_a_statefulset_whose_var_dir_is_a_volume_claim() -> None:
    objects = helm_check.render_objects(
        {"services": {"mqtt-adapter": {"enabled": True, "kind": "durable", "persistence": {"size": "5Gi"}}}}
    )
    assert list(helm_check.validation_errors(objects)) == []
    statefulset = objects.named("StatefulSet", "cityos-mqtt-adapter")
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [claim["metadata"]["name"] for claim in claims] == ["var"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    pod = statefulset["spec"]["template"]["spec"]
    assert {"name": "var", "mountPath": "/var/lib/cityos"} in pod["containers"][0]["volumeMounts"]
    assert "var" not in [volume["name"] for volume in pod["volumes"]], "the claim, not an emptyDir"
    headless = objects.named("Service", "cityos-mqtt-adapter-headless")
    assert statefulset["spec"]["serviceName"] == "cityos-mqtt-adapter-headless"
    assert headless["spec"]["clusterIP"] == "None"
    stateless = deployed_services()  # every deployed service folder is stateless today
    assert [component(hpa) for hpa in objects.of_kind("HorizontalPodAutoscaler")] == stateless


@pytest.mark.req("HLM-2")
def test_an_entry_merges_over_the_defaults() -> None:
    objects = helm_check.render_objects(
        {
            "defaults": {"resources": {"limits": {"memory": "2Gi"}}},
            "services": {name: {"enabled": False} for name in workspace_services() if name != "devices"},
        }
    )
    container = objects.named("Deployment", "cityos-devices")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["CITYOS_DEVICES_CA_CERT_FILE"] == "/etc/cityos/devices-ca/tls.crt"
    assert [obj["metadata"]["name"] for obj in objects.of_kind("Deployment")] == ["cityos-devices"]


@pytest.mark.req("HLM-2")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_network_policies_deny_by_default_and_allow_the_named_flows(scenario: helm_check.Scenario) -> None:
    objects = rendered(scenario)
    values = scenario.values()
    if values.get("networkPolicy", {}).get("enabled") is False:
        return
    deny = objects.named("NetworkPolicy", "cityos-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    merged_destinations = {
        **chart_values()["networkPolicy"]["destinations"],
        **values.get("networkPolicy", {}).get("destinations", {}),
    }
    for workload in objects.of_kind("Deployment", "StatefulSet"):
        name = component(workload)
        policy = objects.named("NetworkPolicy", workload["metadata"]["name"])
        entry = {
            **chart_values()["defaults"],
            **chart_values()["services"][name],
            **(values.get("services", {}).get(name) or {}),
        }
        flows = entry["egressTo"]
        egress = policy["spec"]["egress"]
        assert len(egress) == 1 + len(flows), "gRPC within the release plus one rule per named flow"
        for rule, flow in zip(egress[1:], flows, strict=True):
            assert rule["ports"] == merged_destinations[flow]["ports"]
        ports = [port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]]
        jwks = [8090] if name == "identity" else []  # the identity service's JWKS, for API-key tokens
        assert ports == [50051, *jwks], "callers reach the gRPC port only (and identity's JWKS)"
        if jwks:  # only the release's own pods fetch it (the gRPC rule's first peer, the release selector)
            assert policy["spec"]["ingress"][1]["from"] == [policy["spec"]["ingress"][0]["from"][0]]


@pytest.mark.req("HLM-2")
def test_every_service_trusts_the_identity_service_for_api_key_tokens() -> None:
    """identity serves its JWKS on its Service; every workload gets it as an extra issuer."""
    objects = rendered(SCENARIOS[0])
    config = next(o for o in objects.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-config"))[
        "data"
    ]
    identity = next(s for s in objects.of_kind("Service") if component(s) == "identity")
    jwks = next(port for port in identity["spec"]["ports"] if port["name"] == "jwks")
    issuer = f"http://{identity['metadata']['name']}:{jwks['port']}/realms/cityos-api-keys"
    assert json.loads(config["CITYOS_AUTH_EXTRA_ISSUERS"]) == [issuer]
    assert (config["CITYOS_IDENTITY_SERVE_JWKS"], config["CITYOS_IDENTITY_TOKEN_ISSUER"]) == ("true", issuer)


@pytest.mark.req("HLM-2")
def test_every_workload_knows_where_the_others_answer_and_signs_in_as_its_own_client() -> None:
    """CITYOS_ENDPOINTS names each enabled workload's Service and gRPC port; with
    serviceClients.existingSecret, each workload reads its own client secret under its own name."""
    scenario = scenario_named("production-values.yaml")
    values = {**scenario.values(), "serviceClients": {"existingSecret": "cityos-clients", "tokenUrl": ""}}
    objects = helm_check.render_objects(values)
    config = next(o for o in objects.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-config"))[
        "data"
    ]
    endpoints = json.loads(config["CITYOS_ENDPOINTS"])
    services = {component(s): s["metadata"]["name"] for s in objects.of_kind("Service") if component(s)}
    assert {"devices", "parking"} <= set(endpoints)
    for name, address in endpoints.items():
        assert address == f"{services[name]}:50051"
    for workload in [*objects.of_kind("Deployment"), *objects.of_kind("StatefulSet")]:
        name = component(workload)
        container = workload["spec"]["template"]["spec"]["containers"][0]
        secret = next(e for e in container["env"] if e["name"] == "CITYOS_AUTH_CLIENT_SECRET")
        assert secret["valueFrom"]["secretKeyRef"] == {
            "name": "cityos-clients",
            "key": name,
            "optional": True,
        }
    default = rendered(SCENARIOS[0])
    for workload in default.of_kind("Deployment"):
        containers = workload["spec"]["template"]["spec"]["containers"]
        assert all(e["name"] != "CITYOS_AUTH_CLIENT_SECRET" for c in containers for e in c.get("env", []))


@pytest.mark.req("HLM-2")
def test_parking_replicas_share_one_generated_plate_pseudonym_key() -> None:
    objects = rendered(SCENARIOS[0])
    (secret,) = [s for s in objects.of_kind("Secret") if s["metadata"]["name"].endswith("-generated")]
    assert list(secret["data"]) == ["parking.CITYOS_PARKING_PLATE_PSEUDONYM_KEY"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    parking = next(w for w in objects.of_kind("Deployment") if component(w) == "parking")
    env = parking["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in env if e["name"] == "CITYOS_PARKING_PLATE_PSEUDONYM_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "parking.CITYOS_PARKING_PLATE_PSEUDONYM_KEY",
    }
