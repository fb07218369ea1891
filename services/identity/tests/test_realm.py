"""IDN-5: the Keycloak realm export names one client per service and exactly the policy roles.

The committed `infra/keycloak/cityos-realm.json` must equal what `cityos_identity.realm` generates, so a
new service folder or a new role in a proto fails here until the export is regenerated
(`python -m cityos_identity.realm --write infra/keycloak/cityos-realm.json`). Keycloak's own roles
(`default-roles-cityos`, `offline_access`, `uma_authorization`) are created by Keycloak at import; the
export does not list them, and they are set aside before comparing should an export ever carry them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cityos_identity import policies, realm
from cityos_platform.auth import principal_from_claims

pytestmark = pytest.mark.req("IDN-5")

REPO = Path(__file__).resolve().parents[3]
EXPORT = REPO / "infra" / "keycloak" / "cityos-realm.json"
KEYCLOAK_OWN_ROLES = {"default-roles-cityos", "offline_access", "uma_authorization"}
PUBLIC_CLIENTS = {"cityos-cli"}  # people signing in from the command line (not a service)

# Field names of the representations, as the `@keycloak/keycloak-admin-client` types declare them
# (js/libs/keycloak-admin-client/src/defs/*.ts in keycloak/keycloak).
REALM_FIELDS = set(
    [
        "accessCodeLifespan",
        "accessCodeLifespanLogin",
        "accessCodeLifespanUserAction",
        "accessTokenLifespan",
        "accessTokenLifespanForImplicitFlow",
        "accountTheme",
        "actionTokenGeneratedByAdminLifespan",
        "actionTokenGeneratedByUserLifespan",
        "adminEventsDetailsEnabled",
        "adminEventsEnabled",
        "adminTheme",
        "attributes",
        "authenticationFlows",
        "authenticatorConfig",
        "browserFlow",
        "browserSecurityHeaders",
        "bruteForceProtected",
        "clientAuthenticationFlow",
        "clientScopeMappings",
        "clientScopes",
        "clients",
        "clientPolicies",
        "clientProfiles",
        "components",
        "defaultDefaultClientScopes",
        "defaultGroups",
        "defaultLocale",
        "defaultOptionalClientScopes",
        "defaultRoles",
        "defaultRole",
        "defaultSignatureAlgorithm",
        "directGrantFlow",
        "displayName",
        "displayNameHtml",
        "dockerAuthenticationFlow",
        "duplicateEmailsAllowed",
        "editUsernameAllowed",
        "emailTheme",
        "enabled",
        "enabledEventTypes",
        "eventsEnabled",
        "eventsExpiration",
        "eventsListeners",
        "failureFactor",
        "federatedUsers",
        "groups",
        "id",
        "identityProviderMappers",
        "identityProviders",
        "internationalizationEnabled",
        "keycloakVersion",
        "loginTheme",
        "loginWithEmailAllowed",
        "maxDeltaTimeSeconds",
        "maxFailureWaitSeconds",
        "maxTemporaryLockouts",
        "minimumQuickLoginWaitSeconds",
        "notBefore",
        "oauth2DeviceCodeLifespan",
        "oauth2DevicePollingInterval",
        "offlineSessionIdleTimeout",
        "offlineSessionMaxLifespan",
        "offlineSessionMaxLifespanEnabled",
        "organizationsEnabled",
        "otpPolicyAlgorithm",
        "otpPolicyDigits",
        "otpPolicyInitialCounter",
        "otpPolicyLookAheadWindow",
        "otpPolicyPeriod",
        "otpPolicyType",
        "otpSupportedApplications",
        "otpPolicyCodeReusable",
        "passwordPolicy",
        "permanentLockout",
        "protocolMappers",
        "quickLoginCheckMilliSeconds",
        "realm",
        "refreshTokenMaxReuse",
        "registrationAllowed",
        "registrationEmailAsUsername",
        "registrationFlow",
        "rememberMe",
        "requiredActions",
        "resetCredentialsFlow",
        "resetPasswordAllowed",
        "revokeRefreshToken",
        "roles",
        "scopeMappings",
        "smtpServer",
        "sslRequired",
        "ssoSessionIdleTimeout",
        "ssoSessionIdleTimeoutRememberMe",
        "ssoSessionMaxLifespan",
        "ssoSessionMaxLifespanRememberMe",
        "clientSessionIdleTimeout",
        "clientSessionMaxLifespan",
        "supportedLocales",
        "transparentUserMessage",
        "userFederationMappers",
        "userFederationProviders",
        "userManagedAccessAllowed",
        "users",
        "verifyEmail",
        "waitIncrementSeconds",
    ]
)
CLIENT_FIELDS = set(
    [
        "access",
        "adminUrl",
        "attributes",
        "authenticationFlowBindingOverrides",
        "authorizationServicesEnabled",
        "authorizationSettings",
        "baseUrl",
        "bearerOnly",
        "clientAuthenticatorType",
        "clientId",
        "consentRequired",
        "defaultClientScopes",
        "defaultRoles",
        "description",
        "directAccessGrantsEnabled",
        "enabled",
        "alwaysDisplayInConsole",
        "frontchannelLogout",
        "fullScopeAllowed",
        "id",
        "implicitFlowEnabled",
        "name",
        "nodeReRegistrationTimeout",
        "notBefore",
        "optionalClientScopes",
        "origin",
        "protocol",
        "protocolMappers",
        "publicClient",
        "redirectUris",
        "registeredNodes",
        "registrationAccessToken",
        "rootUrl",
        "secret",
        "selectiveConsent",
        "selectiveConsentAttributes",
        "serviceAccountsEnabled",
        "standardFlowEnabled",
        "surrogateAuthRequired",
        "webOrigins",
    ]
)
CLIENT_SCOPE_FIELDS = {"attributes", "description", "id", "name", "protocol", "protocolMappers"}
PROTOCOL_MAPPER_FIELDS = {"config", "id", "name", "protocol", "protocolMapper"}
ROLES_FIELDS = {"realm", "client", "application"}
ROLE_FIELDS = set(
    [
        "id",
        "name",
        "description",
        "scopeParamRequired",
        "composite",
        "composites",
        "clientRole",
        "containerId",
        "attributes",
        "access",
    ]
)
USER_FIELDS = set(
    [
        "id",
        "createdTimestamp",
        "username",
        "enabled",
        "totp",
        "emailVerified",
        "disableableCredentialTypes",
        "requiredActions",
        "notBefore",
        "access",
        "attributes",
        "clientConsents",
        "clientRoles",
        "credentials",
        "email",
        "federatedIdentities",
        "federationLink",
        "firstName",
        "groups",
        "lastName",
        "origin",
        "realmRoles",
        "self",
        "serviceAccountClientId",
        "userProfileMetadata",
    ]
)
COMPONENT_FIELDS = {"id", "name", "providerId", "subType", "subComponents", "config"}


def unknown_fields(document: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    return [f"{where}.{name}" for name in document if name not in allowed]


def representation_errors(export: dict[str, Any]) -> list[str]:
    errors = unknown_fields(export, REALM_FIELDS, "realm")
    errors += unknown_fields(export["roles"], ROLES_FIELDS, "roles")
    for role in export["roles"].get("realm", []):
        errors += unknown_fields(role, ROLE_FIELDS, f"role {role.get('name')}")
    for client in export.get("clients", []):
        errors += unknown_fields(client, CLIENT_FIELDS, f"client {client.get('clientId')}")
        for mapper in client.get("protocolMappers", []):
            errors += unknown_fields(mapper, PROTOCOL_MAPPER_FIELDS, f"client {client['clientId']} mapper")
    for scope in export.get("clientScopes", []):
        errors += unknown_fields(scope, CLIENT_SCOPE_FIELDS, f"scope {scope.get('name')}")
        for mapper in scope.get("protocolMappers", []):
            errors += unknown_fields(mapper, PROTOCOL_MAPPER_FIELDS, f"scope {scope['name']} mapper")
            if not all(isinstance(value, str) for value in mapper.get("config", {}).values()):
                errors.append(f"scope {scope['name']} mapper {mapper['name']}: config values must be strings")
    for user in export.get("users", []):
        errors += unknown_fields(user, USER_FIELDS, f"user {user.get('username')}")
        for name, values in user.get("attributes", {}).items():
            if not isinstance(values, list):
                errors.append(f"user {user['username']}.attributes.{name}: not a list")
    for provider, components in export.get("components", {}).items():
        for component in components:
            errors += unknown_fields(component, COMPONENT_FIELDS, f"component {provider}")
    return errors


@pytest.fixture(scope="module")
def export() -> dict[str, Any]:
    return json.loads(EXPORT.read_text(encoding="utf-8"))


def service_folders() -> set[str]:
    """Computed here from the file system, not by the code under test."""
    return {
        entry.name for entry in (REPO / "services").iterdir() if entry.is_dir() and entry.name[0] not in "._"
    }


def test_the_committed_export_is_what_the_code_generates():
    expected = realm.render(realm.generate(REPO))
    assert EXPORT.read_text(encoding="utf-8") == expected, (
        "infra/keycloak/cityos-realm.json is stale: "
        "python -m cityos_identity.realm --write infra/keycloak/cityos-realm.json"
    )
    assert realm.main(["--check", str(EXPORT), "--root", str(REPO)]) == 0


def test_check_fails_on_a_stale_export(tmp_path, capsys):
    stale = tmp_path / "cityos-realm.json"
    document = json.loads(EXPORT.read_text(encoding="utf-8"))
    document["bruteForceProtected"] = False
    stale.write_text(json.dumps(document, indent=2) + "\n")
    assert realm.main(["--check", str(stale), "--root", str(REPO)]) == 1
    assert "bruteForceProtected" in capsys.readouterr().out
    assert realm.main(["--check", str(tmp_path / "missing.json"), "--root", str(REPO)]) == 1


def test_one_confidential_client_per_service_folder(export):
    folders = service_folders()
    assert folders, "no service folders found"
    clients = {client["clientId"]: client for client in export["clients"]}
    service_clients = {client_id for client_id, client in clients.items() if client_id not in PUBLIC_CLIENTS}
    assert service_clients == {f"cityos-{folder}" for folder in folders}
    for client_id in service_clients:
        client = clients[client_id]
        assert client["serviceAccountsEnabled"] is True, client_id
        assert client["publicClient"] is False, client_id
        assert client["standardFlowEnabled"] is False, client_id
        assert client["implicitFlowEnabled"] is False, client_id
        assert client["directAccessGrantsEnabled"] is False, client_id
        assert "secret" not in client, f"{client_id}: secrets do not belong in the repository"
    for client in clients.values():
        assert client["defaultClientScopes"] == ["cityos"], client["clientId"]
    cli = clients["cityos-cli"]
    assert cli["publicClient"] is True
    assert cli["attributes"]["pkce.code.challenge.method"] == "S256"
    assert cli["implicitFlowEnabled"] is False
    assert cli["directAccessGrantsEnabled"] is False
    # Every service's service-account user: organization `city`, role `service`.
    users = {user["serviceAccountClientId"]: user for user in export["users"]}
    assert set(users) == service_clients
    for client_id, user in users.items():
        assert user["username"] == f"service-account-{client_id}"
        assert user["attributes"] == {"org": ["city"]}
        assert user["realmRoles"] == ["service"]
    assert set(users["cityos-identity"]["clientRoles"]["realm-management"]) >= {
        "manage-users",
        "manage-clients",
    }


def test_a_new_service_folder_gets_a_client(tmp_path):
    for name in ("devices", "parking", "waste-bins"):
        (tmp_path / "services" / name).mkdir(parents=True)
    (tmp_path / "services" / "README.md").write_text("not a service")
    generated = realm.generate(tmp_path)
    ids = {client["clientId"] for client in generated["clients"]} - PUBLIC_CLIENTS
    assert ids == {"cityos-devices", "cityos-parking", "cityos-waste-bins"}
    assert realm.render(generated) != EXPORT.read_text(encoding="utf-8")


def test_realm_roles_are_exactly_the_policy_roles(export):
    names = [role["name"] for role in export["roles"]["realm"]]
    assert len(names) == len(set(names))
    assert set(names) - KEYCLOAK_OWN_ROLES == set(policies.policy_roles())
    # Derived: each is named by some RPC's policy, except the built-in city-admin.
    used = {role for policy in policies.policy_table().values() for role in policy.roles}
    assert set(names) - KEYCLOAK_OWN_ROLES - policies.BUILT_IN_ROLES <= used
    assert {"city-admin", "service", "auditor"} <= set(names)
    assert all(
        role["clientRole"] is False and role["composite"] is False for role in export["roles"]["realm"]
    )


def test_brute_force_protection_lifetimes_tls_and_events(export):
    assert export["realm"] == "cityos"
    assert export["bruteForceProtected"] is True
    assert export["permanentLockout"] is False
    assert 1 <= export["failureFactor"] <= 10
    assert export["maxFailureWaitSeconds"] >= 60
    assert export["accessTokenLifespan"] == 300
    assert export["ssoSessionIdleTimeout"] == 1800
    assert export["ssoSessionMaxLifespan"] == 36000
    assert export["sslRequired"] == "external"
    assert export["registrationAllowed"] is False
    assert export["eventsEnabled"] is True
    assert export["adminEventsEnabled"] is True
    assert export["adminEventsDetailsEnabled"] is False  # details would copy client secrets into events
    assert {"LOGIN", "LOGIN_ERROR", "CLIENT_LOGIN", "CLIENT_LOGIN_ERROR", "LOGOUT"} <= set(
        export["enabledEventTypes"]
    )


def test_the_export_uses_keycloaks_field_names(export):
    assert representation_errors(export) == []
    # The checker itself rejects a misspelt field.
    broken = json.loads(json.dumps(export))
    broken["bruteForceProtection"] = True
    broken["clients"][0]["serviceAccountEnabled"] = True
    assert len(representation_errors(broken)) == 2


def _claims_from_mappers(scope: dict[str, Any], user: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    """What Keycloak's mappers of these types put in an access token for `user` (access-token mappers
    only): a small interpreter, so the token shape is checked against the platform's reader."""
    claims: dict[str, Any] = {
        "iss": "https://sso.example/realms/cityos",
        "typ": "Bearer",
        "azp": "cityos-cli",
    }
    for mapper in scope["protocolMappers"]:
        config = mapper["config"]
        assert config["access.token.claim"] == "true", mapper["name"]
        kind = mapper["protocolMapper"]
        if kind == "oidc-sub-mapper":
            claims["sub"] = user["id"]
        elif kind == "oidc-audience-mapper":
            claims.setdefault("aud", []).append(config["included.custom.audience"])
        elif kind == "oidc-usermodel-attribute-mapper":
            source = config["user.attribute"]
            values = [user[source]] if source in ("username", "email") else user["attributes"].get(source, [])
            if values:
                multivalued = config.get("multivalued") == "true"
                claims[config["claim.name"]] = values if multivalued else values[0]
        elif kind == "oidc-usermodel-realm-role-mapper":
            assert config["multivalued"] == "true"
            claims[config["claim.name"]] = [
                config.get("usermodel.realmRoleMapping.rolePrefix", "") + r for r in roles
            ]
        else:
            raise AssertionError(f"unexpected mapper {kind}")
    return claims


