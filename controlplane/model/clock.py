"""One clock for every loop: monotonic seconds for intervals and deadlines,
wall seconds for timestamps that are stored or shown.

Pure code takes a :class:`Clock` and never calls :mod:`time` itself, so a
test drives it with a :class:`FakeClock` (as trio's ``MockClock`` ships with
trio) instead of sleeping and hoping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: intervals, deadlines."""

    def time(self) -> float:
        """Seconds since the epoch: what is stored or shown to a user."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until *event* is set or *seconds* pass on this clock; returns
        whether the event is set."""


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock that moves only when told (:meth:`advance`); ``wait`` returns
    at once, with the event's state, after moving the clock by *seconds* (a
    fake sleep). Thread-safe."""

    def __init__(self, start: float = 1_000.0, wall: float = 1_800_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = start
        self._offset = wall - start

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        with self._lock:
            return self._monotonic + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._monotonic += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if not event.is_set():
            self.advance(max(0.0, seconds))
        return event.is_set()
