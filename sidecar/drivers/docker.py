"""The docker driver: every instance is a pod of containers on one Docker Engine.

A pod is

- a **pause** container (``flotilla-<instance>-pause``, ``pause_image``) that
  holds the network namespace and publishes the app port on the node's
  advertised address, on a host port Docker picks;
- the **app** container (``flotilla-<instance>-app``, ``workload.image``),
  joined to that namespace with ``network_mode=container:<pause id>``, so it
  listens on the pause's addresses and reaches pod mates on 127.0.0.1.

Workload mapping (as Kubernetes does it): ``command`` replaces the image's
ENTRYPOINT (and drops its CMD), ``args`` replace its CMD; ``env`` gets
``FLOTILLA_INSTANCE_ID``, ``FLOTILLA_SERVICE``, ``FLOTILLA_NAMESPACE`` and
``PORT`` (these win over ``env``); ``cpu_millis`` becomes ``NanoCpus`` and
``memory_mib`` the memory limit, with no swap on top. The app runs under the
engine's init (``docker-init``), so SIGTERM stops it even before it installs a
handler of its own (a bare PID 1 ignores it and waits for the KILL).

Contract:

- Ownership is by label: every container carries ``dev.flotilla.node``,
  ``.instance``, ``.service``, ``.namespace``, ``.revision`` and ``.role``
  (``pause`` | ``app``). The driver reads, stops and removes only containers
  labelled with its own node, so ``list()`` is how an agent restarted on the
  node adopts its pods, and several nodes may share one engine.
- The app container's state decides an instance's state: RUNNING while it
  and its pause run; EXITED (with the app's exit code when it has one) once
  either is gone or stopped, since an app without its pause is unreachable.
- Images are never pulled (no registry is used): a missing image is a
  ``DriverError`` that says how to build it.
- The driver keeps no state of its own; the engine is the only truth, so all
  methods are safe to call from several threads at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import Any

import docker
import docker.errors

from sidecar.drivers.base import DriverError, Running, Workload, WorkloadState

LABEL_NODE = "dev.flotilla.node"
LABEL_INSTANCE = "dev.flotilla.instance"
LABEL_SERVICE = "dev.flotilla.service"
LABEL_NAMESPACE = "dev.flotilla.namespace"
LABEL_REVISION = "dev.flotilla.revision"
LABEL_ROLE = "dev.flotilla.role"
LABEL_RESTARTS = "dev.flotilla.restarts"
ROLE_PAUSE = "pause"
ROLE_APP = "app"

DEFAULT_PAUSE_IMAGE = "flotilla/pause:dev"
MIB = 1024 * 1024
NANO_CPUS_PER_MILLI = 1_000_000
#: Docker's zero time, reported as StartedAt by a container never started.
_NEVER = "0001-01-01T00:00:00Z"
_RFC3339 = re.compile(r"(?P<base>[^.Z+]+)(?:\.(?P<frac>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)$")

#: Inspect data of one container, as the Engine API returns it.
Inspected = dict[str, Any]
#: Container summaries, as the Engine API lists them.
Summaries = list[dict[str, Any]]
#: Ids of the containers one start created (the class's ``list`` shadows the builtin).
CreatedIds = list[str]


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


class DockerDriver:
    """Runs each instance as a pause + app pod on one Docker Engine.

    ``node`` is the name this driver labels and filters by; ``address`` is the
    node's advertised address, where app ports are published (on one machine,
    the docker bridge's gateway, which both the host and containers reach).
    """

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        node: str,
        address: str,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
    ) -> None:
        self._api = client.api
        self._node = node
        self._address = address
        self._pause_image = pause_image

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
        with self._engine(doing):
            self._require_image(workload.image)
            self._require_image(self._pause_image)
            created: CreatedIds = []
            try:
                pause_id = self._create(doing, self._pause_config(workload), created)
                self._api.start(pause_id)
                app_id = self._create(doing, self._app_config(workload, pause_id), created)
                self._api.start(app_id)
            except BaseException:
                # Leaves no half pod behind; the original error is what matters.
                for container_id in reversed(created):
                    with suppress(Exception):
                        self._api.remove_container(container_id, v=True, force=True)
                raise
            running = self._running(self._inspect_pod(instance))
        if running is None:
            raise DriverError(f"{doing}: its containers vanished right after starting")
        return running

    def inspect(self, instance_id: str) -> Running | None:
        with self._engine(f"inspecting instance {instance_id}"):
            return self._running(self._inspect_pod(instance_id))

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
                running = self._running(self._inspect_ids(pods[instance_id].values()))
                if running is not None:
                    found.append(running)
            return found

    def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        with self._engine(f"stopping instance {instance_id}"):
            self._remove_pod(instance_id, timeout)

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
        return None  # pods get their Envoy with the docker sidecar work

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
        }

    def _pause_config(self, workload: Workload) -> dict[str, Any]:
        port = workload.port
        return {
            "image": self._pause_image,
            "name": container_name(workload.instance_id, ROLE_PAUSE),
            "labels": self._labels(workload, ROLE_PAUSE),
            "ports": [port] if port is not None else None,
            "host_config": self._api.create_host_config(
                # (address,) with no host port: Docker picks a free one.
                port_bindings={port: (self._address,)} if port is not None else None,
            ),
        }

    def _app_config(self, workload: Workload, pause_id: str) -> dict[str, Any]:
        env = {
            **workload.env,
            "FLOTILLA_INSTANCE_ID": workload.instance_id,
            "FLOTILLA_SERVICE": workload.service,
            "FLOTILLA_NAMESPACE": workload.namespace,
        }
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
            ),
        }

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

    def _require_image(self, image: str) -> None:
        try:
            self._api.inspect_image(image)
        except docker.errors.NotFound as exc:
            raise DriverError(
                f"node {self._node}: image {image} not found locally; "
                "build it with `make images`"
            ) from exc

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

    def _remove_pod(self, instance_id: str, timeout: float) -> None:
        """Stops and removes the instance's containers: the pause, which holds
        the namespace, last. Gone containers are fine."""
        ids = self._pod_ids(instance_id)
        order = sorted(ids, key=lambda role: role == ROLE_PAUSE)
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

    def _running(self, pod: dict[str, Inspected]) -> Running | None:
        app, pause = pod.get(ROLE_APP), pod.get(ROLE_PAUSE)
        main = app or pause
        if main is None:
            return None
        labels = main["Config"]["Labels"]
        app_state: dict[str, Any] = app["State"] if app else {}
        pause_up = bool(pause and pause["State"]["Running"])
        app_up = bool(app_state.get("Running"))
        ended = app_state.get("Status") in ("exited", "dead")
        address, port = self._published(pause)
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
        )

    def _published(self, pause: Inspected | None) -> tuple[str, int | None]:
        """The address and host port the app port is published on (None when
        the pod has no port or its pause is not running)."""
        if pause is None:
            return self._address, None
        requested = pause["HostConfig"].get("PortBindings") or {}
        actual = pause["NetworkSettings"].get("Ports") or {}
        for key in requested:
            bindings = actual.get(key) or []
            preferred = [b for b in bindings if b.get("HostIp") == self._address] or bindings
            if preferred and preferred[0].get("HostPort"):
                host_ip = preferred[0].get("HostIp") or self._address
                return host_ip, int(preferred[0]["HostPort"])
        return self._address, None

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
