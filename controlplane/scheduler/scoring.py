"""Scoring: how good is a feasible node for an instance? Higher is better.

``score = fit + affinity bonus - penalty``, where

- **fit** lies in [0, 1]: the node's mean cpu/memory utilisation after the
  placement for ``binpack`` (fill nodes up), one minus that for ``spread``;
- **penalty** is ``REPLICA_PENALTY`` per replica of the same service already
  on the node (replicas spread across nodes by default) plus
  ``ANTI_AFFINITY_PENALTY`` per ``anti_affinity`` service with an instance
  there;
- **bonus** is ``AFFINITY_BONUS`` per ``affinity`` service with an instance
  on the node.

Services are matched in the request's namespace; a service naming itself in
either list is ignored. With all weights at 1, one replica more or less, or
one (anti-)affinity match, outweighs any difference in fit. A node with no
penalty is *clean*: selection counts clean candidates to decide when it has
seen enough.
"""

from __future__ import annotations

from collections.abc import Iterator

from controlplane.model.cluster import PlacementRequest, Strategy
from controlplane.scheduler.state import Allocation

REPLICA_PENALTY = 1.0
AFFINITY_BONUS = 1.0
ANTI_AFFINITY_PENALTY = 1.0


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
        self._replicas: dict[int, int] = alloc.services.get((ns, own), {})
        self._attract = [alloc.services[(ns, s)] for s in dict.fromkeys(request.affinity)
                         if s != own and (ns, s) in alloc.services]
        self._repel = [alloc.services[(ns, s)] for s in dict.fromkeys(request.anti_affinity)
                       if s != own and (ns, s) in alloc.services]

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
        """Nodes holding an instance of an ``affinity`` service, each once."""
        seen: set[int] = set()
        for counts in self._attract:
            for i in counts:
                if i not in seen:
                    seen.add(i)
                    yield i
