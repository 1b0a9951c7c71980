"""Pydantic schemas of every kind's ``spec``, plus the document envelope.

Field names are camelCase in manifests (``healthCheck``, ``maxSurge``), as in
Kubernetes. Unknown fields are rejected, integers are strict, and each
cross-field rule raises ``ValueError`` with a message that says what to change.
Rules that look at other objects (references) live in
:mod:`controlplane.manifests.references`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Annotated, Any, Literal

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from cryptography import x509
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from controlplane.manifests.types import (
    DATA_KEY,
    ENV_NAME,
    AbsPath,
    Duration,
    FieldError,
    Int,
    Labels,
    Name,
    NonNegativeInt,
    Percent,
    Port,
    PositiveInt,
    check_dns_label,
    check_label_key,
)
from controlplane.model.external import is_consul_name, is_server_name

#: Ports inside every pod that belong to the Envoy sidecar.
RESERVED_PORTS = range(15000, 15100)


class Schema(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, frozen=True, populate_by_name=False
    )


#: The key, in a field's ``json_schema_extra``, of why the field is refused:
#: the schema knows its shape, Flotilla does not give it an effect yet.
NOT_SUPPORTED = "flotilla-not-supported"
#: The key, in a field's ``json_schema_extra``, of values refused the same way.
NOT_SUPPORTED_VALUES = "flotilla-not-supported-values"


def not_supported_yet(why: str, default: Any = None) -> Any:
    """A field that validates but is refused at apply when set (anything but
    *default*): *why* says what is missing and what to do instead. The issue
    that gives the field its effect removes the marker."""
    return Field(default=default, json_schema_extra={NOT_SUPPORTED: why})


def _one_of(model: BaseModel, fields: tuple[str, ...], where: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(to_camel(f) for f in fields)
        got = ", ".join(to_camel(f) for f in given) or "none"
        raise ValueError(f"{where} needs exactly one of {names} (got {got})")


# --- Service -----------------------------------------------------------------


class ResourceLimits(Schema):
    #: CPU in millicores (1000 = one core).
    cpu: Annotated[Int, Field(ge=1, le=256_000)] = 100
    #: Memory in MiB.
    memory: Annotated[Int, Field(ge=4, le=1_048_576)] = 128


class HttpCheck(Schema):
    path: AbsPath = "/"
    port: Port | None = None


class TcpCheck(Schema):
    port: Port | None = None


class GrpcCheck(Schema):
    #: The service name sent in grpc.health.v1 Check; empty checks the server.
    service: str = ""
    port: Port | None = None


class HealthCheck(Schema):
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    grpc: GrpcCheck | None = None
    interval: Duration = "5s"
    timeout: Duration = "2s"
    initial_delay: Duration = "0s"
    failure_threshold: PositiveInt = 3

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        _one_of(self, ("http", "tcp", "grpc"), "a health check")
        return self


class Constraint(Schema):
    key: Annotated[str, Field(min_length=1)]
    operator: Literal["=", "!=", "in", "not-in", "exists", "not-exists"] = "="
    value: str | None = None
    values: list[str] | None = None

    @model_validator(mode="after")
    def _operands(self) -> Constraint:
        if self.operator in ("=", "!=") and (self.value is None or self.values is not None):
            raise ValueError(f"operator {self.operator!r} takes one 'value' (and no 'values')")
        if self.operator in ("in", "not-in") and (not self.values or self.value is not None):
            raise ValueError(f"operator {self.operator!r} takes a non-empty 'values' list")
        if self.operator in ("exists", "not-exists") and (
            self.value is not None or self.values is not None
        ):
            raise ValueError(f"operator {self.operator!r} takes neither 'value' nor 'values'")
        return self


#: A node label key, as in ``spec.placement.spreadBy``.
LabelKey = Annotated[str, AfterValidator(check_label_key)]


class PlacementSpec(Schema):
    """Where a Service's instances may run, and which nodes they prefer.

    Services named here are in the same namespace. ``affinity`` and
    ``antiAffinity`` are required (a node that breaks one is not a candidate);
    the ``preferred`` forms only score.
    """

    constraints: list[Constraint] = []
    #: spread balances load across nodes and keeps replicas apart; binpack
    #: fills the fullest node first, replicas included.
    strategy: Literal["binpack", "spread"] = "spread"
    #: Only nodes running an instance of each of these services; naming
    #: the Service itself is ignored.
    affinity: list[Name] = []
    #: Only nodes running no instance of these services; naming the Service
    #: itself keeps its replicas on distinct nodes.
    anti_affinity: list[Name] = []
    #: Prefer nodes running instances of these services.
    preferred_affinity: list[Name] = []
    #: Prefer nodes running no instance of these services.
    preferred_anti_affinity: list[Name] = []
    #: Balance the replicas across the values of these node labels (rack,
    #: zone); nodes without a label are used only when no labelled node fits.
    spread_by: list[LabelKey] = []

    @model_validator(mode="after")
    def _consistent(self) -> PlacementSpec:
        for i, name in enumerate(self.anti_affinity):
            if name in self.affinity:
                raise FieldError(
                    f"antiAffinity[{i}]",
                    f"{name!r} is also in affinity: no node can both run it and not run it; "
                    "keep it in one of them (or make one preferredAffinity / "
                    "preferredAntiAffinity)")
        for i, key in enumerate(self.spread_by):
            if key in self.spread_by[:i]:
                raise FieldError(f"spreadBy[{i}]", f"{key!r} is listed twice; list it once")
        return self


class Upstream(Schema):
    name: Name
    namespace: Name | None = None
    #: Local port the app dials; defaults to the upstream service's port.
    port: Port | None = None


def _check_server_name(value: str) -> str:
    if not is_server_name(value):
        raise ValueError(f"{value!r} is not a DNS name: use one like 'payments.example.com'")
    return value


def _check_consul_name(value: str) -> str:
    if not is_consul_name(value):
        raise ValueError(f"{value!r} is not a Consul service name: use letters, digits, '-', "
                         "'_' or '.', starting and ending with a letter or digit")
    return value


def _check_pem_certificates(value: str) -> str:
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise ValueError("must be PEM: one or more certificates, each from "
                         "'-----BEGIN CERTIFICATE-----' to '-----END CERTIFICATE-----'") from None
    return value


class ExternalTls(Schema):
    #: The server name sent in the handshake; with ``ca``, also the DNS name
    #: the server's certificate must carry.
    sni: Annotated[str, AfterValidator(_check_server_name)] | None = None
    #: PEM certificates the server's must chain to; without it the connection
    #: is encrypted but the server is not verified.
    ca: Annotated[str, AfterValidator(_check_pem_certificates)] | None = None


class External(Schema):
    #: The Consul service whose passing instances serve; default: metadata.name.
    service: Annotated[str, AfterValidator(_check_consul_name)] | None = None
    #: Originate TLS to every instance (without it: to the instances whose
    #: Consul meta says flotilla-tls: "true").
    tls: ExternalTls | None = None


#: Fields that describe a workload Flotilla runs: an external Service has none.
_WORKLOAD_FIELDS = ("image", "command", "args", "env", "env_from", "resources", "health_check",
                    "restart_policy", "driver", "placement", "upstreams", "update",
                    "autoscaling", "mounts")


class UpdateStrategy(Schema):
    strategy: Literal["rolling", "recreate"] = "rolling"
    max_surge: NonNegativeInt = 1
    max_unavailable: NonNegativeInt = 0

    @model_validator(mode="after")
    def _progress(self) -> UpdateStrategy:
        if self.strategy == "rolling" and self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "a rolling update with maxSurge 0 and maxUnavailable 0 can never progress; "
                "set one of them to at least 1"
            )
        return self


class Autoscaling(Schema):
    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt
    target_cpu_percent: Annotated[Int, Field(ge=1, le=100)] = 80

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise FieldError(
                "maxReplicas",
                f"maxReplicas ({self.max_replicas}) must be >= minReplicas ({self.min_replicas})"
            )
        return self


class Mount(Schema):
    config_map: Name | None = None
    secret: Name | None = None
    #: Directory inside the instance where each key becomes a file.
    path: AbsPath

    @model_validator(mode="after")
    def _source(self) -> Mount:
        _one_of(self, ("config_map", "secret"), "a mount")
        return self


class EnvFrom(Schema):
    config_map: Name | None = None
    secret: Name | None = None

    @model_validator(mode="after")
    def _source(self) -> EnvFrom:
        _one_of(self, ("config_map", "secret"), "envFrom")
        return self


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not ENV_NAME.match(key):
            raise ValueError(
                f"{key!r} is not a valid environment variable name: use letters, digits "
                "and '_', not starting with a digit"
            )
    return env


class ServiceSpec(Schema):
    image: Annotated[str, Field(min_length=1)] | None = None
    command: Annotated[list[str], Field(min_length=1)] | None = None
    args: list[str] = []
    env: Annotated[dict[str, str], AfterValidator(_check_env)] = {}
    env_from: list[EnvFrom] = []
    #: The app's port inside its instance; Envoy forwards inbound traffic to it.
    port: Port | None = None
    protocol: Literal["http", "grpc", "tcp"] = "http"
    resources: ResourceLimits = ResourceLimits()
    health_check: HealthCheck | None = None
    replicas: NonNegativeInt | None = None
    restart_policy: Literal["always", "on-failure", "never"] = "always"
    driver: Literal["docker", "process"] | None = None
    placement: PlacementSpec = PlacementSpec()
    upstreams: list[Upstream] = []
    update: UpdateStrategy = UpdateStrategy()
    autoscaling: Autoscaling | None = not_supported_yet(
        "autoscaling is not supported yet: nothing scales instances on load; "
        "set spec.replicas (or `flotilla scale`) instead")
    mounts: list[Mount] = []
    #: Instances registered in Consul by others serve this Service.
    external: External | None = None

    @model_validator(mode="after")
    def _workload(self) -> ServiceSpec:
        if self.external is not None:
            self._external()
        has_workload = self.image is not None or self.command is not None
        if not has_workload and self.replicas:
            raise FieldError(
                "replicas",
                "replicas > 0 needs a workload: set image or command, or set replicas "
                "to 0 for a Service whose instances register themselves",
            )
        if self.port is not None and self.port in RESERVED_PORTS:
            raise FieldError(
                "port",
                f"port {self.port} is reserved for the sidecar (15000-15099); pick another"
            )
        check = self.health_check
        if check is not None and self.port is None:
            inner = check.http or check.tcp or check.grpc
            if inner is not None and inner.port is None:
                raise FieldError(
                    "healthCheck", "needs a port: set spec.port or the check's own port"
                )
        seen: set[tuple[str, str | None]] = set()
        for i, up in enumerate(self.upstreams):
            if (up.name, up.namespace) in seen:
                raise FieldError(f"upstreams[{i}].name", f"{up.name!r} is listed twice; list it once")
            seen.add((up.name, up.namespace))
        return self

    def _external(self) -> None:
        for name in _WORKLOAD_FIELDS:
            # Defaults are stored, so `get -o yaml` output carries them: allowed.
            if getattr(self, name) != type(self).model_fields[name].get_default(
                    call_default_factory=True):
                raise FieldError(
                    to_camel(name), f"an external Service runs nothing in the mesh (its "
                    f"instances are the ones registered in Consul); remove {to_camel(name)}, "
                    "or remove spec.external to run a workload")
        if self.replicas:
            raise FieldError("replicas", "an external Service has no replicas: its instances "
                             "are the ones registered in Consul; remove replicas")
        if self.port is None:
            raise FieldError("port", "an external Service needs the port apps call it on "
                             "(their sidecar listens there and forwards to each instance's "
                             "own port in Consul); set spec.port")

    def normalized(self) -> ServiceSpec:
        if self.replicas is None:
            workload = self.image is not None or self.command is not None
            return self.model_copy(update={"replicas": 1 if workload else 0})
        return self


# --- TrafficPolicy -----------------------------------------------------------


class HashOn(Schema):
    header: str | None = None
    source_ip: bool | None = Field(default=None, alias="sourceIP")

    @model_validator(mode="after")
    def _key(self) -> HashOn:
        if (self.header is None) == (not self.source_ip):
            raise ValueError("hashOn needs exactly one of header or sourceIP: true")
        return self


class LoadBalancer(Schema):
    algorithm: Literal["round-robin", "least-request", "ring-hash", "random"] = "round-robin"
    hash_on: HashOn | None = None

    @model_validator(mode="after")
    def _hash(self) -> LoadBalancer:
        if self.algorithm == "ring-hash" and self.hash_on is None:
            raise ValueError("algorithm ring-hash needs hashOn (a header or sourceIP: true)")
        if self.algorithm != "ring-hash" and self.hash_on is not None:
            raise ValueError("hashOn only applies to algorithm ring-hash")
        return self


RetryOn = Literal[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "unavailable",
]


class Retries(Schema):
    attempts: Annotated[Int, Field(ge=0, le=10)]
    per_try_timeout: Duration | None = None
    retry_on: list[RetryOn] = ["connect-failure", "refused-stream", "unavailable"]


class CircuitBreaker(Schema):
    max_connections: PositiveInt | None = None
    max_pending_requests: PositiveInt | None = None
    max_requests: PositiveInt | None = None
    max_retries: NonNegativeInt | None = None


class OutlierDetection(Schema):
    consecutive_5xx: PositiveInt = Field(default=5, alias="consecutive5xx")
    interval: Duration = "10s"
    base_ejection_time: Duration = "30s"
    max_ejection_percent: Percent = 10


class Subset(Schema):
    name: Name
    labels: Annotated[Labels, Field(min_length=1)]


class WeightedSubset(Schema):
    subset: Name
    weight: Percent


#: Envoy refuses a regex whose RE2 program is larger (its runtime key
#: ``re2.max_program_size.error_level``, which sidecar bootstraps leave at its
#: default): the whole listener or route table carrying it would be NACKed.
MAX_REGEX_PROGRAM_SIZE = 100


@functools.lru_cache(maxsize=1024)
def re2_regex(pattern: str) -> Any:
    """*pattern* compiled by RE2, the engine Envoy runs every ``safe_regex``
    with; raises ``re2.error``. Whatever decides a match in Python (`flotilla
    intentions check`) matches with this, so it decides as the proxies do."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _check_regex(value: str) -> str:
    try:
        size = re2_regex(value).programsize
    except re2.error as error:
        reason = error.args[0].decode() if isinstance(error.args[0], bytes) else error.args[0]
        raise ValueError(
            f"{value!r} is not a regex Envoy runs ({reason}): write RE2 syntax, which has no "
            "backreferences, lookahead or lookbehind, possessive quantifiers or atomic groups"
        ) from None
    if size > MAX_REGEX_PROGRAM_SIZE:
        raise ValueError(f"{value!r} is too complex for Envoy (RE2 program size {size}, at most "
                         f"{MAX_REGEX_PROGRAM_SIZE}): simplify it, or match with exact or prefix")
    return value


