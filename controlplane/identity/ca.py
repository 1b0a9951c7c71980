"""The mesh's certificate authority: SPIFFE identities for services.

- A root is an ECDSA P-256 key and a self-signed CA certificate for the trust
  domain (``spiffe://<trust-domain>`` as its URI SAN), valid ten years.
- A leaf names one service: URI SAN
  ``spiffe://<trust-domain>/ns/<namespace>/svc/<service>``, client and server
  auth, signed by the active root from a CSR whose key never left its node.
  Node agents (``.../node/<name>``) and the control plane's agent port
  (``.../control-plane``, with a DNS name no service or node can take) get
  leaves from the same CA.
- The trust bundle is every root still trusted: during a root rotation the
  new root is added first, leaves are reissued from it, the old one leaves
  last.

Pure apart from randomness and the clock (given to ``sign``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.identity.keys import CONTROL_PLANE_NAME, new_key_and_csr
from controlplane.model import spiffe_id

# re-exported: callers of the CA name identities with them
__all__ = ["CONTROL_PLANE_NAME", "new_key_and_csr", "spiffe_id"]

ROOT_LIFETIME = datetime.timedelta(days=3650)
#: How far back a certificate's validity starts: clocks of nodes differ.
BACKDATE = datetime.timedelta(minutes=1)
MIN_TTL = datetime.timedelta(minutes=1)


class CertificateError(ValueError):
    """A CSR or identity that cannot be signed; the message says why."""


def parse_spiffe_id(uri: str) -> tuple[str, str, str]:
    """(trust domain, namespace, service) of a service's SPIFFE ID."""
    prefix = "spiffe://"
    parts = uri[len(prefix):].split("/") if uri.startswith(prefix) else []
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "svc" or not all(parts):
        raise CertificateError(f"{uri!r} is not a service identity "
                               "(spiffe://<trust-domain>/ns/<namespace>/svc/<service>)")
    return parts[0], parts[2], parts[4]


def parse_identity(uri: str) -> tuple[str, str, str]:
    """(trust domain, kind, name) of any identity the CA signs: kind is
    ``svc`` (name ``namespace/service``), ``node`` or ``control-plane``."""
    prefix = "spiffe://"
    parts = uri[len(prefix):].split("/") if uri.startswith(prefix) else []
    if len(parts) == 3 and parts[1] == "node" and all(parts):
        return parts[0], "node", parts[2]
    if len(parts) == 2 and parts[1] == "control-plane" and parts[0]:
        return parts[0], "control-plane", parts[1]
    domain, namespace, service = parse_spiffe_id(uri)
    return domain, "svc", f"{namespace}/{service}"


@dataclass(frozen=True, eq=False)
class Root:
    cert_pem: str
    key_pem: str

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @cached_property
    def signer(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem.encode(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError("a root's key must be an ECDSA key")
        return key

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    def as_dict(self) -> dict[str, str]:
        return {"cert": self.cert_pem, "key": self.key_pem}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Root:
        return cls(str(data["cert"]), str(data["key"]))


@dataclass(frozen=True)
class Leaf:
    cert_pem: str
    identity: str
    serial: str
    not_after: datetime.datetime
    #: The serial of the root that signed it.
    root: str


def new_root(trust_domain: str, now: datetime.datetime) -> Root:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flotilla"),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"Flotilla mesh CA {trust_domain}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Root(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode(),
    )


class CertificateAuthority:
    """Signs leaves with ``roots[0]``; trusts every root in ``roots``."""

    def __init__(self, trust_domain: str, roots: list[Root]) -> None:
        if not roots:
            raise ValueError("a CA needs at least one root")
        self.trust_domain = trust_domain
        self.roots = list(roots)

    @property
    def active(self) -> Root:
        return self.roots[0]

    def bundle(self) -> str:
        return "".join(root.cert_pem for root in self.roots)

    def sign(self, csr_pem: str, identity: str, ttl: datetime.timedelta,
             now: datetime.datetime, dns_names: tuple[str, ...] = ()) -> Leaf:
        """A leaf for ``identity`` from a CSR; the CSR may name the identity
        (then it must be that one) or nothing. ``dns_names`` are for a server
        clients verify by name (the control plane's agent port)."""
        domain, _, name = parse_identity(identity)
        if domain != self.trust_domain:
            raise CertificateError(f"identity {identity} is outside trust domain "
                                   f"{self.trust_domain}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as error:
            raise CertificateError(f"the CSR is not a PEM certificate request: {error}") from None
        try:
            if not csr.is_signature_valid:
                raise CertificateError("the CSR's signature does not match its key")
        except InvalidSignature:
            raise CertificateError("the CSR's signature does not match its key") from None
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CertificateError("the CSR's key must be an ECDSA key")
        try:
            asked = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = asked.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if any(uri != identity for uri in uris):
            raise CertificateError(f"the CSR asks for {', '.join(uris)}, not {identity}")
        root, signer = self.active.certificate, self.active.signer
        ttl = max(ttl, MIN_TTL)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        name.rpartition("/")[2])]))
            .issuer_name(root.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=True, key_cert_sign=False,
                crl_sign=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity), *map(x509.DNSName, dns_names)]),
                critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256())
        )
        return Leaf(cert.public_bytes(serialization.Encoding.PEM).decode(), identity,
                    format(cert.serial_number, "x"), cert.not_valid_after_utc,
                    self.active.serial)
