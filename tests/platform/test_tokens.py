"""CORE-1: bearer tokens are verified against the issuer's JWKS; every forgery is UNAUTHENTICATED."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.auth import JwksCache, TokenVerifier, bearer_token
from cityos_platform.clock import ManualClock
from cityos_platform.errors import Unauthenticated
from cityos_platform.issuer import DevIssuer, DevIssuerServer
from cityos_platform.testing import conformance
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import error_info

START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    return ManualClock(START)


@pytest.fixture
def issuer(tmp_path, clock):
    server = DevIssuerServer(DevIssuer(tmp_path / "keys", clock=clock))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def verifier(issuer, clock):
    jwks = JwksCache(url=issuer.jwks_url, min_refresh_interval_s=30, clock=clock)
    return TokenVerifier(issuer.issuer.issuer_url, "cityos", jwks, leeway_s=30, clock=clock)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


async def _reason(verifier, token) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    return caught.value.reason


@pytest.mark.req("CORE-1")
async def test_a_valid_token_yields_its_principal(issuer, verifier):
    token = issuer.issuer.mint("alice", "transport-bureau", ["operator", "analyst"], client="parking-app")
    principal = await verifier.verify(token)
    assert (principal.subject, principal.organization, principal.client) == (
        "alice",
        "transport-bureau",
        "parking-app",
    )
    assert principal.roles == {"operator", "analyst"}
    assert principal.kind == "user"
    service = await verifier.verify(
        issuer.issuer.mint("svc-1", "city", ["service"], kind="service", client="exporter")
    )
    assert service.kind == "service"
    # Keycloak without the roles mapper: realm_access.roles is used.
    keycloak_shaped = issuer.issuer.mint(
        "bob", "utilities", [], extra_claims={"realm_access": {"roles": ["auditor"]}}
    )
    token_claims = jwt.decode(keycloak_shaped, options={"verify_signature": False})
    assert token_claims["roles"] == []
    principal = await verifier.verify(
        issuer.issuer.mint(
            "bob", "utilities", [], extra_claims={"roles": None, "realm_access": {"roles": ["auditor"]}}
        )
    )
    assert principal.roles == {"auditor"}


@pytest.mark.req("CORE-1")
async def test_expiry_and_not_before_are_checked_against_the_clock_with_leeway(issuer, verifier, clock):
    token = issuer.issuer.mint("alice", "org", ["operator"], ttl_s=60)
    clock.advance(60 + 29)  # within the 30 s leeway
    assert (await verifier.verify(token)).subject == "alice"
    clock.advance(2)
    assert await _reason(verifier, token) == "TOKEN_EXPIRED"
    future = issuer.issuer.mint("alice", "org", ["operator"], not_before=clock.timestamp() + 300)
    assert await _reason(verifier, future) == "TOKEN_NOT_YET_VALID"


@pytest.mark.req("CORE-1")
async def test_wrong_audience_and_wrong_issuer_are_rejected(issuer, verifier):
    assert (
        await _reason(verifier, issuer.issuer.mint("a", "o", [], audience="someone-else")) == "TOKEN_AUDIENCE"
    )
    foreign = issuer.issuer.mint("a", "o", [], extra_claims={"iss": "http://evil.example/realms/cityos"})
    assert await _reason(verifier, foreign) == "TOKEN_ISSUER"


@pytest.mark.req("CORE-1")
async def test_alg_none_is_rejected(issuer, verifier):
    claims = jwt.decode(issuer.issuer.mint("a", "o", ["city-admin"]), options={"verify_signature": False})
    token = _forge({"alg": "none", "typ": "JWT", "kid": issuer.issuer.kid}, claims)
    assert await _reason(verifier, token) == "TOKEN_ALGORITHM"


@pytest.mark.req("CORE-1")
async def test_hs256_signed_with_the_public_key_is_rejected(issuer, verifier):
    """The classic key-confusion forgery: HMAC keyed with the issuer's public key PEM."""
    claims = jwt.decode(issuer.issuer.mint("a", "o", ["city-admin"]), options={"verify_signature": False})
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.issuer.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(issuer.issuer.public_key_pem(), signing_input.encode(), hashlib.sha256).digest()
    assert await _reason(verifier, f"{signing_input}.{_b64(mac)}") == "TOKEN_ALGORITHM"