#: An HTTP field name (RFC 9110 token), or a pseudo-header (``:authority``).
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name: use letters, digits and "
                         "!#$%&'*+-.^_`|~ (a pseudo-header such as ':authority' starts with ':')")
    return value


class HeaderMatch(Schema):
    """One request header: exactly one of exact, prefix, regex (RE2, matched
    against the whole value) or present. Names are case-insensitive."""

    name: Annotated[str, AfterValidator(_check_header_name)]
    exact: str | None = None
    prefix: Annotated[str, Field(min_length=1)] | None = None
    regex: Annotated[str, Field(min_length=1), AfterValidator(_check_regex)] | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _how(self) -> HeaderMatch:
        _one_of(self, ("exact", "prefix", "regex", "present"), f"header match {self.name!r}")
        return self


class RouteMatch(Schema):
    path: AbsPath | None = None
    path_prefix: AbsPath | None = None
    methods: list[str] = []
    headers: list[HeaderMatch] = []

    @model_validator(mode="after")
    def _path(self) -> RouteMatch:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError("match takes path or pathPrefix, not both")
        return self


def _check_split(split: list[WeightedSubset]) -> list[WeightedSubset]:
    if split:
        total = sum(w.weight for w in split)
        if total != 100:
            raise ValueError(f"weights must add up to 100, got {total}")
        names = [w.subset for w in split]
        if len(set(names)) != len(names):
            raise ValueError("each subset may appear once in a split")
    return split


