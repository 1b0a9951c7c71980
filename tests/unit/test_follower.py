"""The store follower's one policy: resync first, then batches of events; a
compacted resume point, a too-large batch or an opened gate resync; a
failing consumer sees the same range again. Driven step by step."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controlplane.model import Resource, WatchEvent
from controlplane.model.clock import FakeClock
from controlplane.store import Store
from controlplane.store.follower import StoreFollower


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[str]]] = []
        self.fail = 0

    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("a consumer bug")
        self.calls.append(("changed", head, [e.resource.name for e in events]))

    def resync(self, head: int) -> None:
        self.calls.append(("resync", head, []))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    found = Store(tmp_path / "flotilla.db", history=10)
    try:
        yield found
    finally:
        found.close()


def write(store: Store, *names: str) -> int:
    store.apply([Resource(kind="ConfigMap", name=n, spec={"data": {}}) for n in names])
    return store.resource_version


def follower(store: Store, consumer: Recorder, **options: object) -> StoreFollower:
    return StoreFollower(store, consumer, name="test", idle=0, **options)  # type: ignore[arg-type]


def test_a_resync_first_then_the_events_since(store: Store) -> None:
    consumer = Recorder()
    follow = follower(store, consumer)
    first = write(store, "a")
    follow.step()
    second = write(store, "b", "c")
    follow.step()
    follow.step()  # nothing new: an empty change (wakes, catalog posts)
    assert consumer.calls == [("resync", first, []), ("changed", second, ["b", "c"]),
                              ("changed", second, [])]


def test_a_compacted_resume_point_resyncs(store: Store) -> None:
    consumer = Recorder()
    follow = follower(store, consumer)
    follow.step()
    for i in range(1100):  # far past history=10: the store compacts
        write(store, f"m{i}")
    follow.step()
    assert consumer.calls[-1] == ("resync", store.resource_version, [])


def test_a_batch_over_the_limit_resyncs(store: Store) -> None:
    consumer = Recorder()
    follow = follower(store, consumer, limit=2)
    follow.step()
    head = write(store, "a", "b", "c")
    follow.step()
    assert consumer.calls[-1] == ("resync", head, [])


def test_behind_a_closed_gate_nothing_then_a_resync(store: Store) -> None:
    consumer, leading, clock = Recorder(), {"now": False}, FakeClock()
    follow = StoreFollower(store, consumer, name="test", idle=0.5, clock=clock,
                           gate=lambda: leading["now"])
    write(store, "a")
    before = clock.monotonic()
    follow.step()
    assert consumer.calls == []
    assert clock.monotonic() - before == 0.5  # it waits its idle time: no busy loop
    leading["now"] = True
    follow.step()
    assert consumer.calls == [("resync", store.resource_version, [])]


def test_a_failing_consumer_gets_the_same_range_again(store: Store) -> None:
    consumer = Recorder()
    follow = follower(store, consumer)
    follow.step()
    head = write(store, "a")
    consumer.fail = 1
    with pytest.raises(RuntimeError):
        follow.step()
    follow.step()
    assert consumer.calls[-1] == ("changed", head, ["a"])


def test_a_periodic_resync(store: Store) -> None:
    consumer, clock = Recorder(), FakeClock()
    follow = follower(store, consumer, resync_every=5.0, clock=clock)
    follow.step()
    follow.step()
    clock.advance(5.0)
    follow.step()
    assert [c[0] for c in consumer.calls] == ["resync", "changed", "resync"]
