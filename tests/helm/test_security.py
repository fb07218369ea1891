"""HLM-3: every pod spec meets the Pod Security Standard "restricted" (checked on the rendered objects),
and every container has native gRPC probes and resource requests and limits."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from chart_support import SCENARIO_IDS, SCENARIOS, SKIP_REASON, pod_specs, rendered

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check

# Volume types the restricted profile admits.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The "restricted" profile's checks (kubernetes.io/docs/concepts/security/pod-security-standards),
    baseline included, on one pod spec."""
    problems = []
    pod = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is of type {kinds}")
    if pod.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    if pod.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost", None):
        problems.append("pod seccomp profile is neither RuntimeDefault nor Localhost")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for container in containers:
        name = container["name"]
        context = container.get("securityContext", {})
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod.get("runAsUser")) in (0, None):
            problems.append(f"{name}: no non-zero runAsUser (the image's user must not be trusted blindly)")
        seccomp = context.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: the root filesystem is writable")
        for port in container.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.req("HLM-3")
def test_the_check_catches_what_restricted_forbids() -> None:
    _, spec = pod_specs(rendered(SCENARIOS[0]))[0]
    assert restricted_violations(spec) == []
    for path, value in [
        (("securityContext", "runAsNonRoot"), False),
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True),
        (("containers", 0, "securityContext", "capabilities", "drop"), ["NET_RAW"]),
        (("containers", 0, "securityContext", "readOnlyRootFilesystem"), False),
        (("containers", 0, "securityContext", "seccompProfile", "type"), "Unconfined"),
        (("hostNetwork",), True),
    ]:
        broken = copy.deepcopy(spec)
        target: Any = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        if path == (("securityContext", "runAsNonRoot")):
            broken["containers"][0]["securityContext"].pop("runAsNonRoot")
            for init in broken.get("initContainers", []):
                init["securityContext"].pop("runAsNonRoot")
        assert restricted_violations(broken) != [], f"{path} = {value} went unnoticed"


@pytest.mark.req("HLM-3")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_every_pod_is_restricted(scenario: helm_check.Scenario) -> None:
    specs = pod_specs(rendered(scenario))
    assert specs
    for name, spec in specs:
        assert restricted_violations(spec) == [], name


@pytest.mark.req("HLM-3")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_writable_paths_are_volumes(scenario: helm_check.Scenario) -> None:
    """A read-only root filesystem needs /tmp and the var dir (CITYOS_VAR_DIR) mounted."""
    for obj in rendered(scenario).of_kind("Deployment", "StatefulSet"):
        container = obj["spec"]["template"]["spec"]["containers"][0]
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/cityos"} <= mounts, obj["metadata"]["name"]


@pytest.mark.req("HLM-3")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_every_container_has_grpc_probes_and_resources(scenario: helm_check.Scenario) -> None:
    objects = rendered(scenario)
    port = 50051
    for name, spec in pod_specs(objects):
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{name}/{container['name']} {part}"
        if name.startswith("Pod/"):
            continue  # the `helm test` pod is a client run to completion: it serves nothing to probe
        for container in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["grpc"] == {"port": port}, f"{name}/{container['name']} {probe}"
            assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]


@pytest.mark.req("HLM-3")
def test_termination_grace_covers_drain_and_grace() -> None:
    objects = rendered(SCENARIOS[0])
    config = objects.named("ConfigMap", "cityos-config")["data"]
    for obj in objects.of_kind("Deployment"):
        grace = obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(config["CITYOS_DRAIN_DELAY_S"]) + float(config["CITYOS_GRACE_S"])
