"""FND-2: SIGTERM during an in-flight call drains gracefully.

A real `cityos serve` process: health turns NOT_SERVING, the in-flight call completes, new calls are
refused, and the process exits 0 within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.launcher import free_port, health_status

DRAIN_S = 1.0
GRACE_S = 5.0


def _wait_serving(address: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else "server exited"
        if health_status(address) == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.1)
    raise AssertionError("server did not become SERVING")


@pytest.mark.slow
@pytest.mark.req("FND-2")
def test_sigterm_drains_in_flight_call_refuses_new_ones_and_exits_within_grace(registered_conformance):
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **registered_conformance,
        "CITYOS_PORT": str(port),
        "CITYOS_DRAIN_DELAY_S": str(DRAIN_S),
        "CITYOS_GRACE_S": str(GRACE_S),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos_platform.cli", "serve", "conformance"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_serving(address, process)
        in_flight: dict[str, object] = {}

        def slow_call() -> None:
            with grpc.insecure_channel(address) as channel:
                stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
                try:
                    in_flight["reply"] = stub.Echo(
                        conformance_pb2.EchoRequest(message="finish me", delay_ms=2500), timeout=15
                    )
                except grpc.RpcError as error:
                    in_flight["error"] = error

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.4)  # the call is in the handler now
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Health turns NOT_SERVING first (while the drain delay lets load balancers notice).
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            seen = None
            while time.monotonic() - signalled < DRAIN_S:
                seen = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if seen == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert seen == health_pb2.HealthCheckResponse.NOT_SERVING

        # After the drain delay, new calls are refused while the in-flight one is still running.
        time.sleep(max(0.0, DRAIN_S + 0.3 - (time.monotonic() - signalled)))
        assert caller.is_alive()
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                conformance_pb2_grpc.ConformanceServiceStub(channel).Echo(
                    conformance_pb2.EchoRequest(message="too late"), timeout=2
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        caller.join(timeout=15)
        assert "error" not in in_flight, in_flight.get("error")
        assert in_flight["reply"].message == "finish me"

        code = process.wait(timeout=DRAIN_S + GRACE_S + 2)
        elapsed = time.monotonic() - signalled
        assert code == 0
        assert elapsed < DRAIN_S + GRACE_S
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.req("FND-2")
async def test_draining_ends_watch_streams_at_once_so_the_grace_is_not_spent_waiting(
    start_server, mint, tmp_path
):
    """A follow stream never ends by itself: draining ends it with UNAVAILABLE (reason SERVER_DRAINING,
    a retry hint) so the client resumes from its cursor, and the stop does not wait out the grace."""
    from cityos.common.v1 import events_pb2, events_pb2_grpc, policy_pb2
    from cityos_platform.db import Database
    from cityos_platform.events import event_stream_mount
    from cityos_platform.migrate import PLATFORM_CHAIN, upgrade
    from cityos_platform.testing.fixtures import bearer
    from cityos_platform.testing.status import error_info

    url = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    await upgrade(url, [PLATFORM_CHAIN])
    db = Database(url, source="test")
    server = await start_server([event_stream_mount(db, poll_interval_s=0.05)], grace_s=30)
    token = bearer(mint("users/ana", "org-a", ["operator"]))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stream = events_pb2_grpc.EventServiceStub(channel).StreamEvents(
            events_pb2.StreamEventsRequest(follow=True), metadata=token
        )
        reading = asyncio.ensure_future(stream.read())  # opens the stream; nothing comes while idle
        while not server.runtime.limits.streams_total.get(policy_pb2.STREAM_CLASS_WATCH):
            await asyncio.sleep(0.05)
        started = time.monotonic()
        async with asyncio.timeout(25):
            stopping = asyncio.ensure_future(server.stop(grace=30))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await reading
            await stopping
        elapsed = time.monotonic() - started
    await db.close()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(ended.value).reason == "SERVER_DRAINING"
    assert elapsed < 15, f"the stop waited {elapsed:.1f} s of its 30 s grace for a watch stream"


@pytest.mark.slow
@pytest.mark.req("FND-2")
def test_workers_share_one_port_and_stop_together(registered_conformance):
    """CITYOS_WORKERS=2: a supervisor runs two processes of the service on one port (SO_REUSEPORT),
    both listen on it, and SIGTERM stops them all with status 0."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**registered_conformance, "CITYOS_PORT": str(port), "CITYOS_WORKERS": "2", "CITYOS_GRACE_S": "2"}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "cityos_platform.cli", "serve", "conformance"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_serving(address, supervisor)
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
        deadline = time.monotonic() + 60
        while len(children.read_text().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(pid) for pid in children.read_text().split()]
        assert len(workers) == 2
        # Each worker binds its own listening socket on the port; the kernel spreads connections. The
        # second binds after the first answered (seconds on a loaded machine): wait for it.
        listening: set[int] = set()
        while listening != set(workers) and time.monotonic() < deadline:
            listening = {pid for pid in workers if _listens_on(pid, port)}
            time.sleep(0.1)
        assert listening == set(workers)
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in workers)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def _listens_on(pid: int, port: int) -> bool:
    """Whether the process holds the listening socket of the port (each worker binds its own)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    listening = (
        Path("/proc/net/tcp").read_text().splitlines()[1:]
        + Path("/proc/net/tcp6").read_text().splitlines()[1:]
    )
    for line in listening:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
            return True
    return False


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    return True
