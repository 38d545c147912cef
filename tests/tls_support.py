"""Certificates for TLS tests (no tests here): a CA and certificates it signs, written as PEM files.

RSA keys: dcmtk's default TLS profile (BCP 195 non-downgrading) offers only ECDHE-RSA cipher suites.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.helpers import LOCALHOST

Authority = tuple[Path, Any, Any]
"""(its certificate file, certificate, key)"""


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_authority(folder: Path, name: str) -> Authority:
    """A self-signed CA."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    path = folder / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path, certificate, key


def issued_certificate(folder: Path, ca: Authority, name: str, *, expired: bool = False) -> tuple[Path, Path]:
    """A certificate named ``name`` (subject CN and DNS name) for 127.0.0.1 signed by ``ca``: (certificate file,
    key file)."""
    _path, ca_certificate, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=60 if expired else 1)
    end = now - datetime.timedelta(days=30) if expired else now + datetime.timedelta(days=30)
    certificate = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_certificate.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCALHOST)),
                                                               x509.DNSName(name)]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    certificate_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return certificate_path, key_path
