"""FND-7: configuration errors name the variable; mutual TLS rejects a client without a certificate."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.config import ConfigError, load_settings
from cityos_platform.testing import conformance


@pytest.mark.req("FND-7")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CITYOS_PORT", "70000"),
        ("CITYOS_PORT", "eighty"),
        ("CITYOS_UNARY_CONCURRENCY", "0"),
        ("CITYOS_LOG_LEVEL", "LOUD"),
        ("CITYOS_MODE", "staging"),
        ("CITYOS_TLS_CLIENT_CA_FILE", "/nonexistent/ca.pem"),
    ],
)
def test_a_bad_variable_is_named_in_the_error(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value)


@pytest.mark.req("FND-7")
def test_a_bad_variable_stops_the_server_process_with_its_name(registered_conformance):
    env = {**registered_conformance, "CITYOS_GRACE_S": "-1"}
    result = subprocess.run(
        [sys.executable, "-m", "cityos_platform.cli", "serve", "conformance"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CITYOS_GRACE_S" in result.stderr
    assert "Traceback" not in result.stderr


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn, key, issuer_cn, issuer_key, *, ca=False, sans=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def pki(tmp_path):
    ca_key = _key()
    ca = _cert("cityos test ca", ca_key, "cityos test ca", ca_key, ca=True)
    server_key = _key()
    server = _cert(
        "localhost",
        server_key,
        "cityos test ca",
        ca_key,
        sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
    )
    client_key = _key()
    client = _cert("device-0001", client_key, "cityos test ca", ca_key)
    rogue_ca_key = _key()
    rogue_key = _key()
    rogue = _cert("intruder", rogue_key, "rogue ca", rogue_ca_key)
    files = {
        "ca": _pem(ca),
        "server_cert": _pem(server),
        "server_key": _key_pem(server_key),
        "client_cert": _pem(client),
        "client_key": _key_pem(client_key),
        "rogue_cert": _pem(rogue),
        "rogue_key": _key_pem(rogue_key),
    }
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    files["dir"] = tmp_path
    return files


async def _echo_over_tls(port, credentials):
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials, options=options) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        return await stub.Echo(conformance_pb2.EchoRequest(message="over tls"), timeout=5)


@pytest.mark.req("FND-7")
async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_city_ca(start_server, pki):
    directory = pki["dir"]
    server = await start_server(
        [conformance.mount()],
        tls_cert_file=directory / "server_cert.pem",
        tls_key_file=directory / "server_key.pem",
        tls_client_ca_file=directory / "ca.pem",
    )
    with_cert = grpc.ssl_channel_credentials(pki["ca"], pki["client_key"], pki["client_cert"])
    assert (await _echo_over_tls(server.port, with_cert)).message == "over tls"

    without_cert = grpc.ssl_channel_credentials(pki["ca"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _echo_over_tls(server.port, without_cert)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    foreign_cert = grpc.ssl_channel_credentials(pki["ca"], pki["rogue_key"], pki["rogue_cert"])
    with pytest.raises(grpc.aio.AioRpcError) as rogue:
        await _echo_over_tls(server.port, foreign_cert)
    assert rogue.value.code() == grpc.StatusCode.UNAVAILABLE

    # Plaintext does not reach a TLS port either.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await conformance_pb2_grpc.ConformanceServiceStub(channel).Echo(
                conformance_pb2.EchoRequest(message="plain"), timeout=2
            )


async def test_server_side_tls_without_client_ca_serves_any_client(start_server, pki):
    directory = pki["dir"]
    server = await start_server(
        [conformance.mount()],
        tls_cert_file=directory / "server_cert.pem",
        tls_key_file=directory / "server_key.pem",
    )
    reply = await _echo_over_tls(server.port, grpc.ssl_channel_credentials(pki["ca"]))
    assert reply.message == "over tls"


@pytest.mark.req("FND-7")
def test_production_mode_needs_a_database_url_only_where_a_service_asks_for_one():
    """A process without a database (the lake exporter) starts in production mode without
    CITYOS_DATABASE_URL; a service asking for its database there gets the variable named, not SQLite."""
    settings = load_settings(mode="production", page_token_secret="s" * 32)
    with pytest.raises(ConfigError) as caught:
        settings.database_url_for("parking")
    assert "CITYOS_DATABASE_URL" in str(caught.value)
    given = load_settings(mode="production", page_token_secret="s" * 32, database_url="postgresql://db/x")
    assert given.database_url_for("parking") == "postgresql://db/x"
    with pytest.raises(ConfigError) as caught:
        load_settings(mode="production")
    assert "CITYOS_PAGE_TOKEN_SECRET" in str(caught.value)
    assert load_settings().database_url_for("parking").startswith("sqlite+aiosqlite:///")
