"""AgentService: agents join, follow their node's assignments, report.

Assignments are level-triggered: each message on the stream is the node's
complete desired set, sent first and then whenever it changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from google.protobuf import timestamp_pb2

from controlplane import convert
from controlplane.api.flotilla.v1 import agent_pb2, agent_pb2_grpc, nodes_pb2
from controlplane.controllers.nodes import NodeRegistry
from controlplane.errors import UserError
from controlplane.identity.ca import Leaf
from controlplane.identity.issuer import Issuer
from controlplane.identity.tokens import JoinTokens, token_of
from controlplane.model import ObjectKey, Resource, node_state
from controlplane.server.status import abort
from controlplane.store import SqliteStore

#: Seconds between agent reports (the heartbeat).
REPORT_INTERVAL = 1.0
#: Fields of a report copied into the Instance's status.
_REPORTED = ("state", "reason", "address", "port", "restarts", "exit_code")


def node_to_pb(node: Resource) -> nodes_pb2.Node:
    capacity = node.spec.get("capacity") or {}
    states = {"ready": nodes_pb2.Node.READY, "down": nodes_pb2.Node.DOWN,
              "draining": nodes_pb2.Node.DRAINING}
    return nodes_pb2.Node(
        name=node.name, address=node.spec.get("address", ""),
        labels=dict(node.spec.get("labels") or {}),
        capacity=nodes_pb2.Capacity(cpu_millis=capacity.get("cpu", 0),
                                    memory_mib=capacity.get("memory", 0)),
        drivers=list(node.spec.get("drivers") or []),
        state=states.get(node_state(node.spec, node.status), nodes_pb2.Node.STATE_UNSPECIFIED),
    )


def assignments_of(store: SqliteStore, node: str) -> agent_pb2.Assignments:
    instances = [i for i in store.list("Instance") if i.spec.get("node") == node]
    return agent_pb2.Assignments(assignments=[
        agent_pb2.Assignment(
            instance_id=i.name, namespace=i.namespace, service=i.spec["service"],
            revision=int(i.spec.get("revision", 0)),
            spec=convert.struct_of(i.spec.get("workload") or {}),
            driver=i.spec.get("driver", ""),
        )
        for i in sorted(instances, key=lambda r: r.name)
    ])


def leaf_response(leaf: Leaf, bundle_pem: str) -> agent_pb2.SignCertificateResponse:
    not_after = timestamp_pb2.Timestamp()
    not_after.FromDatetime(leaf.not_after)
    return agent_pb2.SignCertificateResponse(
        certificate_pem=leaf.cert_pem, trust_bundle_pem=bundle_pem, identity=leaf.identity,
        serial=leaf.serial, not_after=not_after, root=leaf.root)


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: SqliteStore, nodes: NodeRegistry, issuer: Issuer,
                 tokens: JoinTokens) -> None:
        self._store = store
        self._nodes = nodes
        self._issuer = issuer
        self._tokens = tokens
        self._stopping = threading.Event()

    def _admit(self, context: grpc.ServicerContext) -> None:
        """Every agent call carries the join token."""
        try:
            self._tokens.check(token_of(context.invocation_metadata()))
        except UserError as error:
            abort(context, error)

    def shutdown(self) -> None:
        self._stopping.set()
        self._store.wake()

    def Join(self, request: agent_pb2.JoinRequest,
             context: grpc.ServicerContext) -> agent_pb2.JoinResponse:
        self._admit(context)
        try:
            node = self._nodes.join(
                request.name, request.address, dict(request.labels),
                request.capacity.cpu_millis, request.capacity.memory_mib, list(request.drivers),
                request.logs_endpoint,
            )
        except UserError as error:
            abort(context, error)
        return agent_pb2.JoinResponse(node=node_to_pb(node),
                                      report_interval_seconds=REPORT_INTERVAL)

    def SignCertificate(self, request: agent_pb2.SignCertificateRequest,
                        context: grpc.ServicerContext) -> agent_pb2.SignCertificateResponse:
        self._admit(context)
        try:
            leaf = self._issuer.sign_for_instance(request.node, request.namespace or "default",
                                                  request.instance_id, request.csr_pem)
        except UserError as error:
            abort(context, error)
        return leaf_response(leaf, self._issuer.bundle())

    def WatchAssignments(self, request: agent_pb2.WatchAssignmentsRequest,
                         context: grpc.ServicerContext) -> Iterator[agent_pb2.Assignments]:
        self._admit(context)
        sent: bytes | None = None
        seen = -1
        while context.is_active() and not self._stopping.is_set():
            head = self._store.resource_version
            if head != seen:
                seen = head
                current = assignments_of(self._store, request.node)
                raw = current.SerializeToString(deterministic=True)
                if raw != sent:
                    sent = raw
                    yield current
            self._store.wait(seen, 1.0)
        if self._stopping.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")

    def Report(self, request: agent_pb2.ReportRequest,
               context: grpc.ServicerContext) -> agent_pb2.ReportResponse:
        self._admit(context)
        try:
            self._nodes.heartbeat(request.node)
        except UserError as error:
            abort(context, error)
        for report in request.instances:
            key = ObjectKey("Instance", report.namespace or "default", report.instance_id)
            instance = self._store.get(key)
            if instance is None or instance.spec.get("node") != request.node:
                continue  # no longer this node's; the agent stops it
            status = {field: getattr(report, field) for field in _REPORTED}
            status["exitCode"] = status.pop("exit_code")
            status["node"] = request.node
            if report.cert_serial:
                status["certificate"] = {
                    "serial": report.cert_serial,
                    "notAfter": report.cert_not_after.ToJsonString(),
                    "served": report.cert_served,
                    "root": report.cert_root,
                    "trusts": sorted(report.cert_trusts),
                    **({"error": report.cert_error} if report.cert_error else {}),
                }
            self._store.write_status(key, status)
        return agent_pb2.ReportResponse()
