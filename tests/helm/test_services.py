"""HLM-2: every workspace service and platform component has an entry in values, every entry is one of
them, and each renders its workload, Service, ServiceAccount, PodDisruptionBudget and NetworkPolicy —
the workload of the kind its entry names."""

from __future__ import annotations

import base64
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
        http = [entry["httpPort"]] if entry.get("httpPort") else []  # datashare's NGSI-LD API
        jwks = [8090] if name == "identity" else []  # the identity service's JWKS, for API-key tokens
        assert ports == [50051, *http, *jwks], (
            "callers reach gRPC (and the entry's httpPort, identity's JWKS)"
        )
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
    assert sorted(secret["data"]) == [
        "datashare.CITYOS_DATASHARE_RECEIPT_SIGNING_KEY",
        "parking.CITYOS_PARKING_PLATE_PSEUDONYM_KEY",
    ]
    plain = base64.b64decode(secret["data"]["parking.CITYOS_PARKING_PLATE_PSEUDONYM_KEY"]).decode()
    assert len(plain) == 48
    assert plain.isalnum()
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    parking = next(w for w in objects.of_kind("Deployment") if component(w) == "parking")
    env = parking["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in env if e["name"] == "CITYOS_PARKING_PLATE_PSEUDONYM_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "parking.CITYOS_PARKING_PLATE_PSEUDONYM_KEY",
    }


# ---- datashare: a second (HTTP) port, a generated Ed25519 key, the lake -----------------------------


def container_of(objects: helm_check.Rendered, name: str) -> dict[str, Any]:
    workload = next(w for w in objects.of_kind("Deployment", "StatefulSet") if component(w) == name)
    container: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [item["name"] for item in container["env"]]
    assert len(names) == len(set(names)), f"a variable set twice: {names}"
    return {item["name"]: item for item in container["env"]}


@pytest.mark.req("HLM-2")
def test_an_entry_with_an_http_port_listens_on_it_behind_its_service_and_policy() -> None:
    """datashare's httpPort (its NGSI-LD API and extract downloads): a container port and a Service port
    named `http`, allowed by the NetworkPolicy rule that admits gRPC (same callers), and the service's
    own CITYOS_DATASHARE_HTTP_HOST/_PORT, so it listens on every interface at that port."""
    objects = rendered(SCENARIOS[0])
    http_port = chart_values()["services"]["datashare"]["httpPort"]
    assert http_port == 50076
    container = container_of(objects, "datashare")
    assert {"name": "http", "containerPort": http_port, "protocol": "TCP"} in container["ports"]
    env = env_of(container)
    assert env["CITYOS_DATASHARE_HTTP_HOST"]["value"] == "0.0.0.0"
    assert env["CITYOS_DATASHARE_HTTP_PORT"]["value"] == str(http_port)
    service = objects.named("Service", "cityos-datashare")
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc", "http"]
    http = service["spec"]["ports"][1]
    assert (http["port"], http["targetPort"], http["appProtocol"]) == (http_port, "http", "http")
    (rule,) = objects.named("NetworkPolicy", "cityos-datashare")["spec"]["ingress"]
    assert [port["port"] for port in rule["ports"]] == [50051, http_port]
    # Without httpPort: no such port or variable (devices).
    devices = container_of(objects, "devices")
    assert [port["name"] for port in devices["ports"]] == ["grpc"]
    assert not [name for name in env_of(devices) if name.endswith("_HTTP_PORT")]
    assert [p["name"] for p in objects.named("Service", "cityos-devices")["spec"]["ports"]] == ["grpc"]


@pytest.mark.req("HLM-2")
def test_http_port_is_general_and_refuses_a_port_already_taken() -> None:
    objects = helm_check.render_objects(
        {"services": {"mqtt-adapter": {"enabled": True, "httpPort": 8088}, "devices": {"httpPort": 8081}}}
    )
    assert list(helm_check.validation_errors(objects)) == []
    assert env_of(container_of(objects, "mqtt-adapter"))["CITYOS_MQTT_ADAPTER_HTTP_PORT"]["value"] == "8088"
    assert env_of(container_of(objects, "devices"))["CITYOS_DEVICES_HTTP_PORT"]["value"] == "8081"
    for name, taken in (("datashare", 50051), ("identity", 8090)):
        with pytest.raises(Exception, match="httpPort"):
            helm_check.render_objects({"services": {name: {"httpPort": taken}}})


