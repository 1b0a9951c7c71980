"""External services: Services whose instances another system runs and
registers in Consul (``spec.external``). Pure.

An external Service runs nowhere in the mesh. Its endpoints are the passing
instances Consul lists under :func:`external_name` that are not Flotilla's
own: :mod:`controlplane.catalog.external` follows them in Consul and hands
them over as :class:`CatalogEndpoint` values, and the xDS view
(:mod:`controlplane.xds`) makes them the endpoints of the Service's cluster.
The server (:mod:`controlplane.server.app`) connects the two.

Whoever registers an instance may mark it as speaking TLS with the Consul
service meta :data:`TLS_META` ``"true"`` and the server name to send in
:data:`SNI_META`; the Service's ``spec.external.tls`` makes every instance
TLS (and may carry the CA that verifies them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.model.resources import Resource
from controlplane.model.specs import ServiceSpec

#: Consul service meta marking an instance that speaks TLS (value ``"true"``).
TLS_META = "flotilla-tls"
#: Consul service meta naming the server name (SNI) to send to that instance.
SNI_META = "flotilla-sni"

@dataclass(frozen=True, order=True)
class CatalogEndpoint:
    """One passing instance of an external service, as Consul lists it."""

    address: str
    port: int
    #: The instance's Consul service ID.
    id: str
    #: The Consul node it is registered on.
    node: str
    #: Originate TLS to it (its meta says ``flotilla-tls: "true"``).
    tls: bool = False
    #: The server name to send (``flotilla-sni``); "" for none.
    sni: str = ""


#: Consul service name -> its endpoints, as the catalog last listed them.
CatalogEndpoints = Mapping[str, tuple[CatalogEndpoint, ...]]


def external_name(service: Resource) -> str | None:
    """The Consul service an external Service follows (``spec.external.service``,
    by default its own name); None for a Service of the mesh."""
    external = service.typed(ServiceSpec).external
    if external is None:
        return None
    return external.service or service.name
