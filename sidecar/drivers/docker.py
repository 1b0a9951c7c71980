"""The docker driver: every instance is a pod of containers on one Docker Engine.

A pod is

- a **pause** container (``flotilla-<instance>-pause``, ``pause_image``) that
  holds the network namespace and publishes the app port on the node's
  advertised address, on a host port Docker picks;
- the **app** container (``flotilla-<instance>-app``, ``workload.image``),
  joined to that namespace with ``network_mode=container:<pause id>``, so it
  listens on the pause's addresses and reaches pod mates on 127.0.0.1.

With a sidecar (``workload.sidecar``) the pod is pause + **envoy**
(``flotilla-<instance>-envoy``, ``envoy_image``) + app, started in that
order, the app only once Envoy is LIVE (its admin ``/ready``, within
``sidecar.ready_timeout``; otherwise the start fails quoting Envoy's last log
lines and leaves no container behind). Envoy is configured only by the
control plane's xDS:

- its bootstrap goes on its command line (``--config-yaml``), so a restarted
  Envoy container comes back with it; admin listens on 0.0.0.0:15000 in the
  pod, published on the node's 127.0.0.1 (readiness, ``proxy-config``);
- the inbound listener takes 0.0.0.0:15001 in the pod, and that is the port
  the pause publishes on the node's advertised address (instead of the app
  port): ``Running.address``/``port``, the endpoint in EDS. Health checks go
  to the app itself, on the pause's bridge address (``Running.app_address``);
- each upstream, in declaration order, gets a loopback VIP (127.1.0.1,
  127.1.0.2, ...): the pause's hosts file, which its pod mates share, maps
  ``name.namespace`` and ``name`` to it (a bare name once, the pod's own
  namespace first), and Envoy listens there on the upstream service's port
  (or the upstream's port override), so ``http://backend:9090`` just works.
  ``FLOTILLA_UPSTREAM_<NAME>`` (see ``upstream_env``) tells the app the same:
  ``VIP:PORT`` when the port is known here (an override), else the VIP alone
  (the service's port comes from the control plane, which the driver does not
  ask);
- an Envoy in a pod cannot reach the node's loopback, so its ADS stream goes
  to a unix socket the driver's ``Relay`` serves (``<data_dir>/xds/xds.sock``,
  that directory mounted read-only at ``/run/flotilla``) and forwards to
  ``sidecar.xds``. One relay per driver, started with the first sidecar pod
  (or the first one adopted); ``close()`` stops it.

The app listens on every address of the pod, as containers do: an upstream
reached on the app's own port (or on 15000/15001) collides with it, so such a
port override is refused; give the upstream an override port when its
service's port is the app's. Gateways run on the process driver only.

Workload mapping (as Kubernetes does it): ``command`` replaces the image's
ENTRYPOINT (and drops its CMD), ``args`` replace its CMD; ``env`` gets
``FLOTILLA_INSTANCE_ID``, ``FLOTILLA_SERVICE``, ``FLOTILLA_NAMESPACE`` and
``PORT`` (these win over ``env``); ``cpu_millis`` becomes ``NanoCpus`` and
``memory_mib`` the memory limit, with no swap on top. Each of ``mounts`` is a
directory the driver writes under ``<data_dir>/mounts/<instance>/`` (mode
0700 up to there), bind-mounted read-only at its path in the app container
alone, its files handed to the user the image runs as (``USER``, names
resolved through the image's ``/etc/passwd`` and ``/etc/group``), with
``FLOTILLA_MOUNT_ROOT`` set empty; ``stop`` removes it. The app runs under the
engine's init (``docker-init``), so SIGTERM stops it even before it installs a
handler of its own (a bare PID 1 ignores it and waits for the KILL).

Contract:

- Ownership is by label: every container carries ``dev.flotilla.node``,
  ``.instance``, ``.service``, ``.namespace``, ``.revision`` and ``.role``
  (``pause`` | ``envoy`` | ``app``); a sidecar pod's also carry ``.app-port``
  and ``.xds`` (what the relay forwards to, for an adopted pod). The driver
  reads, stops and removes only containers labelled with its own node, so
  ``list()`` is how an agent restarted on the node adopts its pods, and
  several nodes may share one engine.
- The app container's state decides an instance's state: RUNNING while it
  and its pause run; EXITED (with the app's exit code when it has one) once
  either is gone or stopped, since an app without its pause is unreachable.
  The envoy container's state is ``Running.proxy``: an exited Envoy is
  started again by ``restart_proxy`` while the app keeps running.
- ``stop`` asks Envoy to drain first, then stops app, envoy and pause.
- Images are never pulled (no registry is used): a missing image is a
  ``DriverError`` that says how to build it.
- The driver keeps no state of its own but its relay; the engine is the only
  truth, so all methods are safe to call from several threads at once.
"""

