"""IDN-4: the Keycloak provisioning code against a stand-in Keycloak admin API.

No live Keycloak runs in CI. The stand-in below serves exactly the routes of python-keycloak's own
`keycloak.urls_patterns` that the provisioning uses (each format string turned into a matcher; any other
path is 404), keeps state (users, groups, clients, secrets, realm-role mappings, memberships, logouts) so
calls have effects the tests assert on, and checks every request body against the fields of the
documented representations — the `@keycloak/keycloak-admin-client` type definitions
(js/libs/keycloak-admin-client/src/defs/*.ts in keycloak/keycloak) and the Keycloak Admin REST API —
answering 400 to an unknown field, so a typo in a payload fails these tests. Its realm roles are the ones
the committed realm export declares plus the ones Keycloak adds by itself.
"""

from __future__ import annotations

import copy
import json
import re
import string
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from keycloak import urls_patterns
from pydantic import SecretStr

from cityos_identity.directory import DirectoryServiceAccount, DirectoryUser
from cityos_identity.keycloak import (
    KeycloakConflictError,
    KeycloakDirectory,
    KeycloakProvisioningError,
    KeycloakSettings,
)

pytestmark = pytest.mark.req("IDN-4")

REPO = Path(__file__).resolve().parents[3]
REALM_EXPORT = REPO / "infra" / "keycloak" / "cityos-realm.json"
REALM = "cityos"
ADMIN_CLIENT = "cityos-identity"
ADMIN_SECRET = "admin-secret-9f4b2c"
DEFAULT_ROLE = f"default-roles-{REALM}"
KEYCLOAK_OWN_ROLES = (DEFAULT_ROLE, "offline_access", "uma_authorization")

# The documented representations (keycloak-admin-client defs/*.ts): field -> JSON type(s).
S, B, N, L, D = str, bool, int, list, dict
USER = {
    "id": S, "createdTimestamp": N, "username": S, "enabled": B, "totp": B, "emailVerified": B,
    "disableableCredentialTypes": L, "requiredActions": L, "notBefore": N, "access": D,
    "attributes": D, "clientConsents": L, "clientRoles": D, "credentials": L, "email": S,
    "federatedIdentities": L, "federationLink": S, "firstName": S, "groups": L, "lastName": S,
    "origin": S, "realmRoles": L, "self": S, "serviceAccountClientId": S, "userProfileMetadata": D,
}  # fmt: skip
GROUP = {
    "id": S, "name": S, "path": S, "subGroupCount": N, "subGroups": L, "access": D, "attributes": D,
    "clientRoles": D, "realmRoles": L,
}  # fmt: skip
CLIENT = {
    "access": D, "adminUrl": S, "attributes": D, "authenticationFlowBindingOverrides": D,
    "authorizationServicesEnabled": B, "authorizationSettings": D, "baseUrl": S, "bearerOnly": B,
    "clientAuthenticatorType": S, "clientId": S, "consentRequired": B, "defaultClientScopes": L,
    "defaultRoles": L, "description": S, "directAccessGrantsEnabled": B, "enabled": B,
    "alwaysDisplayInConsole": B, "frontchannelLogout": B, "fullScopeAllowed": B, "id": S,
    "implicitFlowEnabled": B, "name": S, "nodeReRegistrationTimeout": N, "notBefore": N,
    "optionalClientScopes": L, "origin": S, "protocol": S, "protocolMappers": L, "publicClient": B,
    "redirectUris": L, "registeredNodes": D, "registrationAccessToken": S, "rootUrl": S, "secret": S,
    "selectiveConsent": B, "selectiveConsentAttributes": D, "serviceAccountsEnabled": B,
    "standardFlowEnabled": B, "surrogateAuthRequired": B, "webOrigins": L,
}  # fmt: skip
ROLE = {
    "id": S, "name": S, "description": S, "scopeParamRequired": B, "composite": B, "composites": D,
    "clientRole": B, "containerId": S, "attributes": D, "access": D,
}  # fmt: skip
CREDENTIAL = {
    "createdDate": N, "credentialData": S, "id": S, "priority": N, "secretData": S, "temporary": B,
    "type": S, "userLabel": S, "value": S,
}  # fmt: skip
PROTOCOL_MAPPER = {"config": D, "id": S, "name": S, "protocol": S, "protocolMapper": S}
NESTED = {("user", "credentials"): "credential", ("client", "protocolMappers"): "protocolMapper"}
SCHEMAS = {
    "user": USER, "group": GROUP, "client": CLIENT, "role": ROLE, "credential": CREDENTIAL,
    "protocolMapper": PROTOCOL_MAPPER,
}  # fmt: skip


