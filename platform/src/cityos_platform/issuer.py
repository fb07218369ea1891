"""The built-in development issuer: Keycloak's token shape without Keycloak.

Embedded mode and the tests use it in Keycloak's place, so the same verification code runs in both. It
keeps an RSA signing key under `var/issuer/` (created once with mode 0600, reused across runs so tokens
survive a restart), mints RS256 tokens with the claims CityOS's Keycloak realm puts in access tokens, and
serves the JWKS and an OIDC discovery document on Keycloak's paths:

    <issuer>/protocol/openid-connect/certs
    <issuer>/.well-known/openid-configuration

The issuer URL (the tokens' `iss`) depends on where the server listens, so `DevIssuerServer.start()`
binds first (port 0 picks a free one) and then sets `DevIssuer.issuer_url`; a DevIssuer used without a
server (`cityos token`) is given the URL of the server that will serve its keys.

It is a development tool: it signs whatever it is asked to. Production trusts Keycloak only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
DISCOVERY_PATH = "/.well-known/openid-configuration"
KEY_FILE = "dev-issuer-key.pem"
SIGNING_ALGORITHM = "RS256"


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
    """Write atomically (a crash never leaves a half-written key) and readable by the owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=".dev-issuer-", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o600)  # mkstemp creates 0600 already; be explicit
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
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
        """The OIDC discovery document (no token endpoint: tokens come from `mint`)."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + CERTS_PATH,
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
    """Serves a DevIssuer's JWKS and discovery document over plain HTTP, in a daemon thread.

    `start()` binds (port 0 picks a free one), sets the issuer's URL to `http://<host>:<port><realm_path>`
    and returns it. `requests` counts the requests served per document ("certs", "discovery").
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
        self.requests: dict[str, int] = {"certs": 0, "discovery": 0}
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

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                document = routes.get(self.path.split("?", 1)[0])
                if document is None:
                    self.send_error(404)
                    return
                outer._count(document)
                self._send(outer.issuer.jwks() if document == "certs" else outer.issuer.discovery())

            def _send(self, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
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
