"""pytest fixtures: in-process servers on ephemeral ports, in-memory telemetry, a throwaway PostgreSQL.

PostgreSQL: `CITYOS_TEST_PG` (default postgresql://postgres@127.0.0.1:5432/postgres) names an admin
connection; each run creates its own database and drops it at the end. Where no server answers, the
tests that need it are skipped with the reason — except under CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cityos_platform.accesslog import AccessLog
from cityos_platform.auth import JwksCache, TokenVerifier
from cityos_platform.authz import Authenticator
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import load_settings
from cityos_platform.issuer import DevIssuer, DevIssuerServer
from cityos_platform.server import Mount, RunningServer, serve
from cityos_platform.telemetry import Telemetry
from cityos_platform.testing import conformance

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class TelemetryCapture:
    """In-memory span and metric capture, handed to `serve(telemetry=…)`."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    telemetry: Telemetry

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry_capture() -> Iterator[TelemetryCapture]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield TelemetryCapture(spans, reader, Telemetry.from_providers(tracer_provider, meter_provider))
    tracer_provider.shutdown()
    meter_provider.shutdown()


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture(scope="session")
def dev_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIssuerServer]:
    """The development issuer, serving its JWKS over HTTP on an ephemeral port, for the whole run."""
    server = DevIssuerServer(DevIssuer(tmp_path_factory.mktemp("issuer")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mint(dev_issuer: DevIssuerServer) -> Callable[..., str]:
    """`mint(subject, organization, roles, **claims)`: a token from the development issuer."""
    return dev_issuer.issuer.mint


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


def authenticator_for(issuer: DevIssuerServer, clock: Clock = SYSTEM_CLOCK) -> Authenticator:
    jwks = JwksCache(url=issuer.jwks_url, min_refresh_interval_s=30, clock=clock)
    return Authenticator(TokenVerifier(issuer.issuer.issuer_url, "cityos", jwks, clock=clock))


@pytest.fixture
async def start_server(
    telemetry_capture: TelemetryCapture, dev_issuer: DevIssuerServer, tmp_path: Any
) -> AsyncIterator[StartServer]:
    """`await start_server(mounts, **settings)`: a started server on 127.0.0.1 and an ephemeral port,
    verifying tokens of the development issuer and writing its access log under tmp_path."""
    running: list[RunningServer] = []

    async def start(mounts: Sequence[Mount], **overrides: Any) -> RunningServer:
        telemetry = overrides.pop("telemetry", telemetry_capture.telemetry)
        authenticator = overrides.pop("authenticator", authenticator_for(dev_issuer))
        clock = overrides.pop("clock", SYSTEM_CLOCK)
        access_log = overrides.pop("access_log", None) or AccessLog(
            tmp_path / "audit" / f"access-{len(running)}.jsonl"
        )
        settings = load_settings(**{"host": "127.0.0.1", "port": 0, "grace_s": 0.5, **overrides})
        server = await serve(
            mounts,
            settings,
            telemetry=telemetry,
            authenticator=authenticator,
            access_log=access_log,
            clock=clock,
        )
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop(grace=0)


@pytest.fixture
async def conformance_server(start_server: StartServer) -> RunningServer:
    """The conformance service on an ephemeral port with default settings."""
    return await start_server([conformance.mount()])


@pytest.fixture
def settings_factory() -> Callable[..., Any]:
    """`settings_factory(**overrides)`: settings for a test server on 127.0.0.1 and an ephemeral port."""

    def make(**overrides: Any) -> Any:
        return load_settings(**{"host": "127.0.0.1", "port": 0, "grace_s": 0.5, **overrides})

    return make


@pytest.fixture
def registered_conformance(tmp_path: Any) -> dict[str, str]:
    """An environment in which the conformance service is installed as a `cityos.services` entry point.

    A real distribution's metadata (dist-info with entry_points.txt) on PYTHONPATH, so a subprocess finds
    it exactly as it finds an installed service.
    """
    site = tmp_path / "site"
    dist_info = site / "cityos_conformance_testsvc-0.0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cityos-conformance-testsvc\nVersion: 0.0.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[cityos.services]\nconformance = cityos_platform.testing.conformance:SERVICE\n"
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "CITYOS_VAR_DIR": str(tmp_path / "var")}


def unreachable(reason: str) -> NoReturn:
    """A required external service is missing: skip with the reason, or fail the run under CI=true."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: it is required)", pytrace=False)
    pytest.skip(reason)


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _admin_dsn() -> str:
    return os.environ.get("CITYOS_TEST_PG", DEFAULT_ADMIN_DSN)


def _create_database(prefix: str) -> str:
    """Create a uniquely named database and return its DSN (skips, or fails under CI, when unreachable)."""
    admin = _admin_dsn()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    except Exception as error:  # any failure to reach it means the same here
        unreachable(f"PostgreSQL unreachable at {admin}: {error!r}")
    base, _, _ = admin.rpartition("/")
    return f"{base}/{name}"


def _drop_database(dsn: str) -> None:
    name = dsn.rpartition("/")[2]
    asyncio.run(_admin(_admin_dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh database for this test run (asyncpg DSN form); dropped at the end."""
    dsn = _create_database("cityos_test")
    yield dsn
    _drop_database(dsn)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """An empty database of its own for one test, on SQLite and (a second run) on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite'}"
        return
    dsn = _create_database("cityos_t")
    yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    _drop_database(dsn)


MOSQUITTO_DYNSEC = [
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
]


@pytest.fixture
def mosquitto(tmp_path: Any) -> Iterator[str]:
    """A private Mosquitto on a free port with the dynamic-security plugin; yields its admin URL
    (`mqtt://admin:<password>@127.0.0.1:<port>`). Skipped with the reason where Mosquitto is missing,
    except under CI=true."""
    import getpass
    import shutil
    import socket
    import subprocess
    import time

    binary, control = shutil.which("mosquitto") or "/usr/sbin/mosquitto", shutil.which("mosquitto_ctrl")
    plugin = next((p for p in MOSQUITTO_DYNSEC if os.path.exists(p)), None)
    if not os.path.exists(binary) or control is None or plugin is None:
        unreachable("mosquitto with its dynamic-security plugin is not installed (apt-get install mosquitto)")
    password = uuid.uuid4().hex
    dynsec = tmp_path / "dynamic-security.json"
    subprocess.run(
        [control, "dynsec", "init", str(dynsec), "admin", password], check=True, capture_output=True
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        # `user`: run as ourselves (as root, Mosquitto would switch to a user who cannot read tmp_path).
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"plugin {plugin}\nplugin_opt_config_file {dynsec}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    broker = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if broker.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(tmp_path / 'mosquitto.log').read_text()}")
        time.sleep(0.05)
    yield f"mqtt://admin:{password}@127.0.0.1:{port}"
    broker.terminate()
    broker.wait(timeout=10)
    log.close()
