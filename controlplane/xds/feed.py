"""Feeds the xDS cache: after every store change that touches the mesh
(Services, Instances, TrafficPolicies, Gateways, Nodes), a new view goes to
the cache, which wakes only the proxies it changes.

The view is kept incrementally: store events update an index of the mesh's
objects, and only the services they touch are rebuilt, so a change costs the
same whether the mesh has ten services or ten thousand. A gap in the event
history (compaction) reloads everything.

External Services' endpoints are not in the store: whoever follows them in
Consul (:mod:`controlplane.catalog.external`, wired by the server) hands them
to :meth:`ViewFeeder.catalog_changed`, and the feeder rebuilds the Services
that follow that Consul name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

from controlplane.model import EventType, Resource, WatchEvent
from controlplane.model.external import CatalogEndpoint, CatalogEndpoints, external_name
from controlplane.model.specs import InstanceSpec, TrafficPolicySpec
from controlplane.store import Store
from controlplane.store.follower import StoreFollower
from controlplane.xds.cache import XdsCache
from controlplane.xds.intentions import Ranked, ranked
from controlplane.xds.mesh import (
    GatewayView,
    MeshView,
    ServiceView,
    gateway_view,
    ready_nodes,
    service_view,
)

MESH_KINDS = ("Service", "Instance", "TrafficPolicy", "Gateway", "Node", "Intention")
Key = tuple[str, str]


class MeshIndex:
    """The mesh's objects as of the last event applied, and the view made of
    them. ``apply`` and ``apply_catalog`` return whether the view changed."""

    def __init__(self, resources: Iterable[Resource] = (), mtls_domain: str = "",
                 default_intention: str = "allow", catalog: CatalogEndpoints | None = None
                 ) -> None:
        self.mtls_domain = mtls_domain
        self.default_intention = default_intention
        self.intentions: dict[Key, Resource] = {}
        self.ranked: tuple[Ranked, ...] = ()
        self.services: dict[Key, Resource] = {}
        #: (namespace, service) -> instance name -> Instance.
        self.instances: dict[Key, dict[str, Resource]] = {}
        #: (namespace, instance name) -> (namespace, service) it belongs to.
        self._owner: dict[Key, Key] = {}
        #: (namespace, policy name) -> its destination; destination -> policy.
        self._destination: dict[Key, Key] = {}
        self.policies: dict[Key, Resource] = {}
        self.nodes: dict[str, Resource] = {}
        self.ready: set[str] = set()
        self.views: dict[Key, ServiceView] = {}
        self.gateways: dict[Key, GatewayView] = {}
        #: Consul service name -> its endpoints; -> the external Services following it.
        self.catalog: dict[str, tuple[CatalogEndpoint, ...]] = dict(catalog or {})
        self._followers: dict[str, set[Key]] = {}
        for resource in resources:
            self._take(resource, deleted=False)
        self.ready = ready_nodes(self.nodes.values())
        self.ranked = tuple(ranked(self.intentions.values()))
        self._rebuild(set(self.services))

    def view(self, version: int) -> MeshView:
        return MeshView(services=dict(self.views), gateways=dict(self.gateways),
                        version=version, mtls_domain=self.mtls_domain,
                        intentions=self.ranked, default_intention=self.default_intention)

    def apply(self, events: Iterable[WatchEvent]) -> bool:
        dirty: set[Key] = set()
        nodes_changed = gateways_changed = intentions_changed = False
        for event in events:
            resource = event.resource
            if resource.kind not in MESH_KINDS:
                continue
            dirty |= self._take(resource, deleted=event.type is EventType.DELETED)
            nodes_changed |= resource.kind == "Node"
            gateways_changed |= resource.kind == "Gateway"
            intentions_changed |= resource.kind == "Intention"
        if nodes_changed:
            ready = ready_nodes(self.nodes.values())
            if ready != self.ready:
                flipped = ready ^ self.ready
                self.ready = ready
                dirty |= {key for key, found in self.instances.items()
                          if any(i.typed(InstanceSpec).node in flipped for i in found.values())}
        if intentions_changed:
            self.ranked = tuple(ranked(self.intentions.values()))
        return self._rebuild(dirty) or gateways_changed or intentions_changed

    def apply_catalog(self, changes: Mapping[str, tuple[CatalogEndpoint, ...] | None]) -> bool:
        """Consul service name -> its endpoints now (None: no longer followed)."""
        dirty: set[Key] = set()
        for name, endpoints in changes.items():
            if endpoints is None:
                self.catalog.pop(name, None)
            else:
                self.catalog[name] = endpoints
            dirty |= self._followers.get(name, set())
        return self._rebuild(dirty)

    # --- internals -----------------------------------------------------------------

    def _take(self, resource: Resource, *, deleted: bool) -> set[Key]:
        """Record one object's new state; returns the services it touches."""
        key = (resource.namespace, resource.name)
        if resource.kind == "Service":
            was = self.services.pop(key, None)
            if was is not None and (name := external_name(was)) is not None:
                self._followers.get(name, set()).discard(key)
            if not deleted:
                self.services[key] = resource
                if (name := external_name(resource)) is not None:
                    self._followers.setdefault(name, set()).add(key)
            return {key}
        if resource.kind == "Instance":
            touched = set()
            old = self._owner.pop(key, None)
            if old is not None:
                self.instances.get(old, {}).pop(resource.name, None)
                touched.add(old)
            if not deleted:
                owner = (resource.namespace, resource.typed(InstanceSpec).service)
                self.instances.setdefault(owner, {})[resource.name] = resource
                self._owner[key] = owner
                touched.add(owner)
            return touched
        if resource.kind == "TrafficPolicy":
            touched = set()
            old = self._destination.pop(key, None)
            if old is not None:
                self.policies.pop(old, None)
                touched.add(old)
            if not deleted:
                destination = (resource.namespace, resource.typed(TrafficPolicySpec).destination)
                self.policies[destination] = resource
                self._destination[key] = destination
                touched.add(destination)
            return touched
        if resource.kind == "Gateway":
            if deleted:
                self.gateways.pop(key, None)
            else:
                self.gateways[key] = gateway_view(resource)
            return set()
        if resource.kind == "Intention":
            if deleted:
                self.intentions.pop(key, None)
            else:
                self.intentions[key] = resource
            return set()
        if resource.kind == "Node":
            if deleted:
                self.nodes.pop(resource.name, None)
            else:
                self.nodes[resource.name] = resource
        return set()

    def _rebuild(self, keys: set[Key]) -> bool:
        changed = False
        for key in keys:
            service = self.services.get(key)
            if service is None:
                changed |= self.views.pop(key, None) is not None
                continue
            policy = self.policies.get(key)
            view = service_view(service, self.instances.get(key, {}).values(),
                                policy.typed(TrafficPolicySpec) if policy else None, self.ready,
                                self.catalog.get(external_name(service) or "", ()))
            if self.views.get(key) != view:
                self.views[key] = view
                changed = True
        return changed


