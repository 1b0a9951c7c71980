"""NodeService and InstanceService: read the cluster, drain nodes, and
register instances Flotilla does not run (``controllers.registered``)."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2

from controlplane.api.flotilla.v1 import instances_pb2, instances_pb2_grpc, nodes_pb2
from controlplane.api.flotilla.v1 import nodes_pb2_grpc
from controlplane.controllers.nodes import NodeRegistry
from controlplane.controllers.registered import RegisteredInstances, RegistrationRequest
from controlplane.errors import UserError
from controlplane.model import DEFAULT_NAMESPACE, SERVICE_LABEL, Resource
from controlplane.model.specs import InstanceSpec
from controlplane.server.agents import node_to_pb
from controlplane.server.status import abort
from controlplane.store import Store

_STATES = {
    "pending": instances_pb2.Instance.PENDING,
    "assigned": instances_pb2.Instance.ASSIGNED,
    "starting": instances_pb2.Instance.STARTING,
    "running": instances_pb2.Instance.RUNNING,
    "healthy": instances_pb2.Instance.HEALTHY,
    "unhealthy": instances_pb2.Instance.UNHEALTHY,
    "crashloop": instances_pb2.Instance.CRASH_LOOP,
    "exited": instances_pb2.Instance.EXITED,
    "failed": instances_pb2.Instance.FAILED,
}


def instance_to_pb(instance: Resource) -> instances_pb2.Instance:
    status, spec = instance.status, instance.typed(InstanceSpec)
    return instances_pb2.Instance(
        id=instance.name, namespace=instance.namespace, service=spec.service,
        node=spec.node, address=str(status.get("address", "")),
        port=int(status.get("port") or 0), labels=dict(instance.labels),
        state=_STATES.get(str(status.get("state", "pending")),
                          instances_pb2.Instance.STATE_UNSPECIFIED),
        reason=str(status.get("reason", "")),
        ttl=_duration(spec.ttl) if spec.registered else None,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


class NodeServicer(nodes_pb2_grpc.NodeServiceServicer):
    def __init__(self, store: Store, nodes: NodeRegistry) -> None:
        self._store = store
        self._nodes = nodes

    def ListNodes(self, request: nodes_pb2.ListNodesRequest,
                  context: grpc.ServicerContext) -> nodes_pb2.ListNodesResponse:
        return nodes_pb2.ListNodesResponse(nodes=[node_to_pb(n) for n in self._store.list("Node")])

    def DrainNode(self, request: nodes_pb2.DrainNodeRequest,
                  context: grpc.ServicerContext) -> nodes_pb2.Node:
        try:
            return node_to_pb(self._nodes.drain(request.name))
        except UserError as error:
            abort(context, error)

    def RevokeNode(self, request: nodes_pb2.RevokeNodeRequest,
                   context: grpc.ServicerContext) -> nodes_pb2.Node:
        try:
            return node_to_pb(self._nodes.revoke(request.name, request.undo))
        except UserError as error:
            abort(context, error)


class InstanceServicer(instances_pb2_grpc.InstanceServiceServicer):
    def __init__(self, store: Store, registered: RegisteredInstances) -> None:
        self._store = store
        self._registered = registered

    def ListInstances(self, request: instances_pb2.ListInstancesRequest,
                      context: grpc.ServicerContext) -> instances_pb2.ListInstancesResponse:
        selector = {SERVICE_LABEL: request.service} if request.service else None
        found = self._store.list("Instance", request.namespace or None, selector)
        return instances_pb2.ListInstancesResponse(instances=[instance_to_pb(i) for i in found])

    def RegisterInstance(self, request: instances_pb2.RegisterInstanceRequest,
                         context: grpc.ServicerContext) -> instances_pb2.Instance:
        ttl = request.ttl.ToNanoseconds() / 1e9 if request.HasField("ttl") else None
        try:
            return instance_to_pb(self._registered.register(RegistrationRequest(
                namespace=request.namespace or DEFAULT_NAMESPACE, service=request.service,
                address=request.address, port=request.port, labels=dict(request.labels),
                ttl=ttl)))
        except UserError as error:
            abort(context, error)

    def Heartbeat(self, request: instances_pb2.InstanceHeartbeatRequest,
                  context: grpc.ServicerContext) -> instances_pb2.InstanceHeartbeatResponse:
        try:
            self._registered.heartbeat(request.id)
        except UserError as error:
            abort(context, error)
        return instances_pb2.InstanceHeartbeatResponse()

    def Deregister(self, request: instances_pb2.DeregisterInstanceRequest,
                   context: grpc.ServicerContext) -> instances_pb2.DeregisterInstanceResponse:
        try:
            self._registered.deregister(request.id)
        except UserError as error:
            abort(context, error)
        return instances_pb2.DeregisterInstanceResponse()
