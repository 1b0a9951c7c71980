"""AgentService: agents join, follow their node's assignments, report.

Assignments are level-triggered: each message on the stream is the node's
complete desired set, sent first and then whenever it changes.

Join comes to the main port with a proof of the join token and leaves with a
node certificate; every other call comes to the agent port over mutual TLS,
and the node it acts for is the one its certificate names (a revoked node,
or a certificate issued before its revocation, is UNAUTHENTICATED).
"""

from __future__ import annotations

import datetime
import functools
import threading
from collections.abc import Iterator

import grpc
from cryptography import x509
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2

from controlplane import convert
from controlplane.api.flotilla.v1 import agent_pb2, agent_pb2_grpc, nodes_pb2
from controlplane.controllers.nodes import NodeRegistry
from controlplane.errors import PermissionDenied, Unauthenticated, UserError
from controlplane.identity.ca import BACKDATE, CertificateError, Leaf, parse_identity
from controlplane.identity.issuer import Issuer
from controlplane.identity.proof import prove, unproven
from controlplane.identity.tokens import JoinTokens
from controlplane.manifests import sources
from controlplane.model import ObjectKey, Resource, node_state
from controlplane.model.cluster import NodeState
from controlplane.model.specs import InstanceSpec, NodeSpec
from controlplane.server.status import abort
from controlplane.store import Store

#: Seconds between agent reports (the heartbeat).
REPORT_INTERVAL = 1.0
#: Fields of a report copied into the Instance's status, and their names there.
_REPORTED = {"state": "state", "reason": "reason", "address": "address", "port": "port",
             "restarts": "restarts", "exit_code": "exitCode",
             "sidecar_restarts": "sidecarRestarts"}


def node_to_pb(node: Resource) -> nodes_pb2.Node:
    spec = node.typed(NodeSpec)
    states = {NodeState.READY: nodes_pb2.Node.READY, NodeState.DOWN: nodes_pb2.Node.DOWN,
              NodeState.DRAINING: nodes_pb2.Node.DRAINING,
              NodeState.REVOKED: nodes_pb2.Node.REVOKED}
    return nodes_pb2.Node(
        name=node.name, address=spec.address, labels=dict(spec.labels),
        capacity=nodes_pb2.Capacity(cpu_millis=spec.capacity.cpu,
                                    memory_mib=spec.capacity.memory),
        drivers=list(spec.drivers),
        state=states.get(node_state(node), nodes_pb2.Node.STATE_UNSPECIFIED),
    )


def assignments_of(store: Store, node: str) -> agent_pb2.Assignments:
    """What ``node`` runs, with the ConfigMap and Secret data each instance
    mounts or takes env from: the only place Secret values are decoded for a
    node, and they go only to its stream."""
    instances = [i for i in store.list("Instance") if i.typed(InstanceSpec).node == node]
    lookup = functools.cache(store.get)  # one read of each object per message
    return agent_pb2.Assignments(assignments=[
        _assignment(i, sources.project(i.typed(InstanceSpec).workload, i.namespace, lookup))
        for i in sorted(instances, key=lambda r: r.name)
    ])


def _assignment(instance: Resource, projection: sources.Projection) -> agent_pb2.Assignment:
    spec = instance.typed(InstanceSpec)
    return agent_pb2.Assignment(
        instance_id=instance.name, namespace=instance.namespace,
        service=spec.service, revision=spec.revision,
        workload=convert.workload_to_pb(spec.workload, instance.namespace),
        driver=spec.driver,
        env_from=dict(projection.env),
        mounts=[agent_pb2.MountedFiles(path=m.path, files=dict(m.files), mode=m.mode)
                for m in projection.mounts],
    )


