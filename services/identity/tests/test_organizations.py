"""IDN-1: organizations, membership and roles, and concessions through their whole life, including a
concession that ends and takes its operator's access with it."""

from __future__ import annotations

from datetime import timedelta

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2

from cityos.common.v1 import resources_pb2
from cityos.identity.v1 import identity_pb2
from cityos_platform.testing.status import error_info, field_violations

pytestmark = pytest.mark.req("IDN-1")


async def test_departments_form_a_hierarchy_and_operators_need_a_concession(city, soon):
    await city.organization("city-office")
    transport = await city.organization("transport", parent="organizations/city-office")
    assert transport.parent == "organizations/city-office"
    assert transport.state == identity_pb2.ORGANIZATION_STATE_ACTIVE
    children = await city.organizations.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(parent="organizations/city-office"), metadata=city.admin
    )
    assert [o.name for o in children.organizations] == ["organizations/transport"]

    with pytest.raises(grpc.aio.AioRpcError) as no_concession:
        await city.organization("parkco", kind=resources_pb2.ORGANIZATION_KIND_OPERATOR)
    assert no_concession.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(no_concession.value)] == ["organization.concession"]

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await city.organization("x", kind=0, display_name="", parent="organizations/nowhere")
    assert {f for f, _ in field_violations(bad.value)} == {
        "organization_id",
        "organization.display_name",
        "organization.kind",
    }
    parkco = await city.operator("parkco", *soon)
    assert parkco.state == identity_pb2.ORGANIZATION_STATE_ACTIVE
    assert list(parkco.concession.services) == ["parking"]
    with pytest.raises(grpc.aio.AioRpcError) as operator_parent:
        await city.organization("sub", parent="organizations/parkco")
    assert field_violations(operator_parent.value) == [
        ("organization.parent", "a parent is a city department")
    ]
    # A cycle is refused.
    with pytest.raises(grpc.aio.AioRpcError) as cycle:
        await city.organizations.UpdateOrganization(
            identity_pb2.UpdateOrganizationRequest(
                organization=identity_pb2.Organization(
                    name="organizations/city-office", parent="organizations/transport"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["parent"]),
            ),
            metadata=city.admin,
        )
    assert field_violations(cycle.value) == [("organization.parent", "would make the hierarchy a cycle")]
    # Only a city-admin registers organizations.
    with pytest.raises(grpc.aio.AioRpcError) as not_admin:
        await city.organizations.CreateOrganization(
            identity_pb2.CreateOrganizationRequest(
                organization=identity_pb2.Organization(display_name="X", kind=1), organization_id="xx"
            ),
            metadata=city.token("olga", "transport", "org-admin"),
        )
    assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert city.directory.organizations == {
        "city-office": "City-Office",
        "transport": "Transport",
        "parkco": "Parkco",
    }


