"""What enforcement costs a datashare read: the same rows read under an agreement through the running
service (gRPC `AccessService/Query`, Arrow IPC batches) against pyarrow reading them straight from the
lake files with the same pushed-down filter — measured in the same run.

- The lake: a temporary local lake holding `parking_occupancy` for 400 sites over 30 days (`--rows`,
  default 1,000,000 rows), half of the rows in Rongdong and half in Rongxi, written by the lake's own
  writer (`write_rows`).
- The service: `DatashareApp` in this process (SQLite, the development issuer's tokens verified on
  every call, the access log on), served by the platform's `serve` on an ephemeral port; an agreement of
  `ecology-bureau` on `parking_occupancy` for four columns, Rongdong only and the first 20 days, made and
  approved through the API.
- `query_vs_arrow`: the row-level read (about a third of the rows: Rongdong, 20 days) as a Query stream
  collected into one Arrow table, against `plan_read` + the lake reader over the same files with the same
  filter (area cells and window) in this process. The service also re-reads the agreement before every
  batch, writes a signed receipt at the end and serializes every batch to IPC and through gRPC.
- `aggregate_vs_arrow`: the grouped read under an aggregation floor of 10 (row count and mean
  `previous_duration_s` by site), against pyarrow's `group_by` over the same filtered table.
- The row counts and the groups must agree. Each pair runs once to warm up, then `--repeat` times
  alternating; the ratios are of the medians.

    python bench/datashare.py [--rows 1000000] [--repeat 5] [--batch-rows 10000]

Last line: `RESULT query_vs_arrow=<x> aggregate_vs_arrow=<x> rows=<n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import timestamp_pb2

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_platform.lake import Lake, table, write_rows

START = datetime(2026, 10, 1, tzinfo=UTC)
SITES = 400


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def generate(lake: Lake, rows: int) -> None:
    """`rows` status changes: site k % 400, every other row in Rongdong, spread evenly over 30 days."""
    import numpy as np

    from cityos_datashare.terms import scope_cells
    from cityos_platform.areas import AreaRegistry

    areas = AreaRegistry.default()
    east = np.array(sorted(scope_cells(areas, ["rongdong"])))
    west = np.array(sorted(scope_cells(areas, ["rongxi"])))
    k = np.arange(rows)
    cells = np.where(k % 2 == 0, east[(k // 2) % len(east)], west[(k // 2) % len(west)])
    start_us = int(START.timestamp() * 1_000_000)
    times = start_us + (k * (30 * 86400 * 1_000_000 // rows))
    sites = np.char.add("sites/s", (k % SITES).astype(str))
    rows_table = pa.table(
        {
            "event_id": pa.array(k.astype(str)),
            "site": pa.array(sites),
            "spot": pa.array(np.char.add(np.char.add(sites, "-"), (k % 32).astype(str))),
            "group": pa.nulls(rows, pa.string()),
            "status": pa.array(np.where(k % 3 == 0, "FREE", "OCCUPIED")),
            "previous_status": pa.nulls(rows, pa.string()),
            "previous_duration_s": pa.array((k % 4096).astype(float)),
            "change_source": pa.array(np.full(rows, "sensor")),
            "owner_organization": pa.array(np.full(rows, "transport")),
            "area_cell": pa.array(cells),
            "time": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )
    write_rows(lake, table("parking_occupancy"), rows_table, "bench")


async def timed(run: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await run()
    return time.perf_counter() - began, result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("cityos.access", "cityos_datashare", "cityos_platform"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from cityos_datashare.access import table_of
    from cityos_datashare.app import DatashareApp
    from cityos_datashare.settings import DatashareSettings
    from cityos_datashare.terms import scope_cells
    from cityos_platform.accesslog import AccessLog
    from cityos_platform.areas import AreaRegistry
    from cityos_platform.config import load_settings
    from cityos_platform.issuer import DevIssuer, DevIssuerServer
    from cityos_platform.lake.read import plan_read
    from cityos_platform.server import serve
    from cityos_platform.telemetry import Telemetry
    from cityos_platform.testing.fixtures import authenticator_for, bearer

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        lake = Lake.local(folder / "lake")
        began = time.perf_counter()
        generate(lake, args.rows)
        print(f"lake: {args.rows:,} rows of parking_occupancy written in {time.perf_counter() - began:.1f} s")
        issuer = DevIssuerServer(DevIssuer(folder / "issuer"))
        issuer.start()
        settings = load_settings(var_dir=folder / "var", host="127.0.0.1", port=0)
        app = DatashareApp(
            settings,
            datashare_settings=DatashareSettings(http_port=0, batch_rows=args.batch_rows),
            lake=lake,
            authenticator=authenticator_for(issuer),
            live_channels={},
            run_tasks=False,
        )
        server = await serve(
            await app.start(),
            settings,
            telemetry=Telemetry.from_providers(),
            authenticator=authenticator_for(issuer),
            access_log=AccessLog(folder / "access.jsonl"),
        )
        owner = bearer(issuer.issuer.mint("users/olga", "transport", ["org-admin"]))
        consumer = bearer(issuer.issuer.mint("users/eve", "ecology-bureau", ["analyst"]))
        window_end = START + timedelta(days=20)
        try:
            async with grpc.aio.insecure_channel(
                server.address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
            ) as channel:
                agreements = datashare_pb2_grpc.AgreementServiceStub(channel)
                access = datashare_pb2_grpc.AccessServiceStub(channel)

                async def agreement(floor: int) -> str:
                    made = await agreements.RequestAgreement(
                        pb.RequestAgreementRequest(
                            agreement=pb.Agreement(
                                dataset="datasets/parking_occupancy",
                                purpose="benchmark of enforced reads",
                                requested_terms=pb.Terms(
                                    columns=["site", "status", "time", "previous_duration_s"],
                                    areas=["rongdong"],
                                    window_start=stamp(START),
                                    window_end=stamp(window_end),
                                    min_group_size=floor,
                                    expire_time=stamp(datetime.now(UTC) + timedelta(days=1)),
                                ),
                            )
                        ),
                        metadata=consumer,
                    )
                    await agreements.ApproveAgreement(
                        pb.ApproveAgreementRequest(name=made.name), metadata=owner
                    )
                    return str(made.name)

                rows_agreement = await agreement(0)
                floor_agreement = await agreement(10)

                async def query(request: pb.QueryRequest) -> pa.Table:
                    messages = [m.arrow_ipc async for m in access.Query(request, metadata=consumer)]
                    return table_of(messages)

                cells = sorted(scope_cells(AreaRegistry.default(), ["rongdong"]))
                columns = ["site", "status", "time", "previous_duration_s"]

                def direct(wanted: list[str]) -> pa.Table:
                    plan = plan_read(
                        "parking_occupancy",
                        START,
                        window_end,
                        wanted,
                        [[("area_cell", "in", cells)]],
                        lake=lake,
                        partition_bytes=16 * 1024 * 1024,
                    )
                    return pa.concat_tables([plan.reader.arrow(group) for group in plan.groups])

                def direct_groups() -> pa.Table:
                    data = direct(["site", "previous_duration_s"])
                    grouped = data.group_by(["site"]).aggregate(
                        [([], "count_all"), ("previous_duration_s", "mean")]
                    )
                    return grouped.filter(pc.greater_equal(grouped["count_all"], 10))

                rows_request = pb.QueryRequest(agreement=rows_agreement)
                group_request = pb.QueryRequest(
                    agreement=floor_agreement,
                    group_by=["site"],
                    aggregates=[
                        pb.Aggregate(function=pb.AGGREGATE_FUNCTION_MEAN, column="previous_duration_s")
                    ],
                )
                # warm-up and agreement of the answers
                served = await query(rows_request)
                straight = direct(columns)
                assert served.num_rows == straight.num_rows, (served.num_rows, straight.num_rows)
                served_groups = await query(group_request)
                straight_groups = direct_groups()
                assert served_groups.num_rows == straight_groups.num_rows
                assert sum(served_groups["row_count"].to_pylist()) == sum(
                    straight_groups["count_all"].to_pylist()
                )
                print(f"rows read: {served.num_rows:,} of {args.rows:,}; groups: {served_groups.num_rows}")

                times: dict[str, list[float]] = {
                    "query": [],
                    "arrow": [],
                    "aggregate": [],
                    "arrow_groups": [],
                }
                for _ in range(args.repeat):
                    times["query"].append((await timed(lambda: query(rows_request)))[0])
                    times["arrow"].append((await timed(lambda: asyncio.to_thread(direct, columns)))[0])
                    times["aggregate"].append((await timed(lambda: query(group_request)))[0])
                    times["arrow_groups"].append((await timed(lambda: asyncio.to_thread(direct_groups)))[0])
                medians = {name: statistics.median(values) for name, values in times.items()}
                for name, value in medians.items():
                    print(f"{name:>13}: median {value * 1000:8.1f} ms over {args.repeat} runs")
        finally:
            await server.stop(grace=0)
            await app.stop()
            issuer.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"RESULT query_vs_arrow={medians['query'] / medians['arrow']:.2f} "
        f"aggregate_vs_arrow={medians['aggregate'] / medians['arrow_groups']:.2f} rows={served.num_rows}"
    )


if __name__ == "__main__":
    asyncio.run(main())