from __future__ import annotations

import fcntl
import io
import ipaddress
import logging
import math
import re
import shutil
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import docker.errors

from controlplane.model.proxy import GATEWAY, SIDECAR, Proxy, upstream_key
from sidecar import envoy
from sidecar.drivers.base import (
    MOUNT_ROOT_ENV,
    DriverError,
    Running,
    Sidecar,
    Workload,
    WorkloadState,
    upstream_env,
)
from sidecar.drivers.files import check_mounts, give, write_mounts
from sidecar.relay import Relay

LABEL_NODE = "dev.flotilla.node"
LABEL_INSTANCE = "dev.flotilla.instance"
LABEL_SERVICE = "dev.flotilla.service"
LABEL_NAMESPACE = "dev.flotilla.namespace"
LABEL_REVISION = "dev.flotilla.revision"
LABEL_ROLE = "dev.flotilla.role"
LABEL_RESTARTS = "dev.flotilla.restarts"
LABEL_APP_PORT = "dev.flotilla.app-port"
LABEL_XDS = "dev.flotilla.xds"
#: On the envoy image (deploy/images/build.sh): the Envoy version it holds.
LABEL_ENVOY_VERSION = "dev.flotilla.envoy.version"
ROLE_PAUSE = "pause"
ROLE_ENVOY = "envoy"
ROLE_APP = "app"
#: Stopped in this order: what serves first, the namespace holder last.
_STOP_ORDER = {ROLE_APP: 0, ROLE_ENVOY: 1, ROLE_PAUSE: 2}

DEFAULT_PAUSE_IMAGE = "flotilla/pause:dev"
DEFAULT_ENVOY_IMAGE = "flotilla/envoy:dev"
#: Where the relay's socket directory is mounted in every Envoy container.
POD_XDS_DIR = "/run/flotilla"
XDS_SOCKET = "xds.sock"
#: Upstream n (from 1) of a pod listens on this address + n.
_VIP_BASE = ipaddress.IPv4Address("127.1.0.0")
_ADMIN_KEY = f"{envoy.POD_ADMIN_PORT}/tcp"
_INBOUND_KEY = f"{envoy.POD_INBOUND_PORT}/tcp"
#: Seconds between readiness polls of a starting Envoy.
_READY_POLL = 0.1
MIB = 1024 * 1024
NANO_CPUS_PER_MILLI = 1_000_000
#: Docker's zero time, reported as StartedAt by a container never started.
_NEVER = "0001-01-01T00:00:00Z"
log = logging.getLogger(__name__)
_RFC3339 = re.compile(r"(?P<base>[^.Z+]+)(?:\.(?P<frac>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)$")

#: Inspect data of one container, as the Engine API returns it.
Inspected = dict[str, Any]
#: Container summaries, as the Engine API lists them.
Summaries = list[dict[str, Any]]
#: Ids of the containers one start created (the class's ``list`` shadows the builtin).
CreatedIds = list[str]
#: The lines of a file like /etc/passwd, each split at ':'.
Table = list[list[str]]


def container_name(instance_id: str, role: str) -> str:
    return f"flotilla-{instance_id}-{role}"


