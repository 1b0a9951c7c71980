"""The catalog entries Flotilla wants, and the plan that gets Consul there.

Pure: data in, data out; the registry (:mod:`registry`) does the I/O.

``desired(services, instances, nodes)`` gives one :class:`CatalogEntry` per
instance the mesh's EDS publishes (:mod:`controlplane.model.endpoints`), at
the same address and port: its sidecar's inbound listener, or the address a
client registered; :class:`Wanted` keeps the same answer current one stored
change at a time. ``plan(desired, actual, checks)`` compares that with what
the catalog holds and returns what to deregister and (re-)register.

Every entry lives on one of Flotilla's own catalog nodes
(:func:`catalog_nodes`; :func:`shard_node` picks it from the entry's ID), the
way external services are registered in Consul: no Consul agent runs its
checks, Flotilla sets each entry's check to passing and removes the entry
when the instance stops serving. An entry is Flotilla's when it is on those
nodes and its meta says ``flotilla-managed: "true"``; ``actual`` holds only
those, so entries others registered are never planned away.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import Resource
from controlplane.model.endpoints import is_registered, ready_nodes, serving_address
from controlplane.model.specs import InstanceSpec

#: The meta key (and its value) that marks an entry as Flotilla's.
MANAGED = "flotilla-managed"
#: The tag every entry carries, so ``<name>.service.consul`` lookups and the
#: UI can tell Flotilla's instances apart.
TAG = "flotilla"
#: The meta key (and its value) that marks an instance a client registered
#: over the API (its ``flotilla-node`` is empty).
REGISTERED = "flotilla-registered"
#: A Service label whose value becomes a tag (``v1.web.service.consul``).
VERSION_LABEL = "version"
#: The status a passing check reports in Consul.
PASSING = "passing"
#: The meta of Flotilla's catalog nodes: external nodes (consul-esm's
#: convention) that nothing should probe, managed by Flotilla.
NODE_META = {"external-node": "true", "external-probe": "false", MANAGED: "true"}


#: Flotilla's entries are spread over this many catalog nodes: Consul's cost
#: of writing a check grows with the number of checks already on its node.
CATALOG_SHARDS = 16


def catalog_node(trust_domain: str) -> str:
    """The name Flotilla's catalog nodes start with: ``flotilla-<trust
    domain>`` with anything but letters, digits and '-' turned into '-' (one
    per mesh, so two meshes can share a Consul)."""
    return "flotilla-" + (re.sub(r"[^a-z0-9-]+", "-", trust_domain.lower()).strip("-")
                          or "mesh")


def catalog_nodes(base: str, shards: int = CATALOG_SHARDS) -> list[str]:
    """Every catalog node of Flotilla's entries: ``<base>-0`` ... ``<base>-15``."""
    return [f"{base}-{shard}" for shard in range(shards)]


def shard_node(base: str, entry_id: str, shards: int = CATALOG_SHARDS) -> str:
    """The catalog node an entry lives on, always the same for its ID."""
    return f"{base}-{zlib.crc32(entry_id.encode()) % shards}"


@dataclass(frozen=True)
class CatalogEntry:
    """One instance as a Consul catalog service. ``tags`` are sorted."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    #: The catalog node it was found on; "" when it was not read from the
    #: catalog (then it belongs on its :func:`shard_node`). Not compared.
    node: str = field(default="", compare=False)

    @property
    def check_id(self) -> str:
        """The ID of the entry's check."""
        return f"service:{self.id}"


@dataclass(frozen=True)
class SyncPlan:
    """What to change in the catalog, in this order: deregister entry IDs,
    register (or replace) entries, each with its check passing."""

    deregister: tuple[str, ...] = ()
    register: tuple[CatalogEntry, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.deregister or self.register)


def registration_id(namespace: str, instance: str) -> str:
    """The Consul service ID of an instance: ``flotilla-<namespace>-<instance>``."""
    return f"flotilla-{namespace}-{instance}"


def registration(service: Resource, instance: Resource, address: str, port: int
                 ) -> CatalogEntry:
    """The entry of one serving ``instance`` of ``service`` at address:port."""
    version = service.labels.get(VERSION_LABEL, "")
    tags = {TAG, instance.namespace, *((version,) if version else ())}
    spec = instance.typed(InstanceSpec)
    return CatalogEntry(
        id=registration_id(instance.namespace, instance.name),
        name=service.name, address=address, port=port, tags=tuple(sorted(tags)),
        meta={
            "flotilla-namespace": instance.namespace,
            # A registered instance has no revision (0): its meta says "".
            "flotilla-version": str(spec.revision or ""),
            "flotilla-node": spec.node,
            "flotilla-instance": instance.name,
            MANAGED: "true",
            **({REGISTERED: "true"} if is_registered(instance) else {}),
        },
    )


