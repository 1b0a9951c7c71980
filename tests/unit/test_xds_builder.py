"""The xDS builder: which resources each kind of proxy gets (a table of
catalogs), where TrafficPolicy fields land in Envoy's protos (a table of
policies), gateways and proxyless listeners; Hypothesis properties for
snapshot consistency and stable versions; and the check catching broken
snapshots.

Policies and gateway listeners go through the manifest validator first, so the
builder sees them exactly as the store keeps them (defaults filled in)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.manifests.validate import to_resource
from controlplane.model.resources import API_VERSION
from controlplane.xds.builder import Builder
from controlplane.xds.mesh import (
    GATEWAY,
    PROXY_KINDS,
    PROXYLESS,
    SIDECAR,
    Endpoint,
    GatewayView,
    MeshView,
    Proxy,
    ServiceView,
)
from controlplane.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SHORT,
    TYPES,
    Item,
    Snapshot,
    check,
    snapshot,
)

HTTP2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SAFE_RETRIES = "connect-failure,refused-stream,unavailable"
Cluster = cluster_pb2.Cluster

# --- catalogs ------------------------------------------------------------------------


def stored(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> Any:
    """``spec`` as the store keeps it: validated, defaults filled in."""
    return to_resource({"apiVersion": API_VERSION, "kind": kind,
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec}).spec


def policy(destination: str = "api", **spec: Any) -> Any:
    return stored("TrafficPolicy", f"{destination}-policy", {"destination": destination, **spec})


def gateway(name: str, *listeners: dict[str, Any], namespace: str = "default") -> GatewayView:
    spec = stored("Gateway", name, {"listeners": list(listeners)}, namespace)
    return GatewayView(namespace, name, tuple(spec.listeners))


def endpoints(name: str, *ports: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"127.0.{i}.{len(name)}", port, f"{name}-{i}", "node-1")
                 for i, port in enumerate(ports))


def service(name: str, protocol: str = "http", port: int | None = 8080, *,
            namespace: str = "default", upstreams: Iterable[str | tuple[str, str, int | None]] = (),
            endpoint_ports: tuple[int, ...] = (8080,), **fields: Any) -> ServiceView:
    """``upstreams``: ``name`` (same namespace, no override) or (ns, name, port)."""
    return ServiceView(namespace, name, port, protocol,
                       upstreams=tuple((namespace, u, None) if isinstance(u, str) else u
                                       for u in upstreams),
                       endpoints=endpoints(name, *endpoint_ports), **fields)


def mesh(*services: ServiceView, gateways: Iterable[GatewayView] = ()) -> MeshView:
    return MeshView({s.key: s for s in services}, {(g.namespace, g.name): g for g in gateways},
                    version=1)


def sidecar(name: str, *bound: str, namespace: str = "default",
            inbound: bool = True) -> Proxy:
    """A sidecar with ``bound`` upstreams (``ns/name``) on loopback ports of its own,
    as the process driver starts them."""
    return Proxy(id=f"{name}-0", kind=SIDECAR, namespace=namespace, name=name,
                 inbound=("127.0.0.9", 15001) if inbound else None,
                 app_port=18080 if inbound else None,
                 upstreams={key: ("127.0.0.1", 21000 + i) for i, key in enumerate(bound)})


API, RPC, DB = service("api"), service("rpc", "grpc", 9000), service("db", "tcp", 5432)
WEB = service("web", upstreams=("api", "rpc", "db", "gone"))
CATALOG = mesh(API, RPC, DB, WEB, service("lonely"), service("orphan", upstreams=("gone",)),
               service("billing", namespace="shop", upstreams=(("default", "api", None),)),
               gateways=[gateway("edge", {"name": "web", "port": 8000, "routes": [
                   {"service": "api", "pathPrefix": "/api"}, {"service": "rpc"}]},
                   {"name": "sql", "port": 5432, "protocol": "tcp",
                    "routes": [{"service": "db"}]})])

# --- which resources each proxy gets --------------------------------------------------

NAMES = [
    pytest.param(sidecar("lonely"), {CLUSTER: ["local_app"], LISTENER: ["inbound"]},
                 id="sidecar-inbound-only"),
    pytest.param(sidecar("web", "default/api", "default/rpc", "default/db"), {
        CLUSTER: ["api.default", "db.default", "local_app", "rpc.default"],
        ENDPOINT: ["api.default", "db.default", "rpc.default"],
        LISTENER: ["inbound", "outbound:api.default", "outbound:db.default",
                   "outbound:rpc.default"],
        ROUTE: ["api.default", "rpc.default"],
    }, id="sidecar-http-grpc-tcp-upstreams"),
    pytest.param(sidecar("orphan", "default/gone"), {CLUSTER: ["local_app"],
                                                     LISTENER: ["inbound"]},
                 id="upstream-missing-from-view"),
    pytest.param(sidecar("billing", "default/api", namespace="shop"), {
        CLUSTER: ["api.default", "local_app"], ENDPOINT: ["api.default"],
        LISTENER: ["inbound", "outbound:api.default"], ROUTE: ["api.default"],
    }, id="sidecar-upstream-in-another-namespace"),
    pytest.param(sidecar("unknown", "default/db"), {
        CLUSTER: ["db.default", "local_app"], ENDPOINT: ["db.default"],
        LISTENER: ["inbound", "outbound:db.default"],
    }, id="sidecar-of-no-service-with-bootstrap-upstream"),
    pytest.param(sidecar("api", inbound=False), {}, id="sidecar-without-inbound"),
    pytest.param(Proxy("edge-0", GATEWAY, "default", "edge", inbound=("127.0.0.9", 0)), {
        CLUSTER: ["api.default", "db.default", "rpc.default"],
        ENDPOINT: ["api.default", "db.default", "rpc.default"],
        LISTENER: ["gateway:sql", "gateway:web"],
        ROUTE: ["api.default", "gateway:edge:web", "rpc.default"],
    }, id="gateway"),
    pytest.param(Proxy("edge-1", GATEWAY, "default", "missing"), {}, id="gateway-not-in-view"),
]


@pytest.mark.parametrize(("proxy", "expected"), NAMES)
def test_resource_names(proxy: Proxy, expected: dict[str, list[str]]) -> None:
    snap = Builder(CATALOG).build(proxy)
    assert {t: sorted(snap.of(t)) for t in TYPES if snap.of(t)} == expected
    assert check(snap) == []


# --- helpers reading protos -------------------------------------------------------------


def network_filter(snap: Snapshot, listener: str) -> Message:
    """The HCM or TCP proxy of a listener's only filter chain (or its API listener)."""
    message = snap.of(LISTENER)[listener].message
    assert isinstance(message, listener_pb2.Listener)
    if message.HasField("api_listener"):
        packed = message.api_listener.api_listener
    else:
        [chain] = message.filter_chains
        [only] = chain.filters
        packed = only.typed_config
    unpacked: Message
    for unpacked in (hcm_pb2.HttpConnectionManager(), tcp_proxy_pb2.TcpProxy()):
        if packed.Unpack(unpacked):
            return unpacked
    raise AssertionError(f"listener {listener}: unexpected filter {packed.type_url}")