def test_the_cityos_scope_shapes_tokens_the_way_the_platform_reads_them(export):
    (scope,) = [scope for scope in export["clientScopes"] if scope["name"] == "cityos"]
    assert export["defaultDefaultClientScopes"] == ["cityos"]
    # A scope in a CityOS token grants the permission it names: this one must not appear there.
    assert scope["attributes"]["include.in.token.scope"] == "false"
    assert "cityos" not in policies.permissions()

    person = {
        "id": "9d1c",
        "username": "alice",
        "email": "a@city.example",
        "attributes": {"org": ["transport"]},
    }
    claims = _claims_from_mappers(scope, person, ["operator", "default-roles-cityos"])
    assert "cityos" in claims["aud"]
    principal = principal_from_claims(claims)
    assert principal.organization == "transport"
    assert principal.roles == {"operator", "default-roles-cityos"}
    assert principal.kind == "user"

    (service_user,) = [u for u in export["users"] if u["serviceAccountClientId"] == "cityos-devices"]
    machine = {"id": "51aa", "username": service_user["username"], "email": "", **service_user}
    principal = principal_from_claims(_claims_from_mappers(scope, machine, service_user["realmRoles"]))
    assert principal.kind == "service"
    assert principal.organization == "city"
    assert principal.roles == {"service"}


def test_the_user_profile_keeps_org_and_user_id_admin_only(export):
    (component,) = export["components"]["org.keycloak.userprofile.UserProfileProvider"]
    assert component["providerId"] == "declarative-user-profile"
    profile = json.loads(component["config"]["kc.user.profile.config"][0])
    attributes = {attribute["name"]: attribute for attribute in profile["attributes"]}
    assert {"username", "email", "firstName", "lastName", "org", "cityos_user_id"} <= set(attributes)
    for name in ("org", "cityos_user_id"):
        assert attributes[name]["permissions"] == {"view": ["admin"], "edit": ["admin"]}, name
