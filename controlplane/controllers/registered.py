"""Instances registered by clients Flotilla does not run: what
``RegisterInstance``, ``Heartbeat`` and ``Deregister`` do, and the reaper
that removes an instance whose heartbeats stopped for its TTL.

A registered instance is an Instance object with ``spec.registered``: its
spec holds what the client declared (service, address, port, ttl; no node),
its status says ``healthy`` at that address and port (reason ``registered,
TTL 10s``). While it exists the mesh's EDS and the catalog publish it
(:mod:`controlplane.model.endpoints`); the reconciler and the scheduler leave
it alone. Registering the same service, address and port again renews that
registration (new labels and TTL) instead of adding a second endpoint.

Heartbeats live in memory only, like node reports: they never write the
store. After a restart every registered instance gets a full TTL from the
moment the control plane starts (as nodes get a full grace), so clients that
keep heartbeating never notice.

Only the leader reaps: the reaper follows the store through the shared
follower gated on ``is_leader``, sweeping at most every ``interval``
seconds; a replica that becomes the leader resyncs, which gives every
registered instance a full TTL. With several replicas
(``shared``) a client may register and heartbeat through any of them: a
replica that does not know an instance looks it up in the store, and the
time of the last heartbeat is also written to the instance's status
(``heartbeat``, at most every third of its TTL), where the leader's reaper
sees it.

Thread-safety: every method may be called from any thread; one lock guards
the in-memory leases and is never held across a store call.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane.errors import (
    Conflict,
    FieldViolation,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from controlplane.model.types import check_dns_label, check_labels
from controlplane.manifests.references import View
from controlplane.model import DEFAULT_NAMESPACE, SERVICE_LABEL, ObjectKey, Resource, WatchEvent
from controlplane.model.clock import SYSTEM_CLOCK, Clock
from controlplane.model.endpoints import is_registered
from controlplane.model.specs import InstanceSpec, ServiceSpec
from controlplane.controllers.nodes import HEARTBEAT, heartbeat_age, with_heartbeat
from controlplane.controllers.reconciler import always_leader
from controlplane.store import Store
from controlplane.store.follower import StoreFollower

log = logging.getLogger(__name__)

#: The TTLs a registration may ask for, in seconds, and the one it gets
#: when it asks for none.
TTL_MIN = 1.0
TTL_MAX = 3600.0
TTL_DEFAULT = 30.0
#: Seconds between two sweeps of the reaper: an instance is removed at most
#: this long after its TTL ran out.
SWEEP_INTERVAL = 0.5

_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class RegistrationRequest:
    """What a client asks to register. ``ttl`` is None when it names none."""

    service: str
    address: str
    port: int
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)
    ttl: float | None = None


# --- pure -------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """``1h``, ``2m``, ``90s``, ``0.5s``: the way durations are written here."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def check_request(request: RegistrationRequest) -> list[FieldViolation]:
    """Every problem with a request's fields, each naming its field."""
    problems: list[FieldViolation] = []

    def check(path: str, test: Callable[[], object]) -> None:
        try:
            test()
        except ValueError as error:
            problems.append(FieldViolation(path, str(error)))

    check("namespace", lambda: check_dns_label(request.namespace))
    if not request.service:
        problems.append(FieldViolation("service", "required: the name of the Service this "
                                                  "instance serves"))
    else:
        check("service", lambda: check_dns_label(request.service))
    check("address", lambda: _check_address(request.address))
    if not 1 <= request.port <= 65535:
        problems.append(FieldViolation("port", f"must be 1-65535, got {request.port}"))
    check("labels", lambda: check_labels(dict(request.labels)))
    if SERVICE_LABEL in request.labels:
        problems.append(FieldViolation(f"labels.{SERVICE_LABEL}",
                                       "is set by Flotilla to the service's name; leave it out"))
    ttl = request.ttl
    if ttl is not None and not TTL_MIN <= ttl <= TTL_MAX:
        problems.append(FieldViolation(
            "ttl", f"must be between {format_seconds(TTL_MIN)} and {format_seconds(TTL_MAX)}, "
                   f"got {format_seconds(ttl)}"))
    return problems


def _check_address(address: str) -> None:
    if not address:
        raise ValueError("required: the IP address the service's consumers reach the "
                         "instance on")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address: give the instance's IPv4 or IPv6 "
                         "address, e.g. '10.0.0.5'") from None
    if parsed.is_unspecified or parsed.is_multicast:
        raise ValueError(f"{address} cannot be reached: give the instance's own address")


def registered_instance(request: RegistrationRequest, name: str, ttl: float) -> Resource:
    """The Instance object of a registration (its status is written apart)."""
    return Resource(
        kind="Instance", namespace=request.namespace, name=name,
        labels={**request.labels, SERVICE_LABEL: request.service},
        spec=InstanceSpec(service=request.service, registered=True, address=request.address,
                          port=request.port, ttl=ttl),
    )


