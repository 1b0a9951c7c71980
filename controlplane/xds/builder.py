"""The xDS builder: ``Builder(view).build(proxy) -> Snapshot``, pure.

Names, the same for every proxy:

- cluster, endpoints and outbound route configuration of a service:
  ``<name>.<namespace>`` (EDS over ADS; its TrafficPolicy shapes the cluster
  and the route);
- a sidecar's listeners: ``inbound`` (on its published address and port,
  forwarding to the app on 127.0.0.1 through the static cluster
  ``local_app``) and ``outbound:<name>.<namespace>`` per declared upstream
  (bound where the proxy's bootstrap asked: a per-service loopback VIP on
  the service's port in a docker pod, a loopback port of its own for a
  process);
- a gateway's listeners ``gateway:<listener>`` with route configurations
  ``gateway:<gateway>:<listener>``;
- a proxyless gRPC client's API listeners: ``<name>`` for services of its
  own namespace and ``<name>.<namespace>`` for any (not external services).

Proxyless clients get clusters gRPC accepts: gRPC has no ``least-request``
(grpcio) and no ``random`` (any gRPC), and NACKs a cluster whose
``lb_policy`` asks for one. Their clusters name the algorithm as a typed
``load_balancing_policy`` with round-robin after it; a client takes the first
policy it knows (gRFC A52). What such a client does instead of the policy is
said in the snapshot's notes (`flotilla proxy-status` shows them).

An external service's cluster (its endpoints from Consul) never uses the
mesh's mTLS: its instances have no mesh identity. Endpoints that speak TLS
carry metadata that picks one of the cluster's transport sockets (one per
server name), which originates TLS to them.

Resources shared by many proxies (clusters, endpoints, outbound routes) are
built once per view and reused, so building for every proxy costs little
more than building for one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import hash_policy_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from controlplane.model.durations import duration_message
from controlplane.model import spiffe_id
from controlplane.model.specs.gateway import GatewayRoute
from controlplane.xds import rbac
from controlplane.xds.mesh import (
    GATEWAY,
    PROXYLESS,
    SIDECAR,
    Endpoint,
    MeshView,
    Proxy,
    ServiceView,
)
from controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Item, Snapshot, snapshot

LOCAL_APP = "local_app"
INBOUND = "inbound"
_LB = {
    "round-robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least-request": cluster_pb2.Cluster.LEAST_REQUEST,
    "ring-hash": cluster_pb2.Cluster.RING_HASH,
    "random": cluster_pb2.Cluster.RANDOM,
}
#: Algorithms proxyless gRPC lacks (grpcio 1.85 has round_robin, ring_hash,
#: weighted round-robin and pick_first): the typed policy a client that has
#: it uses, and what one without it does, in words.
_GRPC_LACKS: dict[str, tuple[Message, str]] = {
    "least-request": (least_request_pb2.LeastRequest(),
                      "least-request: gRPC clients without a least_request policy "
                      "(grpcio, gRPC C++) use round-robin"),
    "random": (random_pb2.Random(), "random: proxyless gRPC has no random policy; "
                                    "round-robin used"),
}
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_name(namespace: str, name: str) -> str:
    return f"{name}.{namespace}"


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _socket(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(
        address=address, port_value=port))


_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.V3,
)
#: Secrets come from the agent's SDS (a static cluster of the bootstrap).
SDS_CLUSTER = "flotilla_sds"
_SDS = config_source_pb2.ConfigSource(
    api_config_source=config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.GRPC,
        transport_api_version=config_source_pb2.V3,
        grpc_services=[grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER))],
    ),
    resource_api_version=config_source_pb2.V3,
)
_MY_CERTIFICATE = [secret_pb2.SdsSecretConfig(name="default", sds_config=_SDS)]
_TRUSTED_ROOTS = secret_pb2.SdsSecretConfig(name="ROOTCA", sds_config=_SDS)
_TLS = "envoy.transport_sockets.tls"
#: Endpoint metadata a cluster's transport_socket_matches look at (Envoy's key).
_SOCKET_MATCH = "envoy.transport_socket_match"
_ALPN = {"grpc": ["h2"], "http": ["http/1.1"]}


def _inbound_tls() -> base_pb2.TransportSocket:
    """A client certificate chaining to the mesh's roots, or no connection."""
    context = tls_pb2.DownstreamTlsContext(
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=_MY_CERTIFICATE,
            validation_context_sds_secret_config=_TRUSTED_ROOTS,
            alpn_protocols=["h2", "http/1.1"],
        ),
    )
    return base_pb2.TransportSocket(name=_TLS, typed_config=_any(context))


