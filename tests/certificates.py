"""Throwaway certificate authorities for the TLS tests (etcd, Redis, Vault)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _valid_now(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    """Valid from five minutes ago (clock skew) for a day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


class Authority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str = "cwm test CA") -> None:
        self.key: Key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(common_name)
        usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        self.certificate = (
            _valid_now(x509.CertificateBuilder())
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    ) -> tuple[x509.Certificate, Key]:
        """A leaf certificate and its key; ``dns`` and ``ips`` become its subject alternative names."""
        key: Key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _valid_now(x509.CertificateBuilder())
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def write(self, directory: Path, stem: str) -> str:
        """The CA certificate as ``directory/stem.pem``; its path."""
        path = directory / f"{stem}.pem"
        path.write_bytes(self.pem())
        return str(path)


def write_pair(directory: Path, stem: str, certificate: x509.Certificate, key: Key) -> tuple[str, str]:
    """``stem.pem`` and ``stem-key.pem`` (PKCS#8, unencrypted) in ``directory``; their paths."""
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)
