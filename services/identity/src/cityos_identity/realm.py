"""The Keycloak realm `cityos`, built from code: `infra/keycloak/cityos-realm.json` is its output.

    python -m cityos_identity.realm --write infra/keycloak/cityos-realm.json   # regenerate
    python -m cityos_identity.realm --check infra/keycloak/cityos-realm.json   # exit 1 when stale

What the realm holds, and where each part comes from:

- **Realm roles** = `policies.policy_roles()`: every role named by a `(cityos.common.v1.policy)` option
  of every generated CityOS API, plus the built-in `city-admin`. They are derived, never listed by hand,
  so a new role in a proto reaches Keycloak with the next regeneration.
  Keycloak adds roles of its own when it imports the realm: the composite `default-roles-cityos` (given
  to every new user, service-account users included) and its members `offline_access` and
  `uma_authorization`. They are not in this file and grant no CityOS permission (no policy names them);
  the `roles` mapper does put them in tokens, where the runtime ignores them. The realm test compares
  the export's own role list with the policy roles exactly, and would strip those three Keycloak names
  (`KEYCLOAK_OWN_ROLES`) should an export ever carry them (a realm exported back from a running Keycloak).
- **Clients**: one confidential client `cityos-<folder>` for each folder under `services/` (a new
  service folder gets its client with the next regeneration): client credentials only (service accounts
  on; standard, implicit and password flows off), as every service is a resource server that calls
  others as itself. Their secrets are not in the file: Keycloak generates them at import and the
  operator reads them from Keycloak into each service's secret (or the identity service sets them with
  `KeycloakDirectory.ensure_service_account`). Their service-account users carry `org` = `city` and the
  realm role `service`; `cityos-identity`'s also holds the `realm-management` roles the identity
  service's provisioning needs (`IDENTITY_ADMIN_ROLES`), so it signs in to the admin API with its own
  client credentials.
  One public client `cityos-cli` (authorization code with PKCE S256 on loopback redirects, and the
  device grant for headless shells) for people signing in from the command line.
- **Client scope `cityos`**, the default (and only) scope of every client, whose protocol mappers
  shape the access token the way `cityos_platform.auth` reads it: `sub`, `preferred_username`, `email`,
  `aud` containing `cityos`, `org` from the user attribute `org` (service-account users have it too), and
  `roles`, the realm roles as a flat multivalued claim.
- **User profile**: Keycloak (24+) drops user attributes its user profile does not declare, so `org`
  and `cityos_user_id` are declared, viewable and editable by administrators only — a user must not be
  able to move themselves to another organization from the account console.
- **Security**: brute-force detection on, TLS required for external addresses, access tokens of 5
  minutes, SSO sessions idle 30 minutes / at most 10 hours, refresh-token rotation, a password policy,
  self-registration off (the identity service creates people), sign-in events and admin events stored
  (admin events without representation details, which would copy client secrets into the event store).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cityos_identity.policies import policy_roles

REALM = "cityos"
AUDIENCE = "cityos"
CLIENT_SCOPE = "cityos"
CLIENT_PREFIX = "cityos-"
CLI_CLIENT_ID = "cityos-cli"
IDENTITY_SERVICE = "identity"
CITY_ORGANIZATION = "city"
SERVICE_ROLE = "service"
# The roles Keycloak creates in every realm by itself (see the module docstring).
KEYCLOAK_OWN_ROLES = frozenset({f"default-roles-{REALM}", "offline_access", "uma_authorization"})
# What the identity service's provisioning calls need (`cityos_identity.keycloak`): users, their role
# mappings, groups and sessions (manage-users), service-account clients and their secrets
# (manage-clients), and reading the realm's roles (view-realm).
IDENTITY_ADMIN_ROLES = (
    "manage-clients",
    "manage-users",
    "query-clients",
    "query-groups",
    "query-users",
    "view-realm",
)

ACCESS_TOKEN_LIFESPAN_S = 5 * 60
SSO_SESSION_IDLE_S = 30 * 60
SSO_SESSION_MAX_S = 10 * 60 * 60
# Sign-in events kept so sign-ins can be audited (the identity service reads them; jboss-logging also
# writes them to Keycloak's log for the collector).
EVENT_TYPES = (
    "LOGIN",
    "LOGIN_ERROR",
    "LOGOUT",
    "LOGOUT_ERROR",
    "CODE_TO_TOKEN",
    "CODE_TO_TOKEN_ERROR",
    "CLIENT_LOGIN",
    "CLIENT_LOGIN_ERROR",
    "REFRESH_TOKEN",
    "REFRESH_TOKEN_ERROR",
    "OAUTH2_DEVICE_AUTH",
    "OAUTH2_DEVICE_AUTH_ERROR",
    "OAUTH2_DEVICE_CODE_TO_TOKEN",
    "OAUTH2_DEVICE_CODE_TO_TOKEN_ERROR",
    "UPDATE_PASSWORD",
    "UPDATE_PASSWORD_ERROR",
    "RESET_PASSWORD",
    "RESET_PASSWORD_ERROR",
    "UPDATE_TOTP",
    "REMOVE_TOTP",
)
EVENTS_EXPIRATION_S = 90 * 24 * 60 * 60
_PROFILE_EDITORS = {"view": ["admin", "user"], "edit": ["admin", "user"]}
_ADMIN_ONLY = {"view": ["admin"], "edit": ["admin"]}


def default_root() -> Path:
    """The repository root: the one this file sits in when run from a checkout, else the working
    directory (run the command from the repository root)."""
    checkout = Path(__file__).resolve().parents[4]
    if (checkout / "services").is_dir():
        return checkout
    return Path.cwd()


def service_folders(services_dir: Path) -> list[str]:
    """Every service folder under `services/` (each is a uv workspace member), sorted."""
    return sorted(
        entry.name
        for entry in services_dir.iterdir()
        if entry.is_dir() and not entry.name.startswith((".", "_"))
    )


def _mapper(name: str, mapper: str, config: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "protocol": "openid-connect", "protocolMapper": mapper, "config": config}


def _token_claims(*, id_token: bool, userinfo: bool) -> dict[str, str]:
    return {
        "access.token.claim": "true",
        "introspection.token.claim": "true",
        "id.token.claim": "true" if id_token else "false",
        "userinfo.token.claim": "true" if userinfo else "false",
    }


def client_scope() -> dict[str, Any]:
    """The `cityos` client scope: the token shape `cityos_platform.auth.principal_from_claims` reads."""
    return {
        "name": CLIENT_SCOPE,
        "description": "CityOS access tokens: sub, preferred_username, email, aud cityos, org and roles",
        "protocol": "openid-connect",
        "attributes": {
            # Not added to the `scope` claim: scopes in a CityOS token grant the permissions they name.
            "include.in.token.scope": "false",
            "display.on.consent.screen": "false",
        },
        "protocolMappers": [
            _mapper(
                "sub", "oidc-sub-mapper", {"access.token.claim": "true", "introspection.token.claim": "true"}
            ),
            _mapper(
                "username",
                "oidc-usermodel-attribute-mapper",
                {
                    "user.attribute": "username",
                    "claim.name": "preferred_username",
                    "jsonType.label": "String",
                    **_token_claims(id_token=True, userinfo=True),
                },
            ),
            _mapper(
                "email",
                "oidc-usermodel-attribute-mapper",
                {
                    "user.attribute": "email",
                    "claim.name": "email",
                    "jsonType.label": "String",
                    **_token_claims(id_token=True, userinfo=True),
                },
            ),
            _mapper(
                "audience cityos",
                "oidc-audience-mapper",
                {
                    "included.custom.audience": AUDIENCE,
                    "access.token.claim": "true",
                    "introspection.token.claim": "true",
                    "id.token.claim": "false",
                },
            ),
            _mapper(
                "organization",
                "oidc-usermodel-attribute-mapper",
                {
                    "user.attribute": "org",
                    "claim.name": "org",
                    "jsonType.label": "String",
                    "multivalued": "false",
                    "aggregate.attrs": "false",
                    **_token_claims(id_token=True, userinfo=True),
                },
            ),
            _mapper(
                "roles",
                "oidc-usermodel-realm-role-mapper",
                {
                    "claim.name": "roles",
                    "jsonType.label": "String",
                    "multivalued": "true",
                    "usermodel.realmRoleMapping.rolePrefix": "",
                    **_token_claims(id_token=False, userinfo=False),
                },
            ),
        ],
    }


def service_client(folder: str) -> dict[str, Any]:
    """A service's confidential client: client credentials only (no secret here: Keycloak makes one)."""
    return {
        "clientId": CLIENT_PREFIX + folder,
        "name": f"CityOS {folder} service",
        "description": f"The {folder} service: a resource server that calls other services as itself",
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "bearerOnly": False,
        "clientAuthenticatorType": "client-secret",
        "serviceAccountsEnabled": True,
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "consentRequired": False,
        "frontchannelLogout": False,
        "fullScopeAllowed": True,
        "redirectUris": [],
        "webOrigins": [],
        "defaultClientScopes": [CLIENT_SCOPE],
        "optionalClientScopes": [],
    }


