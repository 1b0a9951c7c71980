"""Feasibility: can a node take an instance at all?

Checks run in this order and a node is rejected for the first that fails:

1. node state — only READY nodes take new instances (``node down``,
   ``node draining``);
2. driver — the node offers the requested driver (``no driver docker``);
3. node-label constraints (``missing label zone=b``,
   ``constraint zone in (a,b) not met``);
4. host ports — none already in use on the node (``host port 8080 in use``);
5. cpu, then memory (``insufficient cpu``, ``insufficient memory``).

Checks 1-3 depend only on the node and the request's *class* (driver and
constraints), never on earlier placements, so a pass computes them once per
class (:class:`NodeIndex`). Checks 4-5 read the pass's
:class:`~controlplane.scheduler.state.Allocation`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from controlplane.model.cluster import (
    Capacity,
    Constraint,
    Node,
    NodeState,
    Operator,
    PlacementRequest,
)
from controlplane.scheduler.state import Allocation

INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"

#: What makes requests share static feasibility: (driver, constraints).
NodeClass = tuple[str | None, tuple[Constraint, ...]]


def node_class(request: PlacementRequest) -> NodeClass:
    return (request.driver, request.constraints)


def static_rejection(node: Node, driver: str | None,
                     constraints: Sequence[Constraint]) -> str | None:
    """Why ``node`` can never take a request of this class, or None if it can."""
    if node.state is not NodeState.READY:
        return f"node {node.state.value}"
    if driver is not None and driver not in node.drivers:
        return f"no driver {driver}"
    for constraint in constraints:
        if not constraint.holds(node.labels):
            return constraint.unmet()
    return None


def fit_rejection(alloc: Allocation, i: int, need: Capacity,
                  host_ports: frozenset[int]) -> str | None:
    """Why node ``i`` cannot take ``need`` and ``host_ports`` now, or None."""
    in_use = alloc.ports[i] & host_ports
    if in_use:
        return f"host port {min(in_use)} in use"
    if alloc.free_cpu[i] < need.cpu_millis:
        return INSUFFICIENT_CPU
    if alloc.free_mem[i] < need.memory_mib:
        return INSUFFICIENT_MEMORY
    return None


class NodeIndex:
    """The nodes of one pass in its shuffled order, found by class.

    Nodes with a given label are indexed on first need, so a class with an
    ``=`` or ``in`` constraint filters only the nodes carrying a wanted label
    instead of every node. Owned by one pass; the node tuple never changes.
    """

    def __init__(self, nodes: Sequence[Node], order: Sequence[int]) -> None:
        self._nodes = nodes
        self._order = order
        self._labelled: dict[tuple[str, str], list[int]] | None = None
        self._rank: list[int] = [0] * len(nodes)
        for rank, i in enumerate(order):
            self._rank[i] = rank

    def feasible(self, cls: NodeClass) -> list[int]:
        """The nodes, in pass order, that pass the static checks for ``cls``
        (those for which :func:`static_rejection` returns None)."""
        driver, constraints = cls
        pool = self._order
        for constraint in constraints:
            if constraint.operator is Operator.EQUAL or constraint.operator is Operator.IN:
                narrowed = self._with_label(constraint.key, constraint.values)
                if len(narrowed) < len(pool):
                    pool = narrowed
        nodes, ready = self._nodes, NodeState.READY
        return [i for i in pool
                if (node := nodes[i]).state is ready
                and (driver is None or driver in node.drivers)
                and all(constraint.holds(node.labels) for constraint in constraints)]

    def _with_label(self, key: str, values: Sequence[str]) -> Sequence[int]:
        if self._labelled is None:
            self._labelled = {}
            for i in self._order:
                for label in self._nodes[i].labels.items():
                    self._labelled.setdefault(label, []).append(i)
        found = [self._labelled.get((key, value), []) for value in values]
        if len(found) == 1:
            return found[0]
        return sorted({i for nodes in found for i in nodes}, key=self._rank.__getitem__)


def detail(reason: str, need: Capacity, free: Capacity, *, free_label: str = "free") -> str:
    """``reason`` with the amounts behind it, for cpu and memory rejections:
    ``insufficient memory (need 512 MiB, free 256 MiB)``."""
    if reason == INSUFFICIENT_CPU:
        wanted, left, unit = need.cpu_millis, free.cpu_millis, "millicores"
    elif reason == INSUFFICIENT_MEMORY:
        wanted, left, unit = need.memory_mib, free.memory_mib, "MiB"
    else:
        return reason
    return f"{reason} (need {wanted} {unit}, {free_label} {max(left, 0)} {unit})"


def explain(alloc: Allocation, request: PlacementRequest) -> str:
    """Why no node fits ``request``, counting each node's first failed check:
    ``0/3 nodes fit: 2 insufficient memory (need 512 MiB, max free 256 MiB),
    1 missing label zone=b``.

    Visits every node; call it only once the request is known not to fit.
    """
    nodes = alloc.nodes
    if not nodes:
        return "0/0 nodes fit: the cluster has no nodes"
    need, ports = request.resources, request.host_ports
    counts: dict[str, int] = {}
    #: The most free cpu among nodes short of cpu, and memory among those short of memory.
    most_cpu = most_mem = -sys.maxsize
    fitting = 0
    for i, node in enumerate(nodes):
        reason = (static_rejection(node, request.driver, request.constraints)
                  or fit_rejection(alloc, i, need, ports))
        if reason is None:
            fitting += 1
            continue
        counts[reason] = counts.get(reason, 0) + 1
        if reason == INSUFFICIENT_CPU:
            most_cpu = max(most_cpu, alloc.free_cpu[i])
        elif reason == INSUFFICIENT_MEMORY:
            most_mem = max(most_mem, alloc.free_mem[i])
    most_free = Capacity(most_cpu, most_mem)
    parts = []
    for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        parts.append(f"{count} {detail(reason, need, most_free, free_label='max free')}")
    return f"{fitting}/{len(nodes)} nodes fit: " + ", ".join(parts)
