"""Service to service: the development issuer's token endpoint (Keycloak's client-credentials grant), the
token source that caches and refreshes a service's token, and calls through a peer channel that carry it.

Everything runs for real: the issuer serves HTTP on an ephemeral port, the token source talks to it with
httpx, and the peer channel calls an in-process gRPC server that verifies the token against the issuer's
JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import stat
from datetime import UTC, datetime

import grpc
import httpx
import pytest

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.auth import JwksCache, TokenVerifier
from cityos_platform.authz import Authenticator
from cityos_platform.clock import ManualClock
from cityos_platform.config import ConfigError, load_settings
from cityos_platform.issuer import (
    CLIENT_SECRET_FILE,
    SERVICE_TOKEN_TTL_S,
    DevIssuer,
    DevIssuerServer,
    load_or_create_client_secret,
)
from cityos_platform.launcher import Launcher, port_is_free
from cityos_platform.peers import (
    ClientCredentials,
    PeerNotConfigured,
    TokenRefused,
    TokenUnavailable,
    client_credentials,
    peer_channel,
)
from cityos_platform.registry import ServiceDefinition
from cityos_platform.testing import conformance

SECRET = "s3cret-for-tests-only-0123456789abcdef"
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    return ManualClock(START)


@pytest.fixture
def issuer(tmp_path, clock):
    server = DevIssuerServer(DevIssuer(tmp_path / "keys", clock=clock))
    server.start()
    server.issuer.register_client("cityos-parking", SECRET)
    yield server
    server.stop()


def _post(url, data, **kwargs):
    return httpx.post(url, data=data, timeout=5, **kwargs)


@pytest.mark.req("CORE-1")
async def test_the_dev_issuer_gives_a_registered_client_a_service_token_the_runtime_accepts(issuer, clock):
    response = _post(
        issuer.token_url,
        {"grant_type": "client_credentials", "client_id": "cityos-parking", "client_secret": SECRET},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == SERVICE_TOKEN_TTL_S
    assert response.headers["cache-control"] == "no-store"
    jwks = JwksCache(url=issuer.jwks_url, min_refresh_interval_s=30, clock=clock)
    authenticator = Authenticator(TokenVerifier(issuer.issuer_url, "cityos", jwks, clock=clock))
    principal = await authenticator.principal({"authorization": f"Bearer {body['access_token']}"})
    assert principal.kind == "service"
    assert principal.roles == frozenset({"service"})
    assert principal.client == "cityos-parking"
    assert principal.organization == "city"  # the realm's service accounts' organization
    assert principal.subject == "service-account-cityos-parking"
    # HTTP Basic client authentication (client_secret_basic) works the same.
    basic = base64.b64encode(f"cityos-parking:{SECRET}".encode()).decode()
    by_header = _post(
        issuer.token_url, {"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert by_header.status_code == 200
    discovery = httpx.get(issuer.discovery_url, timeout=5).json()
    assert discovery["token_endpoint"] == issuer.token_url
    assert discovery["grant_types_supported"] == ["client_credentials"]


@pytest.mark.req("CORE-1")
def test_the_dev_issuer_refuses_bad_clients_and_other_grants_like_keycloak(issuer):
    def ask(**form):
        response = _post(issuer.token_url, form)
        return response.status_code, response.json()["error"]

    good = {"client_id": "cityos-parking", "client_secret": SECRET}
    assert ask(grant_type="client_credentials", client_id="cityos-parking", client_secret="wrong") == (
        401,
        "invalid_client",
    )
    assert ask(grant_type="client_credentials", client_id="cityos-nobody", client_secret=SECRET) == (
        401,
        "invalid_client",
    )
    assert ask(grant_type="client_credentials", client_id="cityos-parking") == (401, "invalid_client")
    assert ask(grant_type="password", username="alice", password="x", **good) == (
        400,
        "unsupported_grant_type",
    )
    assert ask(**good) == (400, "invalid_request")  # no grant_type
    as_json = httpx.post(issuer.token_url, json={"grant_type": "client_credentials", **good}, timeout=5)
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    assert _post(issuer.issuer_url + "/protocol/openid-connect/other", good).status_code == 404
    assert issuer.requests["token"] == 6


async def test_the_token_source_caches_its_token_and_refreshes_it_before_expiry(issuer, clock):
    tokens = ClientCredentials(issuer.token_url, "cityos-parking", SECRET, clock=clock)
    first = await tokens.token()
    assert await tokens.token() == first
    # Many callers at once while none is cached: one request to the issuer.
    tokens.invalidate()
    together = await asyncio.gather(*(tokens.token() for _ in range(10)))
    assert len(set(together)) == 1
    assert tokens.fetches == 2
    second = together[0]
    # Still well within its 300 s: cached. The margin is min(60 s, a quarter of 300 s) = 60 s.
    clock.advance(SERVICE_TOKEN_TTL_S - 61)
    assert await tokens.token() == second
    assert tokens.fetches == 2
    clock.advance(2)  # 59 s left: fetched again before it expires
    third = await tokens.token()
    assert third != second
    assert tokens.fetches == 3
    assert await tokens.metadata() == (("authorization", f"Bearer {third}"),)


async def test_the_token_source_says_why_the_issuer_refused_without_the_secret(issuer, clock):
    wrong = "this-is-the-wrong-secret-0123456789"
    tokens = ClientCredentials(issuer.token_url, "cityos-parking", wrong, clock=clock)
    with pytest.raises(TokenRefused) as refused:
        await tokens.token()
    assert refused.value.status == 401
    assert refused.value.error == "invalid_client"
    assert "cityos-parking" in str(refused.value)
    assert issuer.token_url in str(refused.value)
    assert wrong not in str(refused.value)
    assert wrong not in repr(tokens)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    away = ClientCredentials(f"http://127.0.0.1:{closed}/token", "cityos-parking", SECRET, clock=clock)
    with pytest.raises(TokenUnavailable, match="no token for client 'cityos-parking'"):
        await away.token()


async def test_a_call_through_a_peer_channel_carries_the_service_token(start_server, dev_issuer):
    dev_issuer.issuer.register_client("cityos-parking", SECRET)
    server = await start_server([conformance.mount()])
    settings = load_settings(
        endpoints={"conformance": server.address},
        auth_issuer=dev_issuer.issuer_url,
        auth_client_secret=SECRET,
    )
    assert settings.token_url == dev_issuer.token_url  # Keycloak's path under the issuer
    tokens = client_credentials(settings, "parking")
    assert tokens is not None
    assert tokens.client_id == "cityos-parking"
    channel = peer_channel(settings, "conformance", tokens)
    try:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        echoed = await stub.Echo(conformance_pb2.EchoRequest(message="hi"), timeout=5)
        assert echoed.caller == "service-account-cityos-parking"
        ticks = [
            tick.sequence async for tick in stub.StreamTicks(conformance_pb2.StreamTicksRequest(count=3))
        ]
        assert ticks == [1, 2, 3]
        assert tokens.fetches == 1  # one token for both calls
    finally:
        await channel.close()
    # Without a secret there is no token source, and a peer that is not configured is named.
    assert client_credentials(load_settings(), "parking") is None
    with pytest.raises(PeerNotConfigured, match=r"'devices'.*conformance"):
        peer_channel(settings, "devices", tokens)


async def test_every_kind_of_call_through_a_peer_channel_carries_the_token(dev_issuer):
    """grpc.aio files an interceptor under one kind of call only: unary and streaming calls alike must
    carry the token (a real server records what arrives), and a call's own token is left alone."""
    dev_issuer.issuer.register_client("cityos-parking", SECRET)
    seen: list[tuple[str, str]] = []

    def record(kind, context):
        seen.append((kind, dict(context.invocation_metadata()).get("authorization", "")))

    async def unary_unary(request, context):
        record("unary-unary", context)
        return b"ok"

    async def unary_stream(request, context):
        record("unary-stream", context)
        yield b"ok"

    async def stream_unary(requests, context):
        record("stream-unary", context)
        return b"".join([message async for message in requests])

    async def stream_stream(requests, context):
        record("stream-stream", context)
        async for message in requests:
            yield message

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Peer",
                {
                    "UU": grpc.unary_unary_rpc_method_handler(unary_unary),
                    "US": grpc.unary_stream_rpc_method_handler(unary_stream),
                    "SU": grpc.stream_unary_rpc_method_handler(stream_unary),
                    "SS": grpc.stream_stream_rpc_method_handler(stream_stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = load_settings(
        endpoints={"peer": f"127.0.0.1:{port}"}, auth_issuer=dev_issuer.issuer_url, auth_client_secret=SECRET
    )
    tokens = client_credentials(settings, "parking")
    channel = peer_channel(settings, "peer", tokens)

    async def two():
        yield b"a"
        yield b"b"

    try:
        assert await channel.unary_unary("/test.Peer/UU")(b"x", timeout=5) == b"ok"
        assert [m async for m in channel.unary_stream("/test.Peer/US")(b"x", timeout=5)] == [b"ok"]
        assert await channel.stream_unary("/test.Peer/SU")(two(), timeout=5) == b"ab"
        assert [m async for m in channel.stream_stream("/test.Peer/SS")(two(), timeout=5)] == [b"a", b"b"]
        await channel.unary_unary("/test.Peer/UU")(b"x", metadata=(("authorization", "Bearer mine"),))
    finally:
        await channel.close()
        await server.stop(0)
    expected = f"Bearer {await tokens.token()}"
    assert seen == [
        ("unary-unary", expected),
        ("unary-stream", expected),
        ("stream-unary", expected),
        ("stream-stream", expected),
        ("unary-unary", "Bearer mine"),
    ]


async def test_a_peer_channel_surfaces_a_refused_token_on_the_call(start_server, dev_issuer):
    server = await start_server([conformance.mount()])
    settings = load_settings(
        endpoints={"conformance": server.address},
        auth_issuer=dev_issuer.issuer_url,
        auth_client_id="cityos-unregistered",
        auth_client_secret=SECRET,
    )
    channel = peer_channel(settings, "conformance", client_credentials(settings, "parking"))
    try:
        with pytest.raises(TokenRefused, match="cityos-unregistered"):
            await conformance_pb2_grpc.ConformanceServiceStub(channel).Echo(
                conformance_pb2.EchoRequest(message="hi"), timeout=5
            )
    finally:
        await channel.close()


def test_endpoints_and_client_settings_are_validated_by_variable(monkeypatch):
    monkeypatch.setenv("CITYOS_ENDPOINTS", '{"devices": "devices.city.svc:50051", "identity": "[::1]:50052"}')
    settings = load_settings()
    assert settings.endpoints == {"devices": "devices.city.svc:50051", "identity": "[::1]:50052"}
    assert settings.client_id_for("parking") == "cityos-parking"
    assert load_settings(auth_client_id="custom").client_id_for("parking") == "custom"
    assert load_settings(auth_token_url="https://kc/t").token_url == "https://kc/t"
    monkeypatch.setenv("CITYOS_ENDPOINTS", '{"devices": "no-port"}')
    with pytest.raises(ConfigError, match="CITYOS_ENDPOINTS: devices: 'no-port' is not host:port"):
        load_settings()
    monkeypatch.setenv("CITYOS_ENDPOINTS", "devices=1.2.3.4:5")
    with pytest.raises(ConfigError, match="CITYOS_ENDPOINTS: not valid JSON"):
        load_settings()


def test_a_port_left_in_time_wait_by_a_previous_run_is_free_again_and_a_listening_one_is_not():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the connection enters TIME_WAIT
        client.close()
    assert port_is_free(port)


def test_the_launcher_plans_distinct_ports_and_registers_every_service_client(tmp_path):
    launcher = Launcher(load_settings(var_dir=tmp_path), console=None)  # type: ignore[arg-type]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        definitions = [
            ServiceDefinition(name=name, dev_port=port, factory="x:y", description="")
            for name, port in (("devices", busy), ("parking", 50071), ("identity", 50071))
        ]
        ports = Launcher.plan_ports(definitions)
    assert set(ports) == {"devices", "parking", "identity"}
    assert len(set(ports.values())) == 3
    assert ports["devices"] != busy
    with socket.socket() as taken_http:
        taken_http.bind(("127.0.0.1", 0))
        busy_http = taken_http.getsockname()[1]
        with_http = [
            ServiceDefinition(name="datashare", dev_port=50066, factory="x:y", dev_http_port=busy_http),
            ServiceDefinition(
                name="web-thing", dev_port=50067, factory="x:y", dev_http_port=ports["parking"]
            ),
            ServiceDefinition(name="parking", dev_port=50071, factory="x:y"),
        ]
        http = Launcher.plan_http_ports(with_http, set(ports.values()))
    assert set(http) == {"datashare", "web-thing"}  # parking has no HTTP listener
    assert http["datashare"] != busy_http
    assert http["web-thing"] not in ports.values()
    assert with_http[1].http_port_variable == "CITYOS_WEB_THING_HTTP_PORT"
    issuer = DevIssuer(tmp_path / "issuer", "http://127.0.0.1:1/realms/cityos")
    secret = launcher.register_clients(issuer, ["devices", "parking"])
    issuer.authenticate_client("cityos-parking", secret)
    issuer.authenticate_client("cityos-devices", secret)
    path = tmp_path / "issuer" / CLIENT_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_client_secret(path) == secret  # reused on the next start
