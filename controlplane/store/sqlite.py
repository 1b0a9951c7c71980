"""SQLite (WAL) implementation of the resource store.

Thread-safety: one connection guarded by one lock; every public method may be
called from any thread. Durability: each apply or delete is one transaction,
committed before the call returns, so an acknowledged write survives the
process being killed (``synchronous=NORMAL`` in WAL mode loses nothing on a
process crash; ``durable=True`` also fsyncs each commit, for power loss).

Replicated (``log``, several control-plane replicas on Consul KV): each
transaction is appended to the shared log with check-and-set before it
commits here, so a write is acknowledged only once it is in Consul; when
another replica appended first, this copy catches up and the transaction
runs again on the new state. A thread follows the log's head, so every
replica serves reads and watches of every write.
"""

from __future__ import annotations

import builtins
import contextlib
import functools

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from controlplane.errors import (
    Conflict,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    TemporaryError,
)
from controlplane.manifests import references
from controlplane.manifests.references import View, may_name_gateway
from controlplane.model import (
    ApplyAction,
    ApplyOutcome,
    EventType,
    ObjectKey,
    Reference,
    Resource,
    WatchEvent,
)
from controlplane.store.consul import ConsulLog, LogMoved
from controlplane.store.sealing import Sealer

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Decoded objects kept (by their stored body): ~2 KiB each.
_DECODED = 16_384
#: Times a write is redone after other replicas appended first.
_RETRIES = 50

def _retried(write: Callable[..., _T]) -> Callable[..., _T]:
    """A public write of a replicated store runs again (on the caught-up copy)
    when another replica appended to the log first."""
    @functools.wraps(write)
    def retrying(self: Store, *args: Any, **kwargs: Any) -> _T:
        for _ in range(_RETRIES):
            try:
                return write(self, *args, **kwargs)
            except LogMoved:
                self.catch_up()
        raise TemporaryError("the store is busy: other replicas kept writing first; retry")
    return retrying


