"""The embedded city's data sharing, seeded through the API when `cityos dev` starts (the
`cityos.simulators` entry point), with the simulator's city-admin token (a city-wide role acts for
the owners):

- open data: parking status changes (`parking_occupancy`: site, status, time) and the city's sensor
  statistics (`device_telemetry`: mean, min and max of each metric per device type, groups of at least 5
  readings);
- an agreement of the city office for a Rongdong parking dashboard, asked for and approved on narrower
  terms (its last 90 days, only the columns it needs).

Every step is idempotent — publishing again changes nothing, and the agreement a previous start asked for
is found among the city office's agreements (by its purpose) and reused while it stands — so a restart of
the city seeds nothing twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc

log = logging.getLogger(__name__)
DASHBOARD_PURPOSE = "Rongdong parking dashboard of the city office (occupancy by site and hour)"


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def seed(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], now: datetime | None = None
) -> pb.Agreement:
    catalog = datashare_pb2_grpc.CatalogServiceStub(channel)
    agreements = datashare_pb2_grpc.AgreementServiceStub(channel)
    await catalog.PublishOpenData(
        pb.PublishOpenDataRequest(
            name="datasets/parking_occupancy",
            publication=pb.OpenDataPublication(columns=["site", "status", "time"]),
        ),
        metadata=metadata,
        timeout=10,
    )
    await catalog.PublishOpenData(
        pb.PublishOpenDataRequest(
            name="datasets/device_telemetry",
            publication=pb.OpenDataPublication(
                columns=["device_type", "metric", "value"],
                group_by=["device_type", "metric"],
                aggregates=[
                    pb.Aggregate(function=pb.AGGREGATE_FUNCTION_MEAN, column="value"),
                    pb.Aggregate(function=pb.AGGREGATE_FUNCTION_MIN, column="value"),
                    pb.Aggregate(function=pb.AGGREGATE_FUNCTION_MAX, column="value"),
                ],
                min_group_size=5,
            ),
        ),
        metadata=metadata,
        timeout=10,
    )
    now = now or datetime.now(UTC).replace(microsecond=0)
    expiry = now + timedelta(days=365)
    agreement = await _standing_dashboard_agreement(agreements, metadata)
    if agreement is None:
        agreement = await agreements.RequestAgreement(
            pb.RequestAgreementRequest(
                agreement=pb.Agreement(
                    dataset="datasets/parking_occupancy",
                    purpose=DASHBOARD_PURPOSE,
                    requested_terms=pb.Terms(
                        columns=["site", "spot", "status", "time", "area_cell"],
                        areas=["rongdong"],
                        expire_time=_stamp(expiry),
                    ),
                ),
            ),
            metadata=metadata,
            timeout=10,
        )
    if agreement.state == pb.AGREEMENT_STATE_REQUESTED:
        agreement = await agreements.ApproveAgreement(
            pb.ApproveAgreementRequest(
                name=agreement.name,
                terms=pb.Terms(
                    columns=["site", "status", "time", "area_cell"],
                    areas=["rongdong"],
                    window_start=_stamp(now - timedelta(days=90)),
                    expire_time=agreement.requested_terms.expire_time,
                ),
                reason="approved for the dashboard; spot-level ids are not needed for it",
            ),
            metadata=metadata,
            timeout=10,
        )
    result: pb.Agreement = agreement
    return result


async def _standing_dashboard_agreement(
    agreements: datashare_pb2_grpc.AgreementServiceStub, metadata: tuple[tuple[str, str], ...]
) -> pb.Agreement | None:
    """The demo agreement a previous start made, if it is still requested or approved."""
    token = ""
    while True:
        page = await agreements.ListAgreements(
            pb.ListAgreementsRequest(
                role=pb.AGREEMENT_ROLE_CONSUMER, dataset="datasets/parking_occupancy", page_token=token
            ),
            metadata=metadata,
            timeout=10,
        )
        for agreement in page.agreements:
            standing = (pb.AGREEMENT_STATE_REQUESTED, pb.AGREEMENT_STATE_APPROVED)
            if agreement.purpose == DASHBOARD_PURPOSE and agreement.state in standing:
                found: pb.Agreement = agreement
                return found
        token = page.next_page_token
        if not token:
            return None


async def run_embedded(endpoints: dict[str, str], token: str, var_dir: Path, speedup: float) -> None:
    """The `cityos.simulators` entry point: open data and a demo agreement once the city is up."""
    if "datashare" not in endpoints:
        return
    async with grpc.aio.insecure_channel(endpoints["datashare"]) as channel:
        agreement = await seed(channel, (("authorization", f"Bearer {token}"),))
    url_file = var_dir / "datashare-http-url"
    where = url_file.read_text() if url_file.exists() else "(see the datashare log)"
    log.info(
        "datashare: open data published; %s is %s; NGSI-LD at %s/ngsi-ld/v1/entities",
        agreement.name,
        pb.AgreementState.Name(agreement.state),
        where,
    )