def registered_status(instance: Resource) -> dict[str, Any]:
    """What a registered instance's status says while it lives."""
    spec = instance.typed(InstanceSpec)
    return {"state": "healthy", "address": spec.address, "port": spec.port,
            "reason": f"registered, TTL {format_seconds(spec.ttl)}"}


@dataclass
class Lease:
    """A registered instance as the reaper sees it. ``seen`` is the clock
    time of the last heartbeat (or registration, or server start)."""

    namespace: str
    service: str
    address: str
    port: int
    ttl: float
    seen: float

    @property
    def endpoint(self) -> tuple[str, str, str, int]:
        return (self.namespace, self.service, self.address, self.port)

    def expired(self, now: float) -> bool:
        return now - self.seen > self.ttl


def lease_of(instance: Resource, now: float) -> Lease:
    spec = instance.typed(InstanceSpec)
    return Lease(instance.namespace, spec.service, spec.address, spec.port, spec.ttl, now)


# --- the registry of registered instances -----------------------------------------


class RegisteredInstances:
    """Registers, renews and removes registered instances; ``start()`` runs
    the reaper. ``clock`` measures TTLs (monotonic seconds)."""

    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None, interval: float = SWEEP_INTERVAL,
                 is_leader: Callable[[], bool] = always_leader, shared: bool = False) -> None:
        self._store = store
        self._shared = shared
        self._clock = clock
        self._rng = rng or random.Random()
        self._interval = interval
        #: Instance name -> lease. Names are unique across namespaces.
        self._leases: dict[str, Lease] = {}
        #: (namespace, service, address, port) -> instance name.
        self._by_endpoint: dict[tuple[str, str, str, int], str] = {}
        self._lock = threading.Lock()  # guards the two maps; never held for I/O
        self._next_sweep = 0.0
        # The reaper follows the store on the leader only: a replica that
        # becomes the leader starts over (nobody heartbeated it yet).
        self._follower = StoreFollower(store, self, name="registered-reaper", gate=is_leader,
                                       idle=interval)
        self._reload()

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    # --- the store follower's consumer ------------------------------------------

    def resync(self, head: int) -> None:
        self._reload()
        self._sweep_due()

    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        self._sweep_due()

    def _sweep_due(self) -> None:
        """Sweep at most every ``interval`` seconds, however busy the store is."""
        now = self._clock.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._interval
            self.sweep()

    # --- the API's calls ----------------------------------------------------------

    def register(self, request: RegistrationRequest) -> Resource:
        """Store the instance (or renew the one registered at the same
        service, address and port); returns it. ``InvalidRequest`` names
        every bad field, ``NotFound`` a missing Service; nothing is stored then."""
        problems = check_request(request)
        if problems:
            raise InvalidRequest(problems)
        ttl = TTL_DEFAULT if request.ttl is None else request.ttl
        service = ObjectKey("Service", request.namespace, request.service)
        endpoint = (request.namespace, request.service, request.address, request.port)

        def admit(batch: Sequence[Resource], view: View) -> None:
            found = view.get(service)
            if found is None:
                raise NotFound(_no_service(service))
            spec = found.typed(ServiceSpec)
            if spec.external is not None:
                raise InvalidRequest([FieldViolation("service", (
                    f"Service {service.namespace}/{service.name} is external: its instances "
                    "come from Consul; register there, or name a Service without "
                    "spec.external"))])
            if not spec.registration.allows(request.address):
                ranges = ", ".join(spec.registration.cidrs) or "none"
                raise PermissionDenied(
                    f"address {request.address} is not in a range Service {service.namespace}/"
                    f"{service.name} takes registrations from ({ranges}): whoever applies the "
                    "Service lists them in spec.registration.cidrs, e.g. ['10.0.0.0/8']")
            current = view.get(batch[0].key)
            if current is not None and not is_registered(current):
                raise Conflict(f"{batch[0].key} already exists and is run by Flotilla")

        # The object and its status in one write: registering the same endpoint
        # twice at once writes one object twice (the second changes nothing).
        with self._lock:
            name = self._by_endpoint.get(endpoint)
        if name is None and self._shared:  # registered through another replica?
            name = next((i.name for i in self._registered()
                         if lease_of(i, 0).endpoint == endpoint), None)
        if name is None:
            with self._lock:
                name = self._new_name(request.service)
        instance = registered_instance(request, name, ttl)
        instance = replace(instance, status=registered_status(instance))
        stored = self._store.apply([instance], admit=admit, with_status=True)[0].resource
        self._hold(name, lease_of(stored, self._clock.monotonic()))
        return stored

    def heartbeat(self, name: str) -> None:
        """Renew ``name``'s lease. ``NotFound`` once it expired or was
        deregistered (the client registers again)."""
        with self._lock:
            lease = self._leases.get(name)
            if lease is not None:
                lease.seen = self._clock.monotonic()
        if lease is None and self._shared:
            lease = self._adopt(name)
        if lease is None:
            raise NotFound(_not_registered(name))
        instance = self._store.get(ObjectKey("Instance", lease.namespace, name))
        if instance is None:
            self._forget([name], lease)  # deleted behind our back (flotilla delete)
            raise NotFound(_not_registered(name))
        if self._shared:
            status = with_heartbeat(registered_status(instance), instance.status, lease.ttl,
                                    self._clock.time())
            if status != dict(instance.status):
                self._store.write_status(instance.key, status)

    def deregister(self, name: str) -> None:
        """Remove ``name`` now; ``NotFound`` when it is not registered."""
        with self._lock:
            lease = self._leases.get(name)
        if lease is None and self._shared:
            lease = self._adopt(name)
        if lease is None:
            raise NotFound(_not_registered(name))
        self._forget([name], lease)
        self._store.delete([ObjectKey("Instance", lease.namespace, name)],
                           ignore_not_found=True)
        log.info("instance %s of %s/%s deregistered", name, lease.namespace, lease.service)

    # --- the reaper ---------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Delete every registered instance whose TTL ran out or whose
        Service is gone; returns their names."""
        now = self._clock.monotonic()
        services = {(s.namespace, s.name) for s in self._store.list("Service")}
        if self._shared:
            self._follow_others(now)
        with self._lock:  # a lease is dropped before its object: a renewal then starts afresh
            expired = [name for name, lease in self._leases.items() if lease.expired(now)]
            orphans = [name for name, lease in self._leases.items()
                       if (lease.namespace, lease.service) not in services
                       and not lease.expired(now)]
            doomed = {name: self._leases[name] for name in expired + orphans}
            for name, lease in doomed.items():
                self._drop(name, lease)
        if not doomed:
            return []
        self._store.delete([ObjectKey("Instance", lease.namespace, name)
                            for name, lease in doomed.items()], ignore_not_found=True)
        for reason, names in (("no heartbeat for their TTL", expired),
                              ("their Service is gone", orphans)):
            if names:
                log.info("removed %d registered instance(s), %s: %s%s", len(names), reason,
                         ", ".join(names[:10]), " ..." if len(names) > 10 else "")
        return sorted(doomed)

    # --- internals ------------------------------------------------------------------

    def _reload(self) -> None:
        """Take every registered instance from the store with a full TTL from
        now (after a restart, or on becoming the leader), and repair a status
        a crash left unwritten."""
        now = self._clock.monotonic()
        found = [i for i in self._store.list("Instance") if is_registered(i)]
        with self._lock:
            self._leases.clear()
            self._by_endpoint.clear()
        for instance in found:
            self._hold(instance.name, lease_of(instance, now))
            status = {k: v for k, v in instance.status.items() if k != HEARTBEAT}
            if status != registered_status(instance):
                self._store.write_status(instance.key, registered_status(instance))

    def _registered(self) -> list[Resource]:
        return [i for i in self._store.list("Instance") if is_registered(i)]

    def _adopt(self, name: str) -> Lease | None:
        """The lease of an instance registered through another replica."""
        found = next((i for i in self._registered() if i.name == name), None)
        if found is None:
            return None
        lease = lease_of(found, self._clock.monotonic())
        self._hold(name, lease)
        return lease

    def _follow_others(self, now: float) -> None:
        """What other replicas took: instances registered through them (a
        full TTL from now) and the heartbeats they wrote to the status."""
        for instance in self._registered():
            with self._lock:
                lease = self._leases.get(instance.name)
                if lease is not None:
                    lease.seen = max(lease.seen, now - heartbeat_age(instance.status, self._clock.time()))
            if lease is None:
                self._hold(instance.name, lease_of(instance, now))

    def _hold(self, name: str, lease: Lease) -> None:
        with self._lock:
            old = self._leases.get(name)
            if old is not None:
                self._drop(name, old)
            self._leases[name] = lease
            self._by_endpoint[lease.endpoint] = name

    def _forget(self, names: Sequence[str], lease: Lease | None = None) -> None:
        """Drop the leases of ``names`` (only if still ``lease``, when given)."""
        with self._lock:
            for name in names:
                current = self._leases.get(name)
                if current is not None and (lease is None or current is lease):
                    self._drop(name, current)

    def _drop(self, name: str, lease: Lease) -> None:
        """Called with the lock held."""
        del self._leases[name]
        if self._by_endpoint.get(lease.endpoint) == name:
            del self._by_endpoint[lease.endpoint]

    def _new_name(self, service: str) -> str:
        """A name no lease holds (called with the lock held)."""
        while True:
            name = f"{service}-" + "".join(self._rng.choice(_SUFFIX) for _ in range(8))
            if name not in self._leases:
                return name


def _no_service(key: ObjectKey) -> str:
    return (f"service: Service {key.namespace}/{key.name} does not exist; apply it first "
            "(a Service without image or command takes only registered instances)")


def _not_registered(name: str) -> str:
    return (f"instance {name} is not registered: it was deregistered or went without a "
            "heartbeat for its TTL; register it again")
