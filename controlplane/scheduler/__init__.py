"""The scheduler: a pure function from a cluster snapshot and the pending
instances to a plan.

``schedule(snapshot, pending, rng) -> Plan`` runs each request through a
pipeline (see README.md): feasibility (:mod:`.feasibility`: node state,
driver, label constraints, required affinity / anti-affinity, host ports,
cpu, memory; each check written once for the fast path and the explanation)
-> scoring (:mod:`.scoring`: binpack fills nodes, spread balances them and
keeps replicas apart, preferred affinity / anti-affinity) -> selection
(:mod:`.select`: a bounded, rng-shuffled walk over the nodes, narrowed to
the least-used values of ``spread_by`` labels). An instance no node can take
gets an explanation that counts every node's reason.

:func:`check_plan` is the plan applier's re-check of a plan against fresh
state before it commits (the applier is the only writer of placements).

The package does no I/O, keeps no state between calls and imports nothing
above :mod:`controlplane.model`; the same inputs and rng seed give the same
plan.
"""

from controlplane.scheduler.check import PlanConflict, check_plan
from controlplane.scheduler.select import candidate_limit, schedule

__all__ = ["PlanConflict", "candidate_limit", "check_plan", "schedule"]
