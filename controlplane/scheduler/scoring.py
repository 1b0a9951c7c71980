"""Scoring: how good is a feasible node for an instance? Higher is better.

``score = fit + affinity bonus - penalty``, where

- **fit** lies in [0, 1]: the node's mean cpu/memory utilisation after the
  placement for ``binpack`` (fill the fullest node first, replicas of the
  same service included), one minus that for ``spread``;
- **penalty** is, for ``spread`` only, ``REPLICA_PENALTY`` per replica of
  the same service already on the node (so spread also keeps replicas
  apart), plus ``ANTI_AFFINITY_PENALTY`` per ``preferred_anti_affinity``
  service with an instance there;
- **bonus** is ``AFFINITY_BONUS`` per ``preferred_affinity`` service with an
  instance on the node.

Services are matched in the request's namespace; a service naming itself is
ignored in ``preferred_affinity`` and counts in ``preferred_anti_affinity``
(its replicas then avoid each other under binpack too). With all weights at
1, one replica more or less, or one preferred (anti-)affinity match,
outweighs any difference in fit. A node with no penalty is *clean*:
selection counts clean candidates to decide when it has seen enough.

The required rules (``affinity``, ``anti_affinity``) are feasibility checks,
and ``spread_by`` ranks nodes before any score does (see :mod:`.select`).
"""

from __future__ import annotations

from collections.abc import Iterator

from controlplane.model.cluster import PlacementRequest, Strategy
from controlplane.scheduler.state import Allocation

REPLICA_PENALTY = 1.0
AFFINITY_BONUS = 1.0
ANTI_AFFINITY_PENALTY = 1.0

_NONE: dict[int, int] = {}


class Scorer:
    """Scores nodes for one request against one allocation.

    Contract: valid only until the allocation records another placement.
    """

    def __init__(self, alloc: Allocation, request: PlacementRequest) -> None:
        self._alloc = alloc
        self._cpu = request.resources.cpu_millis
        self._mem = request.resources.memory_mib
        self._spread = request.strategy is Strategy.SPREAD
        ns, own = request.namespace, request.service
        self._replicas: dict[int, int] = (alloc.services.get((ns, own), _NONE)
                                          if self._spread else _NONE)
        self._attract = self._found(alloc, ns, request.preferred_affinity, own)
        self._repel = self._found(alloc, ns, request.preferred_anti_affinity)

    @staticmethod
    def _found(alloc: Allocation, ns: str, services: tuple[str, ...],
               skip: str | None = None) -> list[dict[int, int]]:
        """The instance counts of those of ``services`` that have instances."""
        if not services:
            return []
        return [alloc.services[(ns, s)] for s in dict.fromkeys(services)
                if s != skip and (ns, s) in alloc.services]

    def fit(self, i: int) -> float:
        alloc = self._alloc
        free = ((alloc.free_cpu[i] - self._cpu) * alloc.inv_cpu[i]
                + (alloc.free_mem[i] - self._mem) * alloc.inv_mem[i]) / 2
        return free if self._spread else 1.0 - free

    def penalty(self, i: int) -> float:
        penalty = REPLICA_PENALTY * self._replicas.get(i, 0)
        for counts in self._repel:
            if i in counts:
                penalty += ANTI_AFFINITY_PENALTY
        return penalty

    def bonus(self, i: int) -> float:
        return AFFINITY_BONUS * sum(1 for counts in self._attract if i in counts)

    def score(self, i: int) -> tuple[float, bool]:
        """The node's score and whether it is clean (no penalty)."""
        penalty = self.penalty(i)
        bonus = self.bonus(i) if self._attract else 0.0
        return self.fit(i) + bonus - penalty, penalty == 0.0

    def attracting(self) -> Iterator[int]:
        """Nodes holding an instance of a ``preferred_affinity`` service, each once."""
        seen: set[int] = set()
        for counts in self._attract:
            for i in counts:
                if i not in seen:
                    seen.add(i)
                    yield i
