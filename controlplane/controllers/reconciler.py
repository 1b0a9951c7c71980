"""The Service reconciler and the plan applier.

The store follower (:mod:`controlplane.store.follower`, gated on leadership)
hands it the store's changes; events only put the Service keys they touch on
the work queue (instances clients registered are not the reconciler's: see
:mod:`registered`; a ConfigMap or Secret touches the Services that mount it
or take env from it, whose template holds its version). Each pass reconciles
the keys that are ready (create or remove Instance objects, :mod:`replicas`)
against one read of the cluster, each under the queue's error policy: one
that fails backs off alone and says why on its status. Then every pending
instance is placed in one scheduler call (:mod:`placement`). The plan applier
below is the only writer of placements: it re-checks the plan against fresh
state and commits each placement with the instance's resourceVersion as a
precondition. Node liveness is not the reconciler's: a node marked down
(:mod:`nodes`) is a store event that triggers a full pass.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from controlplane.controllers import placement
from controlplane.controllers.replicas import (
    Desired,
    available,
    decide,
    gateway_desired,
    service_desired,
)
from controlplane.store.workqueue import WorkQueue, sync_one
from controlplane.errors import Conflict
from controlplane.manifests.sources import CONFIG_KINDS, sources_of, versions
from controlplane.model import SERVICE_LABEL, ObjectKey, Resource, WatchEvent, node_state
from controlplane.model.clock import SYSTEM_CLOCK, Clock
from controlplane.model.cluster import NodeState
from controlplane.model.endpoints import is_registered
from controlplane.model.specs import GatewaySpec, InstanceSpec, ServiceSpec
from controlplane.store import Store
from controlplane.store.follower import StoreFollower

log = logging.getLogger(__name__)

_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"


#: Seconds a draining instance waits for every proxy to ACK its removal from
#: EDS before it is stopped anyway (a proxy that is stuck or NACKs).
DRAIN_TIMEOUT = 10.0


def _no_proxies(version: int) -> bool:
    """Without an xDS server there is no proxy to wait for."""
    return True


def always_leader() -> bool:
    """A single control plane is always the leader (the default of every
    leader-only part)."""
    return True


class Reconciler:
    """``proxies_synced(v)`` answers whether every connected proxy has ACKed
    the config of store version ``v``: an instance leaves every client's
    EDS (ACKed) before it is stopped. It acts only while ``is_leader()``
    (one replica of several reconciles)."""

    def __init__(self, store: Store, *,
                 rng: random.Random | None = None, resync: float = 5.0,
                 proxies_synced: Callable[[int], bool] = _no_proxies,
                 drain_timeout: float = DRAIN_TIMEOUT,
                 is_leader: Callable[[], bool] = always_leader,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._proxies_synced = proxies_synced
        self._clock = clock
        self._drain_timeout = drain_timeout
        #: Services with instances still draining.
        self._draining: set[ObjectKey] = set()
        self._rng = rng or random.Random()
        #: Services to reconcile; one that fails backs off alone.
        self._queue: WorkQueue[ObjectKey] = WorkQueue(clock=clock, base_delay=0.5,
                                                      max_delay=30.0)
        self._follower = StoreFollower(store, self, name="reconciler", gate=is_leader,
                                       idle=self._idle, resync_every=resync, clock=clock)

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    # --- the loop -----------------------------------------------------------------

    def _idle(self) -> float:
        """While instances drain, look often: their proxies' ACKs are not
        store events; nor are the backoffs of Services that failed."""
        return 0.05 if self._draining or len(self._queue) else 0.5

    # --- the store follower's consumer ------------------------------------------

    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        everything = False
        for event in events:
            for key in self._touched(event):
                self._queue.add(key)
            everything = everything or event.resource.kind == "Node"
        self._pass(everything)

    def resync(self, head: int) -> None:
        self._pass(everything=True)

    def _pass(self, everything: bool) -> None:
        for key in self._draining:
            self._queue.add(key)
        batch = self._queue.get_ready()
        if batch or everything:
            self.reconcile_all(batch, everything=everything)

    def reconcile_all(self, keys: Iterable[ObjectKey], *, everything: bool = False) -> None:
        """Reconcile each Service in ``keys`` (with ``everything``, every Service
        and every one that still has instances) against one read of the
        cluster, then place what is pending."""
        by_service: dict[ObjectKey, list[Resource]] = {}
        for instance in self._store.list("Instance"):
            if not is_registered(instance):  # clients keep those (controllers.registered)
                by_service.setdefault(service_key_of(instance), []).append(instance)
        wanted = set(keys)
        if everything:
            wanted |= set(by_service) | {s.key for s in self._store.list("Service")}
            wanted |= {g.key for g in self._store.list("Gateway")}
        usable = {n.name for n in self._store.list("Node")
                  if node_state(n) is NodeState.READY}
        given = set(keys)
        for key in sorted(wanted):
            if key not in given and self._queue.failures(key):
                continue  # backing off: its turn comes from the queue
            failing = self._queue.failures(key)
            try:
                if sync_one(self._queue, key,
                            lambda k: self.reconcile(k, by_service.get(k, []), usable),
                            self._record_failure) and failing:
                    self._clear_failure(key)
            finally:
                if key in given:
                    self._queue.done(key)
        self.place_pending()

    def _record_failure(self, key: ObjectKey, error: Exception, retry: float | None) -> None:
        """The Service's status says why it did not converge (``describe``
        shows it); the next successful pass writes a status without it."""
        service = self._store.get(key)
        if service is None:
            return
        # Stable while the same error repeats: a status write is a store event,
        # which would wake this Service again before its backoff ends.
        condition = {
            "type": "Reconciled", "status": "False",
            "reason": "PermanentError" if retry is None else "RetryingAfterError",
            "message": (str(error) or type(error).__name__) + (
                "" if retry is None else " (retrying with backoff)"),
        }
        self._store.write_status(key, {**service.status, "conditions": [condition]})

    def _clear_failure(self, key: ObjectKey) -> None:
        service = self._store.get(key)
        if service is not None and "conditions" in service.status:
            self._store.write_status(key, {k: v for k, v in service.status.items()
                                           if k != "conditions"})

    # --- replicas -------------------------------------------------------------------

    def reconcile(self, key: ObjectKey, instances: list[Resource], usable: set[str]) -> None:
        """Converge one Service's (or Gateway's) ``instances`` on its spec
        (idempotent); ``usable`` names the nodes instances may stay on."""
        owner = self._store.get(key)
        desired = self._desired(owner) if owner is not None else None
        draining = [i for i in instances if i.typed(InstanceSpec).draining]
        instances = [i for i in instances if not i.typed(InstanceSpec).draining]
        decision = decide(desired, instances, usable)
        if owner is not None and desired is not None:
            status = service_status(desired, instances)
            if self._queue.failures(key) and "conditions" in owner.status:
                status["conditions"] = owner.status["conditions"]  # until it converges
            self._store.write_status(key, status)
        by_name = {i.name: i for i in instances}
        doomed = [by_name[name] for name in decision.remove]
        # Serving instances drain first: out of every client's EDS, then stopped.
        to_drain = [i for i in doomed if i.typed(InstanceSpec).node in usable and available(i)]
        for instance in to_drain:
            spec = instance.typed(InstanceSpec).model_copy(
                update={"draining": True, "draining_since": self._clock.time()})
            try:
                self._store.apply([replace(instance, spec=spec)])
            except Conflict:
                continue  # changed meanwhile; the next pass decides again
        if to_drain:
            log.info("%s: draining %s", key, ", ".join(i.name for i in to_drain))
        gone = [i.name for i in doomed if i not in to_drain]
        drained = [i.name for i in draining if self._drained(i)]
        gone += drained
        if to_drain or len(drained) < len(draining):
            self._draining.add(key)
        else:
            self._draining.discard(key)
        if gone:
            self._store.delete([ObjectKey("Instance", key.namespace, name) for name in gone],
                               ignore_not_found=True)
            log.info("%s: removed %s", key, ", ".join(gone))
        if decision.create and owner is not None and desired is not None:
            created = [self._new_instance(owner, desired) for _ in range(decision.create)]
            self._store.apply(created)
            log.info("%s: created %s", key, ", ".join(i.name for i in created))

    def _desired(self, owner: Resource) -> Desired:
        """What a Service or Gateway asks to run now (a Service's with the
        current versions of the objects it takes data from)."""
        if owner.kind == "Gateway":
            return gateway_desired(owner.typed(GatewaySpec))
        spec = owner.typed(ServiceSpec)
        return service_desired(spec, versions(spec, owner.namespace, self._store.get))

    def _drained(self, instance: Resource) -> bool:
        """Every proxy has ACKed a config without the instance (or it waited
        long enough, or its node is gone)."""
        waited = self._clock.time() - instance.typed(InstanceSpec).draining_since
        return waited >= self._drain_timeout or self._proxies_synced(instance.resource_version)

    def _touched(self, event: WatchEvent) -> set[ObjectKey]:
        """The Services an event touches: its own, its instances', or those
        that mount or take env from the ConfigMap or Secret it changed."""
        resource = event.resource
        if resource.kind in CONFIG_KINDS:
            return {s.key for s in self._store.list("Service", resource.namespace)
                    if resource.key in sources_of(s.typed(ServiceSpec), s.namespace)}
        return _service_keys(event)

    def _new_instance(self, owner: Resource, desired: Desired) -> Resource:
        suffix = "".join(self._rng.choice(_SUFFIX) for _ in range(5))
        return Resource(
            kind="Instance", namespace=owner.namespace, name=f"{owner.name}-{suffix}",
            labels={SERVICE_LABEL: owner.name},
            spec=InstanceSpec(service=owner.name, revision=owner.generation,
                              template=desired.template, workload=desired.workload,
                              placement=desired.placement, gateway=desired.gateway),
        )

    # --- placement (the plan applier) -------------------------------------------------

    def place_pending(self) -> None:
        instances = self._store.list("Instance")
        pending = [i for i in instances
                   if not i.typed(InstanceSpec).node and not is_registered(i)]
        if not pending:
            return
        nodes = self._store.list("Node")
        plan = placement.plan(nodes, instances, pending, self._rng)
        conflicts = placement.recheck(self._store.list("Node"), self._store.list("Instance"), plan)
        if conflicts:
            log.info("placements left for the next pass: %s", "; ".join(conflicts.values()))
        by_name = {(i.namespace, i.name): i for i in pending}
        for placed in plan.placements:
            if (placed.namespace, placed.instance) in conflicts:
                continue
            instance = by_name[(placed.namespace, placed.instance)]
            spec = instance.typed(InstanceSpec).model_copy(
                update={"node": placed.node, "driver": placed.driver})
            try:
                self._store.apply([replace(instance, spec=spec)])
            except Conflict:
                continue  # changed meanwhile; the next pass sees it again
            self._store.write_status(instance.key, {"state": "assigned", "node": placed.node})
        for failed in plan.failures:
            key = ObjectKey("Instance", failed.namespace, failed.instance)
            self._store.write_status(key, {"state": "pending", "reason": failed.explanation})


def service_status(desired: Desired, instances: list[Resource]) -> dict[str, object]:
    """What `flotilla describe service` shows: counts, and why anything waits."""
    status: dict[str, object] = {
        "replicas": desired.replicas,
        "instances": len(instances),
        "available": sum(1 for i in instances if available(i)),
    }
    waiting = sorted({str(i.status.get("reason")) for i in instances
                      if not i.typed(InstanceSpec).node and i.status.get("reason")})
    if waiting:
        status["unschedulable"] = waiting
    return status


def service_key_of(instance: Resource) -> ObjectKey:
    """The Service, or with ``spec.gateway`` the Gateway, an instance belongs to."""
    spec = instance.typed(InstanceSpec)
    return ObjectKey("Gateway" if spec.gateway else "Service", instance.namespace, spec.service)


def _service_keys(event: WatchEvent) -> set[ObjectKey]:
    resource = event.resource
    if resource.kind in ("Service", "Gateway"):
        return {resource.key}
    if resource.kind == "Instance" and not is_registered(resource):
        return {service_key_of(resource)}
    return set()
