"""Self-signed CA and serving certificates for the webhook and extender (local mode, tests, certgen).

The API server only calls admission webhooks over HTTPS and verifies them against the configuration's
caBundle, so even on one machine the suite needs a CA and a serving certificate whose SANs name the
address the caller dials (127.0.0.1 for kube-scheduler's sidecar, as HAMi's chart also adds).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServingCertificate:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: str | Path, name: str = "tls") -> tuple[Path, Path, Path]:
        """`ca.crt`, `<name>.crt`, `<name>.key` (key mode 0600); returns their paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        ca, cert, key = folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key"
        ca.write_bytes(self.ca_pem)
        cert.write_bytes(self.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem)
        return ca, cert, key


# Certificates are valid from a little before "now", so a peer whose clock is slightly behind accepts them.
BACKDATE = datetime.timedelta(minutes=5)


def subject_alt_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def new_certificate_authority(
    common_name: str, validity: datetime.timedelta
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (P-256) that may sign leaf certificates only (path length 0)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_serving_certificate(
    hosts: Sequence[str], *, common_name: str = "kube-vgpu", days: int = 365
) -> ServingCertificate:
    """A fresh CA and a serving certificate for `hosts` (DNS names or IP addresses), signed by it."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host")
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = new_certificate_authority(f"{common_name}-ca", datetime.timedelta(days=days))
    ca_name = ca_cert.subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([subject_alt_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ServingCertificate(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
