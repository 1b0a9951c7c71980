"""ResourceService: Apply, Get, List, Delete and Watch over the store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace

import grpc

from controlplane.api.flotilla.v1 import resources_pb2 as pb
from controlplane.api.flotilla.v1 import resources_pb2_grpc as pb_grpc
from controlplane.errors import FieldViolation, InvalidManifest, NotFound, UserError
from controlplane.manifests import check_batch, resolve_kind, to_resources
from controlplane.manifests.references import View
from controlplane.model import (
    DEFAULT_NAMESPACE,
    KINDS,
    ApplyAction,
    ApplyOutcome,
    EventType,
    ObjectKey,
    Resource,
    WatchEvent,
)
from controlplane.model.specs import SecretSpec
from controlplane.model.specs.data import REDACTED
from controlplane.model.external import external_name
from controlplane.model.limits import DEFAULT_MAX_REPLICAS, replicas_of
from controlplane import convert
from controlplane.server.status import abort
from controlplane.store import Store

#: How long a watch sleeps between checks that its client is still there.
WATCH_POLL_SECONDS = 1.0
#: Events read from the store at a time by one watch.
WATCH_BATCH = 500


def kind_of(name: str, *, allow_empty: bool = False) -> str:
    if allow_empty and not name:
        return ""
    kind = resolve_kind(name, system=True)
    if kind is None:
        raise InvalidManifest(
            [FieldViolation("kind", f"unknown kind {name!r}; use one of {', '.join(KINDS)}")]
        )
    return kind


class ResourceServicer(pb_grpc.ResourceServiceServicer):
    """``catalog``: the server follows a Consul catalog, so external Services
    (``spec.external``) can have endpoints; without one they are refused."""

    def __init__(self, store: Store, *, catalog: bool = False,
                 max_replicas: int = DEFAULT_MAX_REPLICAS) -> None:
        self._store = store
        self._catalog = catalog
        self._max_replicas = max_replicas
        self._stopping = threading.Event()

    def shutdown(self) -> None:
        """End every watch now: their clients reconnect and resume elsewhere."""
        self._stopping.set()
        self._store.wake()

    def Apply(self, request: pb.ApplyRequest, context: grpc.ServicerContext) -> pb.ApplyResponse:
        try:
            sources = list(request.sources)
            docs = [
                (convert.document_of(message), sources[i] if i < len(sources) else "")
                for i, message in enumerate(request.resources)
            ]
            batch = to_resources(docs)
            labels = {
                r.key: f"{r.key} ({src})" if src else str(r.key)
                for r, (_, src) in zip(batch, docs, strict=True)
            }
            given = {r.key: r for r in batch}
            batch = with_stored_secrets(batch, self._store.get, labels)
            outcomes = self._store.apply(
                batch, dry_run=request.dry_run,
                admit=_admission(labels, self._catalog, self._max_replicas)
            )
            if request.dry_run:
                outcomes = [_secret_blind(o, given[o.resource.key]) for o in outcomes]
        except UserError as error:
            abort(context, error)
        return pb.ApplyResponse(
            results=[
                pb.ApplyResult(
                    resource=convert.resource_to_pb(o.resource), action=convert.ACTIONS[o.action]
                )
                for o in outcomes
            ]
        )

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.Resource:
        try:
            key = ObjectKey(kind_of(request.kind), request.namespace or DEFAULT_NAMESPACE,
                            request.name)
            found = self._store.get(key)
            if found is None:
                raise NotFound(f"{key} not found")
        except UserError as error:
            abort(context, error)
        return convert.resource_to_pb(found)

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        try:
            kind = kind_of(request.kind, allow_empty=True)
        except UserError as error:
            abort(context, error)
        found, version = self._store.list_at(
            kind or None, request.namespace or None, dict(request.label_selector)
        )
        return pb.ListResponse(
            resources=[convert.resource_to_pb(r) for r in found], resource_version=version
        )

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        try:
            keys = [
                ObjectKey(kind_of(ref.kind), ref.namespace or DEFAULT_NAMESPACE, ref.name)
                for ref in request.refs
            ]
            deleted = self._store.delete(
                keys, ignore_not_found=request.ignore_not_found, dry_run=request.dry_run
            )
        except UserError as error:
            abort(context, error)
        return pb.DeleteResponse(deleted=[convert.resource_to_pb(r) for r in deleted])

    def Watch(
        self, request: pb.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchEvent]:
        try:
            kind = kind_of(request.kind, allow_empty=True) or None
            active = lambda: context.is_active() and not self._stopping.is_set()  # noqa: E731
            events = watch(self._store, kind, request.namespace or None,
                           request.resource_version, active)
            last = request.resource_version
            for event in events:
                last = event.resource_version
                yield convert.event_to_pb(event)
        except UserError as error:
            abort(context, error)
        if self._stopping.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; watch "
                          f"again (from resourceVersion {last}) once it is back")


def watch(
    store: Store,
    kind: str | None,
    namespace: str | None,
    after: int,
    active: Callable[[], bool],
) -> Iterator[WatchEvent]:
    """Every change after ``after`` (or, from 0, the current objects as ADDED
    first), in resourceVersion order, until ``active()`` turns false."""
    if after == 0:
        current, after = store.list_at(kind, namespace)
        for resource in current:
            yield WatchEvent(EventType.ADDED, resource, resource.resource_version)
    else:
        store.events(after, kind, namespace, limit=0)  # raises OutOfRange if too old
    while active():
        head = store.resource_version
        if head > after:
            batch = store.events(after, kind, namespace, until=head, limit=WATCH_BATCH)
            yield from batch
            after = batch[-1].resource_version if len(batch) == WATCH_BATCH else head
        else:
            store.wait(after, WATCH_POLL_SECONDS)


def with_stored_secrets(batch: Sequence[Resource], get: Callable[[ObjectKey], Resource | None],
                       labels: Mapping[ObjectKey, str]) -> list[Resource]:
    """``batch`` with each Secret value given as ``<redacted>`` (``get -o
    yaml`` reapplied) replaced by the value stored for its key, the stored
    version then a precondition; a key the stored Secret lacks is an error."""
    out: list[Resource] = []
    problems: list[FieldViolation] = []
    for resource in batch:
        spec = resource.spec
        if not isinstance(spec, SecretSpec) or REDACTED not in spec.data.values():
            out.append(resource)
            continue
        current = get(resource.key)
        stored = current.typed(SecretSpec).data if current is not None else {}
        missing = [k for k, v in spec.data.items() if v == REDACTED and k not in stored]
        problems += [FieldViolation(
            f"spec.data.{key}", f"is {REDACTED} (as the API shows every value), but "
            f"{resource.key} {'has no such key' if current else 'does not exist'}; give the "
            "value (base64, or as stringData)", labels.get(resource.key, str(resource.key)))
            for key in missing]
        if missing or current is None:
            continue
        data = {k: stored[k] if v == REDACTED else v for k, v in spec.data.items()}
        out.append(replace(resource, spec=spec.model_copy(update={"data": data}),
                           resource_version=resource.resource_version
                           or current.resource_version))
    if problems:
        raise InvalidManifest(problems)
    return out


def _secret_blind(outcome: ApplyOutcome, given: Resource) -> ApplyOutcome:
    """A dry run never says whether a Secret's values match the stored ones:
    one that gives any value (not ``<redacted>``) of an existing Secret is
    "configured" whether or not that value is already stored."""
    spec = given.spec
    if (outcome.action is ApplyAction.UNCHANGED and isinstance(spec, SecretSpec)
            and any(v != REDACTED for v in spec.data.values())):
        return replace(outcome, action=ApplyAction.CONFIGURED)
    return outcome


def _admission(sources: dict[ObjectKey, str], catalog: bool, max_replicas: int
               ) -> Callable[[Sequence[Resource], View], None]:
    def admit(batch: Sequence[Resource], view: View) -> None:
        problems = check_batch(batch, view, sources)
        problems += [
            FieldViolation("spec.replicas", f"{wanted:,} replicas is more than this server "
                           f"allows ({max_replicas:,}); ask for fewer, or start `flotilla "
                           "server` with a higher --max-replicas",
                           sources.get(r.key) or str(r.key))
            for r in batch if (wanted := replicas_of(r)) > max_replicas
        ]
        if not catalog:
            problems += [
                FieldViolation("spec.external", "an external Service follows Consul, and "
                               "this server has no catalog: start `flotilla server` with "
                               "--catalog consul://HOST:PORT, or remove spec.external",
                               sources.get(r.key) or str(r.key))
                for r in batch if r.kind == "Service" and external_name(r) is not None
            ]
        if problems:
            raise InvalidManifest(problems)

    return admit
