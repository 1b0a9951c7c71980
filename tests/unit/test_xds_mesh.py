"""The mesh view: which instances are endpoints, what a proxy announces."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.model import Resource
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
    assert backend.policy == {"destination": "backend", "loadBalancer": {"algorithm": "random"}}
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
