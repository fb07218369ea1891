"""Unary throughput of the CityOS server runtime against a bare grpc.aio server, in the same run.

Both servers serve the generated ConformanceService Echo on loopback; 32 concurrent callers send calls
for a fixed time. The baseline is a bare `grpc.aio.server()` with a servicer that only builds the reply;
the runtime adds the whole interceptor chain (policy lookup, admission, span, metric, access log).

    python bench/unary.py [--seconds 3] [--concurrency 32] [--bare-only]

A third run sends an RS256 bearer token with every call.

Prints `RESULT bare_calls_per_s=… runtime_calls_per_s=… runtime_vs_bare=… token_vs_bare=…`.
`--bare-only` needs only grpcio and the generated stubs (PYTHONPATH=proto/gen/python): it is how
grpcio versions were compared
(docs/adr/ADR-0002-grpcio-version.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import grpc

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc


class BareEcho(conformance_pb2_grpc.ConformanceServiceServicer):
    async def Echo(self, request, context):
        return conformance_pb2.EchoResponse(message=request.message)


async def _drive(address: str, seconds: float, concurrency: int, metadata: tuple = ()) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        request = conformance_pb2.EchoRequest(message="ping")
        await stub.Echo(request, timeout=5, metadata=metadata)  # connect and warm up
        stop_at = time.perf_counter() + seconds
        counts = [0] * concurrency

        async def caller(index: int) -> None:
            while time.perf_counter() < stop_at:
                await stub.Echo(request, timeout=5, metadata=metadata)
                counts[index] += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return sum(counts) / (time.perf_counter() - started)


async def bare(seconds: float, concurrency: int) -> float:
    server = grpc.aio.server()
    conformance_pb2_grpc.add_ConformanceServiceServicer_to_server(BareEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await _drive(f"127.0.0.1:{port}", seconds, concurrency)
    finally:
        await server.stop(0)


async def runtime(seconds: float, concurrency: int, *, with_token: bool = False) -> float:
    """The full chain: anonymous callers, or callers with an RS256 token verified on every call."""
    from cityos_platform.accesslog import AccessLog
    from cityos_platform.config import load_settings
    from cityos_platform.issuer import DevIssuer, DevIssuerServer
    from cityos_platform.server import serve
    from cityos_platform.telemetry import Telemetry
    from cityos_platform.testing import conformance
    from cityos_platform.testing.fixtures import authenticator_for, bearer

    logging.getLogger("cityos.access").setLevel(logging.INFO)
    logging.getLogger("cityos.access").addHandler(logging.NullHandler())
    logging.getLogger("cityos.access").propagate = False
    with tempfile.TemporaryDirectory() as scratch:
        issuer = DevIssuerServer(DevIssuer(Path(scratch) / "issuer"))
        issuer.start()
        settings = load_settings(host="127.0.0.1", port=0, unary_concurrency=10_000)
        running = await serve(
            [conformance.mount()],
            settings,
            telemetry=Telemetry.from_providers(),
            authenticator=authenticator_for(issuer),
            access_log=AccessLog(Path(scratch) / "access.jsonl"),
        )
        metadata = bearer(issuer.issuer.mint("bench", "city-office", ["operator"])) if with_token else ()
        try:
            return await _drive(running.address, seconds, concurrency, metadata)
        finally:
            await running.stop(grace=0)
            issuer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bare-only", action="store_true")
    args = parser.parse_args()
    bare_rate = await bare(args.seconds, args.concurrency)
    if args.bare_only:
        print(f"RESULT grpcio={grpc.__version__} bare_calls_per_s={bare_rate:.0f}")
        return
    runtime_rate = await runtime(args.seconds, args.concurrency)
    token_rate = await runtime(args.seconds, args.concurrency, with_token=True)
    print(
        f"RESULT grpcio={grpc.__version__} bare_calls_per_s={bare_rate:.0f} "
        f"runtime_calls_per_s={runtime_rate:.0f} runtime_vs_bare={runtime_rate / bare_rate:.2f} "
        f"token_calls_per_s={token_rate:.0f} token_vs_bare={token_rate / bare_rate:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
