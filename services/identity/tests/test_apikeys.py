"""IDN-3: an API key works only within its scopes, gets RESOURCE_EXHAUSTED past its quota, and stops
working once revoked; it is shown once, stored hashed, and its use is metered."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from cityos.identity.v1 import identity_pb2
from cityos_identity.domain import sha256
from cityos_identity.models import ApiKeyRow
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import error_info, field_violations

pytestmark = pytest.mark.req("IDN-3")


async def _key(city, scopes, quota=100, key_id="parking-app"):
    await city.organization("devshop")
    return await city.keys.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(
            api_key=identity_pb2.ApiKey(
                display_name="Parking app",
                organization="organizations/devshop",
                scopes=scopes,
                quota_per_minute=quota,
            ),
            api_key_id=key_id,
        ),
        metadata=city.token("users/dev", "devshop", "developer"),
    )


async def test_a_key_is_shown_once_stored_hashed_and_works_within_its_scopes_only(city):
    created = await _key(city, ["identity.organizations.read"])
    assert created.key.startswith("cak_parking-app_")
    async with city.app.db.read() as session:
        row = (await session.scalars(select(ApiKeyRow))).one()
    assert row.secret_sha256 == sha256(created.key)
    assert created.key not in repr(row.__dict__)
    fetched = await city.keys.GetApiKey(
        identity_pb2.GetApiKeyRequest(name="apiKeys/parking-app"),
        metadata=city.token("users/dev", "devshop", "developer"),
    )
    assert "cak_" not in str(fetched)

    token = await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=created.key))
    assert (token.token_type, token.scope) == ("Bearer", "identity.organizations.read")
    as_key = bearer(token.access_token)
    listed = await city.organizations.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(), metadata=as_key
    )
    assert [o.name for o in listed.organizations] == ["organizations/devshop"]
    # Outside its scopes: refused, although a developer's token would be let in.
    with pytest.raises(grpc.aio.AioRpcError) as outside:
        await city.users.ListUsers(identity_pb2.ListUsersRequest(), metadata=as_key)
    assert outside.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await city.users.ListUsers(
        identity_pb2.ListUsersRequest(), metadata=city.token("users/dev", "devshop", "developer")
    )
    # Metered.
    await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=created.key))
    metered = await city.keys.GetApiKey(
        identity_pb2.GetApiKeyRequest(name="apiKeys/parking-app"), metadata=city.admin
    )
    assert metered.exchange_count == 2
    assert metered.HasField("last_used_time")


async def test_scopes_are_permissions_a_developer_holds(city):
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _key(
            city, ["identity.users.write", "identity.organizations.read", "no.such.permission"], quota=0
        )
    assert field_violations(bad.value) == [
        ("api_key.scopes[0]", "'identity.users.write' is not a permission a developer holds"),
        ("api_key.scopes[2]", "'no.such.permission' is not a permission a developer holds"),
        ("api_key.quota_per_minute", "must be 1 to 60000"),
    ]


async def test_past_its_quota_a_key_gets_resource_exhausted_until_the_next_minute(city, clock):
    created = await _key(city, ["identity.organizations.read"], quota=3)
    as_key = bearer(
        (await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=created.key))).access_token
    )
    clock.advance(seconds=60 - clock.now().timestamp() % 60)  # the start of a minute
    request = identity_pb2.GetOrganizationRequest(name="organizations/devshop")
    for _ in range(3):
        await city.organizations.GetOrganization(request, metadata=as_key)
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await city.organizations.GetOrganization(request, metadata=as_key)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(exhausted.value).reason == "API_KEY_QUOTA"
    # Other callers are not affected.
    await city.organizations.GetOrganization(request, metadata=city.admin)
    clock.advance(seconds=60)
    await city.organizations.GetOrganization(request, metadata=as_key)


async def test_a_revoked_key_is_refused(city):
    created = await _key(city, ["identity.organizations.read"])
    developer = city.token("users/dev", "devshop", "developer")
    revoked = await city.keys.RevokeApiKey(
        identity_pb2.RevokeApiKeyRequest(name="apiKeys/parking-app"), metadata=developer
    )
    assert revoked.revoked
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=created.key))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(refused.value).reason == "API_KEY_REVOKED"
    check = await city.authz.CheckPermission(
        identity_pb2.CheckPermissionRequest(
            subject="apiKeys/parking-app", permission="identity.organizations.read"
        ),
        metadata=city.admin,
    )
    assert (check.allowed, check.reason) == (False, "the API key is revoked")
    # A made-up key, or a real key id with a wrong secret, says nothing more than "not valid".
    for guess in ("cak_parking-app_" + "x" * 43, "nonsense"):
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await city.keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=guess))
        assert error_info(wrong.value).reason == "API_KEY_INVALID"
    # Another organization cannot see or revoke it.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await city.keys.RevokeApiKey(
            identity_pb2.RevokeApiKeyRequest(name="apiKeys/parking-app"),
            metadata=city.token("users/x", "other", "developer"),
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("IDN-3")
async def test_in_production_services_trust_the_identity_service_for_api_keys_only(
    start_server, database_url, dev_issuer, mint, tmp_path, clock
):
    """Production shape: the identity service signs API-key tokens with its own key and serves its JWKS;
    a service trusting it as an extra issuer accepts its API-key tokens — and refuses a token of a
    person signed with that key, since it vouches for services and API keys only."""
    import grpc as grpc_module

    from cityos_identity.app import IdentityApp
    from cityos_identity.settings import IdentitySettings
    from cityos_platform.auth import JwksCache, TokenVerifier
    from cityos_platform.config import load_settings
    from cityos_platform.testing.fixtures import authenticator_for

    from .conftest import MemoryDirectory

    app = IdentityApp(
        load_settings(var_dir=tmp_path),
        database_url=database_url,
        clock=clock,
        identity_settings=IdentitySettings(
            signing_key_dir=str(tmp_path / "identity-key"), serve_jwks=True, jwks_port=0
        ),
        directory=MemoryDirectory(),
        run_tasks=False,
    )
    mounts = await app.start()
    try:
        identity_issuer = app.jwks_server.issuer_url
        assert identity_issuer != dev_issuer.issuer.issuer_url
        authenticator = authenticator_for(dev_issuer)  # people's tokens: the (Keycloak-like) issuer
        authenticator.extra = {
            identity_issuer: TokenVerifier(identity_issuer, "cityos", JwksCache(url=app.jwks_server.jwks_url))
        }
        server = await start_server(mounts, authenticator=authenticator, clock=clock)
        async with grpc_module.aio.insecure_channel(server.address) as channel:
            from cityos.identity.v1 import identity_pb2_grpc

            organizations = identity_pb2_grpc.OrganizationServiceStub(channel)
            keys = identity_pb2_grpc.ApiKeyServiceStub(channel)
            admin = bearer(mint("root", "city-office", ["city-admin"]))
            await organizations.CreateOrganization(
                identity_pb2.CreateOrganizationRequest(
                    organization=identity_pb2.Organization(display_name="Dev shop", kind=1),
                    organization_id="devshop",
                ),
                metadata=admin,
            )
            created = await keys.CreateApiKey(
                identity_pb2.CreateApiKeyRequest(
                    api_key=identity_pb2.ApiKey(
                        display_name="App",
                        organization="organizations/devshop",
                        scopes=["identity.organizations.read"],
                        quota_per_minute=10,
                    ),
                    api_key_id="app",
                ),
                metadata=bearer(mint("users/dev", "devshop", ["developer"])),
            )
            token = await keys.ExchangeApiKey(identity_pb2.ExchangeApiKeyRequest(key=created.key))
            listed = await organizations.ListOrganizations(
                identity_pb2.ListOrganizationsRequest(), metadata=bearer(token.access_token)
            )
            assert [o.name for o in listed.organizations] == ["organizations/devshop"]
            # The same key signing a person's token: refused.
            person = app.minter.issuer.mint("users/mallory", "devshop", ["org-admin"])
            with pytest.raises(grpc_module.aio.AioRpcError) as refused:
                await organizations.ListOrganizations(
                    identity_pb2.ListOrganizationsRequest(), metadata=bearer(person)
                )
            assert refused.value.code() == grpc_module.StatusCode.UNAUTHENTICATED
            assert error_info(refused.value).reason == "TOKEN_ISSUER"
    finally:
        await app.stop()
