"""The built-in development issuer: Keycloak's token shape without Keycloak.

Embedded mode and the tests use it in Keycloak's place, so the same verification code runs in both. It
keeps an RSA signing key under `var/issuer/` (created once, reused across runs so tokens survive a
restart), mints RS256 tokens with the claims CityOS's Keycloak realm puts in access tokens, and serves
the JWKS and an OIDC discovery document on Keycloak's paths:

    <issuer>/protocol/openid-connect/certs
    <issuer>/.well-known/openid-configuration

It is a development tool: it signs whatever it is asked to. Production trusts Keycloak only.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from cityos_platform.clock import SYSTEM_CLOCK, Clock

REALM_PATH = "/realms/cityos"
CERTS_PATH = "/protocol/openid-connect/certs"
DISCOVERY_PATH = "/.well-known/openid-configuration"
KEY_FILE = "dev-issuer-key.pem"


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    # RFC 7638 thumbprint of the required members, as the key id.
    thumbprint_input = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    digest = jwt.utils.base64url_encode(hashlib.sha256(thumbprint_input.encode()).digest())
    jwk.update({"kid": digest.decode(), "use": "sig", "alg": "RS256"})
    return jwk


def _load_or_create(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return key


class DevIssuer:
    """Signing keys and token minting. `issuer_url` must be what verifiers expect as `iss`."""

    def __init__(self, key_dir: Path, issuer_url: str = "", *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.key_dir = key_dir
        self.issuer_url = issuer_url
        self.clock = clock
        self._key = _load_or_create(key_dir / KEY_FILE)
        self._retired: list[rsa.RSAPrivateKey] = []

    @property
    def kid(self) -> str:
        return str(_public_jwk(self._key)["kid"])

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(key) for key in [self._key, *self._retired]]}

    def rotate(self) -> None:
        """Sign with a new key from now on; the old one stays published until `retire_old_keys()`."""
        self._retired.insert(0, self._key)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (self.key_dir / KEY_FILE).write_bytes(pem)

    def retire_old_keys(self) -> None:
        self._retired.clear()

    def mint(
        self,
        subject: str,
        organization: str,
        roles: Iterable[str],
        *,
        audience: str = "cityos",
        ttl_s: int = 3600,
        client: str = "cityos-cli",
        kind: str | None = None,
        scopes: Iterable[str] = (),
        on_behalf_of: str = "",
        not_before: float | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        if not self.issuer_url:
            raise RuntimeError("the development issuer has no URL yet (start its server first)")
        now = int(self.clock.timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl_s,
            "azp": client,
            "jti": str(uuid.uuid4()),
            "typ": "Bearer",
            "org": organization,
            "roles": sorted(set(roles)),
            "realm_access": {"roles": sorted(set(roles))},
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
        claims.update(extra_claims or {})
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + CERTS_PATH,
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }


class DevIssuerServer:
    """Serves a DevIssuer's JWKS and discovery over HTTP on 127.0.0.1, in a daemon thread.

    `start()` binds (port 0 picks a free one), sets the issuer's URL to
    `http://<host>:<port><realm_path>` and returns it.
    """

    def __init__(
        self, issuer: DevIssuer, host: str = "127.0.0.1", port: int = 0, realm_path: str = REALM_PATH
    ):
        self.issuer = issuer
        self.host = host
        self.port = port
        self.realm_path = realm_path.rstrip("/")
        self.requests: dict[str, int] = {"certs": 0, "discovery": 0}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def jwks_url(self) -> str:
        return self.issuer.issuer_url + CERTS_PATH

    def start(self) -> str:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == outer.realm_path + CERTS_PATH:
                    outer.requests["certs"] += 1
                    self._send(outer.issuer.jwks())
                elif path == outer.realm_path + DISCOVERY_PATH:
                    outer.requests["discovery"] += 1
                    self._send(outer.issuer.discovery())
                else:
                    self.send_error(404)

            def _send(self, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=60")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.issuer.issuer_url = f"http://{self.host}:{self.port}{self.realm_path}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="dev-issuer", daemon=True)
        self._thread.start()
        return self.issuer.issuer_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)


def default_issuer(var_dir: Path, issuer_url: str = "") -> DevIssuer:
    return DevIssuer(var_dir / "issuer", issuer_url)
