"""The city's device CA: signs device certificate requests; the certificates authenticate devices
over mutual TLS (the server's client CA is this CA's certificate).

Embedded mode keeps the CA under `var/devices-ca/` (created on first start); production mounts it
from a Secret (`CITYOS_DEVICES_CA_CERT_FILE`, `CITYOS_DEVICES_CA_KEY_FILE`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from cityos_platform.errors import InvalidArgument

ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048


def fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


class DeviceCA:
    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, cert_file: Path, key_file: Path) -> DeviceCA:
        if cert_file.exists() and key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_file}: the device CA key must be an EC key")
            return cls(x509.load_pem_x509_certificate(cert_file.read_bytes()), key)
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CityOS"),
                x509.NameAttribute(NameOID.COMMON_NAME, "CityOS device CA"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA384())
        )
        cert_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(certificate, key)

    def sign(
        self, csr_pem: str, device_id: str, validity: dt.timedelta, now: dt.datetime
    ) -> x509.Certificate:
        """A client certificate for the device, for the CSR's public key; the CSR's subject is ignored."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise InvalidArgument.field("csr_pem", "not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise InvalidArgument.field("csr_pem", "the request's signature does not verify")
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, ALLOWED_CURVES):
                raise InvalidArgument.field("csr_pem", "EC keys must be on P-256 or P-384")
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_BITS:
                raise InvalidArgument.field("csr_pem", f"RSA keys must have at least {MIN_RSA_BITS} bits")
        else:
            raise InvalidArgument.field("csr_pem", "the key must be EC (P-256/P-384) or RSA")
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"urn:cityos:device:{device_id}")]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA384())
        )
