"""A light ADS client for tests and benchmarks: one proxy's xDS stream, the way
Envoy drives it, without Envoy.

``XdsClient(address, proxy).start()`` opens one ADS stream (delta by default,
``delta=False`` for state of the world), announces ``proxy`` as its node (id
and ``proxy_metadata``), subscribes to every cluster and listener, and then to
the endpoints of its EDS clusters and the route configurations its listeners
load over RDS, following them as they change. Every response is ACKed with its
nonce, except those ``reject`` returns an error message for, which are NACKed
with that message and not applied.

Threads: one background thread reads responses, applies them and answers;
every read accessor takes a copy under the client's lock, so tests may call
them from any thread. Times are ``time.monotonic()`` seconds, comparable with
any other clock reading of this machine.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from controlplane.model.proxy import Proxy, proxy_metadata
from controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, version_of

MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster, ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener, ROUTE: route_pb2.RouteConfiguration,
}
#: gRPC's INVALID_ARGUMENT, the code Envoy NACKs a config it cannot load with.
INVALID_ARGUMENT = 3
_CLOSE = object()
Response: TypeAlias = discovery_pb2.DeltaDiscoveryResponse | discovery_pb2.DiscoveryResponse
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Held:
    """One resource the client holds; ``version`` is the hash of its bytes, as
    the server versions it, whatever the protocol."""

    version: str
    message: Message


@dataclass(frozen=True)
class Exchange:
    """One response and the client's answer to it."""

    type_url: str
    nonce: str
    #: When the response arrived and when its ACK or NACK was queued.
    received: float
    answered: float
    #: The response's serialized size in bytes.
    size: int
    #: Resources it carried (all of the type, for state of the world) and,
    #: for delta, the names it removed.
    names: tuple[str, ...]
    removed: tuple[str, ...]
    accepted: bool


#: ``reject(type_url, carried)`` -> an error message to NACK with, or None to ACK.
Reject = Callable[[str, Mapping[str, Held]], str | None]