def datashare_key(objects: helm_check.Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generated Secret and the signing key variable of the datashare container."""
    (secret,) = [s for s in objects.of_kind("Secret") if s["metadata"]["name"].endswith("-generated")]
    return secret, env_of(container_of(objects, "datashare"))["CITYOS_DATASHARE_RECEIPT_SIGNING_KEY"]


@pytest.mark.req("HLM-2")
def test_datashare_replicas_share_one_generated_ed25519_receipt_key() -> None:
    """The chart generates the receipt signing key once (kept by lookup across upgrades and by
    resource-policy keep across uninstalls) as an Ed25519 private key in PEM PKCS#8 — what
    cryptography's load_pem_private_key, as the service uses it, reads — and every replica reads it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    objects = rendered(SCENARIOS[0])
    secret, variable = datashare_key(objects)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = "datashare.CITYOS_DATASHARE_RECEIPT_SIGNING_KEY"
    assert variable["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": key}
    pem = base64.b64decode(secret["data"][key])
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(pem, None)
    assert isinstance(private, Ed25519PrivateKey)
    signature = private.sign(b"receipt")
    private.public_key().verify(signature, b"receipt")
    # A fresh install draws a fresh key (it is generated, not a constant of the chart).
    again, _ = datashare_key(helm_check.render_objects({}))
    assert again["data"][key] != secret["data"][key]


@pytest.mark.req("HLM-2")
def test_a_secret_env_variable_replaces_the_generated_key() -> None:
    """production-values.yaml supplies the receipt key from its own Secret: the variable is set once, from
    that Secret, and the chart generates no datashare key."""
    objects = rendered(scenario_named("production-values.yaml"))
    secret, variable = datashare_key(objects)
    assert variable["valueFrom"]["secretKeyRef"] == {
        "name": "cityos-datashare-receipts",
        "key": "signing-key.pem",
    }
    assert list(secret["data"]) == ["parking.CITYOS_PARKING_PLATE_PSEUDONYM_KEY"]
    objects = helm_check.render_objects(
        {
            "services": {
                "parking": {"enabled": False},
                "datashare": {
                    "secretEnv": [
                        {"name": "CITYOS_DATASHARE_RECEIPT_SIGNING_KEY", "secretName": "mine", "key": "pem"}
                    ]
                },
            }
        }
    )
    assert [s for s in objects.of_kind("Secret") if s["metadata"]["name"].endswith("-generated")] == []


@pytest.mark.req("HLM-2")
def test_datashare_reaches_the_lake_with_its_settings_and_keys() -> None:
    """datashare reads the lake and writes extracts to the object store: egress to it, the shared
    CITYOS_LAKE_URL/_S3_ENDPOINT/_S3_REGION, and the access keys from objectStore.existingSecret — as the
    exporter gets them; a workload that does not reach the object store (parking) gets no keys."""
    scenario = scenario_named("production-values.yaml")
    objects = rendered(scenario)
    store = scenario.values()["objectStore"]
    config = objects.named("ConfigMap", "cityos-config")["data"]
    assert config["CITYOS_LAKE_URL"] == f"s3://{store['bucket']}"
    assert config["CITYOS_LAKE_S3_ENDPOINT"] == store["endpoint"]
    assert config["CITYOS_LAKE_S3_REGION"] == store["region"]
    env = env_of(container_of(objects, "datashare"))
    for variable, key in (
        ("CITYOS_LAKE_S3_ACCESS_KEY", "access-key"),
        ("CITYOS_LAKE_S3_SECRET_KEY", "secret-key"),
    ):
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": store["existingSecret"], "key": key}
    assert "CITYOS_LAKE_S3_ACCESS_KEY" not in env_of(container_of(objects, "parking"))
    egress = objects.named("NetworkPolicy", "cityos-datashare")["spec"]["egress"]
    object_store = scenario.values()["networkPolicy"]["destinations"]["objectStore"]
    assert {"ports": object_store["ports"], "to": object_store["to"]} in egress
    # Its live views call parking and streetlights over gRPC: the egress to the release's pods.
    release = egress[0]
    assert {"port": 50051, "protocol": "TCP"} in release["ports"]
    assert release["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "cityos"
    endpoints = json.loads(config["CITYOS_ENDPOINTS"])
    assert endpoints["parking"] == "cityos-parking:50051"
    assert endpoints["streetlights"] == "cityos-streetlights:50051"
