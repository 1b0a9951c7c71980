"""The TrafficPolicy spec: how traffic to one destination Service is shaped."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from controlplane.model.specs.common import HeaderMatch, Schema, not_supported_yet, one_of
from controlplane.model.types import (
    AbsPath,
    Duration,
    FieldError,
    Int,
    Labels,
    Name,
    NonNegativeInt,
    Percent,
    PositiveInt,
)


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


#: Failures where the request never reached an app: safe to retry.
SAFE_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "refused-stream", "unavailable")


class Retries(Schema):
    attempts: Annotated[Int, Field(ge=0, le=10)]
    per_try_timeout: Duration | None = None
    #: Empty: :data:`SAFE_RETRY_ON` (see ``conditions``).
    retry_on: list[RetryOn] = list(SAFE_RETRY_ON)

    @property
    def conditions(self) -> list[RetryOn]:
        """What is retried: ``retry_on``, or the safe failures when it is empty."""
        return self.retry_on or list(SAFE_RETRY_ON)


#: The retries of a destination whose policy sets none (or that has no
#: policy), as meshes do: what never reached the app, twice.
MESH_RETRIES = Retries(attempts=2)


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
        one_of(self, ("http_status", "grpc_status"), "an abort fault")
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
    #: None: :data:`MESH_RETRIES` (see ``effective_retries``).
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

    @property
    def effective_retries(self) -> Retries:
        """``retries``, or :data:`MESH_RETRIES` when the policy sets none."""
        return self.retries if self.retries is not None else MESH_RETRIES

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