class XdsClient:
    def __init__(self, address: str, proxy: Proxy, *, delta: bool = True,
                 reject: Reject | None = None) -> None:
        self.address, self.proxy, self.delta = address, proxy, delta
        self._reject = reject
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Held]] = {t: {} for t in MESSAGES}
        self._exchanges: list[Exchange] = []
        self._bytes: Counter[str] = Counter()
        #: What is subscribed to, by name, for the types that are not wildcard.
        self._subscribed: dict[str, set[str]] = {ENDPOINT: set(), ROUTE: set()}
        #: The last nonce per type; state of the world: the last accepted version.
        self._nonces: dict[str, str] = {}
        self._accepted: dict[str, str] = {}
        self._requests: queue.Queue[object] = queue.Queue()
        self._channel: grpc.Channel | None = None
        self._call: grpc.Future | None = None
        self._thread: threading.Thread | None = None
        self.error: grpc.RpcError | None = None

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> XdsClient:
        # A connection of its own, as every real proxy has.
        self._channel = grpc.insecure_channel(self.address,
                                              options=[("grpc.use_local_subchannel_pool", 1)])
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        rpc = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        node = self._node()
        self._send(CLUSTER, node=node)
        self._send(LISTENER)
        self._call = rpc(self._outgoing())
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"xds-client-{self.proxy.id}")
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._requests.put(_CLOSE)
        if self._call is not None:
            self._call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> XdsClient:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- what the client holds and saw (copies, any thread) ---------------------------

    def held(self, type_url: str) -> dict[str, Held]:
        with self._lock:
            return dict(self._held[type_url])

    def version(self, type_url: str, name: str) -> str | None:
        with self._lock:
            item = self._held[type_url].get(name)
            return item.version if item else None

    def exchanges(self, since: int = 0) -> list[Exchange]:
        """Every response so far (from the ``since``-th on), oldest first."""
        with self._lock:
            return self._exchanges[since:]

    @property
    def responses(self) -> int:
        with self._lock:
            return len(self._exchanges)

    def bytes_received(self) -> Counter[str]:
        with self._lock:
            return Counter(self._bytes)

    # --- the stream ---------------------------------------------------------------------

    def _node(self) -> base_pb2.Node:
        metadata = struct_pb2.Struct()
        json_format.ParseDict(proxy_metadata(self.proxy), metadata)
        return base_pb2.Node(id=self.proxy.id, cluster=self.proxy.name, metadata=metadata)

    def _outgoing(self) -> Iterator[object]:
        while (request := self._requests.get()) is not _CLOSE:
            yield request

    def _run(self) -> None:
        assert self._call is not None
        try:
            for response in self._call:
                self._receive(response)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    def _receive(self, response: Response) -> None:
        received = time.monotonic()
        type_url = response.type_url
        packed: list[tuple[str, any_pb2.Any]]
        removed: tuple[str, ...] = ()
        if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
            packed = [(r.name, r.resource) for r in response.resources]
            removed = tuple(response.removed_resources)
        else:
            packed = [("", a) for a in response.resources]
        carried = {}
        for name, raw in packed:
            message = _unpack(raw, MESSAGES[type_url])
            carried[name or _name_of(message)] = Held(version_of(raw.value), message)
        error = self._reject(type_url, carried) if self._reject else None
        if error is None:
            self._apply(type_url, carried, removed, getattr(response, "version_info", ""))
        # Recorded before the answer leaves: whoever sees the server take the
        # ACK sees the exchange too.
        size = response.ByteSize()
        with self._lock:
            self._bytes[type_url] += size
            self._exchanges.append(Exchange(type_url, response.nonce, received, time.monotonic(),
                                            size, tuple(carried), removed, error is None))
        self._nonces[type_url] = response.nonce
        self._send(type_url, nonce=response.nonce, error=error)

    def _apply(self, type_url: str, carried: dict[str, Held], removed: tuple[str, ...],
               version_info: str) -> None:
        with self._lock:
            held = self._held[type_url]
            if not self.delta:
                held.clear()
                self._accepted[type_url] = version_info
            for name in removed:
                held.pop(name, None)
            held.update(carried)
        if type_url == CLUSTER:
            self._follow(ENDPOINT, {_eds_name(h.message) for h in self.held(CLUSTER).values()}
                         - {""})
        elif type_url == LISTENER:
            self._follow(ROUTE, {name for h in self.held(LISTENER).values()
                                 for name in _rds_names(h.message)})

    def _follow(self, type_url: str, wanted: set[str]) -> None:
        """Subscribe to ``wanted`` names of ``type_url`` (before ACKing what
        named them, as Envoy does)."""
        current = self._subscribed[type_url]
        added, gone = wanted - current, current - wanted
        if not added and not gone:
            return
        self._subscribed[type_url] = set(wanted)
        if self.delta:
            with self._lock:
                for name in gone:
                    self._held[type_url].pop(name, None)
            self._send(type_url, subscribe=sorted(added), unsubscribe=sorted(gone))
        else:
            self._send(type_url, nonce=self._nonces.get(type_url, ""))

    def _send(self, type_url: str, *, node: base_pb2.Node | None = None, nonce: str = "",
              error: str | None = None, subscribe: list[str] | None = None,
              unsubscribe: list[str] | None = None) -> None:
        detail = status_pb2.Status(code=INVALID_ARGUMENT, message=error) if error else None
        request: discovery_pb2.DeltaDiscoveryRequest | discovery_pb2.DiscoveryRequest
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce, error_detail=detail,
                resource_names_subscribe=subscribe or [],
                resource_names_unsubscribe=unsubscribe or [])
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url, response_nonce=nonce, error_detail=detail,
                version_info=self._accepted.get(type_url, ""),
                resource_names=sorted(self._subscribed.get(type_url, ())))
        if node is not None:
            request.node.CopyFrom(node)
        self._requests.put(request)


def _unpack(packed: any_pb2.Any, message_type: type[M]) -> M:
    message = message_type()
    packed.Unpack(message)
    return message


def _name_of(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(getattr(message, "name"))


def _eds_name(cluster: Message) -> str:
    """The endpoints resource an EDS cluster loads; "" for other clusters."""
    if not isinstance(cluster, cluster_pb2.Cluster) or cluster.type != cluster_pb2.Cluster.EDS:
        return ""
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def _rds_names(listener: Message) -> Iterator[str]:
    """The route configurations a listener loads over RDS."""
    assert isinstance(listener, listener_pb2.Listener)
    packed = [listener.api_listener.api_listener] if listener.HasField("api_listener") else []
    packed += [f.typed_config for chain in listener.filter_chains for f in chain.filters]
    for config in packed:
        if config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
            manager = _unpack(config, hcm_pb2.HttpConnectionManager)
            if manager.HasField("rds"):
                yield manager.rds.route_config_name
