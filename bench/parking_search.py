"""SearchAvailability of the running parking service over 10,000 spots: 64 calls in flight (grpc.aio)
against a sequential loop of the same calls, measured in the same run.

Setup
- PostgreSQL, the production store: a throwaway database on the local server (`CITYOS_TEST_PG`, default
  postgres@127.0.0.1:5432), dropped at the end. SQLite would measure the embedded mode's file locking
  and aiosqlite's thread hand-offs instead of the service.
- The service runs as its own process (`cityos serve parking`), as in production: the bench client
  does not compete with it for the GIL, and every call crosses a real loopback gRPC connection with a
  bearer token verified by the service.
- The city (about 100 sites around 39.0 N 115.95 E, 100 spots each, sensor states, BALANCING garages
  with gate counts, a few sites with opening hours, reservations now and ahead) is bulk-inserted
  through the service's own models after its migrations ran and before it starts: seeding through
  10,000 CreateSpot calls would only make the bench slower, not the measurement different.

Calls: a fixed, seeded mix of what a parking app asks — a point in the city, a radius of 300 m to 2 km,
sites (90 %, the default level) or single spots (10 %), any vehicle or a car or a motorcycle, now (90 %)
or a time in the next two days (10 %). The same list runs sequentially (one call at a time: the
baseline) and with 64 in flight; p50 and p99 are the concurrent run's latencies in its steady state (the
first call of each of the 64 callers, sent all at once, is counted in the throughput but not in the
percentiles), rps its throughput,
and `aio_vs_sequential` the concurrent throughput over the sequential one.

    python bench/parking_search.py [--calls 3000] [--concurrency 64] [--spots 10000] [--sites 100]

To see where the service spends its time: BENCH_SERVICE_PYTHON_ARGS="-m cProfile -o /tmp/parking.prof",
or attach `py-spy record -p <pid>`.

Last line: `RESULT search_p50_ms=<x> search_p99_ms=<y> rps=<n> aio_vs_sequential=<ratio>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import insert

from cityos.common.v1 import resources_pb2
from cityos.parking.v1 import availability_pb2, availability_pb2_grpc, parking_pb2, reservations_pb2
from cityos_parking.app import CHAIN
from cityos_parking.models import ReservationRow, SiteRow, SpotRow
from cityos_platform.areas import cell_for
from cityos_platform.db import Database
from cityos_platform.issuer import DevIssuer, DevIssuerServer
from cityos_platform.launcher import free_port, health_status
from cityos_platform.migrate import PLATFORM_CHAIN, upgrade
from cityos_platform.testing.fixtures import bearer

PROFILE_ARGS = os.environ.get("BENCH_SERVICE_PYTHON_ARGS", "").split()
ADMIN = os.environ.get("CITYOS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CENTER = (39.0, 115.95)
HALF_SIDE_M = 4000.0  # sites spread over an 8 km square around the center
METRES_PER_DEGREE = 111_195.0


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / METRES_PER_DEGREE, lng + east_m / (METRES_PER_DEGREE * 0.7771)


def tariff(rng: random.Random) -> dict:
    proto = parking_pb2.Tariff(
        price_per_minute=rng.choice(["0.05", "0.08", "0.1"]), currency="CNY", time_zone="Asia/Shanghai"
    )
    if rng.random() < 0.1:  # a few sites keep office hours
        proto.opening_hours.append(
            parking_pb2.WeeklyWindow(weekdays=[1, 2, 3, 4, 5], start="07:00", end="21:00")
        )
    return json_format.MessageToDict(proto)


async def seed(dsn: str, sites: int, spots: int, rng: random.Random) -> None:
    """The city, written straight into the service's tables (see the module doc)."""
    await upgrade(dsn, [PLATFORM_CHAIN, CHAIN])
    db = Database(dsn, source="parking")
    now = datetime.now(UTC)
    site_rows, spot_rows, reservation_rows = [], [], []
    per_site = spots // sites
    for s in range(sites):
        lat, lng = offset(
            *CENTER, rng.uniform(-HALF_SIDE_M, HALF_SIDE_M), rng.uniform(-HALF_SIDE_M, HALF_SIDE_M)
        )
        garage = s % 10 == 0
        site_id = f"site-{s:03d}"
        site_rows.append(
            {
                "site_id": site_id,
                "display_name": f"Site {s:03d}",
                "kind": parking_pb2.SITE_KIND_OFF_STREET if garage else parking_pb2.SITE_KIND_ON_STREET,
                "detection_type": (
                    parking_pb2.DETECTION_TYPE_BALANCING
                    if garage
                    else parking_pb2.DETECTION_TYPE_SINGLE_SPACE
                ),
                "allowed_vehicle_types": ["car", "motorcycle"] if s % 3 == 0 else ["car"],
                "tariff": tariff(rng),
                "capacity": 0,
                "gate_occupied": rng.randint(0, per_site) if garage else 0,
                "announced_status": 0,
                "latitude": lat,
                "longitude": lng,
                "area_cell": cell_for(lat, lng),
                "owner_organization": "bench",
                "operator_organization": "",
                "maintainer_organization": "",
                "etag": uuid.uuid4().hex[:16],
                "create_time": now,
                "update_time": now,
            }
        )
        for k in range(per_site):
            spot_lat, spot_lng = offset(lat, lng, rng.uniform(-150, 150), rng.uniform(-150, 150))
            status = rng.choices(
                [
                    parking_pb2.SPOT_STATUS_FREE,
                    parking_pb2.SPOT_STATUS_OCCUPIED,
                    parking_pb2.SPOT_STATUS_CLOSED,
                    parking_pb2.SPOT_STATUS_UNKNOWN,
                ],
                [45, 40, 5, 10],
            )[0]
            spot_id = f"s{s:03d}-{k:03d}"
            spot_rows.append(
                {
                    "spot_id": spot_id,
                    "site_id": site_id,
                    "group_id": None,
                    "display_name": f"{k:03d}",
                    "sensor_id": None,
                    "width_m": 2.5,
                    "length_m": 5.0,
                    "allowed_vehicle_types": ["motorcycle"] if k % 20 == 0 else [],
                    "status": status,
                    "status_time": now,
                    "status_reason": "",
                    "sensor_status": 0,
                    "sensor_time": None,
                    "sensor_heard_time": None,
                    "forbidden_parking": False,
                    "latitude": spot_lat,
                    "longitude": spot_lng,
                    "area_cell": cell_for(spot_lat, spot_lng),
                    "etag": uuid.uuid4().hex[:16],
                    "create_time": now,
                    "update_time": now,
                }
            )
            if rng.random() < 0.05:  # reserved now or in the next two days
                start = now + timedelta(minutes=rng.choice([-30, rng.randint(30, 48 * 60)]))
                reservation_rows.append(
                    {
                        "reservation_id": f"r-{spot_id}",
                        "site_id": site_id,
                        "spot_id": spot_id,
                        "start_time": start,
                        "end_time": start + timedelta(hours=2),
                        "state": reservations_pb2.RESERVATION_STATE_HELD,
                        "hold_expire_time": start + timedelta(minutes=15),
                        "plate": None,
                        "plate_pseudonym": "0" * 64,
                        "vehicle_type": "car",
                        "permit": "",
                        "holder": "users/bench",
                        "holder_organization": "bench",
                        "session_id": None,
                        "reason": "",
                        "etag": "bench",
                        "create_time": now,
                        "update_time": now,
                    }
                )
    async with db.transaction() as tx:
        await tx.session.execute(insert(SiteRow), site_rows)
        for start in range(0, len(spot_rows), 2000):
            await tx.session.execute(insert(SpotRow), spot_rows[start : start + 2000])
        await tx.session.execute(insert(ReservationRow), reservation_rows)
    async with db.transaction() as tx:
        await tx.session.execute(__import__("sqlalchemy").text("ANALYZE"))
    await db.close()


