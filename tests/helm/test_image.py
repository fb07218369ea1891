"""The image: the Dockerfile passes hadolint (HLM-6, its Dockerfile half), and what the image installs
and runs works — checked without a Docker engine by repeating the build stage's install (`uv sync
--frozen --no-dev --all-packages --no-editable` over the build context .dockerignore leaves) and running
the chart's own in-pod scripts (the init container's database wait, the `helm test` health check)
against a service started from that installation in production mode."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_support import ROOT, SCENARIOS, SKIP_REASON, deployed_services, rendered, workspace_services

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check

DOCKERFILE = ROOT / "Dockerfile"


@pytest.mark.req("HLM-6")
def test_dockerfile_passes_hadolint() -> None:
    result = helm_check.hadolint()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.req("HLM-6")
def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nCMD python\n")
    result = helm_check.hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3008" in result.stdout or "DL3009" in result.stdout  # unpinned apt, no cleanup


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, flags=re.MULTILINE)
    assert "uv sync --frozen --no-dev --all-packages" in text
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert user, "the runtime stage names its user"
    uid = user[-1].split(":")[0]
    assert uid.isdigit(), "a numeric user, so runAsNonRoot can be verified"
    assert uid != "0"
    assert re.search(r'^ENTRYPOINT \["cityos", "serve"\]', text, flags=re.MULTILINE)


# ---- the image's installation, rebuilt locally -------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's matching for the patterns this repository uses (no `!` exceptions): a path is excluded
    when it or one of its parent folders matches; `**/` matches any number of folders."""
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not supported by this check"
        candidates = {pattern, pattern.removeprefix("**/")} if pattern.startswith("**/") else {pattern}
        parts = relative.split("/")
        for index in range(1, len(parts) + 1):
            prefix = "/".join(parts[:index])
            for candidate in candidates:
                if fnmatch.fnmatchcase(prefix, candidate):
                    return True
                if candidate != pattern and fnmatch.fnmatchcase(parts[index - 1], candidate):
                    return True
    return False