def service_account_user(folder: str) -> dict[str, Any]:
    """The service-account user Keycloak pairs with a service's client: org `city`, role `service`."""
    client_id = CLIENT_PREFIX + folder
    user: dict[str, Any] = {
        "username": f"service-account-{client_id}",
        "enabled": True,
        "serviceAccountClientId": client_id,
        "attributes": {"org": [CITY_ORGANIZATION]},
        "realmRoles": [SERVICE_ROLE],
    }
    if folder == IDENTITY_SERVICE:
        user["clientRoles"] = {"realm-management": list(IDENTITY_ADMIN_ROLES)}
    return user


def cli_client() -> dict[str, Any]:
    """People signing in from the command line: a public client, code flow with PKCE, device grant."""
    return {
        "clientId": CLI_CLIENT_ID,
        "name": "CityOS command line",
        "description": "Public client: authorization code with PKCE (S256) on loopback, device grant",
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": True,
        "bearerOnly": False,
        "serviceAccountsEnabled": False,
        "standardFlowEnabled": True,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "consentRequired": False,
        "frontchannelLogout": True,
        "fullScopeAllowed": True,
        # RFC 8252 loopback redirects (Keycloak accepts any port on the loopback address).
        "redirectUris": ["http://127.0.0.1/*", "http://localhost/*"],
        "webOrigins": [],
        "attributes": {
            "pkce.code.challenge.method": "S256",
            "oauth2.device.authorization.grant.enabled": "true",
            "post.logout.redirect.uris": "+",
        },
        "defaultClientScopes": [CLIENT_SCOPE],
        "optionalClientScopes": [],
    }


