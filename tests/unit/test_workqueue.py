"""The keyed work queue: dedup, dirty-while-processing, per-key backoff, and
the sync policy (temporary errors retry, permanent ones are recorded), on a
fake clock: no sleeps."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.store.workqueue import WorkQueue, process_next, sync_one
from controlplane.errors import PermanentError, TemporaryError
from controlplane.model.clock import FakeClock


def queue(clock: FakeClock | None = None) -> WorkQueue[str]:
    return WorkQueue(clock=clock or FakeClock(), base_delay=1.0, max_delay=8.0)


def test_a_key_waits_once_however_often_it_is_added() -> None:
    q = queue()
    for key in ("a", "b", "a", "a"):
        q.add(key)
    assert q.get_ready() == ["a", "b"]


def test_a_key_added_while_processing_comes_back_after_done_not_before() -> None:
    q = queue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")
    assert q.get(timeout=0) is None  # no second worker gets it meanwhile
    q.done("a")
    assert q.get(timeout=0) == "a"


@pytest.mark.parametrize(("failures", "delays"), [
    (1, [1.0]), (3, [1.0, 2.0, 4.0]), (5, [1.0, 2.0, 4.0, 8.0, 8.0]),
], ids=["first", "doubling", "capped"])
def test_backoff_doubles_per_key_up_to_the_cap(failures: int, delays: list[float]) -> None:
    clock = FakeClock()
    q = queue(clock)
    got = []
    for _ in range(failures):
        got.append(q.add_rate_limited("bad"))
        clock.advance(got[-1] - 0.001)
        assert q.get(timeout=0) is None  # not yet
        clock.advance(0.001)
        assert q.get(timeout=0) == "bad"
        q.done("bad")
    assert got == delays
    q.forget("bad")
    assert q.add_rate_limited("bad") == 1.0


def test_one_failing_key_backs_off_alone() -> None:
    clock = FakeClock()
    q = queue(clock)
    for key in ("a", "bad", "c"):
        q.add(key)
    synced: list[str] = []

    def sync(key: str) -> None:
        if key == "bad":
            raise TemporaryError("Consul is away")
        synced.append(key)

    recorded: list[tuple[str, float | None]] = []
    while process_next(q, sync, lambda k, e, d: recorded.append((k, d)), timeout=0):
        pass
    assert synced == ["a", "c"] and q.failures("bad") == 1 and len(q) == 1
    assert recorded == [("bad", 1.0)]
    clock.advance(1.0)
    assert process_next(q, sync, lambda k, e, d: None, timeout=0)
    assert q.failures("bad") == 2


def test_a_permanent_error_is_recorded_and_dropped() -> None:
    q = queue()
    recorded: list[tuple[str, str, float | None]] = []

    def sync(key: str) -> None:
        raise PermanentError("image flotilla/nope:dev does not exist")

    q.add("web")
    assert process_next(q, sync, lambda k, e, d: recorded.append((k, str(e), d)), timeout=0)
    assert recorded == [("web", "image flotilla/nope:dev does not exist", None)]
    assert len(q) == 0 and q.failures("web") == 0


def test_an_unexpected_error_retries_like_a_temporary_one() -> None:
    q = queue()
    q.add("k")
    key = q.get(timeout=0)
    assert key == "k"
    assert not sync_one(q, key, lambda k: 1 / 0, lambda k, e, d: None)  # type: ignore[func-returns-value]
    q.done(key)
    assert q.failures("k") == 1 and len(q) == 1


def test_shutdown_wakes_a_waiting_worker() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.shutdown()
    worker.join(timeout=10)
    assert got == [None]


def test_a_waiting_worker_gets_a_key_added_later() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    worker.start()
    q.add("late")
    worker.join(timeout=30)
    assert got == ["late"]


@given(st.lists(st.tuples(st.sampled_from(["add", "get", "done"]), st.sampled_from("abc")),
                max_size=60))
def test_no_key_is_ever_processed_twice_at_once_and_none_is_lost(
        steps: list[tuple[str, str]]) -> None:
    q = queue()
    processing: set[str] = set()
    added_since_get: set[str] = set()
    for action, key in steps:
        if action == "add":
            q.add(key)
            added_since_get.add(key)
        elif action == "get":
            got = q.get(timeout=0)
            if got is not None:
                assert got not in processing
                processing.add(got)
                added_since_get.discard(got)
        elif key in processing:
            q.done(key)
            processing.discard(key)
    for key in list(processing):
        q.done(key)
    # Every key added since it was last handed out is still to be processed.
    assert set(q.get_ready()) == added_since_get
