"""DSH-5: an export writes the filtered extract to the lake and returns a short-lived URL; on S3 (the
local moto server, through the real minio SDK and pyarrow — the same code runs against MinIO) a
presigned GET whose expiry and signature are checked with botocore; after revocation the extract is
gone and the URL stops working. The embedded city's local-folder lake serves the extract through the
service's own HTTP listener under an HMAC-signed, expiring link.

moto does not enforce a presigned URL's expiry (MinIO and S3 do); the expiry is therefore checked as
what the URL says (`X-Amz-Expires`, `X-Amz-Date`) and that the signature over it is valid."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from unittest import mock
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import grpc
import httpx
import pyarrow.parquet as pq
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.agreements import expire_due
from cityos_datashare.testing import LONG_ROWS, Share, fill, long_lake, running_share
from cityos_platform.lake import Lake
from cityos_platform.testing.status import error_info

pytestmark = pytest.mark.req("DSH-5")


@pytest.fixture
async def on_s3(start_server, dev_issuer, mint, tmp_path, clock, s3_bucket):  # type: ignore[no-untyped-def]
    lake = Lake.from_settings(s3_bucket.lake_settings(), tmp_path)
    fill(lake)
    url = f"sqlite+aiosqlite:///{tmp_path / 'datashare.sqlite'}"
    app, server, channel = await running_share(start_server, dev_issuer, mint, tmp_path, clock, url, lake)
    yield Share(app, channel, mint, clock), s3_bucket
    await channel.close()
    await server.stop(grace=0)
    await app.stop()


def expected_signature(url: str, access_key: str, secret_key: str) -> tuple[dict[str, str], str]:
    """The URL's query parameters, and the SigV4 signature botocore makes for the same object, key, region,
    expiry and signing time."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    region = params["X-Amz-Credential"].split("/")[2]
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    auth = S3SigV4QueryAuth(
        Credentials(access_key, secret_key), "s3", region, expires=int(params["X-Amz-Expires"])
    )
    request = AWSRequest(method="GET", url=urlunsplit(parts._replace(query="")))
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at):
        auth.add_auth(request)
    return params, dict(parse_qsl(urlsplit(request.url).query))["X-Amz-Signature"]


async def test_a_presigned_url_downloads_the_extract_until_the_agreement_is_revoked(on_s3):
    share, bucket = on_s3
    agreement = await share.approved("parking_occupancy", share.terms(["site", "status"], areas=["rongdong"]))
    export = await share.access.Export(
        pb.ExportRequest(query=pb.QueryRequest(agreement=agreement.name), url_ttl_seconds=300),
        metadata=share.consumer,
    )
    assert export.row_count == 24
    assert export.receipt.kind == pb.ACCESS_KIND_EXPORT
    params, signature = expected_signature(export.url, bucket.access_key, bucket.secret_key)
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Expires"] == "300"
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((signed_at + timedelta(seconds=300)) - export.expire_time.ToDatetime(tzinfo=UTC)) < timedelta(
        seconds=5
    )
    assert params["X-Amz-Signature"] == signature
    async with httpx.AsyncClient() as client:
        response = await client.get(export.url)
        assert response.status_code == 200
        extract = pq.read_table(io.BytesIO(response.content))
        assert extract.num_rows == 24
        assert extract.column_names == ["site", "status"]
        # A URL whose expiry was pushed back no longer carries the signature of its parameters (MinIO
        # refuses it; moto verifies no signatures).
        forged = export.url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")
        forged_params, forged_expected = expected_signature(forged, bucket.access_key, bucket.secret_key)
        assert forged_params["X-Amz-Signature"] != forged_expected
        await share.agreements.RevokeAgreement(
            pb.RevokeAgreementRequest(name=agreement.name, reason="done"), metadata=share.owner
        )
        assert (await client.get(export.url)).status_code == 404
    assert not share.app.lake.exists(
        share.app.exports.path(agreement.name.split("/")[1], export.name.split("/")[-1])
    )


