"""Watch against a real `flotilla server`: a watch from a listed
resourceVersion sees every later change exactly once and in order, a resumed
watch sees exactly what came after its version, a watch from 0 starts with the
current objects as ADDED, and the kind filter holds.

Each watch is consumed by a thread of its own with a client of its own; the
test waits on it with a deadline and closing the client ends the stream."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import pytest

from controlplane import errors
from controlplane.client import Client, Event
from tests.harness import ServerProcess

DEADLINE = 20.0


class Watcher:
    """Consumes ``Client.watch(...)`` on a thread into ``events``.

    Thread-safety: ``events`` is appended by the consumer thread only; read it
    through ``wait_for`` (which copies under the lock) or after ``close``.
    """

    def __init__(self, server: ServerProcess, kind: str = "", resource_version: int = 0) -> None:
        self._client = server.client()
        self._kind = kind
        self._resource_version = resource_version
        self._events: list[Event] = []
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._consume, daemon=True,
                                        name=f"watch-{kind or 'all'}-{resource_version}")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the stream (closing the channel ends it) and join the thread."""
        self._client.close()
        self._thread.join(timeout=DEADLINE)
        assert not self._thread.is_alive(), "watch thread did not end after its channel closed"

    def wait_for(self, count: int, deadline: float = DEADLINE) -> list[Event]:
        """The first ``count`` events, once they have arrived. Raises the
        stream's error if it failed, TimeoutError if the deadline passes first."""
        end = time.monotonic() + deadline
        with self._changed:
            while len(self._events) < count and self._error is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self._events)} of {count} watch events after {deadline}s: "
                        f"{describe(self._events)[-5:]}"
                    )
                self._changed.wait(left)
            if self._error is not None:
                raise self._error
            return list(self._events[:count])

    def _consume(self) -> None:
        try:
            for event in self._client.watch(self._kind, resource_version=self._resource_version):
                with self._changed:
                    self._events.append(event)
                    self._changed.notify_all()
        except BaseException as error:  # reported by wait_for
            with self._changed:
                self._error = error
                self._changed.notify_all()


def configmap(name: str, value: str = "v") -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap", "metadata": {"name": name},
            "spec": {"data": {"value": value}}}


def service(name: str, replicas: int = 0) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"image": "example:dev", "port": 8080, "replicas": replicas}}


def apply(client: Client, doc: dict[str, Any]) -> int:
    """Apply one document; its new resourceVersion."""
    (applied,) = client.apply([(doc, "test")])
    return int(applied.doc["metadata"]["resourceVersion"])


def delete(client: Client, kind: str, name: str) -> None:
    client.delete([(kind, "default", name)])


def describe(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.type, e.doc["kind"], e.doc["metadata"]["name"]) for e in events]


def make_100_changes(client: Client) -> list[tuple[str, str, str]]:
    """40 creates, 30 updates, 30 deletes of ConfigMaps, interleaved; the
    (type, kind, name) each one should show up as on a watch."""
    expected: list[tuple[str, str, str]] = []
    for i in range(40):
        apply(client, configmap(f"cm-{i}"))
        expected.append(("ADDED", "ConfigMap", f"cm-{i}"))
        if i % 4 == 3:  # touch the ones just made while more are still coming
            for j in range(i - 3, i):
                apply(client, configmap(f"cm-{j}", value="changed"))
                expected.append(("MODIFIED", "ConfigMap", f"cm-{j}"))
            delete(client, "ConfigMap", f"cm-{i}")
            expected.append(("DELETED", "ConfigMap", f"cm-{i}"))
    for i in range(0, 40, 2):
        delete(client, "ConfigMap", f"cm-{i}")
        expected.append(("DELETED", "ConfigMap", f"cm-{i}"))
    assert len(expected) == 100, len(expected)
    return expected


def assert_consecutive(events: list[Event], after: int) -> None:
    """One change per resourceVersion, nothing skipped, starting after ``after``."""
    assert [e.resource_version for e in events] == list(range(after + 1, after + 1 + len(events)))


