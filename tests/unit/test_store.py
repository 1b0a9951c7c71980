"""The SQLite store, on a real database file in a temp dir (fast, no server)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controlplane.errors import Conflict, FailedPrecondition, InvalidManifest, NotFound, OutOfRange
from controlplane.manifests import check_batch, to_resource
from controlplane.manifests.references import View
from controlplane.model import ApplyAction, EventType, ObjectKey, Resource
from controlplane.model.specs import SecretSpec
from controlplane.store import Store
from controlplane.store.sealing import Sealer, load_or_create_key


def make(kind: str, name: str, **spec: object) -> Resource:
    return to_resource({"apiVersion": "flotilla.dev/v1", "kind": kind,
                        "metadata": {"name": name}, "spec": spec})


def admit(batch: Sequence[Resource], view: View) -> None:
    problems = check_batch(batch, view)
    if problems:
        raise InvalidManifest(problems)


class FakeClock:
    def __init__(self) -> None:
        self._ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self._ticks))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    sealer = Sealer(load_or_create_key(tmp_path / "key"))
    db = Store(tmp_path / "s.db", sealer=sealer, clock=FakeClock(), history=2000)
    yield db
    db.close()


def test_create_configure_unchanged(store: Store) -> None:
    created = store.apply([make("ConfigMap", "a", data={"k": "1"})])[0]
    assert created.action is ApplyAction.CREATED
    assert (created.resource.resource_version, created.resource.generation) == (1, 1)
    assert created.resource.create_time == created.resource.update_time == 1000.0
    same = store.apply([make("ConfigMap", "a", data={"k": "1"})])[0]
    assert same.action is ApplyAction.UNCHANGED and same.resource == created.resource
    changed = store.apply([make("ConfigMap", "a", data={"k": "2"})])[0]
    assert changed.action is ApplyAction.CONFIGURED
    assert (changed.resource.resource_version, changed.resource.generation) == (2, 2)
    assert changed.resource.uid == created.resource.uid
    assert changed.resource.create_time == 1000.0 < changed.resource.update_time


def test_stale_version_is_a_conflict_and_changes_nothing(store: Store) -> None:
    store.apply([make("ConfigMap", "a", data={"k": "1"})])
    store.apply([make("ConfigMap", "a", data={"k": "2"})])
    stale = make("ConfigMap", "a", data={"k": "3"})
    stale = Resource(**{**stale.__dict__, "resource_version": 1})
    with pytest.raises(Conflict, match="ConfigMap default/a was changed by someone else"):
        store.apply([make("ConfigMap", "b"), stale])
    assert store.get(ObjectKey("ConfigMap", "default", "b")) is None
    assert store.resource_version == 2


def test_admission_sees_the_batch_and_rolls_back(store: Store) -> None:
    store.apply([make("Service", "api", image="x", upstreams=[{"name": "db"}]),
                 make("Service", "db", image="y")], admit=admit)
    with pytest.raises(InvalidManifest, match="Service default/nope does not exist"):
        store.apply([make("Service", "web", image="x", upstreams=[{"name": "nope"}])],
                    admit=admit)
    assert [r.name for r in store.list("Service")] == ["api", "db"]
    assert store.resource_version == 2


def test_delete_is_refused_while_referenced(store: Store) -> None:
    store.apply([make("Service", "db", image="y"),
                 make("Service", "api", image="x", upstreams=[{"name": "db"}])], admit=admit)
    db, api = ObjectKey("Service", "default", "db"), ObjectKey("Service", "default", "api")
    with pytest.raises(FailedPrecondition, match=r"referenced by Service default/api"):
        store.delete([db])
    with pytest.raises(NotFound):
        store.delete([api, ObjectKey("Service", "default", "ghost")])
    assert store.get(api) is not None
    deleted = store.delete([db, api])
    assert [r.name for r in deleted] == ["db", "api"]
    assert store.list() == []


def test_a_gateway_named_in_placement_or_as_a_source_is_kept_while_named(
        store: Store) -> None:
    """Placement and an intention's source may name a Gateway (recorded as a
    Service of its name): deleting the gateway is refused while they do,
    unless a Service of that name stays to answer them."""
    edge = make("Gateway", "edge", listeners=[{"name": "web", "port": 8000,
                                               "routes": [{"service": "api"}]}])
    store.apply([make("Service", "api", image="x"), edge,
                 make("Service", "cache", image="c", placement={"affinity": ["edge"]}),
                 make("Intention", "from-edge", source="edge", destination="api",
                      action="allow")], admit=admit)
    gateway = ObjectKey("Gateway", "default", "edge")
    with pytest.raises(FailedPrecondition) as refused:
        store.delete([gateway])
    assert "Gateway default/edge is still referenced by" in str(refused.value)
    store.delete([ObjectKey("Intention", "default", "from-edge")])
    with pytest.raises(FailedPrecondition, match=r"Service default/cache \(spec.placement"):
        store.delete([gateway])
    # A Service of the gateway's name answers the placement rule on its own.
    store.apply([make("Service", "edge", image="e")], admit=admit)
    assert [r.name for r in store.delete([gateway])] == ["edge"]


def test_events_replay_in_order_with_filters(store: Store) -> None:
    store.apply([make("ConfigMap", "a"), make("Service", "s", image="x")])
    store.apply([make("ConfigMap", "a", data={"x": "y"})])
    store.delete([ObjectKey("ConfigMap", "default", "a")])
    events = store.events(0)
    assert [(e.type, e.resource.name, e.resource_version) for e in events] == [
        (EventType.ADDED, "a", 1), (EventType.ADDED, "s", 2),
        (EventType.MODIFIED, "a", 3), (EventType.DELETED, "a", 4),
    ]
    assert [e.resource_version for e in store.events(2, "ConfigMap")] == [3, 4]
    assert store.events(4) == []


def test_history_is_compacted_and_old_watches_are_told(store: Store) -> None:
    for i in range(3500):
        store.apply([make("ConfigMap", "c", data={"i": str(i)})])
    with pytest.raises(OutOfRange, match="older than the retained history"):
        store.events(10)
    assert store.events(3499)[0].resource_version == 3500


def test_secrets_are_sealed_on_disk_and_survive_reopen(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "key")
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    db = Store(tmp_path / "s.db", sealer=Sealer(key))
    db.apply([make("Secret", "s", stringData={"pw": "topsecret-value"})])
    db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*"))
    assert b"dG9wc2VjcmV0" not in raw and b"topsecret" not in raw
    reopened = Store(tmp_path / "s.db", sealer=Sealer(key))
    secret = reopened.get(ObjectKey("Secret", "default", "s"))
    assert secret is not None and secret.typed(SecretSpec).data == {"pw": "dG9wc2VjcmV0LXZhbHVl"}
    assert reopened.resource_version == 1
    reopened.close()


def test_dry_run_leaves_no_trace(store: Store) -> None:
    outcome = store.apply([make("ConfigMap", "a")], dry_run=True)[0]
    assert outcome.action is ApplyAction.CREATED
    assert store.list() == [] and store.resource_version == 0
    store.apply([make("ConfigMap", "a")])
    assert store.apply([make("ConfigMap", "a")])[0].resource.resource_version == 1