def bound(snap: Snapshot, listener: str) -> tuple[str, int]:
    message = snap.of(LISTENER)[listener].message
    assert isinstance(message, listener_pb2.Listener)
    return message.address.socket_address.address, message.address.socket_address.port_value


def cluster(snap: Snapshot, name: str) -> cluster_pb2.Cluster:
    message = snap.of(CLUSTER)[name].message
    assert isinstance(message, cluster_pb2.Cluster)
    return message


def route_action(snap: Snapshot, name: str) -> route_components_pb2.RouteAction:
    config = snap.of(ROUTE)[name].message
    assert isinstance(config, route_pb2.RouteConfiguration)
    [host] = config.virtual_hosts
    [route] = host.routes
    return route.route


def lb_addresses(assignment: Message) -> list[tuple[str, int, str]]:
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    return [(e.endpoint.address.socket_address.address,
             e.endpoint.address.socket_address.port_value, e.endpoint.hostname)
            for locality in assignment.endpoints for e in locality.lb_endpoints]


# --- sidecars ----------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "filter_type", "http2"), [
    ("http", hcm_pb2.HttpConnectionManager, False),
    ("grpc", hcm_pb2.HttpConnectionManager, True),
    ("tcp", tcp_proxy_pb2.TcpProxy, False),
], ids=["http", "grpc", "tcp"])
def test_inbound_forwards_to_the_app(protocol: str, filter_type: type[Message],
                                     http2: bool) -> None:
    snap = Builder(mesh(service("api", protocol))).build(sidecar("api"))
    assert bound(snap, "inbound") == ("127.0.0.9", 15001)
    inbound = network_filter(snap, "inbound")
    assert isinstance(inbound, filter_type)
    if isinstance(inbound, hcm_pb2.HttpConnectionManager):
        [host] = inbound.route_config.virtual_hosts
        assert [r.route.cluster for r in host.routes] == ["local_app"]
    else:
        assert isinstance(inbound, tcp_proxy_pb2.TcpProxy)
        assert inbound.cluster == "local_app"
    app = cluster(snap, "local_app")
    assert app.type == Cluster.STATIC
    assert lb_addresses(app.load_assignment) == [("127.0.0.1", 18080, "")]
    assert (HTTP2 in app.typed_extension_protocol_options) == http2


