"""What the scheduler sees and what it decides: nodes, instances, plans.

Plain frozen dataclasses with no I/O. The controllers build a
:class:`ClusterSnapshot` and the :class:`PlacementRequest` list from stored
Node and Instance objects; :func:`controlplane.scheduler.schedule` turns them
into a :class:`Plan`, which the plan applier re-checks and commits.

Units: cpu in millicores (1000 = one core), memory in MiB. Collections are
immutable (tuples, frozensets); ``Node.labels`` is a mapping nobody mutates.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Capacity:
    """An amount of cpu and memory: a node's size, a request, or what is free."""

    cpu_millis: int = 0
    memory_mib: int = 0

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpu_millis + other.cpu_millis, self.memory_mib + other.memory_mib)

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpu_millis - other.cpu_millis, self.memory_mib - other.memory_mib)

    def fits(self, free: Capacity) -> bool:
        """True when this amount fits into ``free`` in every dimension."""
        return self.cpu_millis <= free.cpu_millis and self.memory_mib <= free.memory_mib

    @staticmethod
    def total(amounts: Iterable[Capacity]) -> Capacity:
        cpu = memory = 0
        for amount in amounts:
            cpu += amount.cpu_millis
            memory += amount.memory_mib
        return Capacity(cpu, memory)

    def __str__(self) -> str:
        return f"{self.cpu_millis} millicores, {self.memory_mib} MiB"


class NodeState(enum.Enum):
    """Only READY nodes receive new placements; a REVOKED node's agent is
    refused altogether (its instances move, as off a DOWN one)."""

    READY = "ready"
    DOWN = "down"
    DRAINING = "draining"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    capacity: Capacity
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The runtime drivers the node's agent offers, e.g. {"docker", "process"}.
    drivers: frozenset[str] = frozenset()
    state: NodeState = NodeState.READY


class Operator(enum.Enum):
    """How a placement constraint compares a node label (manifest spelling)."""

    EQUAL = "="
    NOT_EQUAL = "!="
    IN = "in"
    NOT_IN = "not-in"
    EXISTS = "exists"
    NOT_EXISTS = "not-exists"


#: How many operands each operator takes: (at least, at most).
_ARITY: Mapping[Operator, tuple[int, int | None]] = {
    Operator.EQUAL: (1, 1),
    Operator.NOT_EQUAL: (1, 1),
    Operator.IN: (1, None),
    Operator.NOT_IN: (1, None),
    Operator.EXISTS: (0, 0),
    Operator.NOT_EXISTS: (0, 0),
}


@dataclass(frozen=True)
class Constraint:
    """A hard rule on a node label: ``zone=b``, ``zone in (a,b)``, ``gpu exists``.

    Invariant: ``values`` holds one value for ``=``/``!=``, at least one for
    ``in``/``not-in`` and none for ``exists``/``not-exists``.
    """

    key: str
    operator: Operator = Operator.EQUAL
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        low, high = _ARITY[self.operator]
        if len(self.values) < low or (high is not None and len(self.values) > high):
            wanted = f"{low}" if low == high else f"at least {low}"
            raise ValueError(f"constraint on {self.key!r}: operator {self.operator.value!r} "
                             f"takes {wanted} value(s), got {len(self.values)}")

    @classmethod
    def of(cls, key: str, operator: str = "=", value: str | None = None,
           values: Sequence[str] | None = None) -> Constraint:
        """Build from the manifest's spelling (``spec.placement.constraints[i]``)."""
        operands = (value,) if value is not None else tuple(values or ())
        return cls(key, Operator(operator), operands)

    def holds(self, labels: Mapping[str, str]) -> bool:
        """True when a node with these labels satisfies the constraint."""
        op = self.operator
        if op is Operator.EXISTS:
            return self.key in labels
        if op is Operator.NOT_EXISTS:
            return self.key not in labels
        label = labels.get(self.key)
        if op is Operator.EQUAL or op is Operator.IN:
            return label is not None and label in self.values
        return label is None or label not in self.values

    def unmet(self) -> str:
        """Why a node that fails this constraint was rejected."""
        if self.operator is Operator.EQUAL:
            return f"missing label {self}"
        if self.operator is Operator.EXISTS:
            return f"missing label {self.key}"
        return f"constraint {self} not met"

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EQUAL or op is Operator.NOT_EQUAL:
            return f"{self.key}{op.value}{self.values[0]}"
        if op is Operator.IN or op is Operator.NOT_IN:
            return f"{self.key} {op.value} ({','.join(self.values)})"
        return f"{self.key} {op.value}"


class Strategy(enum.Enum):
    """spread balances load across nodes and keeps a service's replicas
    apart; binpack fills the fullest node first, replicas included."""

    BINPACK = "binpack"
    SPREAD = "spread"


@dataclass(frozen=True)
class PlacementRequest:
    """One pending instance that needs a node.

    The (anti-)affinity fields name services in the same namespace.
    ``affinity`` and ``anti_affinity`` are required: a node without an
    instance of every ``affinity`` service, or with one of an
    ``anti_affinity`` service, is infeasible. The ``preferred_`` forms only
    score. Naming ``service`` itself is ignored in the affinity fields; in
    ``anti_affinity`` it keeps the replicas on distinct nodes, in
    ``preferred_anti_affinity`` it prefers that. ``spread_by`` names node
    label keys whose values the service's instances are balanced across.
    """

    instance_id: str
    namespace: str
    service: str
    resources: Capacity
    #: Ports the instance publishes on its node's address; unique per node.
    host_ports: frozenset[int] = frozenset()
    #: A driver the node must offer; None accepts any node.
    driver: str | None = None
    constraints: tuple[Constraint, ...] = ()
    strategy: Strategy = Strategy.SPREAD
    affinity: tuple[str, ...] = ()
    anti_affinity: tuple[str, ...] = ()
    preferred_affinity: tuple[str, ...] = ()
    preferred_anti_affinity: tuple[str, ...] = ()
    spread_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlacedInstance:
    """An instance already assigned to a node; it holds resources and ports there."""

    id: str
    namespace: str
    service: str
    node: str
    resources: Capacity
    host_ports: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ClusterSnapshot:
    """An immutable view of the cluster at one moment.

    Placed instances on nodes the snapshot does not list hold nothing.
    """

    nodes: tuple[Node, ...]
    placed: tuple[PlacedInstance, ...] = ()

    def allocated(self) -> dict[str, Capacity]:
        """Resources held on each listed node (zero for empty nodes)."""
        held = {node.name: Capacity() for node in self.nodes}
        for instance in self.placed:
            if instance.node in held:
                held[instance.node] = held[instance.node] + instance.resources
        return held


@dataclass(frozen=True)
class Placement:
    """``instance_id`` goes to ``node``; carries what it holds there so the
    plan applier can re-check the plan against fresh state."""

    instance_id: str
    node: str
    resources: Capacity
    host_ports: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Unschedulable:
    """An instance no node could take, and why, e.g.
    ``0/3 nodes fit: 2 insufficient memory (need 512 MiB, max free 256 MiB),
    1 missing label zone=b``."""

    instance_id: str
    explanation: str


@dataclass(frozen=True)
class Plan:
    """The scheduler's answer: every distinct pending instance is in exactly
    one of ``placements`` or ``failures``, each in the order requested."""

    placements: tuple[Placement, ...] = ()
    failures: tuple[Unschedulable, ...] = ()

    def node_of(self, instance_id: str) -> str | None:
        for placement in self.placements:
            if placement.instance_id == instance_id:
                return placement.node
        return None
