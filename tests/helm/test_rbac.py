"""HLM-5: the rendered RBAC grants exactly what the code does in the cluster — the exporter's Lease and
the analytics runner's RayJobs — in namespaced Roles, nothing cluster-wide; no other workload gets a
Kubernetes API token."""

from __future__ import annotations

import pytest
from chart_support import SCENARIO_IDS, SCENARIOS, SKIP_REASON, component, rendered, scenario_named

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check

LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["cityos-exporter"],
        "verbs": ["get", "update"],
    },
]
RAYJOB_RULES = [
    {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list", "watch", "delete"]}
]
EXPECTED = {"exporter": LEASE_RULES, "analytics-runner": RAYJOB_RULES}


@pytest.mark.req("HLM-5")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_nothing_cluster_wide(scenario: helm_check.Scenario) -> None:
    kinds = {obj["kind"] for _, obj in rendered(scenario).objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


@pytest.mark.req("HLM-5")
def test_roles_grant_exactly_leases_and_rayjobs() -> None:
    objects = rendered(scenario_named("all-components-values.yaml"))
    roles = {component(role): role["rules"] for role in objects.of_kind("Role")}
    assert roles == EXPECTED
    for binding in objects.of_kind("RoleBinding"):
        name = binding["metadata"]["name"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": helm_check.NAMESPACE}
        ]
    assert sorted(component(binding) for binding in objects.of_kind("RoleBinding")) == sorted(EXPECTED)


@pytest.mark.req("HLM-5")
def test_the_lease_granted_is_the_lease_the_exporter_is_told_to_use() -> None:
    objects = rendered(scenario_named("all-components-values.yaml"))
    container = objects.named("Deployment", "cityos-exporter")["spec"]["template"]["spec"]["containers"][0]
    lease = next(item["value"] for item in container["env"] if item["name"] == "CITYOS_LEASE_NAME")
    assert LEASE_RULES[1]["resourceNames"] == [lease]


@pytest.mark.req("HLM-5")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_only_workloads_with_rbac_get_an_api_token(scenario: helm_check.Scenario) -> None:
    objects = rendered(scenario)
    with_roles = {component(role) for role in objects.of_kind("Role")}
    for account in objects.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is (component(account) in with_roles)
    for obj in objects.of_kind("Deployment", "StatefulSet"):
        spec = obj["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is (component(obj) in with_roles)
        assert spec["serviceAccountName"] == obj["metadata"]["name"]
    test_pod = objects.of_kind("Pod")
    assert all(pod["spec"]["automountServiceAccountToken"] is False for pod in test_pod)


@pytest.mark.req("HLM-5")
def test_default_install_has_no_rbac() -> None:
    """Services that never call the Kubernetes API (devices, identity) get no Role at all."""
    objects = rendered(SCENARIOS[0])
    assert objects.of_kind("Role", "RoleBinding") == []
