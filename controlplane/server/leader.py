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

from consul import Check

from controlplane.store.consul import ConsulClient

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
    def __init__(self, client: ConsulClient, prefix: str, identity: str, *,
                 ttl: float = 4.0, interval: float = 1.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._client = client
        self._api = client.api
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
                self._client.call("release the leader lock", self._api.kv.put, self._key,
                                  self.identity, release=self._session)
                self._client.call("end the leader session", self._api.session.destroy,
                                  self._session)
            self._client.call("deregister the replica's check",
                              self._api.agent.check.deregister, self._check)
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
        call, api = self._client.call, self._api
        if not self._session:
            call("register the replica's check", api.agent.check.register,
                 f"flotilla server {self.identity}", Check.ttl(f"{self._ttl:g}s"),
                 check_id=self._check)
            # A session takes only passing checks.
            call("pass the replica's check", api.agent.check.ttl_pass, self._check)
            self._session = str(call("start a leader session", api.session.create,
                                     name=f"flotilla leader {self.identity}", lock_delay=0,
                                     behavior="release", checks=["serfHealth", self._check]))
        call("pass the replica's check", api.agent.check.ttl_pass, self._check)
        _, holder = call("read the leader lock", api.kv.get, self._key)
        held_by = str(holder.get("Session") or "") if holder else ""
        if held_by == self._session:
            self._set(True)
            return
        if held_by:
            self._set(False)
            return
        acquired = call("take the leader lock", api.kv.put, self._key, self.identity,
                        acquire=self._session)
        if acquired is not True:
            # Maybe our session was invalidated (the check went critical): a new one.
            _, info = call("read the leader session", api.session.info, self._session)
            if not info:
                self._session = ""
        self._set(acquired is True)
