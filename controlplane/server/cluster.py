"""NodeService and InstanceService: read the cluster, drain nodes."""

from __future__ import annotations

import grpc

from controlplane.api.flotilla.v1 import instances_pb2, instances_pb2_grpc, nodes_pb2
from controlplane.api.flotilla.v1 import nodes_pb2_grpc
from controlplane.controllers.nodes import NodeRegistry
from controlplane.errors import UserError
from controlplane.model import SERVICE_LABEL, Resource
from controlplane.server.agents import node_to_pb
from controlplane.server.pending import unimplemented
from controlplane.server.status import abort
from controlplane.store import SqliteStore

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
    status = instance.status
    return instances_pb2.Instance(
        id=instance.name, namespace=instance.namespace, service=instance.spec["service"],
        node=instance.spec.get("node", ""), address=str(status.get("address", "")),
        port=int(status.get("port") or 0), labels=dict(instance.labels),
        state=_STATES.get(str(status.get("state", "pending")),
                          instances_pb2.Instance.STATE_UNSPECIFIED),
        reason=str(status.get("reason", "")),
    )


class NodeServicer(nodes_pb2_grpc.NodeServiceServicer):
    def __init__(self, store: SqliteStore, nodes: NodeRegistry) -> None:
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
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def ListInstances(self, request: instances_pb2.ListInstancesRequest,
                      context: grpc.ServicerContext) -> instances_pb2.ListInstancesResponse:
        selector = {SERVICE_LABEL: request.service} if request.service else None
        found = self._store.list("Instance", request.namespace or None, selector)
        return instances_pb2.ListInstancesResponse(instances=[instance_to_pb(i) for i in found])

    RegisterInstance = unimplemented("instance registration")
    Heartbeat = unimplemented("instance registration")
    Deregister = unimplemented("instance registration")
