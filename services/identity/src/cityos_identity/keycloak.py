"""The production directory: Keycloak, provisioned through python-keycloak's admin API.

`KeycloakDirectory` mirrors what sign-in needs from the identity service's records into the realm
`cityos` (see `cityos_identity.realm` for the realm itself), with python-keycloak's async (`a_*`)
admin methods:

- an organization is a top-level group `org-<id>` with the attributes `org` = id and `display_name`;
- a person is a user found by username, with the attributes `org` and `cityos_user_id`, `email`,
  `firstName` = the display name, `enabled`, membership of exactly one organization group, and direct
  realm-role mappings equal to the CityOS roles given (missing ones added, extra ones removed; Keycloak's
  own `default-roles-<realm>` is left alone, it grants no CityOS permission). Disabling a user also ends
  their sessions;
- a service account is a confidential client with only the client-credentials flow
  (`serviceAccountsEnabled`), the given secret, and a service-account user carrying `org` and exactly the
  given realm roles.

Every method reads first and writes only what differs, so calling it again changes nothing. Failures
raise `KeycloakProvisioningError` (or `KeycloakConflictError` for HTTP 409) naming what was being done
and Keycloak's status; messages never carry secrets (the admin secret, a client secret), and nothing
here logs request bodies.

The admin identity is a confidential client of the realm itself (by default `cityos-identity`, the
identity service's own client, whose service-account user holds the `realm-management` roles the realm
export grants it): client credentials, never an administrator's password.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar, cast

from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
from keycloak.exceptions import HTTP_CONFLICT, KeycloakError
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityos_identity.directory import DirectoryServiceAccount, DirectoryUser

log = logging.getLogger(__name__)

ORGANIZATION_GROUP_PREFIX = "org-"
ORG_ATTRIBUTE = "org"
USER_ID_ATTRIBUTE = "cityos_user_id"
DISPLAY_NAME_ATTRIBUTE = "display_name"
CLIENT_SCOPE = "cityos"  # the client scope whose mappers put `aud`, `org` and `roles` in the token
REQUEST_TIMEOUT_S = 30
_MAX_DETAIL = 300

T = TypeVar("T")


class KeycloakSettings(BaseSettings):
    """Where Keycloak is and how the identity service signs in to its admin API (`CITYOS_KEYCLOAK_*`).

    `url` is the server root (`https://sso.city.example/`, not the realm URL); empty means "no Keycloak"
    (the embedded directory). The admin client authenticates with client credentials in `realm`."""

    model_config = SettingsConfigDict(env_prefix="CITYOS_KEYCLOAK_", extra="ignore", frozen=True)

    url: str = ""
    realm: str = "cityos"
    admin_client_id: str = "cityos-identity"
    admin_client_secret: SecretStr = SecretStr("")
    verify: bool = True

    @property
    def configured(self) -> bool:
        return bool(self.url)


class KeycloakProvisioningError(Exception):
    """A Keycloak admin call failed. `action` says what was being done, `status` is Keycloak's HTTP
    status (None when no response arrived or the realm lacks something the call needs)."""

    def __init__(self, action: str, status: int | None, detail: str) -> None:
        self.action = action
        self.status = status
        self.detail = detail
        shown = f"HTTP {status}" if status is not None else "no HTTP status"
        super().__init__(f"Keycloak: {action} failed ({shown}): {detail}")


class KeycloakConflictError(KeycloakProvisioningError):
    """Keycloak answered 409: something with the same unique name (username, email, client id, group
    name) exists and is not the thing being provisioned."""


def _detail(error: KeycloakError) -> str:
    """Keycloak's own explanation, short: `errorMessage`/`error_description`/`error` of a JSON body,
    else the start of the body. Keycloak's error bodies never echo request payloads."""
    body = error.response_body
    text = ""
    if isinstance(body, bytes | bytearray):
        try:
            document = json.loads(body)
        except ValueError:
            text = body.decode("utf-8", "replace")
        else:
            if isinstance(document, dict):
                for key in ("errorMessage", "error_description", "error", "message"):
                    if isinstance(document.get(key), str):
                        text = document[key]
                        break
            text = text or json.dumps(document)
    if not text:
        text = error.error_message if isinstance(error.error_message, str) else type(error).__name__
    text = " ".join(text.split())
    return text[:_MAX_DETAIL] or type(error).__name__