def parse_timestamp(value: str) -> float:
    """Unix seconds from Docker's RFC 3339 time with nanoseconds; 0.0 for never."""
    match = _RFC3339.match(value or _NEVER)
    if value in ("", _NEVER) or match is None:
        return 0.0
    frac = (match["frac"] or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    when = datetime.fromisoformat(f"{match['base']}.{frac}{zone}")
    return when.astimezone(timezone.utc).timestamp()


@dataclass(frozen=True)
class PodMesh:
    """How a sidecar pod is wired: Envoy's identity and listeners, the pause's
    hosts entries (name -> VIP) and the app's upstream variables."""

    proxy: Proxy
    hosts: dict[str, str]
    env: dict[str, str]


def pod_mesh(workload: Workload, sidecar: Sidecar) -> PodMesh:
    """The wiring of *workload*'s pod; DriverError for ports that collide."""
    reserved = {envoy.POD_ADMIN_PORT: "its Envoy's admin", envoy.POD_INBOUND_PORT:
                "its Envoy's inbound listener"}
    where = f"service {workload.namespace}/{workload.service}"
    if workload.port in reserved:
        raise DriverError(f"{where}: spec.port {workload.port} is taken in a docker pod by "
                          f"{reserved[workload.port]}; choose another port")
    if workload.port is not None:
        reserved[workload.port] = "the app (listening on every address)"
    upstreams: dict[str, tuple[str, int | None]] = {}
    hosts: dict[str, str] = {}
    env: dict[str, str] = {}
    own_first = sorted(sidecar.upstreams, key=lambda u: u[0] != workload.namespace)
    for number, (namespace, name, port) in enumerate(sidecar.upstreams, start=1):
        if port in reserved:
            raise DriverError(
                f"{where}: spec.upstreams {namespace}/{name} port {port} is taken in a docker "
                f"pod by {reserved[port]}; choose another port override")
        vip = str(_VIP_BASE + number)
        upstreams[upstream_key(namespace, name)] = (vip, port)
        env[upstream_env(namespace, name, workload.namespace)] = (
            f"{vip}:{port}" if port is not None else vip)
    for namespace, name, _ in own_first:
        vip = upstreams[upstream_key(namespace, name)][0]
        hosts.setdefault(f"{name}.{namespace}", vip)
        hosts.setdefault(name, vip)
    proxy = Proxy(
        id=workload.instance_id, kind=SIDECAR, namespace=workload.namespace,
        name=workload.service, node=sidecar.node, instance=workload.instance_id,
        inbound=("0.0.0.0", envoy.POD_INBOUND_PORT) if workload.port is not None else None,
        app_port=workload.port, upstreams=upstreams,
    )
    return PodMesh(proxy, hosts, env)


def _has_sidecar(pod: dict[str, Inspected]) -> bool:
    return any(LABEL_XDS in (data["Config"].get("Labels") or {}) for data in pod.values())


def _bridge_address(container: Inspected) -> str:
    """The container's address on a docker network (the default bridge first)."""
    settings = container["NetworkSettings"]
    found = settings.get("IPAddress") or ""
    for network in (settings.get("Networks") or {}).values():
        found = found or network.get("IPAddress") or ""
    return str(found)


#: The default bridge's option naming its host interface (``docker0``).
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
_SIOCGIFADDR = 0x8915


def interface_address(name: str) -> str | None:
    """The IPv4 address of this host's network interface *name*, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


def bridge_gateway(client: docker.DockerClient) -> str | None:
    """The default bridge's address on this host, which the host and every
    container reach, or None when the engine has no IPv4 bridge.

    On the first start of a new engine the bridge network's ``IPAM.Config``
    names a subnet but no ``Gateway`` (it appears after a restart), so the
    host interface the network names (``docker0``) is asked first; the IPAM
    gateway, then the subnet's first address (where the engine puts the
    gateway), serve an engine on another host."""
    network = client.networks.get("bridge").attrs
    interface = (network.get("Options") or {}).get(BRIDGE_NAME_OPTION, "docker0")
    found = interface_address(interface)
    if found is not None:
        return found
    for config in (network.get("IPAM") or {}).get("Config") or []:
        if "." in config.get("Gateway", ""):
            return str(config["Gateway"])
        if "." in config.get("Subnet", ""):
            subnet = ipaddress.IPv4Network(config["Subnet"], strict=False)
            return str(subnet.network_address + 1)
    return None


def user_ids(user: str, passwd: Callable[[], Table], groups: Callable[[], Table]
             ) -> tuple[int, int]:
    """(uid, gid) of a container's ``USER`` (``name|uid[:group|gid]``), as the
    engine resolves it: names through the image's ``passwd`` and ``groups``
    (their lines split at ':'), a user's group from its passwd entry, root
    (0, 0) for none."""
    name, _, group = user.partition(":")
    if not name:
        return 0, 0
    entry = next((e for e in passwd() if e[2 if name.isdigit() else 0] == name), None)
    if entry is None and not name.isdigit():
        raise DriverError(f"the image's USER {user!r} is not in its /etc/passwd; use a uid, "
                          "or add the user to the image")
    uid = int(name) if name.isdigit() else int(entry[2]) if entry is not None else 0
    gid = int(entry[3]) if entry is not None else 0
    if group.isdigit():
        return uid, int(group)
    if group:
        found = next((e for e in groups() if e[0] == group), None)
        if found is None:
            raise DriverError(f"the image's USER {user!r} names a group that is not in its "
                              "/etc/group; use a gid, or add the group to the image")
        gid = int(found[2])
    return uid, gid


def _last_lines(output: bytes, count: int = 5) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return " | ".join(lines[-count:]) or "(no output)"


class DockerDriver:
    """Runs each instance as a pause + app pod (+ envoy, with a sidecar) on
    one Docker Engine.

    ``node`` is the name this driver labels and filters by; ``address`` is the
    node's advertised address, where app ports (or, with a sidecar, Envoy's
    inbound ports) are published (on one machine, the docker bridge's gateway,
    which both the host and containers reach). ``data_dir`` (the agent's) holds
    the xDS relay's socket; sidecar pods need it.
    """

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        node: str,
        address: str,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
        data_dir: Path | None = None,
        envoy_image: str = DEFAULT_ENVOY_IMAGE,
    ) -> None:
        self._api = client.api
        self._node = node
        self._address = address
        self._pause_image = pause_image
        self._envoy_image = envoy_image
        self._xds_dir = (data_dir / "xds").resolve() if data_dir is not None else None
        self._mounts_dir = (data_dir / "mounts").resolve() if data_dir is not None else None
        self._relay: Relay | None = None
        self._relay_lock = threading.Lock()

    # --- Driver -------------------------------------------------------------

    def start(self, workload: Workload) -> Running:
        instance = workload.instance_id
        doing = f"starting instance {instance}"
        if not workload.image:
            raise DriverError(
                f"instance {instance}: the docker driver runs images, and the "
                f"service {workload.namespace}/{workload.service} sets no image; "
                "set spec.image (or run it with the process driver)"
            )
        sidecar = workload.sidecar
        if sidecar is not None and sidecar.kind == GATEWAY:
            raise DriverError(f"instance {instance}: gateways run on the process driver only")
        mesh = pod_mesh(workload, sidecar) if sidecar is not None else None
        check_mounts(workload.mounts)
        with self._engine(doing):
            self._require_image(workload.image)
            self._require_image(self._pause_image)
            if sidecar is not None:
                self._require_envoy_image()
                self._serve_xds(sidecar.xds)
            created: CreatedIds = []
            try:
                pause_id = self._create(doing, self._pause_config(workload, mesh), created)
                self._api.start(pause_id)
                if sidecar is not None and mesh is not None:
                    envoy_id = self._create(
                        doing, self._envoy_config(workload, mesh, pause_id), created)
                    self._api.start(envoy_id)
                    self._wait_live(workload, sidecar, pause_id, envoy_id)
                binds = self._write_mounts(workload)
                app_id = self._create(doing, self._app_config(workload, pause_id, mesh, binds),
                                      created)
                if binds:
                    give(list(binds), *self._app_user(app_id))
                self._api.start(app_id)
            except BaseException:
                # Leaves no half pod behind; the original error is what matters.
                for container_id in reversed(created):
                    with suppress(Exception):
                        self._api.remove_container(container_id, v=True, force=True)
                self._remove_mounts(instance)
                raise
            running = self._running(self._inspect_pod(instance))
        if running is None:
            raise DriverError(f"{doing}: its containers vanished right after starting")
        return running

    def inspect(self, instance_id: str) -> Running | None:
        with self._engine(f"inspecting instance {instance_id}"):
            return self._adopted(self._inspect_pod(instance_id))

    def list(self) -> Sequence[Running]:
        with self._engine(f"listing the instances of node {self._node}"):
            pods: dict[str, dict[str, str]] = {}
            for summary in self._containers():
                labels = summary.get("Labels") or {}
                pods.setdefault(labels.get(LABEL_INSTANCE, ""), {})[
                    labels.get(LABEL_ROLE, "")
                ] = summary["Id"]
            found = []
            for instance_id in sorted(pods):
                running = self._adopted(self._inspect_ids(pods[instance_id].values()))
                if running is not None:
                    found.append(running)
            return found

    def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        with self._engine(f"stopping instance {instance_id}"):
            ids = self._pod_ids(instance_id)
            if ROLE_ENVOY in ids and ROLE_PAUSE in ids:
                # No new connections; in-flight requests finish.
                admin = self._admin(self._inspect_ids([ids[ROLE_PAUSE]]).get(ROLE_PAUSE))
                if admin is not None:
                    admin.drain()
            self._remove_pod(ids, timeout)
        self._remove_mounts(instance_id)

    def logs(
        self, instance_id: str, tail: int | None = None, follow: bool = False
    ) -> Iterator[bytes]:
        doing = f"reading the logs of instance {instance_id}"
        with self._engine(doing):
            app = self._pod_ids(instance_id).get(ROLE_APP)
            if app is None:
                raise DriverError(f"{doing}: node {self._node} runs no such instance")
            chunks = self._api.logs(
                app, stdout=True, stderr=True, stream=True, follow=follow,
                tail="all" if tail is None else max(tail, 0),
            )  # fmt: skip
        return self._guarded(doing, chunks)

    def restart_proxy(self, instance_id: str) -> None:
        """Starts the pod's exited envoy container again (same bootstrap). When
        it is gone altogether the app is stopped, so that the instance exits
        and its runner starts a whole new pod."""
        with self._engine(f"restarting the Envoy of instance {instance_id}"):
            pod = self._inspect_pod(instance_id)
            proxy = pod.get(ROLE_ENVOY)
            if proxy is None:
                app = pod.get(ROLE_APP)
                if app is not None and _has_sidecar(pod):
                    self._ignore_gone(self._api.stop, app["Id"], timeout=1)
                return
            if proxy["State"].get("Running"):
                return
            self._serve_xds(proxy["Config"]["Labels"].get(LABEL_XDS, ""))
            self._api.start(proxy["Id"])

    def close(self) -> None:
        """Stops the xDS relay (Envoys keep their last config until an agent
        serves the socket again). Idempotent."""
        with self._relay_lock:
            relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()

    # --- containers ---------------------------------------------------------

    def _labels(self, workload: Workload, role: str) -> dict[str, str]:
        return {
            LABEL_NODE: self._node,
            LABEL_INSTANCE: workload.instance_id,
            LABEL_SERVICE: workload.service,
            LABEL_NAMESPACE: workload.namespace,
            LABEL_REVISION: str(workload.revision),
            LABEL_ROLE: role,
            LABEL_RESTARTS: str(workload.restarts),
        } | ({
            LABEL_APP_PORT: "" if workload.port is None else str(workload.port),
            LABEL_XDS: workload.sidecar.xds,
        } if workload.sidecar is not None else {})

    def _pause_config(self, workload: Workload, mesh: PodMesh | None) -> dict[str, Any]:
        # Pod port -> (address,) with no host port: Docker picks a free one.
        bindings: dict[int, tuple[str]] = {}
        if mesh is None:
            if workload.port is not None:
                bindings[workload.port] = (self._address,)
        else:
            if workload.port is not None:
                bindings[envoy.POD_INBOUND_PORT] = (self._address,)
            bindings[envoy.POD_ADMIN_PORT] = ("127.0.0.1",)
        return {
            "image": self._pause_image,
            "name": container_name(workload.instance_id, ROLE_PAUSE),
            "labels": self._labels(workload, ROLE_PAUSE),
            "ports": list(bindings) or None,
            "host_config": self._api.create_host_config(
                port_bindings=bindings or None,
                # Pod mates share the pause's hosts file: upstreams by name.
                extra_hosts=mesh.hosts if mesh is not None and mesh.hosts else None,
            ),
        }

    def _envoy_config(self, workload: Workload, mesh: PodMesh,
                      pause_id: str) -> dict[str, Any]:
        assert self._xds_dir is not None
        # The agent serves SDS next to the relay's socket: the same mount.
        sds = workload.sidecar.sds if workload.sidecar is not None else ""
        config = envoy.bootstrap(mesh.proxy, f"unix:{POD_XDS_DIR}/{XDS_SOCKET}",
                                 ("0.0.0.0", envoy.POD_ADMIN_PORT),
                                 f"{POD_XDS_DIR}/{Path(sds).name}" if sds else None)
        # The image's ENTRYPOINT is Envoy: the command is its arguments.
        argv = envoy.command(Path("envoy"), config=config)[1:]
        return {
            "image": self._envoy_image,
            "name": container_name(workload.instance_id, ROLE_ENVOY),
            "labels": self._labels(workload, ROLE_ENVOY),
            "command": argv,
            "host_config": self._api.create_host_config(
                network_mode=f"container:{pause_id}",
                binds={str(self._xds_dir): {"bind": POD_XDS_DIR, "mode": "ro"}},
            ),
        }

    def _wait_live(self, workload: Workload, sidecar: Sidecar, pause_id: str,
                   envoy_id: str) -> None:
        """Returns once the pod's Envoy is LIVE; DriverError (quoting its log)
        when it exits or is not LIVE within ``sidecar.ready_timeout``."""
        instance = workload.instance_id
        admin = self._admin(self._api.inspect_container(pause_id))
        if admin is None:
            raise DriverError(f"instance {instance}: the pause publishes no Envoy admin port")
        deadline = time.monotonic() + sidecar.ready_timeout
        while not admin.ready():
            state = self._api.inspect_container(envoy_id)["State"]
            if not state.get("Running"):
                raise DriverError(
                    f"instance {instance}: its Envoy exited at start (code "
                    f"{state.get('ExitCode')}): {self._envoy_log(envoy_id)}")
            if time.monotonic() > deadline:
                relay = self._relay
                failed = f" (the relay's last try: {relay.last_error})" \
                    if relay is not None and relay.last_error else ""
                raise DriverError(
                    f"instance {instance}: its Envoy got no config from the control plane at "
                    f"{sidecar.xds}{failed} within {sidecar.ready_timeout:g}s, through the "
                    f"relay at {self._relay_path()}; the app is not started without it. "
                    f"Envoy said: {self._envoy_log(envoy_id)}")
            time.sleep(_READY_POLL)

    def _envoy_log(self, envoy_id: str) -> str:
        try:
            output: bytes = self._api.logs(envoy_id, stdout=True, stderr=True, tail=20)
        except docker.errors.APIError:
            return "(no output)"
        return _last_lines(output)

    def _app_config(self, workload: Workload, pause_id: str, mesh: PodMesh | None = None,
                    binds: dict[Path, str] | None = None) -> dict[str, Any]:
        env = {
            **workload.env,
            **(mesh.env if mesh is not None else {}),
            "FLOTILLA_INSTANCE_ID": workload.instance_id,
            "FLOTILLA_SERVICE": workload.service,
            "FLOTILLA_NAMESPACE": workload.namespace,
        }
        if workload.mounts:  # the paths are the container's own
            env[MOUNT_ROOT_ENV] = ""
        if workload.port is not None:
            env["PORT"] = str(workload.port)
        memory = workload.memory_mib * MIB
        return {
            "image": workload.image,
            "name": container_name(workload.instance_id, ROLE_APP),
            "labels": self._labels(workload, ROLE_APP),
            # An ENTRYPOINT given without CMD leaves the image's CMD out too.
            "entrypoint": list(workload.command) if workload.command else None,
            "command": list(workload.args) if workload.args else None,
            "environment": env,
            "host_config": self._api.create_host_config(
                network_mode=f"container:{pause_id}",
                # The engine's init (tini) as PID 1: an app that has not (yet)
                # set a SIGTERM handler still stops at once, and zombies are reaped.
                init=True,
                nano_cpus=workload.cpu_millis * NANO_CPUS_PER_MILLI,
                mem_limit=memory,
                memswap_limit=memory,
                binds={str(source): {"bind": path, "mode": "ro"}
                       for source, path in (binds or {}).items()} or None,
            ),
        }

    # --- mounts -------------------------------------------------------------

    def _mounts_root(self, instance_id: str) -> Path:
        if self._mounts_dir is None:
            raise DriverError(
                f"node {self._node}: spec.mounts need the docker driver built with the agent's "
                "data dir (DockerDriver(..., data_dir=...)), where the mounted files live")
        self._mounts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._mounts_dir / instance_id

    def _write_mounts(self, workload: Workload) -> dict[Path, str]:
        """The instance's mounts written afresh: host directory -> path in the app."""
        if not workload.mounts:
            return {}
        root = self._mounts_root(workload.instance_id)
        shutil.rmtree(root, ignore_errors=True)  # a start that died half way
        return dict(write_mounts(root, workload.mounts))

    def _remove_mounts(self, instance_id: str) -> None:
        if self._mounts_dir is not None:
            shutil.rmtree(self._mounts_dir / instance_id, ignore_errors=True)

    def _app_user(self, app_id: str) -> tuple[int, int]:
        """The (uid, gid) the created app container will run as."""
        user = str(self._api.inspect_container(app_id)["Config"].get("User") or "")
        return user_ids(user, lambda: self._table(app_id, "/etc/passwd"),
                        lambda: self._table(app_id, "/etc/group"))

    def _table(self, container_id: str, path: str) -> Table:
        """The colon-separated lines of a file in a container (empty without it)."""
        try:
            chunks, _ = self._api.get_archive(container_id, path)
        except docker.errors.NotFound:
            return []
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.next()
            data = archive.extractfile(member) if member is not None else None
            text = data.read().decode(errors="replace") if data is not None else ""
        return [line.split(":") for line in text.splitlines()
                if line.count(":") >= 3 and not line.startswith("#")]

    def _create(self, doing: str, config: dict[str, Any], created: CreatedIds) -> str:
        """Creates a container and appends its id to *created*."""
        try:
            container_id = str(self._api.create_container(**config)["Id"])
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise DriverError(
                    f"{doing}: a container named {config['name']} already exists; "
                    "stop the instance first (start is not idempotent)"
                ) from exc
            raise
        created.append(container_id)
        return container_id

    def _require_image(self, image: str) -> Inspected:
        try:
            data: Inspected = self._api.inspect_image(image)
        except docker.errors.NotFound as exc:
            raise DriverError(
                f"node {self._node}: image {image} not found locally; "
                "build it with `make images`"
            ) from exc
        return data

    def _require_envoy_image(self) -> None:
        """The envoy image, checked to hold the pinned Envoy when it says."""
        labels = self._require_image(self._envoy_image)["Config"].get("Labels") or {}
        version = labels.get(LABEL_ENVOY_VERSION)
        if version and not (version == envoy.ENVOY_VERSION
                            or version.startswith(envoy.ENVOY_VERSION + ".")):
            raise DriverError(
                f"node {self._node}: image {self._envoy_image} holds Envoy {version}, but "
                f"Flotilla needs Envoy {envoy.ENVOY_VERSION}.x; rebuild it with `make images`")

    # --- the xDS relay -------------------------------------------------------

    def _relay_path(self) -> Path:
        if self._xds_dir is None:
            raise DriverError(
                f"node {self._node}: sidecar pods need the docker driver built with the "
                "agent's data dir (DockerDriver(..., data_dir=...)), where the xDS relay's "
                "socket lives")
        return self._xds_dir / XDS_SOCKET

    def _serve_xds(self, target: str) -> None:
        """Starts the relay to *target* unless it runs; a running relay takes
        *target* for its new connections."""
        path = self._relay_path()
        with self._relay_lock:
            if self._relay is not None:
                if target:
                    self._relay.target = target
                return
            try:
                relay = Relay(path, target)
                relay.start()
            except (OSError, ValueError) as exc:
                raise DriverError(
                    f"node {self._node}: cannot serve the Envoys' xDS on {path}: {exc}; "
                    "check the agent's --data-dir (a unix socket path has at most 107 bytes)"
                ) from exc
            self._relay = relay

    def _containers(self, instance_id: str | None = None) -> Summaries:
        """Summaries of this node's containers, of one instance or of all."""
        labels = [f"{LABEL_NODE}={self._node}"]
        if instance_id is not None:
            labels.append(f"{LABEL_INSTANCE}={instance_id}")
        found: Summaries = self._api.containers(all=True, filters={"label": labels})
        return found

    def _pod_ids(self, instance_id: str) -> dict[str, str]:
        """Role -> container id, for this node's containers of the instance."""
        return {
            (summary.get("Labels") or {}).get(LABEL_ROLE, ""): str(summary["Id"])
            for summary in self._containers(instance_id)
        }

    def _inspect_pod(self, instance_id: str) -> dict[str, Inspected]:
        return self._inspect_ids(self._pod_ids(instance_id).values())

    def _inspect_ids(self, ids: Iterable[str]) -> dict[str, Inspected]:
        """Role -> inspect data; containers removed meanwhile are left out."""
        pod: dict[str, Inspected] = {}
        for container_id in ids:
            try:
                data: Inspected = self._api.inspect_container(container_id)
            except docker.errors.NotFound:
                continue
            pod[data["Config"]["Labels"].get(LABEL_ROLE, "")] = data
        return pod

    def _remove_pod(self, ids: dict[str, str], timeout: float) -> None:
        """Stops and removes an instance's containers (role -> id): app,
        envoy, and the pause, which holds the namespace, last. Gone containers
        are fine."""
        order = sorted(ids, key=lambda role: _STOP_ORDER.get(role, 0))
        seconds = max(0, math.ceil(timeout))
        for role in order:
            self._ignore_gone(self._api.stop, ids[role], timeout=seconds)
        for role in order:
            self._ignore_gone(self._api.remove_container, ids[role], v=True, force=True)

    @staticmethod
    def _ignore_gone(action: Callable[..., object], *args: object, **kwargs: object) -> None:
        try:
            action(*args, **kwargs)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # Another thread's stop got there first.
            if exc.status_code != 409 or "in progress" not in str(exc.explanation):
                raise

    # --- state --------------------------------------------------------------

    def _adopted(self, pod: dict[str, Inspected]) -> Running | None:
        """``_running``, after making sure the xDS relay serves a sidecar pod
        (an adopted pod's Envoy reconnects to it)."""
        proxy = pod.get(ROLE_ENVOY)
        if proxy is not None and self._relay is None and self._xds_dir is not None:
            try:
                self._serve_xds(proxy["Config"]["Labels"].get(LABEL_XDS, ""))
            except DriverError as error:
                log.warning("%s", error)
        return self._running(pod)

    def _running(self, pod: dict[str, Inspected]) -> Running | None:
        app, pause, proxy = pod.get(ROLE_APP), pod.get(ROLE_PAUSE), pod.get(ROLE_ENVOY)
        main = app or pause or proxy
        if main is None:
            return None
        labels = main["Config"]["Labels"]
        app_state: dict[str, Any] = app["State"] if app else {}
        pause_up = bool(pause and pause["State"]["Running"])
        app_up = bool(app_state.get("Running"))
        ended = app_state.get("Status") in ("exited", "dead")
        sidecar = _has_sidecar(pod)
        address, port = self._published(pause, _INBOUND_KEY if sidecar else None)
        mesh: dict[str, Any] = {}
        if sidecar:
            admin = self._published(pause, _ADMIN_KEY)[1]
            app_port = labels.get(LABEL_APP_PORT)
            mesh = {
                "proxy": WorkloadState.RUNNING if proxy and proxy["State"]["Running"]
                else WorkloadState.EXITED,
                "admin": f"127.0.0.1:{admin}" if admin else "",
                "app_address": _bridge_address(pause) if pause and pause_up else "",
                "app_port": int(app_port) if app_port else None,
            }
        return Running(
            instance_id=labels[LABEL_INSTANCE],
            namespace=labels.get(LABEL_NAMESPACE, ""),
            service=labels.get(LABEL_SERVICE, ""),
            revision=int(labels.get(LABEL_REVISION, "0")),
            state=WorkloadState.RUNNING if app_up and pause_up else WorkloadState.EXITED,
            address=address,
            port=port,
            exit_code=int(app_state["ExitCode"]) if ended else None,
            started_at=parse_timestamp(str(app_state.get("StartedAt", ""))),
            handle=str(main["Id"]),
            restarts=int(labels.get(LABEL_RESTARTS, "0")),
            **mesh,
        )

    def _published(self, pause: Inspected | None,
                   key: str | None = None) -> tuple[str, int | None]:
        """The address and host port the pause publishes pod port *key*
        (``"8080/tcp"``; by default its only one, the app port) on; None when
        the pod has no such port or its pause is not running."""
        if pause is None:
            return self._address, None
        requested = pause["HostConfig"].get("PortBindings") or {}
        actual = pause["NetworkSettings"].get("Ports") or {}
        for wanted in requested if key is None else [key]:
            bindings = actual.get(wanted) or []
            preferred = [b for b in bindings if b.get("HostIp") == self._address] or bindings
            if preferred and preferred[0].get("HostPort"):
                host_ip = preferred[0].get("HostIp") or self._address
                return host_ip, int(preferred[0]["HostPort"])
        return self._address, None

    def _admin(self, pause: Inspected | None) -> envoy.Admin | None:
        """The admin API of the pod's Envoy, as the node reaches it."""
        port = self._published(pause, _ADMIN_KEY)[1]
        return envoy.Admin("127.0.0.1", port, timeout=1.0) if port else None

    # --- errors -------------------------------------------------------------

    def _engine_name(self) -> str:
        adapter = getattr(self._api, "_custom_adapter", None)
        socket_path = getattr(adapter, "socket_path", None)
        return f"unix://{socket_path}" if socket_path else str(self._api.base_url)

    @contextmanager
    def _engine(self, doing: str) -> Iterator[None]:
        """Maps the SDK's and the transport's errors to DriverError."""
        try:
            yield
        except docker.errors.APIError as exc:
            raise DriverError(f"{doing}: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, OSError) as exc:
            # requests' connection errors and timeouts are OSErrors.
            raise DriverError(
                f"{doing}: the Docker Engine at {self._engine_name()} is unreachable "
                f"({exc}); start it (`make services-start`) or point DOCKER_HOST at it"
            ) from exc

    def _guarded(self, doing: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        with self._engine(doing):
            yield from chunks
