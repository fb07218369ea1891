"""The embedded city's people: demo organizations, users, a service account and an API key, created
through the identity API when `cityos dev` starts (the `cityos.simulators` entry point). Every create
carries a fixed request id, so a restart finds them and creates nothing twice.

Organizations: the city office with its departments (transport, utilities, public works, the data
office, the ecology bureau), a private parking operator under a ten-year concession for Rongdong, and
the public. People: an org-admin and an operator in transport, an auditor in the city office, a
third-party developer in the public organization.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import grpc

from cityos.common.v1 import resources_pb2
from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_platform.seeding import create_or_keep

log = logging.getLogger(__name__)

DEPARTMENT = resources_pb2.ORGANIZATION_KIND_DEPARTMENT
DEPARTMENTS = [
    ("transport", "Transport Bureau"),
    ("utilities", "Water and Utilities"),
    ("public-works", "Public Works"),
    ("data-office", "City Data Office"),
    ("ecology-bureau", "Ecology and Environment Bureau"),
]
PEOPLE = [
    ("olga", "transport", ["org-admin"]),
    ("tom", "transport", ["operator"]),
    ("ada", "city-office", ["auditor"]),
    ("dev", "public", ["developer"]),
]


async def seed(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
    organizations = identity_pb2_grpc.OrganizationServiceStub(channel)
    users = identity_pb2_grpc.UserServiceStub(channel)

    async def organization(organization_id: str, **fields: object) -> None:
        await create_or_keep(
            organizations.CreateOrganization,
            identity_pb2.CreateOrganizationRequest(
                organization=identity_pb2.Organization(**fields),  # type: ignore[arg-type]
                organization_id=organization_id,
                request_id=f"demo-{organization_id}",
            ),
            metadata,
        )

    await organization("city-office", display_name="Xiong'an City Office", kind=DEPARTMENT)
    for organization_id, title in DEPARTMENTS:
        await organization(
            organization_id, display_name=title, kind=DEPARTMENT, parent="organizations/city-office"
        )
    concession = identity_pb2.Concession(
        reference="PPP-RONGDONG-PARKING-2026", services=["parking"], areas=["rongdong"]
    )
    concession.start_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    concession.end_time.FromDatetime(datetime(2036, 1, 1, tzinfo=UTC))
    await organization(
        "rongdong-parking",
        display_name="Rongdong Smart Parking Co. (PPP)",
        kind=resources_pb2.ORGANIZATION_KIND_OPERATOR,
        concession=concession,
    )
    await organization(
        "public", display_name="Residents and developers", kind=resources_pb2.ORGANIZATION_KIND_PUBLIC
    )
    for user_id, organization_id, roles in PEOPLE:
        await create_or_keep(
            users.CreateUser,
            identity_pb2.CreateUserRequest(
                user=identity_pb2.User(
                    username=user_id,
                    email=f"{user_id}@demo.cityos.example",
                    display_name=user_id.title(),
                    organization=f"organizations/{organization_id}",
                    roles=roles,
                ),
                user_id=user_id,
                request_id=f"demo-{user_id}",
            ),
            metadata,
        )


async def run_embedded(endpoints: dict[str, str], token: str, var_dir: Path, speedup: float) -> None:
    """The `cityos.simulators` entry point: seed the demo people once the city is up."""
    async with grpc.aio.insecure_channel(endpoints["identity"]) as channel:
        await seed(channel, (("authorization", f"Bearer {token}"),))
    log.info("identity: demo organizations and people are in place")