Split = Annotated[list[WeightedSubset], AfterValidator(_check_split)]


class Route(Schema):
    match: RouteMatch
    split: Split = []
    subset: Name | None = None

    @model_validator(mode="after")
    def _target(self) -> Route:
        if bool(self.split) == (self.subset is not None):
            raise ValueError("a route sends traffic to a subset or a split; give exactly one")
        return self


class FaultDelay(Schema):
    percent: Percent
    duration: Duration


class FaultAbort(Schema):
    percent: Percent
    http_status: Annotated[Int, Field(ge=200, le=599)] | None = None
    grpc_status: Annotated[Int, Field(ge=1, le=16)] | None = None

    @model_validator(mode="after")
    def _status(self) -> FaultAbort:
        _one_of(self, ("http_status", "grpc_status"), "an abort fault")
        return self


class Faults(Schema):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class RateLimit(Schema):
    requests: PositiveInt
    per: Duration = "1s"
    burst: PositiveInt | None = None


class TrafficPolicySpec(Schema):
    #: The Service this policy shapes traffic to (same namespace).
    destination: Name
    load_balancer: LoadBalancer = LoadBalancer()
    connect_timeout: Duration = "5s"
    request_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    retries: Retries | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    subsets: list[Subset] = not_supported_yet(
        "subsets are not supported yet: every instance of the destination serves "
        "every request; remove subsets", default=[])
    split: Split = not_supported_yet(
        "weighted splits are not supported yet: traffic is balanced over every "
        "instance; remove split", default=[])
    routes: list[Route] = not_supported_yet(
        "routes are not supported yet: every request goes to every instance; "
        "remove routes", default=[])
    faults: Faults | None = not_supported_yet(
        "fault injection is not supported yet: no delay or abort would be injected; "
        "remove faults")
    rate_limit: RateLimit | None = not_supported_yet(
        "rate limits are not supported yet: no request would be limited; remove rateLimit")

    @model_validator(mode="after")
    def _subsets(self) -> TrafficPolicySpec:
        names = [s.name for s in self.subsets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise FieldError(
                    f"subsets[{i}].name", f"subset {name!r} is defined twice; names must be unique"
                )
        defined = set(names)
        used = [w.subset for w in self.split]
        for route in self.routes:
            used += [w.subset for w in route.split] + ([route.subset] if route.subset else [])
        for name in used:
            if name not in defined:
                known = ", ".join(sorted(defined)) or "none defined"
                raise ValueError(
                    f"subset {name!r} is used but not defined in subsets ({known}); "
                    "define it or fix the name"
                )
        return self


# --- Intention ---------------------------------------------------------------

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]


