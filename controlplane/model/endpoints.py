"""Which instances serve traffic: the one rule the mesh's EDS
(``controlplane.xds``) and the service catalog (``controlplane.catalog``)
share, so that Consul lists exactly the endpoints the sidecars balance over.

An instance Flotilla runs serves when it is placed on a ready node, reports
``healthy`` (or ``running`` without a health check), has a published address
and port (its sidecar's inbound listener), and is not draining.

An instance a client registered over the API (``spec.registered``; no node,
no agent, no sidecar) serves at the address and port it registered while it
exists: its heartbeats keep it, and the control plane's reaper deletes it
once they stop for its TTL. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.model.cluster import NodeState
from controlplane.model.resources import Resource, node_state
from controlplane.model.specs import InstanceSpec

#: Instance states that make an instance an endpoint.
SERVING = ("healthy", "running")


def ready_nodes(nodes: Iterable[Resource]) -> set[str]:
    """Names of the Nodes instances may serve from."""
    return {n.name for n in nodes if node_state(n) is NodeState.READY}


def is_registered(instance: Resource) -> bool:
    """True for an instance a client registered (not run by Flotilla)."""
    return instance.typed(InstanceSpec).registered


def serving_address(instance: Resource, ready: set[str]) -> tuple[str, int] | None:
    """The (address, port) an Instance serves on, or None when it is not an
    endpoint; ``ready`` is :func:`ready_nodes` of the cluster's Nodes."""
    spec, status = instance.typed(InstanceSpec), instance.status
    placed = spec.registered or spec.node in ready
    if (not placed or spec.draining
            or status.get("state") not in SERVING
            or not status.get("address") or not status.get("port")):
        return None
    return str(status["address"]), int(status["port"])
