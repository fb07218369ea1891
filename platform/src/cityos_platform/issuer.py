"""The built-in development issuer: Keycloak's token shape without Keycloak.

Embedded mode and the tests use it in Keycloak's place, so the same verification code runs in both. It
keeps an RSA signing key under `var/issuer/` (created once with mode 0600, reused across runs so tokens
survive a restart), mints RS256 tokens with the claims CityOS's Keycloak realm puts in access tokens, and
serves the JWKS and an OIDC discovery document on Keycloak's paths:

    <issuer>/protocol/openid-connect/certs
    <issuer>/.well-known/openid-configuration

and Keycloak's token endpoint for the client-credentials grant only, so services get their tokens for
calls to one another (`cityos_platform.peers`) exactly as they do from Keycloak:

    POST <issuer>/protocol/openid-connect/token   grant_type=client_credentials, client_id, client_secret

It answers only confidential clients registered with `register_client` (`cityos dev` registers
`cityos-<service>` for every service it starts, with one secret kept under `var/issuer/`).

The issuer URL (the tokens' `iss`) depends on where the server listens, so `DevIssuerServer.start()`
binds first (port 0 picks a free one) and then sets `DevIssuer.issuer_url`; a DevIssuer used without a
server (`cityos token`) is given the URL of the server that will serve its keys.

It is a development tool: it signs whatever it is asked to. Production trusts Keycloak only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from cityos_platform.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

REALM_PATH = "/realms/cityos"
CERTS_PATH = "/protocol/openid-connect/certs"
TOKEN_PATH = "/protocol/openid-connect/token"  # noqa: S105 - a URL path, not a password
DISCOVERY_PATH = "/.well-known/openid-configuration"
KEY_FILE = "dev-issuer-key.pem"
CLIENT_SECRET_FILE = "dev-client-secret"  # noqa: S105 - a file name, not a password
SIGNING_ALGORITHM = "RS256"
# Client-credentials tokens: Keycloak's default access-token lifespan, so clients refresh in embedded
# mode as often as in production; the organization and role of the realm's service accounts.
SERVICE_TOKEN_TTL_S = 300
SERVICE_ORGANIZATION = "city"
SERVICE_ROLE = "service"
MAX_TOKEN_REQUEST_BYTES = 16 * 1024


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of an RSA public JWK: the key id."""
    members = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return jwt.utils.base64url_encode(hashlib.sha256(members.encode()).digest()).decode()


@dataclass(frozen=True)
class _Key:
    private: rsa.RSAPrivateKey
    public_jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return str(self.public_jwk["kid"])

    @classmethod
    def of(cls, private: rsa.RSAPrivateKey) -> _Key:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        jwk.update({"kid": jwk_thumbprint(jwk), "use": "sig", "alg": SIGNING_ALGORITHM})
        return cls(private, jwk)