async def test_the_embedded_link_is_signed_expires_and_dies_with_the_agreement(share):
    agreement = await share.approved("parking_occupancy", share.terms(["site"]))
    export = await share.access.Export(
        pb.ExportRequest(query=pb.QueryRequest(agreement=agreement.name), url_ttl_seconds=60),
        metadata=share.consumer,
    )
    assert export.url.startswith(share.app.http_url + "/exports/")
    async with httpx.AsyncClient() as client:
        response = await client.get(export.url)
        assert response.status_code == 200
        assert pq.read_table(io.BytesIO(response.content)).num_rows == 48
        assert (await client.get(export.url.replace("signature=", "signature=0"))).status_code == 403
        share.clock.advance(seconds=61)
        assert (await client.get(export.url)).status_code == 403
        share.clock.advance(seconds=-61)
        await share.agreements.RevokeAgreement(
            pb.RevokeAgreementRequest(name=agreement.name, reason="done"), metadata=share.owner
        )
        assert (await client.get(export.url)).status_code == 404


@pytest.fixture
async def long_export(start_server, dev_issuer, mint, tmp_path, clock):  # type: ignore[no-untyped-def]
    """A datashare over `long_lake` (an export of it takes a while), on SQLite."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'datashare.sqlite'}"
    lake = long_lake(tmp_path / "long-lake")
    app, server, channel = await running_share(
        start_server, dev_issuer, mint, tmp_path, clock, url, lake, batch_rows=2000
    )
    yield Share(app, channel, mint, clock)
    await channel.close()
    await server.stop(grace=0)
    await app.stop()


@pytest.mark.req("DSH-2")
@pytest.mark.slow
async def test_a_revocation_during_an_export_leaves_no_extract_behind(long_export):
    """Revocations at several moments of an export of 100,000 rows — before its first batch, between
    batches, during the upload, after it was recorded: whatever the order, once the revocation is done no
    extract of the agreement can be downloaded and none is left in the lake."""
    share = long_export
    outcomes = set()
    async with httpx.AsyncClient() as client:
        for delay in (0.0, 0.05, 0.2, 0.5, None):  # None: once the export is done
            agreement = await share.approved("parking_occupancy", share.terms(["site", "change_source"]))
            export = asyncio.ensure_future(
                share.access.Export(
                    pb.ExportRequest(query=pb.QueryRequest(agreement=agreement.name)), metadata=share.consumer
                )
            )
            if delay is None:
                await asyncio.wait([export])
            else:
                await asyncio.sleep(delay)
            await share.agreements.RevokeAgreement(
                pb.RevokeAgreementRequest(name=agreement.name, reason="incident"), metadata=share.owner
            )
            [made] = await asyncio.gather(export, return_exceptions=True)
            if isinstance(made, grpc.aio.AioRpcError):
                assert error_info(made).reason == "AGREEMENT_NOT_IN_FORCE"
                outcomes.add("refused")
            else:
                assert made.row_count == LONG_ROWS
                assert (await client.get(made.url)).status_code == 404
                outcomes.add("made, then deleted")
            folder = share.app.lake.path("_datashare", "exports", agreement.name.split("/")[1])
            assert share.app.lake.list_files(folder) == []
            receipts = await share.receipts.ListReceipts(
                pb.ListReceiptsRequest(agreement=agreement.name), metadata=share.owner
            )
            assert len(receipts.receipts) == 1
    assert outcomes == {"refused", "made, then deleted"}  # the last revocation comes after the export


async def test_the_expiry_sweep_deletes_the_extracts_of_an_expired_agreement(share):
    agreement = await share.approved("parking_occupancy", share.terms(["site"], days=1))
    export = await share.access.Export(
        pb.ExportRequest(query=pb.QueryRequest(agreement=agreement.name), url_ttl_seconds=3600),
        metadata=share.consumer,
    )
    path = share.app.exports.path(agreement.name.split("/")[1], export.name.split("/")[-1])
    assert share.app.lake.exists(path)
    share.clock.advance(days=1)
    assert await expire_due(share.app.db, share.app.exports.delete_for) == [agreement.name.split("/")[1]]
    assert not share.app.lake.exists(path)