def test_outbound_listeners_per_upstream_protocol() -> None:
    snap = Builder(CATALOG).build(sidecar("web", "default/api", "default/rpc", "default/db"))
    assert [bound(snap, f"outbound:{n}.default") for n in ("api", "rpc", "db")] == [
        ("127.0.0.1", 21000), ("127.0.0.1", 21001), ("127.0.0.1", 21002)]
    for http in ("api", "rpc"):
        manager = network_filter(snap, f"outbound:{http}.default")
        assert isinstance(manager, hcm_pb2.HttpConnectionManager)
        assert manager.rds.route_config_name == f"{http}.default"
        assert route_action(snap, f"{http}.default").cluster == f"{http}.default"
    tcp = network_filter(snap, "outbound:db.default")
    assert isinstance(tcp, tcp_proxy_pb2.TcpProxy) and tcp.cluster == "db.default"
    assert HTTP2 in cluster(snap, "rpc.default").typed_extension_protocol_options
    assert HTTP2 not in cluster(snap, "api.default").typed_extension_protocol_options
    for name in ("api", "rpc", "db"):
        eds = cluster(snap, f"{name}.default")
        assert (eds.type, eds.eds_cluster_config.service_name) == (Cluster.EDS, f"{name}.default")
        assert eds.eds_cluster_config.eds_config.HasField("ads")


@pytest.mark.parametrize(("override", "bootstrap", "expected"), [
    (9100, ("127.1.0.1", None), ("127.1.0.1", 9100)),
    (None, ("127.1.0.1", None), ("127.1.0.1", 8080)),
    (9100, ("127.0.0.1", 21000), ("127.0.0.1", 21000)),
], ids=["override-on-pod-vip", "service-port-on-pod-vip", "bootstrap-port-wins"])
def test_upstream_port(override: int | None, bootstrap: tuple[str, int | None] | None,
                       expected: tuple[str, int]) -> None:
    view = mesh(API, service("web", upstreams=[("default", "api", override)]))
    proxy = Proxy("web-0", SIDECAR, "default", "web",
                  upstreams={"default/api": bootstrap} if bootstrap else {})
    assert bound(Builder(view).build(proxy), "outbound:api.default") == expected


def test_an_upstream_the_bootstrap_did_not_bind_gets_no_listener() -> None:
    view = mesh(API, service("web", upstreams=[("default", "api", 9100)]))
    snap = Builder(view).build(Proxy("web-0", SIDECAR, "default", "web"))
    assert not snap.of(LISTENER) and check(snap) == []


def test_upstream_without_any_port_gets_no_listener() -> None:
    view = mesh(service("api", port=None), service("web", upstreams=("api",)))
    snap = Builder(view).build(sidecar("web"))
    assert sorted(snap.of(LISTENER)) == ["inbound"] and "api.default" not in snap.of(CLUSTER)


# --- TrafficPolicy -> cluster and route fields ---------------------------------------------

Fields = Callable[[cluster_pb2.Cluster, route_components_pb2.RouteAction], Any]