def _outbound_tls(sni: str, identity: str, protocol: str) -> base_pb2.TransportSocket:
    """Our certificate; the server's must name the destination's identity."""
    context = tls_pb2.UpstreamTlsContext(
        sni=sni,
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=_MY_CERTIFICATE,
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.URI,
                        matcher=string_pb2.StringMatcher(exact=identity))]),
                validation_context_sds_secret_config=_TRUSTED_ROOTS,
            ),
            alpn_protocols=["h2"] if protocol == "grpc" else ["http/1.1"],
        ),
    )
    return base_pb2.TransportSocket(name=_TLS, typed_config=_any(context))


def _originated_tls(sni: str, ca: str, protocol: str) -> base_pb2.TransportSocket:
    """TLS to a server outside the mesh, sending ``sni``; with ``ca``, the
    server's certificate must chain to it and (given an ``sni``) name it."""
    common = tls_pb2.CommonTlsContext(alpn_protocols=_ALPN.get(protocol, []))
    if ca:
        common.validation_context.trusted_ca.inline_string = ca
        if sni:
            common.validation_context.match_typed_subject_alt_names.append(
                common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.DNS,
                                                 matcher=string_pb2.StringMatcher(exact=sni)))
    context = tls_pb2.UpstreamTlsContext(sni=sni, common_tls_context=common)
    return base_pb2.TransportSocket(name=_TLS, typed_config=_any(context))


def _socket_match(sni: str) -> struct_pb2.Struct:
    """What a TLS endpoint's metadata says, and its cluster's match looks for."""
    match = struct_pb2.Struct()
    match.update({"tls": sni})
    return match


def _plaintext_match() -> struct_pb2.Struct:
    """What a registered instance's endpoint says in an mTLS mesh: no sidecar
    of ours terminates mTLS there."""
    match = struct_pb2.Struct()
    match.update({"plaintext": True})
    return match


def _endpoint_metadata(endpoint: Endpoint) -> base_pb2.Metadata | None:
    if endpoint.tls:
        return base_pb2.Metadata(filter_metadata={_SOCKET_MATCH: _socket_match(endpoint.sni)})
    if endpoint.plaintext:
        return base_pb2.Metadata(filter_metadata={_SOCKET_MATCH: _plaintext_match()})
    return None


_ROUTER = hcm_pb2.HttpFilter(name="envoy.filters.http.router",
                             typed_config=_any(router_pb2.Router()))


def _http2_options() -> dict[str, any_pb2.Any]:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
    return {_HTTP_OPTIONS: _any(options)}


def _hcm(prefix: str, *, rds: str | None = None,
         routes: route_pb2.RouteConfiguration | None = None) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=prefix, codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=[_ROUTER],
    )
    if rds is not None:
        manager.rds.CopyFrom(hcm_pb2.Rds(config_source=_ADS, route_config_name=rds))
    elif routes is not None:
        manager.route_config.CopyFrom(routes)
    return manager


def _listener(name: str, address: str, port: int, network_filter: Message,
              direction: int = base_pb2.OUTBOUND) -> listener_pb2.Listener:
    if isinstance(network_filter, hcm_pb2.HttpConnectionManager):
        filter_name = "envoy.filters.network.http_connection_manager"
    else:
        filter_name = "envoy.filters.network.tcp_proxy"
    return listener_pb2.Listener(
        name=name, address=_socket(address, port), traffic_direction=direction,
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name=filter_name,
                                           typed_config=_any(network_filter))])],
    )


def _algorithm(service: ServiceView) -> str:
    """The load-balancing algorithm its TrafficPolicy asks for."""
    return service.traffic_policy.load_balancer.algorithm


def _typed_policy(config: Message) -> cluster_pb2.LoadBalancingPolicy.Policy:
    return cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(
            name=config.DESCRIPTOR.full_name, typed_config=_any(config)))


