"""One Service whose reconcile raises does not hold up the others: they
converge in the same pass, it backs off alone and says why on its status
(what `flotilla describe` shows), and converges once the cause is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controlplane.cli import output
from controlplane.controllers import reconciler as reconciler_module
from controlplane.controllers.reconciler import Reconciler
from controlplane.controllers.replicas import Desired
from controlplane.convert import doc_of_pb, resource_to_pb
from controlplane.manifests import to_resource
from controlplane.model import SERVICE_LABEL, ObjectKey, Resource
from controlplane.model.clock import FakeClock
from controlplane.model.specs import InstanceSpec
from controlplane.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    found = Store(tmp_path / "flotilla.db")
    try:
        yield found
    finally:
        found.close()


def service(name: str) -> Resource:
    return to_resource({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                        "metadata": {"name": name},
                        "spec": {"command": ["sleep", "60"], "replicas": 1,
                                 "env": {"SERVICE": name}}})


def instances_of(store: Store, name: str) -> list[Resource]:
    return [i for i in store.list("Instance") if i.labels.get(SERVICE_LABEL) == name]


def described(store: Store, key: ObjectKey) -> str:
    stored = store.get(key)
    assert stored is not None
    console = Console(record=True, width=200)
    output.describe(doc_of_pb(resource_to_pb(stored)), console)
    return console.export_text()


def test_a_failing_service_backs_off_alone_and_says_why(store: Store,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply([Resource(kind="Node", namespace="cluster", name="n1",
                          spec={"address": "127.0.0.2", "drivers": ["process"],
                                "capacity": {"cpu": 4000, "memory": 4096}}),
                 *(service(name) for name in ("alpha", "broken", "gamma"))])
    real = reconciler_module.decide
    broken = {"on": True}

    def decide(desired: Desired | None, *args: Any, **kwargs: Any) -> Any:
        if broken["on"] and desired is not None and desired.workload.env["SERVICE"] == "broken":
            raise RuntimeError("the template of broken cannot be read")
        return real(desired, *args, **kwargs)

    monkeypatch.setattr(reconciler_module, "decide", decide)
    clock = FakeClock()
    reconciler = Reconciler(store, clock=clock)
    keys = [ObjectKey("Service", "default", n) for n in ("alpha", "broken", "gamma")]

    reconciler.reconcile_all(keys)
    # The others converged in the same pass, placed on the node.
    for name in ("alpha", "gamma"):
        [instance] = instances_of(store, name)
        assert instance.typed(InstanceSpec).node == "n1"
    assert instances_of(store, "broken") == []
    queue = reconciler._queue
    assert queue.failures(keys[1]) == 1 and len(queue) == 1  # waits for its backoff
    assert queue.get(timeout=0) is None
    text = described(store, keys[1])
    assert "RetryingAfterError" in text and "the template of broken cannot be read" in text

    # Still failing: the backoff doubles; the status stays as it was (no write,
    # so no store event wakes the Service early).
    before = store.get(keys[1])
    clock.advance(0.5)
    batch = queue.get_ready()
    assert batch == [keys[1]]
    reconciler.reconcile_all(batch)
    assert queue.failures(keys[1]) == 2
    after = store.get(keys[1])
    assert before is not None and after is not None
    assert after.resource_version == before.resource_version

    # A full pass leaves a Service that backs off to its queue turn.
    reconciler.reconcile_all([], everything=True)
    assert queue.failures(keys[1]) == 2

    # The cause goes away: at its turn it converges, and the condition goes.
    broken["on"] = False
    clock.advance(1.0)
    reconciler.reconcile_all(queue.get_ready())
    assert len(instances_of(store, "broken")) == 1 and queue.failures(keys[1]) == 0
    assert "RetryingAfterError" not in described(store, keys[1])
