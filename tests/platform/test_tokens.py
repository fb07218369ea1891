"""CORE-1: bearer tokens are verified against the issuer's JWKS; every forgery is UNAUTHENTICATED.

The issuer is a real DevIssuerServer on an ephemeral port and the verifier fetches its JWKS over HTTP;
time is a ManualClock shared by both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.auth import JwksCache, Principal, TokenVerifier, bearer_token
from cityos_platform.clock import ManualClock
from cityos_platform.errors import Unauthenticated
from cityos_platform.issuer import KEY_FILE, DevIssuer, DevIssuerServer, default_issuer, jwk_thumbprint
from cityos_platform.testing import conformance
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import error_info

START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LEEWAY_S = 30
REFRESH_S = 30


@pytest.fixture
def clock():
    return ManualClock(START)


@pytest.fixture
def server(tmp_path, clock):
    running = DevIssuerServer(DevIssuer(tmp_path / "keys", clock=clock))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def dev(server):
    """The DevIssuer the server serves."""
    return server.issuer


@pytest.fixture
def verifier(server, clock):
    jwks = JwksCache(url=server.jwks_url, min_refresh_interval_s=REFRESH_S, clock=clock)
    return TokenVerifier(server.issuer_url, "cityos", jwks, leeway_s=LEEWAY_S, clock=clock)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _rogue_token(claims: dict, kid: str, algorithm: str = "RS256") -> str:
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, rogue, algorithm=algorithm, headers={"kid": kid})


async def _reason(verifier, token) -> str:
    """The reason verify() refuses the token with; also checks the message does not repeat it."""
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    message = str(caught.value)
    for part in [token, *token.split(".")]:
        if len(part) > 8:
            assert part not in message
    return caught.value.reason


@pytest.mark.req("CORE-1")
async def test_a_valid_token_yields_its_principal(dev, verifier):
    token = dev.mint(
        "alice",
        "transport-bureau",
        ["operator", "analyst"],
        client="parking-app",
        scopes=["markers.read", "markers.write"],
    )
    principal = await verifier.verify(token)
    assert principal == Principal(
        subject="alice",
        organization="transport-bureau",
        roles=frozenset({"operator", "analyst"}),
        client="parking-app",
        kind="user",
        token_id=_claims(token)["jti"],
        scopes=frozenset({"markers.read", "markers.write"}),
        on_behalf_of="",
    )
    assert not principal.is_anonymous
    assert principal.has_role("nobody", "analyst")
    assert not principal.has_role("city-admin")
    # Keycloak's list-valued audience, and a service acting for a user (RFC 8693 `act`).
    acting = await verifier.verify(
        dev.mint("exporter", "city", ["service"], audience=["account", "cityos"], on_behalf_of="alice")
    )
    assert (acting.subject, acting.on_behalf_of) == ("exporter", "alice")


@pytest.mark.req("CORE-1")
async def test_roles_fall_back_to_keycloaks_realm_access(dev, verifier):
    token = dev.mint(
        "bob", "utilities", [], extra_claims={"roles": None, "realm_access": {"roles": ["auditor"]}}
    )
    assert "roles" not in _claims(token)  # shaped like Keycloak without CityOS's roles mapper
    assert (await verifier.verify(token)).roles == {"auditor"}
    # When both are present, the `roles` claim wins.
    both = dev.mint("bob", "utilities", ["operator"], extra_claims={"realm_access": {"roles": ["auditor"]}})
    assert (await verifier.verify(both)).roles == {"operator"}


@pytest.mark.req("CORE-1")
async def test_token_kinds_service_device_and_user(dev, verifier):
    service_token = dev.mint("svc-exporter", "city", ["service"], kind="service", client="exporter")
    assert _claims(service_token)["preferred_username"] == "service-account-exporter"  # Keycloak's shape
    service = await verifier.verify(service_token)
    assert (service.kind, service.client) == ("service", "exporter")
    explicit = dev.mint("svc-2", "city", [], extra_claims={"cityos_kind": "service"})
    assert (await verifier.verify(explicit)).kind == "service"
    device = await verifier.verify(dev.mint("dev-17", "utilities", [], kind="device"))
    assert device.kind == "device"
    user = await verifier.verify(dev.mint("carol", "city", [], extra_claims={"preferred_username": "carol"}))
    assert user.kind == "user"
    assert await _reason(verifier, dev.mint("x", "o", [], kind="anonymous")) == "TOKEN_MALFORMED"
    assert Principal.anonymous().is_anonymous


@pytest.mark.req("CORE-1")
async def test_expiry_is_checked_against_the_clock_with_leeway(dev, verifier, clock):
    within = dev.mint("alice", "org", ["operator"], ttl_s=60)
    beyond = dev.mint("alice", "org", ["operator"], ttl_s=60)
    clock.advance(60 + LEEWAY_S - 1)
    assert (await verifier.verify(within)).subject == "alice"
    clock.advance(2)
    # Never verified before (so no cache involved): expired by the injected clock, not the system's.
    assert await _reason(verifier, beyond) == "TOKEN_EXPIRED"
    # The token verified earlier expires too.
    assert await _reason(verifier, within) == "TOKEN_EXPIRED"


@pytest.mark.req("CORE-1")
async def test_not_before_and_issued_at_are_checked_against_the_clock(dev, verifier, clock):
    now = clock.timestamp()
    assert await _reason(verifier, dev.mint("a", "o", [], not_before=now + 300)) == "TOKEN_NOT_YET_VALID"
    assert (await verifier.verify(dev.mint("a", "o", [], not_before=now + LEEWAY_S - 5))).subject == "a"
    from_the_future = dev.mint("a", "o", [], extra_claims={"iat": int(now) + 300, "exp": int(now) + 900})
    assert await _reason(verifier, from_the_future) == "TOKEN_NOT_YET_VALID"


@pytest.mark.req("CORE-1")
async def test_wrong_audience_and_wrong_issuer_are_rejected(dev, verifier):
    assert await _reason(verifier, dev.mint("a", "o", [], audience="someone-else")) == "TOKEN_AUDIENCE"
    assert await _reason(verifier, dev.mint("a", "o", [], audience=["account"])) == "TOKEN_AUDIENCE"
    foreign = dev.mint("a", "o", [], extra_claims={"iss": "http://evil.example/realms/cityos"})
    assert await _reason(verifier, foreign) == "TOKEN_ISSUER"


@pytest.mark.req("CORE-1")
async def test_missing_and_malformed_claims_are_rejected(dev, verifier):
    for claim in ("sub", "exp", "iat", "aud", "iss"):
        token = dev.mint("a", "o", [], extra_claims={claim: None})
        assert await _reason(verifier, token) == "TOKEN_MISSING_CLAIM", claim
    assert await _reason(verifier, dev.mint("", "o", [])) == "TOKEN_MISSING_CLAIM"
    for bad in (
        {"exp": "99999999999"},
        {"exp": float("nan")},
        {"org": 7},
        {"roles": "admin"},
        {"scope": ["a"]},
    ):
        assert await _reason(verifier, dev.mint("a", "o", [], extra_claims=bad)) == "TOKEN_MALFORMED", bad
    # Keycloak ID and refresh tokens are not access tokens.
    assert await _reason(verifier, dev.mint("a", "o", [], extra_claims={"typ": "ID"})) == "TOKEN_TYPE"
    # A header PyJWT itself refuses (a numeric kid) is still UNAUTHENTICATED, not an internal error.
    numeric_kid = _forge({"alg": "RS256", "kid": 7}, _claims(dev.mint("a", "o", [])), b"x")
    assert await _reason(verifier, numeric_kid) == "TOKEN_MALFORMED"
    for garbage in ("not-a-jwt", "a.b.c", "", "x" * 20_000):
        assert await _reason(verifier, garbage) == "TOKEN_MALFORMED"


@pytest.mark.req("CORE-1")
async def test_alg_none_is_rejected(dev, verifier):
    claims = _claims(dev.mint("a", "o", ["city-admin"]))
    for none in ("none", "None", "NONE"):
        token = _forge({"alg": none, "typ": "JWT", "kid": dev.kid}, claims)
        assert token.endswith(".")  # empty signature
        assert await _reason(verifier, token) == "TOKEN_ALGORITHM"


@pytest.mark.req("CORE-1")
async def test_hs256_signed_with_the_public_key_is_rejected(dev, verifier):
    """The classic key-confusion forgery: HMAC keyed with the issuer's public key PEM."""
    claims = _claims(dev.mint("a", "o", ["city-admin"]))
    header = {"alg": "HS256", "typ": "JWT", "kid": dev.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(dev.public_key_pem(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{_b64(mac)}"
    assert await _reason(verifier, forged) == "TOKEN_ALGORITHM"


@pytest.mark.req("CORE-1")
async def test_unknown_key_impostor_key_and_tampered_payload_are_rejected(dev, verifier):
    claims = _claims(dev.mint("a", "o", ["operator"]))
    assert await _reason(verifier, _rogue_token(claims, "not-published")) == "TOKEN_UNKNOWN_KEY"
    no_kid = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    assert await _reason(verifier, no_kid) == "TOKEN_UNKNOWN_KEY"
    # A rogue key claiming the real kid fails the signature.
    assert await _reason(verifier, _rogue_token(claims, dev.kid)) == "TOKEN_SIGNATURE"
    genuine = dev.mint("a", "org-a", ["operator"])
    assert (await verifier.verify(genuine)).roles == {"operator"}
    head, body, signature = genuine.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["roles"] = ["city-admin"]
    tampered = f"{head}.{_b64(json.dumps(payload).encode())}.{signature}"
    assert await _reason(verifier, tampered) == "TOKEN_SIGNATURE"


@pytest.mark.req("CORE-1")
async def test_a_key_rotation_is_picked_up_after_one_jwks_refresh(server, dev, verifier, clock):
    before = dev.mint("a", "o", [])
    assert (await verifier.verify(before)).subject == "a"
    assert server.requests["certs"] == 1
    clock.advance(REFRESH_S + 1)
    old_kid = dev.kid
    new_kid = dev.rotate()
    assert new_kid != old_kid
    assert {k["kid"] for k in dev.jwks()["keys"]} == {old_kid, new_kid}
    rotated = dev.mint("b", "o", [])
    assert jwt.get_unverified_header(rotated)["kid"] == new_kid
    assert (await verifier.verify(rotated)).subject == "b"
    assert server.requests["certs"] == 2  # exactly one refresh for the new kid
    # Tokens of the old key still verify while it is published, without another fetch.
    assert (await verifier.verify(dev.mint("c", "o", [], extra_claims={"sub": "c"}))).subject == "c"
    assert server.requests["certs"] == 2
    dev.retire_old_keys()
    assert [k["kid"] for k in dev.jwks()["keys"]] == [new_kid]


@pytest.mark.req("CORE-1")
async def test_unknown_kids_refresh_the_jwks_at_most_once_per_interval(server, dev, verifier, clock):
    claims = _claims(dev.mint("a", "o", []))
    await verifier.verify(dev.mint("a", "o", []))
    assert server.requests["certs"] == 1
    clock.advance(REFRESH_S + 1)
    assert await _reason(verifier, _rogue_token(claims, "probe-1")) == "TOKEN_UNKNOWN_KEY"
    assert server.requests["certs"] == 2  # the first unknown kid refreshed
    clock.advance(REFRESH_S - 2)
    assert await _reason(verifier, _rogue_token(claims, "probe-2")) == "TOKEN_UNKNOWN_KEY"
    assert server.requests["certs"] == 2  # the second, within the interval, did not
    clock.advance(2)
    assert await _reason(verifier, _rogue_token(claims, "probe-3")) == "TOKEN_UNKNOWN_KEY"
    assert server.requests["certs"] == 3  # once the interval has passed, it may refresh again


@pytest.mark.req("CORE-1")
async def test_an_unreachable_jwks_keeps_the_keys_already_loaded(server, dev, verifier, clock):
    await verifier.verify(dev.mint("a", "o", []))
    assert verifier.jwks.kids == {dev.kid}
    server.stop()
    clock.advance(REFRESH_S + 1)
    fetches = verifier.jwks.fetches
    probe = _rogue_token(_claims(dev.mint("a", "o", [])), "after-outage")
    assert await _reason(verifier, probe) == "TOKEN_UNKNOWN_KEY"
    assert verifier.jwks.fetches == fetches + 1  # it did try, and the fetch failed
    assert verifier.jwks.kids == {dev.kid}
    # A token never seen before (so not served from the verified-token cache) still verifies.
    assert (await verifier.verify(dev.mint("fresh", "o", []))).subject == "fresh"


async def test_an_unreachable_jwks_at_start_refuses_tokens(tmp_path, clock):
    dev = DevIssuer(tmp_path / "keys", "http://127.0.0.1:9/realms/cityos", clock=clock)
    jwks = JwksCache(url="http://127.0.0.1:9/realms/cityos/protocol/openid-connect/certs", clock=clock)
    verifier = TokenVerifier(dev.issuer_url, "cityos", jwks, clock=clock)
    assert await _reason(verifier, dev.mint("a", "o", [])) == "TOKEN_UNKNOWN_KEY"


@pytest.mark.req("CORE-1")
async def test_key_use_and_algorithm_binding_in_the_jwks(clock):
    """Only signing keys are used, and a key verifies only the algorithms it is published for."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    document = {
        "keys": [
            {**rsa_jwk, "kid": "rs-bound", "alg": "RS256", "use": "sig"},
            {**rsa_jwk, "kid": "rsa-free"},
            {**rsa_jwk, "kid": "for-encryption", "use": "enc"},
            {**ec_jwk, "kid": "ec"},
            {"kid": "junk", "kty": "RSA"},
        ]
    }
    verifier = TokenVerifier(
        "https://id.example/realms/cityos",
        "cityos",
        JwksCache(source=lambda: document, clock=clock),
        clock=clock,
    )
    now = int(clock.timestamp())
    claims = {
        "iss": "https://id.example/realms/cityos",
        "aud": "cityos",
        "sub": "s",
        "iat": now,
        "exp": now + 60,
    }

    def signed(key, algorithm, kid):
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})

    assert (await verifier.verify(signed(rsa_key, "RS256", "rs-bound"))).subject == "s"
    assert (await verifier.verify(signed(rsa_key, "PS256", "rsa-free"))).subject == "s"
    assert (await verifier.verify(signed(ec_key, "ES256", "ec"))).subject == "s"
    assert verifier.jwks.kids == {"rs-bound", "rsa-free", "ec"}
    assert await _reason(verifier, signed(rsa_key, "PS256", "rs-bound")) == "TOKEN_ALGORITHM"
    assert await _reason(verifier, signed(rsa_key, "RS256", "ec")) == "TOKEN_ALGORITHM"
    assert await _reason(verifier, signed(rsa_key, "RS256", "for-encryption")) == "TOKEN_UNKNOWN_KEY"
    with pytest.raises(ValueError, match="asymmetric"):
        TokenVerifier("i", "a", JwksCache(source=lambda: document), algorithms=("HS256",))


@pytest.mark.req("CORE-1")
async def test_a_verified_token_is_cached_but_still_expires(dev, verifier, clock, monkeypatch):
    token = dev.mint("alice", "org", ["operator"], ttl_s=10)
    decoded = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    for _ in range(5):
        assert (await verifier.verify(token)).subject == "alice"
    assert len(decoded) == 1  # one signature check for five uses
    clock.advance(10 + LEEWAY_S + 1)  # past expiry and leeway, still inside the cache's minute
    assert await _reason(verifier, token) == "TOKEN_EXPIRED"


@pytest.mark.req("CORE-1")
def test_bearer_header_parsing():
    assert bearer_token({}) is None
    assert bearer_token({"other": "Bearer x"}) is None
    assert bearer_token({"authorization": "Bearer abc.def.ghi"}) == "abc.def.ghi"
    assert bearer_token({"authorization": "bearer abc"}) == "abc"
    assert bearer_token({"authorization": "BEARER abc"}) == "abc"
    assert bearer_token({"authorization": b"Bearer abc.def"}) == "abc.def"
    for bad in ("Basic dXNlcjpwdw==", "Bearer", "Bearer ", "Bearer a b", "abc.def.ghi", ""):
        with pytest.raises(Unauthenticated) as caught:
            bearer_token({"authorization": bad})
        assert caught.value.reason == "TOKEN_MALFORMED"


@pytest.mark.req("CORE-1")
async def test_the_issuer_serves_jwks_and_discovery_on_keycloaks_paths(server, dev):
    assert server.issuer_url == f"http://127.0.0.1:{server.port}/realms/cityos"
    assert server.port != 0
    assert dev.issuer_url == server.issuer_url

    def get(url):
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    discovery = get(server.issuer_url + "/.well-known/openid-configuration")
    assert discovery["issuer"] == server.issuer_url
    assert discovery["jwks_uri"] == server.issuer_url + "/protocol/openid-connect/certs"
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    assert discovery["token_endpoint"] == server.issuer_url + "/protocol/openid-connect/token"
    (key,) = get(discovery["jwks_uri"])["keys"]
    assert (key["kid"], key["kty"], key["use"], key["alg"]) == (dev.kid, "RSA", "sig", "RS256")
    assert "d" not in key  # public half only
    assert server.requests == {"certs": 1, "discovery": 1, "token": 0}
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(f"http://127.0.0.1:{server.port}/realms/other/protocol/openid-connect/certs")
    assert missing.value.code == 404
    token = dev.mint("a", "o", ["r"], scopes=["x"])
    header, claims = jwt.get_unverified_header(token), _claims(token)
    assert header == {"alg": "RS256", "kid": dev.kid, "typ": "JWT"}
    assert (claims["iss"], claims["aud"], claims["typ"]) == (server.issuer_url, "cityos", "Bearer")
    assert set(claims) >= {"iss", "aud", "sub", "exp", "iat", "azp", "jti", "org", "roles", "realm_access"}


def test_the_issuer_key_is_private_reused_and_named_by_its_thumbprint(tmp_path):
    # RFC 7638 §3.1's example key and thumbprint.
    example = {
        "kty": "RSA",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
            "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
            "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
            "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
    }
    assert jwk_thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

    first = default_issuer(tmp_path / "var", "http://127.0.0.1:8099/realms/cityos")
    key_file = tmp_path / "var" / "issuer" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (published,) = first.jwks()["keys"]
    assert published["kid"] == jwk_thumbprint(published) == first.kid
    again = DevIssuer(tmp_path / "var" / "issuer", "http://127.0.0.1:8099/realms/cityos")
    assert again.kid == first.kid  # reused across restarts, so earlier tokens keep verifying
    new_kid = again.rotate()
    assert DevIssuer(tmp_path / "var" / "issuer").kid == new_kid  # the rotated key is what persists
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with pytest.raises(RuntimeError, match="no URL"):
        DevIssuer(tmp_path / "var" / "issuer").mint("a", "o", [])


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


@pytest.mark.req("CORE-1")
async def test_cityos_token_mints_a_token_the_runtime_accepts(tmp_path):
    roles = ("-r", "operator", "-r", "analyst")
    env = {"CITYOS_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "cityos_platform.cli", "token", *("-s", "olga", "-o", "transport"), *roles],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = result.stdout.strip()
    issuer = DevIssuer(tmp_path / "issuer", "http://127.0.0.1:8099/realms/cityos")
    verifier = TokenVerifier(issuer.issuer_url, "cityos", JwksCache(source=issuer.jwks))
    principal = await verifier.verify(token)
    assert (principal.subject, principal.organization, principal.roles) == (
        "olga",
        "transport",
        frozenset({"operator", "analyst"}),
    )
