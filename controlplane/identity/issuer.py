"""The control plane's side of identity: the CA's roots kept (sealed) in the
store, leaves signed only for what an agent runs, and a record of each.

``sign_for_instance`` is the authorization rule: an agent gets a leaf for a
service only while its node runs an instance of that service (else
PermissionDenied); the identity comes from the instance, never from the CSR.
Each leaf is recorded as a ``Certificate`` object (public data only) for
`flotilla certs`; an instance keeps its two newest records.

Node agents get leaves too (``sign_for_node``, their identity towards the
control plane), and the control plane makes its own key and leaf for the
agent port (``server_certificate``), renewed at half-life or when the active
root changes.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from typing import Any

from controlplane.errors import FailedPrecondition, NotFound, PermissionDenied, UserError
from controlplane.identity.ca import (
    CONTROL_PLANE_NAME,
    CertificateAuthority,
    CertificateError,
    Leaf,
    Root,
    new_key_and_csr,
    new_root,
    spiffe_id,
)
from controlplane.model.types import check_dns_label
from controlplane.model import (
    NODE_NAMESPACE,
    ObjectKey,
    Resource,
    control_plane_spiffe_id,
    node_spiffe_id,
)
from controlplane.model.clock import SYSTEM_CLOCK, Clock
from controlplane.model.specs import CertificateSpec, InstanceSpec
from controlplane.store import Store

PRIVATE_KEY = "ca"
KEEP_PER_INSTANCE = 2
#: Label of a Certificate record naming what holds it.
INSTANCE_LABEL = "flotilla.dev/instance"
NODE_LABEL = "flotilla.dev/node"
#: On the records of leaves signed for clients outside the sidecars (proxyless).
CLIENT_LABEL = "flotilla.dev/client"


class Issuer:
    def __init__(self, store: Store, trust_domain: str,
                 leaf_ttl: datetime.timedelta = datetime.timedelta(hours=24),
                 clock: Clock = SYSTEM_CLOCK, *, mtls: bool = False) -> None:
        self._store = store
        #: Whether proxies serve the leaves (then rotation waits for them).
        self.mtls = mtls
        self._ttl = leaf_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[Resource] = []
        self._pending_lock = threading.Lock()
        self._recorder: threading.Thread | None = None
        #: Keys of the Certificate records each holder has, oldest first
        #: (read from the store at the first flush).
        self._records: dict[tuple[str, tuple[tuple[str, str], ...]], list[ObjectKey]] | None \
            = None
        self._next_sweep = 0.0
        self._server_cert: tuple[str, Leaf] | None = None
        self.rotation: dict[str, str] = {}
        #: The CA as last read from or written to the store.
        self._stored: dict[str, Any] | None = None
        self.ca = self._load_or_create(trust_domain)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.time(), tz=datetime.timezone.utc)

    def reload(self) -> None:
        """Take the CA as stored when another replica changed it (a rotation)."""
        if not self._store.replicated:
            return  # only this process writes it
        stored = self._store.get_private(PRIVATE_KEY)
        with self._lock:
            if not stored or stored == self._stored:
                return
            self._stored = stored
            self.rotation = dict(stored.get("rotation") or {})
            self.ca = CertificateAuthority(stored["trustDomain"],
                                           [Root.from_dict(r) for r in stored["roots"]])

    def _load_or_create(self, trust_domain: str) -> CertificateAuthority:
        stored = self._store.get_private(PRIVATE_KEY)
        self._stored = stored
        self.rotation = dict(stored.get("rotation") or {}) if stored else {}
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
        self._stored = {"trustDomain": ca.trust_domain, "roots": [r.as_dict() for r in ca.roots],
                        "rotation": self.rotation}
        self._store.put_private(PRIVATE_KEY, self._stored)

    def bundle(self) -> str:
        return self.ca.bundle()

    # --- root rotation ---------------------------------------------------------------
    #
    # trusting:  roots = [old (signs), new]; every proxy must trust new
    # reissuing: roots = [new (signs), old]; every proxy must serve a leaf of new
    # done:      roots = [new]

    def rotate(self) -> None:
        with self._lock:
            if self.rotation:
                raise FailedPrecondition(
                    f"a root rotation is already in progress ({self.rotation['phase']}); "
                    "wait for it to finish (`flotilla ca status`)")
            new = new_root(self.ca.trust_domain, self._now())
            self.rotation = {"phase": "trusting", "new": new.serial, "old": self.ca.active.serial}
            self.ca = CertificateAuthority(self.ca.trust_domain, [self.ca.active, new])
            self._save(self.ca)

    def advance(self) -> str:
        """Move a rotation on when every proxy is ready for the next phase;
        returns the phase it is in ("" when none)."""
        with self._lock:
            if not self.rotation:
                return ""
            new, phase = self.rotation["new"], self.rotation["phase"]
            reports: list[dict[str, Any]] = [
                dict(i.status["certificate"]) for i in self._store.list("Instance")
                if i.typed(InstanceSpec).node and i.status.get("certificate")]
            if phase == "trusting" and all(new in (r.get("trusts") or ()) for r in reports):
                roots = sorted(self.ca.roots, key=lambda r: r.serial != new)
                self.ca = CertificateAuthority(self.ca.trust_domain, roots)
                self.rotation = {**self.rotation, "phase": "reissuing"}
                self._save(self.ca)
            elif phase == "reissuing" and all(
                    r.get("root") == new and (not self.mtls or r.get("served") == r.get("serial"))
                    for r in reports):
                self.ca = CertificateAuthority(self.ca.trust_domain,
                                               [r for r in self.ca.roots if r.serial == new])
                self.rotation = {}
                self._save(self.ca)
            return self.rotation.get("phase", "")

    def sign_for_instance(self, node: str, namespace: str, instance_id: str,
                          csr_pem: str) -> Leaf:
        instance = self._store.get(ObjectKey("Instance", namespace, instance_id))
        if instance is None:
            raise NotFound(f"instance {namespace}/{instance_id} does not exist")
        spec = instance.typed(InstanceSpec)
        if spec.node != node:
            raise PermissionDenied(
                f"node {node} does not run instance {namespace}/{instance_id}; a node gets "
                "certificates only for the instances it runs")
        identity = spiffe_id(self.ca.trust_domain, namespace, spec.service)
        leaf = self._sign(csr_pem, identity)
        self._record(leaf, node, instance.namespace, instance.name, INSTANCE_LABEL)
        return leaf

    def sign_for_node(self, node: str, csr_pem: str) -> Leaf:
        """A node agent's leaf (its identity towards the control plane); the
        caller has authenticated the node."""
        leaf = self._sign(csr_pem, node_spiffe_id(self.ca.trust_domain, node))
        self._record(leaf, node, NODE_NAMESPACE, node, NODE_LABEL)
        return leaf

    def server_certificate(self) -> tuple[str, Leaf]:
        """(key PEM, leaf) for the agent port: made here, renewed at
        half-life or when the active root changes."""
        with self._lock:
            current = self._server_cert
            if current is not None:
                leaf = current[1]
                half = leaf.not_after - self._ttl / 2
                if leaf.root == self.ca.active.serial and self._now() < half:
                    return current
            key, csr = new_key_and_csr(control_plane_spiffe_id(self.ca.trust_domain))
            leaf = self.ca.sign(csr, control_plane_spiffe_id(self.ca.trust_domain), self._ttl,
                                self._now(), dns_names=(CONTROL_PLANE_NAME,))
            self._server_cert = (key, leaf)
            return self._server_cert

    def _sign(self, csr_pem: str, identity: str) -> Leaf:
        with self._lock:
            try:
                return self.ca.sign(csr_pem, identity, self._ttl, self._now())
            except CertificateError as error:
                raise UserError(f"cannot sign the CSR: {error}") from None

    def sign_for_client(self, namespace: str, name: str, csr_pem: str) -> Leaf:
        """A leaf for a client outside the sidecars (a proxyless gRPC client),
        named by the caller of the API."""
        try:
            check_dns_label(namespace)
            check_dns_label(name)
        except ValueError as error:
            raise UserError(f"a client is named like a service: {error}") from None
        leaf = self._sign(csr_pem, spiffe_id(self.ca.trust_domain, namespace, name))
        self._record(leaf, "", namespace, name, CLIENT_LABEL)
        return leaf

    def _record(self, leaf: Leaf, node: str, namespace: str, owner: str, label: str) -> None:
        """Record a leaf held by ``owner`` (an instance, a node, or a client)."""
        prefix = "client-" if label == CLIENT_LABEL else ""
        record = Resource(
            kind="Certificate", namespace=namespace,
            name=f"{prefix}{owner}-{leaf.serial[:12]}", labels={label: owner},
            spec=CertificateSpec(
                identity=leaf.identity, serial=leaf.serial, node=node,
                instance=owner if label == INSTANCE_LABEL else None,
                client=owner if label == CLIENT_LABEL else None, root=leaf.root,
                not_after=_rfc3339(leaf.not_after)),
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
        if self._records is None:  # once: what the store holds, oldest first
            self._records = {}
            for record in sorted(self._store.list("Certificate"), key=lambda c: c.create_time):
                self._records.setdefault(_holder(record), []).append(record.key)
        self._store.apply(list(newest.values()))
        doomed = []
        for record in newest.values():
            held = self._records.setdefault(_holder(record), [])
            held.append(record.key)
            doomed += held[:-KEEP_PER_INSTANCE]
            del held[:-KEEP_PER_INSTANCE]
        if self._clock.monotonic() >= self._next_sweep:  # expired records of gone instances
            self._next_sweep = self._clock.monotonic() + 60
            now = _rfc3339(self._now())
            expired = {c.key for c in self._store.list("Certificate")
                       if c.typed(CertificateSpec).not_after < now}
            for held in self._records.values():
                held[:] = [key for key in held if key not in expired]
            doomed += expired
        if doomed:
            self._store.delete(sorted(set(doomed)), ignore_not_found=True)


def _rfc3339(moment: datetime.datetime) -> str:
    """A UTC time as Certificate records spell it (``...Z``), so that two
    compare as strings in time order."""
    return moment.isoformat().replace("+00:00", "Z")


def _holder(record: Resource) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What holds a Certificate record: its namespace and owner label."""
    return record.namespace, tuple(sorted(record.labels.items()))