async def test_an_update_needs_the_current_etag_and_a_mask(city, soon):
    parkco = await city.operator("parkco", *soon)
    later = identity_pb2.Concession()
    later.CopyFrom(parkco.concession)
    later.end_time.FromDatetime(soon[1] + timedelta(days=365))
    updated = await city.organizations.UpdateOrganization(
        identity_pb2.UpdateOrganizationRequest(
            organization=identity_pb2.Organization(name=parkco.name, etag=parkco.etag, concession=later),
            update_mask=field_mask_pb2.FieldMask(paths=["concession"]),
        ),
        metadata=city.admin,
    )
    assert updated.concession.end_time == later.end_time
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await city.organizations.UpdateOrganization(
            identity_pb2.UpdateOrganizationRequest(
                organization=identity_pb2.Organization(name=parkco.name, etag=parkco.etag, display_name="P"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=city.admin,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as no_mask:
        await city.organizations.UpdateOrganization(
            identity_pb2.UpdateOrganizationRequest(organization=identity_pb2.Organization(name=parkco.name)),
            metadata=city.admin,
        )
    assert no_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_members_get_roles_within_their_organization_and_lose_them(city):
    await city.organization("transport")
    await city.organization("utilities")
    await city.user("olga", "transport", "org-admin")
    olga = city.token("users/olga", "transport", "org-admin")
    await city.user("tom", "transport", "operator", who=olga)
    # An org-admin manages only their own organization's people, and grants no reserved role.
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await city.user("uma", "utilities", "operator", who=olga)
    assert error_info(elsewhere.value).reason == "OTHER_ORGANIZATION"
    with pytest.raises(grpc.aio.AioRpcError) as reserved:
        await city.user("eve", "transport", "auditor", who=olga)
    assert error_info(reserved.value).reason == "ROLE_NOT_GRANTABLE"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await city.user("dan", "transport", "wizard", who=olga)
    assert field_violations(unknown.value)[0][0] == "user.roles[0]"

    tom = await city.users.GetUser(identity_pb2.GetUserRequest(name="users/tom"), metadata=olga)
    changed = await city.users.UpdateUser(
        identity_pb2.UpdateUserRequest(
            user=identity_pb2.User(name="users/tom", etag=tom.etag, roles=["operator", "analyst"]),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
        ),
        metadata=olga,
    )
    assert list(changed.roles) == ["analyst", "operator"]
    assert city.directory.users["tom"].roles == frozenset({"analyst", "operator"})
    check = identity_pb2.CheckPermissionRequest(subject="users/tom", permission="identity.users.read")
    assert (await city.authz.CheckPermission(check, metadata=city.admin)).allowed

    disabled = await city.users.DisableUser(identity_pb2.DisableUserRequest(name="users/tom"), metadata=olga)
    assert disabled.state == identity_pb2.USER_STATE_DISABLED
    assert city.directory.users["tom"].enabled is False
    denied = await city.authz.CheckPermission(check, metadata=city.admin)
    assert (denied.allowed, denied.reason) == (False, "users/tom is disabled")
    await city.users.EnableUser(identity_pb2.EnableUserRequest(name="users/tom"), metadata=olga)
    assert (await city.authz.CheckPermission(check, metadata=city.admin)).allowed
    # Another organization's org-admin sees none of it.
    uma = city.token("users/uma", "utilities", "org-admin")
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await city.users.GetUser(identity_pb2.GetUserRequest(name="users/tom"), metadata=uma)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await city.users.ListUsers(identity_pb2.ListUsersRequest(), metadata=uma)
    assert list(listed.users) == []
    # Every change is in the audit trail.
    trail = await city.audit.ListAuditRecords(
        identity_pb2.ListAuditRecordsRequest(kind=identity_pb2.AUDIT_KIND_ROLE_CHANGE), metadata=city.auditor
    )
    actions = [(r.action, r.resource) for r in trail.records if r.resource == "users/tom"]
    assert actions == [
        ("user.enabled", "users/tom"),
        ("user.disabled", "users/tom"),
        ("user.roles_changed", "users/tom"),
        ("user.created", "users/tom"),
    ]
    roles_changed = next(r for r in trail.records if r.action == "user.roles_changed")
    assert dict(roles_changed.details) == {"before": "operator", "after": "analyst,operator"}
    assert roles_changed.subject == "users/olga"


async def test_a_concession_that_ends_takes_the_operators_access_with_it(city, clock, soon):
    await city.operator("parkco", *soon)
    await city.user("pat", "parkco", "org-admin")
    pat = city.token("users/pat", "parkco", "org-admin")
    account = await city.accounts.CreateServiceAccount(
        identity_pb2.CreateServiceAccountRequest(
            service_account=identity_pb2.ServiceAccount(
                display_name="Gate sync", organization="organizations/parkco", roles=["operator"]
            ),
            service_account_id="gates",
        ),
        metadata=pat,
    )
    key = await city.keys.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(
            api_key=identity_pb2.ApiKey(
                display_name="Parking app",
                organization="organizations/parkco",
                scopes=["identity.organizations.read"],
                quota_per_minute=100,
            ),
            api_key_id="parking-app",
        ),
        metadata=city.token("users/pat", "parkco", "developer"),
    )
    exchanged = await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=key.key))
    service_token = await city.accounts.IssueServiceToken(
        identity_pb2.IssueServiceTokenRequest(
            client_id=account.service_account.client_id, client_secret=account.client_secret
        )
    )
    # Tokens issued during the concession never outlive it.
    for token in (exchanged.access_token, service_token.access_token):
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["exp"] <= int(soon[1].timestamp())
    check = identity_pb2.CheckPermissionRequest(subject="users/pat", permission="identity.users.write")
    assert (await city.authz.CheckPermission(check, metadata=city.admin)).allowed

    clock.advance(hours=2)  # the concession has ended
    parkco = await city.organizations.GetOrganization(
        identity_pb2.GetOrganizationRequest(name="organizations/parkco"), metadata=city.admin
    )
    assert parkco.state == identity_pb2.ORGANIZATION_STATE_CONCESSION_ENDED
    with pytest.raises(grpc.aio.AioRpcError) as key_refused:
        await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=key.key))
    assert error_info(key_refused.value).reason == "ORGANIZATION_ACCESS_ENDED"
    with pytest.raises(grpc.aio.AioRpcError) as account_refused:
        await city.accounts.IssueServiceToken(
            identity_pb2.IssueServiceTokenRequest(
                client_id=account.service_account.client_id, client_secret=account.client_secret
            )
        )
    assert account_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    denied = await city.authz.CheckPermission(check, metadata=city.admin)
    assert not denied.allowed
    assert "concession" in denied.reason
    # The enforcer disables the operator's people and service accounts in the directory, once.
    assert await city.app.enforcer.enforce() == ["parkco"]
    assert await city.app.enforcer.enforce() == []
    assert city.directory.users["pat"].enabled is False
    assert city.directory.accounts["sa-gates"].enabled is False
    trail = await city.audit.ListAuditRecords(
        identity_pb2.ListAuditRecordsRequest(subject="system:identity"), metadata=city.auditor
    )
    assert [(r.action, r.details["people_disabled"]) for r in trail.records] == [
        ("organization.access_ended", "1")
    ]


async def test_listings_page_with_tokens_bound_to_the_query(city):
    for organization_id in ("aa", "bb", "cc"):
        await city.organization(organization_id)
    first = await city.organizations.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(page_size=2), metadata=city.admin
    )
    assert [o.name for o in first.organizations] == ["organizations/aa", "organizations/bb"]
    second = await city.organizations.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(page_size=2, page_token=first.next_page_token),
        metadata=city.admin,
    )
    assert ([o.name for o in second.organizations], second.next_page_token) == (["organizations/cc"], "")
    with pytest.raises(grpc.aio.AioRpcError) as other_query:
        await city.organizations.ListOrganizations(
            identity_pb2.ListOrganizationsRequest(page_size=2, kind=1, page_token=first.next_page_token),
            metadata=city.admin,
        )
    assert field_violations(other_query.value)[0][0] == "page_token"
