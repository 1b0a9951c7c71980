"""The registry reconciler: the only writer of Flotilla's entries in Consul.

One thread. Every serving instance (what EDS publishes) is registered in
Consul with a TTL check that starts passing; the registry passes each check
every few seconds while its instance serves, and deregisters the entry when
the instance stops serving or goes away. If the control plane itself goes
away, the checks expire (``CHECK_TTL``) and Consul drops the entries a minute
later, so the catalog never keeps advertising what nobody vouches for.

Two kinds of pass (:meth:`Registry.sync`):

- after a store change to Instances, Services or Nodes, an *incremental*
  pass compares the desired entries with what the registry last wrote and
  sends only the difference;
- every ``period`` seconds, a *full* pass (anti-entropy) reads the agent's
  services and checks and repairs everything: Flotilla-managed entries no
  live instance backs are removed, missing or altered ones registered again,
  checks that are not passing passed — which also restores a Consul that
  restarted empty.

When Consul cannot be reached the pass stops, the error is logged once, and
the next full pass comes after a backoff (doubling up to ``max_backoff``):
nothing else in the control plane waits for Consul.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from controlplane.catalog.registrations import (
    CHECK_TTL,
    Registration,
    SyncPlan,
    desired,
    plan,
    registration_of,
)
from controlplane.errors import FlotillaError, OutOfRange, PermissionDenied, TemporaryError
from controlplane.store import SqliteStore

log = logging.getLogger("flotilla.catalog")

#: The kinds whose changes can change the desired entries.
WATCHED_KINDS = ("Instance", "Service", "Node")


class Catalog(Protocol):
    """What the registry needs of a service catalog (``ConsulCatalog``).
    Failures raise ``TemporaryError`` (unreachable), ``PermissionDenied`` or
    ``UserError`` (a request rejected)."""

    def services(self) -> Mapping[str, Mapping[str, Any]]: ...

    def checks(self) -> Mapping[str, str]: ...

    def register(self, entry: Registration) -> None: ...

    def deregister(self, entry_id: str) -> None: ...

    def pass_check(self, check_id: str) -> bool: ...


class Registry:
    """Keeps the catalog's Flotilla entries equal to the store's serving
    instances. ``start()``/``stop()`` run the loop; ``sync()`` runs one pass
    (for tests, and only while the loop is not running: the registry's state
    belongs to one thread)."""

    def __init__(self, store: SqliteStore, catalog: Catalog, *, period: float = 2.0,
                 refresh_after: float = CHECK_TTL / 3, max_backoff: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._catalog = catalog
        self._period = period
        self._refresh_after = refresh_after
        self._max_backoff = max_backoff
        self._clock = clock
        #: What the registry believes the catalog holds of Flotilla's, by
        #: entry ID; None until a full pass has read it (or after a failure).
        self._known: dict[str, Registration] | None = None
        #: Entry ID -> clock time its check was last passed or registered.
        self._passed: dict[str, float] = {}
        #: The message of the failure that stopped the last pass, if any.
        self._failing = ""
        #: Entry ID -> why the catalog rejected it (logged once per reason).
        self._rejected: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="catalog-registry", daemon=True)

    def start(self) -> None:
        log.info("publishing serving instances to %s", self._catalog)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._store.wake()
        self._thread.join(timeout=10)

    # --- the loop -----------------------------------------------------------------

    def _loop(self) -> None:
        seen = 0
        next_full = 0.0
        backoff = 0.0
        while not self._stop.is_set():
            head = self._store.wait(seen, max(0.0, next_full - self._clock()))
            if self._stop.is_set():
                return
            changed = head > seen and self._touches_catalog(seen, head)
            seen = head
            full = self._clock() >= next_full or self._known is None
            if not (full or changed):
                continue
            try:
                self.sync(full=full)
            except FlotillaError as error:
                backoff = min(max(backoff * 2, 0.5), self._max_backoff)
                self._failed(error, backoff)
                next_full = self._clock() + backoff
                self._stop.wait(backoff)
                continue
            except Exception:  # a bug: keep publishing, the next full pass retries
                log.exception("catalog pass failed")
                self._known = None
                self._stop.wait(1.0)
                continue
            backoff = 0.0
            if self._failing:
                log.info("%s answers again; catalog in sync", self._catalog)
                self._failing = ""
            if full:
                next_full = self._clock() + self._period

    def _touches_catalog(self, after: int, until: int) -> bool:
        try:
            events = self._store.events(after, until=until, limit=100_000)
        except OutOfRange:
            return True
        return any(event.resource.kind in WATCHED_KINDS for event in events)

    def _failed(self, error: FlotillaError, backoff: float) -> None:
        self._known = None  # the next pass reads the catalog again
        message = str(error)
        if message != self._failing:
            level = logging.ERROR if isinstance(error, PermissionDenied) else logging.WARNING
            log.log(level, "%s; retrying every %gs at most", message, self._max_backoff)
            self._failing = message
        else:
            log.debug("%s; retrying in %gs", message, backoff)

    # --- one pass ---------------------------------------------------------------------

    def sync(self, *, full: bool = True) -> SyncPlan:
        """One pass: with ``full`` (or before the first full pass) read the
        catalog, else trust what the registry last wrote. Returns what it
        changed. Raises ``TemporaryError`` or ``PermissionDenied`` when
        Consul fails; a rejected single entry is logged and skipped."""
        wanted = desired(self._store.list("Service"), self._store.list("Instance"),
                         self._store.list("Node"))
        checks: Mapping[str, str] | None = None
        if full or self._known is None:
            actual = {entry_id: found for entry_id, entry in self._catalog.services().items()
                      if (found := registration_of(entry_id, entry)) is not None}
            checks = self._catalog.checks()
        else:
            actual = dict(self._known)
        now = self._clock()
        todo = plan(wanted, actual, checks, self._passed, now, self._refresh_after)
        self._rejected = {k: why for k, why in self._rejected.items() if k in wanted}
        self._known = known = actual
        try:
            self._apply(todo, known, now)
        except (TemporaryError, PermissionDenied):
            self._known = None
            raise
        if todo.deregister or todo.register:
            log.info("catalog: %s", _summary(todo))
        return todo

    def _apply(self, todo: SyncPlan, known: dict[str, Registration], now: float) -> None:
        for entry_id in todo.deregister:
            self._catalog.deregister(entry_id)
            known.pop(entry_id, None)
            self._passed.pop(entry_id, None)
        for entry in todo.register:
            try:
                self._catalog.register(entry)
            except (TemporaryError, PermissionDenied):
                raise
            except FlotillaError as error:  # this entry only: record and go on
                if self._rejected.get(entry.id) != str(error):
                    log.warning("%s; %s stays unregistered", error, entry.id)
                    self._rejected[entry.id] = str(error)
                continue
            self._rejected.pop(entry.id, None)
            known[entry.id] = entry
            self._passed[entry.id] = now
        for entry_id in todo.refresh:
            if self._catalog.pass_check(known[entry_id].check_id):
                self._passed[entry_id] = now
            else:  # gone behind our back: the next pass registers it again
                known.pop(entry_id, None)
                self._passed.pop(entry_id, None)


def _summary(todo: SyncPlan, most: int = 10) -> str:
    def listing(items: list[str]) -> str:
        more = f" and {len(items) - most} more" if len(items) > most else ""
        return ", ".join(items[:most]) + more

    parts = []
    if todo.register:
        parts.append("registered " + listing(
            [f"{e.id} ({e.name} at {e.address}:{e.port})" for e in todo.register]))
    if todo.deregister:
        parts.append("deregistered " + listing(list(todo.deregister)))
    return "; ".join(parts)
