"""What the mesh looks like to the xDS builder, as plain immutable values.

``mesh_view(resources, version)`` reads Services, Instances, TrafficPolicies,
Gateways and Nodes as stored (pure). What a proxy announces in its bootstrap
(``Proxy``, ``proxy_of``) is shared with the agents that write the bootstrap:
:mod:`controlplane.model.proxy`.

An instance is an endpoint when it is placed on a ready node, reports
``healthy`` (or ``running`` without a health check), has a published
address and port, and is not draining (:mod:`controlplane.model.endpoints`,
the rule the Consul catalog shares). An external Service's endpoints are the
passing instances Consul lists for it (:mod:`controlplane.model.external`),
given as ``catalog``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controlplane.model import Resource
from controlplane.model.endpoints import ready_nodes as ready_nodes
from controlplane.model.endpoints import is_registered, serving_address
from controlplane.model.external import CatalogEndpoint, CatalogEndpoints, external_name
from controlplane.model.proxy import GATEWAY as GATEWAY
from controlplane.model.proxy import PROXY_KINDS as PROXY_KINDS
from controlplane.model.proxy import PROXYLESS as PROXYLESS
from controlplane.model.proxy import SIDECAR as SIDECAR
from controlplane.model.proxy import Proxy as Proxy
from controlplane.model.proxy import ProxyError as ProxyError
from controlplane.model.proxy import proxy_metadata as proxy_metadata
from controlplane.model.proxy import proxy_of as proxy_of
from controlplane.model.proxy import upstream_key as upstream_key
from controlplane.model.specs import GatewaySpec, InstanceSpec, ServiceSpec, TrafficPolicySpec
from controlplane.model.specs.gateway import Listener
from controlplane.model.specs.service import ExternalTls
from controlplane.xds.intentions import Ranked



@dataclass(frozen=True, order=True)
class Endpoint:
    address: str
    port: int
    instance: str
    node: str
    #: External services only: originate TLS to this endpoint, sending ``sni``
    #: ("" for none).
    tls: bool = False
    sni: str = ""
    #: An instance registered through the API (no sidecar of ours in front of
    #: it): called in plaintext even when the mesh runs mTLS.
    plaintext: bool = False


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    port: int | None
    protocol: str
    #: (namespace, name, local port override or None) of each declared upstream.
    upstreams: tuple[tuple[str, str, int | None], ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    #: The TrafficPolicy spec whose destination is this service, if any.
    policy: TrafficPolicySpec | None = None
    #: Its instances run outside the mesh (from Consul): no mesh identity, so
    #: no mTLS to them; TLS where an endpoint says so.
    external: bool = False
    #: External services: the PEM certificates a TLS endpoint's must chain
    #: to; "" to encrypt without verifying.
    ca: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @functools.cached_property
    def traffic_policy(self) -> TrafficPolicySpec:
        """How traffic to it is shaped: ``policy``, or without one a policy
        with every field at its schema default."""
        return self.policy or TrafficPolicySpec(destination=self.name)


@dataclass(frozen=True)
class GatewayView:
    namespace: str
    name: str
    listeners: tuple[Listener, ...]


@dataclass(frozen=True)
class MeshView:
    services: Mapping[tuple[str, str], ServiceView] = field(default_factory=dict)
    gateways: Mapping[tuple[str, str], GatewayView] = field(default_factory=dict)
    #: The store's resourceVersion this view was read at.
    version: int = 0
    #: The SPIFFE trust domain when every mesh hop is mutual TLS; "" for
    #: plaintext between sidecars.
    mtls_domain: str = ""
    #: Every intention, in the order they are evaluated (enforced with mTLS).
    intentions: tuple[Ranked, ...] = ()
    #: What happens to a call no intention decides: "allow" or "deny".
    default_intention: str = "allow"


def instance_endpoint(instance: Resource, ready: set[str]) -> Endpoint | None:
    served = serving_address(instance, ready)
    if served is None:
        return None
    return Endpoint(served[0], served[1], instance.name, instance.typed(InstanceSpec).node,
                    plaintext=is_registered(instance))


def catalog_endpoint(endpoint: CatalogEndpoint, tls: ExternalTls | None) -> Endpoint:
    """An external service's endpoint; ``tls`` (its ``spec.external.tls``)
    makes it TLS whatever Consul says, and its ``sni`` wins over Consul's."""
    if tls is None:
        return Endpoint(endpoint.address, endpoint.port, endpoint.id, endpoint.node,
                        endpoint.tls, endpoint.sni if endpoint.tls else "")
    return Endpoint(endpoint.address, endpoint.port, endpoint.id, endpoint.node, True,
                    tls.sni or endpoint.sni)


def service_view(service: Resource, instances: Iterable[Resource],
                 policy: TrafficPolicySpec | None, ready_nodes: set[str],
                 catalog: Iterable[CatalogEndpoint] = ()) -> ServiceView:
    """One service as the builder sees it: its port, protocol, upstreams, the
    endpoints among ``instances`` (an external service: ``catalog``, what
    Consul lists for it) and its TrafficPolicy spec."""
    spec = service.typed(ServiceSpec)
    external = spec.external
    tls = external.tls if external is not None else None
    if external is not None:
        endpoints: Iterable[Endpoint | None] = (catalog_endpoint(e, tls) for e in catalog)
    else:
        endpoints = (instance_endpoint(i, ready_nodes) for i in instances)
    return ServiceView(
        namespace=service.namespace, name=service.name,
        port=spec.port,
        protocol=spec.protocol,
        upstreams=tuple((u.namespace or service.namespace, u.name, u.port)
                        for u in spec.upstreams),
        endpoints=tuple(sorted(e for e in endpoints if e is not None)),
        policy=policy,
        external=external is not None,
        ca=tls.ca or "" if tls is not None else "",
    )


def gateway_view(gateway: Resource) -> GatewayView:
    return GatewayView(gateway.namespace, gateway.name,
                       tuple(gateway.typed(GatewaySpec).listeners))


def mesh_view(resources: Iterable[Resource], version: int = 0,
              catalog: CatalogEndpoints | None = None) -> MeshView:
    """The view of ``resources``; ``catalog`` has the endpoints of the
    Consul services external Services follow, by Consul name."""
    catalog = catalog or {}
    by_kind: dict[str, list[Resource]] = {}
    for resource in resources:
        by_kind.setdefault(resource.kind, []).append(resource)
    ready = ready_nodes(by_kind.get("Node", ()))
    instances: dict[tuple[str, str], list[Resource]] = {}
    for instance in by_kind.get("Instance", ()):
        instances.setdefault((instance.namespace, instance.typed(InstanceSpec).service),
                             []).append(instance)
    policies: dict[tuple[str, str], TrafficPolicySpec] = {}
    for policy in by_kind.get("TrafficPolicy", ()):
        spec = policy.typed(TrafficPolicySpec)
        policies[(policy.namespace, spec.destination)] = spec
    services = {
        (s.namespace, s.name): service_view(s, instances.get((s.namespace, s.name), ()),
                                            policies.get((s.namespace, s.name)), ready,
                                            catalog.get(external_name(s) or "", ()))
        for s in by_kind.get("Service", ())
    }
    gateways = {(g.namespace, g.name): gateway_view(g) for g in by_kind.get("Gateway", ())}
    return MeshView(services=services, gateways=gateways, version=version)