POLICIES = [
    pytest.param(None, lambda c, r: (c.lb_policy, c.connect_timeout.seconds, r.timeout.seconds,
                                     c.HasField("outlier_detection"),
                                     len(c.circuit_breakers.thresholds), len(r.hash_policy)),
                 (Cluster.ROUND_ROBIN, 5, 0, False, 0, 0), id="no-policy"),
    pytest.param(None, lambda c, r: (r.retry_policy.retry_on, r.retry_policy.num_retries.value),
                 (SAFE_RETRIES, 2), id="no-policy-retries-what-never-reached-the-app"),
    pytest.param(policy(connectTimeout="2s"),
                 lambda c, r: (r.retry_policy.retry_on, r.retry_policy.num_retries.value),
                 (SAFE_RETRIES, 2), id="policy-without-retries-keeps-safe-retries"),
    pytest.param(policy(retries={"attempts": 0}), lambda c, r: r.retry_policy.num_retries.value,
                 0, id="retries-off"),
    pytest.param(policy(loadBalancer={"algorithm": "ring-hash", "hashOn": {"header": "x-user"}}),
                 lambda c, r: (c.lb_policy, [h.header.header_name for h in r.hash_policy]),
                 (Cluster.RING_HASH, ["x-user"]), id="ring-hash-by-header"),
    pytest.param(policy(loadBalancer={"algorithm": "ring-hash", "hashOn": {"sourceIP": True}}),
                 lambda c, r: (c.lb_policy,
                               [h.connection_properties.source_ip for h in r.hash_policy]),
                 (Cluster.RING_HASH, [True]), id="ring-hash-by-source-ip"),
    pytest.param(policy(loadBalancer={"algorithm": "least-request"}),
                 lambda c, r: (c.lb_policy, len(r.hash_policy)), (Cluster.LEAST_REQUEST, 0),
                 id="least-request"),
    pytest.param(policy(loadBalancer={"algorithm": "random"}), lambda c, r: c.lb_policy,
                 Cluster.RANDOM, id="random"),
    pytest.param(policy(retries={"attempts": 3, "perTryTimeout": "250ms",
                                 "retryOn": ["5xx", "reset"]}),
                 lambda c, r: (r.retry_policy.retry_on, r.retry_policy.num_retries.value,
                               r.retry_policy.per_try_timeout.ToMilliseconds()),
                 ("5xx,reset", 3, 250), id="retries"),
    pytest.param(policy(retries={"attempts": 2}),
                 lambda c, r: (r.retry_policy.retry_on, r.retry_policy.num_retries.value,
                               r.retry_policy.HasField("per_try_timeout")),
                 (SAFE_RETRIES, 2, False),
                 id="retries-default-conditions"),
    pytest.param(policy(connectTimeout="1.5s", requestTimeout="3s", idleTimeout="1m"),
                 lambda c, r: (c.connect_timeout.ToMilliseconds(), r.timeout.ToMilliseconds(),
                               r.idle_timeout.ToMilliseconds()),
                 (1500, 3000, 60_000), id="timeouts"),
    pytest.param(policy(circuitBreaker={"maxConnections": 100, "maxPendingRequests": 10,
                                        "maxRequests": 50, "maxRetries": 0}),
                 lambda c, r: [(t.max_connections.value, t.max_pending_requests.value,
                                t.max_requests.value, t.HasField("max_retries"),
                                t.max_retries.value) for t in c.circuit_breakers.thresholds],
                 [(100, 10, 50, True, 0)], id="circuit-breaker"),
    pytest.param(policy(circuitBreaker={"maxRequests": 7}),
                 lambda c, r: [(t.HasField("max_connections"), t.max_requests.value)
                               for t in c.circuit_breakers.thresholds],
                 [(False, 7)], id="circuit-breaker-partial"),
    pytest.param(policy(outlierDetection={"consecutive5xx": 3, "interval": "5s",
                                          "baseEjectionTime": "1m", "maxEjectionPercent": 50}),
                 lambda c, r: (c.outlier_detection.consecutive_5xx.value,
                               c.outlier_detection.interval.seconds,
                               c.outlier_detection.base_ejection_time.seconds,
                               c.outlier_detection.max_ejection_percent.value),
                 (3, 5, 60, 50), id="outlier-detection"),
    pytest.param(policy(outlierDetection={}),
                 lambda c, r: (c.outlier_detection.consecutive_5xx.value,
                               c.outlier_detection.interval.seconds,
                               c.outlier_detection.base_ejection_time.seconds,
                               c.outlier_detection.max_ejection_percent.value),
                 (5, 10, 30, 10), id="outlier-detection-defaults"),
]


@pytest.mark.parametrize(("spec", "fields", "expected"), POLICIES)
def test_policy_reaches_envoy_fields(spec: Any, fields: Fields, expected: Any) -> None:
    view = mesh(service("api", policy=spec), WEB)
    snap = Builder(view).build(sidecar("web", "default/api"))
    assert fields(cluster(snap, "api.default"), route_action(snap, "api.default")) == expected


@pytest.mark.parametrize(("hash_on", "expected"), [
    (None, []), ({"sourceIP": True}, [True]), ({"header": "x-user"}, [True]),
], ids=["no-hash", "source-ip", "header-falls-back-to-source-ip"])
def test_tcp_upstream_hashes_on_the_source_address(hash_on: dict[str, Any] | None,
                                                   expected: list[bool]) -> None:
    balancer = {"algorithm": "ring-hash", "hashOn": hash_on} if hash_on else {}
    spec = policy("db", loadBalancer=balancer) if hash_on else None
    snap = Builder(mesh(service("db", "tcp", policy=spec), WEB)).build(
        sidecar("web", "default/db"))
    tcp = network_filter(snap, "outbound:db.default")
    assert isinstance(tcp, tcp_proxy_pb2.TcpProxy)
    assert [h.HasField("source_ip") for h in tcp.hash_policy] == expected


