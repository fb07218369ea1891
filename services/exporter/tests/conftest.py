"""Fixtures of the exporter's tests: a real devices service producing telemetry and events, the exporter
as a real `cityos serve exporter` subprocess (killed with SIGKILL where the tests say), and readers of
the source streams and of the lake that are independent of the exporter's code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cityos.common.v1 import events_pb2, events_pb2_grpc
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.testing import Fleet, running_fleet
from cityos_platform.clock import SYSTEM_CLOCK
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.s3 import private_moto_s3  # noqa: F401 - the S3 server LAK-2 stops and starts

CLIENT_SECRET = "exporter-client-secret-for-tests-0123456789"
TERMINAL_METRICS = {"tilt_deg": ("deg", 0, 90), "water_level_m": ("m", 0, 20), "battery_v": ("V", 0, 4.2)}
SENSOR_METRICS = {"occupied": ("1", 0, 1)}


class Exporter:
    """`cityos serve exporter` as a subprocess with its own environment; its log in `log_path`."""

    def __init__(self, var_dir: Path, env: dict[str, str]) -> None:
        self.var_dir = var_dir
        self.env = env
        self.log_path = var_dir / "exporter.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **settings: str) -> None:
        """Start it with extra `CITYOS_*` variables (e.g. CITYOS_EXPORTER_DEBUG_PAUSE_AT)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} {settings}\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cityos_platform.cli", "serve", "exporter"],
                env={**self.env, **settings},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_lines(self) -> list[dict[str, Any]]:
        """This start's JSON log lines."""
        text = self.log_path.read_text(errors="replace")
        current = text.rsplit("--- start ", 1)[-1]
        lines = []
        for line in current.splitlines()[1:]:
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def wait_for_log(self, text: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The first line of this start whose message contains `text`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            found = [line for line in self.log_lines() if text in str(line.get("msg", ""))]
            if found:
                return found[0]
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the exporter exited ({self.process.returncode}); log: {self.log_path}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no log line with {text!r} in {timeout_s} s; log: {self.log_path}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.wait()
        assert self.process.returncode == -signal.SIGKILL

    async def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: a graceful stop."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout_s)

    async def wait(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.process.kill()
                raise AssertionError("the exporter did not exit")
            await asyncio.sleep(0.02)
        return self.process.returncode

    def stop_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def client_secret(dev_issuer) -> str:
    """The secret of client `cityos-exporter`, registered with the development issuer."""
    dev_issuer.issuer.register_client("cityos-exporter", CLIENT_SECRET)
    return CLIENT_SECRET


@pytest.fixture
def exporter_env(dev_issuer, client_secret, tmp_path) -> Callable[..., Exporter]:
    """`exporter_env(endpoints, **variables)`: an Exporter (not started) on its own var dir, calling the
    services as client `cityos-exporter` of the development issuer."""
    made: list[Exporter] = []

    def make(endpoints: dict[str, str], **variables: str) -> Exporter:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CITYOS_", "OTEL_"))  # nothing of the developer's city leaks in
        }
        env.update(
            {
                "CITYOS_VAR_DIR": str(tmp_path / "exporter-var"),
                "CITYOS_HOST": "127.0.0.1",
                "CITYOS_PORT": "0",
                "CITYOS_ENDPOINTS": json.dumps(endpoints),
                "CITYOS_AUTH_ISSUER": dev_issuer.issuer_url,
                "CITYOS_AUTH_CLIENT_SECRET": client_secret,
                "CITYOS_LOG_FORMAT": "json",
                "CITYOS_GRACE_S": "5",
                "CITYOS_EXPORTER_RETRY_S": "0.1",
                "CITYOS_EXPORTER_LOCK_RETRY_S": "0.2",
                **variables,
            }
        )
        exporter = Exporter(tmp_path / "exporter-var", env)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.stop_now()


@pytest.fixture
async def fleet(start_server, dev_issuer, mint, tmp_path) -> AsyncIterator[Fleet]:
    """A real devices service with a manhole-terminal model and a parking-sensor model."""
    async with running_fleet(start_server, dev_issuer, mint, tmp_path / "devices", SYSTEM_CLOCK) as fleet:
        await fleet.model("mt", "manhole.terminal", TERMINAL_METRICS)
        await fleet.model("geomag", "parking.sensor", SENSOR_METRICS)
        yield fleet


class Producer:
    """Keeps the fleet busy until stopped: every round each device reports a reading, and every few
    rounds a new device is created (a `devices.device.created` event)."""

    def __init__(self, fleet: Fleet, devices: int = 6, period_s: float = 0.2) -> None:
        self.fleet, self.devices, self.period_s = fleet, devices, period_s
        self.ids: list[str] = []
        self.readings = 0
        self._task: asyncio.Task[None] | None = None

    async def add_device(self) -> None:
        index = len(self.ids)
        device_id = f"{'mt' if index % 2 == 0 else 'pk'}-{index:03d}"
        await self.fleet.device(device_id, "mt" if index % 2 == 0 else "geomag")
        self.ids.append(device_id)

    async def report_all(self) -> None:
        for device_id in self.ids:
            sequence = self.fleet.sequences.get(device_id, 0) + 1
            values = (
                {"tilt_deg": float(sequence % 90), "water_level_m": 0.5, "battery_v": 3.6}
                if device_id.startswith("mt")
                else {"occupied": float(sequence % 2)}
            )
            await self.fleet.report(device_id, **values)
            self.readings += 1

    async def _run(self) -> None:
        rounds = 0
        while True:
            if rounds % 10 == 0:
                await self.add_device()
            await self.report_all()
            rounds += 1
            await asyncio.sleep(self.period_s)

    async def start(self) -> None:
        for _ in range(self.devices):
            await self.add_device()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@pytest.fixture
def producer(fleet) -> Producer:
    return Producer(fleet)


class Source:
    """What the devices service holds, read through its APIs as a city-wide service account (the
    truth the lake is compared with)."""

    def __init__(self, address: str, token: str) -> None:
        self.address, self.token = address, token

    async def events(self) -> list[events_pb2.Event]:
        """Every event the service has committed (StreamEvents, not following)."""
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            request = events_pb2.StreamEventsRequest(follow=False, max_batch=1000)
            call = stub.StreamEvents(request, metadata=bearer(self.token))
            return [event async for response in call for event in response.events]

    async def readings(self) -> list[devices_pb2.TelemetryRecord]:
        """Every reading on the telemetry feed (not following)."""
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = devices_pb2_grpc.TelemetryServiceStub(channel)
            request = devices_pb2.SubscribeTelemetryRequest(follow=False, max_batch=1000)
            call = stub.SubscribeTelemetry(request, metadata=bearer(self.token))
            return [record async for response in call for record in response.records]


@pytest.fixture
def source(fleet, mint) -> Source:
    token = mint("service-account-cityos-auditor", "city", ["service"], client="cityos-auditor")
    return Source(fleet.server.address, token)


def read_lake_table(fs: Any, root: str, table: str, columns: list[str]) -> pa.Table:
    """Every row of every data file of `table` under `root` of an fsspec filesystem, read with pyarrow
    alone (not with the lake's reader): names starting with `.` or `_` are not data."""
    paths = (
        sorted(
            path
            for path in fs.find(f"{root}/{table}")
            if path.endswith(".parquet") and not path.rsplit("/", 1)[-1].startswith((".", "_"))
        )
        if fs.exists(f"{root}/{table}")
        else []
    )
    parts = []
    for path in paths:
        with fs.open(path, "rb") as handle:
            parts.append(pq.read_table(handle, columns=columns))
    return (
        pa.concat_tables(parts) if parts else pa.table({name: pa.array([], pa.string()) for name in columns})
    )


@pytest.fixture
def lake_rows() -> Callable[..., pa.Table]:
    """`lake_rows(fs, root, table, columns)`: see read_lake_table."""
    return read_lake_table


@pytest.fixture
def find_duplicates() -> Callable[[list[Any]], list[Any]]:
    return lambda keys: [key for key, count in Counter(keys).items() if count > 1]
