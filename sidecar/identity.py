"""Service certificates on the node: keys made here, signed by the control plane.

For each instance the agent runs, ``Certificates`` makes an ECDSA key (it
never leaves the node), sends a CSR through ``sign`` (the control plane signs
only for instances this node runs) and keeps the leaf, renewing it at
half-life. A failed renewal is kept as ``error`` (the instance's status shows
it) and retried on the next pass while the old leaf stays in use.

Thread-safety: one lock guards the table; ``sign`` is called outside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

from cryptography import x509

from controlplane.identity.keys import new_key_and_csr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signed:
    """What the control plane answers a CSR with."""

    cert_pem: str
    bundle_pem: str
    identity: str
    serial: str
    #: The serial of the root that signed it.
    root: str = ""


@dataclass(frozen=True)
class Material:
    key_pem: str
    cert_pem: str
    bundle_pem: str
    identity: str
    serial: str
    #: Unix seconds: when this node received it, and when it expires.
    issued_at: float
    not_after: float
    #: The last renewal's failure, while the current leaf is still in use.
    error: str = ""
    #: The serial the instance's Envoy was seen serving (its admin /certs).
    served: str = ""
    #: The root that signed it.
    root: str = ""
    #: The roots the instance's Envoy was seen trusting.
    trusted: frozenset[str] = frozenset()

    @cached_property
    def bundle_serials(self) -> frozenset[str]:
        """The roots in the bundle this node holds for it (parsed once per
        Material: a new bundle makes a new Material)."""
        found = x509.load_pem_x509_certificates(self.bundle_pem.encode())
        return frozenset(format(c.serial_number, "x") for c in found)

    @property
    def renew_at(self) -> float:
        """Half-life, from when it arrived (its notBefore is backdated for
        clock skew, so it would come too early)."""
        return self.issued_at + (self.not_after - self.issued_at) / 2


class Refusal(Exception):
    """The control plane would not sign for an instance; the message says why."""


#: What to sign: (namespace, instance id, CSR PEM).
Request = tuple[str, str, str]
#: Signs several requests in one call to the control plane: for each, the
#: signed leaf or why it was refused. Raises when the call itself fails.
Signer = Callable[[list[Request]], list["Signed | Exception"]]


class Certificates:
    def __init__(self, sign: Signer, clock: Callable[[], float] = time.time) -> None:
        self._sign = sign
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, Material] = {}

    def current(self, instance_id: str) -> Material | None:
        with self._lock:
            return self._held.get(instance_id)

    def served(self, instance_id: str, serial: str, trusted: frozenset[str],
               error: str = "") -> None:
        """Record what the instance's Envoy serves (and why that is wrong, if)."""
        with self._lock:
            held = self._held.get(instance_id)
            if held is not None:
                self._held[instance_id] = replace(held, served=serial, trusted=trusted,
                                                  error=error)

    def set_bundle(self, bundle_pem: str) -> bool:
        """The mesh's trusted roots changed: every instance trusts the new set
        (served over SDS at once). True when anything changed."""
        with self._lock:
            stale = {i: m for i, m in self._held.items() if m.bundle_pem != bundle_pem}
            for instance_id, material in stale.items():
                self._held[instance_id] = replace(material, bundle_pem=bundle_pem)
        return bool(stale)

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._held.pop(instance_id, None)

    def keep(self, instances: dict[str, str], active_root: str = "") -> None:
        """Make sure every instance (id -> namespace) has a leaf that is not
        past half its life (and is signed by ``active_root``, when given);
        forget the others."""
        with self._lock:
            for gone in set(self._held) - set(instances):
                del self._held[gone]
            held = dict(self._held)
        now = self._clock()
        due = [(namespace, instance_id) for instance_id, namespace in instances.items()
               if (material := held.get(instance_id)) is None or now >= material.renew_at
               or (active_root and material.root != active_root)]
        if due:
            self.renew(due)

    def renew(self, due: list[tuple[str, str]]) -> None:
        """New leaves for these (namespace, instance id) pairs, signed in one
        call; a refusal (or a failed call) is kept on the instance and retried."""
        keys = [new_key_and_csr() for _ in due]
        requests = [(namespace, instance_id, csr)
                    for (namespace, instance_id), (_, csr) in zip(due, keys)]
        try:
            results = self._sign(requests)
        except Exception as error:  # noqa: BLE001 - the control plane is away: retried
            results = [error] * len(requests)
        for (_, instance_id), (key_pem, _), result in zip(due, keys, results):
            if isinstance(result, Exception):
                self._failed(instance_id, result)
            else:
                self._keep(instance_id, key_pem, result)

    def _failed(self, instance_id: str, error: Exception) -> None:
        detail = f"renewing its certificate failed: {error}"
        log.warning("%s: %s", instance_id, detail)
        with self._lock:
            held = self._held.get(instance_id)
            if held is not None:
                self._held[instance_id] = replace(held, error=detail)

    def _keep(self, instance_id: str, key_pem: str, signed: Signed) -> Material:
        cert = x509.load_pem_x509_certificate(signed.cert_pem.encode())
        material = Material(
            key_pem=key_pem, cert_pem=signed.cert_pem, bundle_pem=signed.bundle_pem,
            identity=signed.identity, serial=signed.serial, root=signed.root,
            issued_at=self._clock(), not_after=cert.not_valid_after_utc.timestamp(),
        )
        with self._lock:
            self._held[instance_id] = material
        log.info("%s: certificate %s for %s until %s", instance_id, signed.serial[:12],
                 signed.identity, cert.not_valid_after_utc.isoformat())
        return material
