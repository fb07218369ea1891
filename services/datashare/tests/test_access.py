"""DSH-2: reads under an agreement — columns outside it refused, rows outside its scope never leave,
groups below the aggregation floor suppressed, a revocation stops a running stream, an expiry stops the
next read, and an organization without an agreement gets nothing. Every read leaves a receipt."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pyarrow.compute as pc
import pytest

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.testing import DAY, LONG_ROWS, RONGDONG, Share, long_lake, running_share, stamp
from cityos_platform.testing.status import error_info

pytestmark = pytest.mark.req("DSH-2")


async def test_rows_are_cut_to_the_agreed_areas_window_and_columns(share):
    agreement = await share.approved(
        "parking_occupancy",
        share.terms(
            ["site", "status", "time", "area_cell"],
            areas=["rongdong"],
            window_start=stamp(DAY),
            window_end=stamp(DAY + timedelta(hours=24)),
        ),
    )
    rows, last = await share.query(pb.QueryRequest(agreement=agreement.name))
    assert rows.num_rows == 12  # of 48: Rongdong only (every other row), first day only
    assert set(rows["area_cell"].to_pylist()) <= set(RONGDONG)
    assert pc.max(rows["time"]).as_py() < DAY + timedelta(hours=24)
    assert rows.column_names == ["site", "status", "time", "area_cell"]
    assert last.receipt.row_count == 12
    assert last.receipt.completed
    assert list(last.receipt.columns) == ["site", "status", "time", "area_cell"]
    # A request asking for more than the window gets no more.
    wider, _ = await share.query(
        pb.QueryRequest(agreement=agreement.name, start_time=stamp(DAY - timedelta(days=9)), columns=["site"])
    )
    assert wider.num_rows == 12
    assert wider.column_names == ["site"]
    # Conditions and limits apply within the scope.
    free, _ = await share.query(
        pb.QueryRequest(
            agreement=agreement.name,
            filter=[pb.Condition(column="status", operator=pb.OPERATOR_EQ, value="FREE")],
            limit=3,
        )
    )
    assert free.num_rows == 3
    assert set(free["status"].to_pylist()) == {"FREE"}


async def test_a_column_outside_the_agreement_is_refused(share):
    agreement = await share.approved("parking_occupancy", share.terms(["site", "status"]))
    for request in (
        pb.QueryRequest(agreement=agreement.name, columns=["site", "spot"]),
        pb.QueryRequest(
            agreement=agreement.name,
            columns=["site"],
            filter=[pb.Condition(column="spot", operator=pb.OPERATOR_EQ, value="spots/r1-0")],
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await share.query(request)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(refused.value).reason == "COLUMNS_NOT_GRANTED"
        assert error_info(refused.value).metadata["columns"] == "spot"


async def test_groups_below_the_floor_are_suppressed_and_personal_columns_never_leave_row_by_row(share):
    agreement = await share.approved(
        "parking_events", share.terms(["site", "plate_pseudonym", "time"], min_group_size=3)
    )
    with pytest.raises(grpc.aio.AioRpcError) as rows:
        await share.query(pb.QueryRequest(agreement=agreement.name, columns=["site"]))
    assert error_info(rows.value).reason == "AGGREGATION_REQUIRED"
    with pytest.raises(grpc.aio.AioRpcError) as keyed:
        await share.query(pb.QueryRequest(agreement=agreement.name, group_by=["plate_pseudonym"]))
    assert error_info(keyed.value).reason == "RESTRICTED_COLUMN_USE"
    groups, last = await share.query(
        pb.QueryRequest(
            agreement=agreement.name,
            group_by=["site"],
            aggregates=[pb.Aggregate(function=pb.AGGREGATE_FUNCTION_COUNT, column="plate_pseudonym")],
        )
    )
    # r1 has 5 rows, r2 2 and x1 1: only r1 reaches the floor of 3.
    assert groups.to_pylist() == [{"site": "sites/r1", "row_count": 5, "plate_pseudonym_count": 5}]
    assert last.suppressed_groups == 2
    assert last.receipt.row_count == 1


ROWS = LONG_ROWS


@pytest.fixture
async def long_read(start_server, dev_issuer, mint, tmp_path, clock, database_url):  # type: ignore[no-untyped-def]
    """A datashare over `long_lake`, streaming 1,000 rows per message."""
    lake = long_lake(tmp_path / "long-lake")
    app, server, channel = await running_share(
        start_server, dev_issuer, mint, tmp_path, clock, database_url, lake, batch_rows=1000
    )
    yield Share(app, channel, mint, clock)
    await channel.close()
    await server.stop(grace=0)
    await app.stop()


async def test_a_revocation_stops_a_running_stream(long_read):
    share = long_read
    agreement = await share.approved("parking_occupancy", share.terms(["site", "change_source", "time"]))
    seen = 0

    async def read_and_revoke_after_the_first_batch() -> None:
        nonlocal seen
        stream = share.access.Query(pb.QueryRequest(agreement=agreement.name), metadata=share.consumer)
        async for message in stream:
            if seen == 0:  # the reader holds back while the owner revokes
                await share.agreements.RevokeAgreement(
                    pb.RevokeAgreementRequest(name=agreement.name, reason="incident"), metadata=share.owner
                )
            seen += message.row_count

    with pytest.raises(grpc.aio.AioRpcError) as stopped:
        await read_and_revoke_after_the_first_batch()
    assert stopped.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(stopped.value).reason == "AGREEMENT_NOT_IN_FORCE"
    assert 0 < seen < ROWS
    receipts = await share.receipts.ListReceipts(
        pb.ListReceiptsRequest(agreement=agreement.name), metadata=share.owner
    )
    [receipt] = receipts.receipts
    assert not receipt.completed
    assert seen <= receipt.row_count < ROWS  # what the server sent (some may still be in flight)


async def test_an_expired_agreement_stops_the_next_read(share):
    agreement = await share.approved("parking_occupancy", share.terms(["site"], days=1))
    rows, _ = await share.query(pb.QueryRequest(agreement=agreement.name))
    assert rows.num_rows == 48
    share.clock.advance(days=1)  # no sweep has run: the read checks the time itself
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await share.query(pb.QueryRequest(agreement=agreement.name))
    assert error_info(expired.value).reason == "AGREEMENT_NOT_IN_FORCE"


async def test_an_organization_without_an_agreement_gets_nothing(share):
    requested = await share.request("parking_occupancy", share.terms(["site"]))
    with pytest.raises(grpc.aio.AioRpcError) as pending:
        await share.query(pb.QueryRequest(agreement=requested.name))
    assert error_info(pending.value).reason == "AGREEMENT_NOT_IN_FORCE"
    approved = await share.approved("parking_occupancy", share.terms(["site"]))
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await share.query(pb.QueryRequest(agreement=approved.name), metadata=share.stranger)
    assert stranger.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as export:
        await share.access.Export(
            pb.ExportRequest(query=pb.QueryRequest(agreement=approved.name)), metadata=share.stranger
        )
    assert export.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_reads_get_field_violations(share):
    agreement = await share.approved("parking_occupancy", share.terms(["site", "time"]))
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await share.query(
            pb.QueryRequest(
                agreement=agreement.name,
                filter=[pb.Condition(column="time", operator=pb.OPERATOR_GT, value="yesterday")],
                limit=-1,
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as name:
        await share.query(pb.QueryRequest(agreement="agreements/../../etc"))
    assert name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await asyncio.sleep(0)