class ViewFeeder:
    """Keeps the cache's view current: a :class:`StoreFollower` hands it the
    store's changes (a burst coalesced into one view) and the catalog
    changes other threads post."""

    #: Seconds a change waits for more before the view is rebuilt.
    COALESCE = 0.01

    def __init__(self, store: Store, cache: XdsCache, mtls_domain: str = "",
                 default_intention: str = "allow") -> None:
        self._store = store
        self._cache = cache
        self._mtls_domain = mtls_domain
        self._default = default_intention
        self._index = MeshIndex(mtls_domain=mtls_domain, default_intention=default_intention)
        #: Catalog changes not applied yet, by Consul name (written by any thread).
        self._catalog_changes: dict[str, tuple[CatalogEndpoint, ...] | None] = {}
        self._catalog_lock = threading.Lock()
        self._follower = StoreFollower(store, self, name="xds-feeder", coalesce=self.COALESCE)

    def start(self) -> None:
        self._follower.seen = self.refresh()
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def catalog_changed(self, name: str, endpoints: tuple[CatalogEndpoint, ...] | None) -> None:
        """The passing instances of Consul service ``name`` are now
        ``endpoints`` (None: nobody follows it any more). Thread-safe; the
        feeder's thread puts it in the view within moments."""
        with self._catalog_lock:
            self._catalog_changes[name] = endpoints
        self._store.wake()

    def _catalog_taken(self) -> dict[str, tuple[CatalogEndpoint, ...] | None]:
        with self._catalog_lock:
            changes, self._catalog_changes = self._catalog_changes, {}
        return changes

    def refresh(self) -> int:
        """Read the whole mesh from the store and install its view; returns
        the store version it was read at."""
        version = self._store.resource_version
        catalog = self._index.catalog
        self._index = MeshIndex((r for kind in MESH_KINDS for r in self._store.list(kind)),
                                self._mtls_domain, self._default, catalog)
        self._index.apply_catalog(self._catalog_taken())
        self._cache.set_view(self._index.view(version))
        return version

    # --- the follower's consumer ------------------------------------------------

    def resync(self, head: int) -> None:
        self.refresh()

    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        external = self._index.apply_catalog(self._catalog_taken())
        if not events:
            if external:
                self._cache.set_view(self._index.view(self._cache.view.version))
            return
        if self._index.apply(events) or external:
            self._cache.set_view(self._index.view(head))
        else:
            # Nothing the mesh sees changed: the proxies' configs stay, and
            # proxies in sync are in sync at this version too.
            self._cache.set_version(head)
