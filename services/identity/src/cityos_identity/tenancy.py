"""What the identity service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B with a person, a service account and an API key, a request about each for every RPC,
or why organization scoping does not apply to the RPC."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

SERVICE = "/cityos.identity.v1."
DIRECTORY = (
    "the organizations and the policy table are the city's directory: every signed-in caller reads them"
)
CITY_ADMIN = "city-admin only: registering and changing organizations is the city's, not a tenant's"
EXEMPT = {
    SERVICE + "OrganizationService/GetOrganization": DIRECTORY,
    SERVICE + "OrganizationService/ListOrganizations": DIRECTORY,
    SERVICE + "AuthorizationService/ListPolicies": DIRECTORY,
    SERVICE + "OrganizationService/CreateOrganization": CITY_ADMIN,
    SERVICE + "OrganizationService/UpdateOrganization": CITY_ADMIN,
    SERVICE + "AuditService/ListAuditRecords": (
        "auditors read the whole trail, every organization's, and nothing else (IDN-6, test_audit.py)"
    ),
}


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    admin = token("city-office", ["city-admin"])
    owner = token(organization, ["org-admin", "developer"])
    organizations = identity_pb2_grpc.OrganizationServiceStub(channel)
    for organization_id in (organization, "org-a"):
        await organizations.CreateOrganization(
            identity_pb2.CreateOrganizationRequest(
                organization=identity_pb2.Organization(
                    display_name=organization_id, kind=resources_pb2.ORGANIZATION_KIND_DEPARTMENT
                ),
                organization_id=organization_id,
            ),
            metadata=admin,
        )
    org = f"organizations/{organization}"
    await identity_pb2_grpc.UserServiceStub(channel).CreateUser(
        identity_pb2.CreateUserRequest(
            user=identity_pb2.User(
                username="b-person",
                email="b@example.org",
                display_name="B",
                organization=org,
                roles=["operator"],
            ),
            user_id="b-person",
        ),
        metadata=owner,
    )
    await identity_pb2_grpc.ServiceAccountServiceStub(channel).CreateServiceAccount(
        identity_pb2.CreateServiceAccountRequest(
            service_account=identity_pb2.ServiceAccount(
                display_name="B sync", organization=org, roles=["operator"]
            ),
            service_account_id="b-sync",
        ),
        metadata=owner,
    )
    key = identity_pb2.ApiKey(
        display_name="B app", organization=org, scopes=["identity.organizations.read"], quota_per_minute=10
    )
    await identity_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
        identity_pb2.CreateApiKeyRequest(api_key=key, api_key_id="b-app"), metadata=owner
    )

    def person(user_id: str) -> identity_pb2.User:
        return identity_pb2.User(
            username=user_id,
            email=f"{user_id}@example.org",
            display_name="B",
            organization=org,
            roles=["analyst"],
        )

    case = TenancyCase(names=["b-person", "b-sync", "b-app"])
    add = case.requests.__setitem__
    add(SERVICE + "UserService/GetUser", identity_pb2.GetUserRequest(name="users/b-person"))
    add(SERVICE + "UserService/ListUsers", identity_pb2.ListUsersRequest())
    add(
        SERVICE + "UserService/UpdateUser",
        identity_pb2.UpdateUserRequest(
            user=identity_pb2.User(name="users/b-person", display_name="B renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
    )
    add(
        SERVICE + "UserService/CreateUser",
        identity_pb2.CreateUserRequest(user=person("b-new"), user_id="b-new"),
    )
    add(
        SERVICE + "AuthorizationService/CheckPermission",
        identity_pb2.CheckPermissionRequest(subject="users/b-person", permission="devices.devices.read"),
    )
    add(SERVICE + "UserService/DisableUser", identity_pb2.DisableUserRequest(name="users/b-person"))
    add(SERVICE + "UserService/EnableUser", identity_pb2.EnableUserRequest(name="users/b-person"))
    add(
        SERVICE + "ServiceAccountService/GetServiceAccount",
        identity_pb2.GetServiceAccountRequest(name="serviceAccounts/b-sync"),
    )
    add(SERVICE + "ServiceAccountService/ListServiceAccounts", identity_pb2.ListServiceAccountsRequest())
    add(
        SERVICE + "ServiceAccountService/CreateServiceAccount",
        identity_pb2.CreateServiceAccountRequest(
            service_account=identity_pb2.ServiceAccount(
                display_name="B2", organization=org, roles=["analyst"]
            ),
            service_account_id="b-sync-2",
        ),
    )
    add(
        SERVICE + "ServiceAccountService/DisableServiceAccount",
        identity_pb2.DisableServiceAccountRequest(name="serviceAccounts/b-sync"),
    )
    add(SERVICE + "ApiKeyService/GetApiKey", identity_pb2.GetApiKeyRequest(name="apiKeys/b-app"))
    add(SERVICE + "ApiKeyService/ListApiKeys", identity_pb2.ListApiKeysRequest())
    add(
        SERVICE + "ApiKeyService/CreateApiKey",
        identity_pb2.CreateApiKeyRequest(api_key=key, api_key_id="b-app-2"),
    )
    add(SERVICE + "ApiKeyService/RevokeApiKey", identity_pb2.RevokeApiKeyRequest(name="apiKeys/b-app"))
    add("/cityos.common.v1.EventService/StreamEvents", events_pb2.StreamEventsRequest(follow=False))
    case.listings = {
        SERVICE + "UserService/ListUsers",
        SERVICE + "ServiceAccountService/ListServiceAccounts",
        SERVICE + "ApiKeyService/ListApiKeys",
        "/cityos.common.v1.EventService/StreamEvents",
    }
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