def _check_service_pattern(value: str) -> str:
    """``svc``, ``ns/svc``, ``*``, ``ns/*`` or ``*/*``."""
    namespace, _, name = value.rpartition("/")
    for part in (namespace, name) if namespace else (name,):
        if part != "*":
            try:
                check_dns_label(part)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a service: use 'name', 'namespace/name', "
                    "or '*' as a wildcard for either part"
                ) from None
    return value


ServicePattern = Annotated[str, AfterValidator(_check_service_pattern)]


class HttpPermission(Schema):
    path_exact: AbsPath | None = None
    path_prefix: AbsPath | None = None
    methods: list[HttpMethod] = []
    headers: list[HeaderMatch] = []

    @model_validator(mode="after")
    def _path(self) -> HttpPermission:
        if self.path_exact is not None and self.path_prefix is not None:
            raise ValueError("use pathExact or pathPrefix, not both")
        if self.path_exact is None and self.path_prefix is None and not (
            self.methods or self.headers
        ):
            raise ValueError("an http rule needs at least one of pathExact, pathPrefix, "
                             "methods or headers")
        return self


class IntentionSpec(Schema):
    source: ServicePattern
    destination: ServicePattern
    action: Literal["allow", "deny"]
    #: L7 rules for http and grpc destinations: the intention applies to a
    #: request when any rule matches it. Empty: every request (L4).
    http: list[HttpPermission] = []
    description: str = ""


