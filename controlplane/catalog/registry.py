"""The registry reconciler: the only writer of Flotilla's entries in Consul.

One thread, a :class:`~controlplane.store.follower.StoreFollower` behind the
leadership gate like every loop that follows the store. Every serving instance (what EDS publishes) is an entry on one
of Flotilla's catalog nodes with its check set to passing; the entry is
deregistered when the instance stops serving or goes away. Changes go to
Consul in transactions (up to 56 entries per round trip), so a burst of
instances turning healthy reaches Consul's listing at hundreds per second.

Two kinds of pass:

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
nothing else in the control plane waits for Consul. While this replica does
not lead, the registry writes nothing; when it becomes the leader it reads
the store and Consul afresh (another leader may have written meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from controlplane.catalog.registrations import (
    CatalogEntry,
    SyncPlan,
    Wanted,
    plan,
    registration_of,
)
from controlplane.errors import FlotillaError, PermissionDenied
from controlplane.model import EventType, WatchEvent
from controlplane.model.clock import SYSTEM_CLOCK, Clock
from controlplane.store import Store
from controlplane.store.follower import StoreFollower, always_open
from controlplane.store.workqueue import WorkQueue

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
#: Backoff of an entry Consul rejected, in seconds: doubling from the base
#: up to the cap for incremental passes (every full pass tries it too).
RETRY_BASE = 0.5
RETRY_MAX = 60.0


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
    instances while ``gate()`` says this replica leads. ``start()``/``stop()``
    run its follower; ``sync()`` runs one pass (for tests, and only while
    it is not started: the registry's state belongs to one thread)."""

    def __init__(self, store: Store, catalog: Catalog, *, period: float = 2.0,
                 max_backoff: float = 4.0, clock: Clock = SYSTEM_CLOCK,
                 gate: Callable[[], bool] = always_open) -> None:
        self._store = store
        self._catalog = catalog
        self._period = period
        self._max_backoff = max_backoff
        self._clock = clock
        #: What the registry believes the catalog holds of Flotilla's, by
        #: entry ID; None until a full pass has read it (or after a failure).
        self._known: dict[str, CatalogEntry] | None = None
        #: The entries wanted as of the follower's resume point; None until
        #: the store was read.
        self._wanted: Wanted | None = None
        #: How many changes the last pass took from the store.
        self._changes = 0
        #: When the next full pass is due (monotonic), and the backoff after
        #: a failed pass (0 while Consul answers).
        self._next_full = 0.0
        self._backoff = 0.0
        #: The message of the failure that stopped the last pass, if any.
        self._failing = ""
        #: Entry ID -> why the catalog rejected it (logged once per reason).
        self._rejected: dict[str, str] = {}
        #: Rejected entries, each tried again by an incremental pass after
        #: its own backoff (a full pass tries every entry).
        self._retries: WorkQueue[str] = WorkQueue(clock=clock, base_delay=RETRY_BASE,
                                                  max_delay=RETRY_MAX)
        #: A pass ``sync`` asks for: True full, False incremental, None by the clock.
        self._forced: bool | None = None
        self._last: SyncPlan = SyncPlan((), ())
        self._follower = StoreFollower(
            store, self, name="catalog-registry", gate=gate, clock=clock,
            coalesce=lambda: COALESCE if self._changes >= BURST else 0.0,
            idle=lambda: max(0.0, self._next_full - self._clock.monotonic()))

    def start(self) -> None:
        log.info("publishing serving instances to %s", self._catalog)
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def sync(self, *, full: bool = True) -> SyncPlan:
        """One pass now: with ``full`` (or before the first full pass) read
        the catalog, else trust what the registry last wrote. Returns what it
        set out to change. Raises ``TemporaryError``, ``PermissionDenied`` or
        ``UserError`` when Consul fails the pass; a single entry Consul
        rejects is logged and skipped."""
        self._forced = full
        try:
            self._follower.hand_on(self._store.resource_version)
        finally:
            self._forced = None
        return self._last

    # --- the follower's consumer ----------------------------------------------------

    def resync(self, head: int) -> None:
        """A fresh read of the store (first, after a gap in its history, and
        whenever this replica becomes the leader): Consul is read afresh too."""
        self._wanted = Wanted([r for kind in WATCHED_KINDS for r in self._store.list(kind)])
        self._known = None
        self._changes = 0
        self._pass(None)

    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        assert self._wanted is not None
        self._changes = len(events)
        touched = self._wanted.apply((e.resource, e.type is EventType.DELETED)
                                     for e in events if e.resource.kind in WATCHED_KINDS)
        self._pass(touched)

    def _pass(self, touched: set[str] | None) -> None:
        """A pass of the entries ``touched`` (None: every one), or a full
        pass when one is due; none while a failed one backs off."""
        now = self._clock.monotonic()
        if self._forced is None and self._known is None and now < self._next_full:
            return  # backing off: the next full pass reads everything anyway
        due = set(self._retries.get_ready())
        for entry_id in due:
            self._retries.done(entry_id)
        if self._forced is None:
            full = now >= self._next_full
            if not (full or touched or due):
                return
        else:
            full = self._forced
        try:
            full = self._sync(None if touched is None else touched | due, full)
        except FlotillaError as error:
            self._known = None  # the next pass reads the catalog again
            if self._forced is not None:
                raise
            self._backoff = min(max(self._backoff * 2, 0.5), self._max_backoff)
            self._failed(error, self._backoff)
            self._next_full = self._clock.monotonic() + self._backoff
            return
        except Exception:
            self._known = None  # a bug: the follower retries; read everything then
            raise
        self._backoff = 0.0
        if self._failing:
            log.info("%s answers again; catalog in sync", self._catalog)
            self._failing = ""
        if full:
            # A full pass reads every entry: with many, space them out so
            # they take at most a tenth of the time (within the period cap).
            took = self._clock.monotonic() - now
            self._next_full = self._clock.monotonic() + min(max(self._period, 10 * took),
                                                            MAX_PERIOD)

    def _failed(self, error: FlotillaError, backoff: float) -> None:
        message = str(error)
        if message != self._failing:
            level = logging.ERROR if isinstance(error, PermissionDenied) else logging.WARNING
            log.log(level, "%s; retrying every %gs at most", message, self._max_backoff)
            self._failing = message
        else:
            log.debug("%s; retrying in %gs", message, backoff)

    # --- one pass ---------------------------------------------------------------------

    def _sync(self, touched: set[str] | None, full: bool) -> bool:
        """One pass; returns whether it read the catalog (a full pass)."""
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
        todo = plan(wanted.entries, actual, checks,
                    only=None if full or touched is None else touched)
        if full:
            self._rejected = {k: why for k, why in self._rejected.items()
                              if k in wanted.entries}
        self._known = known = actual
        self._apply(todo, known)
        self._last = todo
        if todo:
            log.info("catalog: %s", _summary(todo))
        return full

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
                self._retries.forget(entry.id)
                known[entry.id] = entry
                continue
            delay = self._retries.add_rate_limited(entry.id)  # this entry only: go on
            if self._rejected.get(entry.id) != why:
                log.warning("%s rejected %s (%s at %s:%d): %s; it stays unregistered, "
                            "tried again in %.3gs", self._catalog, entry.id, entry.name,
                            entry.address, entry.port, why, delay)
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
