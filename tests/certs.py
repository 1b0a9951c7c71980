"""Test certificates: a throwaway CA and server certificates it signs, for
TLS servers outside the mesh (external services); a node-side Signer over a
function that signs one CSR (for fakes of the control plane)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.identity import Request, Signed, Signer


@dataclass(frozen=True)
class ServerCertificate:
    ca_pem: str
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def server_certificate(directory: Path, dns_name: str) -> ServerCertificate:
    """A new CA and a certificate for ``dns_name`` it signed, written (with
    its key) as PEM files under ``directory``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(dns_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{dns_name}.crt", directory / f"{dns_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ServerCertificate(ca.public_bytes(serialization.Encoding.PEM).decode(), cert_path,
                             key_path)


def one_by_one(sign: Callable[[str, str, str], Signed]) -> Signer:
    """A Signer from a function that signs one request (raising on refusal)."""
    def many(requests: list[Request]) -> list[Signed | Exception]:
        results: list[Signed | Exception] = []
        for request in requests:
            try:
                results.append(sign(*request))
            except Exception as error:  # noqa: BLE001 - a refusal, kept per request
                results.append(error)
        return results
    return many
