"""Rules across objects: references that must resolve, uniqueness, and fields
another object makes meaningless (a TrafficPolicy's HTTP fields for a tcp
destination).

``references(resource)`` lists every object a resource points at, with the
field that does it. ``check_batch`` judges a batch against the world as it
will be after the batch (stored objects, overridden by the batch), so it must
run inside the store's write transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic.alias_generators import to_snake

from controlplane.errors import FieldViolation
from controlplane.manifests.sources import CONFIG_KINDS, env_problem, source_key
from controlplane.model import ObjectKey, Reference, Resource
from controlplane.model.specs import (
    GatewaySpec,
    IntentionSpec,
    SecretSpec,
    ServiceSpec,
    TrafficPolicySpec,
)
from controlplane.model.specs.common import PlacementSpec
from controlplane.model.specs.service import EnvFrom, Mount


class View(Protocol):
    """Read access to stored objects, as of the current transaction."""

    def get(self, key: ObjectKey) -> Resource | None: ...

    def list(self, kind: str, namespace: str) -> Sequence[Resource]: ...


def placement_names(placement: PlacementSpec) -> list[tuple[str, list[str]]]:
    """The placement fields of a Service or Gateway that name services of its
    namespace (the scheduler counts a Gateway's instances under its name too),
    by their manifest name."""
    return [("affinity", placement.affinity), ("antiAffinity", placement.anti_affinity),
            ("preferredAffinity", placement.preferred_affinity),
            ("preferredAntiAffinity", placement.preferred_anti_affinity)]


def may_name_gateway(ref: Reference) -> bool:
    """Whether a reference recorded to a Service may mean a Gateway of that
    name: the scheduler counts a gateway's instances under its name, so
    placement may name one, and a gateway calls services under its name, so
    an intention's source may."""
    return ref.path.startswith("spec.placement.") or (
        ref.path == "spec.source" and ref.source.kind == "Intention")


def references(resource: Resource) -> list[Reference]:
    spec, ns, out = resource.spec, resource.namespace, []

    def add(path: str, kind: str, name: str, namespace: str | None = None) -> None:
        out.append(Reference(resource.key, path, ObjectKey(kind, namespace or ns, name)))

    def placed_by(placement: PlacementSpec) -> None:
        for field, names in placement_names(placement):
            for i, name in enumerate(names):
                if name != resource.name:  # itself: a rule about its own replicas
                    add(f"spec.placement.{field}[{i}]", "Service", name)

    if isinstance(spec, ServiceSpec):
        for i, up in enumerate(spec.upstreams):
            add(f"spec.upstreams[{i}].name", "Service", up.name, up.namespace)
        placed_by(spec.placement)
        sources: list[tuple[str, Sequence[Mount | EnvFrom]]] = [
            ("mounts", spec.mounts), ("envFrom", spec.env_from)]
        for field, items in sources:
            for i, item in enumerate(items):
                if item.config_map:
                    add(f"spec.{field}[{i}].configMap", "ConfigMap", item.config_map)
                if item.secret:
                    add(f"spec.{field}[{i}].secret", "Secret", item.secret)
    elif isinstance(spec, TrafficPolicySpec):
        add("spec.destination", "Service", spec.destination)
    elif isinstance(spec, IntentionSpec):
        for field, pattern in (("source", spec.source), ("destination", spec.destination)):
            namespace, _, name = pattern.rpartition("/")
            if "*" not in (namespace, name):
                add(f"spec.{field}", "Service", name, namespace or None)
    elif isinstance(spec, GatewaySpec):
        for i, listener in enumerate(spec.listeners):
            if listener.tls:
                add(f"spec.listeners[{i}].tls.secret", "Secret", listener.tls.secret)
            for j, route in enumerate(listener.routes):
                path = f"spec.listeners[{i}].routes[{j}].service"
                add(path, "Service", route.service, route.namespace)
        placed_by(spec.placement)
    return out


def check_batch(
    batch: Sequence[Resource], view: View, sources: Mapping[ObjectKey, str] | None = None
) -> list[FieldViolation]:
    """Every problem the batch has with the other objects in the world."""
    mine = {r.key: r for r in batch}
    sources = sources or {}

    def lookup(key: ObjectKey) -> Resource | None:
        return mine.get(key) or view.get(key)

    def siblings(kind: str, namespace: str) -> list[Resource]:
        stored = {r.key: r for r in view.list(kind, namespace)}
        stored.update({k: r for k, r in mine.items() if k.kind == kind and k.namespace == namespace})
        return list(stored.values())

    out: list[FieldViolation] = []
    for resource in batch:
        source = sources.get(resource.key) or str(resource.key)
        for ref in references(resource):
            target = lookup(ref.target)
            placed = ref.path.startswith("spec.placement.")
            if target is None and may_name_gateway(ref):
                target = lookup(ObjectKey("Gateway", ref.target.namespace, ref.target.name))
            if target is None:
                out.append(FieldViolation(
                    ref.path, _dangling_placed(ref) if placed else _dangling(ref), source))
            elif ref.target.kind == "Secret" and ".tls." in ref.path and (
                not isinstance(target.spec, SecretSpec) or target.spec.type != "tls"
            ):
                out.append(
                    FieldViolation(
                        ref.path, f"{ref.target} is not of type tls; use a Secret of type tls "
                        "with tls.crt and tls.key", source,
                    )
                )
        if resource.kind == "Service":
            out += _env_sources(resource, lookup, source)
            out += _policy_turned_tcp(resource, view.get, siblings, mine, source)
        if resource.kind in CONFIG_KINDS:
            out += _env_consumers(resource, siblings, mine, source)
        if resource.kind == "TrafficPolicy":
            out += _one_policy_per_destination(resource, siblings, source)
            out += _policy_for_tcp(resource, lookup, source)
        if resource.kind == "Intention":
            out += _intention_rules(resource, lookup, siblings, source)
    return out


def _dangling(ref: Reference) -> str:
    return (
        f"{ref.target} does not exist; create it first (or in the same apply), "
        "or fix the name"
    )


def _dangling_placed(ref: Reference) -> str:
    target = ref.target
    return (
        f"no Service or Gateway {target.namespace}/{target.name} exists, so this rule "
        "counts no instances; create it first (or in the same apply), or fix the name"
    )


def _env_sources(service: Resource, lookup: Any, source: str) -> list[FieldViolation]:
    """Each ``envFrom`` object's keys must be variable names, its values text."""
    out = []
    for i, item in enumerate(service.typed(ServiceSpec).env_from):
        key = source_key(item, service.namespace)
        target = lookup(key)
        problem = env_problem(target) if target is not None else None
        if problem:
            field = "configMap" if key.kind == "ConfigMap" else "secret"
            out.append(FieldViolation(
                f"spec.envFrom[{i}].{field}",
                f"{key} {problem}, so its data cannot be environment variables; rename "
                f"those keys, or mount the {key.kind} as files (spec.mounts) instead", source))
    return out


def _env_consumers(config: Resource, siblings: Any, mine: Mapping[ObjectKey, Resource],
                   source: str) -> list[FieldViolation]:
    """A ConfigMap or Secret a stored Service takes env from stays fit for it
    (a Service in the same batch is judged by ``_env_sources``)."""
    problem = env_problem(config)
    if problem is None:
        return []
    for service in siblings("Service", config.namespace):
        uses = [i for i, item in enumerate(service.typed(ServiceSpec).env_from)
                if source_key(item, service.namespace) == config.key]
        if uses and service.key not in mine:
            return [FieldViolation(
                "spec.data",
                f"{config.key} {problem}, but Service {service.namespace}/{service.name} "
                f"takes its keys as environment variables (spec.envFrom[{uses[0]}]); rename "
                "those keys, or change that Service to mount it (spec.mounts)", source)]
    return []


#: TrafficPolicy fields that do not apply to a tcp destination: its
#: connections are proxied as bytes (no route, no request, no header). Field
#: path (under spec) -> why, and what to do instead.
NOT_FOR_TCP: dict[str, tuple[str, str]] = {
    "requestTimeout": ("its connections carry no HTTP request to time out",
                       "remove it (connectTimeout still bounds connecting)"),
    "idleTimeout": ("it ends an idle HTTP stream, and tcp has none", "remove it"),
    "retries": ("only HTTP requests are retried, never a tcp connection", "remove it"),
    "loadBalancer.hashOn.header": ("a tcp connection has no headers, so the proxies would "
                                   "hash on the caller's address instead",
                                   "say so with hashOn: {sourceIP: true}"),
    "circuitBreaker.maxRequests": ("it caps concurrent HTTP requests",
                                   "cap connections with maxConnections instead"),
    "circuitBreaker.maxRetries": ("it caps concurrent retries, and tcp gets none", "remove it"),
}


def _not_for_tcp(spec: TrafficPolicySpec) -> list[str]:
    """The fields of NOT_FOR_TCP a policy spec sets (to other than their default)."""
    found = []
    for path in NOT_FOR_TCP:
        *parents, last = [to_snake(part) for part in path.split(".")]
        model: BaseModel | None = spec
        for part in parents:
            model = getattr(model, part) if model is not None else None
        if model is not None and getattr(model, last) != type(model).model_fields[
                last].get_default(call_default_factory=True):
            found.append(path)
    return found


def _is_tcp(service: Resource | None) -> bool:
    return service is not None and service.typed(ServiceSpec).protocol == "tcp"


def _policy_for_tcp(policy: Resource, lookup: Any, source: str) -> list[FieldViolation]:
    spec = policy.typed(TrafficPolicySpec)
    dest = lookup(ObjectKey("Service", policy.namespace, spec.destination))
    if not _is_tcp(dest):
        return []
    return [
        FieldViolation(
            f"spec.{path}",
            f"Service {dest.namespace}/{dest.name} speaks tcp, and {path} does not apply: "
            f"{NOT_FOR_TCP[path][0]}; {NOT_FOR_TCP[path][1]}, or change that Service's "
            "protocol to http or grpc",
            source,
        )
        for path in _not_for_tcp(spec)
    ]


def _policy_turned_tcp(service: Resource, stored: Any, siblings: Any,
                       mine: Mapping[ObjectKey, Resource], source: str) -> list[FieldViolation]:
    """A Service that changes to tcp leaves its stored TrafficPolicy nothing
    that tcp ignores (a policy in the same batch is judged by _policy_for_tcp)."""
    before = stored(service.key)
    if not _is_tcp(service) or _is_tcp(before):
        return []
    for policy in siblings("TrafficPolicy", service.namespace):
        spec = policy.typed(TrafficPolicySpec)
        ignored = _not_for_tcp(spec)
        if spec.destination == service.name and ignored and policy.key not in mine:
            return [FieldViolation(
                "spec.protocol",
                f"TrafficPolicy {policy.namespace}/{policy.name} sets {', '.join(ignored)}, "
                "which a tcp destination ignores; change that policy (first, or in the same "
                "apply), or keep protocol http or grpc", source)]
    return []


def _one_policy_per_destination(
    policy: Resource, siblings: Any, source: str
) -> list[FieldViolation]:
    dest = policy.typed(TrafficPolicySpec).destination
    for other in siblings("TrafficPolicy", policy.namespace):
        if other.name != policy.name and other.typed(TrafficPolicySpec).destination == dest:
            return [
                FieldViolation(
                    "spec.destination",
                    f"Service {policy.namespace}/{dest} already has TrafficPolicy "
                    f"{other.name!r}; a destination has one policy, so edit that one",
                    source,
                )
            ]
    return []


def _intention_rules(
    intention: Resource, lookup: Any, siblings: Any, source: str
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    spec = intention.typed(IntentionSpec)
    pair = (_qualify(spec.source, intention.namespace),
            _qualify(spec.destination, intention.namespace))
    for other in siblings("Intention", intention.namespace):
        theirs = other.typed(IntentionSpec)
        other_pair = (_qualify(theirs.source, other.namespace),
                      _qualify(theirs.destination, other.namespace))
        if other.name != intention.name and other_pair == pair:
            out.append(
                FieldViolation(
                    "spec.source",
                    f"Intention {other.name!r} already covers {pair[0]} -> {pair[1]}; "
                    "one intention per source and destination, so edit that one",
                    source,
                )
            )
            break
    namespace, _, name = pair[1].partition("/")
    dest = lookup(ObjectKey("Service", namespace, name)) if "*" not in (namespace, name) else None
    if dest is not None and dest.typed(ServiceSpec).external is not None:
        out.append(
            FieldViolation(
                "spec.destination",
                f"Service {pair[1]} is external: its instances run outside the mesh, with no "
                "sidecar to enforce intentions; remove this intention (any Service that "
                "lists it in spec.upstreams may call it)",
                source,
            )
        )
    if spec.http and _is_tcp(dest):
        out.append(
            FieldViolation(
                "spec.http",
                f"Service {pair[1]} speaks tcp; http rules need an http or grpc "
                "destination, so remove spec.http or change its protocol",
                source,
            )
        )
    return out


def _qualify(pattern: str, namespace: str) -> str:
    """A service pattern of an intention in ``namespace`` as ``ns/name``: ``*``
    alone is every namespace's every service (as intentions read it)."""
    if pattern == "*":
        return "*/*"
    return pattern if "/" in pattern else f"{namespace}/{pattern}"
