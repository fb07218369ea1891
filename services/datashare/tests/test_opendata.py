"""DSH-4: open data is readable without a token in its published form, and rate limited per client;
datasets that are not published are not readable that way, and a publication cannot expose restricted
columns row by row."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.access import table_of
from cityos_datashare.opendata import RateLimiter
from cityos_platform.testing.status import detail, error_info, field_violations, rich_status

pytestmark = pytest.mark.req("DSH-4")


async def read_open(share, dataset: str, metadata=None):  # type: ignore[no-untyped-def]
    batches, last = [], pb.QueryOpenDataResponse()
    async for message in share.open_data.QueryOpenData(
        pb.QueryOpenDataRequest(dataset=f"datasets/{dataset}"), metadata=metadata
    ):
        batches.append(message.arrow_ipc)
        last = message
    return table_of(batches), last


async def publish(share, dataset: str, publication: pb.OpenDataPublication) -> pb.Dataset:  # type: ignore[no-untyped-def]
    return await share.catalog.PublishOpenData(
        pb.PublishOpenDataRequest(name=f"datasets/{dataset}", publication=publication), metadata=share.owner
    )


async def test_an_anonymous_reader_gets_the_published_form_only(share):
    with pytest.raises(grpc.aio.AioRpcError) as unpublished:
        await read_open(share, "parking_occupancy")
    assert unpublished.value.code() == grpc.StatusCode.NOT_FOUND
    published = await publish(
        share, "parking_occupancy", pb.OpenDataPublication(columns=["site", "status", "time"])
    )
    assert list(published.open_data.columns) == ["site", "status", "time"]
    rows, _ = await read_open(share, "parking_occupancy")
    assert rows.num_rows == 48
    assert rows.column_names == ["site", "status", "time"]
    listed = await share.open_data.ListOpenDatasets(pb.ListOpenDatasetsRequest())
    assert [d.dataset_id for d in listed.datasets] == ["parking_occupancy"]
    # The anonymous read left a receipt the owner sees.
    receipts = await share.receipts.ListReceipts(
        pb.ListReceiptsRequest(dataset="datasets/parking_occupancy"), metadata=share.owner
    )
    assert [(r.kind, r.row_count, r.subject) for r in receipts.receipts] == [
        (pb.ACCESS_KIND_OPEN_DATA, 48, "")
    ]
    await share.catalog.WithdrawOpenData(
        pb.WithdrawOpenDataRequest(name="datasets/parking_occupancy"), metadata=share.owner
    )
    with pytest.raises(grpc.aio.AioRpcError) as withdrawn:
        await read_open(share, "parking_occupancy")
    assert withdrawn.value.code() == grpc.StatusCode.NOT_FOUND


async def test_personal_data_is_published_only_aggregated_above_the_floor(share):
    with pytest.raises(grpc.aio.AioRpcError) as rows:
        await publish(share, "parking_events", pb.OpenDataPublication(columns=["site", "plate_pseudonym"]))
    assert "publication.columns" in [field for field, _ in field_violations(rows.value)]
    await publish(
        share,
        "parking_occupancy",
        pb.OpenDataPublication(
            columns=["site", "previous_duration_s"],
            group_by=["site"],
            aggregates=[pb.Aggregate(function=pb.AGGREGATE_FUNCTION_MEAN, column="previous_duration_s")],
            min_group_size=20,
        ),
    )
    groups, last = await read_open(share, "parking_occupancy")
    # r1 has 12 rows and r2 12 (below 20), x1 24: only x1 is published.
    assert groups.column_names == ["site", "row_count", "previous_duration_s_mean"]
    assert groups["site"].to_pylist() == ["sites/x1"]
    assert last.suppressed_groups == 2
    with pytest.raises(grpc.aio.AioRpcError) as internal_key:
        await publish(
            share,
            "parking_events",
            pb.OpenDataPublication(columns=["site"], group_by=["site"], min_group_size=3),
        )
    assert "publication.group_by" in [field for field, _ in field_violations(internal_key.value)]


async def test_only_the_owner_publishes(share):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await share.catalog.PublishOpenData(
            pb.PublishOpenDataRequest(
                name="datasets/parking_occupancy", publication=pb.OpenDataPublication(columns=["site"])
            ),
            metadata=share.stranger,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_each_client_is_rate_limited(share):
    await publish(share, "parking_occupancy", pb.OpenDataPublication(columns=["site"]))
    now = [0.0]  # the service's limiter on a clock the test moves (calls take real time on a busy machine)
    share.app.open_data.limiter = RateLimiter(10, clock=lambda: now[0])
    for _ in range(10):  # the burst: 10 requests in the same instant
        await share.open_data.ListOpenDatasets(pb.ListOpenDatasetsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await share.open_data.ListOpenDatasets(pb.ListOpenDatasetsRequest())
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(limited.value).reason == "RATE_LIMITED"
    retry = detail(rich_status(limited.value), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(0.1)  # when a token is back
    with pytest.raises(grpc.aio.AioRpcError):
        await read_open(share, "parking_occupancy")  # the stream counts against the same bucket
    now[0] += 0.1  # a tenth of a second later: one more
    await share.open_data.ListOpenDatasets(pb.ListOpenDatasetsRequest())
    # Another client (a token's client id) has its own bucket.
    other = share.token("users/app", "public", "developer")
    await share.open_data.ListOpenDatasets(pb.ListOpenDatasetsRequest(), metadata=other)


def test_the_bucket_refills_at_the_rate():
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(10)] == [0.0] * 10
    assert limiter.take("a") == pytest.approx(0.1)
    now[0] += 0.5
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0
