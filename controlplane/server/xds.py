"""The Aggregated Discovery Service: state-of-the-world and incremental (delta)
xDS over one gRPC stream per proxy, Envoy v3 types.

This servicer only moves messages: each stream reads its requests on a thread
of its own into the proxy's inbox, which the cache also wakes when the
proxy's snapshot changes; on every message the stream's protocol state
machine (:mod:`controlplane.xds.stream`) takes the request and says what to
send, and the cache records where the proxy stands (ACKs, NACKs, in sync),
under its lock. A NACK keeps the last good config: what was rejected is not
sent again until the snapshot changes, and the error shows in
`proxy-status`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format, timestamp_pb2

from controlplane.api.flotilla.v1 import proxies_pb2, proxies_pb2_grpc
from controlplane.xds.cache import REPLACED, WAKE, ProxyState, XdsCache
from controlplane.xds.mesh import ProxyError, proxy_of
from controlplane.xds.stream import DeltaStream, SotwStream

log = logging.getLogger(__name__)

_END = object()


class AggregatedDiscoveryServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: XdsCache) -> None:
        self._cache = cache
        self._stopping = threading.Event()

    def shutdown(self) -> None:
        self._stopping.set()
        for state in self._cache.states():
            state.inbox.put(_END)

    def DeltaAggregatedResources(self, request_iterator: Iterator[discovery_pb2.DeltaDiscoveryRequest],
                                 context: grpc.ServicerContext
                                 ) -> Iterator[discovery_pb2.DeltaDiscoveryResponse]:
        yield from self._serve(request_iterator, context, "delta", DeltaStream())

    def StreamAggregatedResources(self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest],
                                  context: grpc.ServicerContext
                                  ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        yield from self._serve(request_iterator, context, "sotw", SotwStream())

    def _serve(self, requests: Iterator[Any], context: grpc.ServicerContext, protocol: str,
               stream: DeltaStream | SotwStream) -> Iterator[Any]:
        """Requests in, the stream's responses out; the cache records where
        the proxy stands after each exchange."""
        for state, message in self._messages(requests, context, protocol):
            if message is not WAKE:
                nack = stream.on_request(message)
                if nack is not None:
                    self._cache.nacked(state, nack)
            snap = state.snapshot  # one snapshot per exchange, judged as sent
            yield from stream.next_responses(snap)
            self._cache.exchanged(state, stream.status(snap), snap)

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
                if message is REPLACED:
                    context.abort(grpc.StatusCode.ABORTED,
                                  f"a newer stream connected as proxy {state.proxy.id}; this "
                                  "one ends (two proxies must not share an id)")
                yield state, message
        finally:
            self._cache.disconnect(state)
            log.info("proxy %s disconnected", state.proxy.id)


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
        nack_version=state.nack_version, notes=state.snapshot.notes,
    )