def _timestamp(when: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def leaf_response(leaf: Leaf, bundle_pem: str) -> agent_pb2.SignCertificateResponse:
    return agent_pb2.SignCertificateResponse(
        certificate_pem=leaf.cert_pem, trust_bundle_pem=bundle_pem, identity=leaf.identity,
        serial=leaf.serial, not_after=_timestamp(leaf.not_after), root=leaf.root)


@functools.lru_cache(maxsize=1024)
def _issued_at(cert_pem: bytes) -> datetime.datetime:
    """When a peer's certificate was issued (its validity starts BACKDATE earlier)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_before_utc + BACKDATE


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: Store, nodes: NodeRegistry, issuer: Issuer,
                 tokens: JoinTokens) -> None:
        self._store = store
        self._nodes = nodes
        self._issuer = issuer
        self._tokens = tokens
        self._stopping = threading.Event()
        #: The agent port, told to joining agents (set once the server binds).
        self.agent_port = 0

    def _peer_node(self, context: grpc.ServicerContext) -> str:
        """The node the call's client certificate names, admitted now."""
        auth = context.auth_context()
        peer = b"".join(auth.get("peer_spiffe_id") or [])
        if not peer:
            raise Unauthenticated(
                "agent calls go to the agent port over mutual TLS with the node's certificate "
                "(the agent gets it by joining)")
        try:
            domain, kind, name = parse_identity(peer.decode())
        except CertificateError as error:
            raise Unauthenticated(f"the client certificate names no node: {error}") from None
        if kind != "node" or domain != self._issuer.ca.trust_domain:
            raise PermissionDenied(f"{peer.decode()} is not a node of this cluster")
        node = self._nodes.check_admitted(name)
        revoked_at = node.typed(NodeSpec).revoked_at if node is not None else None
        certificate = b"".join(auth.get("x509_pem_cert") or [])
        if revoked_at and certificate and \
                _issued_at(certificate) <= datetime.datetime.fromisoformat(revoked_at):
            raise Unauthenticated(f"node {name}'s certificate was revoked: the agent joins "
                                  "again for a new one")
        return name

    def _admit(self, context: grpc.ServicerContext, node: str) -> None:
        """The call comes from ``node``'s agent (its certificate), not revoked."""
        try:
            peer = self._peer_node(context)
        except UserError as error:
            abort(context, error)
        if node and node != peer:
            abort(context, PermissionDenied(
                f"node {peer}'s certificate cannot act for node {node}"))

    def shutdown(self) -> None:
        self._stopping.set()
        self._store.wake()

    def Join(self, request: agent_pb2.JoinRequest,
             context: grpc.ServicerContext) -> agent_pb2.JoinResponse:
        try:
            digest = self._tokens.verify(request.proof, unproven(request), request.timestamp)
            self._nodes.check_admitted(request.name)
            if not request.csr_pem:
                raise UserError("a join carries a CSR for the node's key (csr_pem)")
            node = self._nodes.join(
                request.name, request.address, dict(request.labels),
                request.capacity.cpu_millis, request.capacity.memory_mib, list(request.drivers),
                request.logs_endpoint,
            )
            leaf = self._issuer.sign_for_node(request.name, request.csr_pem)
        except UserError as error:
            abort(context, error)
        reply = agent_pb2.JoinResponse(
            node=node_to_pb(node), report_interval_seconds=REPORT_INTERVAL,
            node_certificate_pem=leaf.cert_pem, trust_bundle_pem=self._issuer.bundle(),
            agent_port=self.agent_port)
        reply.proof = prove(digest, reply)
        return reply

    def RenewNodeCertificate(self, request: agent_pb2.RenewNodeCertificateRequest,
                             context: grpc.ServicerContext) -> agent_pb2.NodeCertificate:
        try:
            leaf = self._issuer.sign_for_node(self._peer_node(context), request.csr_pem)
        except UserError as error:
            abort(context, error)
        return agent_pb2.NodeCertificate(
            certificate_pem=leaf.cert_pem, trust_bundle_pem=self._issuer.bundle(),
            serial=leaf.serial, not_after=_timestamp(leaf.not_after), root=leaf.root)

    def SignCertificate(self, request: agent_pb2.SignCertificateRequest,
                        context: grpc.ServicerContext) -> agent_pb2.SignCertificateResponse:
        self._admit(context, request.node)
        try:
            leaf = self._issuer.sign_for_instance(request.node, request.namespace or "default",
                                                  request.instance_id, request.csr_pem)
        except UserError as error:
            abort(context, error)
        return leaf_response(leaf, self._issuer.bundle())

    def SignCertificates(self, request: agent_pb2.SignCertificatesRequest,
                         context: grpc.ServicerContext) -> agent_pb2.SignCertificatesResponse:
        self._admit(context, request.node)
        bundle = self._issuer.bundle()
        results = []
        for item in request.requests:
            try:
                leaf = self._issuer.sign_for_instance(request.node, item.namespace or "default",
                                                      item.instance_id, item.csr_pem)
            except UserError as error:
                results.append(agent_pb2.SignCertificateResult(
                    code=getattr(code_pb2, error.code), error=str(error)))
                continue
            results.append(agent_pb2.SignCertificateResult(
                certificate=leaf_response(leaf, bundle)))
        return agent_pb2.SignCertificatesResponse(results=results)

    def WatchAssignments(self, request: agent_pb2.WatchAssignmentsRequest,
                         context: grpc.ServicerContext) -> Iterator[agent_pb2.Assignments]:
        sent: bytes | None = None
        seen = -1
        while context.is_active() and not self._stopping.is_set():
            head = self._store.resource_version
            if head != seen:
                self._admit(context, request.node)  # again: the node may be revoked since
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
        self._admit(context, request.node)
        try:
            self._nodes.heartbeat(request.node)
        except UserError as error:
            abort(context, error)
        for report in request.instances:
            key = ObjectKey("Instance", report.namespace or "default", report.instance_id)
            instance = self._store.get(key)
            if instance is None or instance.typed(InstanceSpec).node != request.node:
                continue  # no longer this node's; the agent stops it
            status = {name: getattr(report, field) for field, name in _REPORTED.items()}
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
