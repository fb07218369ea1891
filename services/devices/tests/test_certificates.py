"""X.509 device credentials: a CSR signed by the city's device CA authenticates the device over mutual
TLS — as itself only — until revoked."""

from __future__ import annotations

import datetime as dt
import ipaddress
from datetime import UTC, datetime

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.protobuf import duration_pb2, timestamp_pb2

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.app import DevicesApp
from cityos_devices.ca import DeviceCA
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import authenticator_for
from services.devices.tests.conftest import Fleet
from services.devices.tests.test_registry import violations


def _pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _csr(key, cn="whatever") -> str:
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _server_pki(directory):
    """A server certificate for localhost from its own CA (devices trust it; the server trusts the
    device CA for clients)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "server.pem").write_bytes(_pem(cert))
    (directory / "server-key.pem").write_bytes(_key_pem(key))
    return _pem(ca)


@pytest.fixture
async def tls_fleet(start_server, database_url, dev_issuer, mint, tmp_path, clock):
    app = DevicesApp(
        load_settings(var_dir=tmp_path, events_poll_interval_s=0.1),
        database_url=database_url,
        clock=clock,
        run_jobs=False,
    )
    mounts = await app.start()
    server_ca = _server_pki(tmp_path)
    authenticator = authenticator_for(dev_issuer)
    authenticator.prefixed = app.token_verifiers
    authenticator.certificate_verifier = app.certificate_verifier
    server = await start_server(
        mounts,
        authenticator=authenticator,
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server-key.pem",
        tls_client_ca_file=tmp_path / "devices-ca" / "ca.pem",
    )
    device_ca = DeviceCA.load_or_create(
        tmp_path / "devices-ca" / "ca.pem", tmp_path / "devices-ca" / "ca-key.pem"
    )

    def channel_for(key, certificate: bytes) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(server_ca, _key_pem(key), certificate)
        return grpc.aio.secure_channel(
            f"localhost:{server.port}", credentials, options=(("grpc.ssl_target_name_override", "localhost"),)
        )

    # Operators present their bearer token; this listener also wants a client certificate from them.
    operator_key = ec.generate_private_key(ec.SECP256R1())
    operator_cert = device_ca.sign(
        _csr(operator_key), "operator-console", dt.timedelta(days=1), datetime.now(UTC)
    )
    channel = channel_for(operator_key, _pem(operator_cert))
    fleet = Fleet(server, app, channel, mint)
    fleet.channel_for = channel_for
    yield fleet
    await channel.close()
    await app.stop()


def _reading(sequence: int) -> devices_pb2.Reading:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(datetime.now(UTC))
    return devices_pb2.Reading(sequence=sequence, time=when, values={"occupied": 1.0})


@pytest.mark.slow
@pytest.mark.req("DEV-2")
async def test_a_device_certificate_authenticates_that_device_only_until_revoked(tls_fleet):
    fleet = tls_fleet
    await fleet.model()
    await fleet.device("pk-1")
    await fleet.device("pk-2")
    key = ec.generate_private_key(ec.SECP256R1())
    signed = await fleet.registry.SignDeviceCertificate(
        devices_pb2.SignDeviceCertificateRequest(device="devices/pk-1", csr_pem=_csr(key, cn="pk-2")),
        metadata=fleet.operator,
    )
    certificate = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pk-1"  # not the CSR's
    async with fleet.channel_for(key, signed.certificate_pem.encode()) as device_channel:
        telemetry = devices_pb2_grpc.TelemetryServiceStub(device_channel)
        reply = await telemetry.Report(
            devices_pb2.ReportRequest(device="devices/pk-1", readings=[_reading(1)])
        )
        assert reply.accepted == 1  # no token: the certificate is the credential
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await telemetry.Report(devices_pb2.ReportRequest(device="devices/pk-2", readings=[_reading(1)]))
        assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await fleet.registry.RevokeDeviceCredentials(
            devices_pb2.RevokeDeviceCredentialsRequest(
                device="devices/pk-1", credential_id=signed.credential_id
            ),
            metadata=fleet.operator,
        )
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await telemetry.Report(devices_pb2.ReportRequest(device="devices/pk-1", readings=[_reading(2)]))
        assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.req("DEV-1")
async def test_bad_certificate_requests_are_refused(tls_fleet):
    fleet = tls_fleet
    await fleet.model()
    await fleet.device("pk-1")

    async def refused(**fields):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fleet.registry.SignDeviceCertificate(
                devices_pb2.SignDeviceCertificateRequest(device="devices/pk-1", **fields),
                metadata=fleet.operator,
            )
        return violations(caught.value)

    assert "csr_pem" in await refused(csr_pem="not a csr")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "at least 2048" in (await refused(csr_pem=_csr(weak)))["csr_pem"]
    too_long = duration_pb2.Duration(seconds=1000 * 86400)
    assert "validity" in await refused(
        csr_pem=_csr(ec.generate_private_key(ec.SECP256R1())), validity=too_long
    )