def representation_errors(value: Any, kind: str) -> list[str]:
    """What is wrong with `value` as a `kind` representation: unknown fields, wrong JSON types, and
    attribute maps that are not Keycloak's Map<String, List<String>> (users, groups)."""
    if not isinstance(value, dict):
        return [f"{kind}: not a JSON object"]
    schema = SCHEMAS[kind]
    errors = [f"{kind}: unknown field {name!r}" for name in value if name not in schema]
    for name, expected in schema.items():
        if name in value and value[name] is not None:
            item = value[name]
            if not isinstance(item, expected) or (expected is int and isinstance(item, bool)):
                errors.append(f"{kind}.{name}: not a {expected.__name__}")
    attributes = value.get("attributes")
    if kind in ("user", "group") and isinstance(attributes, dict):
        for name, values in attributes.items():
            if not isinstance(values, list) or not all(isinstance(item, str) for item in values):
                errors.append(f"{kind}.attributes.{name}: not a list of strings")
    for (outer, field), inner in NESTED.items():
        if outer == kind:
            for item in value.get(field) or []:
                errors.extend(representation_errors(item, inner))
    return errors


# Routes: python-keycloak's URL patterns (by name) and the methods the stand-in answers on each.
ROUTES: dict[str, tuple[str, ...]] = {
    "URL_TOKEN": ("POST",),
    "URL_ADMIN_USERS": ("GET", "POST"),
    "URL_ADMIN_USER": ("GET", "PUT"),
    "URL_ADMIN_USER_GROUPS": ("GET",),
    "URL_ADMIN_USER_GROUP": ("PUT", "DELETE"),
    "URL_ADMIN_USER_LOGOUT": ("POST",),
    "URL_ADMIN_USER_REALM_ROLES": ("GET", "POST", "DELETE"),
    "URL_ADMIN_GROUPS": ("GET", "POST"),
    "URL_ADMIN_GROUP": ("GET", "PUT"),
    "URL_ADMIN_GROUP_BY_PATH": ("GET",),
    "URL_ADMIN_CLIENTS": ("GET", "POST"),
    "URL_ADMIN_CLIENT": ("GET", "PUT"),
    "URL_ADMIN_CLIENT_SECRETS": ("GET",),
    "URL_ADMIN_CLIENT_SERVICE_ACCOUNT_USER": ("GET",),
    "URL_ADMIN_REALM_ROLES": ("GET",),
}


def pattern_matcher(template: str) -> re.Pattern[str]:
    """A python-keycloak format string ("admin/realms/{realm-name}/users/{id}") as an anchored regex:
    each field one path segment (`path` of group-by-path may span several)."""
    parts = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            segment = ".+" if field == "path" else "[^/]+"
            parts.append(f"(?P<{field.replace('-', '_')}>{segment})")
    return re.compile("/" + "".join(parts))


MATCHERS = [(name, pattern_matcher(getattr(urls_patterns, name))) for name in ROUTES]


class Reply(Exception):  # control flow of the stand-in
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _page(items: list[Any], query: dict[str, str]) -> list[Any]:
    first = int(query.get("first", 0))
    maximum = int(query["max"]) if "max" in query else None
    return items[first:] if maximum is None else items[first : first + maximum]


