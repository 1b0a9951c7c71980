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
        self._pending: list[Resource] = []
        self._pending_lock = threading.Lock()
        self._recorder: threading.Thread | None = None
        self._next_sweep = 0.0
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
        with self._pending_lock:
            self._pending.append(record)
            if self._recorder is None or not self._recorder.is_alive():
                self._recorder = threading.Thread(target=self.flush, args=(self.BATCH,),
                                                  name="certificate-records", daemon=True)
                self._recorder.start()

    #: Seconds records of issued leaves wait to be written together.
    BATCH = 0.1

    def flush(self, delay: float = 0.0) -> None:
        """Write the records of leaves issued since the last flush in one
        transaction, and drop the ones no longer needed (expired, or beyond an
        instance's newest two)."""
        if delay:
            time.sleep(delay)
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        newest = {(r.namespace, r.name): r for r in batch}
        self._store.apply(list(newest.values()))
        now = self._now().isoformat().replace("+00:00", "Z")
        doomed = []
        for namespace, instance in {(r.namespace, str(r.spec["instance"])) for r in batch}:
            found = sorted(self._store.list("Certificate", namespace,
                                            {"flotilla.dev/instance": instance}),
                           key=lambda c: c.create_time, reverse=True)
            doomed += [c.key for c in found[KEEP_PER_INSTANCE:]]
        if time.monotonic() >= self._next_sweep:  # expired records of gone instances
            self._next_sweep = time.monotonic() + 60
            doomed += [c.key for c in self._store.list("Certificate")
                       if str(c.spec.get("notAfter", "")) < now]
        if doomed:
            self._store.delete(sorted(set(doomed)), ignore_not_found=True)
