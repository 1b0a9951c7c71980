import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capacity(_message.Message):
    __slots__ = ("cpu_millis", "memory_mib")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_mib: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_mib: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "address", "labels", "capacity", "allocated", "drivers", "state", "last_heartbeat")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Node.State]
        READY: _ClassVar[Node.State]
        DOWN: _ClassVar[Node.State]
        DRAINING: _ClassVar[Node.State]
        REVOKED: _ClassVar[Node.State]
    STATE_UNSPECIFIED: Node.State
    READY: Node.State
    DOWN: Node.State
    DRAINING: Node.State
    REVOKED: Node.State
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
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    labels: _containers.ScalarMap[str, str]
    capacity: Capacity
    allocated: Capacity
    drivers: _containers.RepeatedScalarFieldContainer[str]
    state: Node.State
    last_heartbeat: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., allocated: _Optional[_Union[Capacity, _Mapping]] = ..., drivers: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[Node.State, str]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeNodeRequest(_message.Message):
    __slots__ = ("name", "undo")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    name: str
    undo: bool
    def __init__(self, name: _Optional[str] = ..., undo: _Optional[bool] = ...) -> None: ...
