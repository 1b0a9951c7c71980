"""The store replicated on Consul KV (a real dev agent): every replica's
writes reach every other replica, writers racing each other all land once, in
one order, and a replica that restarts catches up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.errors import Conflict, FailedPrecondition
from controlplane.model import ObjectKey, Resource
from controlplane.model.specs import ConfigMapSpec
from controlplane.store import Store
from controlplane.store.consul import ConsulLog
from tests.consul import ConsulAgent, consul  # noqa: F401 - the fixture
from tests.harness import eventually


def config_map(name: str, value: str, rv: int = 0) -> Resource:
    return Resource(kind="ConfigMap", namespace="default", name=name, spec={"data": {"k": value}},
                    resource_version=rv)


def dump(store: Store) -> list[tuple[str, int, str]]:
    return [(r.name, r.resource_version, r.typed(ConfigMapSpec).data["k"])
            for r in store.list("ConfigMap")]


@pytest.fixture
def replicas(tmp_path: Path, consul: ConsulAgent) -> Iterator[list[Store]]:  # noqa: F811
    stores = [Store(tmp_path / f"replica-{n}.db", log=ConsulLog(f"{consul.url}/test"))
              for n in range(2)]
    try:
        yield stores
    finally:
        for store in stores:
            store.close()


def test_writes_of_one_replica_reach_the_other(replicas: list[Store]) -> None:
    a, b = replicas
    created = a.apply([config_map("one", "1")])[0].resource
    found = eventually(lambda: b.get(created.key), 10, "the write on the other replica")
    assert found == created  # same uid, resourceVersion, timestamps
    assert b.resource_version == a.resource_version
    events = b.events(0, "ConfigMap")
    assert [e.resource.name for e in events] == ["one"]

    a.put_private("ca", {"secret": "x"})
    assert eventually(lambda: b.get_private("ca"), 10, "the private value") == {"secret": "x"}
    b.delete([created.key])
    eventually(lambda: a.get(created.key) is None, 10, "the delete on the first replica")


def test_racing_writers_all_land_once_in_one_order(replicas: list[Store]) -> None:
    a, b = replicas

    def write(store: Store, prefix: str) -> None:
        for n in range(25):
            store.apply([config_map(f"{prefix}-{n}", str(n))])

    threads = [threading.Thread(target=write, args=(store, name))
               for store, name in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    eventually(lambda: len(a.list("ConfigMap")) == len(b.list("ConfigMap")) == 50, 20,
               "both replicas with all 50")
    assert dump(a) == dump(b)
    versions = sorted(rv for _, rv, _ in dump(a))
    assert len(set(versions)) == 50  # every write has a resourceVersion of its own

    # A precondition holds across replicas: b's stale copy is refused.
    current = a.get(ObjectKey("ConfigMap", "default", "a-0"))
    assert current is not None
    a.apply([config_map("a-0", "changed", current.resource_version)])
    with pytest.raises(Conflict):
        b.apply([config_map("a-0", "stale", current.resource_version)])


def test_a_restarted_replica_catches_up(tmp_path: Path, consul: ConsulAgent) -> None:  # noqa: F811
    url = f"{consul.url}/restart"
    a = Store(tmp_path / "a.db", log=ConsulLog(url))
    b = Store(tmp_path / "b.db", log=ConsulLog(url))
    try:
        a.apply([config_map("before", "1")])
        eventually(lambda: b.list("ConfigMap"), 10, "b in step")
        b.close()
        a.apply([config_map("while-away", "2")])
        b = Store(tmp_path / "b.db", log=ConsulLog(url))
        assert dump(b) == dump(a)  # caught up before serving
        # A copy ahead of the log (the log wiped, or another cluster's) is refused.
        with pytest.raises(FailedPrecondition, match="start this replica with an empty"):
            Store(tmp_path / "a.db", log=ConsulLog(f"{consul.url}/elsewhere"))
    finally:
        a.close()
        b.close()
