"""Telemetry ingest throughput of the running devices service on PostgreSQL, against two baselines
measured in the same run.

- streaming: `TelemetryService.Ingest` batches (validation, de-duplication, twin update, the durable
  spool, an ack per batch), a few batches in flight;
- naive: one reading per `Report` call, sequentially, through the same validation and durable path;
- copy: a raw asyncpg COPY of the same readings into a PostgreSQL table with the same columns and a
  primary key on (device, sequence) — the floor cost of making them durable at all.

The service runs as its own process (`cityos serve devices`), as in production, against a throwaway
database on the local PostgreSQL (`CITYOS_TEST_PG`, default postgres@127.0.0.1:5432).

    python bench/ingest.py [--readings 200000] [--batch 10000] [--devices 200] [--stream-runs 3]
                           [--copy-runs 3]

Both the streaming rate and the COPY baseline are medians of three runs (one run of either moved by
±25% between runs on these machines); each streaming run sends new readings.

It also prints the bench client's own CPU use while streaming (so a slow client is not mistaken for a
slow service). To see where the service spends its time, run it under a profiler: e.g.
BENCH_SERVICE_PYTHON_ARGS="-m cProfile -o /tmp/devices.prof", or attach `py-spy record -p <pid>`.

Last line: `RESULT ingest_readings_per_s=<n> vs_naive=<ratio> vs_copy=<ratio>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from cityos.common.v1 import resources_pb2
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_platform.issuer import DevIssuer, DevIssuerServer
from cityos_platform.launcher import free_port, health_status
from cityos_platform.testing.fixtures import bearer

# e.g. BENCH_SERVICE_PYTHON_ARGS="-m cProfile -o /tmp/devices.prof" profiles the service process.
PROFILE_ARGS = os.environ.get("BENCH_SERVICE_PYTHON_ARGS", "").split()
ADMIN = os.environ.get("CITYOS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def plan(devices: int, total: int, start: datetime, first: int = 1) -> list[tuple[int, int, datetime, float]]:
    """(device index, sequence, time, value) for `total` readings spread over the devices, sequences
    from `first` on."""
    per_device = total // devices
    return [
        (d, s, start + timedelta(milliseconds=s), float(s % 2))
        for s in range(first, first + per_device)
        for d in range(devices)
    ]


async def provision(channel: grpc.aio.Channel, operator: tuple, devices: int) -> None:
    registry = devices_pb2_grpc.DeviceServiceStub(channel)
    await registry.CreateDeviceModel(
        devices_pb2.CreateDeviceModelRequest(
            device_model=devices_pb2.DeviceModel(
                type="parking.sensor",
                vendor="Bench",
                metrics=[
                    devices_pb2.MetricSpec(name="occupied", unit="1", min=0, max=1),
                    devices_pb2.MetricSpec(name="battery_v", unit="V", min=0, max=4.2),
                ],
                reporting_interval=duration_pb2.Duration(seconds=60),
            ),
            device_model_id="bench",
        ),
        metadata=operator,
    )
    creates = [
        devices_pb2.CreateDeviceRequest(
            device=devices_pb2.Device(
                model="deviceModels/bench",
                location=resources_pb2.GeoPoint(latitude=39.0 + d / 10000, longitude=115.95),
            ),
            device_id=f"d-{d:05d}",
        )
        for d in range(devices + 1)
    ]
    for i in range(0, len(creates), 1000):
        await registry.BatchCreateDevices(
            devices_pb2.BatchCreateDevicesRequest(requests=creates[i : i + 1000]),
            metadata=operator,
            timeout=120,
        )


def _reading(sequence: int, when: datetime, value: float) -> devices_pb2.Reading:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return devices_pb2.Reading(sequence=sequence, time=stamp, values={"occupied": value, "battery_v": 3.6})


async def streaming(channel: grpc.aio.Channel, operator: tuple, readings: list, batch: int) -> float:
    telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
    requests = []
    for number, start in enumerate(range(0, len(readings), batch)):
        grouped: dict[int, list[devices_pb2.Reading]] = {}
        for d, s, when, value in readings[start : start + batch]:
            grouped.setdefault(d, []).append(_reading(s, when, value))
        requests.append(
            devices_pb2.IngestRequest(
                batch_id=number,
                devices=[
                    devices_pb2.DeviceReadings(device=f"devices/d-{d:05d}", readings=r)
                    for d, r in grouped.items()
                ],
            )
        )
    in_flight = asyncio.Semaphore(8)

    async def send():
        for request in requests:
            await in_flight.acquire()
            yield request

    accepted = 0
    started, cpu = time.perf_counter(), time.process_time()
    async for ack in telemetry.Ingest(send(), metadata=operator):
        in_flight.release()
        accepted += ack.accepted
    elapsed = time.perf_counter() - started
    print(f"bench client cpu while streaming: {(time.process_time() - cpu) / elapsed:.0%} of one core")
    assert accepted == len(readings), f"accepted {accepted} of {len(readings)}"
    return accepted / elapsed


async def naive(channel: grpc.aio.Channel, token: tuple, seconds: float) -> float:
    telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
    now = datetime.now(UTC)
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        sent += 1
        reply = await telemetry.Report(
            devices_pb2.ReportRequest(device="devices/d-naive", readings=[_reading(sent, now, 1.0)]),
            metadata=token,
        )
        assert reply.accepted == 1
    return sent / (time.perf_counter() - started)


async def copy(dsn: str, readings: list, runs: int) -> float:
    """The COPY baseline's median over `runs` runs, each into a fresh table (one COPY is noisy here)."""
    rates = sorted([await copy_once(dsn, readings) for _ in range(runs)])
    return rates[len(rates) // 2]


async def copy_once(dsn: str, readings: list) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP TABLE IF EXISTS copy_baseline")
        await connection.execute(
            "CREATE TABLE copy_baseline (seq bigserial, device_id varchar(63) NOT NULL,"
            " sequence bigint NOT NULL, time timestamptz NOT NULL, values json NOT NULL,"
            " type varchar(63) NOT NULL,"
            " owner_organization varchar(64) NOT NULL, area_cell varchar(16) NOT NULL,"
            " received_time timestamptz NOT NULL, PRIMARY KEY (device_id, sequence))"
        )
        now = datetime.now(UTC)
        records = [
            (
                f"d-{d:05d}",
                s,
                when,
                json.dumps({"occupied": value, "battery_v": 3.6}),
                "parking.sensor",
                "bench",
                "8931aa3b2d7ffff",
                now,
            )
            for d, s, when, value in readings
        ]
        columns = [
            "device_id",
            "sequence",
            "time",
            "values",
            "type",
            "owner_organization",
            "area_cell",
            "received_time",
        ]
        started = time.perf_counter()
        await connection.copy_records_to_table("copy_baseline", records=records, columns=columns)
        return len(records) / (time.perf_counter() - started)
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--naive-seconds", type=float, default=5.0)
    parser.add_argument("--copy-runs", type=int, default=3, help="the COPY baseline is the median of these")
    parser.add_argument(
        "--stream-runs", type=int, default=3, help="the streaming rate is the median of these"
    )
    args = parser.parse_args()

    name = f"cityos_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{ADMIN.rpartition('/')[0]}/{name}"
    scratch = tempfile.TemporaryDirectory()
    issuer = DevIssuerServer(DevIssuer(Path(scratch.name) / "issuer"))
    issuer.start()
    port = free_port()
    env = {
        **os.environ,
        "CITYOS_PORT": str(port),
        "CITYOS_VAR_DIR": scratch.name,
        "CITYOS_DATABASE_URL": dsn,
        "CITYOS_AUTH_ISSUER": issuer.issuer.issuer_url,
        "CITYOS_LOG_LEVEL": "WARNING",
    }
    service = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, *PROFILE_ARGS, "-m", "cityos_platform.cli", "serve", "devices"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        while health_status(f"127.0.0.1:{port}") != 1:
            assert service.poll() is None, "the devices service did not start"
            await asyncio.sleep(0.2)
        operator = bearer(issuer.issuer.mint("bench", "bench", ["operator"], ttl_s=3600))
        start = datetime.now(UTC) - timedelta(hours=1)
        readings = plan(args.devices, args.readings, start)
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
        ) as channel:
            await provision(channel, operator, args.devices)
            registry = devices_pb2_grpc.DeviceServiceStub(channel)
            await registry.CreateDevice(
                devices_pb2.CreateDeviceRequest(
                    device=devices_pb2.Device(
                        model="deviceModels/bench",
                        location=resources_pb2.GeoPoint(latitude=39.0, longitude=115.95),
                    ),
                    device_id="d-naive",
                ),
                metadata=operator,
            )
            token = await registry.IssueDeviceToken(
                devices_pb2.IssueDeviceTokenRequest(device="devices/d-naive"), metadata=operator
            )
            naive_rate = await naive(channel, bearer(token.token), args.naive_seconds)
            # Each run sends new readings (later sequences), so nothing is dropped as a duplicate.
            per_device = args.readings // args.devices
            stream_rates = sorted(
                [
                    await streaming(
                        channel,
                        operator,
                        plan(args.devices, args.readings, start, first=1 + run * per_device),
                        args.batch,
                    )
                    for run in range(args.stream_runs)
                ]
            )
            stream_rate = stream_rates[len(stream_rates) // 2]
        copy_rate = await copy(dsn, readings, args.copy_runs)
    finally:
        service.terminate()
        service.wait(timeout=30)
        issuer.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        scratch.cleanup()
    print("streaming runs (readings/s): " + ", ".join(f"{rate:.0f}" for rate in stream_rates))
    print(f"naive_readings_per_s={naive_rate:.0f} copy_rows_per_s={copy_rate:.0f} readings={len(readings)}")
    print(
        f"RESULT ingest_readings_per_s={stream_rate:.0f} vs_naive={stream_rate / naive_rate:.1f} "
        f"vs_copy={stream_rate / copy_rate:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
