"""CheckPermission and ListPolicies: authorization in one place, over the policy options of every API."""

from __future__ import annotations

import grpc
import pytest

from cityos.identity.v1 import identity_pb2
from cityos_platform.testing.status import field_violations


async def test_check_permission_applies_roles_scopes_state_and_organization(city):
    await city.organization("transport")
    await city.organization("utilities")
    await city.user("tom", "transport", "operator")
    await city.user("ada", "transport", "auditor")
    await city.user("root", "transport", "city-admin")

    async def check(subject, permission, organization=""):
        return await city.authz.CheckPermission(
            identity_pb2.CheckPermissionRequest(
                subject=subject, permission=permission, resource_organization=organization
            ),
            metadata=city.token("svc", "city", "service", kind="service"),
        )

    granted = await check("users/tom", "devices.devices.write", "organizations/transport")
    assert (granted.allowed, list(granted.granted_by)) == (True, ["operator"])
    other = await check("users/tom", "devices.devices.write", "organizations/utilities")
    assert (other.allowed, other.reason) == (False, "the resource belongs to another organization")
    assert not (await check("users/tom", "identity.audit.read")).allowed
    assert (await check("users/ada", "identity.audit.read")).allowed
    assert not (await check("users/ada", "devices.devices.read")).allowed  # auditors read the trail only
    root = await check("users/root", "devices.devices.write", "organizations/utilities")
    assert (root.allowed, list(root.granted_by)) == (True, ["city-admin"])  # holds it, city-wide
    assert not (await check("users/root", "identity.audit.read")).allowed  # separation of duties

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await check("people/tom", "devices.nothing")
    assert [f for f, _ in field_violations(bad.value)] == ["subject", "permission"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await check("users/nobody", "devices.devices.read")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_policy_table_lists_every_api(city):
    table = await city.authz.ListPolicies(identity_pb2.ListPoliciesRequest(), metadata=city.admin)
    methods = {entry.method for entry in table.policies}
    assert "/cityos.devices.v1.DeviceService/CreateDevice" in methods
    assert "/cityos.identity.v1.ApiKeyService/ExchangeApiKey" in methods
    assert not any(m.startswith("/cityos.testing.") for m in methods)
    exchange = next(e for e in table.policies if e.method.endswith("/ExchangeApiKey"))
    assert exchange.public
    only = await city.authz.ListPolicies(
        identity_pb2.ListPoliciesRequest(service="cityos.identity.v1.AuditService"), metadata=city.admin
    )
    assert [(e.method, list(e.roles)) for e in only.policies] == [
        ("/cityos.identity.v1.AuditService/ListAuditRecords", ["auditor"])
    ]
