"""The xDS protocol of one stream, as a state machine without gRPC.

A stream object is fed each request the client sends (``on_request``) and
asked, with the proxy's current snapshot, what to send next
(``next_responses``) and where the client stands (``status``). It keeps, per
type, just what go-control-plane's ``StreamState`` keeps: the subscription,
the nonces in flight and the versions the client has. The gRPC servicer
(:mod:`controlplane.server.xds`) only moves messages between the wire and a
stream; SDS on the node (:mod:`sidecar.sds`) uses the same state of the world
class for its secrets.

- :class:`DeltaStream` (incremental xDS, what Flotilla's bootstrap asks for):
  a resource is sent when the client does not have its version
  (go-control-plane's ``createDeltaResponse``: ``prev, ok :=
  versions[name]; !ok || prev != version``), a name the client has that went
  away is sent as removed. An ACK makes what the nonce carried the client's;
  a NACK puts the client back on what it had, and the rejected versions are
  not sent again until they change.
- :class:`SotwStream` (state of the world, what gRPC's proxyless clients
  speak): a whole type is sent when its version (a hash of the chosen
  resources' versions) or the subscription changed; a request carrying an
  older nonce than the last one sent is stale and ignored.

Every type answers once when first asked, even with nothing to send (Envoy
waits for it). Pure: no I/O, no clock, no threads; a stream is used by one
thread at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.snapshot import CLUSTER, LISTENER, SHORT, TYPES, Snapshot, version_of

#: Types a request with no names subscribes to entirely (wildcard).
WILDCARD_TYPES = (CLUSTER, LISTENER)


@dataclass(frozen=True)
class Nack:
    """The client refused what a response carried."""

    type_url: str
    error: str

    @property
    def short(self) -> str:
        return SHORT.get(self.type_url, self.type_url)


@dataclass(frozen=True)
class StreamStatus:
    """Where the client stands against one snapshot."""

    #: Per type (short name): a version of what the client has ACKed.
    acked: Mapping[str, str]
    #: Types with a response the client has not answered yet.
    pending: frozenset[str]
    #: The snapshot still holds resources the client rejected.
    rejected: bool
    #: The client has every resource of the snapshot it subscribed to, ACKed.
    in_sync: bool


def _ordered(type_urls: Iterable[str]) -> list[str]:
    """Known types in push order (a cluster before its endpoints, a listener
    before its routes), then any others by name."""
    given = set(type_urls)
    return [t for t in TYPES if t in given] + sorted(given - set(TYPES))


@dataclass
class _DeltaType:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    #: What the client has or is being sent: name -> version.
    client: dict[str, str] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)
    #: Versions the client refused; not sent again.
    rejected: dict[str, str] = field(default_factory=dict)
    #: nonce -> the changes it carried (None: removed).
    pending: dict[str, dict[str, str | None]] = field(default_factory=dict)
    responded: bool = False

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def diff(self, snap: Snapshot, type_url: str) -> tuple[list[str], list[str]]:
        """(names to send, names to remove)."""
        items = snap.of(type_url)
        send = [name for name, item in items.items() if self.wants(name)
                and self.client.get(name) != item.version
                and self.rejected.get(name) != item.version]
        removed = [name for name in self.client if self.wants(name) and name not in items]
        return send, removed

    def still_rejected(self, snap: Snapshot, type_url: str) -> bool:
        return any(self.rejected.get(n) == i.version
                   for n, i in snap.of(type_url).items() if self.wants(n))


class DeltaStream:
    def __init__(self) -> None:
        self._types: dict[str, _DeltaType] = {}
        self._nonces = itertools.count(1)

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Nack | None:
        """Take in one request; the NACK it carries, if it is one."""
        type_url = request.type_url
        first = type_url not in self._types
        sub = self._types.setdefault(type_url, _DeltaType())
        if first:
            sub.wildcard = type_url in WILDCARD_TYPES and not request.resource_names_subscribe
            sub.client = dict(request.initial_resource_versions)
            sub.acked = dict(sub.client)
        for name in request.resource_names_subscribe:
            if name == "*":
                sub.wildcard = True
            else:
                sub.names.add(name)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                sub.wildcard = False
            sub.names.discard(name)
            if not sub.wants(name):
                sub.client.pop(name, None)
                sub.acked.pop(name, None)
        if not request.response_nonce:
            return None
        changes = sub.pending.pop(request.response_nonce, None)
        if changes is None:
            return None  # a nonce this stream never sent, or answered already
        if request.HasField("error_detail"):
            for name, version in changes.items():
                if version is not None:
                    sub.rejected[name] = version
                if name in sub.acked:
                    sub.client[name] = sub.acked[name]
                else:
                    sub.client.pop(name, None)
            return Nack(type_url, request.error_detail.message)
        for name, version in changes.items():
            if version is None:
                sub.acked.pop(name, None)
            else:
                sub.acked[name] = version
                sub.rejected.pop(name, None)
        return None

    def next_responses(self, snap: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """What to send for *snap* now, in push order (each becomes pending)."""
        responses = []
        for type_url in _ordered(self._types):
            sub = self._types[type_url]
            send, removed = sub.diff(snap, type_url)
            if not send and not removed and sub.responded:
                continue
            sub.responded = True
            items = snap.of(type_url)
            nonce = str(next(self._nonces))
            changes: dict[str, str | None] = {name: items[name].version for name in send}
            changes.update({name: None for name in removed})
            for name in send:
                sub.client[name] = items[name].version
            for name in removed:
                sub.client.pop(name, None)
            sub.pending[nonce] = changes
            responses.append(discovery_pb2.DeltaDiscoveryResponse(
                type_url=type_url, nonce=nonce, removed_resources=removed,
                system_version_info=snap.type_version(type_url),
                resources=[discovery_pb2.Resource(name=name, version=items[name].version,
                                                  resource=items[name].packed())
                           for name in send]))
        return responses

    def status(self, snap: Snapshot) -> StreamStatus:
        acked, pending = {}, set()
        rejected, in_sync = False, bool(self._types)
        for type_url, sub in self._types.items():
            short = SHORT.get(type_url, type_url)
            acked[short] = version_of(
                "\n".join(f"{n}={v}" for n, v in sorted(sub.acked.items())).encode())
            if sub.pending:
                pending.add(short)
            send, removed = sub.diff(snap, type_url)
            stuck = sub.still_rejected(snap, type_url)
            rejected = rejected or stuck
            in_sync = in_sync and not sub.pending and not send and not removed and not stuck
        return StreamStatus(acked, frozenset(pending), rejected, in_sync)

    def in_sync(self, snap: Snapshot) -> bool:
        return self.status(snap).in_sync


@dataclass
class _SotwType:
    #: None: every resource of the type (wildcard).
    names: set[str] | None = None
    sent_version: str = ""
    sent_names: set[str] | None = None
    sent_nonce: str = ""
    acked_version: str = ""
    rejected_version: str = ""
    responded: bool = False

    def chosen(self, snap: Snapshot, type_url: str) -> list[str]:
        items = snap.of(type_url)
        return sorted(items if self.names is None else (n for n in self.names if n in items))


class SotwStream:
    def __init__(self, wildcard_types: Iterable[str] = WILDCARD_TYPES) -> None:
        self._types: dict[str, _SotwType] = {}
        self._wildcard_types = frozenset(wildcard_types)
        self._nonces = itertools.count(1)

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> Nack | None:
        type_url = request.type_url
        sub = self._types.setdefault(type_url, _SotwType())
        if request.response_nonce and request.response_nonce != sub.sent_nonce:
            return None  # answers an older response; a newer one is on its way
        names = set(request.resource_names)
        sub.names = None if not names and type_url in self._wildcard_types else names
        if not request.response_nonce:
            return None
        if request.HasField("error_detail"):
            sub.rejected_version = sub.sent_version
            return Nack(type_url, request.error_detail.message)
        sub.acked_version = request.version_info
        return None

    def next_responses(self, snap: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        responses = []
        for type_url in _ordered(self._types):
            sub = self._types[type_url]
            chosen = sub.chosen(snap, type_url)
            version = snap.type_version(type_url, chosen)
            same = version == sub.sent_version and sub.names == sub.sent_names
            if sub.responded and (same or version == sub.rejected_version):
                continue
            sub.responded = True
            sub.sent_version, sub.sent_names = version, sub.names
            sub.sent_nonce = str(next(self._nonces))
            items = snap.of(type_url)
            responses.append(discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=type_url, nonce=sub.sent_nonce,
                resources=[items[name].packed() for name in chosen]))
        return responses

    def status(self, snap: Snapshot) -> StreamStatus:
        acked, pending = {}, set()
        rejected, in_sync = False, bool(self._types)
        for type_url, sub in self._types.items():
            short = SHORT.get(type_url, type_url)
            acked[short] = sub.acked_version
            if sub.sent_version != sub.acked_version:
                pending.add(short)
            current = snap.type_version(type_url, sub.chosen(snap, type_url))
            in_sync = in_sync and sub.acked_version == current
            rejected = rejected or current == sub.rejected_version
        return StreamStatus(acked, frozenset(pending), rejected, in_sync)

    def in_sync(self, snap: Snapshot) -> bool:
        return self.status(snap).in_sync
