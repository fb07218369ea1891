"""HLM-1: strict lint is clean for the default values and every scenario; every rendered object of every
scenario validates against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail)."""

from __future__ import annotations

import copy

import pytest
from chart_support import SCENARIO_IDS, SCENARIOS, SKIP_REASON, rendered

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check


@pytest.mark.req("HLM-1")
def test_there_is_a_production_and_a_minimal_scenario() -> None:
    assert {"production-values.yaml", "minimal-values.yaml"} <= set(SCENARIO_IDS)
    assert SCENARIO_IDS[0] == "default"


@pytest.mark.req("HLM-1")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_strict_lint_has_no_problem(scenario: helm_check.Scenario) -> None:
    assert helm_check.lint_problems(scenario.values()) == []


@pytest.mark.req("HLM-1")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_every_rendered_object_validates(scenario: helm_check.Scenario) -> None:
    objects = rendered(scenario)
    assert len(objects.objects) >= 5
    assert list(helm_check.validation_errors(objects)) == []


@pytest.mark.req("HLM-1")
def test_lint_reports_what_it_must() -> None:
    """The lint is not blind: a value the schema refuses is a problem, and so is a missing subchart other
    than the declared ones (the one finding we accept must name exactly the declared dependencies)."""
    problems = helm_check.lint_problems({"services": {"devices": {"replicas": "two"}}})
    assert any("replicas" in problem for problem in problems)
    odd = [{"severity": 2, "path": "x", "error": helm_check.MISSING_DEPENDENCIES + "postgresql"}]
    assert helm_check.unexpected_lint_findings(odd) != []
    warning = [{"severity": 2, "path": "x", "error": "something else"}]
    assert helm_check.unexpected_lint_findings(warning) != []


@pytest.mark.req("HLM-1")
def test_validation_rejects_a_broken_object() -> None:
    """kubernetes-validate really checks: a wrong type and an unknown field are both refused."""
    deployment = copy.deepcopy(rendered(SCENARIOS[0]).of_kind("Deployment")[0])
    helm_check.validate(deployment)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    import kubernetes_validate

    for broken in (wrong_type, unknown_field):
        with pytest.raises(kubernetes_validate.utils.ValidationError):
            helm_check.validate(broken)
