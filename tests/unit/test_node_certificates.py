"""Node-side certificates: a key per instance, renewal at half-life, failures
kept while the old leaf stays in use."""

from __future__ import annotations

import datetime

from controlplane.identity.ca import CertificateAuthority, new_root, spiffe_id
from sidecar.identity import Certificates, Signed
from tests.certs import one_by_one

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc)
TTL = datetime.timedelta(minutes=10)


class FakeControlPlane:
    """Signs with a real CA, for the instances it is told run on this node."""

    def __init__(self) -> None:
        self.ca = CertificateAuthority("mesh.test", [new_root("mesh.test", NOW)])
        self.now = NOW
        self.refuse = ""
        self.csrs: list[str] = []

    def sign(self, namespace: str, instance_id: str, csr: str) -> Signed:
        if self.refuse:
            raise PermissionError(self.refuse)
        self.csrs.append(csr)
        leaf = self.ca.sign(csr, spiffe_id("mesh.test", namespace, instance_id.split("-")[0]),
                            TTL, self.now)
        return Signed(leaf.cert_pem, self.ca.bundle(), leaf.identity, leaf.serial)

    def clock(self) -> float:
        return self.now.timestamp()


def test_every_instance_gets_a_leaf_and_renews_it_at_half_life() -> None:
    plane = FakeControlPlane()
    certs = Certificates(one_by_one(plane.sign), plane.clock)
    certs.keep({"web-abcde": "default", "api-fghij": "shop"})
    web = certs.current("web-abcde")
    assert web is not None and web.identity == "spiffe://mesh.test/ns/default/svc/web"
    assert "PRIVATE KEY" in web.key_pem and len(plane.csrs) == 2
    plane.now += datetime.timedelta(minutes=4)
    certs.keep({"web-abcde": "default", "api-fghij": "shop"})
    assert certs.current("web-abcde") == web and len(plane.csrs) == 2  # not yet half-life
    plane.now += datetime.timedelta(minutes=2)
    certs.keep({"web-abcde": "default"})
    renewed = certs.current("web-abcde")
    assert renewed is not None and renewed.serial != web.serial and renewed.key_pem != web.key_pem
    assert certs.current("api-fghij") is None  # no longer runs here


def test_a_failed_renewal_keeps_the_old_leaf_and_says_why() -> None:
    plane = FakeControlPlane()
    certs = Certificates(one_by_one(plane.sign), plane.clock)
    certs.keep({"web-abcde": "default"})
    first = certs.current("web-abcde")
    plane.now += datetime.timedelta(minutes=6)
    plane.refuse = "node n1 does not run instance default/web-abcde"
    certs.keep({"web-abcde": "default"})
    kept = certs.current("web-abcde")
    assert kept is not None and first is not None and kept.serial == first.serial
    assert "does not run instance" in kept.error
    plane.refuse = ""
    certs.keep({"web-abcde": "default"})
    fixed = certs.current("web-abcde")
    assert fixed is not None and fixed.serial != first.serial and fixed.error == ""
