"""The catalog entries Flotilla wants, and the plan that gets Consul there.

Pure: data in, data out; the registry (:mod:`registry`) does the I/O.

``desired(services, instances, nodes)`` gives one :class:`Registration` per
instance the mesh's EDS publishes (:mod:`controlplane.model.endpoints`), at
the same address and port: its sidecar's inbound listener. ``plan(desired,
actual, ...)`` compares that with what the catalog holds and returns what to
deregister, (re-)register and which TTL checks to refresh.

An entry is Flotilla's when its meta says ``flotilla-managed: "true"``;
``actual`` holds only those, so entries others registered are never planned
away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import Resource
from controlplane.model.endpoints import ready_nodes, serving_address

#: The meta key (and its value) that marks an entry as Flotilla's.
MANAGED = "flotilla-managed"
#: The tag every entry carries, so ``<name>.service.consul`` lookups and the
#: UI can tell Flotilla's instances apart.
TAG = "flotilla"
#: A Service label whose value becomes a tag (``v1.web.service.consul``).
VERSION_LABEL = "version"
#: The TTL of each entry's check, in seconds: the registry passes it every
#: few seconds while the instance serves, so it only expires when the
#: control plane is gone.
CHECK_TTL = 15.0
#: Seconds Consul keeps an entry whose check is critical before removing it
#: itself (Consul's minimum is one minute).
DEREGISTER_CRITICAL_AFTER = 60.0
#: The status a passing check reports in Consul.
PASSING = "passing"


@dataclass(frozen=True)
class Registration:
    """One instance as a Consul agent service. ``tags`` are sorted."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def check_id(self) -> str:
        """The ID of the entry's TTL check."""
        return f"service:{self.id}"


@dataclass(frozen=True)
class SyncPlan:
    """What to change in the catalog, in this order: deregister entry IDs,
    register (or replace) entries, pass the checks of entry IDs."""

    deregister: tuple[str, ...] = ()
    register: tuple[Registration, ...] = ()
    refresh: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.deregister or self.register or self.refresh)


def registration_id(namespace: str, instance: str) -> str:
    """The Consul service ID of an instance: ``flotilla-<namespace>-<instance>``."""
    return f"flotilla-{namespace}-{instance}"


def registration(service: Resource, instance: Resource, address: str, port: int
                 ) -> Registration:
    """The entry of one serving ``instance`` of ``service`` at address:port."""
    version = service.labels.get(VERSION_LABEL, "")
    tags = {TAG, instance.namespace, *((version,) if version else ())}
    return Registration(
        id=registration_id(instance.namespace, instance.name),
        name=service.name, address=address, port=port, tags=tuple(sorted(tags)),
        meta={
            "flotilla-namespace": instance.namespace,
            "flotilla-version": str(instance.spec.get("revision", "")),
            "flotilla-node": str(instance.spec.get("node", "")),
            "flotilla-instance": instance.name,
            MANAGED: "true",
        },
    )


def desired(services: Iterable[Resource], instances: Iterable[Resource],
            nodes: Iterable[Resource]) -> dict[str, Registration]:
    """Entry ID -> entry of every instance the mesh publishes as an endpoint:
    serving, on a ready node, not draining, of a Service that exists."""
    by_key = {(s.namespace, s.name): s for s in services if s.kind == "Service"}
    ready = ready_nodes(nodes)
    wanted: dict[str, Registration] = {}
    for instance in instances:
        if instance.spec.get("gateway"):
            continue  # a gateway's Envoy is not an endpoint of any service
        service = by_key.get((instance.namespace, str(instance.spec.get("service"))))
        served = serving_address(instance, ready) if service is not None else None
        if service is None or served is None:
            continue
        entry = registration(service, instance, *served)
        wanted[entry.id] = entry
    return wanted


def registration_of(service_id: str, entry: Mapping[str, Any]) -> Registration | None:
    """An entry of Consul's ``/v1/agent/services`` as a Registration, or None
    when it is not Flotilla's."""
    meta = entry.get("Meta") or {}
    if meta.get(MANAGED) != "true":
        return None
    return Registration(
        id=str(entry.get("ID") or service_id), name=str(entry.get("Service") or ""),
        address=str(entry.get("Address") or ""), port=int(entry.get("Port") or 0),
        tags=tuple(sorted(str(t) for t in entry.get("Tags") or ())),
        meta={str(k): str(v) for k, v in meta.items()},
    )


def plan(desired: Mapping[str, Registration], actual: Mapping[str, Registration],
         checks: Mapping[str, str] | None, passed: Mapping[str, float], now: float,
         refresh_after: float) -> SyncPlan:
    """Turn ``actual`` (Flotilla's entries in the catalog, by ID) into
    ``desired``.

    ``checks`` maps check IDs to their status as the catalog reports them,
    or is None when they were not read (then every check is taken as
    passing). ``passed`` holds when (``now``'s clock) each entry's check was
    last passed or registered; a check older than ``refresh_after`` seconds
    is refreshed, so is one not passing. An entry whose check is gone is
    registered again.
    """
    deregister = tuple(sorted(set(actual) - set(desired)))
    register: list[Registration] = []
    refresh: list[str] = []
    for entry_id, entry in sorted(desired.items()):
        status = PASSING if checks is None else checks.get(entry.check_id)
        if actual.get(entry_id) != entry or status is None:
            register.append(entry)
        elif status != PASSING or now - passed.get(entry_id, float("-inf")) >= refresh_after:
            refresh.append(entry_id)
    return SyncPlan(deregister=deregister, register=tuple(register), refresh=tuple(refresh))