# --- gateways ------------------------------------------------------------------------------


def test_gateway_routes_hosts_then_longest_prefix_first() -> None:
    view = mesh(API, RPC, DB, service("admin", namespace="ops"), gateways=[gateway(
        "edge",
        {"name": "web", "port": 8000, "routes": [
            {"service": "api", "pathPrefix": "/api"},
            {"service": "rpc", "pathPrefix": "/api/v2"},
            {"service": "rpc"},
            {"service": "api", "host": "shop.example", "pathPrefix": "/a"},
            {"service": "admin", "namespace": "ops", "host": "admin.example"},
            {"service": "missing", "pathPrefix": "/nowhere"},
        ]},
        {"name": "sql", "port": 5432, "protocol": "tcp", "routes": [{"service": "db"}]},
    )])
    snap = Builder(view).build(Proxy("edge-0", GATEWAY, "default", "edge",
                                     inbound=("127.0.0.9", 0)))
    assert check(snap) == []
    assert bound(snap, "gateway:web") == ("127.0.0.9", 8000)
    manager = network_filter(snap, "gateway:web")
    assert isinstance(manager, hcm_pb2.HttpConnectionManager)
    assert manager.rds.route_config_name == "gateway:edge:web"
    config = snap.of(ROUTE)["gateway:edge:web"].message
    assert isinstance(config, route_pb2.RouteConfiguration)
    assert [(h.name, list(h.domains), [(r.match.prefix, r.route.cluster) for r in h.routes])
            for h in config.virtual_hosts] == [
        ("admin.example", ["admin.example", "admin.example:*"], [("/", "admin.ops")]),
        ("shop.example", ["shop.example", "shop.example:*"], [("/a", "api.default")]),
        ("*", ["*"], [("/api/v2", "rpc.default"), ("/api", "api.default"),
                      ("/", "rpc.default")]),
    ]
    assert bound(snap, "gateway:sql") == ("127.0.0.9", 5432)
    tcp = network_filter(snap, "gateway:sql")
    assert isinstance(tcp, tcp_proxy_pb2.TcpProxy) and tcp.cluster == "db.default"


def test_gateway_routes_carry_the_destination_policy() -> None:
    spec = policy(requestTimeout="2s", retries={"attempts": 4})
    view = mesh(service("api", policy=spec), gateways=[gateway(
        "edge", {"name": "web", "port": 8000, "routes": [{"service": "api"}]})])
    snap = Builder(view).build(Proxy("edge-0", GATEWAY, "default", "edge"))
    config = snap.of(ROUTE)["gateway:edge:web"].message
    assert isinstance(config, route_pb2.RouteConfiguration)
    action = config.virtual_hosts[0].routes[0].route
    assert (action.timeout.seconds, action.retry_policy.num_retries.value) == (2, 4)
    assert bound(snap, "gateway:web") == ("0.0.0.0", 8000)


# --- proxyless -------------------------------------------------------------------------------


@pytest.mark.parametrize(("namespace", "listeners"), [
    ("default", ["api", "api.default", "rpc", "rpc.default", "users.shop"]),
    ("shop", ["api.default", "rpc.default", "users", "users.shop"]),
], ids=["own-namespace-default", "own-namespace-shop"])
def test_proxyless_api_listeners(namespace: str, listeners: list[str]) -> None:
    view = mesh(API, RPC, service("users", "grpc", namespace="shop"))
    snap = Builder(view).build(Proxy("client-0", PROXYLESS, namespace, "client"))
    assert check(snap) == []
    assert sorted(snap.of(LISTENER)) == listeners
    for name in listeners:
        message = snap.of(LISTENER)[name].message
        assert isinstance(message, listener_pb2.Listener) and message.name == name
        assert not message.HasField("address")
        manager = network_filter(snap, name)
        assert isinstance(manager, hcm_pb2.HttpConnectionManager)
        full = name if "." in name else f"{name}.{namespace}"
        assert manager.rds.route_config_name == full
    assert sorted(snap.of(CLUSTER)) == sorted(snap.of(ENDPOINT)) == sorted(snap.of(ROUTE)) == [
        "api.default", "rpc.default", "users.shop"]


def test_proxyless_snapshot_with_a_tcp_service_is_consistent() -> None:
    snap = Builder(mesh(API, DB)).build(Proxy("client-0", PROXYLESS, "default", "client"))
    assert check(snap) == []


LEAST_REQUEST = "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
RANDOM = "envoy.extensions.load_balancing_policies.random.v3.Random"
ROUND_ROBIN = "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"


