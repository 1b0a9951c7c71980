"""The Aggregated Discovery Service: state-of-the-world and incremental (delta)
xDS over one gRPC stream per proxy, Envoy v3 types.

Each stream reads its requests on a thread of its own and pushes from the
handler's thread whenever a request arrives or the cache wakes it. Per type
it keeps what the client asked for, the nonces in flight and what the client
has ACKed. A NACK keeps the last good config: what was rejected is not sent
again until the snapshot changes, and the error shows in `proxy-status`.

Delta (what Flotilla's bootstrap asks for) sends only resources whose version
changed and the names that went away; state of the world (what gRPC's
proxyless clients speak) resends a whole type when any of it changed.
"""

from __future__ import annotations

import itertools
import logging
import re
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format, timestamp_pb2

from controlplane.api.flotilla.v1 import proxies_pb2, proxies_pb2_grpc
from controlplane.xds.cache import ProxyState, XdsCache
from controlplane.xds.mesh import ProxyError, proxy_of
from controlplane.xds.snapshot import CLUSTER, LISTENER, SHORT, TYPES, Snapshot, version_of

log = logging.getLogger(__name__)

#: Types a request with no names subscribes to entirely.
_WILDCARD_TYPES = (CLUSTER, LISTENER)
_END = object()
_nonces = itertools.count(1)


def _nonce() -> str:
    return str(next(_nonces))


@dataclass
class _Delta:
    """One type's state on a delta stream."""

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


@dataclass
class _Sotw:
    """One type's state on a state-of-the-world stream."""

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


class AggregatedDiscoveryServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: XdsCache) -> None:
        self._cache = cache
        self._stopping = threading.Event()

    def shutdown(self) -> None:
        self._stopping.set()
        for state in self._cache.states():
            state.inbox.put(_END)

    # --- plumbing ------------------------------------------------------------------

    def _read(self, requests: Iterable[object], inbox: queue.Queue[object]) -> None:
        try:
            for request in requests:
                inbox.put(request)
        except grpc.RpcError:
            pass
        finally:
            inbox.put(_END)

    def _connect(self, first: object, protocol: str,
                 context: grpc.ServicerContext) -> ProxyState | None:
        node = getattr(first, "node")
        metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        try:
            proxy = proxy_of(node.id or context.peer(), metadata)
        except ProxyError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"proxy {node.id}: {error}")
            return None
        state = self._cache.connect(proxy, protocol)
        log.info("proxy %s (%s %s/%s) connected over %s xDS", proxy.id, proxy.kind,
                 proxy.namespace, proxy.name, protocol)
        return state

    def _messages(self, requests: Iterator[object], context: grpc.ServicerContext,
                  protocol: str) -> Iterator[tuple[ProxyState, object]]:
        """(state, request or WAKE) until the stream ends; connects on the first
        request, then reads the rest on a thread that shares the state's inbox
        with the cache's wake-ups."""
        try:
            first = next(requests)
        except (StopIteration, grpc.RpcError):
            return
        state = self._connect(first, protocol, context)
        if state is None:
            return
        threading.Thread(target=self._read, args=(requests, state.inbox), daemon=True,
                         name=f"xds-{state.proxy.id}").start()
        try:
            yield state, first
            while not self._stopping.is_set() and context.is_active():
                try:
                    message = state.inbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                if message is _END:
                    return
                yield state, message
        finally:
            self._cache.disconnect(state)
            log.info("proxy %s disconnected", state.proxy.id)

    @staticmethod
    def _nacked(state: ProxyState, type_url: str, error: str) -> None:
        state.last_nack = f"{SHORT.get(type_url, type_url)}: {_summary(error)}"
        state.nack_version = state.view_version
        log.warning("proxy %s rejected %s", state.proxy.id, state.last_nack)

    # --- delta -----------------------------------------------------------------------

    def DeltaAggregatedResources(self, request_iterator: Iterator[discovery_pb2.DeltaDiscoveryRequest],
                                 context: grpc.ServicerContext
                                 ) -> Iterator[discovery_pb2.DeltaDiscoveryResponse]:
        types: dict[str, _Delta] = {}
        for state, message in self._messages(request_iterator, context, "delta"):
            if isinstance(message, discovery_pb2.DeltaDiscoveryRequest):
                self._delta_request(state, types, message)
            snap = state.snapshot  # one snapshot per exchange, judged as sent
            for type_url in TYPES:
                if type_url in types:
                    response = self._delta_push(snap, types[type_url], type_url)
                    if response is not None:
                        yield response
            self._delta_status(state, snap, types)

    def _delta_request(self, state: ProxyState, types: dict[str, _Delta],
                       request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        first = type_url not in types
        sub = types.setdefault(type_url, _Delta())
        if first:
            sub.wildcard = type_url in _WILDCARD_TYPES and not request.resource_names_subscribe
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
        if request.response_nonce:
            changes = sub.pending.pop(request.response_nonce, None)
            if changes is not None and request.HasField("error_detail"):
                self._nacked(state, type_url, request.error_detail.message)
                for name, version in changes.items():
                    if version is not None:
                        sub.rejected[name] = version
                    if name in sub.acked:
                        sub.client[name] = sub.acked[name]
                    else:
                        sub.client.pop(name, None)
            elif changes is not None:
                for name, version in changes.items():
                    if version is None:
                        sub.acked.pop(name, None)
                    else:
                        sub.acked[name] = version
                        sub.rejected.pop(name, None)

    def _delta_push(self, snap: Snapshot, sub: _Delta,
                    type_url: str) -> discovery_pb2.DeltaDiscoveryResponse | None:
        send, removed = sub.diff(snap, type_url)
        if not send and not removed and sub.responded:
            return None
        sub.responded = True
        items = snap.of(type_url)
        nonce = _nonce()
        changes: dict[str, str | None] = {name: items[name].version for name in send}
        changes.update({name: None for name in removed})
        for name in send:
            sub.client[name] = items[name].version
        for name in removed:
            sub.client.pop(name, None)
        sub.pending[nonce] = changes
        return discovery_pb2.DeltaDiscoveryResponse(
            type_url=type_url, nonce=nonce, removed_resources=removed,
            system_version_info=snap.type_version(type_url),
            resources=[discovery_pb2.Resource(name=name, version=items[name].version,
                                              resource=items[name].packed()) for name in send],
        )

    def _delta_status(self, state: ProxyState, snap: Snapshot,
                      types: dict[str, _Delta]) -> None:
        in_sync = True
        for type_url, sub in types.items():
            state.acked_versions[SHORT.get(type_url, type_url)] = version_of(
                "\n".join(f"{n}={v}" for n, v in sorted(sub.acked.items())).encode())
            send, removed = sub.diff(snap, type_url)
            if sub.pending:
                state.pending.add(SHORT.get(type_url, type_url))
            else:
                state.pending.discard(SHORT.get(type_url, type_url))
            rejected = any(sub.rejected.get(n) == i.version
                           for n, i in snap.of(type_url).items() if sub.wants(n))
            if rejected:  # the current config still holds what was rejected
                state.nack_version = state.view_version
            in_sync = in_sync and not sub.pending and not send and not removed and not rejected
        if in_sync and types:
            state.last_nack = ""
        self._cache.mark_synced(state, in_sync and bool(types), snap)

    # --- state of the world --------------------------------------------------------

    def StreamAggregatedResources(self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest],
                                  context: grpc.ServicerContext
                                  ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        types: dict[str, _Sotw] = {}
        for state, message in self._messages(request_iterator, context, "sotw"):
            if isinstance(message, discovery_pb2.DiscoveryRequest):
                self._sotw_request(state, types, message)
            snap = state.snapshot
            for type_url in TYPES:
                if type_url in types:
                    response = self._sotw_push(snap, types[type_url], type_url)
                    if response is not None:
                        yield response
            in_sync = bool(types)
            for type_url, sub in types.items():
                short = SHORT.get(type_url, type_url)
                state.acked_versions[short] = sub.acked_version
                if sub.sent_version != sub.acked_version:
                    state.pending.add(short)
                else:
                    state.pending.discard(short)
                current = snap.type_version(type_url, sub.chosen(snap, type_url))
                in_sync = in_sync and sub.acked_version == current
                if current == sub.rejected_version:
                    state.nack_version = state.view_version
            if in_sync:
                state.last_nack = ""
            self._cache.mark_synced(state, in_sync, snap)

    def _sotw_request(self, state: ProxyState, types: dict[str, _Sotw],
                      request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        sub = types.setdefault(type_url, _Sotw())
        if request.response_nonce and request.response_nonce != sub.sent_nonce:
            return  # answers an older response; a newer one is on its way
        names = set(request.resource_names)
        sub.names = None if not names and type_url in _WILDCARD_TYPES else names
        if request.response_nonce:
            if request.HasField("error_detail"):
                self._nacked(state, type_url, request.error_detail.message)
                sub.rejected_version = sub.sent_version
            else:
                sub.acked_version = request.version_info

    def _sotw_push(self, snap: Snapshot, sub: _Sotw,
                   type_url: str) -> discovery_pb2.DiscoveryResponse | None:
        chosen = sub.chosen(snap, type_url)
        version = snap.type_version(type_url, chosen)
        same = version == sub.sent_version and sub.names == sub.sent_names
        if sub.responded and (same or version == sub.rejected_version):
            return None
        sub.responded = True
        sub.sent_version, sub.sent_names, sub.sent_nonce = version, sub.names, _nonce()
        items = snap.of(type_url)
        return discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=sub.sent_nonce,
            resources=[items[name].packed() for name in chosen],
        )


class ProxyServicer(proxies_pb2_grpc.ProxyServiceServicer):
    def __init__(self, cache: XdsCache, settings: proxies_pb2.MeshSettings) -> None:
        self._cache = cache
        self._settings = settings

    def GetMeshSettings(self, request: proxies_pb2.GetMeshSettingsRequest,
                        context: grpc.ServicerContext) -> proxies_pb2.MeshSettings:
        return self._settings

    def ListProxies(self, request: proxies_pb2.ListProxiesRequest,
                    context: grpc.ServicerContext) -> proxies_pb2.ListProxiesResponse:
        return proxies_pb2.ListProxiesResponse(proxies=[
            status_of(state) for state in self._cache.states()])


def status_of(state: ProxyState) -> proxies_pb2.ProxyStatus:
    since = timestamp_pb2.Timestamp()
    since.FromNanoseconds(int(state.connected_since * 1e9))
    proxy = state.proxy
    return proxies_pb2.ProxyStatus(
        id=proxy.id, node=proxy.node, namespace=proxy.namespace, service=proxy.name,
        connected_since=since, acked_versions=dict(state.acked_versions),
        pending=sorted(state.pending),
        last_nack_error=state.last_nack or state.build_error,
        kind=proxy.kind, instance=proxy.instance, protocol=state.protocol,
        view_version=state.view_version, synced_version=state.synced_version,
        nack_version=state.nack_version,
    )


def _summary(error: str, limit: int = 400) -> str:
    """Envoy's NACK messages can quote whole resources: keep the resource's
    name and the reason after the quoted proto."""
    error = " ".join(error.split())
    if len(error) <= limit:
        return error
    named = re.search(r'name: "([^"]+)"', error)
    reason = re.split(r"\}\s*:\s", error)[-1]
    return f"{named.group(1) + ': ' if named else ''}{reason[-(limit - 60):]}"
