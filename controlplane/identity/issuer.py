"""The control plane's side of identity: the CA's roots kept (sealed) in the
store, leaves signed only for what an agent runs, and a record of each.

``sign_for_instance`` is the authorization rule: an agent gets a leaf for a
service only while its node runs an instance of that service (else
PermissionDenied); the identity comes from the instance, never from the CSR.
Each leaf is recorded as a ``Certificate`` object (public data only) for
`flotilla certs`; an instance keeps its two newest records.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable

from controlplane.errors import FailedPrecondition, NotFound, PermissionDenied, UserError
from controlplane.identity.ca import (
    CertificateAuthority,
    CertificateError,
    Leaf,
    Root,
    new_root,
    spiffe_id,
)
from controlplane.model import ObjectKey, Resource
from controlplane.store import SqliteStore

PRIVATE_KEY = "ca"
KEEP_PER_INSTANCE = 2


class Issuer:
    def __init__(self, store: SqliteStore, trust_domain: str,
                 leaf_ttl: datetime.timedelta = datetime.timedelta(hours=24),
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._ttl = leaf_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self.ca = self._load_or_create(trust_domain)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock(), tz=datetime.timezone.utc)

    def _load_or_create(self, trust_domain: str) -> CertificateAuthority:
        stored = self._store.get_private(PRIVATE_KEY)
        if stored:
            if stored["trustDomain"] != trust_domain:
                raise FailedPrecondition(
                    f"this data dir's CA is for trust domain {stored['trustDomain']!r}, not "
                    f"{trust_domain!r}: start with --trust-domain {stored['trustDomain']} "
                    "(changing it re-keys the whole mesh)")
            return CertificateAuthority(trust_domain,
                                        [Root.from_dict(r) for r in stored["roots"]])
        ca = CertificateAuthority(trust_domain, [new_root(trust_domain, self._now())])
        self._save(ca)
        return ca

    def _save(self, ca: CertificateAuthority) -> None:
        self._store.put_private(PRIVATE_KEY, {
            "trustDomain": ca.trust_domain, "roots": [r.as_dict() for r in ca.roots]})

    def bundle(self) -> str:
        return self.ca.bundle()

    def sign_for_instance(self, node: str, namespace: str, instance_id: str,
                          csr_pem: str) -> Leaf:
        instance = self._store.get(ObjectKey("Instance", namespace, instance_id))
        if instance is None:
            raise NotFound(f"instance {namespace}/{instance_id} does not exist")
        if instance.spec.get("node") != node:
            raise PermissionDenied(
                f"node {node} does not run instance {namespace}/{instance_id}; a node gets "
                "certificates only for the instances it runs")
        identity = spiffe_id(self.ca.trust_domain, namespace, str(instance.spec["service"]))
        with self._lock:
            try:
                leaf = self.ca.sign(csr_pem, identity, self._ttl, self._now())
            except CertificateError as error:
                raise UserError(f"cannot sign the CSR: {error}") from None
        self._record(leaf, node, instance)
        return leaf

    def _record(self, leaf: Leaf, node: str, instance: Resource) -> None:
        record = Resource(
            kind="Certificate", namespace=instance.namespace,
            name=f"{instance.name}-{leaf.serial[:12]}",
            labels={"flotilla.dev/instance": instance.name},
            spec={"identity": leaf.identity, "serial": leaf.serial, "node": node,
                  "instance": instance.name, "root": leaf.root,
                  "notAfter": leaf.not_after.isoformat().replace("+00:00", "Z")},
        )
        self._store.apply([record])
        now = self._now().isoformat().replace("+00:00", "Z")
        expired = [c.key for c in self._store.list("Certificate", instance.namespace)
                   if str(c.spec.get("notAfter", "")) < now]
        if expired:
            self._store.delete(expired, ignore_not_found=True)
        older = sorted(
            (c for c in self._store.list("Certificate", instance.namespace,
                                         {"flotilla.dev/instance": instance.name})),
            key=lambda c: c.create_time, reverse=True)[KEEP_PER_INSTANCE:]
        if older:
            self._store.delete([c.key for c in older], ignore_not_found=True)