@pytest.mark.parametrize(("balancer", "lb_policy", "typed", "note"), [
    (None, Cluster.ROUND_ROBIN, [], None),
    ({"algorithm": "round-robin"}, Cluster.ROUND_ROBIN, [], None),
    ({"algorithm": "ring-hash", "hashOn": {"header": "x-user"}}, Cluster.RING_HASH, [], None),
    ({"algorithm": "ring-hash", "hashOn": {"sourceIP": True}}, Cluster.RING_HASH, [],
     "rpc.default: ring-hash on sourceIP: gRPC hashes on headers only; each call gets a "
     "random hash"),
    # gRPC takes the first typed policy it has (grpcio: round_robin) instead
    # of NACKing an lb_policy it lacks ("LB policy is not supported").
    ({"algorithm": "least-request"}, Cluster.ROUND_ROBIN, [LEAST_REQUEST, ROUND_ROBIN],
     "rpc.default: least-request: gRPC clients without a least_request policy (grpcio, "
     "gRPC C++) use round-robin"),
    ({"algorithm": "random"}, Cluster.ROUND_ROBIN, [RANDOM, ROUND_ROBIN],
     "rpc.default: random: proxyless gRPC has no random policy; round-robin used"),
], ids=["default", "round-robin", "ring-hash-header", "ring-hash-source-ip", "least-request",
        "random"])
@pytest.mark.parametrize("mtls", ["", "flotilla.local"], ids=["plaintext", "mtls"])
def test_proxyless_clusters_balance_the_way_grpc_can_and_say_how(
        balancer: dict[str, Any] | None, lb_policy: int, typed: list[str], note: str | None,
        mtls: str) -> None:
    spec = policy("rpc", loadBalancer=balancer) if balancer else None
    view = MeshView({s.key: s for s in (service("rpc", "grpc", 9000, policy=spec), API)},
                    version=1, mtls_domain=mtls)
    snap = Builder(view).build(Proxy("client-0", PROXYLESS, "default", "client"))
    assert check(snap) == []
    cluster = snap.of(CLUSTER)["rpc.default"].message
    assert isinstance(cluster, Cluster)
    assert cluster.lb_policy == lb_policy
    policies = cluster.load_balancing_policy.policies
    assert [p.typed_extension_config.name for p in policies] == typed
    assert [p.typed_extension_config.typed_config.type_url.rpartition("/")[2]
            for p in policies] == typed
    assert cluster.HasField("transport_socket") == bool(mtls)
    assert list(snap.notes) == ([note] if note else [])
    # Sidecars' Envoys have every algorithm: their cluster keeps the policy's.
    web = Builder(view).build(sidecar("web", "default/rpc"))
    envoy_cluster = web.of(CLUSTER)["rpc.default"].message
    assert isinstance(envoy_cluster, Cluster)
    assert not envoy_cluster.HasField("load_balancing_policy") and web.notes == ()


def test_upstreams_added_after_start_do_not_freeze_the_sidecar() -> None:
    view = mesh(API, service("cart"), service("web", upstreams=("api", "cart")))
    assert check(Builder(view).build(sidecar("web"))) == []


# --- endpoints ---------------------------------------------------------------------------------


def test_endpoints_only_in_their_own_service() -> None:
    view = mesh(service("api", endpoint_ports=(8080, 8081, 8082)),
                service("cart", endpoint_ports=(9090,)), service("empty", endpoint_ports=()),
                service("web", upstreams=("api", "cart", "empty")))
    snap = Builder(view).build(sidecar("web", "default/api", "default/cart", "default/empty"))
    assert {name: lb_addresses(item.message) for name, item in snap.of(ENDPOINT).items()} == {
        "api.default": [("127.0.0.3", 8080, "api-0"), ("127.0.1.3", 8081, "api-1"),
                        ("127.0.2.3", 8082, "api-2")],
        "cart.default": [("127.0.0.4", 9090, "cart-0")],
        "empty.default": [],
    }
    assert all(getattr(item.message, "cluster_name") == name
               for name, item in snap.of(ENDPOINT).items())


# --- check() catches what is broken ---------------------------------------------------------------


def _broken(change: Callable[[dict[str, dict[str, Item]]], None]) -> Snapshot:
    good = Builder(CATALOG).build(sidecar("web", "default/api", "default/rpc", "default/db"))
    items = {t: dict(good.of(t)) for t in TYPES}
    change(items)
    return snapshot({t: items[t].values() for t in TYPES})