def _new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(path, pem)


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically (a crash never leaves a half-written secret) and readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=".dev-issuer-", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o600)  # mkstemp creates 0600 already; be explicit
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def _load_or_create(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; restricting it to its owner", path)
            path.chmod(0o600)
        return key
    key = _new_private_key()
    _write_private_key(path, key)
    return key


def load_or_create_client_secret(path: Path) -> str:
    """The embedded city's client secret (`cityos dev` gives it to every service's client): created
    once, readable by its owner only, reused across restarts."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; restricting it to its owner", path)
            path.chmod(0o600)
        secret = path.read_text().strip()
        if len(secret) >= 32:
            return secret
        log.warning("%s holds no usable secret; creating a new one", path)
    secret = secrets.token_urlsafe(32)
    _write_private(path, secret.encode())
    return secret


class TokenRequestError(Exception):
    """The token endpoint refuses a request: an OAuth2 error code (RFC 6749 §5.2), as Keycloak sends."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status, self.error, self.description = status, error, description


class DevIssuer:
    """Signing keys and token minting. `issuer_url` is what verifiers expect as `iss` (set by
    `DevIssuerServer.start()` when a server serves this issuer)."""

    def __init__(self, key_dir: Path, issuer_url: str = "", *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.key_dir = Path(key_dir)
        self.key_path = self.key_dir / KEY_FILE
        self.issuer_url = issuer_url.rstrip("/")
        self.clock = clock
        self._lock = threading.Lock()  # the server thread reads the keys while tests rotate them
        # The signing key first, then the retired keys still published.
        self._keys: list[_Key] = [_Key.of(_load_or_create(self.key_path))]
        # Confidential clients the token endpoint answers: client id -> secret.
        self._clients: dict[str, str] = {}

    def register_client(self, client_id: str, secret: str) -> None:
        """Let `client_id` get client-credentials tokens with `secret` (replaces an earlier secret)."""
        if not client_id or len(secret) < 16:
            raise ValueError("a client needs an id and a secret of at least 16 characters")
        with self._lock:
            self._clients[client_id] = secret

    def authenticate_client(self, client_id: str, secret: str) -> None:
        """Check a confidential client's secret: TokenRequestError `invalid_client` (401, Keycloak's
        answer) for an unknown client or a wrong secret."""
        with self._lock:
            expected = self._clients.get(client_id)
        # Compare even for an unknown client, so timing tells nothing about which clients exist.
        matches = hmac.compare_digest((expected or secrets.token_urlsafe(32)).encode(), secret.encode())
        if expected is None or not matches:
            raise TokenRequestError(401, "invalid_client", "Invalid client or Invalid client credentials")

    def client_credentials_token(self, client_id: str, secret: str) -> dict[str, Any]:
        """Keycloak's answer to `grant_type=client_credentials`: a service token (kind `service`, role
        `service`, the client as `azp`) for a registered client whose secret matches."""
        self.authenticate_client(client_id, secret)
        token = self.mint(
            f"service-account-{client_id}",
            SERVICE_ORGANIZATION,
            [SERVICE_ROLE],
            client=client_id,
            kind="service",
            ttl_s=SERVICE_TOKEN_TTL_S,
        )
        return {
            "access_token": token,
            "expires_in": SERVICE_TOKEN_TTL_S,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "",
        }

    @property
    def kid(self) -> str:
        """The key id of the current signing key."""
        with self._lock:
            return self._keys[0].kid

    def public_key_pem(self) -> bytes:
        """The current signing key's public half, PEM (SubjectPublicKeyInfo)."""
        with self._lock:
            public = self._keys[0].private.public_key()
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: the signing key and any retired keys not yet dropped."""
        with self._lock:
            return {"keys": [dict(key.public_jwk) for key in self._keys]}

    def rotate(self) -> str:
        """Sign with a new key from now on (it replaces the key file); the old key stays published
        until `retire_old_keys()`, so tokens it signed keep verifying. Returns the new kid."""
        new = _Key.of(_new_private_key())
        with self._lock:
            _write_private_key(self.key_path, new.private)
            self._keys.insert(0, new)
        return new.kid

    def retire_old_keys(self) -> None:
        """Stop publishing every key but the current one."""
        with self._lock:
            del self._keys[1:]

    def mint(
        self,
        subject: str,
        organization: str,
        roles: Iterable[str],
        *,
        audience: str | list[str] = "cityos",
        ttl_s: int = 3600,
        client: str = "cityos-cli",
        kind: str | None = None,
        scopes: Iterable[str] = (),
        on_behalf_of: str = "",
        not_before: float | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed access token shaped like Keycloak's. `kind="service"` shapes a client-credentials
        token (`preferred_username` = `service-account-<client>`); another kind is set as
        `cityos_kind`. `extra_claims` are merged last; a None value there removes that claim."""
        if not self.issuer_url:
            raise RuntimeError("the development issuer has no URL yet (start its server first)")
        now = int(self.clock.timestamp())
        role_names = sorted(set(roles))
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "exp": now + int(ttl_s),
            "azp": client,
            "jti": str(uuid.uuid4()),
            "typ": "Bearer",
            "org": organization,
            "roles": role_names,
            "realm_access": {"roles": role_names},
            "scope": " ".join(sorted(set(scopes))),
        }
        if kind == "service":
            claims["preferred_username"] = f"service-account-{client}"
        elif kind is not None:
            claims["cityos_kind"] = kind
        if on_behalf_of:
            claims["act"] = {"sub": on_behalf_of}
        if not_before is not None:
            claims["nbf"] = int(not_before)
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        with self._lock:
            signing = self._keys[0]
        return jwt.encode(
            claims, signing.private, algorithm=SIGNING_ALGORITHM, headers={"kid": signing.kid, "typ": "JWT"}
        )

    def discovery(self) -> dict[str, Any]:
        """The OIDC discovery document. The token endpoint serves the client-credentials grant only
        (people's tokens come from `mint`, i.e. `cityos token`)."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + CERTS_PATH,
            "token_endpoint": self.issuer_url + TOKEN_PATH,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "id_token_signing_alg_values_supported": [SIGNING_ALGORITHM],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-response is not worth a traceback on stderr.
        log.debug("development issuer: error serving %s", client_address, exc_info=True)


class DevIssuerServer:
    """Serves a DevIssuer's JWKS, discovery document and token endpoint over plain HTTP, in a daemon
    thread.

    `start()` binds (port 0 picks a free one), sets the issuer's URL to `http://<host>:<port><realm_path>`
    and returns it. `requests` counts the requests served per route ("certs", "discovery", "token").
    """

    def __init__(
        self,
        issuer: DevIssuer,
        host: str = "127.0.0.1",
        port: int = 0,
        realm_path: str = REALM_PATH,
        *,
        public_url: str = "",
    ) -> None:
        self.issuer = issuer
        self.host = host
        self.port = port
        # Behind a Service or an ingress the issuer is known by its public URL: the tokens' `iss` and
        # the JWKS path follow it instead of the bound address.
        self.public_url = public_url.rstrip("/")
        if self.public_url:
            realm_path = urllib.parse.urlsplit(self.public_url).path
        self.realm_path = "/" + realm_path.strip("/")
        self.requests: dict[str, int] = {"certs": 0, "discovery": 0, "token": 0}
        self._count_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def issuer_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.realm_path}"

    @property
    def jwks_url(self) -> str:
        return self.issuer_url + CERTS_PATH

    @property
    def discovery_url(self) -> str:
        return self.issuer_url + DISCOVERY_PATH

    @property
    def token_url(self) -> str:
        return self.issuer_url + TOKEN_PATH

    @property
    def running(self) -> bool:
        return self._server is not None

    def _count(self, document: str) -> None:
        with self._count_lock:
            self.requests[document] += 1

    def start(self) -> str:
        """Bind, serve in a daemon thread, point the issuer's `issuer_url` here; returns that URL."""
        if self._server is not None:
            raise RuntimeError("the development issuer's server is already running")
        outer = self
        routes = {outer.realm_path + CERTS_PATH: "certs", outer.realm_path + DISCOVERY_PATH: "discovery"}
        token_route = outer.realm_path + TOKEN_PATH

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                document = routes.get(self.path.split("?", 1)[0])
                if document is None:
                    self.send_error(404)
                    return
                outer._count(document)
                self._send(outer.issuer.jwks() if document == "certs" else outer.issuer.discovery())

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != token_route:
                    self.send_error(404)
                    return
                outer._count("token")
                try:
                    grant, client_id, secret = self._token_request()
                    # The client first, as Keycloak does, then the grant.
                    outer.issuer.authenticate_client(client_id, secret)
                    if grant != "client_credentials":
                        raise TokenRequestError(400, "unsupported_grant_type", "Unsupported grant_type")
                    self._send(outer.issuer.client_credentials_token(client_id, secret))
                except TokenRequestError as refused:
                    body = {"error": refused.error, "error_description": refused.description}
                    self._send(body, refused.status)

            def _token_request(self) -> tuple[str, str, str]:
                """(grant type, client id, secret) of a token request, or TokenRequestError."""
                if self.headers.get_content_type() != "application/x-www-form-urlencoded":
                    raise TokenRequestError(400, "invalid_request", "Expected a form-encoded body")
                declared = self.headers.get("Content-Length") or "0"
                length = int(declared) if declared.isdigit() else 0
                if not 0 < length <= MAX_TOKEN_REQUEST_BYTES:
                    raise TokenRequestError(400, "invalid_request", "Missing or oversized body")
                form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                grant = form.get("grant_type", [""])[0]
                if not grant:
                    raise TokenRequestError(400, "invalid_request", "Missing form parameter: grant_type")
                client_id, secret = form.get("client_id", [""])[0], form.get("client_secret", [""])[0]
                basic = self.headers.get("Authorization", "")
                if basic[:6].lower() == "basic ":  # client_secret_basic (RFC 6749 §2.3.1)
                    try:
                        pair = base64.b64decode(basic[6:].strip(), validate=True).decode()
                    except (binascii.Error, UnicodeDecodeError):
                        raise TokenRequestError(
                            401, "invalid_client", "Malformed client credentials"
                        ) from None
                    name, _, password = pair.partition(":")
                    client_id, secret = urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(password)
                return grant, client_id, secret

            def _send(self, document: dict[str, Any], status: int = 200) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store" if self.command == "POST" else "no-cache")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # no access log on stderr

        server = _QuietServer((self.host, self.port), Handler)
        self.port = int(server.server_address[1])
        self.issuer.issuer_url = self.issuer_url
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dev-issuer", daemon=True
        )
        self._thread.start()
        return self.issuer_url

    def stop(self) -> None:
        """Stop serving and release the port (the issuer keeps its URL). Safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> DevIssuerServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_issuer(var_dir: Path, issuer_url: str = "", *, clock: Clock = SYSTEM_CLOCK) -> DevIssuer:
    """The embedded mode's issuer: its key under `<var_dir>/issuer/`."""
    return DevIssuer(Path(var_dir) / "issuer", issuer_url, clock=clock)
