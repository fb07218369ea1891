"""What the datashare service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's own dataset with two agreements another organization asked for (B decides them), and an
agreement by which B reads a city table (B reads under it). Organization A must neither see nor decide
B's agreements, nor read under B's agreement, nor change or publish B's dataset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2

from cityos.common.v1 import events_pb2
from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

CATALOG = "/cityos.datashare.v1.CatalogService/"
AGREEMENTS = "/cityos.datashare.v1.AgreementService/"
ACCESS = "/cityos.datashare.v1.AccessService/"
RECEIPTS = "/cityos.datashare.v1.ReceiptService/"
OPEN_DATA = "/cityos.datashare.v1.OpenDataService/"
PUBLIC_CATALOG = (
    "the catalog describes datasets and holds no data: anyone may read it (the API marks it public)"
)
PUBLIC_OPEN_DATA = "open data is published to everyone, without a token (public in the API)"
EXEMPT = {
    CATALOG + "GetDataset": PUBLIC_CATALOG,
    CATALOG + "ListDatasets": PUBLIC_CATALOG,
    OPEN_DATA + "ListOpenDatasets": PUBLIC_OPEN_DATA,
    OPEN_DATA + "QueryOpenData": PUBLIC_OPEN_DATA,
    AGREEMENTS + "RequestAgreement": (
        "any organization may ask for any dataset of the public catalog: asking reads and changes nothing "
        "of the owner's; the owner decides (ApproveAgreement/RejectAgreement are checked here)"
    ),
    RECEIPTS + "VerifyReceipts": (
        "answers whether the whole chain holds (a count and the head hash), no receipt's content"
    ),
}
CITY_DATASET = "parking_occupancy"  # a table of the installed registry, owned by `transport`


def _expiry(days: int = 30) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(days=days))
    return stamp


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    b_admin = token(organization, ["org-admin", "analyst"])
    requester = token(f"{organization}-partner", ["org-admin", "analyst"])
    city_owner = token("transport", ["org-admin"])
    catalog = datashare_pb2_grpc.CatalogServiceStub(channel)
    agreements = datashare_pb2_grpc.AgreementServiceStub(channel)
    dataset = pb.Dataset(
        dataset_id="b_counts",
        display_name="B counts",
        kind=pb.DATASET_KIND_LAKE_TABLE,
        fields=[
            pb.DatasetField(name="count", type="int64", classification=pb.CLASSIFICATION_PUBLIC),
            pb.DatasetField(
                name="time", type="timestamp[us, tz=UTC]", classification=pb.CLASSIFICATION_PUBLIC
            ),
        ],
        time_column="time",
    )
    await catalog.RegisterDataset(pb.RegisterDatasetRequest(dataset=dataset), metadata=b_admin)

    async def ask(dataset_name: str, metadata: tuple[tuple[str, str], ...]) -> pb.Agreement:
        agreement: pb.Agreement = await agreements.RequestAgreement(
            pb.RequestAgreementRequest(
                agreement=pb.Agreement(
                    dataset=dataset_name,
                    purpose="tenancy check: a partner's study",
                    requested_terms=pb.Terms(
                        columns=["count"] if "b_counts" in dataset_name else ["site"], expire_time=_expiry()
                    ),
                )
            ),
            metadata=metadata,
        )
        return agreement

    to_approve = await ask("datasets/b_counts", requester)
    to_reject = await ask("datasets/b_counts", requester)
    reading = await ask(f"datasets/{CITY_DATASET}", b_admin)
    await agreements.ApproveAgreement(pb.ApproveAgreementRequest(name=reading.name), metadata=city_owner)
    # B reads under it once: the receipt is B's (as consumer).
    access = datashare_pb2_grpc.AccessServiceStub(channel)
    async for _ in access.Query(pb.QueryRequest(agreement=reading.name), metadata=b_admin):
        pass

    case = TenancyCase(names=["b_counts", to_approve.name, to_reject.name, reading.name])
    add = case.requests.__setitem__
    add(CATALOG + "RegisterDataset", pb.RegisterDatasetRequest(dataset=dataset))
    add(
        CATALOG + "PublishOpenData",
        pb.PublishOpenDataRequest(
            name="datasets/b_counts", publication=pb.OpenDataPublication(columns=["count"])
        ),
    )
    add(CATALOG + "WithdrawOpenData", pb.WithdrawOpenDataRequest(name="datasets/b_counts"))
    add(AGREEMENTS + "GetAgreement", pb.GetAgreementRequest(name=to_approve.name))
    add(AGREEMENTS + "ListAgreements", pb.ListAgreementsRequest())
    add(ACCESS + "Query", pb.QueryRequest(agreement=reading.name))
    add(ACCESS + "Export", pb.ExportRequest(query=pb.QueryRequest(agreement=reading.name)))
    add(RECEIPTS + "ListReceipts", pb.ListReceiptsRequest())
    add("/cityos.common.v1.EventService/StreamEvents", events_pb2.StreamEventsRequest(follow=False))
    add(AGREEMENTS + "ApproveAgreement", pb.ApproveAgreementRequest(name=to_approve.name))
    add(AGREEMENTS + "RejectAgreement", pb.RejectAgreementRequest(name=to_reject.name, reason="no"))
    add(AGREEMENTS + "RevokeAgreement", pb.RevokeAgreementRequest(name=to_approve.name, reason="ended"))
    case.listings = {
        AGREEMENTS + "ListAgreements",
        RECEIPTS + "ListReceipts",
        "/cityos.common.v1.EventService/StreamEvents",
    }
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
