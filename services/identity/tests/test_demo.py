"""The embedded city's demo people are seeded through the API, and seeding again changes nothing."""

from __future__ import annotations

from cityos.identity.v1 import identity_pb2
from cityos_identity.demo import DEPARTMENTS, PEOPLE, seed


async def test_seeding_twice_creates_everything_once(city):
    await seed(city.channel, city.admin)
    await seed(city.channel, city.admin)
    listed = await city.organizations.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(page_size=100), metadata=city.admin
    )
    names = {o.name.removeprefix("organizations/") for o in listed.organizations}
    assert names == {"city-office", "rongdong-parking", "public"} | {d for d, _ in DEPARTMENTS}
    users = await city.users.ListUsers(identity_pb2.ListUsersRequest(page_size=100), metadata=city.admin)
    assert sorted(u.username for u in users.users) == sorted(p for p, _, _ in PEOPLE)
    operator = next(o for o in listed.organizations if o.name == "organizations/rongdong-parking")
    assert operator.state == identity_pb2.ORGANIZATION_STATE_ACTIVE
