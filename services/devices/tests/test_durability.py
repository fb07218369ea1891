"""DEV-5: an ack means durable. A batch acked before `kill -9` of the service process is there after a
restart; when the durable write fails, no ack is sent (and nothing half-written remains)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2
from sqlalchemy import text

from cityos.common.v1 import resources_pb2
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_platform.launcher import free_port, health_status
from cityos_platform.testing.fixtures import bearer


def _reading(sequence: int) -> devices_pb2.Reading:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(datetime.now(UTC))
    return devices_pb2.Reading(sequence=sequence, time=when, values={"occupied": float(sequence % 2)})


class ServiceProcess:
    """`cityos serve devices` as its own process, as the launcher and Kubernetes run it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = int(env["CITYOS_PORT"])
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cityos_platform.cli", "serve", "devices"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read().decode()[-2000:]
            if health_status(f"127.0.0.1:{self.port}") == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise AssertionError("devices did not become SERVING")

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.req("DEV-5")
async def test_a_batch_acked_before_kill_9_is_there_after_restart(database_url, dev_issuer, mint, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "CITYOS_PORT": str(port),
        "CITYOS_VAR_DIR": str(tmp_path / "var"),
        "CITYOS_DATABASE_URL": database_url,
        "CITYOS_AUTH_ISSUER": dev_issuer.issuer.issuer_url,
    }
    service = ServiceProcess(env)
    operator = bearer(mint("olga", "transport", ["operator"]))
    reader = bearer(mint("parking-svc", "city", ["service"]))
    try:
        service.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            registry = devices_pb2_grpc.DeviceServiceStub(channel)
            telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
            await registry.CreateDeviceModel(
                devices_pb2.CreateDeviceModelRequest(
                    device_model=devices_pb2.DeviceModel(
                        type="parking.sensor",
                        vendor="Acme",
                        metrics=[devices_pb2.MetricSpec(name="occupied", unit="1", min=0, max=1)],
                        reporting_interval=duration_pb2.Duration(seconds=60),
                    ),
                    device_model_id="geomag",
                ),
                metadata=operator,
                timeout=10,
            )
            await registry.CreateDevice(
                devices_pb2.CreateDeviceRequest(
                    device=devices_pb2.Device(
                        model="deviceModels/geomag",
                        location=resources_pb2.GeoPoint(latitude=39.0, longitude=115.95),
                    ),
                    device_id="pk-1",
                ),
                metadata=operator,
                timeout=10,
            )
            token = await registry.IssueDeviceToken(
                devices_pb2.IssueDeviceTokenRequest(device="devices/pk-1"), metadata=operator, timeout=10
            )
            ack = await telemetry.Report(
                devices_pb2.ReportRequest(
                    device="devices/pk-1", readings=[_reading(n) for n in range(1, 51)]
                ),
                metadata=bearer(token.token),
                timeout=10,
            )
            assert ack.accepted == 50
        service.kill9()  # no graceful shutdown: whatever was acked must already be on disk

        service.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
            sequences = []
            async for batch in telemetry.SubscribeTelemetry(
                devices_pb2.SubscribeTelemetryRequest(follow=False), metadata=reader, timeout=10
            ):
                sequences += [r.reading.sequence for r in batch.records]
            assert sequences == list(range(1, 51))
            # The device's credential survived too, and its next batch continues the stream.
            again = await telemetry.Report(
                devices_pb2.ReportRequest(device="devices/pk-1", readings=[_reading(50), _reading(51)]),
                metadata=bearer(token.token),
                timeout=10,
            )
            assert (again.accepted, again.duplicates) == (1, 1)
    finally:
        service.stop()


async def _refuse_spool_writes(db) -> None:
    """A real failure of the database write (a trigger refusing inserts, as a full disk or a lost
    primary would), not a mock."""
    async with db.transaction() as tx:
        if db.dialect == "postgresql":
            await tx.session.execute(
                text(
                    "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$"
                )
            )
            await tx.session.execute(
                text(
                    "CREATE TRIGGER disk_full BEFORE INSERT ON telemetry"
                    " FOR EACH ROW EXECUTE FUNCTION refuse_writes()"
                )
            )
        else:
            await tx.session.execute(
                text(
                    "CREATE TRIGGER disk_full BEFORE INSERT ON telemetry "
                    "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                )
            )


async def _allow_spool_writes(db) -> None:
    async with db.transaction() as tx:
        await tx.session.execute(
            text("DROP TRIGGER disk_full" + (" ON telemetry" if db.dialect == "postgresql" else ""))
        )


@pytest.mark.req("DEV-5")
async def test_when_the_durable_write_fails_no_ack_is_sent_and_nothing_is_kept(fleet):
    """The call fails, and neither readings nor last-seen state change."""
    await fleet.model()
    await fleet.device("pk-1")
    token = await fleet.device_token("pk-1")
    db = fleet.app.db
    await _refuse_spool_writes(db)
    request = devices_pb2.ReportRequest(device="devices/pk-1", readings=[_reading(1), _reading(2)])
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await fleet.telemetry.Report(request, metadata=token, timeout=10)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "No space" not in failed.value.details()
    assert "disk" not in failed.value.details()
    device = await fleet.registry.GetDevice(
        devices_pb2.GetDeviceRequest(name="devices/pk-1"), metadata=fleet.operator
    )
    assert not device.HasField("last_seen_time")  # the twin update rolled back with the write
    await _allow_spool_writes(db)
    # The device retries the same batch once the store is back: accepted, once.
    retried = await fleet.telemetry.Report(request, metadata=token, timeout=10)
    assert (retried.accepted, retried.duplicates) == (2, 0)


@pytest.mark.req("DEV-5")
async def test_a_bulk_batch_whose_write_fails_is_not_acked_and_earlier_acks_stand(fleet):
    """Ingest with several batches in flight: the batch written before the store failed keeps its ack
    and its readings; the failing batch (large, so on PostgreSQL it takes the COPY path) gets no ack,
    the call ends with INTERNAL, and nothing of it is kept."""
    await fleet.model()
    await fleet.device("pk-1")
    db = fleet.app.db
    first_acked = asyncio.Event()

    async def batches():
        yield devices_pb2.IngestRequest(
            batch_id=1,
            devices=[devices_pb2.DeviceReadings(device="devices/pk-1", readings=[_reading(1), _reading(2)])],
        )
        await first_acked.wait()
        await _refuse_spool_writes(db)
        yield devices_pb2.IngestRequest(
            batch_id=2,
            devices=[
                devices_pb2.DeviceReadings(
                    device="devices/pk-1", readings=[_reading(n) for n in range(100, 400)]
                )
            ],
        )

    acks = []

    async def consume():
        async for ack in fleet.telemetry.Ingest(batches(), metadata=fleet.operator, timeout=30):
            acks.append((ack.batch_id, ack.accepted))
            first_acked.set()

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await consume()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert acks == [(1, 2)]
    await _allow_spool_writes(db)
    async with db.read() as session:
        stored = (await session.execute(text("SELECT sequence FROM telemetry ORDER BY sequence"))).scalars()
        assert list(stored) == [1, 2]