def proxyless_notes(service: ServiceView) -> list[str]:
    """What a proxyless gRPC client does differently from what the service's
    TrafficPolicy asks, in words (empty when it does what is asked)."""
    notes = []
    lacking = _GRPC_LACKS.get(_algorithm(service))
    if lacking is not None:
        notes.append(lacking[1])
    hash_on = service.traffic_policy.load_balancer.hash_on
    if hash_on is not None and hash_on.source_ip:
        notes.append("ring-hash on sourceIP: gRPC hashes on headers only; each call "
                     "gets a random hash")
    return notes


class Builder:
    """Builds snapshots from one view; memoizes what proxies share."""

    def __init__(self, view: MeshView) -> None:
        self.view = view
        self._shared: dict[tuple[str, str, str], Item] = {}

    # --- entry point ----------------------------------------------------------

    def build(self, proxy: Proxy) -> Snapshot:
        if proxy.kind == SIDECAR:
            return self._sidecar(proxy)
        if proxy.kind == GATEWAY:
            return self._gateway(proxy)
        if proxy.kind == PROXYLESS:
            return self._proxyless(proxy)
        raise ValueError(f"unknown proxy kind {proxy.kind!r}")

    def same_inputs(self, proxy: Proxy, before: MeshView) -> bool:
        """Would ``proxy``'s snapshot from this view equal the one from
        ``before``? True when every service and gateway it is built from is
        unchanged (so the cache need not rebuild it)."""
        now = self.view
        if proxy.kind == PROXYLESS:
            return now.services == before.services
        own = (proxy.namespace, proxy.name)
        if proxy.kind == SIDECAR and (now.intentions, now.default_intention) != (
                before.intentions, before.default_intention):
            return False  # its inbound RBAC may change
        if proxy.kind == SIDECAR:  # of its own service, only what shapes its sidecar
            mine, was = now.services.get(own), before.services.get(own)
            if (mine and (mine.protocol, mine.upstreams)) != (was and (was.protocol,
                                                                       was.upstreams)):
                return False
        keys = {(k.rpartition("/")[0] or proxy.namespace, k.rpartition("/")[2])
                for k in proxy.upstreams}
        if proxy.kind == GATEWAY:
            key = (proxy.namespace, proxy.name)
            if now.gateways.get(key) != before.gateways.get(key):
                return False
            for gateway in (now.gateways.get(key), before.gateways.get(key)):
                for listener in gateway.listeners if gateway else ():
                    keys |= {(r.namespace or proxy.namespace, r.service)
                             for r in listener.routes}
        return all(now.services.get(k) == before.services.get(k) for k in keys)

    # --- per proxy kind ---------------------------------------------------------

    def _sidecar(self, proxy: Proxy) -> Snapshot:
        items: dict[str, list[Item]] = {CLUSTER: [], ENDPOINT: [], LISTENER: [], ROUTE: []}
        me = self.view.services.get((proxy.namespace, proxy.name))
        if proxy.inbound is not None and proxy.app_port:
            protocol = me.protocol if me else "tcp"
            items[CLUSTER].append(Item(LOCAL_APP, self._local_app(proxy.app_port, protocol)))
            inbound = self._inbound(proxy.inbound, protocol, (proxy.namespace, proxy.name))
            items[LISTENER].append(Item(INBOUND, inbound))
        # Only what the bootstrap bound: the app learnt those addresses at
        # start (an upstream added later comes with a new instance).
        overrides = {(ns, name): port for ns, name, port in (me.upstreams if me else ())}
        for key, (address, bound) in sorted(proxy.upstreams.items()):
            ns, _, name = key.rpartition("/")
            ns = ns or proxy.namespace
            upstream = self.view.services.get((ns, name))
            if upstream is None:
                continue
            port = bound or overrides.get((ns, name)) or upstream.port
            if not port:
                continue
            self._add_service(items, upstream)
            items[LISTENER].append(Item(f"outbound:{cluster_name(ns, name)}",
                                        self._outbound(upstream, address, port)))
        return snapshot(items)

    def _gateway(self, proxy: Proxy) -> Snapshot:
        items: dict[str, list[Item]] = {CLUSTER: [], ENDPOINT: [], LISTENER: [], ROUTE: []}
        gateway = self.view.gateways.get((proxy.namespace, proxy.name))
        address = proxy.inbound[0] if proxy.inbound else "0.0.0.0"
        for listener in gateway.listeners if gateway else ():
            targets: list[tuple[GatewayRoute, ServiceView]] = []
            for route in listener.routes:
                service = self.view.services.get((route.namespace or proxy.namespace,
                                                  route.service))
                if service is not None:
                    self._add_service(items, service)
                    targets.append((route, service))
            if not targets:
                continue
            name, port = listener.name, listener.port
            if listener.protocol == "tcp":
                service = targets[0][1]
                items[LISTENER].append(Item(f"gateway:{name}", _listener(
                    f"gateway:{name}", address, port, self._tcp_proxy(service, f"gw_{name}"))))
                continue
            route_name = f"gateway:{proxy.name}:{name}"
            items[ROUTE].append(Item(route_name, self._gateway_routes(route_name, targets)))
            items[LISTENER].append(Item(f"gateway:{name}", _listener(
                f"gateway:{name}", address, port, _hcm(f"gw_{name}", rds=route_name))))
        return snapshot(items)

    def _proxyless(self, proxy: Proxy) -> Snapshot:
        items: dict[str, list[Item]] = {CLUSTER: [], ENDPOINT: [], LISTENER: [], ROUTE: []}
        notes: list[str] = []
        for (ns, name), service in sorted(self.view.services.items()):
            if service.protocol == "tcp" or service.external:
                continue  # gRPC clients call http/2 services of the mesh only
            self._add_service(items, service, proxyless=True)
            notes += [f"{cluster_name(ns, name)}: {note}" for note in proxyless_notes(service)]
            items[LISTENER].append(self._shared_item(ns, name, "api", self._api_listener))
            if ns == proxy.namespace:
                items[LISTENER].append(self._shared_item(ns, name, "api-short",
                                                         self._api_listener))
        return snapshot(items, notes)

    # --- shared per service ----------------------------------------------------

    def _add_service(self, items: dict[str, list[Item]], service: ServiceView,
                     proxyless: bool = False) -> None:
        ns, name = service.key
        if proxyless:
            items[CLUSTER].append(self._shared_item(ns, name, "cluster-proxyless",
                                                    self._proxyless_cluster))
        else:
            items[CLUSTER].append(self._shared_item(ns, name, "cluster", self._cluster))
        items[ENDPOINT].append(self._shared_item(ns, name, "endpoints", self._endpoints))
        if service.protocol != "tcp":
            items[ROUTE].append(self._shared_item(ns, name, "route", self._route_config))

    def _shared_item(self, ns: str, name: str, what: str, make: Any) -> Item:
        key = (ns, name, what)
        item = self._shared.get(key)
        if item is None:
            service = self.view.services[(ns, name)]
            item_name = name if what == "api-short" else cluster_name(ns, name)
            item = Item(item_name, make(service, item_name))
            self._shared[key] = item
        return item

    def _cluster(self, service: ServiceView, name: str) -> cluster_pb2.Cluster:
        policy = service.traffic_policy
        cluster = cluster_pb2.Cluster(
            name=name, type=cluster_pb2.Cluster.EDS,
            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ADS,
                                                                    service_name=name),
            connect_timeout=duration_message(policy.connect_timeout),
            lb_policy=_LB[_algorithm(service)],
        )
        if service.protocol == "grpc":
            for key, value in _http2_options().items():
                cluster.typed_extension_protocol_options[key].CopyFrom(value)
        if service.external:
            for sni in sorted({e.sni for e in service.endpoints if e.tls}):
                cluster.transport_socket_matches.append(cluster_pb2.Cluster.TransportSocketMatch(
                    name=f"tls:{sni}", match=_socket_match(sni),
                    transport_socket=_originated_tls(sni, service.ca, service.protocol)))
        elif self.view.mtls_domain:
            cluster.transport_socket.CopyFrom(_outbound_tls(
                name, spiffe_id(self.view.mtls_domain, service.namespace, service.name),
                service.protocol))
            if any(e.plaintext for e in service.endpoints):
                cluster.transport_socket_matches.append(cluster_pb2.Cluster.TransportSocketMatch(
                    name="plaintext", match=_plaintext_match(),
                    transport_socket=base_pb2.TransportSocket(
                        name="envoy.transport_sockets.raw_buffer",
                        typed_config=_any(raw_buffer_pb2.RawBuffer()))))
        breaker = policy.circuit_breaker
        if breaker is not None:
            # The schema's fields are Envoy's threshold fields; a breaker
            # setting none of them adds no thresholds.
            thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
            for field in type(breaker).model_fields:
                limit = getattr(breaker, field)
                if limit is not None:
                    getattr(thresholds, field).value = limit
            if thresholds.ListFields():
                cluster.circuit_breakers.thresholds.append(thresholds)
        outlier = policy.outlier_detection
        if outlier is not None:
            cluster.outlier_detection.CopyFrom(outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=wrappers_pb2.UInt32Value(value=outlier.consecutive_5xx),
                interval=duration_message(outlier.interval),
                base_ejection_time=duration_message(outlier.base_ejection_time),
                max_ejection_percent=wrappers_pb2.UInt32Value(value=outlier.max_ejection_percent),
            ))
        return cluster

    def _proxyless_cluster(self, service: ServiceView, name: str) -> cluster_pb2.Cluster:
        """The cluster as gRPC takes it: an algorithm gRPC may lack as a typed
        policy with round-robin after it. gRPC has no SDS: its certificates
        come from the files its bootstrap's certificate provider watches
        (`flotilla bootstrap --proxyless`)."""
        cluster = self._cluster(service, name)
        lacking = _GRPC_LACKS.get(_algorithm(service))
        if lacking is not None:
            cluster.ClearField("lb_policy")
            cluster.load_balancing_policy.CopyFrom(cluster_pb2.LoadBalancingPolicy(policies=[
                _typed_policy(lacking[0]), _typed_policy(round_robin_pb2.RoundRobin())]))
        if not self.view.mtls_domain:
            return cluster
        provider = common_pb2.CertificateProviderPluginInstance
        context = tls_pb2.UpstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_provider_instance=provider(instance_name="default",
                                                       certificate_name="default"),
            validation_context=common_pb2.CertificateValidationContext(
                ca_certificate_provider_instance=provider(instance_name="default",
                                                          certificate_name="ROOTCA"),
                match_subject_alt_names=[string_pb2.StringMatcher(exact=spiffe_id(
                    self.view.mtls_domain, service.namespace, service.name))]),
        ))
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(name=_TLS,
                                                                   typed_config=_any(context)))
        return cluster

    def _endpoints(self, service: ServiceView, name: str) -> endpoint_pb2.ClusterLoadAssignment:
        # One locality, named and weighted: gRPC's proxyless clients refuse
        # or skip localities without.
        return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(region="flotilla"),
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1), lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(
                    endpoint=endpoint_components_pb2.Endpoint(address=_socket(e.address, e.port),
                                                              hostname=e.instance),
                    metadata=_endpoint_metadata(e))
                for e in service.endpoints
            ])
        ] if service.endpoints else [])

    def _route_config(self, service: ServiceView, name: str) -> route_pb2.RouteConfiguration:
        return route_pb2.RouteConfiguration(name=name, virtual_hosts=[rc_pb2.VirtualHost(
            name=name, domains=["*"],
            routes=[rc_pb2.Route(match=rc_pb2.RouteMatch(prefix="/"),
                                 route=self._route_action(service, name))],
        )])

    def _route_action(self, service: ServiceView, cluster: str) -> rc_pb2.RouteAction:
        policy = service.traffic_policy
        action = rc_pb2.RouteAction(
            cluster=cluster,
            # Like a mesh should: no deadline unless the policy sets one (gRPC
            # streams and long polls would break at Envoy's 15 s default).
            timeout=(duration_message(policy.request_timeout) if policy.request_timeout
                     else duration_pb2.Duration()),
        )
        if policy.idle_timeout:
            action.idle_timeout.CopyFrom(duration_message(policy.idle_timeout))
        retries = policy.effective_retries
        retry = rc_pb2.RetryPolicy(
            retry_on=",".join(retries.conditions),
            num_retries=wrappers_pb2.UInt32Value(value=retries.attempts),
        )
        if retries.per_try_timeout:
            retry.per_try_timeout.CopyFrom(duration_message(retries.per_try_timeout))
        action.retry_policy.CopyFrom(retry)
        hash_on = policy.load_balancer.hash_on
        if hash_on is not None and hash_on.header:
            action.hash_policy.append(rc_pb2.RouteAction.HashPolicy(
                header=rc_pb2.RouteAction.HashPolicy.Header(header_name=hash_on.header)))
        elif hash_on is not None and hash_on.source_ip:
            action.hash_policy.append(rc_pb2.RouteAction.HashPolicy(
                connection_properties=rc_pb2.RouteAction.HashPolicy.ConnectionProperties(
                    source_ip=True)))
        return action

    def _api_listener(self, service: ServiceView, name: str) -> listener_pb2.Listener:
        manager = _hcm(name, rds=cluster_name(service.namespace, service.name))
        return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(
            api_listener=_any(manager)))

    # --- per proxy resources -----------------------------------------------------

    @staticmethod
    def _local_app(port: int, protocol: str) -> cluster_pb2.Cluster:
        cluster = cluster_pb2.Cluster(
            name=LOCAL_APP, type=cluster_pb2.Cluster.STATIC,
            connect_timeout=duration_pb2.Duration(seconds=1),
            load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=LOCAL_APP, endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                        address=_socket("127.0.0.1", port)))])]),
        )
        if protocol == "grpc":
            for key, value in _http2_options().items():
                cluster.typed_extension_protocol_options[key].CopyFrom(value)
        return cluster

    def _inbound(self, where: tuple[str, int], protocol: str,
                 me: tuple[str, str]) -> listener_pb2.Listener:
        """From the published port to the app; with mTLS, a client certificate
        from the mesh CA and the intentions (RBAC) come first."""
        domain, view = self.view.mtls_domain, self.view
        if protocol == "tcp":
            network: Message = tcp_proxy_pb2.TcpProxy(stat_prefix=INBOUND, cluster=LOCAL_APP)
        else:
            manager = _hcm(INBOUND, routes=route_pb2.RouteConfiguration(
                name=INBOUND, virtual_hosts=[rc_pb2.VirtualHost(
                    name=INBOUND, domains=["*"], routes=[rc_pb2.Route(
                        match=rc_pb2.RouteMatch(prefix="/"),
                        route=rc_pb2.RouteAction(cluster=LOCAL_APP,
                                                 timeout=duration_pb2.Duration()))])]))
            if domain:
                manager.http_filters.insert(0, hcm_pb2.HttpFilter(
                    name="envoy.filters.http.rbac", typed_config=_any(rbac.http_filter(
                        view.intentions, me, domain, view.default_intention))))
            network = manager
        listener = _listener(INBOUND, where[0], where[1], network, base_pb2.INBOUND)
        if domain:
            chain = listener.filter_chains[0]
            chain.transport_socket.CopyFrom(_inbound_tls())
            if protocol == "tcp":
                chain.filters.insert(0, listener_components_pb2.Filter(
                    name="envoy.filters.network.rbac", typed_config=_any(rbac.network_filter(
                        view.intentions, me, domain, view.default_intention))))
        return listener

    def _outbound(self, upstream: ServiceView, address: str, port: int) -> listener_pb2.Listener:
        name = cluster_name(upstream.namespace, upstream.name)
        if upstream.protocol == "tcp":
            network: Message = self._tcp_proxy(upstream, f"out_{name}")
        else:
            network = _hcm(f"out_{name}", rds=name)
        return _listener(f"outbound:{name}", address, port, network)

    @staticmethod
    def _tcp_proxy(service: ServiceView, prefix: str) -> tcp_proxy_pb2.TcpProxy:
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=prefix,
                                       cluster=cluster_name(service.namespace, service.name))
        # A tcp connection has no headers: its source address is the key.
        if service.traffic_policy.load_balancer.hash_on is not None:
            proxy.hash_policy.append(hash_policy_pb2.HashPolicy(
                source_ip=hash_policy_pb2.HashPolicy.SourceIp()))
        return proxy

    def _gateway_routes(self, name: str, targets: Iterable[tuple[GatewayRoute, ServiceView]]
                        ) -> route_pb2.RouteConfiguration:
        by_host: dict[str, list[tuple[str, ServiceView]]] = {}
        for route, service in targets:
            by_host.setdefault(route.host or "*", []).append((route.path_prefix, service))
        hosts = []
        # Exact hosts before the catch-all; longest prefixes first within a host.
        for host in sorted(by_host, key=lambda h: (h == "*", h)):
            routes = sorted(by_host[host], key=lambda r: (-len(r[0]), r[0]))
            hosts.append(rc_pb2.VirtualHost(
                name=host, domains=[host] if host == "*" else [host, f"{host}:*"],
                routes=[rc_pb2.Route(
                    match=rc_pb2.RouteMatch(prefix=prefix),
                    route=self._route_action(service, cluster_name(*service.key)),
                ) for prefix, service in routes],
            ))
        return route_pb2.RouteConfiguration(name=name, virtual_hosts=hosts)
