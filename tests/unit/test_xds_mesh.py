"""The mesh view: which instances are endpoints, what a proxy announces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model import EventType, Resource, WatchEvent
from controlplane.xds.feed import MeshIndex
from controlplane.xds.mesh import (
    GATEWAY,
    PROXYLESS,
    Endpoint,
    Proxy,
    ProxyError,
    mesh_view,
    proxy_metadata,
    proxy_of,
)


def node(name: str, state: str = "ready", drain: bool = False) -> Resource:
    return Resource(kind="Node", namespace="cluster", name=name,
                    spec={"address": "127.0.0.2", "drain": drain}, status={"state": state})


def instance(name: str, node_name: str = "n1", state: str = "healthy", **spec: Any) -> Resource:
    return Resource(kind="Instance", name=name,
                    spec={"service": "backend", "node": node_name, **spec},
                    status={"state": state, "address": "127.0.0.2", "port": 30000 + len(name)})


SERVICES = [
    Resource(kind="Service", name="backend", spec={"port": 9090, "protocol": "grpc"}),
    Resource(kind="Service", name="frontend",
             spec={"port": 8080, "upstreams": [{"name": "backend"},
                                               {"name": "db", "namespace": "data",
                                                "port": 5432}]}),
    Resource(kind="TrafficPolicy", name="backend",
             spec={"destination": "backend", "loadBalancer": {"algorithm": "random"}}),
]


def test_only_serving_instances_on_ready_nodes_are_endpoints() -> None:
    view = mesh_view([
        *SERVICES, node("n1"), node("n2", state="down"), node("n3", drain=True),
        instance("a"), instance("bb", state="running"), instance("ccc", state="starting"),
        instance("dddd", node_name="n2"), instance("eeeee", node_name="n3"),
        instance("ffffff", draining=True), instance("ggggggg", node_name=""),
    ], version=7)
    backend = view.services[("default", "backend")]
    assert backend.endpoints == (Endpoint("127.0.0.2", 30001, "a", "n1"),
                                 Endpoint("127.0.0.2", 30002, "bb", "n1"))
    assert backend.policy is not None and backend.policy.load_balancer is not None
    assert (backend.policy.destination, backend.policy.load_balancer.algorithm) == (
        "backend", "random")
    assert view.version == 7


def test_upstreams_default_to_the_services_namespace() -> None:
    view = mesh_view(SERVICES)
    assert view.services[("default", "frontend")].upstreams == (
        ("default", "backend", None), ("data", "db", 5432))


def test_proxy_metadata_round_trips_for_every_kind() -> None:
    for proxy in (
        Proxy(id="g-1", kind=GATEWAY, namespace="edge", name="ingress", node="n1",
              instance="ingress-x", inbound=("127.0.0.2", 0)),
        Proxy(id="c~1", kind=PROXYLESS, namespace="default", name="client"),
    ):
        assert proxy_of(proxy.id, proxy_metadata(proxy)) == proxy


def test_a_node_without_metadata_is_a_proxyless_client() -> None:
    proxy = proxy_of("someone", {})
    assert proxy.kind == PROXYLESS and proxy.namespace == "default"


@pytest.mark.parametrize("metadata, message", [
    ({"flotilla": "sidecar"}, "must be an object"),
    ({"flotilla": {"kind": "robot"}}, "is not one of"),
    ({"flotilla": {"kind": "sidecar", "inbound": {"port": 1}}}, "malformed"),
])
def test_unusable_metadata_is_refused_with_the_reason(metadata: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(ProxyError, match=message):
        proxy_of("x", metadata)


# --- the incremental index the server feeds the cache with ---------------------------

OPS = st.lists(st.tuples(
    st.sampled_from(["instance", "instance-state", "instance-delete", "policy", "policy-delete",
                     "service", "service-delete", "node-down", "node-up", "gateway"]),
    st.integers(min_value=0, max_value=3)), max_size=25)


@settings(max_examples=100, deadline=None)
@given(ops=OPS)
def test_the_incremental_index_equals_a_full_rebuild(ops: list[tuple[str, int]]) -> None:
    current: dict[tuple[str, str], Resource] = {}

    def put(resource: Resource) -> WatchEvent:
        current[(resource.kind, resource.name)] = resource
        return WatchEvent(EventType.MODIFIED, resource, 0)

    def drop(kind: str, name: str) -> list[WatchEvent]:
        gone = current.pop((kind, name), None)
        return [WatchEvent(EventType.DELETED, gone, 0)] if gone else []

    for resource in [*SERVICES, node("n1"), node("n2"), instance("a"), instance("bb", "n2")]:
        put(resource)
    index = MeshIndex(current.values())
    for op, n in ops:
        events: list[WatchEvent] = []
        name = f"i{n}"
        if op == "instance":
            events.append(put(instance(name, f"n{n % 2 + 1}")))
        elif op == "instance-state":
            events.append(put(instance(name, state="starting" if n % 2 else "healthy")))
        elif op == "instance-delete":
            events += drop("Instance", name)
        elif op == "policy":
            events.append(put(Resource(kind="TrafficPolicy", name="backend", spec={
                "destination": ["backend", "frontend"][n % 2],
                "loadBalancer": {"algorithm": "random"}})))
        elif op == "policy-delete":
            events += drop("TrafficPolicy", "backend")
        elif op == "service":
            events.append(put(Resource(kind="Service", name="backend",
                                       spec={"port": 9000 + n, "protocol": "grpc"})))
        elif op == "service-delete":
            events += drop("Service", "backend")
        elif op in ("node-down", "node-up"):
            events.append(put(node(f"n{n % 2 + 1}", "down" if op == "node-down" else "ready")))
        elif op == "gateway":
            events.append(put(Resource(kind="Gateway", name="ingress", spec={"listeners": [
                {"name": "web", "port": 8000 + n, "routes": [{"service": "frontend"}]}]})))
        index.apply(events)
        assert index.view(1) == mesh_view(current.values(), 1)
