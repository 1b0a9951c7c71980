"""Feasibility: can a node take an instance at all?

Checks run in this order and a node is rejected for the first that fails:

1. node state — only READY nodes take new instances (``node down``,
   ``node draining``);
2. driver — the node offers the requested driver (``no driver docker``);
3. node-label constraints (``missing label zone=b``,
   ``constraint zone in (a,b) not met``);
4. affinity — the node runs an instance of every ``affinity`` service
   (``no instance of cache``; ``... (none placed yet)`` when it runs nowhere);
5. anti-affinity — the node runs no instance of an ``anti_affinity``
   service (``instance of db present``);
6. host ports — none already in use on the node (``host port 8080 in use``);
7. cpu, then memory (``insufficient cpu``, ``insufficient memory``).

Each check is written once, as a function that says why a node fails it (or
None); the fast path asks only whether the answer is None, the explanation
counts the answers, so the two cannot drift apart. Checks 1-3 depend only on
the node and the request's *class* (driver and constraints), never on
earlier placements, so a pass computes them once per class
(:class:`NodeIndex`, which only narrows the nodes it asks). Checks 4-7 read
the pass's :class:`~controlplane.scheduler.state.Allocation`;
:func:`dynamic_check` composes them for one request.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Sequence

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

#: Why node ``i`` cannot take the instance now, or None if it can. Built for
#: one request and one allocation; valid until the allocation records another
#: placement.
Check = Callable[[int], str | None]


def node_class(request: PlacementRequest) -> NodeClass:
    return (request.driver, request.constraints)


def static_rejection(node: Node, driver: str | None,
                     constraints: Sequence[Constraint]) -> str | None:
    """Checks 1-3: why ``node`` can never take a request of this class, or None."""
    if node.state is not NodeState.READY:
        return f"node {node.state.value}"
    if driver is not None and driver not in node.drivers:
        return f"no driver {driver}"
    for constraint in constraints:
        if not constraint.holds(node.labels):
            return constraint.unmet()
    return None


def fit_check(alloc: Allocation, need: Capacity, host_ports: frozenset[int]) -> Check:
    """Checks 6-7: are ``host_ports`` free on node ``i``, and ``need``'s cpu
    and memory? Reads the allocation as it is at each call, so it stays
    valid while the allocation records placements."""
    free_cpu, free_mem, ports = alloc.free_cpu, alloc.free_mem, alloc.ports
    cpu, memory = need.cpu_millis, need.memory_mib

    def rejection(i: int) -> str | None:
        if host_ports and not ports[i].isdisjoint(host_ports):
            return f"host port {min(ports[i] & host_ports)} in use"
        if free_cpu[i] < cpu:
            return INSUFFICIENT_CPU
        if free_mem[i] < memory:
            return INSUFFICIENT_MEMORY
        return None

    return rejection


def rule_check(alloc: Allocation, request: PlacementRequest) -> Check | None:
    """Checks 4-5, the required (anti-)affinity; None when the request has none.

    Affinity to the request's own service is ignored (its first instance
    could never be placed); anti-affinity to it keeps instances apart.
    """
    if not request.affinity and not request.anti_affinity:
        return None
    ns, own = request.namespace, request.service
    near: list[tuple[Collection[int], str]] = []
    for name in dict.fromkeys(request.affinity):
        if name != own:
            counts = alloc.services.get((ns, name))
            near.append((counts, f"no instance of {name}") if counts
                        else ((), f"no instance of {name} (none placed yet)"))
    away = [(counts, f"instance of {name} present")
            for name in dict.fromkeys(request.anti_affinity)
            if (counts := alloc.services.get((ns, name)))]
    if not near and not away:
        return None

    def rejection(i: int) -> str | None:
        for nodes, reason in near:
            if i not in nodes:
                return reason
        for nodes, reason in away:
            if i in nodes:
                return reason
        return None

    return rejection


def dynamic_check(alloc: Allocation, request: PlacementRequest) -> Check:
    """Checks 4-7 for ``request``: what a node that passed 1-3 must also pass."""
    fit = fit_check(alloc, request.resources, request.host_ports)
    rules = rule_check(alloc, request)
    if rules is None:
        return fit

    def rejection(i: int) -> str | None:
        return rules(i) or fit(i)

    return rejection


def affinity_nodes(alloc: Allocation, request: PlacementRequest) -> Collection[int] | None:
    """A superset of the nodes that pass check 4 (those running the rarest
    ``affinity`` service), or None when the request has no required affinity."""
    if not request.affinity:
        return None
    ns, own = request.namespace, request.service
    wanted = [alloc.services.get((ns, name)) or {} for name in request.affinity if name != own]
    return min(wanted, key=len) if wanted else None


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
        nodes = self._nodes
        return [i for i in pool if static_rejection(nodes[i], driver, constraints) is None]

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
    need, driver, constraints = request.resources, request.driver, request.constraints
    dynamic = dynamic_check(alloc, request)
    counts: dict[str, int] = {}
    #: The most free cpu among nodes short of cpu, and memory among those short of memory.
    most_cpu = most_mem = -sys.maxsize
    fitting = 0
    for i, node in enumerate(nodes):
        reason = static_rejection(node, driver, constraints) or dynamic(i)
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
