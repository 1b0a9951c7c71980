"""Leader election among control-plane replicas, with a Consul session and lock.

Each replica registers a TTL check of its own on its Consul agent and keeps
it passing; its session is bound to that check (and the agent's serfHealth)
with no lock-delay, and it tries to acquire ``<prefix>/leader`` with it. A
replica that dies stops passing its check, Consul invalidates the session
within the check's TTL and releases the lock, and another replica acquires
it on its next try: a takeover within about ``ttl + interval`` seconds.

Only the leader schedules, reconciles, advances root rotations and writes
the catalog; every replica serves the API (writes go through the store's
replicated log) and xDS. Without a Consul store there is one replica, and it
is always the leader (``Solo``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from controlplane.store.consul import ConsulHttp

log = logging.getLogger(__name__)


class Solo:
    """The one replica of a single-server control plane: always the leader."""

    def is_leader(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ConsulLeader:
    def __init__(self, http: ConsulHttp, prefix: str, identity: str, *,
                 ttl: float = 4.0, interval: float = 1.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._http = http
        self._key = f"{prefix}/leader"
        #: What the lock holds: this replica's API address (for operators).
        self.identity = identity
        self._check = f"flotilla-server-{uuid.uuid4().hex[:12]}"
        self._ttl = ttl
        self._interval = interval
        self._on_change = on_change
        self._session = ""
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def is_leader(self) -> bool:
        return self._leader.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Step down at once (the lock is released for the others)."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            if self._session:
                self._http.call("PUT", f"/v1/kv/{self._key}?release={self._session}",
                                self.identity)
                self._http.call("PUT", f"/v1/session/destroy/{self._session}")
            self._http.call("PUT", f"/v1/agent/check/deregister/{self._check}")
        except Exception as error:  # noqa: BLE001 - Consul away: the TTL frees the lock
            log.warning("stepping down: %s", error)
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader == self._leader.is_set():
            return
        if leader:
            self._leader.set()
            log.info("this replica (%s) is the leader", self.identity)
        else:
            self._leader.clear()
            log.warning("this replica (%s) is no longer the leader", self.identity)
        if self._on_change is not None:
            self._on_change(leader)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._campaign()
            except Exception as error:  # noqa: BLE001 - Consul away: not leader, retry
                log.warning("leader election: %s; retrying", error)
                self._set(False)
                self._session = ""
            self._stop.wait(self._interval)

    def _campaign(self) -> None:
        if not self._session:
            self._http.call("PUT", "/v1/agent/check/register", {
                "ID": self._check, "Name": f"flotilla server {self.identity}",
                "TTL": f"{self._ttl:g}s", "Status": "passing"})
            _, created, _ = self._http.call("PUT", "/v1/session/create", {
                "Name": f"flotilla leader {self.identity}", "LockDelay": "0s",
                "Behavior": "release", "Checks": ["serfHealth", self._check]})
            self._session = str(created["ID"])
        self._http.call("PUT", f"/v1/agent/check/pass/{self._check}")
        status, holder, _ = self._http.call("GET", f"/v1/kv/{self._key}")
        held_by = (holder[0].get("Session") or "") if status == 200 and holder else ""
        if held_by == self._session:
            self._set(True)
            return
        if held_by:
            self._set(False)
            return
        _, acquired, _ = self._http.call(
            "PUT", f"/v1/kv/{self._key}?acquire={self._session}", self.identity)
        if acquired is not True:
            # Maybe our session was invalidated (the check went critical): a new one.
            status, info, _ = self._http.call("GET", f"/v1/session/info/{self._session}")
            if not info:
                self._session = ""
        self._set(acquired is True)
