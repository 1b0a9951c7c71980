"""The registry reconciler: the only writer of Flotilla's entries in Consul.

One thread. Every serving instance (what EDS publishes) is an entry on one
of Flotilla's catalog nodes with its check set to passing; the entry is
deregistered when the instance stops serving or goes away. Changes go to
Consul in transactions (up to 56 entries per round trip), so a burst of
instances turning healthy reaches Consul's listing at hundreds per second.

Two kinds of pass (:meth:`Registry.sync`):

- after a store change to Instances, Services or Nodes, an *incremental*
  pass applies the store's events to the desired entries (:class:`Wanted`),
  compares the entries they touched with what the registry last wrote and
  sends only the difference: its cost follows the change, not the number
  of instances;
- every ``period`` seconds (up to ``MAX_PERIOD`` when a full pass takes
  long, with many entries), a *full* pass (anti-entropy) reads the services
  and checks on Flotilla's nodes and repairs everything: Flotilla-managed
  entries no live instance backs are removed, missing or altered ones and
  those whose check is not passing registered again — which also restores a
  Consul that restarted empty.

No Consul agent runs these checks: while the control plane is away its
entries stay as last written (the workloads keep running too), and the first
full pass after it returns repairs whatever changed meanwhile.

When Consul cannot be reached the pass stops, the error is logged once, and
the next full pass comes after a backoff (doubling up to ``max_backoff``):
nothing else in the control plane waits for Consul.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from controlplane.catalog.registrations import (
    CatalogEntry,
    SyncPlan,
    Wanted,
    plan,
    registration_of,
)
from controlplane.model import EventType
from controlplane.errors import FlotillaError, OutOfRange, PermissionDenied
from controlplane.store import Store

log = logging.getLogger(__name__)

#: The kinds whose changes can change the desired entries.
WATCHED_KINDS = ("Instance", "Service", "Node")
#: Seconds a store change waits for more before a pass sends them, when the
#: last pass took ``BURST`` changes or more: a burst of changes goes to
#: Consul in a few full transactions, not one each; a lone change at once.
COALESCE = 0.03
BURST = 5
#: The longest time between two full passes, in seconds, however long they
#: take: what Flotilla did not write is repaired within about this long.
MAX_PERIOD = 5.0


class Catalog(Protocol):
    """What the registry needs of a service catalog (``ConsulCatalog``).
    Failures raise ``TemporaryError`` (unreachable), ``PermissionDenied`` or
    ``UserError`` (the whole request rejected)."""

    def services(self) -> Mapping[str, Mapping[str, Any]]: ...

    def checks(self) -> Mapping[str, str]: ...

    def write(self, register: Sequence[CatalogEntry],
              deregister: Sequence[CatalogEntry] = ()) -> dict[str, str]: ...


class Registry:
    """Keeps the catalog's Flotilla entries equal to the store's serving
    instances. ``start()``/``stop()`` run the loop; ``sync()`` runs one pass
    (for tests, and only while the loop is not running: the registry's state
    belongs to one thread)."""

    def __init__(self, store: Store, catalog: Catalog, *, period: float = 2.0,
                 max_backoff: float = 4.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._catalog = catalog
        self._period = period
        self._max_backoff = max_backoff
        self._clock = clock
        #: What the registry believes the catalog holds of Flotilla's, by
        #: entry ID; None until a full pass has read it (or after a failure).
        self._known: dict[str, CatalogEntry] | None = None
        #: The entries wanted as of store version ``_seen``; None until a
        #: full pass has read the store.
        self._wanted: Wanted | None = None
        self._seen = 0
        #: How many changes the last pass took from the store.
        self._changes = 0
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
        next_full = 0.0
        backoff = 0.0
        while not self._stop.is_set():
            head = self._store.wait(self._seen, max(0.0, next_full - self._clock()))
            if self._stop.is_set():
                return
            full = self._clock() >= next_full or self._known is None
            if not (full or head > self._seen):
                continue
            if not full and self._changes >= BURST:
                self._stop.wait(COALESCE)
            began = self._clock()
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
                # A full pass reads every entry: with many, space them out so
                # they take at most a tenth of the time (within the period cap).
                took = self._clock() - began
                next_full = self._clock() + min(max(self._period, 10 * took), MAX_PERIOD)

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
        set out to change. Raises ``TemporaryError``, ``PermissionDenied`` or
        ``UserError`` when Consul fails the pass; a single entry Consul
        rejects is logged and skipped."""
        touched = self._follow_store()
        wanted = self._wanted
        assert wanted is not None
        checks: Mapping[str, str] | None = None
        if full or self._known is None:
            full = True
            actual = {entry_id: found for entry_id, entry in self._catalog.services().items()
                      if (found := registration_of(entry_id, entry)) is not None}
            checks = self._catalog.checks()
        else:
            actual = self._known
        # Entries Consul rejected are tried again on every pass.
        todo = plan(wanted.entries, actual, checks,
                    only=None if full or touched is None else touched | set(self._rejected))
        if full:
            self._rejected = {k: why for k, why in self._rejected.items()
                              if k in wanted.entries}
        self._known = known = actual
        try:
            self._apply(todo, known)
        except FlotillaError:
            self._known = None
            raise
        if todo:
            log.info("catalog: %s", _summary(todo))
        return todo

    def _follow_store(self) -> set[str] | None:
        """Bring the wanted entries up to the store's head: from the events
        since the last pass, or from a fresh read the first time (and when
        the event history has a gap). Returns the entry IDs the events
        touched (None after a fresh read: every entry)."""
        if self._wanted is not None:
            head = self._store.resource_version
            try:
                events = self._store.events(self._seen, until=head, limit=1_000_000)
            except OutOfRange:
                pass
            else:
                self._seen, self._changes = head, len(events)
                return self._wanted.apply(
                    (e.resource, e.type is EventType.DELETED) for e in events
                    if e.resource.kind in WATCHED_KINDS)
        # Read the version first: events after it may be applied again later,
        # which leaves every object in its latest state all the same.
        self._seen = self._store.resource_version
        self._wanted = Wanted([r for kind in WATCHED_KINDS for r in self._store.list(kind)])
        return None

    def _apply(self, todo: SyncPlan, known: dict[str, CatalogEntry]) -> None:
        if not todo:
            return
        refused = self._catalog.write(todo.register, [known[i] for i in todo.deregister])
        for entry_id in todo.deregister:
            if entry_id not in refused:
                known.pop(entry_id, None)
        for entry in todo.register:
            why = refused.get(entry.id)
            if why is None:
                self._rejected.pop(entry.id, None)
                known[entry.id] = entry
            elif self._rejected.get(entry.id) != why:  # this entry only: record and go on
                log.warning("%s rejected %s (%s at %s:%d): %s; it stays unregistered",
                            self._catalog, entry.id, entry.name, entry.address, entry.port, why)
                self._rejected[entry.id] = why
        for entry_id in todo.deregister:
            if entry_id in refused:
                log.warning("%s refused to deregister %s: %s", self._catalog, entry_id,
                            refused[entry_id])


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
