"""Test support for datashare (its tests and the cross-service ones): parking rows in two districts for a
local lake, a running datashare with its stubs and ready-made callers of several organizations, and
helpers to make agreements through the API. Test-only; imported by services/datashare/tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import timestamp_pb2

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare.access import table_of
from cityos_datashare.app import DatashareApp
from cityos_datashare.settings import DatashareSettings
from cityos_datashare.terms import scope_cells
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.lake import Lake, table, write_rows
from cityos_platform.testing.fixtures import authenticator_for, bearer

OWNER = "transport"
CONSUMER = "ecology-bureau"
STRANGER = "utilities"
DAY = datetime(2026, 11, 20, tzinfo=UTC)
AREAS = AreaRegistry.default()
RONGDONG = sorted(scope_cells(AREAS, ["rongdong"]))[:3]
RONGXI = sorted(scope_cells(AREAS, ["rongxi"]))[:3]


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def occupancy_rows() -> pa.Table:
    """48 spot changes over two days: 24 in Rongdong (sites r1, r2), 24 in Rongxi (site x1)."""
    rows: dict[str, list[Any]] = {name: [] for name in table("parking_occupancy").schema.names}
    for n in range(48):
        east = n % 2 == 0
        site = ("sites/r1" if n % 4 == 0 else "sites/r2") if east else "sites/x1"
        cells = RONGDONG if east else RONGXI
        rows["event_id"].append(f"e{n:03d}")
        rows["site"].append(site)
        rows["spot"].append(f"spots/{site[6:]}-{n % 5}")
        rows["group"].append(None)
        rows["status"].append("OCCUPIED" if n % 3 else "FREE")
        rows["previous_status"].append("FREE" if n % 3 else "OCCUPIED")
        rows["previous_duration_s"].append(float(60 * n))
        rows["change_source"].append("sensor")
        rows["owner_organization"].append(OWNER)
        rows["area_cell"].append(cells[n % len(cells)])
        rows["time"].append(DAY + timedelta(hours=n))
    return pa.table(rows)


def event_rows() -> pa.Table:
    """Parking events with plate pseudonyms: site r1 has 5 entries, r2 has 2, x1 has 1."""
    spec = table("parking_events")
    rows: dict[str, list[Any]] = {name: [] for name in spec.schema.names}
    for n, site in enumerate(["sites/r1"] * 5 + ["sites/r2"] * 2 + ["sites/x1"]):
        rows["event_id"].append(f"p{n:03d}")
        rows["type"].append("parking.session.started")
        rows["schema_version"].append(1)
        rows["source"].append("parking")
        rows["subject"].append(f"sessions/s{n}")
        rows["owner_organization"].append(OWNER)
        rows["area_cell"].append((RONGXI if site == "sites/x1" else RONGDONG)[0])
        rows["time"].append(DAY + timedelta(minutes=10 * n))
        rows["payload_type"].append(None)
        rows["payload"].append(None)
        rows["traceparent"].append(None)
        rows["site"].append(site)
        rows["spot"].append(None)
        rows["plate_pseudonym"].append(f"pp{n % 6}")
    return pa.table(rows)


def fill(lake: Lake) -> None:
    write_rows(lake, table("parking_occupancy"), occupancy_rows(), "test")
    write_rows(lake, table("parking_events"), event_rows(), "test")


class Share:
    """A running datashare, its stubs and callers."""

    def __init__(self, app: DatashareApp, channel: grpc.aio.Channel, mint: Any, clock: ManualClock) -> None:
        self.app, self.channel, self.clock = app, channel, clock
        self._mint = mint
        self.catalog = datashare_pb2_grpc.CatalogServiceStub(channel)
        self.agreements = datashare_pb2_grpc.AgreementServiceStub(channel)
        self.access = datashare_pb2_grpc.AccessServiceStub(channel)
        self.receipts = datashare_pb2_grpc.ReceiptServiceStub(channel)
        self.open_data = datashare_pb2_grpc.OpenDataServiceStub(channel)
        self.owner = self.token("users/olga", OWNER, "org-admin")
        self.consumer = self.token("users/eve", CONSUMER, "analyst")
        self.consumer_admin = self.token("users/eva", CONSUMER, "org-admin")
        self.stranger = self.token("users/sam", STRANGER, "org-admin", "analyst")

    def token(self, subject: str, organization: str, *roles: str) -> tuple[tuple[str, str], ...]:
        return bearer(self._mint(subject, organization, list(roles)))

    def terms(self, columns: list[str], days: float = 30, **fields: Any) -> pb.Terms:
        return pb.Terms(columns=columns, expire_time=stamp(self.clock.now() + timedelta(days=days)), **fields)

    async def request(
        self, dataset: str, terms: pb.Terms, purpose: str = "air quality vs traffic study"
    ) -> pb.Agreement:
        agreement: pb.Agreement = await self.agreements.RequestAgreement(
            pb.RequestAgreementRequest(
                agreement=pb.Agreement(dataset=f"datasets/{dataset}", purpose=purpose, requested_terms=terms)
            ),
            metadata=self.consumer,
        )
        return agreement

    async def approved(self, dataset: str, terms: pb.Terms, granted: pb.Terms | None = None) -> pb.Agreement:
        agreement = await self.request(dataset, terms)
        approve = pb.ApproveAgreementRequest(name=agreement.name, reason="ok")
        if granted is not None:
            approve.terms.CopyFrom(granted)
        approved: pb.Agreement = await self.agreements.ApproveAgreement(approve, metadata=self.owner)
        return approved

    async def query(
        self, request: pb.QueryRequest, metadata: Any = None
    ) -> tuple[pa.Table, pb.QueryResponse]:
        batches, last = [], pb.QueryResponse()
        async for message in self.access.Query(request, metadata=metadata or self.consumer):
            if message.arrow_ipc:
                batches.append(message.arrow_ipc)
            last = message
        return table_of(batches), last


async def running_share(start_server, dev_issuer, mint, tmp_path, clock, database_url, lake, **settings):  # type: ignore[no-untyped-def]
    app = DatashareApp(
        load_settings(var_dir=tmp_path / "var", events_poll_interval_s=0.05),
        database_url=database_url,
        clock=clock,
        datashare_settings=DatashareSettings(http_port=0, **settings),
        lake=lake,
        authenticator=authenticator_for(dev_issuer),
        live_channels={},
        run_tasks=False,
    )
    mounts = await app.start()
    server = await start_server(mounts)
    channel = grpc.aio.insecure_channel(server.address)
    return app, server, channel


LONG_ROWS = 100_000


def long_lake(folder: Path) -> Lake:
    """A lake of 100,000 status changes of about 250 bytes each (25 MB: far more than HTTP/2 lets a
    server send ahead of its reader, and an export that takes a while)."""
    lake = Lake.local(folder)
    n = pa.array(range(LONG_ROWS))
    rows = {
        "event_id": pc.cast(n, pa.string()),
        "site": pa.array(["sites/r1"] * LONG_ROWS),
        "spot": pa.array(["spots/r1-0"] * LONG_ROWS),
        "group": pa.nulls(LONG_ROWS, pa.string()),
        "status": pa.array(["OCCUPIED"] * LONG_ROWS),
        "previous_status": pa.nulls(LONG_ROWS, pa.string()),
        "previous_duration_s": pa.nulls(LONG_ROWS, pa.float64()),
        "change_source": pc.binary_join_element_wise(pc.cast(n, pa.string()), "x" * 240, ""),
        "owner_organization": pa.array([OWNER] * LONG_ROWS),
        "area_cell": pa.nulls(LONG_ROWS, pa.string()),
        "time": pa.array(
            [DAY + timedelta(seconds=k) for k in range(LONG_ROWS)], pa.timestamp("us", tz="UTC")
        ),
    }
    write_rows(lake, table("parking_occupancy"), pa.table(rows), "long")
    return lake
