"""Open data: datasets their owners published, readable by anyone — no token needed — in the published
form only (`enforce.check_publication`: public columns row by row, or groups above a floor), and rate
limited per client.

The client is the token's client id (or subject) when the caller presents a token, else the peer's IP
address; each has a token bucket of `open_data_rate_per_s` requests per second (burst: the same number).
A request over the limit is RESOURCE_EXHAUSTED with RetryInfo saying when to try again. Buckets idle for a
minute are forgotten, so the table stays as small as the set of active clients.

An open-data read appends a receipt like any other (kind OPEN_DATA, no agreement, the anonymous reader
recorded as such), so an owner sees how its open data is used too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from sqlalchemy import select

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare import engine
from cityos_datashare.catalog import classification_of, dataset_proto, parse_dataset_name
from cityos_datashare.enforce import Measure, ReadSpec, plan
from cityos_datashare.models import DatasetRow
from cityos_datashare.receipts import AccessRecord, ReceiptLog, query_hash
from cityos_datashare.settings import DatashareSettings
from cityos_platform.auth import Principal
from cityos_platform.db import Database
from cityos_platform.errors import InvalidArgument, ResourceExhausted
from cityos_platform.interceptor import current_call
from cityos_platform.lake import Lake
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import not_found

IDLE_S = 60.0


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per client key."""

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, rate_per_s)
        self.clock = clock
        self.buckets: dict[str, _Bucket] = {}
        self._swept = 0.0

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        now = self.clock()
        if now - self._swept > IDLE_S:
            self.buckets = {k: b for k, b in self.buckets.items() if now - b.at < IDLE_S}
            self._swept = now
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def client_key(principal: Principal, peer: str) -> str:
    if not principal.is_anonymous:
        return f"client:{principal.client or principal.subject}"
    # "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678" -> the address without the port
    address = peer.split(":", 1)[1] if ":" in peer else peer
    return "ip:" + address.rsplit(":", 1)[0]


class OpenDataServicer(datashare_pb2_grpc.OpenDataServiceServicer):
    def __init__(
        self,
        db: Database,
        lake: Lake,
        receipts: ReceiptLog,
        page_tokens: PageTokens,
        settings: DatashareSettings,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.db = db
        self.lake = lake
        self.receipts = receipts
        self.page_tokens = page_tokens
        self.settings = settings
        self.limiter = limiter or RateLimiter(settings.open_data_rate_per_s)

    def _admit(self, context: grpc.aio.ServicerContext) -> Principal:
        caller = current_call().principal
        wait = self.limiter.take(client_key(caller, context.peer() or ""))
        if wait > 0:
            raise ResourceExhausted(
                f"open data allows {self.settings.open_data_rate_per_s:g} requests per second per client",
                reason="RATE_LIMITED",
                retry_after_s=math.ceil(wait * 1000) / 1000,
            )
        return caller

    async def ListOpenDatasets(
        self, request: pb.ListOpenDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOpenDatasetsResponse:
        self._admit(context)
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        rows, token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            select(DatasetRow).where(DatasetRow.open_data.is_not(None)),
            DatasetRow.dataset_id,
            size=page_size(request.page_size),
        )
        return pb.ListOpenDatasetsResponse(
            datasets=[dataset_proto(row) for row in rows if row.open_data], next_page_token=token
        )

    async def QueryOpenData(
        self, request: pb.QueryOpenDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QueryOpenDataResponse]:
        caller = self._admit(context)
        dataset_id = parse_dataset_name(request.dataset, "dataset")
        async with self.db.read() as session:
            dataset = await session.get(DatasetRow, dataset_id)
        if dataset is None or not dataset.open_data:
            raise not_found("open dataset", request.dataset)
        publication = dataset.open_data
        read = ReadSpec.from_proto(request)
        group_by = tuple(publication.get("group_by", ()))
        measures = tuple(
            Measure(engine_function(item["function"]), item.get("column", ""))
            for item in publication.get("aggregates", ())
            if item.get("column")
        )
        read = ReadSpec(
            columns=() if group_by else tuple(publication["columns"]),
            conditions=read.conditions,
            start=read.start,
            end=read.end,
            group_by=group_by,
            measures=measures,
            limit=read.limit,
        )
        checked = plan(
            dataset,
            publication["columns"],
            # The publication was checked when it was made; restricted columns it publishes are published
            # aggregated only, and its group keys are public.
            {name: cls for name, cls in classification_of(dataset).items() if name in publication["columns"]},
            read,
            min_group_size=int(publication.get("min_group_size", 0)),
            grant=None,
            max_rows=self.settings.max_rows,
        )
        outcome = engine.Outcome()

        async def published() -> bool:
            async with self.db.read() as session:
                current = await session.get(DatasetRow, dataset_id)
            return current is not None and bool(current.open_data)

        try:
            async for batch in engine.run(
                checked,
                self.lake,
                batch_rows=self.settings.batch_rows,
                still_granted=published,
                agreement=request.dataset,
                outcome=outcome,
            ):
                yield pb.QueryOpenDataResponse(arrow_ipc=engine.ipc_bytes(batch), row_count=batch.num_rows)
        finally:
            await asyncio.shield(
                self.receipts.append(
                    AccessRecord(
                        subject=caller.subject,
                        consumer_organization=caller.organization,
                        owner_organization=dataset.owner_organization,
                        dataset_id=dataset_id,
                        agreement_id="",
                        purpose="open data",
                        columns=checked.returned_columns,
                        row_count=outcome.rows,
                        query_hash=query_hash(request),
                        kind=pb.ACCESS_KIND_OPEN_DATA,
                        completed=outcome.completed,
                    )
                )
            )
        yield pb.QueryOpenDataResponse(suppressed_groups=outcome.suppressed_groups)


def engine_function(value: int) -> str:
    from cityos_datashare.enforce import FUNCTIONS

    return FUNCTIONS[value]