def desired(services: Iterable[Resource], instances: Iterable[Resource],
            nodes: Iterable[Resource]) -> dict[str, CatalogEntry]:
    """Entry ID -> entry of every instance the mesh publishes as an endpoint
    (serving on a ready node and not draining, or registered by a client)
    of a Service that exists."""
    return dict(Wanted([*services, *instances, *nodes]).entries)


Key = tuple[str, str]


class Wanted:
    """The entries Flotilla wants (what :func:`desired` gives), kept current
    one stored change at a time, so a change costs the same whatever the
    number of instances. ``entries`` maps entry IDs to entries; nobody but
    ``apply`` mutates it."""

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self.entries: dict[str, CatalogEntry] = {}
        self._services: dict[Key, Resource] = {}
        self._instances: dict[Key, Resource] = {}
        #: (namespace, service) -> names of its instances.
        self._members: dict[Key, set[str]] = {}
        self._nodes: dict[str, Resource] = {}
        self._ready: set[str] = set()
        self.apply((resource, False) for resource in resources)

    def apply(self, changes: Iterable[tuple[Resource, bool]]) -> set[str]:
        """Take ``(resource, deleted)`` changes in order; returns the IDs of
        the entries they may have changed (added, altered or removed)."""
        dirty: set[Key] = set()
        nodes_changed = False
        for resource, deleted in changes:
            key = (resource.namespace, resource.name)
            if resource.kind == "Service":
                self._put(self._services, key, resource, deleted)
                dirty |= {(key[0], name) for name in self._members.get(key, ())}
            elif resource.kind == "Instance":
                old = self._instances.get(key)
                if old is not None:
                    self._members.get(_owner(old), set()).discard(resource.name)
                self._put(self._instances, key, resource, deleted)
                if not deleted:
                    self._members.setdefault(_owner(resource), set()).add(resource.name)
                dirty.add(key)
            elif resource.kind == "Node":
                self._put(self._nodes, resource.name, resource, deleted)
                nodes_changed = True
        if nodes_changed:
            ready = ready_nodes(self._nodes.values())
            flipped, self._ready = ready ^ self._ready, ready
            if flipped:
                dirty |= {key for key, i in self._instances.items()
                          if i.typed(InstanceSpec).node in flipped}
        touched = set()
        for namespace, name in dirty:
            entry_id = registration_id(namespace, name)
            touched.add(entry_id)
            entry = self._entry(self._instances.get((namespace, name)))
            if entry is None:
                self.entries.pop(entry_id, None)
            else:
                self.entries[entry_id] = entry
        return touched

    def _entry(self, instance: Resource | None) -> CatalogEntry | None:
        """The entry of one instance, or None when it is not an endpoint."""
        if instance is None or instance.typed(InstanceSpec).gateway:
            return None  # gone, or a gateway's Envoy (not an endpoint of any service)
        service = self._services.get(_owner(instance))
        served = serving_address(instance, self._ready) if service is not None else None
        if service is None or served is None:
            return None
        return registration(service, instance, *served)

    @staticmethod
    def _put(into: dict[Any, Resource], key: Any, resource: Resource, deleted: bool) -> None:
        if deleted:
            into.pop(key, None)
        else:
            into[key] = resource


def _owner(instance: Resource) -> Key:
    return (instance.namespace, instance.typed(InstanceSpec).service)


def registration_of(service_id: str, entry: Mapping[str, Any]) -> CatalogEntry | None:
    """A service of a catalog node (``/v1/catalog/node/<node>``, with the
    node's name added as ``Node``) as a CatalogEntry, or None when it is not
    Flotilla's."""
    meta = entry.get("Meta") or {}
    if meta.get(MANAGED) != "true":
        return None
    return CatalogEntry(
        id=str(entry.get("ID") or service_id), name=str(entry.get("Service") or ""),
        address=str(entry.get("Address") or ""), port=int(entry.get("Port") or 0),
        tags=tuple(sorted(str(t) for t in entry.get("Tags") or ())),
        meta={str(k): str(v) for k, v in meta.items()}, node=str(entry.get("Node") or ""),
    )


def plan(desired: Mapping[str, CatalogEntry], actual: Mapping[str, CatalogEntry],
         checks: Mapping[str, str] | None, only: Iterable[str] | None = None) -> SyncPlan:
    """Turn ``actual`` (Flotilla's entries in the catalog, by ID) into
    ``desired``; with ``only``, just the entries of those IDs (the rest is
    taken as in sync).

    ``checks`` maps check IDs to their status as the catalog reports them,
    or is None when they were not read (then every check is taken as
    passing). An entry that differs, or whose check is gone or not passing,
    is registered again (with its check passing).
    """
    ids = set(desired) | set(actual) if only is None else set(only)
    deregister = tuple(sorted(i for i in ids if i in actual and i not in desired))
    register = tuple(
        entry for entry_id in sorted(ids) if (entry := desired.get(entry_id)) is not None
        and (actual.get(entry_id) != entry
             or (checks is not None and checks.get(entry.check_id) != PASSING)))
    return SyncPlan(deregister=deregister, register=register)
