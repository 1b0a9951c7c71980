"""The domain model: plain frozen dataclasses with no I/O.

Protobuf conversion happens only at the API edge (``controlplane.server``);
everything between the edge and the store speaks these types.
"""

from controlplane.model.resources import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    KINDS,
    NODE_NAMESPACE,
    SERVICE_LABEL,
    SYSTEM_KINDS,
    ApplyAction,
    ApplyOutcome,
    EventType,
    ObjectKey,
    Reference,
    Resource,
    WatchEvent,
    node_state,
    node_state_of,
    spiffe_id,
    node_spiffe_id,
    control_plane_spiffe_id,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_NAMESPACE",
    "KINDS",
    "NODE_NAMESPACE",
    "SERVICE_LABEL",
    "SYSTEM_KINDS",
    "ApplyAction",
    "ApplyOutcome",
    "EventType",
    "ObjectKey",
    "Reference",
    "Resource",
    "WatchEvent",
    "node_state",
    "node_state_of",
    "spiffe_id",
    "node_spiffe_id",
    "control_plane_spiffe_id",
]