def user_profile() -> dict[str, Any]:
    """Keycloak's default user profile (username, email, first and last name) plus the two attributes
    CityOS puts on users, which only administrators (the identity service) may see or change."""
    return {
        "unmanagedAttributePolicy": "ADMIN_EDIT",
        "attributes": [
            {
                "name": "username",
                "displayName": "${username}",
                "validations": {
                    "length": {"min": 3, "max": 255},
                    "username-prohibited-characters": {},
                    "up-username-not-idn-homograph": {},
                },
                "permissions": {"view": ["admin", "user"], "edit": ["admin"]},
                "multivalued": False,
            },
            {
                "name": "email",
                "displayName": "${email}",
                "validations": {"email": {}, "length": {"max": 255}},
                "permissions": _PROFILE_EDITORS,
                "multivalued": False,
            },
            {
                "name": "firstName",
                "displayName": "${firstName}",
                "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
                "permissions": _PROFILE_EDITORS,
                "multivalued": False,
            },
            {
                "name": "lastName",
                "displayName": "${lastName}",
                "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
                "permissions": _PROFILE_EDITORS,
                "multivalued": False,
            },
            {
                "name": "org",
                "displayName": "Organization",
                "validations": {"length": {"min": 1, "max": 128}},
                "permissions": _ADMIN_ONLY,
                "multivalued": False,
            },
            {
                "name": "cityos_user_id",
                "displayName": "CityOS user id",
                "validations": {"length": {"min": 1, "max": 128}},
                "permissions": _ADMIN_ONLY,
                "multivalued": False,
            },
        ],
        "groups": [
            {
                "name": "user-metadata",
                "displayHeader": "User metadata",
                "displayDescription": "Attributes, which refer to user metadata",
            }
        ],
    }