def requests(
    count: int, rng: random.Random, spot_share: float = 0.2
) -> list[availability_pb2.SearchAvailabilityRequest]:
    now = datetime.now(UTC)
    made = []
    for _ in range(count):
        lat, lng = offset(
            *CENTER, rng.uniform(-HALF_SIDE_M, HALF_SIDE_M), rng.uniform(-HALF_SIDE_M, HALF_SIDE_M)
        )
        request = availability_pb2.SearchAvailabilityRequest(
            near=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
            radius_m=rng.choice([300.0, 500.0, 1000.0, 2000.0]),
            vehicle_type=rng.choice(["", "", "car", "motorcycle"]),
            level=(
                availability_pb2.SEARCH_LEVEL_SPOTS
                if rng.random() < spot_share
                else availability_pb2.SEARCH_LEVEL_SITES
            ),
            max_results=rng.choice([0, 10]),
        )
        if rng.random() < 0.1:
            at = timestamp_pb2.Timestamp()
            at.FromDatetime(now + timedelta(minutes=rng.randint(60, 48 * 60)))
            request.at.CopyFrom(at)
        made.append(request)
    return made


async def sequential(stub, calls, metadata) -> float:
    started = time.perf_counter()
    for request in calls:
        await stub.SearchAvailability(request, metadata=metadata, timeout=10)
    return len(calls) / (time.perf_counter() - started)


async def concurrent(stubs, calls, metadata, in_flight: int) -> tuple[float, list[float]]:
    """`in_flight` callers, spread over the clients' connections (`stubs`, one per channel)."""
    latencies: list[float] = []
    queue = iter(calls)

    async def caller(stub) -> None:
        first = True
        for request in queue:
            begun = time.perf_counter()
            await stub.SearchAvailability(request, metadata=metadata, timeout=10)
            if not first:  # the first calls all start at once: a burst, not the steady state
                latencies.append(time.perf_counter() - begun)
            first = False

    started = time.perf_counter()
    await asyncio.gather(*(caller(stubs[n % len(stubs)]) for n in range(in_flight)))
    return len(calls) / (time.perf_counter() - started), latencies


