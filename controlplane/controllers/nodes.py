"""Node membership and liveness.

Node objects (kind ``Node``) hold the durable facts: spec = what the agent
declared (address, labels, capacity, drivers, logsEndpoint) plus ``drain`` and
``revoked`` (operator intent); status = ``state`` (ready, down). Heartbeats
are kept in memory only, so reports do not churn the store; a node whose
agent has not reported for ``grace`` seconds is marked down. With several
replicas (``shared``) an agent may report to any of them: the time of its
last report is also written to the Node's status (``heartbeat``, at most
every third of the grace), where the leader's sweep sees it.

Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from controlplane.errors import FieldViolation, InvalidRequest, NotFound, Unauthenticated
from controlplane.model.types import check_dns_label, check_labels
from controlplane.model import NODE_NAMESPACE, ObjectKey, Resource
from controlplane.model.clock import SYSTEM_CLOCK, Clock
from controlplane.model.specs import NodeSpec
from controlplane.model.specs.system import NodeCapacity
from controlplane.store import Store


#: Status key of the wall-clock time of an object's last heartbeat, written
#: when several replicas share heartbeats (nodes, registered instances).
HEARTBEAT = "heartbeat"


def heartbeat_age(status: Mapping[str, Any], now: float) -> float:
    """Seconds from the heartbeat ``status`` records to ``now`` (wall clock;
    huge without one)."""
    return now - float(status.get(HEARTBEAT) or 0)


def with_heartbeat(status: Mapping[str, Any], previous: Mapping[str, Any],
                   period: float, now: float) -> dict[str, Any]:
    """``status`` carrying a heartbeat: a fresh one (``now``, wall clock) when
    ``previous``'s is a third of ``period`` old, else that one (so most
    heartbeats write nothing)."""
    due = heartbeat_age(previous, now) >= period / 3
    return {**status, HEARTBEAT: now if due else float(previous[HEARTBEAT])}


log = logging.getLogger(__name__)


def node_key(name: str) -> ObjectKey:
    return ObjectKey("Node", NODE_NAMESPACE, name)


class NodeRegistry:
    def __init__(self, store: Store, grace: float = 10.0,
                 clock: Clock = SYSTEM_CLOCK, *, shared: bool = False) -> None:
        self._store = store
        self.grace = grace
        self._clock = clock
        self._shared = shared
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # After a restart nobody has reported yet: every node gets a full grace.
        now = clock.monotonic()
        for node in store.list("Node"):
            self._seen[node.name] = now

    def start(self, is_leader: Callable[[], bool], period: float = 1.0) -> None:
        """Node liveness, a loop of its own: ``sweep`` every ``period``
        seconds while ``is_leader()`` (a node marked down is a store event
        the reconciler acts on)."""
        def loop() -> None:
            while not self._stop.wait(min(period, self.grace / 4)):
                try:
                    if is_leader():
                        self.sweep()
                except Exception:  # noqa: BLE001 - keep watching; the next sweep retries
                    log.exception("node liveness sweep failed")

        self._thread = threading.Thread(target=loop, name="node-liveness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def join(self, name: str, address: str, labels: Mapping[str, str], cpu_millis: int,
             memory_mib: int, drivers: Sequence[str], logs_endpoint: str = "") -> Resource:
        problems = []
        checks: list[tuple[str, Callable[[], object]]] = [
            ("name", lambda: check_dns_label(name)),
            ("labels", lambda: check_labels(dict(labels))),
        ]
        for path, check in checks:
            try:
                check()
            except ValueError as error:
                problems.append(FieldViolation(path, str(error)))
        if not address:
            problems.append(FieldViolation("address", "required: the address instances "
                                                      "are reachable on"))
        if cpu_millis <= 0 or memory_mib <= 0:
            problems.append(FieldViolation("capacity", "cpu and memory must be > 0"))
        if problems:
            raise InvalidRequest(problems)
        current = self._store.get(node_key(name))
        kept = current.typed(NodeSpec) if current is not None else NodeSpec()
        spec = NodeSpec(address=address, labels=dict(labels),
                        capacity=NodeCapacity(cpu=cpu_millis, memory=memory_mib),
                        drivers=sorted(drivers), logs_endpoint=logs_endpoint,
                        # What an operator decided outlives the agent's joins.
                        drain=kept.drain, revoked_at=kept.revoked_at)
        base = current or Resource(kind="Node", namespace=NODE_NAMESPACE, name=name)
        self._store.apply([replace(base, spec=spec, resource_version=0)])
        return self.heartbeat(name)

    def heartbeat(self, name: str) -> Resource:
        node = self._store.get(node_key(name))
        if node is None:
            raise NotFound(f"node {name} has not joined; the agent joins first")
        with self._lock:
            self._seen[name] = self._clock.monotonic()
        status: dict[str, Any] = {"state": "ready"}
        if self._shared:
            status = with_heartbeat(status, node.status, self.grace, self._clock.time())
        if dict(node.status) != status:
            node = self._store.write_status(node.key, status) or node
        return node

    def sweep(self) -> list[str]:
        """Mark nodes that stopped reporting as down; returns their names."""
        now, wall = self._clock.monotonic(), self._clock.time()
        downed = []
        for node in self._store.list("Node"):
            with self._lock:
                if self._shared and heartbeat_age(node.status, wall) < self.grace:
                    self._seen[node.name] = now  # it reported to another replica
                seen = self._seen.setdefault(node.name, now)
            if node.status.get("state") != "down" and now - seen > self.grace:
                self._store.write_status(node.key, {
                    "state": "down",
                    "reason": f"no report for {now - seen:.0f}s (grace {self.grace:g}s)",
                })
                downed.append(node.name)
        return downed

    def check_admitted(self, name: str) -> Resource | None:
        """The node (None before its first join); UNAUTHENTICATED when an
        operator revoked it."""
        node = self._store.get(node_key(name))
        if node is not None and node.typed(NodeSpec).revoked:
            raise Unauthenticated(
                f"node {name} is revoked: its agent is refused until an operator runs "
                f"`flotilla revoke {name} --undo`")
        return node

    def revoke(self, name: str, undo: bool = False) -> Resource:
        """Refuse the node's agent (its certificates, and joins under its
        name); its instances move to other nodes. ``undo`` lets it join again
        (certificates issued before the revocation stay refused)."""
        node = self._store.get(node_key(name))
        if node is None:
            raise NotFound(f"node {name} not found")
        spec = current = node.typed(NodeSpec)
        if undo:
            spec = current.model_copy(update={"revoked": False})
        elif not current.revoked:
            spec = current.model_copy(update={
                "revoked": True,
                "revoked_at": datetime.datetime.fromtimestamp(
                    self._clock.time(), datetime.timezone.utc).isoformat()})
        if spec != current:
            self._store.apply([replace(node, spec=spec, resource_version=0)])
        found = self._store.get(node_key(name))
        assert found is not None
        return found

    def drain(self, name: str) -> Resource:
        node = self._store.get(node_key(name))
        if node is None:
            raise NotFound(f"node {name} not found")
        spec = node.typed(NodeSpec)
        if not spec.drain:
            self._store.apply([replace(node, spec=spec.model_copy(update={"drain": True}),
                                       resource_version=0)])
        found = self._store.get(node_key(name))
        assert found is not None
        return found