class KeycloakStandIn:
    """Keycloak's admin API for one realm, in memory. `faults[(method, route)]` makes the next such
    request answer (status, body) instead; `writes` lists every non-GET admin request."""

    def __init__(self, realm_roles: list[str]) -> None:
        self.lock = threading.Lock()
        self.tokens: set[str] = set()
        self.roles = {
            name: {"id": str(uuid.uuid4()), "name": name, "composite": name == DEFAULT_ROLE,
                   "clientRole": False, "containerId": REALM}
            for name in [*realm_roles, *KEYCLOAK_OWN_ROLES]
        }  # fmt: skip
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.clients: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, str] = {}
        self.role_mappings: dict[str, set[str]] = {}
        self.memberships: dict[str, set[str]] = {}
        self.logouts: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: dict[tuple[str, str], tuple[int, Any]] = {}
        self.before: dict[tuple[str, str], Callable[[], None]] = {}
        self.base_url = ""

    # Helpers for the tests.
    def state(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(
                {
                    "users": self.users, "groups": self.groups, "clients": self.clients,
                    "secrets": self.secrets, "role_mappings": self.role_mappings,
                    "memberships": self.memberships, "logouts": self.logouts,
                }
            )  # fmt: skip

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [
            (method, route) for method, route in self.requests if method != "GET" and route != "URL_TOKEN"
        ]

    def user_named(self, username: str) -> dict[str, Any]:
        return next(user for user in self.users.values() if user["username"] == username)

    def client_named(self, client_id: str) -> dict[str, Any]:
        return next(client for client in self.clients.values() if client["clientId"] == client_id)

    def group_named(self, name: str) -> dict[str, Any]:
        return next(group for group in self.groups.values() if group["name"] == name)

    def realm_roles_of(self, user_id: str) -> set[str]:
        return set(self.role_mappings.get(user_id, set()))

    def group_names_of(self, user_id: str) -> set[str]:
        return {self.groups[group]["name"] for group in self.memberships.get(user_id, set())}

    # Dispatch.
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        split = urlsplit(raw_path)
        query = {key: values[-1] for key, values in parse_qs(split.query, keep_blank_values=True).items()}
        for name, matcher in MATCHERS:
            match = matcher.fullmatch(split.path)
            if match is None:
                continue
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            if params.get("realm_name") != REALM:
                return Reply(404, {"error": "Realm not found."})
            if method not in ROUTES[name]:
                return Reply(405, {"error": "Method not allowed"})
            with self.lock:
                self.requests.append((method, name))
                hook = self.before.pop((method, name), None)
            if hook is not None:
                hook()
            with self.lock:
                fault = self.faults.pop((method, name), None)
                if fault is not None:
                    return Reply(fault[0], fault[1])
                if (
                    name != "URL_TOKEN"
                    and headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens
                ):
                    return Reply(401, {"error": "HTTP 401 Unauthorized"})
                try:
                    getattr(self, f"{method.lower()}_{name[4:].lower()}")(params, query, body, split.path)
                except Reply as reply:
                    return reply
                raise AssertionError(f"handler {method} {name} returned without a reply")
        return Reply(404, {"error": "Unable to find matching target resource method"})

    @staticmethod
    def _json(body: bytes, kind: str | None = None, *, many: bool = False) -> Any:
        try:
            value = json.loads(body or b"null")
        except ValueError:
            raise Reply(400, {"error": "invalid JSON"}) from None
        items = value if many else [value]
        if many and not isinstance(value, list):
            raise Reply(400, {"error": "expected a JSON array"})
        if kind is not None:
            errors = [error for item in items for error in representation_errors(item, kind)]
            if errors:
                raise Reply(400, {"error": "unrecognized fields", "errorMessage": "; ".join(errors)})
        return value

    def _created(self, path: str, new_id: str) -> Reply:
        return Reply(201, None, {"Location": f"{self.base_url}{path.lstrip('/')}/{new_id}"})

    def _user(self, user_id: str) -> dict[str, Any]:
        if user_id not in self.users:
            raise Reply(404, {"error": "User not found"})
        return self.users[user_id]

    def _client(self, client_uuid: str) -> dict[str, Any]:
        if client_uuid not in self.clients:
            raise Reply(404, {"error": "Could not find client"})
        return self.clients[client_uuid]

    def _new_user(self, rep: dict[str, Any]) -> str:
        new_id = str(uuid.uuid4())
        user = {
            key: value for key, value in rep.items() if key not in ("credentials", "groups", "realmRoles")
        }
        user.update(
            id=new_id, username=rep["username"].lower(), createdTimestamp=1, enabled=bool(rep.get("enabled"))
        )
        self.users[new_id] = user
        self.role_mappings[new_id] = {DEFAULT_ROLE}  # Keycloak gives every new user its default role
        self.memberships[new_id] = set()
        return new_id

    # Token endpoint (client credentials only: the admin never signs in with a password).
    def post_token(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        form = {key: values[-1] for key, values in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            raise Reply(400, {"error": "unsupported_grant_type"})
        if form.get("client_id") != ADMIN_CLIENT or form.get("client_secret") != ADMIN_SECRET:
            raise Reply(
                401, {"error": "unauthorized_client", "error_description": "Invalid client credentials"}
            )
        token = uuid.uuid4().hex
        self.tokens.add(token)
        raise Reply(200, {"access_token": token, "expires_in": 300, "token_type": "Bearer"})

    # Users.
    def get_admin_users(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        users = list(self.users.values())
        exact = query.get("exact") == "true"
        if "username" in query:
            wanted = query["username"].lower()
            users = [u for u in users if (u["username"] == wanted if exact else wanted in u["username"])]
        for pair in query.get("q", "").split():
            key, _, value = pair.partition(":")
            users = [u for u in users if value in (u.get("attributes") or {}).get(key, [])]
        raise Reply(200, _page(users, query))

    def post_admin_users(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        rep = self._json(body, "user")
        if not rep.get("username"):
            raise Reply(400, {"errorMessage": "error-user-attribute-required"})
        if any(user["username"] == rep["username"].lower() for user in self.users.values()):
            raise Reply(409, {"errorMessage": "User exists with same username"})
        if rep.get("email") and any(user.get("email") == rep["email"] for user in self.users.values()):
            raise Reply(409, {"errorMessage": "User exists with same email"})
        raise self._created(path, self._new_user(rep))

    def get_admin_user(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        raise Reply(200, self._user(params["id"]))

    def put_admin_user(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        user = self._user(params["id"])
        rep = self._json(body, "user")
        if rep.get("username") not in (None, user["username"]):
            raise Reply(400, {"errorMessage": "error-user-attribute-read-only"})
        if rep.get("email") and any(
            other.get("email") == rep["email"] for key, other in self.users.items() if key != user["id"]
        ):
            raise Reply(409, {"errorMessage": "User exists with same email"})
        # Keycloak's user profile takes a PUT as the whole profile: a missing name or email is removed.
        for name in ("email", "firstName", "lastName"):
            if rep.get(name) is None:
                user.pop(name, None)
            else:
                user[name] = rep[name]
        if rep.get("enabled") is not None:
            user["enabled"] = rep["enabled"]
        if rep.get("attributes") is not None:
            user["attributes"] = rep["attributes"]
        raise Reply(204)

    def get_admin_user_groups(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        groups = [self.groups[group] for group in sorted(self.memberships[params["id"]])]
        brief = [{"id": g["id"], "name": g["name"], "path": g["path"]} for g in groups]
        raise Reply(200, _page(brief, query))

    def put_admin_user_group(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        if params["group_id"] not in self.groups:
            raise Reply(404, {"error": "Could not find group by id"})
        self.memberships[params["id"]].add(params["group_id"])
        raise Reply(204)

    def delete_admin_user_group(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        self.memberships[params["id"]].discard(params["group_id"])
        raise Reply(204)

    def post_admin_user_logout(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        self.logouts[params["id"]] = self.logouts.get(params["id"], 0) + 1
        raise Reply(204)

    def get_admin_user_realm_roles(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        raise Reply(200, [self.roles[name] for name in sorted(self.role_mappings[params["id"]])])

    def _role_names(self, body: bytes) -> list[str]:
        names = []
        for rep in self._json(body, "role", many=True):
            known = self.roles.get(rep.get("name", ""))
            if known is None or known["id"] != rep.get("id"):  # Keycloak needs both, and matching
                raise Reply(404, {"error": "Role not found"})
            names.append(rep["name"])
        return names

    def post_admin_user_realm_roles(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        self.role_mappings[params["id"]].update(self._role_names(body))
        raise Reply(204)

    def delete_admin_user_realm_roles(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._user(params["id"])
        self.role_mappings[params["id"]].difference_update(self._role_names(body))
        raise Reply(204)

    # Groups.
    def get_admin_groups(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        raise Reply(200, _page(list(self.groups.values()), query))

    def post_admin_groups(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        rep = self._json(body, "group")
        if not rep.get("name"):
            raise Reply(400, {"errorMessage": "Group name is missing"})
        if any(group["name"] == rep["name"] for group in self.groups.values()):
            raise Reply(409, {"errorMessage": f"Top level group named '{rep['name']}' already exists."})
        new_id = str(uuid.uuid4())
        self.groups[new_id] = {
            "id": new_id, "name": rep["name"], "path": "/" + rep["name"], "subGroupCount": 0,
            "attributes": rep.get("attributes") or {}, "realmRoles": [], "clientRoles": {},
        }  # fmt: skip
        raise self._created(path, new_id)

    def get_admin_group(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        if params["id"] not in self.groups:
            raise Reply(404, {"error": "Could not find group by id"})
        raise Reply(200, self.groups[params["id"]])

    def put_admin_group(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        if params["id"] not in self.groups:
            raise Reply(404, {"error": "Could not find group by id"})
        rep, group = self._json(body, "group"), self.groups[params["id"]]
        if rep.get("name"):
            group.update(name=rep["name"], path="/" + rep["name"])
        if rep.get("attributes") is not None:
            group["attributes"] = rep["attributes"]
        raise Reply(204)

    def get_admin_group_by_path(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        for group in self.groups.values():
            if group["path"] == "/" + params["path"].strip("/"):
                raise Reply(200, group)
        raise Reply(404, {"error": "Group path does not exist"})

    # Clients.
    def get_admin_clients(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        clients = [c for c in self.clients.values() if query.get("clientId") in (None, c["clientId"])]
        raise Reply(200, _page(clients, query))

    def _service_account(self, client: dict[str, Any]) -> None:
        if client.get("serviceAccountsEnabled") and not any(
            user.get("serviceAccountClientId") == client["clientId"] for user in self.users.values()
        ):
            self._new_user(
                {"username": f"service-account-{client['clientId']}", "enabled": True,
                 "serviceAccountClientId": client["clientId"]}
            )  # fmt: skip

    def post_admin_clients(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        rep = self._json(body, "client")
        if not rep.get("clientId"):
            raise Reply(400, {"errorMessage": "clientId is required"})
        if any(client["clientId"] == rep["clientId"] for client in self.clients.values()):
            raise Reply(409, {"errorMessage": f"Client {rep['clientId']} already exists"})
        new_id = str(uuid.uuid4())
        client = {key: value for key, value in rep.items() if key != "secret"}
        client["id"] = new_id
        self.clients[new_id] = client
        if not rep.get("publicClient"):
            self.secrets[new_id] = rep.get("secret") or uuid.uuid4().hex
        self._service_account(client)
        raise self._created(path, new_id)

    def get_admin_client(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        client = self._client(params["id"])
        secret = self.secrets.get(params["id"])
        raise Reply(200, {**client, **({"secret": secret} if secret else {})})

    def put_admin_client(self, params: dict[str, str], query: dict[str, str], body: bytes, path: str) -> None:
        client = self._client(params["id"])
        rep = self._json(body, "client")
        if rep.get("secret"):
            self.secrets[params["id"]] = rep["secret"]
        client.update(
            {key: value for key, value in rep.items() if value is not None and key not in ("secret", "id")}
        )
        self._service_account(client)
        raise Reply(204)

    def get_admin_client_secrets(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        self._client(params["id"])
        raise Reply(200, {"type": "secret", "value": self.secrets[params["id"]]})

    def get_admin_client_service_account_user(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        client = self._client(params["id"])
        for user in self.users.values():
            if user.get("serviceAccountClientId") == client["clientId"]:
                raise Reply(200, user)
        raise Reply(400, {"error": "Service account not enabled for the client"})

    def get_admin_realm_roles(
        self, params: dict[str, str], query: dict[str, str], body: bytes, path: str
    ) -> None:
        raise Reply(200, _page(sorted(self.roles.values(), key=lambda role: role["name"]), query))


def _handler(stand_in: KeycloakStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            reply = stand_in.handle(self.command, self.path, self.headers, body)
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


@pytest.fixture
def keycloak():
    roles = [role["name"] for role in json.loads(REALM_EXPORT.read_text())["roles"]["realm"]]
    stand_in = KeycloakStandIn(roles)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
    stand_in.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()
    thread.join()


def _settings(keycloak: KeycloakStandIn, secret: str = ADMIN_SECRET) -> KeycloakSettings:
    return KeycloakSettings(
        url=keycloak.base_url.rstrip("/"),
        realm=REALM,
        admin_client_id=ADMIN_CLIENT,
        admin_client_secret=SecretStr(secret),
        verify=True,
    )


@pytest.fixture
async def directory(keycloak):
    directory = KeycloakDirectory.from_settings(_settings(keycloak))
    yield directory
    await directory.aclose()


def alice(**changes: Any) -> DirectoryUser:
    fields: dict[str, Any] = {
        "user_id": "u-alice",
        "username": "Alice",
        "email": "alice@transport.city.example",
        "display_name": "Alice Wang",
        "organization": "transport",
        "roles": frozenset({"operator", "analyst"}),
    }
    fields.update(changes)
    return DirectoryUser(**fields)


# The stand-in itself: it must be able to say no.


def test_routes_are_python_keycloaks_own_patterns_and_nothing_else(keycloak):
    base = keycloak.base_url
    assert all(isinstance(getattr(urls_patterns, name), str) for name in ROUTES)
    token = httpx.post(
        base + urls_patterns.URL_TOKEN.format(**{"realm-name": REALM}),
        data={"grant_type": "client_credentials", "client_id": ADMIN_CLIENT, "client_secret": ADMIN_SECRET},
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(base + f"admin/realms/{REALM}/roles", headers=auth).status_code == 200
    # A pattern python-keycloak has but the stand-in does not serve, and paths no pattern names.
    unserved = urls_patterns.URL_ADMIN_CLIENT_ROLES.format(**{"realm-name": REALM, "id": "x"})
    for path in (unserved, f"admin/realms/{REALM}/components", "admin/serverinfo", f"realms/{REALM}/users"):
        assert httpx.get(base + path, headers=auth).status_code == 404, path
    assert httpx.get(base + f"admin/realms/{REALM}/roles").status_code == 401  # no token


def test_stand_in_rejects_undocumented_fields(keycloak):
    base = keycloak.base_url
    token = httpx.post(
        base + f"realms/{REALM}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials", "client_id": ADMIN_CLIENT, "client_secret": ADMIN_SECRET},
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    typo = httpx.post(
        base + f"admin/realms/{REALM}/users", headers=auth, json={"username": "x", "enabeld": True}
    )
    assert typo.status_code == 400
    assert "enabeld" in typo.text
    flat = httpx.post(
        base + f"admin/realms/{REALM}/users", headers=auth, json={"username": "x", "attributes": {"org": "a"}}
    )
    assert flat.status_code == 400
    client = httpx.post(
        base + f"admin/realms/{REALM}/clients", headers=auth, json={"clientId": "c", "serviceAccount": True}
    )
    assert client.status_code == 400
    assert keycloak.users == {}
    assert keycloak.clients == {}


# The provisioning code.


async def test_ensure_organization_creates_its_group(directory, keycloak):
    await directory.ensure_organization("transport", "Transport Department")
    group = keycloak.group_named("org-transport")
    assert group["path"] == "/org-transport"
    assert group["attributes"] == {"org": ["transport"], "display_name": ["Transport Department"]}

    await directory.ensure_organization("transport", "Department of Transport")
    assert keycloak.group_named("org-transport")["attributes"]["display_name"] == ["Department of Transport"]
    assert len(keycloak.groups) == 1


async def test_ensure_user_creates_then_sets_exactly_the_given_roles(directory, keycloak):
    await directory.ensure_organization("transport", "Transport")
    await directory.ensure_organization("utilities", "Utilities")
    await directory.ensure_user(alice())

    user = keycloak.user_named("alice")
    assert user["enabled"] is True
    assert user["email"] == "alice@transport.city.example"
    assert user["firstName"] == "Alice Wang"
    assert user["attributes"] == {"org": ["transport"], "cityos_user_id": ["u-alice"]}
    assert keycloak.group_names_of(user["id"]) == {"org-transport"}
    assert keycloak.realm_roles_of(user["id"]) == {"operator", "analyst", DEFAULT_ROLE}

    # Roles replaced (extra ones removed), organization moved: one org group, the new `org`.
    await directory.ensure_user(alice(roles=frozenset({"auditor"}), organization="utilities"))
    user = keycloak.user_named("alice")
    assert keycloak.realm_roles_of(user["id"]) == {"auditor", DEFAULT_ROLE}
    assert keycloak.group_names_of(user["id"]) == {"org-utilities"}
    assert user["attributes"] == {"org": ["utilities"], "cityos_user_id": ["u-alice"]}
    assert user["email"] == "alice@transport.city.example"  # the full-profile PUT kept it
    assert len(keycloak.users) == 1

    await directory.ensure_user(alice(roles=frozenset()))
    assert keycloak.realm_roles_of(user["id"]) == {DEFAULT_ROLE}


async def test_set_user_enabled_disables_and_ends_sessions(directory, keycloak):
    await directory.ensure_organization("transport", "Transport")
    await directory.ensure_user(alice())
    user_id = keycloak.user_named("alice")["id"]

    await directory.set_user_enabled("u-alice", False)
    assert keycloak.user_named("alice")["enabled"] is False
    assert keycloak.logouts == {user_id: 1}
    assert keycloak.user_named("alice")["email"] == "alice@transport.city.example"

    await directory.set_user_enabled("u-alice", True)
    assert keycloak.user_named("alice")["enabled"] is True
    assert keycloak.logouts == {user_id: 1}

    # Disabling through ensure_user ends the sessions too.
    await directory.ensure_user(alice(enabled=False))
    assert keycloak.user_named("alice")["enabled"] is False
    assert keycloak.logouts == {user_id: 2}

    with pytest.raises(KeycloakProvisioningError, match="u-nobody") as raised:
        await directory.set_user_enabled("u-nobody", False)
    assert raised.value.status == 404


async def test_ensure_service_account_makes_a_client_credentials_client(directory, keycloak):
    account = DirectoryServiceAccount("parking-exporter", "transport", frozenset({"service", "analyst"}))
    await directory.ensure_service_account(account, "s3cret-one")

    client = keycloak.client_named("parking-exporter")
    assert client["serviceAccountsEnabled"] is True
    assert client["publicClient"] is False
    assert client["standardFlowEnabled"] is False
    assert client["directAccessGrantsEnabled"] is False
    assert client["implicitFlowEnabled"] is False
    assert client["enabled"] is True
    assert client["defaultClientScopes"] == ["cityos"]
    assert keycloak.secrets[client["id"]] == "s3cret-one"
    sa_user = keycloak.user_named("service-account-parking-exporter")
    assert sa_user["attributes"] == {"org": ["transport"]}
    assert keycloak.realm_roles_of(sa_user["id"]) == {"service", "analyst", DEFAULT_ROLE}

    # New secret, fewer roles, another organization, disabled.
    changed = DirectoryServiceAccount("parking-exporter", "utilities", frozenset({"service"}), enabled=False)
    await directory.ensure_service_account(changed, "s3cret-two")
    client = keycloak.client_named("parking-exporter")
    assert keycloak.secrets[client["id"]] == "s3cret-two"
    assert client["enabled"] is False
    assert keycloak.user_named("service-account-parking-exporter")["attributes"] == {"org": ["utilities"]}
    assert keycloak.realm_roles_of(sa_user["id"]) == {"service", DEFAULT_ROLE}
    assert keycloak.logouts == {sa_user["id"]: 1}
    assert len(keycloak.clients) == 1

    await directory.set_service_account_enabled("parking-exporter", True)
    assert keycloak.client_named("parking-exporter")["enabled"] is True
    await directory.set_service_account_enabled("parking-exporter", False)
    assert keycloak.client_named("parking-exporter")["enabled"] is False
    assert keycloak.logouts == {sa_user["id"]: 2}


async def test_every_method_is_idempotent(directory, keycloak):
    account = DirectoryServiceAccount("bins-job", "utilities", frozenset({"service"}))

    async def provision() -> None:
        await directory.ensure_organization("transport", "Transport")
        await directory.ensure_organization("utilities", "Utilities")
        await directory.ensure_user(alice())
        await directory.ensure_user(
            alice(user_id="u-bob", username="bob", email="", roles=frozenset({"citizen"}), enabled=False)
        )
        await directory.set_user_enabled("u-bob", False)
        await directory.ensure_service_account(account, "bins-secret")
        await directory.set_service_account_enabled("bins-job", True)

    await provision()
    first_state, first_writes = keycloak.state(), len(keycloak.writes)
    assert first_writes > 0

    await provision()
    assert keycloak.writes[first_writes:] == []  # nothing written the second time
    assert keycloak.state() == first_state


# Failures: a specific exception naming the action and Keycloak's status, never a secret.


async def test_a_server_error_is_a_provisioning_error_with_the_status(directory, keycloak):
    await directory.ensure_organization("transport", "Transport")
    keycloak.faults[("POST", "URL_ADMIN_USERS")] = (500, {"error": "unknown_error"})
    with pytest.raises(KeycloakProvisioningError) as raised:
        await directory.ensure_user(alice())
    assert not isinstance(raised.value, KeycloakConflictError)
    assert raised.value.status == 500
    assert "creating user 'alice'" in str(raised.value)
    assert "unknown_error" in str(raised.value)


async def test_a_conflict_is_a_conflict_error_and_carries_no_secret(directory, keycloak, caplog):
    keycloak.faults[("POST", "URL_ADMIN_CLIENTS")] = (409, {"errorMessage": "Client exists"})
    with pytest.raises(KeycloakConflictError) as raised:
        await directory.ensure_service_account(DirectoryServiceAccount("job", "city"), "very-secret-value")
    assert raised.value.status == 409
    assert "creating client 'job'" in str(raised.value)
    assert "very-secret-value" not in str(raised.value)
    assert "very-secret-value" not in caplog.text
    assert ADMIN_SECRET not in str(raised.value)
    assert ADMIN_SECRET not in caplog.text

    # A user's email taken by someone else: 409 stands (no user of that name appeared).
    await directory.ensure_organization("transport", "Transport")
    await directory.ensure_user(alice(user_id="u-carol", username="carol"))
    with pytest.raises(KeycloakConflictError, match="User exists with same email"):
        await directory.ensure_user(alice())


async def test_a_concurrent_creation_is_not_an_error(directory, keycloak):
    await directory.ensure_organization("transport", "Transport")

    def someone_else_creates_alice() -> None:
        with keycloak.lock:
            keycloak._new_user({"username": "alice", "enabled": True})

    keycloak.before[("POST", "URL_ADMIN_USERS")] = someone_else_creates_alice
    await directory.ensure_user(alice())
    user = keycloak.user_named("alice")
    assert user["attributes"] == {"org": ["transport"], "cityos_user_id": ["u-alice"]}
    assert keycloak.realm_roles_of(user["id"]) == {"operator", "analyst", DEFAULT_ROLE}


async def test_wrong_admin_credentials_fail_with_401(keycloak):
    directory = KeycloakDirectory.from_settings(_settings(keycloak, secret="wrong"))
    try:
        with pytest.raises(KeycloakProvisioningError) as raised:
            await directory.ensure_organization("transport", "Transport")
        assert raised.value.status == 401
        assert "Invalid client credentials" in str(raised.value)
    finally:
        await directory.aclose()
    assert keycloak.groups == {}


async def test_the_admin_client_is_never_provisioned(directory, keycloak):
    with pytest.raises(ValueError, match="admin client"):
        await directory.ensure_service_account(DirectoryServiceAccount(ADMIN_CLIENT, "city"), "new-secret")
    with pytest.raises(ValueError, match="admin client"):
        await directory.set_service_account_enabled(ADMIN_CLIENT, False)
    assert keycloak.writes == []


async def test_a_role_missing_from_the_realm_is_reported(directory, keycloak):
    await directory.ensure_organization("transport", "Transport")
    with pytest.raises(KeycloakProvisioningError, match="no role\\(s\\) mayor") as raised:
        await directory.ensure_user(alice(roles=frozenset({"operator", "mayor"})))
    assert raised.value.status is None


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CITYOS_KEYCLOAK_URL", "https://sso.city.example")
    monkeypatch.setenv("CITYOS_KEYCLOAK_ADMIN_CLIENT_SECRET", "from-env")
    settings = KeycloakSettings()
    assert settings.url == "https://sso.city.example"
    assert settings.realm == "cityos"
    assert settings.admin_client_id == "cityos-identity"
    assert settings.verify is True
    assert "from-env" not in repr(settings)
    with pytest.raises(ValueError, match="CITYOS_KEYCLOAK_URL"):
        KeycloakDirectory.from_settings(KeycloakSettings(url=""))
