"""The driver interface: one small Protocol the agent drives every runtime through.

Contract:
- A driver owns only what it labels with its node's name; ``list()`` returns
  exactly that, so an agent restarted on the same node adopts its workloads
  instead of duplicating them.
- ``start`` is not idempotent: the agent calls it only for an instance that
  ``inspect`` does not know. ``stop`` and ``remove`` are idempotent.
- Thread-safety: methods may be called from several agent threads at once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controlplane.model.specs.service import ResourceLimits, WorkloadFields

#: A Service's defaults, for a workload built without them (tests, benchmarks):
#: the agent's own come filled in from the control plane.
_RESOURCES = ResourceLimits()
_PROTOCOL: str = WorkloadFields.model_fields["protocol"].default


class DriverError(Exception):
    """The runtime refused or failed; the message says what to fix."""


@dataclass(frozen=True)
class Sidecar:
    """The instance's Envoy: configured only by the control plane's xDS.

    The driver starts it first and the app only once Envoy is LIVE (its first
    clusters and listeners arrived and were ACKed). Inbound traffic reaches the
    app through it; each upstream is reachable by name (docker: the pod's
    hosts file maps it to a loopback VIP; process: ``FLOTILLA_UPSTREAM_<NAME>``
    gives ``host:port``).
    """

    #: The Envoy binary (checked against the pinned version by the agent).
    envoy: str
    #: The control plane's address for the ADS stream (``host:port``).
    xds: str
    node: str
    #: (namespace, name, local port override or None) of each upstream.
    upstreams: tuple[tuple[str, str, int | None], ...] = ()
    #: Seconds Envoy gets to become LIVE before the start fails.
    ready_timeout: float = 30.0
    #: "sidecar", or "gateway" for an instance that is only an Envoy holding
    #: its Gateway's listener ports on the node.
    kind: str = "sidecar"
    #: The agent's SDS socket (certificates for mTLS); in the directory the
    #: docker driver mounts into pods (``<agent data dir>/xds``).
    sds: str = ""


def upstream_env(namespace: str, name: str, own_namespace: str) -> str:
    """The variable naming an upstream's local address: ``FLOTILLA_UPSTREAM_BACKEND``
    (``..._BACKEND_OTHER_NS`` for another namespace's service)."""
    parts = [name] if namespace == own_namespace else [name, namespace]
    return "FLOTILLA_UPSTREAM_" + "_".join(p.upper().replace("-", "_") for p in parts)


@dataclass(frozen=True)
class MountedFiles:
    """One ConfigMap's or Secret's data as files in a directory of the instance
    (``spec.mounts``), as the control plane sent it for this node.

    Docker: a directory the agent writes under its data dir, bind-mounted
    read-only at ``path`` in the app container. Process: the app has no
    filesystem of its own, so the files go to ``$FLOTILLA_MOUNT_ROOT`` +
    ``path`` (``FLOTILLA_MOUNT_ROOT`` is the instance's ``mounts`` directory;
    in a container it is empty, so ``$FLOTILLA_MOUNT_ROOT/etc/app/key`` reads
    the file on both drivers). Either way each file is owned by the user the
    app runs as, with permission bits ``mode``.
    """

    #: The directory inside the instance, absolute (as in the manifest).
    path: str
    #: File name -> content; left out of repr (a Secret's are secret).
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    #: 0o400 for a Secret's files, 0o444 for a ConfigMap's.
    mode: int = 0o444


#: The variable that tells an app where its mount paths are rooted.
MOUNT_ROOT_ENV = "FLOTILLA_MOUNT_ROOT"


@dataclass(frozen=True)
class Workload:
    """What to run for one instance (from its Service's spec at ``revision``)."""

    instance_id: str
    namespace: str
    service: str
    #: The Service's generation this instance was made from.
    revision: int
    image: str | None = None
    command: Sequence[str] | None = None
    args: Sequence[str] = ()
    #: ``spec.envFrom`` with ``spec.env`` on top (may hold Secret values, so
    #: left out of repr); the driver's own variables (FLOTILLA_*, PORT, HOST)
    #: win over it.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: The app's port inside the instance, or None for no listener.
    port: int | None = None
    protocol: str = _PROTOCOL
    cpu_millis: int = _RESOURCES.cpu
    memory_mib: int = _RESOURCES.memory
    #: Restarts so far; the runtime keeps it with the workload so that an
    #: agent restarted on the node continues the count.
    restarts: int = 0
    sidecar: Sidecar | None = None
    mounts: Sequence[MountedFiles] = ()


class WorkloadState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True)
class Running:
    """What the runtime says about one instance's workload."""

    instance_id: str
    namespace: str
    service: str
    revision: int
    state: WorkloadState
    #: Where the instance is reachable from other nodes: the node's advertised
    #: address and the host port of its sidecar's inbound listener (or of the
    #: app port, without a sidecar); None without a port.
    address: str
    port: int | None
    exit_code: int | None = None
    #: Unix seconds.
    started_at: float = 0.0
    #: Driver-specific handle (container id, pid), for logs and operators.
    handle: str = ""
    #: The ``restarts`` of the Workload it was started from.
    restarts: int = 0
    #: The sidecar's state (None: the instance has none).
    proxy: WorkloadState | None = None
    #: ``host:port`` of the sidecar's admin API, reachable from the node.
    admin: str = ""
    #: Where the app itself listens, reachable from the node (health checks
    #: go there, not through the sidecar); empty without a sidecar.
    app_address: str = ""
    app_port: int | None = None


class Driver(Protocol):
    name: str

    def start(self, workload: Workload) -> Running: ...

    def inspect(self, instance_id: str) -> Running | None: ...

    def list(self) -> Sequence[Running]: ...

    def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        """Stop the workload (TERM, then KILL after ``timeout``) and remove
        everything it used (containers, files); unknown ids are ignored."""
        ...

    def logs(self, instance_id: str, tail: int | None = None,
             follow: bool = False) -> Iterator[bytes]:
        """The app's output as the runtime holds it (only the last ``tail``
        lines; ``follow``: then what comes), in whole lines. It goes with the
        workload (``stop``): the agent keeps the last output of a run that
        ended itself (``sidecar.history``)."""
        ...

    def restart_proxy(self, instance_id: str) -> None:
        """Start the instance's sidecar again (it exited); the app keeps running."""
        ...