# --- Gateway -----------------------------------------------------------------


class GatewayRoute(Schema):
    host: str | None = None
    path_prefix: AbsPath = "/"
    service: Name
    namespace: Name | None = None


class GatewayTLS(Schema):
    #: A Secret of type tls holding tls.crt and tls.key.
    secret: Name


class Listener(Schema):
    name: Name
    port: Port
    protocol: Literal["http", "https", "tcp"] = Field(default="http", json_schema_extra={
        NOT_SUPPORTED_VALUES: {"https": "https listeners are not supported yet: the gateway "
                               "would serve plain HTTP on this port; use protocol http (and "
                               "terminate TLS in front of the gateway)"}})
    tls: GatewayTLS | None = not_supported_yet(
        "TLS at the gateway is not supported yet; remove tls and use protocol http")
    routes: Annotated[list[GatewayRoute], Field(min_length=1)]

    @model_validator(mode="after")
    def _tls(self) -> Listener:
        if self.protocol == "https" and self.tls is None:
            raise ValueError("protocol https needs tls.secret naming a Secret of type tls")
        if self.protocol != "https" and self.tls is not None:
            raise ValueError(f"tls only applies to protocol https, not {self.protocol}")
        if self.protocol == "tcp" and (
            len(self.routes) != 1 or self.routes[0].host is not None
            or self.routes[0].path_prefix != "/"
        ):
            raise ValueError("a tcp listener forwards to exactly one route, without host or "
                             "pathPrefix")
        seen: set[tuple[str | None, str]] = set()
        for route in self.routes:
            if (route.host, route.path_prefix) in seen:
                raise ValueError(
                    f"two routes match host {route.host or '*'} and pathPrefix "
                    f"{route.path_prefix}; the second could never be reached"
                )
            seen.add((route.host, route.path_prefix))
        return self


