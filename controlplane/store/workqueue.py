"""A keyed work queue with per-key exponential backoff, as Kubernetes'
sample-controller uses it::

    key = queue.get()          # blocks; None once shut down
    try:
        sync(key)              # re-reads state, converges idempotently
    except TemporaryError as error:
        record(key, error, queue.add_rate_limited(key))  # backs off alone
    except PermanentError as error:
        record(key, error, None)      # on the object's status; dropped
        queue.forget(key)
    else:
        queue.forget(key)
    finally:
        queue.done(key)

(:func:`sync_one` is that body, :func:`process_next` the whole step.)

Contract:

- A key is in the queue at most once; adding a key that is waiting does
  nothing, adding one that is being processed marks it dirty, and ``done``
  queues it again, so no change is lost and no key is processed by two
  workers at once.
- ``add_after`` and ``add_rate_limited`` delay a key on the queue's
  :class:`~controlplane.model.clock.Clock`; the n-th consecutive failure of a
  key waits ``base * 2**(n-1)`` seconds, at most ``max_delay``; ``forget``
  ends its failure streak.
- Thread-safe; any number of producers and workers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from controlplane.errors import PermanentError, TemporaryError
from controlplane.model.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

#: client-go's defaults are 5 ms to 1000 s; a minute is as long as a user
#: should wait for a fix to be picked up.
BASE_DELAY = 0.005
MAX_DELAY = 60.0


class WorkQueue(Generic[K]):
    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, base_delay: float = BASE_DELAY,
                 max_delay: float = MAX_DELAY) -> None:
        self._clock = clock
        self._base = base_delay
        self._max = max_delay
        self._ready: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._order = itertools.count()
        self._failures: dict[K, int] = {}
        self._shut = False
        self._changed = threading.Condition()

    # --- producers ----------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._changed:
            if self._shut or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._ready.append(key)
                self._changed.notify()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._changed:
            if self._shut:
                return
            due = self._clock.monotonic() + delay
            heapq.heappush(self._delayed, (due, next(self._order), key))
            self._changed.notify()

    def add_rate_limited(self, key: K) -> float:
        """Queue *key* again after its backoff; returns the delay."""
        with self._changed:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        delay: float = min(self._base * 2.0 ** (failures - 1), self._max)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        with self._changed:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        """How many times in a row *key* failed (0 after ``forget``)."""
        with self._changed:
            return self._failures.get(key, 0)

    # --- workers ------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process, waiting up to *timeout* seconds (None:
        until one is ready or the queue shuts down); None when none came."""
        end = None if timeout is None else self._clock.monotonic() + timeout
        with self._changed:
            while True:
                self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                if self._shut:
                    return None
                now = self._clock.monotonic()
                waits = [] if end is None else [end - now]
                if self._delayed:
                    waits.append(self._delayed[0][0] - now)
                wait = min(waits) if waits else None
                if wait is not None and wait <= 0 and end is not None and now >= end:
                    return None
                self._changed.wait(None if wait is None else max(wait, 0.001))

    def get_ready(self) -> list[K]:
        """Every key ready now (none waits): a batch for one pass."""
        batch = []
        while (key := self.get(timeout=0)) is not None:
            batch.append(key)
        return batch

    def done(self, key: K) -> None:
        with self._changed:
            self._processing.discard(key)
            if key in self._dirty:
                self._ready.append(key)
                self._changed.notify()

    def shutdown(self) -> None:
        with self._changed:
            self._shut = True
            self._changed.notify_all()

    def __len__(self) -> int:
        """Keys waiting: ready or delayed (not those being processed)."""
        with self._changed:
            return len(self._ready) + len(self._delayed)

    def _promote_due(self) -> None:
        now = self._clock.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key not in self._dirty:
                self._dirty.add(key)
                if key not in self._processing:
                    self._ready.append(key)


#: Told of every failed sync: the key, the error, and the seconds until the
#: key is tried again (None: a permanent error, not retried until it changes).
Record = Callable[[K, Exception, "float | None"], None]


def sync_one(queue: WorkQueue[K], key: K, sync: Callable[[K], None],
             record: Record[K]) -> bool:
    """Run ``sync(key)`` under the queue's error policy (the caller got *key*
    from the queue and calls ``done`` after); True when it succeeded.

    ``TemporaryError`` and anything unexpected back off and retry;
    ``PermanentError`` is dropped until the key is added again. Either way
    ``record`` (the object's status) says what failed."""
    try:
        sync(key)
    except PermanentError as error:
        log.warning("%s: %s (recorded; not retried until it changes)", key, error)
        queue.forget(key)
        _record(record, queue, key, error, None)
        return False
    except Exception as error:  # noqa: BLE001 - one bad key must not stop the others
        delay = queue.add_rate_limited(key)
        if isinstance(error, TemporaryError):
            log.info("%s: %s; retrying in %.3gs", key, error, delay)
        else:
            log.exception("%s: sync failed; retrying in %.3gs", key, delay)
        _record(record, queue, key, error, delay)
        return False
    queue.forget(key)
    return True


def _record(record: Record[K], queue: WorkQueue[K], key: K, error: Exception,
            delay: float | None) -> None:
    try:
        record(key, error, delay)
    except Exception:  # noqa: BLE001 - recording is best effort; retry the key
        log.exception("%s: recording %s", key, error)
        if delay is None:
            queue.add_rate_limited(key)


def process_next(queue: WorkQueue[K], sync: Callable[[K], None], record: Record[K],
                 timeout: float | None = None) -> bool:
    """One step of a worker: get a key, sync it, mark it done. False when no
    key came within *timeout* (or the queue shut down)."""
    key = queue.get(timeout)
    if key is None:
        return False
    try:
        sync_one(queue, key, sync, record)
    finally:
        queue.done(key)
    return True