#: Checks a batch against the world inside the write transaction; raises a
#: UserError to reject the whole batch.
Admission = Callable[[Sequence[Resource], View], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rv INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    src_kind TEXT NOT NULL, src_namespace TEXT NOT NULL, src_name TEXT NOT NULL,
    path TEXT NOT NULL,
    dst_kind TEXT NOT NULL, dst_namespace TEXT NOT NULL, dst_name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refs_by_dst ON refs (dst_kind, dst_namespace, dst_name);
CREATE INDEX IF NOT EXISTS refs_by_src ON refs (src_kind, src_namespace, src_name);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS private (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    """The resource store: objects, events and private records in a SQLite
    database in the data dir (WAL). Without ``log`` it is the embedded
    default; with one it is a replica of the store replicated on Consul KV:
    every write is appended to the log with check-and-set before it is
    acknowledged, and a follower thread replays the other replicas' writes
    into this copy. Thread-safe: one writer at a time under its lock."""

    def __init__(
        self,
        path: Path | str,
        *,
        sealer: Sealer | None = None,
        history: int = 100_000,
        durable: bool = False,
        clock: Callable[[], float] = time.time,
        log: ConsulLog | None = None,
    ) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sealer = sealer
        self._history = history
        self._clock = clock
        row = self._db.execute("SELECT max(rv) FROM events").fetchone()
        floor = self._db.execute("SELECT value FROM meta WHERE key='compacted'").fetchone()
        self._compacted = int(floor[0]) if floor else 0
        self._rv = max(int(row[0] or 0), self._compacted)
        self._closed = False
        self._wakes = 0
        self._log = log
        self._private_pending: dict[str, str] = {}
        # A stored body decodes to the same Resource every time: its spec
        # model is built once, not on every list, get and watch event.
        self._decode = functools.lru_cache(maxsize=_DECODED)(self._decode_body)
        if log is not None:
            head = log.read_head()[0]
            if head < self._rv:
                self._db.close()
                raise FailedPrecondition(
                    f"this data dir's copy of the store is at resourceVersion {self._rv} but "
                    f"Consul's log ({log.base}/{log.prefix}) only reaches {head}: the log was "
                    "wiped or is another cluster's; start this replica with an empty --data-dir")
            self.catch_up()
            threading.Thread(target=self._follow, name="store-follower", daemon=True).start()

    # --- reads ----------------------------------------------------------------

    @property
    def replicated(self) -> bool:
        """Whether other replicas write this store too (through the log)."""
        return self._log is not None

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def get(self, key: ObjectKey) -> Resource | None:
        with self._lock:
            return self._get(key)

    def list(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> Sequence[Resource]:
        return self.list_at(kind, namespace, selector)[0]

    def list_at(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Resource], int]:
        """Matching objects and the resourceVersion they were read at."""
        with self._lock:
            return self._list(kind, namespace, selector), self._rv

    def events(
        self,
        after: int,
        kind: str | None = None,
        namespace: str | None = None,
        *,
        until: int | None = None,
        limit: int = 1000,
    ) -> builtins.list[WatchEvent]:
        """Changes with ``after`` < resourceVersion <= ``until``, oldest first."""
        with self._lock:
            if after < self._compacted:
                raise OutOfRange(
                    f"resourceVersion {after} is older than the retained history "
                    f"(from {self._compacted}); list again and watch from the "
                    "version the list returns"
                )
            where, args = _filters(kind, namespace)
            rows = self._db.execute(
                f"SELECT rv, type, body FROM events WHERE rv > ? AND rv <= ?{where} "
                "ORDER BY rv LIMIT ?",
                (after, self._rv if until is None else until, *args, limit),
            ).fetchall()
        return [
            WatchEvent(EventType(kind_), self._decode(body), int(rv)) for rv, kind_, body in rows
        ]

    def wait(self, after: int, timeout: float) -> int:
        """Block until the store's resourceVersion exceeds ``after`` (or timeout,
        :meth:`wake`, or close); return the current resourceVersion."""
        with self._changed:
            epoch = self._wakes
            self._changed.wait_for(
                lambda: self._rv > after or self._closed or self._wakes != epoch, timeout
            )
            return self._rv

    def wake(self) -> None:
        """Release every :meth:`wait` now (e.g. so watches notice a shutdown)."""
        with self._changed:
            self._wakes += 1
            self._changed.notify_all()

    # --- writes ---------------------------------------------------------------

    @_retried
    def apply(
        self,
        batch: Sequence[Resource],
        *,
        dry_run: bool = False,
        admit: Admission | None = None,
        with_status: bool = False,
    ) -> builtins.list[ApplyOutcome]:
        """Create or update every resource of ``batch`` in one transaction.

        A non-zero ``resource_version`` on an input resource is a
        precondition (``Conflict`` unless it is current). ``admit`` runs inside
        the transaction and may veto the batch by raising. ``with_status``
        (system writers only) stores the resources' status too, in the same
        write, instead of keeping the stored one.
        """
        with self._transaction(dry_run):
            if admit is not None:
                admit(batch, _TransactionView(self))
            return [self._apply_one(resource, with_status) for resource in batch]

    @_retried
    def delete(
        self, keys: Sequence[ObjectKey], *, ignore_not_found: bool = False, dry_run: bool = False
    ) -> builtins.list[Resource]:
        """Delete every key in one transaction. Refused (``FailedPrecondition``)
        while an object outside the batch still references one of them."""
        with self._transaction(dry_run):
            return self._delete(keys, ignore_not_found)

    def get_private(self, key: str) -> Any:
        """A value only the control plane reads (the CA's keys): sealed at rest,
        never an object, so no API lists or returns it. None when unset."""
        with self._lock:
            row = self._db.execute("SELECT value FROM private WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return self._sealer.unseal(value) if self._sealer is not None else value

    @_retried
    def put_private(self, key: str, value: Any) -> None:
        sealed = json.dumps(self._sealer.seal(value) if self._sealer is not None else value)
        with self._transaction(dry_run=False):
            self._db.execute("INSERT OR REPLACE INTO private (key, value) VALUES (?, ?)",
                             (key, sealed))
            if self._log is not None:  # an entry of its own in the log
                self._rv += 1
                self._private_pending[key] = sealed

    @_retried
    def write_status(self, key: ObjectKey, status: Mapping[str, Any]) -> Resource | None:
        """Replace an object's status (system writers only); None when the object
        is gone. A status equal to the stored one writes nothing."""
        with self._transaction(dry_run=False):
            current = self._get(key)
            if current is None or dict(current.status) == dict(status):
                return current
            self._rv += 1
            stored = replace(current, status=dict(status), resource_version=self._rv,
                             update_time=self._clock())
            self._put(stored, EventType.MODIFIED)
            return stored

    # --- replication ----------------------------------------------------------------

    def catch_up(self) -> None:
        """Apply every log entry this copy lacks (replicated stores only)."""
        if self._log is None:
            return
        with self._lock:
            after = self._rv
        entries = self._log.entries(after)
        with self._changed:
            if self._closed:
                return
            applied = self._rv
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    if int(entry["end"]) <= self._rv:
                        continue
                    if int(entry["start"]) != self._rv:
                        raise FailedPrecondition(
                            f"the store's log skips from {self._rv} to {entry['start']}")
                    self._replay(entry)
            except BaseException:
                self._db.execute("ROLLBACK")
                self._rv = applied
                raise
            self._db.execute("COMMIT")
            if self._rv != applied:
                self._compact()
                self._changed.notify_all()

    def _replay(self, entry: Mapping[str, Any]) -> None:
        """One log entry, as the replica that wrote it committed it."""
        for rv, type_, _, _, _, body in entry["events"]:
            self._rv = int(rv)
            resource = self._decode(body)
            if type_ == EventType.DELETED.value:
                self._remove(resource, body)
            else:  # the writer's body as it is: a Secret stays sealed with its nonce
                self._put(resource, EventType(type_), body)
                self._set_refs(resource)
        for key, value in (entry.get("private") or {}).items():
            self._db.execute("INSERT OR REPLACE INTO private (key, value) VALUES (?, ?)",
                             (key, value))
        self._rv = int(entry["end"])

    def _follow(self) -> None:
        """Apply other replicas' writes as they land in the log."""
        assert self._log is not None
        index = 0
        while not self._closed:
            try:
                head, index = self._log.wait_head(index, 5.0)
                if head > self.resource_version:
                    self.catch_up()
            except Exception as error:  # noqa: BLE001 - Consul away: keep serving reads
                if self._closed:
                    return
                log.warning("following the store's log: %s; retrying", error)
                index = 0
                time.sleep(1.0)

    def close(self) -> None:
        with self._changed:
            if not self._closed:
                self._closed = True
                self._changed.notify_all()
                self._db.close()

    # --- internals (called with the lock held) ----------------------------------

    @contextlib.contextmanager
    def _transaction(self, dry_run: bool) -> Iterator[None]:
        """Hold the lock for one write transaction: committed (and watchers
        woken) when the body returns, rolled back when it raises or for a
        dry run."""
        with self._changed:
            start = self._rv
            self._db.execute("BEGIN IMMEDIATE")
            commit = False
            try:
                yield
                if not dry_run and self._log is not None and self._rv != start:
                    self._log.append(start, self._rv, self._entry(start))
                commit = not dry_run
            finally:
                self._private_pending = {}
                if not commit:  # the body or the append raised, or a dry run
                    self._db.execute("ROLLBACK")
                    self._rv = start
            if not commit:
                return
            self._db.execute("COMMIT")
            if self._rv != start:
                self._compact()
                self._changed.notify_all()

    def _entry(self, start: int) -> dict[str, Any]:
        """This transaction as a log entry: its events and private writes."""
        rows = self._db.execute(
            "SELECT rv, type, kind, namespace, name, body FROM events WHERE rv > ? ORDER BY rv",
            (start,)).fetchall()
        return {"start": start, "end": self._rv, "events": [list(r) for r in rows],
                "private": dict(self._private_pending)}

    def _apply_one(self, resource: Resource, with_status: bool = False) -> ApplyOutcome:
        current = self._get(resource.key)
        wanted = resource.resource_version
        if wanted and (current is None or current.resource_version != wanted):
            state = "it does not exist" if current is None else (
                f"it is now at {current.resource_version}"
            )
            raise Conflict(
                f"{resource.key} was changed by someone else: your copy has "
                f"resourceVersion {wanted} but {state}; get it again, redo your change and "
                "reapply (or drop metadata.resourceVersion to overwrite)"
            )
        if current is not None and current.same_content(resource) and (
                not with_status or dict(current.status) == dict(resource.status)):
            return ApplyOutcome(current, ApplyAction.UNCHANGED)
        self._rv += 1
        now = self._clock()
        if current is None:
            stored = replace(
                resource, uid=str(uuid.uuid4()), resource_version=self._rv, generation=1,
                create_time=now, update_time=now,
                status=dict(resource.status) if with_status else {},
            )
            event, action = EventType.ADDED, ApplyAction.CREATED
        else:
            spec_changed = current.spec != resource.spec
            stored = replace(
                resource, uid=current.uid, resource_version=self._rv,
                generation=current.generation + (1 if spec_changed else 0),
                create_time=current.create_time, update_time=now,
                status=dict(resource.status) if with_status else current.status,
            )
            event, action = EventType.MODIFIED, ApplyAction.CONFIGURED
        self._put(stored, event)
        self._set_refs(stored)
        return ApplyOutcome(stored, action)

    def _delete(
        self, keys: Sequence[ObjectKey], ignore_not_found: bool
    ) -> builtins.list[Resource]:
        doomed = set(keys)
        found: builtins.list[Resource] = []
        for key in dict.fromkeys(keys):
            current = self._get(key)
            if current is None:
                if ignore_not_found:
                    continue
                raise NotFound(f"{key} not found")
            found.append(current)
        for resource in found:
            for ref in self._referrers(resource.key, doomed):
                if ref.source not in doomed:
                    raise FailedPrecondition(
                        f"{resource.key} is still referenced by {ref.source} ({ref.path}); "
                        f"change or delete {ref.source} first, or delete both together"
                    )
        for resource in found:
            self._rv += 1
            self._remove(resource, self._encode(resource))
        return found

    def _referrers(self, key: ObjectKey, doomed: set[ObjectKey]) -> builtins.list[Reference]:
        """The references to ``key``; for a Gateway also those recorded to a
        Service of its name that may mean it (placement, an intention's
        source) while no such Service stays to answer them."""
        targets = [key]
        alias = ObjectKey("Service", key.namespace, key.name)
        if key.kind == "Gateway" and (alias in doomed or self._get(alias) is None):
            targets.append(alias)
        found = []
        for target in targets:
            for src_kind, src_ns, src_name, path in self._db.execute(
                "SELECT src_kind, src_namespace, src_name, path FROM refs "
                "WHERE dst_kind=? AND dst_namespace=? AND dst_name=?", _key_tuple(target),
            ):
                ref = Reference(ObjectKey(src_kind, src_ns, src_name), path, target)
                if target == key or may_name_gateway(ref):
                    found.append(ref)
        return found

    def _put(self, stored: Resource, event: EventType, body: str | None = None) -> None:
        """Write ``stored`` (its resourceVersion already taken) and its event;
        ``body`` when it is already encoded (a replayed log entry)."""
        body = self._encode(stored) if body is None else body
        self._db.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, body) VALUES (?, ?, ?, ?)",
            (*_key_tuple(stored.key), body),
        )
        self._record(event, stored, body)

    def _remove(self, resource: Resource, body: str) -> None:
        """Delete ``resource`` and its references (its resourceVersion taken)."""
        self._db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
                         _key_tuple(resource.key))
        self._db.execute("DELETE FROM refs WHERE src_kind=? AND src_namespace=? AND src_name=?",
                         _key_tuple(resource.key))
        self._record(EventType.DELETED, resource, body)

    def _set_refs(self, stored: Resource) -> None:
        """The references ``stored`` makes, replacing those it made before."""
        self._db.execute("DELETE FROM refs WHERE src_kind=? AND src_namespace=? AND src_name=?",
                         _key_tuple(stored.key))
        self._db.executemany("INSERT INTO refs VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (*_key_tuple(ref.source), ref.path, *_key_tuple(ref.target))
            for ref in references(stored)])

    def _record(self, event: EventType, resource: Resource, body: str) -> None:
        self._db.execute(
            "INSERT INTO events (rv, type, kind, namespace, name, body) VALUES (?, ?, ?, ?, ?, ?)",
            (self._rv, event.value, resource.kind, resource.namespace, resource.name, body),
        )

    def _compact(self) -> None:
        """Keep the newest ``history`` events; watches from before fail OutOfRange."""
        floor = self._rv - self._history
        if floor >= self._compacted + 1000:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM events WHERE rv <= ?", (floor,))
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('compacted', ?)", (floor,)
            )
            self._db.execute("COMMIT")
            self._compacted = floor

    def _get(self, key: ObjectKey) -> Resource | None:
        row = self._db.execute(
            "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?", _key_tuple(key)
        ).fetchone()
        return self._decode(row[0]) if row else None

    def _list(
        self, kind: str | None, namespace: str | None, selector: Mapping[str, str] | None
    ) -> builtins.list[Resource]:
        where, args = _filters(kind, namespace)
        rows = self._db.execute(
            f"SELECT body FROM objects WHERE 1=1{where} ORDER BY kind, namespace, name", args
        ).fetchall()
        found = [self._decode(body) for (body,) in rows]
        if selector:
            found = [r for r in found if all(r.labels.get(k) == v for k, v in selector.items())]
        return found

    def _encode(self, resource: Resource) -> str:
        spec: Any = resource.spec.to_dict()
        if resource.kind == "Secret" and self._sealer is not None:
            spec = self._sealer.seal(spec)
        return json.dumps(
            {
                "kind": resource.kind, "namespace": resource.namespace, "name": resource.name,
                "spec": spec, "labels": resource.labels, "annotations": resource.annotations,
                "status": resource.status, "uid": resource.uid,
                "rv": resource.resource_version, "generation": resource.generation,
                "created": resource.create_time, "updated": resource.update_time,
            },
            separators=(",", ":"), sort_keys=True,
        )

    def _decode_body(self, body: str) -> Resource:
        raw = json.loads(body)
        spec = raw["spec"]
        if self._sealer is not None:
            spec = self._sealer.unseal(spec)
        return Resource(
            kind=raw["kind"], namespace=raw["namespace"], name=raw["name"], spec=spec,
            labels=raw["labels"], annotations=raw["annotations"], status=raw["status"],
            uid=raw["uid"], resource_version=raw["rv"], generation=raw["generation"],
            create_time=raw["created"], update_time=raw["updated"],
        )


def _key_tuple(key: ObjectKey) -> tuple[str, str, str]:
    return (key.kind, key.namespace, key.name)


def _filters(kind: str | None, namespace: str | None) -> tuple[str, tuple[str, ...]]:
    clauses = [(column, value) for column, value in (("kind", kind), ("namespace", namespace))
               if value]
    return "".join(f" AND {column}=?" for column, _ in clauses), tuple(v for _, v in clauses)


class _TransactionView:
    """Reads inside a write transaction (the store's lock is already held)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, key: ObjectKey) -> Resource | None:
        return self._store._get(key)

    def list(self, kind: str, namespace: str) -> Sequence[Resource]:
        return self._store._list(kind, namespace, None)
