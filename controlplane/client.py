"""A small Python client of the Flotilla API, used by the CLI and by tests.

Errors come back as Flotilla's own error tree (:mod:`controlplane.errors`):
gRPC statuses are mapped to ``UserError`` subclasses, with the field
violations of an ``INVALID_ARGUMENT`` preserved, and an unreachable server is
:class:`ServerUnavailable` naming the address tried.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane import convert, errors
from controlplane.api.flotilla.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    instances_pb2,
    instances_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
    proxies_pb2,
    proxies_pb2_grpc,
)
from controlplane.api.flotilla.v1 import resources_pb2 as pb
from controlplane.api.flotilla.v1 import resources_pb2_grpc as pb_grpc
from controlplane.model import NODE_NAMESPACE, SERVICE_LABEL
from controlplane.model.endpoints import SERVING
from controlplane.model.limits import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from controlplane.manifests.document import spec_of, typed_spec
from controlplane.model.specs import InstanceSpec, NodeSpec, ServiceSpec, Workload

DEFAULT_SERVER = "127.0.0.1:7300"

log = logging.getLogger(__name__)

_ACTIONS = {
    pb.APPLY_ACTION_CREATED: "created",
    pb.APPLY_ACTION_CONFIGURED: "configured",
    pb.APPLY_ACTION_UNCHANGED: "unchanged",
}



#: One proxy as the xDS server sees it (what `flotilla proxy-status` shows).
ProxyStatus = proxies_pb2.ProxyStatus


@dataclass(frozen=True)
class Rollout:
    """The instances an applied Service (or Gateway) asks for: ``replicas``
    of them made from ``workload`` (the part of the spec each instance
    keeps; None for a Gateway's, which the reconciler derives)."""

    kind: str
    namespace: str
    name: str
    replicas: int
    workload: Workload | None

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Rollout | None:
        """What applying ``doc`` (as stored) makes run; None for other kinds,
        no replicas, or instances from outside (Consul, registrations)."""
        meta = doc["metadata"]
        if doc["kind"] == "Gateway":
            return cls("Gateway", meta["namespace"], meta["name"], 1, None)
        spec = spec_of(doc)
        if not isinstance(spec, ServiceSpec) or spec.desired_replicas <= 0 or spec.external:
            return None
        return cls("Service", meta["namespace"], meta["name"], spec.desired_replicas,
                   spec.workload())

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class RolloutState:
    rollout: Rollout
    #: Instances serving whose proxy (if they have a sidecar) has ACKed.
    ready: tuple[str, ...]
    #: Of those, how many have a proxy.
    proxied: int
    #: Every other instance of it: "id: what it waits for".
    waiting: tuple[str, ...]

    @property
    def done(self) -> bool:
        return len(self.ready) >= self.rollout.replicas

    def __str__(self) -> str:
        text = f"{self.rollout}: {len(self.ready)}/{self.rollout.replicas} instances ready"
        return text + (f", their {self.proxied} prox{'y' if self.proxied == 1 else 'ies'} "
                       "ACKed" if self.proxied else "")


@dataclass(frozen=True)
class SyncState:
    """One look at how far a change got (see :meth:`Client.wait_synced`)."""

    #: The store version every connected proxy must have ACKed.
    version: int
    proxies: list[ProxyStatus]
    #: Connected proxies that have not ACKed ``version`` yet.
    behind: list[ProxyStatus]
    #: Those of ``behind`` that rejected it.
    nacked: list[ProxyStatus]
    rollouts: list[RolloutState]

    @property
    def rollouts_done(self) -> bool:
        return all(r.done for r in self.rollouts)

    @property
    def done(self) -> bool:
        return self.rollouts_done and not self.behind

    def __str__(self) -> str:
        acked = len(self.proxies) - len(self.behind)
        return "; ".join([*map(str, self.rollouts), f"{acked}/{len(self.proxies)} proxies ACKed"
                          if self.proxies else "no proxy connected"])


def sync_state(version: int, proxies: Sequence[ProxyStatus],
               instances: Sequence[Mapping[str, Any]], rollouts: Sequence[Rollout]
               ) -> SyncState:
    """How far the change at ``version`` got, from one look at the proxies
    and at the instances of ``rollouts`` (pure). An instance counts once it
    serves (healthy, or running without a health check) and its proxy has
    ACKed ``version``; one serving with no proxy has no sidecar."""
    by_instance = {p.instance or p.id: p for p in proxies}
    states = []
    for rollout in rollouts:
        ready: list[str] = []
        proxied = 0
        waiting: list[str] = []
        for instance in instances:
            meta, spec = instance["metadata"], typed_spec(instance, InstanceSpec)
            status = instance.get("status") or {}
            if (meta["namespace"], spec.service) != (rollout.namespace, rollout.name) \
                    or spec.gateway != (rollout.kind == "Gateway") \
                    or spec.draining or spec.registered \
                    or (rollout.workload is not None and spec.workload != rollout.workload):
                continue  # another service's, leaving, or of the spec before this one
            name, state = meta["name"], str(status.get("state") or "pending")
            proxy = by_instance.get(name)
            serving = state in SERVING
            if serving and (proxy is None or proxy.synced_version >= version):
                ready.append(name)
                proxied += proxy is not None
            elif proxy is not None and proxy.last_nack_error:
                waiting.append(f"{name}: its proxy NACKed: {proxy.last_nack_error}")
            elif serving:
                waiting.append(f"{name}: its proxy has not ACKed yet")
            else:
                reason = status.get("reason") or ("not placed yet" if not spec.node else "")
                waiting.append(f"{name}: {state}" + (f": {reason}" if reason else ""))
        missing = rollout.replicas - len(ready) - len(waiting)
        waiting.sort()
        if missing > 0:
            waiting.append(f"{missing} more not made yet")
        states.append(RolloutState(rollout, tuple(sorted(ready)), proxied, tuple(waiting)))
    behind = [p for p in proxies if p.synced_version < version]
    nacked = [p for p in behind if p.last_nack_error and p.nack_version >= version]
    return SyncState(version, builtins.list(proxies), behind, nacked, states)


class ServerUnavailable(errors.TemporaryError):
    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(f"cannot reach the Flotilla server at {address}: {detail}")


@dataclass(frozen=True)
class Applied:
    doc: dict[str, Any]
    action: str


@dataclass(frozen=True)
class Event:
    type: str
    doc: dict[str, Any]
    resource_version: int


class Client:
    def __init__(self, address: str = DEFAULT_SERVER, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout
        # Reconnect within a second of the server coming back (gRPC's own
        # backoff grows to two minutes), so heartbeats resume within a TTL.
        self._channel = grpc.insecure_channel(replicas_target(address), options=[
            ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)])
        self._stub = pb_grpc.ResourceServiceStub(self._channel)
        self._nodes = nodes_pb2_grpc.NodeServiceStub(self._channel)
        self._proxies = proxies_pb2_grpc.ProxyServiceStub(self._channel)
        self._identity = identity_pb2_grpc.IdentityServiceStub(self._channel)
        self._instances = instances_pb2_grpc.InstanceServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def apply(
        self, docs: Sequence[tuple[Mapping[str, Any], str]], *, dry_run: bool = False
    ) -> builtins.list[Applied]:
        """Apply manifest documents (with where each came from) in one transaction."""
        request = pb.ApplyRequest(
            resources=[convert.pb_of_doc(doc) for doc, _ in docs],
            sources=[source for _, source in docs],
            dry_run=dry_run,
        )
        response = self._call(self._stub.Apply, request)
        return [
            Applied(convert.doc_of_pb(r.resource), _ACTIONS.get(r.action, "unknown"))
            for r in response.results
        ]

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        request = pb.GetRequest(kind=kind, name=name, namespace=namespace)
        return convert.doc_of_pb(self._call(self._stub.Get, request))

    def list(
        self, kind: str = "", namespace: str = "", selector: Mapping[str, str] | None = None
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        request = pb.ListRequest(kind=kind, namespace=namespace, label_selector=selector or {})
        response = self._call(self._stub.List, request)
        return [convert.doc_of_pb(r) for r in response.resources], response.resource_version

    def delete(
        self,
        refs: Sequence[tuple[str, str, str]],
        *,
        ignore_not_found: bool = False,
        dry_run: bool = False,
    ) -> builtins.list[dict[str, Any]]:
        """Delete ``(kind, namespace, name)`` objects in one transaction."""
        request = pb.DeleteRequest(
            refs=[pb.ObjectRef(kind=k, namespace=ns, name=n) for k, ns, n in refs],
            ignore_not_found=ignore_not_found,
            dry_run=dry_run,
        )
        return [convert.doc_of_pb(r) for r in self._call(self._stub.Delete, request).deleted]

    def scale(self, service: str, replicas: int, namespace: str = "") -> Applied:
        """Set a Service's replicas, retrying when someone else wrote it meanwhile."""
        for attempt in range(5):
            doc = self.get("Service", service, namespace)
            scaled = typed_spec(doc, ServiceSpec).model_copy(update={"replicas": replicas})
            doc = {**doc, "spec": scaled.to_dict()}
            try:
                return self.apply([(doc, f"scale {service}")])[0]
            except errors.Conflict:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def drain(self, node: str) -> None:
        self._call(self._nodes.DrainNode, nodes_pb2.DrainNodeRequest(name=node))

    def revoke(self, node: str, undo: bool = False) -> None:
        self._call(self._nodes.RevokeNode, nodes_pb2.RevokeNodeRequest(name=node, undo=undo))

    def register(self, service: str, address: str, port: int, *, ttl: float | None = None,
                 namespace: str = "", labels: Mapping[str, str] | None = None) -> Registration:
        """Register an instance Flotilla does not run (it serves at
        address:port) and keep it registered: heartbeats run in a background
        thread until the returned :class:`Registration` is closed (or its
        ``with`` block left), which deregisters it. ``ttl`` is in seconds
        (the server's default, 30 s, when None)."""
        request = instances_pb2.RegisterInstanceRequest(
            namespace=namespace, service=service, address=address, port=port,
            labels=dict(labels or {}))
        if ttl is not None:
            request.ttl.FromNanoseconds(round(ttl * 1e9))
        return Registration(self, request, self.register_instance(request))

    def register_instance(self, request: instances_pb2.RegisterInstanceRequest
                          ) -> instances_pb2.Instance:
        """One RegisterInstance call (no heartbeats: see :meth:`register`)."""
        instance: instances_pb2.Instance = self._call(self._instances.RegisterInstance, request)
        return instance

    def heartbeat(self, instance_id: str, timeout: float | None = None) -> None:
        """Keep a registered instance alive for another TTL; ``NotFound``
        once it expired or was deregistered."""
        self._call(self._instances.Heartbeat,
                   instances_pb2.InstanceHeartbeatRequest(id=instance_id), timeout)

    def deregister(self, instance_id: str) -> None:
        """Remove a registered instance now; ``NotFound`` when it is not."""
        self._call(self._instances.Deregister,
                   instances_pb2.DeregisterInstanceRequest(id=instance_id))

    def proxies(self) -> builtins.list[proxies_pb2.ProxyStatus]:
        """Every proxy connected to the xDS server, and what it has ACKed."""
        reply = self._call(self._proxies.ListProxies, proxies_pb2.ListProxiesRequest())
        return builtins.list(reply.proxies)

    def trust_bundle(self) -> identity_pb2.TrustBundle:
        bundle: identity_pb2.TrustBundle = self._call(self._identity.GetTrustBundle,
                                                      identity_pb2.GetTrustBundleRequest())
        return bundle

    def sign_client(self, namespace: str, name: str, csr_pem: str
                    ) -> agent_pb2.SignCertificateResponse:
        reply: agent_pb2.SignCertificateResponse = self._call(
            self._identity.SignClientCertificate, identity_pb2.SignClientCertificateRequest(
                namespace=namespace, name=name, csr_pem=csr_pem))
        return reply

    def rotate_root(self) -> identity_pb2.TrustBundle:
        bundle: identity_pb2.TrustBundle = self._call(self._identity.RotateRoot,
                                                      identity_pb2.RotateRootRequest())
        return bundle

    def mesh_settings(self) -> proxies_pb2.MeshSettings:
        settings: proxies_pb2.MeshSettings = self._call(self._proxies.GetMeshSettings,
                                                        proxies_pb2.GetMeshSettingsRequest())
        return settings

    def wait_synced(self, version: int, timeout: float,
                    rollouts: Sequence[Rollout] = (), poll: float = 0.1,
                    progress: Callable[[SyncState], None] | None = None) -> SyncState:
        """Wait until the change at store ``version`` has reached the mesh:
        each of ``rollouts`` has its instances serving, with their proxies
        connected and ACKed, and then every connected proxy has ACKed the
        config of the version that was reached at (so the clients of a new
        instance have its endpoint). A proxy that NACKed the change ends the
        wait; so does ``timeout`` (seconds). ``progress`` sees every look."""
        deadline = time.monotonic() + timeout
        target, raised = version, False
        while True:
            instances: builtins.list[dict[str, Any]] = []
            head = version
            for namespace, name in sorted({(r.namespace, r.name) for r in rollouts}):
                found, head = self.list("Instance", namespace, {SERVICE_LABEL: name})
                instances += found
            state = sync_state(target, self.proxies(), instances, rollouts)
            if state.rollouts_done and not raised:
                # The version the new instances were seen serving at: their
                # clients' proxies must have that (their endpoints) too.
                target, raised = max(target, head), True
                state = sync_state(target, state.proxies, instances, rollouts)
            if progress is not None:
                progress(state)
            if state.done or state.nacked or time.monotonic() >= deadline:
                return state
            time.sleep(poll)

    def _agent_endpoint(self, instance: dict[str, Any]) -> str:
        name = instance["metadata"]["name"]
        node = typed_spec(instance, InstanceSpec).node
        if not node:
            raise errors.FailedPrecondition(f"instance {name} is not placed on a node yet")
        endpoint = typed_spec(self.get("Node", node, NODE_NAMESPACE), NodeSpec).logs_endpoint
        if not endpoint:
            raise errors.FailedPrecondition(f"node {node}'s agent serves no logs")
        return str(endpoint)

    def proxy_config(self, instance: dict[str, Any]) -> dict[str, Any]:
        """The live config of an instance's Envoy (its admin /config_dump)."""
        endpoint = self._agent_endpoint(instance)
        with grpc.insecure_channel(endpoint) as channel:
            try:
                reply = agent_pb2_grpc.LogServiceStub(channel).ProxyConfig(
                    agent_pb2.ProxyConfigRequest(instance_id=instance["metadata"]["name"]),
                    timeout=self.timeout)
            except grpc.RpcError as error:
                found = errors.user_error(error.code().name, error.details() or "")
                raise found or ServerUnavailable(endpoint, error.details() or "") from None
        dump: dict[str, Any] = json.loads(reply.config_dump_json)
        return dump

    def logs(self, instance: dict[str, Any], tail: int = 0, follow: bool = False
             ) -> Iterator[bytes]:
        """An instance's output, from the agent of the node it runs on."""
        name = instance["metadata"]["name"]
        endpoint = self._agent_endpoint(instance)
        with grpc.insecure_channel(endpoint) as channel:
            stream = agent_pb2_grpc.LogServiceStub(channel).Logs(
                agent_pb2.LogsRequest(instance_id=name, tail=tail, follow=follow))
            try:
                for chunk in stream:
                    yield chunk.data
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    found = errors.user_error(error.code().name, error.details() or "")
                    raise found or ServerUnavailable(endpoint, error.details() or "") from None
            finally:
                stream.cancel()

    def watch(self, kind: str = "", namespace: str = "", resource_version: int = 0
              ) -> Iterator[Event]:
        request = pb.WatchRequest(kind=kind, namespace=namespace, resource_version=resource_version)
        stream = self._stub.Watch(request)
        try:
            for event in stream:
                yield Event(
                    pb.WatchEvent.Type.Name(event.type),
                    convert.doc_of_pb(event.resource),
                    event.resource_version,
                )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise self._mapped(error) from None
        finally:
            stream.cancel()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise self._mapped(error) from None

    def _mapped(self, error: grpc.RpcError) -> errors.FlotillaError:
        code, detail = error.code(), error.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ServerUnavailable(self.address, _short(detail) or code.name.lower())
        if code == grpc.StatusCode.CANCELLED:
            # The server cancels calls in flight when it shuts down; nothing
            # was stored, and retrying against a live server is safe.
            return ServerUnavailable(self.address, "the call was cancelled (server shutting down?)")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in detail:
            return errors.InvalidRequest([errors.FieldViolation(
                "", f"the request is larger than the server takes ({MAX_REQUEST_BYTES >> 20} "
                "MiB): apply fewer objects at a time")])
        found = errors.user_error(code.name, detail, *_violations(error))
        return found or errors.FlotillaError(f"{code.name}: {detail}")


def replicas_target(address: str) -> str:
    """A gRPC target for ``host:port`` or several replicas' ``ip:port,ip:port``
    (the first that answers is used; a call after it fails goes to the next)."""
    return f"ipv4:{address}" if "," in address else address


class Registration:
    """An instance registered through :meth:`Client.register`, kept alive by
    a background thread that heartbeats every third of its TTL. Leaving its
    ``with`` block (or ``close()``) stops the heartbeats and deregisters it.

    When the control plane has forgotten the instance (its TTL ran out while
    the server could not be reached, or an operator deleted it), the next
    heartbeat registers it again, under a new id. A server that cannot be
    reached is logged and tried again at the next beat.

    Thread-safety: ``id`` and ``instance`` may be read from any thread.
    """

    def __init__(self, client: Client, request: instances_pb2.RegisterInstanceRequest,
                 instance: instances_pb2.Instance) -> None:
        self._client = client
        self._request = request
        self._instance = instance
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{instance.id}")
        self._thread.start()

    @property
    def instance(self) -> instances_pb2.Instance:
        """The instance as the server last registered it."""
        with self._lock:
            return self._instance

    @property
    def id(self) -> str:
        return self.instance.id

    @property
    def ttl(self) -> float:
        """Seconds without a heartbeat before the server removes the instance."""
        return self.instance.ttl.ToNanoseconds() / 1e9

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the heartbeats and deregister (an instance already gone is fine)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self._client.deregister(self.id)
        except errors.NotFound:
            pass

    def _beat(self) -> None:
        interval = max(self.ttl / 3, 0.1)
        while not self._stop.wait(interval):
            try:
                self._client.heartbeat(self.id, timeout=interval)
            except errors.NotFound:
                self._register_again()
            except errors.FlotillaError as error:
                log.warning("heartbeat of %s failed: %s; trying again in %gs", self.id, error,
                            interval)

    def _register_again(self) -> None:
        try:
            instance = self._client.register_instance(self._request)
        except errors.FlotillaError as error:
            log.warning("%s is no longer registered and registering it again failed: %s",
                        self.id, error)
            return
        log.warning("%s was no longer registered; registered again as %s", self.id,
                    instance.id)
        with self._lock:
            self._instance = instance


def _short(detail: str) -> str:
    """grpc's connection errors, reduced to their cause."""
    lowered = detail.lower()
    if "connection refused" in lowered:
        return "connection refused (is `flotilla server` or `flotilla dev` running?)"
    if "deadline" in lowered:
        return "timed out"
    return detail.splitlines()[0] if detail else ""


def _violations(error: grpc.RpcError) -> tuple[list[errors.FieldViolation], int]:
    """The field violations of a status's details, and how many more the
    server found but cut (its ``ErrorInfo`` says)."""
    status = rpc_status.from_call(error)
    out: list[errors.FieldViolation] = []
    more = 0
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            for v in request.field_violations:
                source, sep, path = v.field.rpartition(": ")
                out.append(errors.FieldViolation(path if sep else v.field, v.description, source))
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == errors.MORE_VIOLATIONS and info.metadata.get("more", "").isdigit():
                more = int(info.metadata["more"])
    return out, more
