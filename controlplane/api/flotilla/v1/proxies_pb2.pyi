import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProxyStatus(_message.Message):
    __slots__ = ("id", "node", "namespace", "service", "connected_since", "acked_versions", "pending", "last_nack_error", "kind", "instance", "protocol", "view_version", "synced_version", "nack_version", "notes")
    class AckedVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_ERROR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VIEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SYNCED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    node: str
    namespace: str
    service: str
    connected_since: _timestamp_pb2.Timestamp
    acked_versions: _containers.ScalarMap[str, str]
    pending: _containers.RepeatedScalarFieldContainer[str]
    last_nack_error: str
    kind: str
    instance: str
    protocol: str
    view_version: int
    synced_version: int
    nack_version: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., node: _Optional[str] = ..., namespace: _Optional[str] = ..., service: _Optional[str] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acked_versions: _Optional[_Mapping[str, str]] = ..., pending: _Optional[_Iterable[str]] = ..., last_nack_error: _Optional[str] = ..., kind: _Optional[str] = ..., instance: _Optional[str] = ..., protocol: _Optional[str] = ..., view_version: _Optional[int] = ..., synced_version: _Optional[int] = ..., nack_version: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListProxiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProxiesResponse(_message.Message):
    __slots__ = ("proxies",)
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    proxies: _containers.RepeatedCompositeFieldContainer[ProxyStatus]
    def __init__(self, proxies: _Optional[_Iterable[_Union[ProxyStatus, _Mapping]]] = ...) -> None: ...

class GetMeshSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MeshSettings(_message.Message):
    __slots__ = ("trust_domain", "mtls", "default_intention")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INTENTION_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    mtls: bool
    default_intention: str
    def __init__(self, trust_domain: _Optional[str] = ..., mtls: _Optional[bool] = ..., default_intention: _Optional[str] = ...) -> None: ...
