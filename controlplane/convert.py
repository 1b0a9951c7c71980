"""Protobuf <-> model and protobuf <-> manifest conversion, used at the API
edge by the server and the client; the only module that knows both sides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from controlplane.api.flotilla.v1 import agent_pb2
from controlplane.api.flotilla.v1 import resources_pb2 as pb
from controlplane.model import API_VERSION, ApplyAction, EventType, Resource, WatchEvent
from controlplane.model.durations import duration_message
from controlplane.model.specs import SecretSpec, Workload
from controlplane.model.specs.data import REDACTED
from controlplane.model.specs.service import HealthCheck


ACTIONS = {
    ApplyAction.CREATED: pb.APPLY_ACTION_CREATED,
    ApplyAction.CONFIGURED: pb.APPLY_ACTION_CONFIGURED,
    ApplyAction.UNCHANGED: pb.APPLY_ACTION_UNCHANGED,
}
EVENTS = {
    EventType.ADDED: pb.WatchEvent.ADDED,
    EventType.MODIFIED: pb.WatchEvent.MODIFIED,
    EventType.DELETED: pb.WatchEvent.DELETED,
}


def workload_to_pb(workload: Workload, namespace: str) -> agent_pb2.Workload:
    """What an agent is told to run of ``workload`` (an instance in ``namespace``)."""
    return agent_pb2.Workload(
        image=workload.image or "", command=workload.command or [], args=workload.args,
        env=workload.env, port=workload.port or 0, protocol=workload.protocol,
        cpu_millis=workload.resources.cpu, memory_mib=workload.resources.memory,
        health_check=(_health_check_to_pb(workload.health_check)
                      if workload.health_check is not None else None),
        restart_policy=workload.restart_policy,
        upstreams=[agent_pb2.Upstream(namespace=u.namespace or namespace, name=u.name,
                                      port=u.port or 0) for u in workload.upstreams],
        gateway=bool(workload.gateway),
    )


def _health_check_to_pb(check: HealthCheck) -> agent_pb2.HealthCheck:
    out = agent_pb2.HealthCheck(
        interval=duration_message(check.interval), timeout=duration_message(check.timeout),
        initial_delay=duration_message(check.initial_delay),
        failure_threshold=check.failure_threshold)
    if check.http is not None:
        out.http.CopyFrom(agent_pb2.HttpProbe(path=check.http.path, port=check.http.port or 0))
    elif check.tcp is not None:
        out.tcp.CopyFrom(agent_pb2.TcpProbe(port=check.tcp.port or 0))
    elif check.grpc is not None:
        out.grpc.CopyFrom(agent_pb2.GrpcProbe(service=check.grpc.service,
                                              port=check.grpc.port or 0))
    return out


def struct_of(value: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


def dict_of(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python, with whole numbers back as ints (protobuf's
    Struct carries every number as a double)."""
    return {key: _value_of(value) for key, value in message.fields.items()}


def _value_of(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return dict_of(value.struct_value)
    if kind == "list_value":
        return [_value_of(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    if seconds:
        out.FromNanoseconds(int(seconds * 1e9))
    return out


def redacted_spec(resource: Resource) -> Mapping[str, Any]:
    """What the API shows of a spec: Secret values never leave the server."""
    spec = resource.spec.to_dict()
    if resource.kind != "Secret":
        return spec
    return {**spec, "data": dict.fromkeys(resource.typed(SecretSpec).data, REDACTED)}


def resource_to_pb(resource: Resource) -> pb.Resource:
    return pb.Resource(
        api_version=API_VERSION,
        kind=resource.kind,
        metadata=pb.ObjectMeta(
            name=resource.name,
            namespace=resource.namespace,
            labels=dict(resource.labels),
            annotations=dict(resource.annotations),
            uid=resource.uid,
            resource_version=resource.resource_version,
            generation=resource.generation,
            create_time=timestamp(resource.create_time),
            update_time=timestamp(resource.update_time),
        ),
        spec=struct_of(redacted_spec(resource)),
        status=struct_of(resource.status),
    )


def document_of(message: pb.Resource) -> dict[str, Any]:
    """An incoming Resource as a manifest document, for validation."""
    meta = message.metadata
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.namespace:
        metadata["namespace"] = meta.namespace
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    if meta.resource_version:
        metadata["resourceVersion"] = meta.resource_version
    return {
        "apiVersion": message.api_version,
        "kind": message.kind,
        "metadata": metadata,
        "spec": dict_of(message.spec),
    }


def event_to_pb(event: WatchEvent) -> pb.WatchEvent:
    return pb.WatchEvent(
        type=EVENTS[event.type],
        resource=resource_to_pb(event.resource),
        resource_version=event.resource_version,
    )


def doc_of_pb(message: pb.Resource) -> dict[str, Any]:
    """A Resource from the API as a manifest-shaped mapping (for printing,
    or for saving and reapplying)."""
    meta = message.metadata
    metadata: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace}
    if meta.labels:
        metadata["labels"] = dict(sorted(meta.labels.items()))
    if meta.annotations:
        metadata["annotations"] = dict(sorted(meta.annotations.items()))
    metadata |= {
        "uid": meta.uid,
        "resourceVersion": meta.resource_version,
        "generation": meta.generation,
    }
    if meta.HasField("create_time"):
        metadata["createTime"] = meta.create_time.ToJsonString()
    if meta.HasField("update_time"):
        metadata["updateTime"] = meta.update_time.ToJsonString()
    doc: dict[str, Any] = {
        "apiVersion": message.api_version or API_VERSION,
        "kind": message.kind,
        "metadata": metadata,
        "spec": dict_of(message.spec),
    }
    status = dict_of(message.status)
    if status:
        doc["status"] = status
    return doc


def pb_of_doc(doc: Mapping[str, Any]) -> pb.Resource:
    """A manifest document (already checked by ``to_resource``) as an API Resource.
    The spec travels as written; the server applies defaults."""
    meta = doc.get("metadata") or {}
    return pb.Resource(
        api_version=str(doc.get("apiVersion", "")),
        kind=str(doc.get("kind", "")),
        metadata=pb.ObjectMeta(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or ""),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            resource_version=int(meta.get("resourceVersion") or 0),
        ),
        spec=struct_of(doc.get("spec") or {}),
    )
