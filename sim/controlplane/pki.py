"""The control plane's certificates: one CA that signs the kube-apiserver's serving certificate, every
client certificate we hand out (admin, kube-controller-manager, nodes) and the serving certificates of
kube-scheduler and kube-controller-manager, plus the service-account token signing key pair.

Client certificates authenticate as CN = user and O = groups, which is how the API server maps
`O=system:masters` to cluster-admin and `CN=system:node:<name>, O=system:nodes` to the Node authorizer.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.certs import BACKDATE, new_certificate_authority, subject_alt_name

# A test control plane lives for minutes; a day leaves room for a long debugging session.
_VALIDITY = datetime.timedelta(days=1)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key on disk (PEM; the key is mode 0600)."""

    cert: Path
    key: Path


class ClusterAuthority:
    """The cluster CA, kept in memory to sign further certificates, and written to `directory`/ca.crt|key."""

    def __init__(self, directory: Path, *, common_name: str = "kube-vgpu-controlplane-ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key, self._cert = new_certificate_authority(common_name, _VALIDITY)
        self._name = self._cert.subject
        self.files = CertificateFiles(cert=directory / "ca.crt", key=directory / "ca.key")
        self.files.cert.write_bytes(self.ca_pem)
        _write_private(self.files.key, _key_pem(self._key))

    @property
    def ca_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self,
        name: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        hosts: Sequence[str] = (),
    ) -> CertificateFiles:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([subject_alt_name(host) for host in hosts]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        files = CertificateFiles(cert=self.directory / f"{name}.crt", key=self.directory / f"{name}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(files.key, _key_pem(key))
        return files

    def issue_serving(self, name: str, hosts: Sequence[str]) -> CertificateFiles:
        """A serving certificate for `hosts` (DNS names or IP addresses), written as `<name>.crt|key`."""
        if not hosts:
            raise ValueError("a serving certificate needs at least one host")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._issue(name, subject, ExtendedKeyUsageOID.SERVER_AUTH, hosts)

    def issue_client(self, name: str, user: str, groups: Sequence[str] = ()) -> CertificateFiles:
        """A client certificate the API server reads as user `user` (CN) in `groups` (one O each)."""
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        return self._issue(name, x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH)


def write_service_account_keys(directory: Path) -> CertificateFiles:
    """The key pair that signs service-account tokens: `sa.key` (private) and `sa.pub` (public, PEM).
    RSA, the algorithm every Kubernetes release and token consumer accepts. Returned as cert=public key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = CertificateFiles(cert=directory / "sa.pub", key=directory / "sa.key")
    files.cert.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _write_private(files.key, _key_pem(key))
    return files