class GatewaySpec(Schema):
    listeners: Annotated[list[Listener], Field(min_length=1)]
    replicas: PositiveInt = 1
    placement: PlacementSpec = PlacementSpec()

    @model_validator(mode="after")
    def _unique(self) -> GatewaySpec:
        names: dict[str, int] = {}
        ports: dict[int, int] = {}
        for i, listener in enumerate(self.listeners):
            if listener.name in names:
                raise FieldError(
                    f"listeners[{i}].name",
                    f"{listener.name!r} is already used by listeners[{names[listener.name]}]; "
                    "give each listener its own name",
                )
            if listener.port in ports:
                raise FieldError(
                    f"listeners[{i}].port",
                    f"port {listener.port} is already used by listeners[{ports[listener.port]}]; "
                    "give each listener its own port",
                )
            names[listener.name] = i
            ports[listener.port] = i
        return self


# --- ConfigMap and Secret ----------------------------------------------------

MAX_DATA_BYTES = 1024 * 1024


def _check_keys(data: dict[str, str]) -> dict[str, str]:
    for key in data:
        if len(key) > 253 or not DATA_KEY.match(key):
            raise ValueError(
                f"key {key!r} is not valid: use letters, digits, '-', '_' or '.' "
                "(it becomes a file name)"
            )
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > MAX_DATA_BYTES:
        raise ValueError(f"data is {size} bytes; keep it under {MAX_DATA_BYTES} (1 MiB)")
    return data


DataMap = Annotated[dict[str, str], AfterValidator(_check_keys)]


class ConfigMapSpec(Schema):
    data: DataMap = {}


class SecretSpec(Schema):
    #: tls: for TLS at the gateway (needs tls.crt and tls.key), which comes later.
    type: Literal["opaque", "tls"] = Field(default="opaque", json_schema_extra={
        NOT_SUPPORTED_VALUES: {"tls": "Secrets of type tls are not supported yet: they come "
                               "with TLS at the gateway, which is not supported yet either, and "
                               "nothing else reads the type; use type opaque (tls.crt and "
                               "tls.key then mount as files like any other keys)"}})
    #: Values base64-encoded.
    data: DataMap = {}
    #: Values as plain text; merged into data when stored.
    string_data: DataMap | None = None

    @model_validator(mode="after")
    def _decode(self) -> SecretSpec:
        for key, value in self.data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"data[{key!r}] is not valid base64; encode it, or put the plain "
                    "text under stringData"
                ) from None
        plain = self.string_data or {}
        both = sorted(set(self.data) & set(plain))
        if both:
            raise ValueError(f"key {both[0]!r} is in both data and stringData; keep one")
        keys = set(self.data) | set(plain)
        if self.type == "tls" and not {"tls.crt", "tls.key"} <= keys:
            raise ValueError("a Secret of type tls needs the keys tls.crt and tls.key")
        return self

    def normalized(self) -> SecretSpec:
        merged = dict(self.data)
        for key, value in (self.string_data or {}).items():
            merged[key] = base64.b64encode(value.encode()).decode()
        return self.model_copy(update={"data": dict(sorted(merged.items())), "string_data": None})


SPEC_SCHEMAS: dict[str, type[Schema]] = {
    "Service": ServiceSpec,
    "TrafficPolicy": TrafficPolicySpec,
    "Intention": IntentionSpec,
    "Gateway": GatewaySpec,
    "ConfigMap": ConfigMapSpec,
    "Secret": SecretSpec,
}


# --- The document envelope ---------------------------------------------------


class Metadata(Schema):
    name: Name
    namespace: Name = "default"
    labels: Labels = {}
    annotations: dict[str, str] = {}
    #: A precondition on apply; the server's value on output.
    resource_version: Int | None = None
    # Output-only fields, accepted so that `get -o yaml` output can be reapplied.
    uid: str | None = None
    generation: Int | None = None
    create_time: str | None = None
    update_time: str | None = None


class Document(Schema):
    api_version: str
    kind: str
    metadata: Metadata
    spec: dict[str, Any] = {}
    #: Written by the system; ignored on input.
    status: dict[str, Any] | None = None
