"""The mesh CA: SPIFFE leaves from CSRs, checked the way TLS peers check them."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.identity.ca import (
    CONTROL_PLANE_NAME,
    CertificateAuthority,
    CertificateError,
    new_key_and_csr,
    new_root,
    parse_identity,
    parse_spiffe_id,
    spiffe_id,
)
from controlplane.model import control_plane_spiffe_id, node_spiffe_id

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(hours=24)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("mesh.test", [new_root("mesh.test", NOW)])


def test_a_leaf_names_its_service_and_chains_to_the_root(ca: CertificateAuthority) -> None:
    identity = spiffe_id("mesh.test", "shop", "backend")
    _, csr = new_key_and_csr(identity)
    leaf = ca.sign(csr, identity, DAY, NOW)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://mesh.test/ns/shop/svc/backend"]
    assert cert.not_valid_after_utc == NOW + DAY == leaf.not_after
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    root = ca.active.certificate
    cert.verify_directly_issued_by(root)
    assert leaf.root == ca.active.serial and leaf.serial == format(cert.serial_number, "x")
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_csr_without_an_identity_gets_the_one_asked_for(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    leaf = ca.sign(pem, spiffe_id("mesh.test", "default", "web"), DAY, NOW)
    assert leaf.identity.endswith("/ns/default/svc/web")


@pytest.mark.parametrize(("identity", "asked", "message"), [
    ("spiffe://other.test/ns/a/svc/b", None, "outside trust domain"),
    ("spiffe://mesh.test/ns/a/svc/b", "spiffe://mesh.test/ns/a/svc/c", "asks for"),
    ("spiffe://mesh.test/a/b", None, "is not a service identity"),
])
def test_what_is_refused(ca: CertificateAuthority, identity: str, asked: str | None,
                         message: str) -> None:
    _, csr = new_key_and_csr(asked or identity)
    with pytest.raises(CertificateError, match=message):
        ca.sign(csr, identity, DAY, NOW)
    with pytest.raises(CertificateError, match="not a PEM"):
        ca.sign("garbage", spiffe_id("mesh.test", "a", "b"), DAY, NOW)


def test_ttl_has_a_floor_and_the_bundle_holds_every_root(ca: CertificateAuthority) -> None:
    identity = spiffe_id("mesh.test", "a", "b")
    leaf = ca.sign(new_key_and_csr(identity)[1], identity, datetime.timedelta(seconds=5), NOW)
    assert leaf.not_after == NOW + datetime.timedelta(minutes=1)
    rotated = CertificateAuthority("mesh.test", [new_root("mesh.test", NOW), ca.active])
    assert rotated.bundle().count("BEGIN CERTIFICATE") == 2
    assert parse_spiffe_id(identity) == ("mesh.test", "a", "b")


def test_nodes_and_the_control_plane_get_leaves_from_the_same_ca(
        ca: CertificateAuthority) -> None:
    assert parse_identity("spiffe://mesh.test/node/n1") == ("mesh.test", "node", "n1")
    assert parse_identity("spiffe://mesh.test/control-plane") == (
        "mesh.test", "control-plane", "control-plane")
    assert parse_identity("spiffe://mesh.test/ns/a/svc/b") == ("mesh.test", "svc", "a/b")
    for bad in ("spiffe://mesh.test/node/", "spiffe://mesh.test/node/a/b", "https://x/node/a"):
        with pytest.raises(CertificateError):
            parse_identity(bad)

    _, csr = new_key_and_csr()  # the agent does not know the trust domain yet
    node = ca.sign(csr, node_spiffe_id("mesh.test", "n1"), DAY, NOW)
    assert node.identity == "spiffe://mesh.test/node/n1"
    _, csr = new_key_and_csr()
    server = ca.sign(csr, control_plane_spiffe_id("mesh.test"), DAY, NOW,
                     dns_names=(CONTROL_PLANE_NAME,))
    names = x509.load_pem_x509_certificate(server.cert_pem.encode()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [CONTROL_PLANE_NAME]
    # No service or node can be named like the control plane: names are DNS labels.
    assert "." in CONTROL_PLANE_NAME
