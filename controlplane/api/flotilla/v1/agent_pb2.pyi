import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from controlplane.api.flotilla.v1 import nodes_pb2 as _nodes_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("name", "address", "labels", "capacity", "drivers", "logs_endpoint", "csr_pem", "timestamp", "proof")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    LOGS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    labels: _containers.ScalarMap[str, str]
    capacity: _nodes_pb2.Capacity
    drivers: _containers.RepeatedScalarFieldContainer[str]
    logs_endpoint: str
    csr_pem: str
    timestamp: int
    proof: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[_nodes_pb2.Capacity, _Mapping]] = ..., drivers: _Optional[_Iterable[str]] = ..., logs_endpoint: _Optional[str] = ..., csr_pem: _Optional[str] = ..., timestamp: _Optional[int] = ..., proof: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("node", "report_interval_seconds", "node_certificate_pem", "trust_bundle_pem", "agent_port", "proof")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NODE_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_PORT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    node: _nodes_pb2.Node
    report_interval_seconds: float
    node_certificate_pem: str
    trust_bundle_pem: str
    agent_port: int
    proof: str
    def __init__(self, node: _Optional[_Union[_nodes_pb2.Node, _Mapping]] = ..., report_interval_seconds: _Optional[float] = ..., node_certificate_pem: _Optional[str] = ..., trust_bundle_pem: _Optional[str] = ..., agent_port: _Optional[int] = ..., proof: _Optional[str] = ...) -> None: ...

class RenewNodeCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class NodeCertificate(_message.Message):
    __slots__ = ("certificate_pem", "trust_bundle_pem", "serial", "not_after", "root")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    trust_bundle_pem: str
    serial: str
    not_after: _timestamp_pb2.Timestamp
    root: str
    def __init__(self, certificate_pem: _Optional[str] = ..., trust_bundle_pem: _Optional[str] = ..., serial: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., root: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("instance_id", "namespace", "service", "revision", "workload", "driver", "env_from", "mounts")
    class EnvFromEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    ENV_FROM_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    namespace: str
    service: str
    revision: int
    workload: Workload
    driver: str
    env_from: _containers.ScalarMap[str, str]
    mounts: _containers.RepeatedCompositeFieldContainer[MountedFiles]
    def __init__(self, instance_id: _Optional[str] = ..., namespace: _Optional[str] = ..., service: _Optional[str] = ..., revision: _Optional[int] = ..., workload: _Optional[_Union[Workload, _Mapping]] = ..., driver: _Optional[str] = ..., env_from: _Optional[_Mapping[str, str]] = ..., mounts: _Optional[_Iterable[_Union[MountedFiles, _Mapping]]] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("image", "command", "args", "env", "port", "protocol", "cpu_millis", "memory_mib", "health_check", "restart_policy", "upstreams", "gateway")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    port: int
    protocol: str
    cpu_millis: int
    memory_mib: int
    health_check: HealthCheck
    restart_policy: str
    upstreams: _containers.RepeatedCompositeFieldContainer[Upstream]
    gateway: bool
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ..., cpu_millis: _Optional[int] = ..., memory_mib: _Optional[int] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., restart_policy: _Optional[str] = ..., upstreams: _Optional[_Iterable[_Union[Upstream, _Mapping]]] = ..., gateway: _Optional[bool] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("http", "tcp", "grpc", "interval", "timeout", "initial_delay", "failure_threshold")
    HTTP_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_DELAY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    http: HttpProbe
    tcp: TcpProbe
    grpc: GrpcProbe
    interval: _duration_pb2.Duration
    timeout: _duration_pb2.Duration
    initial_delay: _duration_pb2.Duration
    failure_threshold: int
    def __init__(self, http: _Optional[_Union[HttpProbe, _Mapping]] = ..., tcp: _Optional[_Union[TcpProbe, _Mapping]] = ..., grpc: _Optional[_Union[GrpcProbe, _Mapping]] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., initial_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., failure_threshold: _Optional[int] = ...) -> None: ...

class HttpProbe(_message.Message):
    __slots__ = ("path", "port")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    path: str
    port: int
    def __init__(self, path: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class TcpProbe(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class GrpcProbe(_message.Message):
    __slots__ = ("service", "port")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    service: str
    port: int
    def __init__(self, service: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Upstream(_message.Message):
    __slots__ = ("namespace", "name", "port")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    port: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class MountedFiles(_message.Message):
    __slots__ = ("path", "files", "mode")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    files: _containers.ScalarMap[str, bytes]
    mode: int
    def __init__(self, path: _Optional[str] = ..., files: _Optional[_Mapping[str, bytes]] = ..., mode: _Optional[int] = ...) -> None: ...

class WatchAssignmentsRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class InstanceReport(_message.Message):
    __slots__ = ("instance_id", "state", "reason", "address", "port", "restarts", "exit_code", "namespace", "cert_serial", "cert_not_after", "cert_error", "cert_served", "cert_root", "cert_trusts", "sidecar_restarts")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    CERT_ERROR_FIELD_NUMBER: _ClassVar[int]
    CERT_SERVED_FIELD_NUMBER: _ClassVar[int]
    CERT_ROOT_FIELD_NUMBER: _ClassVar[int]
    CERT_TRUSTS_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    state: str
    reason: str
    address: str
    port: int
    restarts: int
    exit_code: int
    namespace: str
    cert_serial: str
    cert_not_after: _timestamp_pb2.Timestamp
    cert_error: str
    cert_served: str
    cert_root: str
    cert_trusts: _containers.RepeatedScalarFieldContainer[str]
    sidecar_restarts: int
    def __init__(self, instance_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., restarts: _Optional[int] = ..., exit_code: _Optional[int] = ..., namespace: _Optional[str] = ..., cert_serial: _Optional[str] = ..., cert_not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cert_error: _Optional[str] = ..., cert_served: _Optional[str] = ..., cert_root: _Optional[str] = ..., cert_trusts: _Optional[_Iterable[str]] = ..., sidecar_restarts: _Optional[int] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("node", "instances")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    node: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceReport]
    def __init__(self, node: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceReport, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SignCertificateRequest(_message.Message):
    __slots__ = ("node", "namespace", "instance_id", "csr_pem")
    NODE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    node: str
    namespace: str
    instance_id: str
    csr_pem: str
    def __init__(self, node: _Optional[str] = ..., namespace: _Optional[str] = ..., instance_id: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class SignCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "trust_bundle_pem", "identity", "serial", "not_after", "root")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    trust_bundle_pem: str
    identity: str
    serial: str
    not_after: _timestamp_pb2.Timestamp
    root: str
    def __init__(self, certificate_pem: _Optional[str] = ..., trust_bundle_pem: _Optional[str] = ..., identity: _Optional[str] = ..., serial: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., root: _Optional[str] = ...) -> None: ...

class SignCertificatesRequest(_message.Message):
    __slots__ = ("node", "requests")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    node: str
    requests: _containers.RepeatedCompositeFieldContainer[SignCertificateRequest]
    def __init__(self, node: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[SignCertificateRequest, _Mapping]]] = ...) -> None: ...

class SignCertificateResult(_message.Message):
    __slots__ = ("certificate", "code", "error")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    certificate: SignCertificateResponse
    code: int
    error: str
    def __init__(self, certificate: _Optional[_Union[SignCertificateResponse, _Mapping]] = ..., code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class SignCertificatesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SignCertificateResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SignCertificateResult, _Mapping]]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("instance_id", "tail", "follow")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    tail: int
    follow: bool
    def __init__(self, instance_id: _Optional[str] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ProxyConfigRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class ProxyConfigResponse(_message.Message):
    __slots__ = ("config_dump_json",)
    CONFIG_DUMP_JSON_FIELD_NUMBER: _ClassVar[int]
    config_dump_json: str
    def __init__(self, config_dump_json: _Optional[str] = ...) -> None: ...