@pytest.mark.req("CORE-1")
async def test_unknown_key_and_tampered_payload_are_rejected(issuer, verifier):
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(issuer.issuer.mint("a", "o", ["operator"]), options={"verify_signature": False})
    unknown = jwt.encode(claims, rogue, algorithm="RS256", headers={"kid": "not-published"})
    assert await _reason(verifier, unknown) == "TOKEN_UNKNOWN_KEY"
    # A rogue key claiming the real kid fails the signature.
    impostor = jwt.encode(claims, rogue, algorithm="RS256", headers={"kid": issuer.issuer.kid})
    assert await _reason(verifier, impostor) == "TOKEN_SIGNATURE"
    head, body, signature = issuer.issuer.mint("a", "org-a", ["operator"]).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["roles"] = ["city-admin"]
    tampered = f"{head}.{_b64(json.dumps(payload).encode())}.{signature}"
    assert await _reason(verifier, tampered) == "TOKEN_SIGNATURE"
    assert await _reason(verifier, "not-a-jwt") == "TOKEN_MALFORMED"


@pytest.mark.req("CORE-1")
async def test_a_key_rotation_is_picked_up_after_one_jwks_refresh(issuer, verifier, clock):
    assert (await verifier.verify(issuer.issuer.mint("a", "o", []))).subject == "a"
    assert issuer.requests["certs"] == 1
    clock.advance(31)  # past the refresh interval
    issuer.issuer.rotate()
    rotated = issuer.issuer.mint("b", "o", [])
    assert (await verifier.verify(rotated)).subject == "b"
    assert issuer.requests["certs"] == 2  # exactly one refresh for the new kid


@pytest.mark.req("CORE-1")
async def test_unknown_kids_refresh_the_jwks_at_most_once_per_interval(issuer, verifier, clock):
    await verifier.verify(issuer.issuer.mint("a", "o", []))
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(issuer.issuer.mint("a", "o", []), options={"verify_signature": False})
    clock.advance(31)
    for n in range(5):
        token = jwt.encode(claims, rogue, algorithm="RS256", headers={"kid": f"probe-{n}"})
        assert await _reason(verifier, token) == "TOKEN_UNKNOWN_KEY"
    assert issuer.requests["certs"] == 2  # the first probe refreshed; the next four did not


async def test_an_unreachable_jwks_keeps_the_keys_already_loaded(issuer, verifier, clock):
    token = issuer.issuer.mint("a", "o", [])
    await verifier.verify(token)
    issuer.stop()
    clock.advance(31)
    assert (await verifier.verify(token)).subject == "a"  # known kid: no fetch needed
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(token, options={"verify_signature": False})
    probe = jwt.encode(claims, rogue, algorithm="RS256", headers={"kid": "after-outage"})
    assert await _reason(verifier, probe) == "TOKEN_UNKNOWN_KEY"  # the failed refresh kept the keys
    assert (await verifier.verify(token)).subject == "a"


def test_bearer_header_parsing():
    assert bearer_token({}) is None
    assert bearer_token({"authorization": "Bearer abc.def.ghi"}) == "abc.def.ghi"
    assert bearer_token({"authorization": "bearer abc"}) == "abc"
    for bad in ("Basic dXNlcjpwdw==", "Bearer", "Bearer a b"):
        with pytest.raises(Unauthenticated):
            bearer_token({"authorization": bad})


@pytest.mark.req("CORE-1")
async def test_through_a_server_a_bad_token_is_unauthenticated_even_on_a_public_method(start_server, mint):
    server = await start_server([conformance.mount()])
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        good = await stub.Echo(
            conformance_pb2.EchoRequest(message="hi"), metadata=bearer(mint("alice", "org", [])), timeout=5
        )
        assert good.caller == "alice"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(conformance_pb2.EchoRequest(message="hi"), metadata=bearer("x.y.z"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(refused.value).reason == "TOKEN_MALFORMED"


async def test_cityos_token_mints_a_token_the_runtime_accepts(tmp_path):
    import subprocess
    import sys

    env = {"CITYOS_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cityos_platform.cli",
            "token",
            "-s",
            "olga",
            "-o",
            "transport",
            "-r",
            "operator",
            "-r",
            "analyst",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = result.stdout.strip()
    issuer = DevIssuer(tmp_path / "issuer", "http://127.0.0.1:8099/realms/cityos")

    async def jwks():
        return issuer.jwks()

    verifier = TokenVerifier(issuer.issuer_url, "cityos", JwksCache(source=jwks))
    principal = await verifier.verify(token)
    assert (principal.subject, principal.organization, principal.roles) == (
        "olga",
        "transport",
        frozenset({"operator", "analyst"}),
    )


@pytest.mark.req("CORE-1")
async def test_a_verified_token_is_cached_but_still_expires(issuer, verifier, clock, monkeypatch):
    token = issuer.issuer.mint("alice", "org", ["operator"], ttl_s=10)
    decoded = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    for _ in range(5):
        assert (await verifier.verify(token)).subject == "alice"
    assert len(decoded) == 1  # one signature check for five uses
    clock.advance(10 + 30 + 1)  # past expiry and leeway, still inside the cache's minute
    assert await _reason(verifier, token) == "TOKEN_EXPIRED"
