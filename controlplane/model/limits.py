"""Bounds on what one object may ask for, so that one apply cannot take the
server down (a million replicas is a million Instance objects)."""

from __future__ import annotations

from controlplane.model.resources import Resource
from controlplane.model.specs import GatewaySpec, ServiceSpec
from controlplane.model.types import HARD_MAX_REPLICAS

__all__ = ["DEFAULT_MAX_REPLICAS", "HARD_MAX_REPLICAS", "MAX_REQUEST_BYTES",
           "MAX_RESPONSE_BYTES", "replicas_of"]

#: The largest request the server takes (an apply of 16 ConfigMaps at their
#: 1 MiB bound fits), and the largest response a client takes (a list of
#: everything).
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

#: The most replicas one Service or Gateway may ask for, unless the server
#: is started with another ``--max-replicas`` (at most HARD_MAX_REPLICAS,
#: the schema's bound).
DEFAULT_MAX_REPLICAS = 10_000


def replicas_of(resource: Resource) -> int:
    """How many instances ``resource`` asks for (0 for kinds that run none)."""
    if isinstance(resource.spec, ServiceSpec):
        return resource.spec.desired_replicas
    if isinstance(resource.spec, GatewaySpec):
        return resource.spec.replicas
    return 0
