"""Snapshots: every resource one proxy should have, by type and name, each
versioned by a hash of its bytes, and the consistency check every snapshot
passes before it is served.

A snapshot is consistent when every name a resource points at exists in it:
clusters routed to by listeners and route configurations, the route
configurations listeners load over RDS, the endpoint assignments of EDS
clusters; and no two listeners bind the same address and port.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

PREFIX = "type.googleapis.com/"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
#: The order pushes go out in: a cluster before its endpoints, a listener
#: before the routes it loads (make before break).
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
SHORT = {CLUSTER: "clusters", ENDPOINT: "endpoints", LISTENER: "listeners", ROUTE: "routes"}


def version_of(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


@dataclass(frozen=True, eq=False)
class Item:
    """One named resource; its version is a hash of its bytes."""

    name: str
    message: Message

    @cached_property
    def raw(self) -> bytes:
        return self.message.SerializeToString(deterministic=True)

    @cached_property
    def version(self) -> str:
        return version_of(self.raw)

    def packed(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=PREFIX + self.message.DESCRIPTOR.full_name, value=self.raw)


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Item]] = field(default_factory=dict)
    #: What the proxy will do differently from what the policies ask (a
    #: proxyless client without an algorithm), in words; not sent to it.
    notes: tuple[str, ...] = ()

    def of(self, type_url: str) -> Mapping[str, Item]:
        return self.resources.get(type_url, {})

    def versions(self, type_url: str) -> dict[str, str]:
        return {name: item.version for name, item in self.of(type_url).items()}

    def type_version(self, type_url: str, names: Iterable[str] | None = None) -> str:
        """One version for a set of resources of a type (state of the world)."""
        items = self.of(type_url)
        chosen = sorted(items if names is None else (n for n in names if n in items))
        return version_of("\n".join(f"{n}={items[n].version}" for n in chosen).encode())

    def same_as(self, other: Snapshot | None) -> bool:
        return other is not None and self.notes == other.notes and all(
            self.versions(t) == other.versions(t) for t in TYPES)


def snapshot(items: Mapping[str, Iterable[Item]], notes: Iterable[str] = ()) -> Snapshot:
    return Snapshot({t: {i.name: i for i in items.get(t, ())} for t in TYPES}, tuple(notes))


def check(snap: Snapshot) -> list[str]:
    """Every inconsistency in ``snap``, as sentences; empty when it is sound."""
    problems = []
    clusters, routes = snap.of(CLUSTER), snap.of(ROUTE)
    for name, item in clusters.items():
        cluster = item.message
        assert isinstance(cluster, cluster_pb2.Cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            wanted = cluster.eds_cluster_config.service_name or name
            if wanted not in snap.of(ENDPOINT):
                problems.append(f"cluster {name}: no endpoints resource {wanted}")
    for name, item in routes.items():
        route_config = item.message
        assert isinstance(route_config, route_pb2.RouteConfiguration)
        problems += [f"route {name}: cluster {c} is missing"
                     for c in _routed(route_config) if c not in clusters]
    bound: dict[tuple[str, int], str] = {}
    for name, item in snap.of(LISTENER).items():
        listener = item.message
        assert isinstance(listener, listener_pb2.Listener)
        if listener.HasField("address"):
            where = (listener.address.socket_address.address,
                     listener.address.socket_address.port_value)
            if where in bound:
                problems.append(f"listener {name}: {where[0]}:{where[1]} is also bound by "
                                f"listener {bound[where]}")
            bound[where] = name
        for kind, config in _network_filters(listener):
            if kind == "hcm":
                assert isinstance(config, hcm_pb2.HttpConnectionManager)
                if config.HasField("rds"):
                    if config.rds.route_config_name not in routes:
                        problems.append(f"listener {name}: route configuration "
                                        f"{config.rds.route_config_name} is missing")
                else:
                    problems += [f"listener {name}: cluster {c} is missing"
                                 for c in _routed(config.route_config) if c not in clusters]
            else:
                assert isinstance(config, tcp_proxy_pb2.TcpProxy)
                if config.cluster not in clusters:
                    problems.append(f"listener {name}: cluster {config.cluster} is missing")
    for name, item in snap.of(ENDPOINT).items():
        assignment = item.message
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        if assignment.cluster_name != name:
            problems.append(f"endpoints {name}: names cluster {assignment.cluster_name}")
    return problems


def _routed(config: route_pb2.RouteConfiguration) -> Iterator[str]:
    for host in config.virtual_hosts:
        for route in host.routes:
            if route.route.cluster:
                yield route.route.cluster
            for weighted in route.route.weighted_clusters.clusters:
                yield weighted.name


def _network_filters(listener: listener_pb2.Listener) -> Iterator[tuple[str, Message]]:
    if listener.HasField("api_listener"):
        hcm = hcm_pb2.HttpConnectionManager()
        listener.api_listener.api_listener.Unpack(hcm)
        yield "hcm", hcm
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                yield "hcm", hcm
            elif network_filter.typed_config.Is(tcp_proxy_pb2.TcpProxy.DESCRIPTOR):
                tcp = tcp_proxy_pb2.TcpProxy()
                network_filter.typed_config.Unpack(tcp)
                yield "tcp", tcp
