"""Every apply the server acknowledged survives the server being killed.

A writer thread applies distinct ConfigMaps one after another while the test
stops the server part-way, with SIGKILL (a crash) or SIGTERM (a graceful stop,
which must exit 0 within the grace period). A new server on the same data dir
must then hold every acknowledged object with the content and resourceVersion
the apply returned, nothing the writer never sent, and a store that still
reads, writes and passes SQLite's integrity check."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane import errors
from controlplane.client import Client
from tests.harness import ServerProcess

TOTAL = 1_000
STOP_AFTER = 400
DEADLINE = 60.0
#: ServerConfig.grace: seconds in-flight RPCs get on SIGTERM.
GRACE = 5.0
#: Slack on top of the grace period for interpreter exit and process reaping.
EXIT_SLACK = 2.0


def configmap(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i:04d}", "labels": {"batch": "durability"}},
        "spec": {"data": {"index": str(i), "payload": f"value-{i}-" + "x" * (i % 50)}},
    }


@dataclass(frozen=True)
class Acknowledged:
    name: str
    spec: dict[str, Any]
    uid: str
    resource_version: int


@dataclass
class Writer:
    """Applies ``configmap(0..TOTAL-1)`` in order on a thread of its own until
    the first failure. Only the writer thread mutates; read after ``join``."""

    address: str
    acknowledged: list[Acknowledged] = field(default_factory=list)
    in_flight: str | None = None
    failure: BaseException | None = None
    reached: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="durability-writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def join(self, deadline: float = DEADLINE) -> None:
        self._thread.join(deadline)
        assert not self._thread.is_alive(), f"writer still running after {deadline}s"

    def _run(self) -> None:
        with Client(self.address, timeout=10.0) as client:
            for i in range(TOTAL):
                doc = configmap(i)
                self.in_flight = doc["metadata"]["name"]
                try:
                    (applied,) = client.apply([(doc, f"durability#{i}")])
                except errors.FlotillaError as error:
                    self.failure = error
                    return
                self.in_flight = None
                meta = applied.doc["metadata"]
                self.acknowledged.append(Acknowledged(
                    meta["name"], applied.doc["spec"], meta["uid"], meta["resourceVersion"]
                ))
                if len(self.acknowledged) == STOP_AFTER:
                    self.reached.set()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def servers(data_dir: Path) -> Iterator[list[ServerProcess]]:
    """Server processes the test starts on ``data_dir``; all stopped afterwards."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def start(servers: list[ServerProcess], data_dir: Path) -> ServerProcess:
    server = ServerProcess(data_dir)
    servers.append(server)
    return server.start()


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"]
)
def test_acknowledged_applies_survive_a_stop_part_way(
    servers: list[ServerProcess], data_dir: Path, sig: signal.Signals
) -> None:
    first = start(servers, data_dir)
    writer = Writer(first.address).start()
    assert writer.reached.wait(DEADLINE), f"{STOP_AFTER} applies not acknowledged in {DEADLINE}s"

    began = time.monotonic()
    code = first.kill(sig)
    took = time.monotonic() - began
    writer.join()

    if sig == signal.SIGTERM:
        assert code == 0, first.log()
        assert took < GRACE + EXIT_SLACK, f"SIGTERM took {took:.1f}s to stop the server"
    else:
        assert code == -signal.SIGKILL
    acked = writer.acknowledged
    assert STOP_AFTER <= len(acked) < TOTAL, "the server was not stopped part-way"
    # The writer stopped because the server went away (UNAVAILABLE, or CANCELLED
    # for a call that raced the shutdown), not because an apply was refused.
    assert isinstance(writer.failure, errors.FlotillaError), writer.failure
    assert not isinstance(writer.failure, errors.UserError), writer.failure
    # One writer, creates only: each acknowledged apply took the next version.
    assert [a.resource_version for a in acked] == list(range(1, len(acked) + 1))

    second = start(servers, data_dir)
    with second.client() as client:
        docs, listed_at = client.list("ConfigMap")
        stored = {d["metadata"]["name"]: d for d in docs}

        lost = [a.name for a in acked if a.name not in stored]
        assert not lost, f"{len(lost)} acknowledged applies lost, first {lost[:5]}"
        for a in acked:
            meta = stored[a.name]["metadata"]
            assert (stored[a.name]["spec"], meta["uid"], meta["resourceVersion"]) == (
                a.spec, a.uid, a.resource_version
            ), a.name
        # At most the one apply cut off mid-flight may have landed unacknowledged.
        extra = set(stored) - {a.name for a in acked}
        assert extra <= {writer.in_flight}, extra
        versions = [d["metadata"]["resourceVersion"] for d in docs]
        assert len(set(versions)) == len(versions), "duplicate resourceVersions"
        assert listed_at == max(versions)

        # The store is usable: reapplying is a no-op, new writes continue the sequence.
        index = len(acked) - 1
        (same,) = client.apply([(configmap(index), "reapply")])
        assert same.action == "unchanged"
        (new,) = client.apply([(configmap(TOTAL), "after-restart")])
        assert new.action == "created"
        assert new.doc["metadata"]["resourceVersion"] == listed_at + 1
        assert client.get("ConfigMap", "cm-0000")["spec"] == acked[0].spec
        labelled, _ = client.list("ConfigMap", selector={"batch": "durability"})
        assert len(labelled) == len(docs) + 1

    assert second.kill(signal.SIGTERM) == 0, second.log()
    with sqlite3.connect(data_dir / "flotilla.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_sigterm_with_an_open_watch_exits_0_within_the_grace_period(
    servers: list[ServerProcess], data_dir: Path
) -> None:
    """An open Watch stream does not hold shutdown up: the server ends it at
    once, telling the watcher to resume later, and exits 0 with the data intact."""
    first = start(servers, data_dir)
    with first.client() as client:
        client.apply([(configmap(i), f"graceful#{i}") for i in range(10)])
    watching = threading.Event()
    ended = threading.Event()
    failures: list[errors.FlotillaError] = []

    def consume() -> None:
        with first.client() as watcher:
            try:
                for _ in watcher.watch("ConfigMap", resource_version=0):
                    watching.set()
            except errors.TemporaryError as error:  # the server telling it to come back
                failures.append(error)
            ended.set()

    thread = threading.Thread(target=consume, name="graceful-watch", daemon=True)
    thread.start()
    assert watching.wait(DEADLINE), "the watch never delivered its first event"

    began = time.monotonic()
    code = first.kill(signal.SIGTERM)
    took = time.monotonic() - began
    thread.join(DEADLINE)

    assert code == 0, first.log()
    assert took < GRACE / 2, f"SIGTERM took {took:.1f}s: the open watch held shutdown up"
    assert not thread.is_alive() and ended.is_set(), "the watch stream did not end"
    assert len(failures) == 1 and "shutting down" in str(failures[0]), failures

    second = start(servers, data_dir)
    with second.client() as client:
        docs, _ = client.list("ConfigMap")
    assert sorted(d["metadata"]["name"] for d in docs) == [f"cm-{i:04d}" for i in range(10)]