async def _call(action: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except KeycloakError as error:
        status = error.response_code
        error_type = KeycloakConflictError if status == HTTP_CONFLICT else KeycloakProvisioningError
        raise error_type(action, status, _detail(error)) from error


def _attribute(representation: Mapping[str, Any], name: str) -> list[str]:
    attributes = representation.get("attributes") or {}
    value = attributes.get(name)
    if value is None:
        return []
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def _merged_attributes(representation: Mapping[str, Any], wanted: Mapping[str, str]) -> dict[str, list[str]]:
    """The representation's attributes with `wanted` set (others kept: another tool may own them)."""
    merged = {
        str(name): [str(item) for item in value] if isinstance(value, list) else [str(value)]
        for name, value in (representation.get("attributes") or {}).items()
    }
    merged.update({name: [value] for name, value in wanted.items()})
    return merged


def _check_name(kind: str, value: str) -> None:
    if not value or value != value.strip() or "/" in value or any(ord(char) < 32 for char in value):
        raise ValueError(f"{kind} {value!r} cannot be used as a Keycloak name")


# The root fields of a UserRepresentation that a full update (PUT) must carry so that Keycloak's user
# profile does not take them as removed.
_USER_PROFILE_FIELDS = ("username", "email", "firstName", "lastName", "enabled", "emailVerified")


def _user_update(current: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    payload = {name: current[name] for name in _USER_PROFILE_FIELDS if current.get(name) is not None}
    payload["attributes"] = _merged_attributes(current, {})
    payload.update(changes)
    return payload


class KeycloakDirectory:
    """The `Directory` on Keycloak. Give it a `KeycloakAdmin` bound to the realm (tests do), or build it
    with `from_settings`. Close it with `aclose()`."""

    def __init__(self, admin: KeycloakAdmin, realm: str = "cityos", admin_client_id: str = "") -> None:
        self.admin = admin
        self.realm = realm
        # The client this directory signs in with: never provisioned through it (a new secret or a
        # disabled client would lock the identity service out of Keycloak).
        self.admin_client_id = admin_client_id
        # Keycloak gives every new user (service-account users too) this composite role; it carries
        # Keycloak's own defaults (offline_access, uma_authorization, account roles), no CityOS role.
        self.default_role = f"default-roles-{realm}"

    @classmethod
    def from_settings(cls, settings: KeycloakSettings) -> KeycloakDirectory:
        if not settings.configured:
            raise ValueError("CITYOS_KEYCLOAK_URL is not set: there is no Keycloak to provision")
        secret = settings.admin_client_secret.get_secret_value()
        if not settings.admin_client_id or not secret:
            raise ValueError(
                "the Keycloak admin client needs CITYOS_KEYCLOAK_ADMIN_CLIENT_ID and "
                "CITYOS_KEYCLOAK_ADMIN_CLIENT_SECRET (client credentials, not a password)"
            )
        url = settings.url if settings.url.endswith("/") else settings.url + "/"
        connection = KeycloakOpenIDConnection(
            server_url=url,
            realm_name=settings.realm,
            client_id=settings.admin_client_id,
            client_secret_key=secret,
            grant_type="client_credentials",
            verify=settings.verify,
            timeout=REQUEST_TIMEOUT_S,
        )
        return cls(
            KeycloakAdmin(connection=connection),
            realm=settings.realm,
            admin_client_id=settings.admin_client_id,
        )

    async def aclose(self) -> None:
        await self.admin.connection.aclose()

    # Organizations -------------------------------------------------------------------------------

    async def _group(self, organization_id: str) -> dict[str, Any] | None:
        name = ORGANIZATION_GROUP_PREFIX + organization_id
        found = await _call(
            f"looking up the group of organization {organization_id!r}", self.admin.a_get_group_by_path(name)
        )
        # python-keycloak returns the 404 body (no `id`) when the path does not exist.
        if isinstance(found, dict) and found.get("id"):
            return found
        return None

    async def ensure_organization(self, organization_id: str, display_name: str) -> None:
        _check_name("organization id", organization_id)
        name = ORGANIZATION_GROUP_PREFIX + organization_id
        wanted = {ORG_ATTRIBUTE: organization_id, DISPLAY_NAME_ATTRIBUTE: display_name}
        group = await self._group(organization_id)
        if group is None:
            created = await _call(
                f"creating the group {name!r}",
                self.admin.a_create_group(
                    {"name": name, "attributes": {key: [value] for key, value in wanted.items()}},
                    skip_exists=True,
                ),
            )
            if created:
                return
            group = await self._group(organization_id)  # created concurrently: check its attributes
            if group is None:
                raise KeycloakProvisioningError(f"creating the group {name!r}", HTTP_CONFLICT, "name taken")
        if all(_attribute(group, key) == [value] for key, value in wanted.items()):
            return
        await _call(
            f"updating the group {name!r}",
            self.admin.a_update_group(
                group["id"], {"name": name, "attributes": _merged_attributes(group, wanted)}
            ),
        )

    # Realm roles ---------------------------------------------------------------------------------

    async def _sync_realm_roles(self, keycloak_user_id: str, roles: Iterable[str], whose: str) -> None:
        """Make the user's direct realm-role mappings exactly `roles` (plus Keycloak's default role)."""
        wanted = set(roles)
        realm_roles = await _call("listing the realm roles", self.admin.a_get_realm_roles())
        by_name = {role["name"]: role for role in realm_roles}
        unknown = sorted(wanted - set(by_name))
        if unknown:
            raise KeycloakProvisioningError(
                f"assigning realm roles to {whose}",
                None,
                f"the realm has no role(s) {', '.join(unknown)}: import the current "
                "infra/keycloak/cityos-realm.json (python -m cityos_identity.realm --write ...)",
            )
        current = await _call(
            f"reading the realm roles of {whose}", self.admin.a_get_realm_roles_of_user(keycloak_user_id)
        )
        current_names = {role["name"] for role in current}
        missing = sorted(wanted - current_names)
        extra = sorted(current_names - wanted - {self.default_role})
        if missing:
            await _call(
                f"assigning realm roles {', '.join(missing)} to {whose}",
                self.admin.a_assign_realm_roles(
                    keycloak_user_id, [{"id": by_name[name]["id"], "name": name} for name in missing]
                ),
            )
        if extra:
            by_current = {role["name"]: role for role in current}
            await _call(
                f"removing realm roles {', '.join(extra)} from {whose}",
                self.admin.a_delete_realm_roles_of_user(
                    keycloak_user_id, [{"id": by_current[name]["id"], "name": name} for name in extra]
                ),
            )

    # Users ---------------------------------------------------------------------------------------

    async def _user_id_by_username(self, username: str) -> str | None:
        found = await _call(f"looking up the user {username!r}", self.admin.a_get_user_id(username))
        return str(found) if found else None

    async def _user_by_cityos_id(self, user_id: str) -> dict[str, Any]:
        action = f"looking up the user with {USER_ID_ATTRIBUTE} {user_id!r}"
        candidates = await _call(
            action, self.admin.a_get_users({"q": f"{USER_ID_ATTRIBUTE}:{user_id}", "exact": True})
        )
        matches = [user for user in candidates if _attribute(user, USER_ID_ATTRIBUTE) == [user_id]]
        if len(matches) != 1:
            raise KeycloakProvisioningError(
                action, 404 if not matches else None, f"{len(matches)} users carry that id (expected 1)"
            )
        return cast(dict[str, Any], matches[0])

    async def ensure_user(self, user: DirectoryUser) -> None:
        _check_name("username", user.username)
        _check_name("organization id", user.organization)
        username = user.username.lower()  # Keycloak keeps usernames in lower case
        whose = f"user {username!r}"
        group = await self._group(user.organization)
        if group is None:
            raise KeycloakProvisioningError(
                f"adding {whose} to organization {user.organization!r}",
                None,
                "the organization's group does not exist (ensure_organization first)",
            )
        wanted_attributes = {ORG_ATTRIBUTE: user.organization, USER_ID_ATTRIBUTE: user.user_id}
        keycloak_id = await self._user_id_by_username(username)
        was_enabled = True
        created = False
        if keycloak_id is None:
            payload: dict[str, Any] = {
                "username": username,
                "firstName": user.display_name,
                "enabled": user.enabled,
                "attributes": {key: [value] for key, value in wanted_attributes.items()},
            }
            if user.email:
                payload["email"] = user.email
            try:
                keycloak_id = await _call(f"creating {whose}", self.admin.a_create_user(payload))
                created = True
            except KeycloakConflictError:
                # Created concurrently? Then carry on as an update; otherwise (the email belongs to
                # someone else) the conflict stands.
                keycloak_id = await self._user_id_by_username(username)
                if keycloak_id is None:
                    raise
        if not created:
            current = await _call(f"reading {whose}", self.admin.a_get_user(keycloak_id))
            was_enabled = bool(current.get("enabled", True))
            up_to_date = (
                (current.get("email") or "") == user.email
                and current.get("firstName") == user.display_name
                and bool(current.get("enabled", True)) == user.enabled
                and all(_attribute(current, key) == [value] for key, value in wanted_attributes.items())
            )
            if not up_to_date:
                update = _user_update(current, firstName=user.display_name, enabled=user.enabled)
                if user.email:
                    update["email"] = user.email
                else:
                    update.pop("email", None)
                update["attributes"] = _merged_attributes(current, wanted_attributes)
                await _call(f"updating {whose}", self.admin.a_update_user(keycloak_id, update))
        await self._sync_membership(keycloak_id, group, whose)
        await self._sync_realm_roles(keycloak_id, user.roles, whose)
        if was_enabled and not user.enabled:
            await _call(f"ending the sessions of {whose}", self.admin.a_user_logout(keycloak_id))

    async def _sync_membership(self, keycloak_id: str, group: Mapping[str, Any], whose: str) -> None:
        """Member of exactly this organization group (other, non-organization groups are kept)."""
        groups = await _call(f"reading the groups of {whose}", self.admin.a_get_user_groups(keycloak_id))
        if not any(member["id"] == group["id"] for member in groups):
            await _call(
                f"adding {whose} to the group {group['name']!r}",
                self.admin.a_group_user_add(keycloak_id, group["id"]),
            )
        for member in groups:
            if member["id"] != group["id"] and str(member.get("name", "")).startswith(
                ORGANIZATION_GROUP_PREFIX
            ):
                await _call(
                    f"removing {whose} from the group {member['name']!r}",
                    self.admin.a_group_user_remove(keycloak_id, member["id"]),
                )

    async def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        current = await self._user_by_cityos_id(user_id)
        whose = f"user {current.get('username')!r}"
        if bool(current.get("enabled", True)) == enabled:
            return
        await _call(
            f"{'enabling' if enabled else 'disabling'} {whose}",
            self.admin.a_update_user(current["id"], _user_update(current, enabled=enabled)),
        )
        if not enabled:
            await _call(f"ending the sessions of {whose}", self.admin.a_user_logout(current["id"]))

    # Service accounts ----------------------------------------------------------------------------

    @staticmethod
    def _service_client(account: DirectoryServiceAccount) -> dict[str, Any]:
        """The fields of the client that make it a service account (compared and enforced)."""
        return {
            "clientId": account.client_id,
            "enabled": account.enabled,
            "protocol": "openid-connect",
            "publicClient": False,
            "bearerOnly": False,
            "clientAuthenticatorType": "client-secret",
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
        }

    def _check_not_admin(self, client_id: str) -> None:
        if self.admin_client_id and client_id == self.admin_client_id:
            raise ValueError(f"{client_id!r} is the directory's own admin client; it is not provisioned here")

    async def _client_uuid(self, client_id: str) -> str | None:
        found = await _call(f"looking up the client {client_id!r}", self.admin.a_get_client_id(client_id))
        return str(found) if found else None

    async def ensure_service_account(self, account: DirectoryServiceAccount, secret: str) -> None:
        _check_name("client id", account.client_id)
        self._check_not_admin(account.client_id)
        _check_name("organization id", account.organization)
        if not secret:
            raise ValueError("a service account needs a secret")
        whose = f"client {account.client_id!r}"
        wanted = self._service_client(account)
        uuid = await self._client_uuid(account.client_id)
        if uuid is None:
            payload = {**wanted, "secret": secret, "defaultClientScopes": [CLIENT_SCOPE]}
            try:
                uuid = await _call(f"creating {whose}", self.admin.a_create_client(payload))
            except KeycloakConflictError:
                uuid = await self._client_uuid(account.client_id)
                if uuid is None:
                    raise
        current = await _call(f"reading {whose}", self.admin.a_get_client(uuid))
        changes = {name: value for name, value in wanted.items() if current.get(name) != value}
        stored = await _call(f"reading the secret of {whose}", self.admin.a_get_client_secrets(uuid))
        if not isinstance(stored, dict) or stored.get("value") != secret:
            changes["secret"] = secret
        if changes:
            changes["clientId"] = account.client_id
            await _call(f"updating {whose}", self.admin.a_update_client(uuid, changes))
        service_user = await _call(
            f"reading the service-account user of {whose}", self.admin.a_get_client_service_account_user(uuid)
        )
        user_whose = f"service-account user of {whose}"
        if _attribute(service_user, ORG_ATTRIBUTE) != [account.organization]:
            update = _user_update(service_user)
            update["attributes"] = _merged_attributes(service_user, {ORG_ATTRIBUTE: account.organization})
            await _call(f"updating the {user_whose}", self.admin.a_update_user(service_user["id"], update))
        await self._sync_realm_roles(service_user["id"], account.roles, user_whose)
        if "enabled" in changes and not account.enabled:
            await _call(
                f"ending the sessions of the {user_whose}", self.admin.a_user_logout(service_user["id"])
            )

    async def set_service_account_enabled(self, client_id: str, enabled: bool) -> None:
        self._check_not_admin(client_id)
        whose = f"client {client_id!r}"
        uuid = await self._client_uuid(client_id)
        if uuid is None:
            raise KeycloakProvisioningError(f"looking up the {whose}", 404, "no such client")
        current = await _call(f"reading {whose}", self.admin.a_get_client(uuid))
        if bool(current.get("enabled", True)) == enabled:
            return
        await _call(
            f"{'enabling' if enabled else 'disabling'} {whose}",
            self.admin.a_update_client(uuid, {"clientId": client_id, "enabled": enabled}),
        )
        if not enabled:
            service_user = await _call(
                f"reading the service-account user of {whose}",
                self.admin.a_get_client_service_account_user(uuid),
            )
            await _call(
                f"ending the sessions of the service-account user of {whose}",
                self.admin.a_user_logout(service_user["id"]),
            )
