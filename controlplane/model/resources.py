"""Resources as stored: identity, metadata, a validated spec and a status.

Contract: ``spec`` is its kind's frozen model
(:data:`controlplane.model.specs.SPEC_TYPES`); a mapping given instead (the
store's JSON form, a test's literal) is decoded once, when the ``Resource`` is
built. ``status`` is a JSON-compatible value (dict, list, str, int, float,
bool, None). Neither is mutated after construction: build a new ``Resource``
with :func:`dataclasses.replace` instead. ``typed(SpecType)`` narrows ``spec``
to the model a reader expects.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane.model.cluster import NodeState
from controlplane.model.specs import SPEC_TYPES, NodeSpec, Schema

S = TypeVar("S", bound=Schema)

API_VERSION = "flotilla.dev/v1"
DEFAULT_NAMESPACE = "default"

#: Every kind users apply, in the order `flotilla get` lists them.
KINDS = ("Service", "TrafficPolicy", "Intention", "Gateway", "ConfigMap", "Secret")
#: Kinds Flotilla itself writes: readable and deletable, never applied.
SYSTEM_KINDS = ("Node", "Instance", "Certificate")

#: The label every Instance carries with its Service's name.
SERVICE_LABEL = "flotilla.dev/service"
#: The namespace every Node object lives in: nodes belong to the cluster.
NODE_NAMESPACE = "cluster"


def spiffe_id(trust_domain: str, namespace: str, service: str) -> str:
    """A service's identity in the mesh (its certificates' URI SAN)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/svc/{service}"


def node_spiffe_id(trust_domain: str, node: str) -> str:
    """A node agent's identity towards the control plane."""
    return f"spiffe://{trust_domain}/node/{node}"


def control_plane_spiffe_id(trust_domain: str) -> str:
    """The control plane's identity on its agent port."""
    return f"spiffe://{trust_domain}/control-plane"


def node_state(node: Resource) -> NodeState:
    """A Node's state: READY, DOWN, DRAINING for a ready node an operator
    drains, or REVOKED."""
    return node_state_of(node.typed(NodeSpec), node.status)


def node_state_of(spec: NodeSpec, status: Mapping[str, Any]) -> NodeState:
    """:func:`node_state` from a Node's spec and status (as a client reads them)."""
    if spec.revoked:
        return NodeState.REVOKED
    try:
        state = NodeState(str(status.get("state", "ready")))
    except ValueError:
        return NodeState.DOWN  # a state this version does not know: place nothing there
    return NodeState.DRAINING if state is NodeState.READY and spec.drain else state


def decode_spec(kind: str, spec: Mapping[str, Any]) -> Schema:
    """*spec*'s JSON form as its kind's model. Raises ``KeyError`` for a kind
    Flotilla does not know, pydantic's ``ValidationError`` for a spec its
    kind's schema refuses."""
    model = SPEC_TYPES[kind].model_validate(spec)
    normalize = getattr(model, "normalized", None)
    return model if normalize is None else normalize()


@dataclass(frozen=True, order=True)
class ObjectKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    #: Its kind's model; a mapping is decoded (see the module's contract).
    spec: Schema = field(default_factory=dict)  # type: ignore[assignment]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    #: Set by the store. ``resource_version`` on input is a precondition.
    uid: str = ""
    resource_version: int = 0
    generation: int = 0
    #: Unix seconds, set by the store.
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.kind, self.namespace, self.name)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, Schema):
            object.__setattr__(self, "spec", decode_spec(self.kind, self.spec))

    def typed(self, spec_type: type[S]) -> S:
        """``spec`` as *spec_type*; a ``TypeError`` when the kind has another."""
        model = self.spec
        if not isinstance(model, spec_type):
            raise TypeError(f"{self.key} has a {type(model).__name__}, "
                            f"not a {spec_type.__name__}")
        return model

    def same_content(self, other: Resource) -> bool:
        """True when applying ``other`` over ``self`` would change nothing."""
        return (
            self.spec == other.spec
            and dict(self.labels) == dict(other.labels)
            and dict(self.annotations) == dict(other.annotations)
        )


@dataclass(frozen=True)
class Reference:
    """``source`` points at ``target`` through the field at ``path``."""

    source: ObjectKey
    path: str
    target: ObjectKey


class ApplyAction(enum.Enum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class ApplyOutcome:
    resource: Resource
    action: ApplyAction


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    resource: Resource
    resource_version: int