def build_context(destination: Path) -> None:
    """The files the Dockerfile's COPY lines take, minus what .dockerignore excludes."""
    sources = re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    patterns = dockerignore_patterns()
    for line in sources:
        *items, _target = line.split()
        for item in items:
            source = ROOT / item
            paths = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
            for path in paths:
                relative = path.relative_to(ROOT).as_posix()
                if ignored(relative, patterns):
                    continue
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists() or shutil.which(found), "uv is needed (make install bootstraps it)"
    return found


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/cityos as the build stage makes it, from the build context alone."""
    context = tmp_path_factory.mktemp("context")
    build_context(context)
    assert not (context / "tests").exists()
    assert not (context / ".venv").exists()
    environment = tmp_path_factory.mktemp("opt") / "cityos"
    python = ROOT / ".venv" / "bin" / "python"  # the workspace's Python 3.11, as in python:3.11-slim
    assert python.exists(), "run `make install` first"
    result = subprocess.run(
        [uv(), "sync", "--frozen", "--no-dev", "--all-packages", "--no-editable", "--python", str(python)],
        cwd=context,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(environment), "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return environment


def test_dockerignore_keeps_tests_and_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        "var/db/devices.sqlite",
        "services/devices/tests/test_x.py",
        ".git/HEAD",
    ):
        assert ignored(path, patterns), path
    for path in ("uv.lock", "platform/src/cityos_platform/cli.py", "services/devices/pyproject.toml"):
        assert not ignored(path, patterns), path


@pytest.mark.slow
def test_the_image_installs_every_service(image_env: Path) -> None:
    result = subprocess.run(
        [str(image_env / "bin" / "cityos"), "services"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for folder in workspace_services():
        assert folder in result.stdout, f"services/{folder} is not installed in the image"
    # The analytics jobs ship in the same image (the RayJob's pods run it).
    jobs = subprocess.run(
        [str(image_env / "bin" / "cityos"), "analytics", "jobs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "manhole-risk" in jobs.stdout


# ---- the chart's in-pod scripts, run for real --------------------------------------------------------


def admin_dsn() -> str:
    return os.environ.get("CITYOS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_answers(dsn: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def database(image_env: Path) -> Iterator[str]:
    """A throwaway PostgreSQL database (created and dropped with the image's own asyncpg)."""
    admin = admin_dsn()
    if not pg_answers(admin):
        if os.environ.get("CI") == "true":
            pytest.fail(f"no PostgreSQL at {admin} (CI needs it)")
        pytest.skip(f"no PostgreSQL at {admin}")
    name = f"cityos_helm_{uuid.uuid4().hex[:10]}"
    run_sql = (
        "import asyncio, sys, asyncpg\n"
        "async def main():\n"
        "    connection = await asyncpg.connect(sys.argv[1])\n"
        "    await connection.execute(sys.argv[2])\n"
        "    await connection.close()\n"
        "asyncio.run(main())\n"
    )
    python = str(image_env / "bin" / "python")
    subprocess.run([python, "-c", run_sql, admin, f"CREATE DATABASE {name}"], check=True, timeout=60)
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    subprocess.run([python, "-c", run_sql, admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_container(objects: helm_check.Rendered, name: str) -> dict[str, Any]:
    pod = objects.named("Deployment", f"cityos-{name}")["spec"]["template"]["spec"]
    return next(container for container in pod["initContainers"] if container["name"] == "wait-for-database")


@pytest.mark.slow
@pytest.mark.postgres
def test_init_container_waits_for_the_database(image_env: Path, database: str) -> None:
    container = init_container(rendered(SCENARIOS[0]), "devices")
    assert container["command"] == ["python", "-c"]
    script = container["args"][0]
    python = str(image_env / "bin" / "python")
    env = {"PATH": os.environ["PATH"], "CITYOS_DATABASE_WAIT_S": "30", "CITYOS_DATABASE_URL": database}
    ready = subprocess.run(
        [python, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert ready.returncode == 0, ready.stderr
    assert "database ready" in ready.stdout
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    env = {**env, "CITYOS_DATABASE_WAIT_S": "3", "CITYOS_DATABASE_URL": closed}
    late = subprocess.run(
        [python, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert late.returncode == 1
    assert "database not ready in time" in late.stderr
    assert "waiting for the database" in late.stdout, "it retried before giving up"
    assert time.monotonic() - started >= 3


@pytest.fixture(scope="module")
def serving_devices(
    image_env: Path, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`cityos serve devices` from the image's installation, configured as the chart configures it
    (the rendered ConfigMap, production mode), on a loopback port."""
    objects = rendered(SCENARIOS[0])
    config = dict(objects.named("ConfigMap", "cityos-config")["data"])
    var = tmp_path_factory.mktemp("var")
    port = free_port()
    env = {
        **config,
        "PATH": os.environ["PATH"],
        "CITYOS_HOST": "127.0.0.1",  # loopback only on this machine
        "CITYOS_PORT": str(port),
        "CITYOS_VAR_DIR": str(var),
        "CITYOS_DATABASE_URL": database,
        "CITYOS_PAGE_TOKEN_SECRET": "a-test-secret-of-enough-length-0123456789",
        "CITYOS_DEVICES_CA_CERT_FILE": str(var / "ca.pem"),
        "CITYOS_DEVICES_CA_KEY_FILE": str(var / "ca-key.pem"),
    }
    assert env["CITYOS_MODE"] == "production"
    log = (var / "devices.log").open("w")
    process = subprocess.Popen(
        [str(image_env / "bin" / "cityos"), "serve", "devices"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.3)
        assert process.poll() is None, (var / "devices.log").read_text()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def health_check(image_env: Path, targets: list[str]) -> subprocess.CompletedProcess[str]:
    pod = next(
        pod
        for pod in rendered(SCENARIOS[0]).of_kind("Pod")
        if pod["metadata"]["name"] == "cityos-test-health"
    )
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    script, *chart_targets = container["args"]
    assert chart_targets == [f"{name}=cityos-{name}:50051" for name in deployed_services()]
    env = {"PATH": os.environ["PATH"], **{item["name"]: item["value"] for item in container["env"]}}
    return subprocess.run(
        [str(image_env / "bin" / "python"), "-c", script, *targets],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_helm_test_pod_sees_a_serving_service(image_env: Path, serving_devices: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        result = health_check(image_env, [f"devices={serving_devices}"])
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"devices {serving_devices} SERVING" in result.stdout
    assert "all 1 services SERVING" in result.stdout


@pytest.mark.slow
def test_helm_test_pod_fails_when_a_service_is_down(image_env: Path) -> None:
    result = health_check(image_env, [f"devices=127.0.0.1:{free_port()}"])
    assert result.returncode != 0
    assert "not serving: devices" in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