def test_watch_from_listed_version_sees_all_100_changes_in_order(
    server: ServerProcess, client: Client
) -> None:
    apply(client, configmap("before"))  # not part of what the watch should see
    _, listed_at = client.list()

    with Watcher(server, resource_version=listed_at) as watcher:
        expected = make_100_changes(client)
        events = watcher.wait_for(100)
        apply(client, configmap("sentinel"))
        sentinel = watcher.wait_for(101)[-1]

    assert describe(events) == expected
    assert_consecutive(events, after=listed_at)
    for event in events:
        if event.type == "DELETED":  # the object as last stored, before the delete
            assert event.doc["metadata"]["resourceVersion"] < event.resource_version
        else:
            assert event.doc["metadata"]["resourceVersion"] == event.resource_version
        want = "changed" if event.type == "MODIFIED" else "v"
        if event.type != "DELETED":
            assert event.doc["spec"]["data"] == {"value": want}
    assert describe([sentinel]) == [("ADDED", "ConfigMap", "sentinel")]
    assert sentinel.resource_version == listed_at + 101


def test_watch_resumed_mid_way_sees_exactly_what_came_after(
    server: ServerProcess, client: Client
) -> None:
    apply(client, configmap("before"))  # so the version to start from is not 0
    _, start = client.list()
    expected = make_100_changes(client)
    with Watcher(server, resource_version=start) as full:
        history = full.wait_for(100)
    assert describe(history) == expected
    middle = history[49].resource_version

    with Watcher(server, resource_version=middle) as resumed:
        tail = resumed.wait_for(50)
        apply(client, configmap("sentinel"))
        sentinel = resumed.wait_for(51)[-1]

    assert [(e.type, e.doc, e.resource_version) for e in tail] == [
        (e.type, e.doc, e.resource_version) for e in history[50:]
    ]
    assert describe([sentinel]) == [("ADDED", "ConfigMap", "sentinel")]
    assert sentinel.resource_version == history[-1].resource_version + 1


def test_watch_from_zero_starts_with_current_objects_as_added(
    server: ServerProcess, client: Client
) -> None:
    for i in range(5):
        apply(client, configmap(f"cm-{i}"))
        apply(client, service(f"svc-{i}"))
    apply(client, configmap("cm-0", value="changed"))
    delete(client, "ConfigMap", "cm-4")
    existing, listed_at = client.list()
    assert len(existing) == 9

    with Watcher(server, resource_version=0) as watcher:
        snapshot = watcher.wait_for(len(existing))
        rv = apply(client, service("svc-0", replicas=2))
        change = watcher.wait_for(len(existing) + 1)[-1]

    assert {e.type for e in snapshot} == {"ADDED"}
    assert sorted((e.doc["kind"], e.doc["metadata"]["name"], e.resource_version, e.doc["spec"])
                  for e in snapshot) == sorted(
        (d["kind"], d["metadata"]["name"], d["metadata"]["resourceVersion"], d["spec"])
        for d in existing
    )
    assert all(e.resource_version <= listed_at for e in snapshot)
    assert describe([change]) == [("MODIFIED", "Service", "svc-0")]
    assert change.resource_version == rv == listed_at + 1
    assert change.doc["spec"]["replicas"] == 2


@pytest.mark.parametrize("from_zero", [True, False], ids=["from-zero", "from-listed"])
def test_watch_filtered_by_kind_sees_only_that_kind(
    server: ServerProcess, client: Client, from_zero: bool
) -> None:
    apply(client, configmap("old-cm"))
    apply(client, service("old-svc"))
    _, listed_at = client.list()
    start = 0 if from_zero else listed_at
    snapshot = [("ADDED", "ConfigMap", "old-cm")] if from_zero else []

    with Watcher(server, kind="ConfigMap", resource_version=start) as watcher:
        # From zero the stream starts with what exists when the server takes
        # the call: have it before changing anything, or a change made first
        # is in the snapshot instead of after it.
        watcher.wait_for(len(snapshot))
        expected = list(snapshot)
        for i in range(10):
            apply(client, service(f"svc-{i}"))
            apply(client, configmap(f"cm-{i}"))
            expected.append(("ADDED", "ConfigMap", f"cm-{i}"))
        delete(client, "Service", "old-svc")
        delete(client, "ConfigMap", "old-cm")
        expected.append(("DELETED", "ConfigMap", "old-cm"))
        apply(client, service("svc-last"))
        apply(client, configmap("sentinel"))
        expected.append(("ADDED", "ConfigMap", "sentinel"))
        events = watcher.wait_for(len(expected))

    assert describe(events) == expected
    changes = [e.resource_version for e in events[len(snapshot):]]
    assert changes == sorted(set(changes))


def test_watch_of_unknown_kind_is_rejected(server: ServerProcess) -> None:
    with Watcher(server, kind="Gizmo") as watcher, pytest.raises(errors.InvalidManifest) as caught:
        watcher.wait_for(1)

    assert "unknown kind 'Gizmo'" in str(caught.value)
