"""Feeds the xDS cache: after every store change that touches the mesh
(Services, Instances, TrafficPolicies, Gateways, Nodes), read a fresh view
and hand it to the cache, which wakes only the proxies it changes."""

from __future__ import annotations

import logging
import threading

from controlplane.errors import OutOfRange
from controlplane.store import SqliteStore
from controlplane.xds.cache import XdsCache
from controlplane.xds.mesh import mesh_view

log = logging.getLogger("flotilla.xds")

MESH_KINDS = ("Service", "Instance", "TrafficPolicy", "Gateway", "Node")


class ViewFeeder:
    def __init__(self, store: SqliteStore, cache: XdsCache) -> None:
        self._store = store
        self._cache = cache
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="xds-feeder", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._store.wake()
        self._thread.join(timeout=5)

    def refresh(self) -> int:
        """Build and install a view of the store now; returns its version."""
        version = self._store.resource_version
        resources = [r for kind in MESH_KINDS for r in self._store.list(kind)]
        self._cache.set_view(mesh_view(resources, version))
        return version

    def _loop(self) -> None:
        seen = self._cache.view.version
        while not self._stop.is_set():
            try:
                head = self._store.wait(seen, 1.0)
                if head <= seen or self._stop.is_set():
                    continue
                try:
                    relevant = any(e.resource.kind in MESH_KINDS
                                   for e in self._store.events(seen, until=head, limit=100_000))
                except OutOfRange:
                    relevant = True
                if relevant:
                    seen = self.refresh()
                else:
                    # Nothing the mesh sees: the proxies' configs stay, and
                    # proxies in sync are in sync at this version too.
                    self._cache.set_version(head)
                    seen = head
            except Exception:  # keep feeding; the next change retries
                log.exception("building the mesh view failed")
                self._stop.wait(1.0)