def build_realm(services: Sequence[str], roles: Sequence[str]) -> dict[str, Any]:
    """The realm representation for these service folders and realm roles (as Keycloak names fields)."""
    folders = sorted(set(services))
    return {
        "id": REALM,
        "realm": REALM,
        "displayName": "CityOS",
        "enabled": True,
        "sslRequired": "external",
        # Tokens and sessions.
        "accessTokenLifespan": ACCESS_TOKEN_LIFESPAN_S,
        "accessTokenLifespanForImplicitFlow": ACCESS_TOKEN_LIFESPAN_S,
        "ssoSessionIdleTimeout": SSO_SESSION_IDLE_S,
        "ssoSessionMaxLifespan": SSO_SESSION_MAX_S,
        "offlineSessionIdleTimeout": 7 * 24 * 60 * 60,
        "offlineSessionMaxLifespanEnabled": True,
        "offlineSessionMaxLifespan": 30 * 24 * 60 * 60,
        "accessCodeLifespan": 60,
        "accessCodeLifespanUserAction": 300,
        "accessCodeLifespanLogin": 1800,
        "actionTokenGeneratedByAdminLifespan": 12 * 60 * 60,
        "actionTokenGeneratedByUserLifespan": 300,
        "oauth2DeviceCodeLifespan": 600,
        "oauth2DevicePollingInterval": 5,
        "revokeRefreshToken": True,
        "refreshTokenMaxReuse": 0,
        "defaultSignatureAlgorithm": "RS256",
        # Sign-in.
        "registrationAllowed": False,
        "registrationEmailAsUsername": False,
        "loginWithEmailAllowed": True,
        "duplicateEmailsAllowed": False,
        "resetPasswordAllowed": True,
        "editUsernameAllowed": False,
        "rememberMe": False,
        "verifyEmail": False,
        "passwordPolicy": "length(12) and notUsername and notEmail",
        # Brute-force detection: after 5 failures, wait 1 minute more per failure (at most 15 minutes);
        # failures are forgotten after 12 hours; sub-second retries wait at least a minute.
        "bruteForceProtected": True,
        "permanentLockout": False,
        "failureFactor": 5,
        "waitIncrementSeconds": 60,
        "maxFailureWaitSeconds": 900,
        "maxDeltaTimeSeconds": 12 * 60 * 60,
        "quickLoginCheckMilliSeconds": 1000,
        "minimumQuickLoginWaitSeconds": 60,
        # Events: sign-ins and admin operations are recorded for audit.
        "eventsEnabled": True,
        "eventsListeners": ["jboss-logging"],
        "enabledEventTypes": list(EVENT_TYPES),
        "eventsExpiration": EVENTS_EXPIRATION_S,
        "adminEventsEnabled": True,
        "adminEventsDetailsEnabled": False,
        # Roles, scopes, clients and the service accounts' users.
        "roles": {
            "realm": [
                {
                    "name": role,
                    "description": f"CityOS role {role} (derived from the APIs' policy options)",
                    "composite": False,
                    "clientRole": False,
                }
                for role in sorted(set(roles))
            ]
        },
        "clientScopes": [client_scope()],
        "defaultDefaultClientScopes": [CLIENT_SCOPE],
        "defaultOptionalClientScopes": [],
        "clients": [*(service_client(folder) for folder in folders), cli_client()],
        "users": [service_account_user(folder) for folder in folders],
        "components": {
            "org.keycloak.userprofile.UserProfileProvider": [
                {
                    "providerId": "declarative-user-profile",
                    "subComponents": {},
                    "config": {"kc.user.profile.config": [json.dumps(user_profile(), separators=(",", ":"))]},
                }
            ]
        },
    }


def generate(root: Path | None = None) -> dict[str, Any]:
    """The realm for this checkout: its service folders and the roles its APIs' policies use."""
    base = root or default_root()
    return build_realm(service_folders(base / "services"), policy_roles())


def render(realm: dict[str, Any]) -> str:
    return json.dumps(realm, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cityos_identity.realm", description="Generate or check the Keycloak realm export."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="PATH", type=Path, help="write the realm export to PATH")
    action.add_argument("--check", metavar="PATH", type=Path, help="exit 1 when PATH differs from the code")
    parser.add_argument(
        "--root", type=Path, default=None, help="the repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    text = render(generate(args.root))
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
        return 0
    path: Path = args.check
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    if committed == text:
        print(f"{path} is up to date")
        return 0
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "generated"
    )
    sys.stdout.writelines(diff)
    print(f"{path} differs from the generated realm: run python -m cityos_identity.realm --write {path}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
