"""The plan applier's re-check: does a plan still hold against fresh state?

A plan is computed from a snapshot that may be stale by the time it is
committed (nodes went down, another pass placed instances). The single plan
applier calls :func:`check_plan` with a fresh snapshot and commits only the
placements that raised no conflict; the rest go back to pending.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.model.cluster import ClusterSnapshot, Placement, Plan
from controlplane.scheduler.feasibility import Check, detail, fit_check, static_rejection
from controlplane.scheduler.state import Allocation


@dataclass(frozen=True)
class PlanConflict:
    """A placement that no longer holds, and why."""

    instance_id: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"instance {self.instance_id} on node {self.node}: {self.reason}"


def check_plan(snapshot: ClusterSnapshot, plan: Plan) -> list[PlanConflict]:
    """Re-check every placement of ``plan`` against ``snapshot``, in order.

    A placement conflicts when its instance is already placed (in the
    snapshot or earlier in the plan), its node is gone or not READY, one of
    its host ports is in use there, or the node lacks the cpu or memory.
    Placements that hold count against later ones. An empty list means the
    whole plan may be committed.
    """
    alloc = Allocation(snapshot)
    conflicts: list[PlanConflict] = []
    #: One fit check per shape (cpu, memory, host ports): they read the live allocation.
    fits: dict[tuple[int, int, frozenset[int]], Check] = {}
    for placement in plan.placements:
        need, ports = placement.resources, placement.host_ports
        shape = (need.cpu_millis, need.memory_mib, ports)
        fit = fits.get(shape)
        if fit is None:
            fit = fits[shape] = fit_check(alloc, need, ports)
        reason = _conflict(alloc, placement, fit)
        if reason is None:
            alloc.place(placement.instance_id, placement.node, placement.resources,
                        placement.host_ports)
        else:
            conflicts.append(PlanConflict(placement.instance_id, placement.node, reason))
    return conflicts


def _conflict(alloc: Allocation, placement: Placement, fit: Check) -> str | None:
    where = alloc.placed_on.get(placement.instance_id)
    if where is not None:
        return f"already placed on node {where}"
    i = alloc.index.get(placement.node)
    if i is None:
        return "node is gone"
    reason = static_rejection(alloc.nodes[i], None, ()) or fit(i)
    return None if reason is None else detail(reason, placement.resources, alloc.free(i))