class CpuMeter:
    """CPU used during a phase by the service process, this client and the whole machine (Linux
    /proc), to tell which of them limits a run."""

    def __init__(self, service_pid: int) -> None:
        self.service_pid = service_pid

    def _pids(self) -> list[int]:
        """The service process and its workers (children), when it runs several."""
        children = Path(f"/proc/{self.service_pid}/task/{self.service_pid}/children")
        return [self.service_pid, *(int(pid) for pid in children.read_text().split())]

    def _sample(self) -> tuple[float, float, float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        service = 0.0
        for pid in self._pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            service += (int(fields[11]) + int(fields[12])) / tick
        times = os.times()
        machine = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(v) for v in machine[:3]) + sum(int(v) for v in machine[5:8])
        return time.perf_counter(), service, times.user + times.system, busy / tick

    def __enter__(self) -> CpuMeter:
        self.start = self._sample()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._sample()
        wall = end[0] - self.start[0]
        self.service, self.client, self.machine = ((end[i] - self.start[i]) / wall for i in (1, 2, 3))

    def __str__(self) -> str:
        return (
            f"cpu service={self.service:.0%} client={self.client:.0%} "
            f"machine={self.machine:.0%} of one core (of {os.cpu_count()})"
        )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--spots", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--spot-share", type=float, default=0.1, help="the share of SPOTS-level searches")
    parser.add_argument("--clients", type=int, default=64, help="client connections the callers spread over")
    parser.add_argument(
        "--workers", type=int, default=2, help="service worker processes (CITYOS_WORKERS; one per core)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)

    name = f"cityos_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{ADMIN.rpartition('/')[0]}/{name}"
    scratch = tempfile.TemporaryDirectory()
    issuer = DevIssuerServer(DevIssuer(Path(scratch.name) / "issuer"))
    issuer.start()
    service = None
    try:
        await seed(dsn, args.sites, args.spots, rng)
        port = free_port()
        env = {
            **os.environ,
            "CITYOS_PORT": str(port),
            "CITYOS_VAR_DIR": scratch.name,
            "CITYOS_DATABASE_URL": dsn,
            "CITYOS_AUTH_ISSUER": issuer.issuer.issuer_url,
            "CITYOS_LOG_LEVEL": "WARNING",
            "CITYOS_PARKING_FOLLOW_TELEMETRY": "false",
            "CITYOS_WORKERS": str(args.workers),
        }
        service = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, *PROFILE_ARGS, "-m", "cityos_platform.cli", "serve", "parking"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        while health_status(f"127.0.0.1:{port}") != 1 or len(CpuMeter(service.pid)._pids()) <= min(
            1, args.workers - 1
        ):
            assert service.poll() is None, "the parking service did not start"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2 if args.workers > 1 else 0)  # the other workers start after the first
        citizen = bearer(issuer.issuer.mint("users/bench", "public", ["citizen"], ttl_s=3600))
        # The client's own set-up (the seeded city, the call list) out of the collector's way: its full
        # collections would stall every call in flight and be measured as the service's latency.
        gc.collect()
        gc.freeze()
        calls = requests(args.calls, rng, args.spot_share)
        # Many drivers' apps: each connection its own (a channel per client); the sequential baseline is
        # one client asking one question after another. Unique channel arguments stop grpc from sharing
        # one subchannel (one TCP connection) between the channels.
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("cityos.bench.client", n)])
            for n in range(args.clients)
        ]
        async with contextlib.AsyncExitStack() as opened:
            for channel in channels:
                await opened.enter_async_context(channel)
            stubs = [availability_pb2_grpc.AvailabilityServiceStub(channel) for channel in channels]
            stub = stubs[0]
            found = 0
            for request in calls[:300]:  # warm up (and check the answers are not empty)
                answer = await stub.SearchAvailability(request, metadata=citizen, timeout=10)
                found += len(answer.sites) + len(answer.spots)
            assert found > 300, f"the searches found almost nothing ({found} results)"
            # Warm up the concurrent path too: the service opens its database connections on demand.
            await concurrent(stubs, calls, citizen, args.concurrency)
            with CpuMeter(service.pid) as sequential_cpu:
                sequential_rps = await sequential(stub, calls, citizen)
            with CpuMeter(service.pid) as concurrent_cpu:
                concurrent_rps, latencies = await concurrent(stubs, calls, citizen, args.concurrency)
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=30)
        issuer.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        scratch.cleanup()
    print(f"sequential: {sequential_rps:.0f} calls/s, {sequential_cpu}")
    print(f"concurrent: {concurrent_rps:.0f} calls/s, {concurrent_cpu}")
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    print(
        f"spots={args.spots} sites={args.sites} calls={args.calls} in_flight={args.concurrency} "
        f"workers={args.workers} clients={args.clients} "
        f"sequential_rps={sequential_rps:.0f} results_in_warmup={found}"
    )
    print(
        f"RESULT search_p50_ms={p50:.2f} search_p99_ms={p99:.2f} rps={concurrent_rps:.0f} "
        f"aio_vs_sequential={concurrent_rps / sequential_rps:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
