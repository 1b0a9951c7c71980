"""Following the store, one policy for every loop that does.

A :class:`StoreFollower` runs one consumer on a thread of its own:

- it waits for the store to move past its resume point (or for ``idle``
  seconds, or a ``wake``), then lets a burst land (``coalesce`` seconds;
  like ``idle``, a number or a function the consumer answers each round)
  before reading;
- it hands the consumer the events since its resume point in one batch
  (``changed``); a resume point the store has compacted away (``OutOfRange``),
  or more than ``limit`` events at once, make it ``resync`` from a fresh read
  instead, as does a ``resync_every`` period when one is given;
- behind a closed ``gate`` (a replica that is not the leader) it hands
  nothing on, and resyncs when the gate opens: leadership is decided in one
  place, the gate;
- when the consumer raises, the same range is handed on again after
  ``retry`` seconds (consumers are level-triggered: seeing a change twice is
  harmless); the error is logged, never lost silently.

Consumers keep their own state; the follower calls them from its thread only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from controlplane.errors import OutOfRange
from controlplane.model import WatchEvent
from controlplane.model.clock import SYSTEM_CLOCK, Clock
from controlplane.store.sqlite import Store

log = logging.getLogger(__name__)


class Consumer(Protocol):
    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        """The store moved to ``head`` through ``events`` (maybe none: a wake
        or an idle timeout)."""

    def resync(self, head: int) -> None:
        """Start over from a fresh read of the store, at ``head`` or later."""


def always_open() -> bool:
    return True


class StoreFollower:
    def __init__(self, store: Store, consumer: Consumer, *, name: str,
                 gate: Callable[[], bool] = always_open,
                 coalesce: float | Callable[[], float] = 0.0,
                 idle: float | Callable[[], float] = 1.0, limit: int = 100_000,
                 resync_every: float | None = None, retry: float = 1.0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._consumer = consumer
        self._gate = gate
        self._coalesce = coalesce
        self._idle = idle
        self._limit = limit
        self._resync_every = resync_every
        self._retry = retry
        self._clock = clock
        #: The resume point; None until the first resync.
        self.seen: int | None = None
        self._next_resync = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._store.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def step(self) -> None:
        """One round: wait, then hand on what changed (tests call it alone)."""
        idle = self._idle() if callable(self._idle) else self._idle
        if not self._gate():
            self.seen = None  # resync when the gate opens
            # An idle of 0 (a consumer with work due) still looks at the gate
            # only every ``retry`` seconds.
            self._clock.wait(self._stop, idle if idle > 0 else self._retry)
            return
        head = self._store.wait(self.seen or 0, idle)
        if self._stop.is_set():
            return
        coalesce = self._coalesce() if callable(self._coalesce) else self._coalesce
        if self.seen is not None and head > self.seen and coalesce:
            self._stop.wait(coalesce)
            head = self._store.resource_version
        self.hand_on(head)

    def hand_on(self, head: int) -> None:
        """Hand the consumer the store's changes up to ``head`` now, without
        waiting: the events since the resume point, or a resync when one is
        due (tests drive a consumer through it)."""
        due = (self._resync_every is not None
               and self._clock.monotonic() >= self._next_resync)
        if self.seen is None or due:
            self._resync(head)
            return
        events: Sequence[WatchEvent] = ()
        if head > self.seen:
            try:
                events = self._store.events(self.seen, until=head, limit=self._limit)
            except OutOfRange:
                self._resync(head)
                return
            if len(events) >= self._limit:
                self._resync(head)
                return
        self._consumer.changed(events, head)
        self.seen = max(self.seen, head)

    def _resync(self, head: int) -> None:
        self._consumer.resync(head)
        self.seen = head
        if self._resync_every is not None:
            self._next_resync = self._clock.monotonic() + self._resync_every

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - keep following; the same range comes again
                log.exception("%s: handling store changes failed; retrying",
                              self._thread.name)
                self._stop.wait(self._retry)
