"""The Service spec: a mesh identity and, optionally, the workload behind it."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from cryptography import x509
from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from controlplane.model.specs.common import (
    RESERVED_PORTS,
    PlacementSpec,
    Schema,
    not_supported_yet,
    one_of,
)
from controlplane.model.types import (
    ENV_NAME,
    AbsPath,
    Duration,
    FieldError,
    Int,
    Name,
    NonNegativeInt,
    Port,
    PositiveInt,
    Replicas,
)
from controlplane.model.types import is_consul_name, is_server_name


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
        one_of(self, ("http", "tcp", "grpc"), "a health check")
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


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"{value!r} is not an address range: write one like '10.0.0.0/8' or "
                         f"'2001:db8::/32' ({error})") from None
    return value


Cidr = Annotated[str, AfterValidator(_check_cidr)]


class Registration(Schema):
    #: The address ranges instances registered over the API may serve from;
    #: empty (the default): none may register.
    cidrs: list[Cidr] = []

    def allows(self, address: str) -> bool:
        parsed = ipaddress.ip_address(address)
        return any(parsed in ipaddress.ip_network(cidr) for cidr in self.cidrs)


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
                    "autoscaling", "mounts", "registration")


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
        one_of(self, ("config_map", "secret"), "a mount")
        return self


class EnvFrom(Schema):
    config_map: Name | None = None
    secret: Name | None = None

    @model_validator(mode="after")
    def _source(self) -> EnvFrom:
        one_of(self, ("config_map", "secret"), "envFrom")
        return self


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not ENV_NAME.match(key):
            raise ValueError(
                f"{key!r} is not a valid environment variable name: use letters, digits "
                "and '_', not starting with a digit"
            )
    return env


class WorkloadFields(Schema):
    """What shapes one instance of a Service: its template (replicas,
    placement, update and autoscaling do not)."""

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
    restart_policy: Literal["always", "on-failure", "never"] = "always"
    driver: Literal["docker", "process"] | None = None
    upstreams: list[Upstream] = []
    mounts: list[Mount] = []


class Workload(WorkloadFields):
    """One instance's workload, as its Instance object and the agent's
    assignment carry it: a Service's template, or a Gateway's Envoy."""

    model_config = ConfigDict(populate_by_name=True)

    #: The instance is a Gateway's Envoy, holding ``host_ports`` on its node.
    gateway: bool | None = None
    host_ports: list[Port] | None = None


class ServiceSpec(WorkloadFields):
    replicas: Replicas | None = None
    placement: PlacementSpec = PlacementSpec()
    update: UpdateStrategy = UpdateStrategy()
    autoscaling: Autoscaling | None = not_supported_yet(
        "autoscaling is not supported yet: nothing scales instances on load; "
        "set spec.replicas (or `flotilla scale`) instead")
    #: Instances registered in Consul by others serve this Service.
    external: External | None = None
    #: Who may register instances of it over the API (RegisterInstance).
    registration: Registration = Registration()

    @property
    def has_workload(self) -> bool:
        return self.image is not None or self.command is not None

    @property
    def desired_replicas(self) -> int:
        """``replicas``, or its default: 1 with a workload, 0 without."""
        if self.replicas is not None:
            return self.replicas
        return 1 if self.has_workload else 0

    def workload(self) -> Workload:
        return Workload.model_validate(
            {name: getattr(self, name) for name in WorkloadFields.model_fields})

    @model_validator(mode="after")
    def _workload(self) -> ServiceSpec:
        if self.external is not None:
            self._external()
        if not self.has_workload and self.replicas:
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
            return self.model_copy(update={"replicas": self.desired_replicas})
        return self
