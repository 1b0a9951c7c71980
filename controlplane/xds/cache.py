"""The snapshot cache: every connected proxy's current snapshot.

``set_view(view)`` rebuilds each connected proxy's snapshot from one
``Builder`` (shared resources built once) and wakes only the streams whose
snapshot changed. A snapshot that fails the consistency check is not served:
the proxy keeps its last good one and the problem is recorded on its status.

Each stream owns its protocol state (nonces, subscriptions, what the client
has: :mod:`controlplane.xds.stream`); after every exchange the servicer hands
the cache where the proxy stands (``exchanged``, ``nacked``), and the cache
records it on the proxy's state under its lock: whether the proxy has
everything its snapshot holds is what ``synced_version`` — and so
`flotilla apply --wait` — is made of. Every ``ProxyState`` field is written
only by the cache, under its lock.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field, replace

from controlplane.xds.builder import Builder
from controlplane.xds.mesh import PROXYLESS, MeshView, Proxy
from controlplane.xds.snapshot import Snapshot, check
from controlplane.xds.stream import Nack, StreamStatus

log = logging.getLogger(__name__)

#: Put on a stream's queue when its snapshot changed.
WAKE = object()
#: Put on a stream's queue when a newer stream connected for the same proxy
#: id: the newer one is the proxy now, and this one ends.
REPLACED = object()


@dataclass
class ProxyState:
    """One connected stream of one proxy, as `flotilla proxy-status` shows it."""

    proxy: Proxy
    protocol: str
    connected_since: float = field(default_factory=time.time)
    snapshot: Snapshot = field(default_factory=Snapshot)
    #: The store version of the view the current snapshot was built at.
    view_version: int = 0
    #: The newest view version whose snapshot the proxy has fully ACKed.
    synced_version: int = 0
    acked_versions: dict[str, str] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    last_nack: str = ""
    #: The view version of the newest config the proxy rejected (and still does).
    nack_version: int = 0
    #: A snapshot the builder produced but the check refused.
    build_error: str = ""
    inbox: queue.Queue[object] = field(default_factory=queue.Queue)
    #: True while the stream has nothing unsent or unacknowledged.
    in_sync: bool = False

    def wake(self) -> None:
        self.inbox.put(WAKE)


class XdsCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builder = Builder(MeshView())
        self._states: list[ProxyState] = []

    @property
    def view(self) -> MeshView:
        return self._builder.view

    def connect(self, proxy: Proxy, protocol: str) -> ProxyState:
        """A new stream of ``proxy``. One stream per Envoy (a sidecar's or a
        gateway's id is its instance's): a stream still connected under the
        same id is replaced (told ``REPLACED``, and gone from ``states``),
        never listed as a second proxy. Proxyless clients are left alone:
        every process started from one bootstrap file has its node id."""
        with self._lock:
            state = ProxyState(proxy, protocol)
            self._install(state, self._builder)
            older = [] if proxy.kind == PROXYLESS else [
                s for s in self._states if s.proxy.id == proxy.id]
            for old in older:
                self._states.remove(old)
                old.inbox.put(REPLACED)
                log.warning("proxy %s connected again: its older stream (since %s) ends",
                            proxy.id, time.strftime("%H:%M:%S",
                                                    time.localtime(old.connected_since)))
            self._states.append(state)
            return state

    def disconnect(self, state: ProxyState) -> None:
        with self._lock:
            if state in self._states:
                self._states.remove(state)

    def set_view(self, view: MeshView) -> int:
        """Rebuild the snapshot of every proxy whose inputs changed; returns
        how many snapshots changed."""
        builder = Builder(view)
        changed = 0
        with self._lock:
            before, self._builder = self._builder.view, builder
            for state in self._states:
                if builder.same_inputs(state.proxy, before):
                    self._unchanged(state, view.version)
                else:
                    changed += self._install(state, builder)
        return changed

    def set_version(self, version: int) -> None:
        """The store moved on without touching the mesh: same snapshots, newer
        version (so `apply --wait` of an unrelated change returns)."""
        with self._lock:
            self._builder = Builder(replace(self._builder.view, version=version))
            for state in self._states:
                self._unchanged(state, version)

    def all_synced(self, version: int) -> bool:
        """Has every connected proxy ACKed the config of store ``version``?"""
        with self._lock:
            return all(state.synced_version >= version for state in self._states)

    def states(self) -> list[ProxyState]:
        """Every connected proxy's state (live: read, never write, its fields)."""
        with self._lock:
            return list(self._states)

    def nacked(self, state: ProxyState, nack: Nack) -> None:
        """The proxy refused what a response carried: it keeps its last good
        config, and ``proxy-status`` shows why."""
        with self._lock:
            state.last_nack = f"{nack.short}: {_summary(nack.error)}"
            state.nack_version = state.view_version
        log.warning("proxy %s rejected %s", state.proxy.id, state.last_nack)

    def exchanged(self, state: ProxyState, status: StreamStatus, judged: Snapshot) -> None:
        """Where the proxy stands after an exchange, against ``judged`` (the
        snapshot its stream compared with). In sync is credited only while
        ``judged`` is still the proxy's snapshot: a view installed meanwhile
        is not synced yet."""
        with self._lock:
            state.acked_versions = dict(status.acked)
            state.pending = set(status.pending)
            if status.rejected:  # the current config still holds what was rejected
                state.nack_version = state.view_version
            if status.in_sync:
                state.last_nack = ""
            state.in_sync = status.in_sync and judged is state.snapshot
            if state.in_sync:
                state.synced_version = max(state.synced_version, state.view_version)

    @staticmethod
    def _unchanged(state: ProxyState, version: int) -> None:
        """The proxy's snapshot stays as it is at ``version`` (lock held)."""
        if not state.build_error:
            state.view_version = version
            if state.in_sync:
                state.synced_version = version

    def _install(self, state: ProxyState, builder: Builder) -> int:
        """Put a fresh snapshot on ``state`` (lock held); 1 when it changed."""
        try:
            snap = builder.build(state.proxy)
            problems = check(snap)
        except Exception as error:  # noqa: BLE001 - one bad proxy must not stop the rest
            log.exception("building the snapshot of proxy %s", state.proxy.id)
            problems = [f"builder error: {error}"]
        if problems:
            state.build_error = "; ".join(problems)
            log.error("proxy %s: snapshot refused, keeping the last good one: %s",
                      state.proxy.id, state.build_error)
            return 0
        state.build_error = ""
        if snap.same_as(state.snapshot):
            self._unchanged(state, builder.view.version)
            return 0
        state.view_version = builder.view.version
        state.snapshot = snap
        state.in_sync = False
        state.wake()
        return 1


def _summary(error: str, limit: int = 400) -> str:
    """Envoy's NACK messages can quote whole resources: keep the resource's
    name and the reason after the quoted proto."""
    error = " ".join(error.split())
    if len(error) <= limit:
        return error
    named = re.search(r'name: "([^"]+)"', error)
    reason = re.split(r"\}\s*:\s", error)[-1]
    return f"{named.group(1) + ': ' if named else ''}{reason[-(limit - 60):]}"