def _rebound(items: dict[str, dict[str, Item]]) -> None:
    clash = listener_pb2.Listener()
    clash.CopyFrom(items[LISTENER]["outbound:db.default"].message)
    clash.name = "clash"
    clash.address.socket_address.port_value = 21000
    items[LISTENER]["clash"] = Item("clash", clash)


def _tcp_to_nowhere(items: dict[str, dict[str, Item]]) -> None:
    listener = listener_pb2.Listener()
    listener.CopyFrom(items[LISTENER]["outbound:db.default"].message)
    listener.filter_chains[0].filters[0].typed_config.Pack(
        tcp_proxy_pb2.TcpProxy(stat_prefix="x", cluster="nowhere.default"))
    items[LISTENER]["outbound:db.default"] = Item("outbound:db.default", listener)


def _misnamed_endpoints(items: dict[str, dict[str, Item]]) -> None:
    items[ENDPOINT]["api.default"] = Item(
        "api.default", endpoint_pb2.ClusterLoadAssignment(cluster_name="rpc.default"))


@pytest.mark.parametrize(("change", "problem"), [
    (_tcp_to_nowhere, "listener outbound:db.default: cluster nowhere.default is missing"),
    (lambda items: items[CLUSTER].pop("api.default"),
     "route api.default: cluster api.default is missing"),
    (lambda items: items[ENDPOINT].pop("rpc.default"),
     "cluster rpc.default: no endpoints resource rpc.default"),
    (lambda items: items[ROUTE].pop("api.default"),
     "listener outbound:api.default: route configuration api.default is missing"),
    (lambda items: items[CLUSTER].pop("local_app"), "listener inbound: cluster local_app is missing"),
    (_rebound, "listener clash: 127.0.0.1:21000 is also bound by listener outbound:api.default"),
    (_misnamed_endpoints, "endpoints api.default: names cluster rpc.default"),
], ids=["tcp-listener-to-missing-cluster", "route-to-missing-cluster", "eds-without-endpoints",
        "rds-without-route", "inline-route-to-missing-cluster", "two-listeners-one-port",
        "endpoints-misnamed"])
def test_check_catches(change: Callable[[dict[str, dict[str, Item]]], Any], problem: str) -> None:
    assert check(_broken(change)) == [problem]


# --- properties -------------------------------------------------------------------------------

NAMESPACES = ("default", "shop")
SERVICE_NAMES = ("api", "db", "web", "cart", "auth")
PORTS = st.sampled_from([None, 80, 5432, 8080, 9000])
DURATIONS = st.sampled_from(["250ms", "1s", "1.5s", "30s", "2m"])
keys = st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(SERVICE_NAMES))


@st.composite
def policies(draw: st.DrawFn, destination: str) -> Any:
    algorithm = draw(st.sampled_from(["round-robin", "least-request", "ring-hash", "random"]))
    spec: dict[str, Any] = {"loadBalancer": {"algorithm": algorithm}}
    if algorithm == "ring-hash":
        spec["loadBalancer"]["hashOn"] = draw(st.sampled_from([{"header": "x-user"},
                                                              {"sourceIP": True}]))
    for key in ("connectTimeout", "requestTimeout", "idleTimeout"):
        if draw(st.booleans()):
            spec[key] = draw(DURATIONS)
    if draw(st.booleans()):
        spec["retries"] = {"attempts": draw(st.integers(0, 10)),
                           "retryOn": draw(st.lists(st.sampled_from(["5xx", "reset",
                                                                     "unavailable"]),
                                                    min_size=1, unique=True))}
    if draw(st.booleans()):
        spec["circuitBreaker"] = draw(st.fixed_dictionaries({}, optional={
            "maxConnections": st.integers(1, 1000), "maxRetries": st.integers(0, 5)}))
    if draw(st.booleans()):
        spec["outlierDetection"] = {"consecutive5xx": draw(st.integers(1, 10))}
    return policy(destination, **spec)


@st.composite
def services(draw: st.DrawFn, key: tuple[str, str]) -> ServiceView:
    namespace, name = key
    upstreams = draw(st.lists(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(
        SERVICE_NAMES), st.none() | st.sampled_from([9100, 9200])), max_size=3,
        unique_by=lambda u: u[:2]))
    found = draw(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 65535)), max_size=4,
                          unique=True))
    return ServiceView(
        namespace, name, draw(PORTS), draw(st.sampled_from(["http", "grpc", "tcp"])),
        upstreams=tuple(upstreams),
        endpoints=tuple(sorted(Endpoint(f"127.0.0.{a}", p, f"{name}-{a}", "node-1")
                               for a, p in found)),
        policy=draw(st.none() | policies(name)),
    )


