from controlplane.api.flotilla.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetTrustBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrustBundle(_message.Message):
    __slots__ = ("bundle_pem", "active_root", "roots", "rotation", "mtls")
    BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ROOT_FIELD_NUMBER: _ClassVar[int]
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    bundle_pem: str
    active_root: str
    roots: _containers.RepeatedScalarFieldContainer[str]
    rotation: str
    mtls: bool
    def __init__(self, bundle_pem: _Optional[str] = ..., active_root: _Optional[str] = ..., roots: _Optional[_Iterable[str]] = ..., rotation: _Optional[str] = ..., mtls: _Optional[bool] = ...) -> None: ...

class RotateRootRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SignClientCertificateRequest(_message.Message):
    __slots__ = ("namespace", "name", "csr_pem")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    csr_pem: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...