@st.composite
def gateways(draw: st.DrawFn, key: tuple[str, str]) -> GatewayView:
    listeners = []
    for i in range(draw(st.integers(1, 3))):
        target = st.fixed_dictionaries({"service": st.sampled_from(SERVICE_NAMES)},
                                       optional={"namespace": st.sampled_from(NAMESPACES)})
        if draw(st.booleans()):
            listeners.append({"name": f"l{i}", "port": 5000 + i, "protocol": "tcp",
                              "routes": [draw(target)]})
            continue
        matches = draw(st.lists(st.tuples(st.sampled_from([None, "a.example", "b.example"]),
                                          st.sampled_from(["/", "/api", "/api/v2", "/b"])),
                                min_size=1, max_size=4, unique=True))
        listeners.append({"name": f"l{i}", "port": 8000 + i, "routes": [
            {**draw(target), "pathPrefix": prefix, **({"host": host} if host else {})}
            for host, prefix in matches]})
    return gateway(key[1], *listeners, namespace=key[0])


@st.composite
def catalogs(draw: st.DrawFn) -> MeshView:
    chosen = draw(st.lists(keys, max_size=6, unique=True))
    gateway_keys = draw(st.lists(keys, max_size=2, unique=True))
    return MeshView({k: draw(services(k)) for k in chosen},
                    {k: draw(gateways(k)) for k in gateway_keys},
                    version=draw(st.integers(0, 1000)))


@st.composite
def proxies(draw: st.DrawFn, view: MeshView) -> Proxy:
    """A proxy as the drivers start one: a sidecar's upstreams each on a port of
    their own (process) or on a loopback VIP of their own (docker pod)."""
    kind = draw(st.sampled_from(PROXY_KINDS))
    namespace, name = draw(st.sampled_from(sorted({*view.services, *view.gateways}))
                           if view.services or view.gateways else keys)
    if kind != SIDECAR:
        return Proxy(f"{kind}-0", kind, namespace, name,
                     inbound=draw(st.none() | st.just(("127.0.0.9", 0))))
    me = view.services.get((namespace, name))
    declared = [f"{ns}/{n}" for ns, n, _ in (me.upstreams if me else ())]
    extra = draw(st.lists(keys.map("/".join), max_size=2))
    pod = draw(st.booleans())
    upstreams = {key: (f"127.1.0.{i + 1}", None) if pod else ("127.0.0.1", 21000 + i)
                 for i, key in enumerate(dict.fromkeys(declared + extra))}
    inbound = draw(st.booleans())
    return Proxy(f"sidecar-{name}", SIDECAR, namespace, name,
                 inbound=("127.0.0.9", 15001) if inbound else None,
                 app_port=18080 if inbound else None, upstreams=upstreams)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), view=catalogs())
def test_every_snapshot_is_consistent_and_stably_versioned(data: st.DataObject,
                                                           view: MeshView) -> None:
    shared = Builder(view)
    for _ in range(4):
        proxy = data.draw(proxies(view))
        snap = shared.build(proxy)
        assert check(snap) == []
        again = Builder(view).build(proxy)
        assert {t: snap.versions(t) for t in TYPES} == {t: again.versions(t) for t in TYPES}
        assert snap.same_as(shared.build(proxy))
        assert all(snap.type_version(t) == again.type_version(t) for t in TYPES)
        assert set(SHORT) == set(TYPES)


def test_registered_instances_are_called_in_plaintext_in_an_mtls_mesh() -> None:
    """An instance registered through the API has no sidecar to end mTLS: its
    endpoint says so, and the cluster has a plaintext socket for it."""
    sidecars = endpoints("api", 8080)
    registered = Endpoint("127.0.0.9", 9000, "api-outside", "", plaintext=True)
    api = ServiceView("default", "api", 8080, "http", endpoints=(*sidecars, registered))
    view = MeshView({api.key: api, **{s.key: s for s in [service("web", upstreams=["api"])]}},
                    {}, version=1, mtls_domain="mesh.test")
    snap = Builder(view).build(sidecar("web", "default/api"))
    built = cluster(snap, "api.default")
    assert built.transport_socket.name == "envoy.transport_sockets.tls"  # the sidecars
    assert [(m.name, dict(m.match)) for m in built.transport_socket_matches] == [
        ("plaintext", {"plaintext": True})]
    assignment = snap.of(ENDPOINT)["api.default"].message
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    meta = {lb.endpoint.address.socket_address.port_value:
            dict(lb.metadata.filter_metadata["envoy.transport_socket_match"])
            for lb in assignment.endpoints[0].lb_endpoints}
    assert meta == {8080: {}, 9000: {"plaintext": True}}
