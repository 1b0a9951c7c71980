"""The process driver: each instance is a local process group.

The default when no Docker engine is reachable, so `flotilla dev` works
everywhere. Each instance gets its own directory under the agent's data dir
with ``state.json`` and ``output.log``, and its own session, so it keeps
running when the agent restarts; a restarted agent adopts it from
``state.json``. A small ``sh`` wrapper records the exit code in
``exit_code`` because an adopted process is no longer the agent's child.

Without a sidecar the app listens on a port of the node's address (``HOST``
and ``PORT`` in its environment). With one, Envoy runs first as a process of
its own (``envoy.json``, ``envoy.log``): its inbound listener takes the port
on the node's address, the app listens on 127.0.0.1 (``HOST``/``PORT``), and
each upstream gets a loopback port of its own, announced to the app as
``FLOTILLA_UPSTREAM_<NAME>=127.0.0.1:PORT``. The app starts once Envoy is LIVE.
Envoy asks the kernel for a SIGTERM when its parent process ends
(PR_SET_PDEATHSIG), so its parent is a small ``sh`` keeper, not the agent: an
agent that restarts leaves every Envoy serving. Envoy leads a session of its
own (``envoy_pid`` in ``state.json``); the keeper ends with it, and killed, it
takes Envoy with it.

A process has no filesystem of its own, so ``spec.mounts`` are rooted in the
instance's directory: a mount at ``/etc/app`` is ``<instance>/mounts/etc/app``,
and ``FLOTILLA_MOUNT_ROOT`` names ``<instance>/mounts`` (the docker driver
sets it empty), so ``$FLOTILLA_MOUNT_ROOT/etc/app/KEY`` is the file on both
drivers. The files belong to the agent's user, whom the app runs as.

CPU and memory limits are not enforced by this driver (use docker for that).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from controlplane.model.proxy import GATEWAY, SIDECAR, Proxy
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
from sidecar.drivers.files import check_mounts, write_mount

#: Runs the command, then writes its exit status next to its state file.
_WRAPPER = '"$@"; echo $? > "$FLOTILLA_EXIT_FILE"'
#: Environment passed through from the agent to every process.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR", "VIRTUAL_ENV")
#: Keeps Envoy (``"$@"``) as its child and writes its pid to the file ``$0``.
_ENVOY_KEEPER = '"$@" & echo $! > "$0"; wait $!'
#: Makes the process lead a session of its own, then becomes ``argv[1:]``.
_SETSID = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
#: Seconds the keeper gets to name Envoy's pid.
_KEEPER_TIMEOUT = 10.0


@dataclass(frozen=True)
class _State:
    instance_id: str
    namespace: str
    service: str
    revision: int
    pid: int
    #: The process's start time in clock ticks since boot (/proc/PID/stat
    #: field 22): a reused pid has another.
    start_ticks: int
    address: str
    port: int | None
    started_at: float
    restarts: int = 0
    #: The sidecar (0 without one) and where its parts listen. Envoy's own
    #: pid, the leader of its process group (its parent is the keeper).
    envoy_pid: int = 0
    envoy_ticks: int = 0
    admin_port: int = 0
    app_port: int | None = None
    envoy_binary: str = ""


def start_ticks_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return int(fields[19])


def _last_lines(path: Path, count: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return " | ".join(lines[-count:]) or "(no output)"


def _tail(log: BinaryIO, count: int, block: int = 64 * 1024) -> list[bytes]:
    """The last ``count`` lines of an open file, read backwards a block at a
    time; leaves the file at the end it had."""
    end = position = log.seek(0, os.SEEK_END)
    data = b""
    while position > 0 and data.count(b"\n") <= count:
        step = min(block, position)
        position -= step
        log.seek(position)
        data = log.read(step) + data
    log.seek(end)
    return data.splitlines(keepends=True)[-count:]


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class ProcessDriver:
    name = "process"

    def __init__(self, node: str, address: str, data_dir: Path,
                 environ: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.address = address
        self.root = (data_dir / "instances").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._environ = dict(os.environ if environ is None else environ)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        #: Ports handed out by this driver: a port picked for one instance is
        #: not picked again for another starting at the same time.
        self._handed_out: set[tuple[str, int]] = set()

    def _port(self, address: str) -> int:
        for _ in range(100):
            port = free_port(address)
            with self._lock:
                if (address, port) not in self._handed_out:
                    self._handed_out.add((address, port))
                    return port
        raise DriverError(f"no free port on {address}")

    def start(self, workload: Workload) -> Running:
        gateway = workload.sidecar is not None and workload.sidecar.kind == GATEWAY
        if not workload.command and not gateway:
            raise DriverError(
                f"the process driver runs spec.command, and Service {workload.namespace}/"
                f"{workload.service} has none; add a command or run it with the docker driver"
            )
        home = self.root / workload.instance_id
        if (home / "state.json").exists():
            raise DriverError(f"instance {workload.instance_id} already exists on {self.node}")
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in self._environ.items() if k in _INHERITED}
        env |= dict(workload.env)
        env |= {
            "FLOTILLA_INSTANCE_ID": workload.instance_id,
            "FLOTILLA_SERVICE": workload.service,
            "FLOTILLA_NAMESPACE": workload.namespace,
            "FLOTILLA_EXIT_FILE": str(home / "exit_code"),
            "HOST": self.address,
        }
        mounts = home / "mounts"
        if workload.mounts:
            env[MOUNT_ROOT_ENV] = str(mounts)
        port = self._port(self.address) if workload.port is not None else None
        state = _State(
            workload.instance_id, workload.namespace, workload.service, workload.revision,
            0, 0, self.address, port, time.time(), workload.restarts,
        )
        try:
            shutil.rmtree(mounts, ignore_errors=True)  # a start that died half way
            for mounted, path in zip(workload.mounts, check_mounts(workload.mounts)):
                write_mount(mounts / path.lstrip("/"), mounted)
            if workload.sidecar is not None:
                state = self._start_sidecar(workload, workload.sidecar, state, home, env)
            if gateway:  # the Envoy is the whole workload
                state = replace(state, pid=state.envoy_pid, start_ticks=state.envoy_ticks)
                self._save(state, home)
                return self._running(state, home)
            if state.app_port is not None:
                env |= {"HOST": "127.0.0.1", "PORT": str(state.app_port)}
            elif port is not None:
                env["PORT"] = str(port)
            state = self._spawn_app(workload, state, home, env)
        except BaseException:
            self._kill(state)
            shutil.rmtree(home, ignore_errors=True)
            raise
        return self._running(state, home)

    def _spawn_app(self, workload: Workload, state: _State, home: Path,
                   env: dict[str, str]) -> _State:
        assert workload.command
        argv = ["/bin/sh", "-c", _WRAPPER, "sh", *workload.command, *workload.args]
        with open(home / "output.log", "ab") as log:
            try:
                child = subprocess.Popen(
                    argv, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:
                raise DriverError(f"cannot start {workload.command[0]!r}: {error}") from error
        with self._lock:
            self._children[workload.instance_id] = child
        state = replace(state, pid=child.pid, start_ticks=start_ticks_of(child.pid) or 0,
                        started_at=time.time())
        self._save(state, home)
        return state

    def _start_sidecar(self, workload: Workload, sidecar: Sidecar, state: _State, home: Path,
                       env: dict[str, str]) -> _State:
        """Start Envoy and wait until it is LIVE; returns the state with its ports."""
        upstreams: dict[str, tuple[str, int | None]] = {}
        for namespace, name, _ in sidecar.upstreams:
            local = self._port("127.0.0.1")
            upstreams[f"{namespace}/{name}"] = ("127.0.0.1", local)
            env[upstream_env(namespace, name, workload.namespace)] = f"127.0.0.1:{local}"
        gateway = sidecar.kind == GATEWAY
        app_port = self._port("127.0.0.1") if workload.port is not None and not gateway else None
        inbound = (self.address, state.port) if state.port is not None else None
        proxy = Proxy(
            id=workload.instance_id, kind=GATEWAY if gateway else SIDECAR,
            namespace=workload.namespace, name=workload.service, node=sidecar.node,
            instance=workload.instance_id, inbound=(self.address, 0) if gateway else inbound,
            app_port=app_port, upstreams=upstreams,
        )
        admin_port = self._port("127.0.0.1")
        config = envoy.bootstrap(proxy, sidecar.xds, ("127.0.0.1", admin_port),
                                 sidecar.sds or None)
        (home / "envoy.json").write_text(json.dumps(config))
        state = replace(state, admin_port=admin_port, app_port=app_port,
                        envoy_binary=sidecar.envoy)
        # A gateway's Envoy is its workload: its output is the instance's log.
        state = self._spawn_envoy(state, home, Path(sidecar.envoy),
                                  "output.log" if gateway else "envoy.log")
        deadline = time.monotonic() + sidecar.ready_timeout
        admin = envoy.Admin("127.0.0.1", admin_port, timeout=1.0)
        while not admin.ready():
            if not self._alive(state.instance_id, state.envoy_pid, state.envoy_ticks,
                               role="envoy"):
                raise DriverError(f"instance {workload.instance_id}: its Envoy exited at start: "
                                  f"{_last_lines(home / 'envoy.log')}")
            if time.monotonic() > deadline:
                raise DriverError(
                    f"instance {workload.instance_id}: its Envoy got no config from the control "
                    f"plane at {sidecar.xds} within {sidecar.ready_timeout:g}s; the app is not "
                    "started without it")
            time.sleep(0.05)
        return state

    def _spawn_envoy(self, state: _State, home: Path, binary: Path,
                     log_name: str = "envoy.log") -> _State:
        """Start Envoy under its keeper (see the module docstring)."""
        named = home / "envoy.pid"
        named.unlink(missing_ok=True)
        argv = ["/bin/sh", "-c", _ENVOY_KEEPER, str(named), sys.executable, "-I", "-S",
                "-c", _SETSID, *envoy.command(binary, home / "envoy.json")]
        with open(home / log_name, "ab") as log:
            try:
                keeper = subprocess.Popen(
                    argv, cwd=home, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:
                raise DriverError(f"cannot start Envoy {binary}: {error}") from error
        with self._lock:
            self._children[state.instance_id + "/envoy"] = keeper
        pid = self._pid_named(named, keeper, binary)
        state = replace(state, envoy_pid=pid, envoy_ticks=start_ticks_of(pid) or 0)
        self._save(state, home)
        return state

    @staticmethod
    def _pid_named(path: Path, keeper: subprocess.Popen[bytes], binary: Path) -> int:
        """The pid the keeper writes to ``path``, once it has."""
        deadline = time.monotonic() + _KEEPER_TIMEOUT
        while True:
            ended = keeper.poll() is not None
            try:
                return int(path.read_text())
            except (OSError, ValueError):
                pass
            if ended or time.monotonic() > deadline:
                ProcessDriver._signal(keeper.pid, signal.SIGKILL)
                raise DriverError(f"cannot start Envoy {binary}: its keeper shell named no pid")
            time.sleep(0.01)

    def restart_proxy(self, instance_id: str) -> None:
        home = self.root / instance_id
        state = self._load(home)
        if state is None or not state.admin_port:
            return
        if self._alive(instance_id, state.envoy_pid, state.envoy_ticks, role="envoy"):
            return
        self._spawn_envoy(state, home, Path(state.envoy_binary))

    @staticmethod
    def _save(state: _State, home: Path) -> None:
        tmp = home / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(home / "state.json")

    @staticmethod
    def _load(home: Path) -> _State | None:
        try:
            return _State(**json.loads((home / "state.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def inspect(self, instance_id: str) -> Running | None:
        home = self.root / instance_id
        state = self._load(home)
        return None if state is None else self._running(state, home)

    def list(self) -> Sequence[Running]:
        found = (self.inspect(home.name) for home in sorted(self.root.iterdir()))
        return [r for r in found if r is not None]

    def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        home = self.root / instance_id
        state = self._load(home)
        if state is not None:
            if state.admin_port:  # no new connections; in-flight requests finish
                envoy.Admin("127.0.0.1", state.admin_port, timeout=0.5).drain()
            self._kill(state, timeout)
        with self._lock:
            self._children.pop(instance_id, None)
            self._children.pop(instance_id + "/envoy", None)
        shutil.rmtree(home, ignore_errors=True)

    def _kill(self, state: _State, timeout: float = 10.0) -> None:
        """TERM the app, then its Envoy; KILL what outlives ``timeout``."""
        for pid, ticks, role in ((state.pid, state.start_ticks, "app"),
                                 (state.envoy_pid, state.envoy_ticks, "envoy")):
            if not pid or not self._alive(state.instance_id, pid, ticks, role=role):
                continue
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(state.instance_id, pid, ticks, role=role) and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(state.instance_id, pid, ticks, role=role):
                self._signal(pid, signal.SIGKILL)
                while self._alive(state.instance_id, pid, ticks, role=role) and \
                        time.monotonic() < deadline + 5:
                    time.sleep(0.05)

    def logs(self, instance_id: str, tail: int | None = None,
             follow: bool = False) -> Iterator[bytes]:
        """The instance's output, line by line (never read whole)."""
        path = self.root / instance_id / "output.log"
        if not path.exists():
            return
        with open(path, "rb") as log:
            yield from _tail(log, tail) if tail else log
            while follow and path.exists():
                line = log.readline()
                if line:
                    yield line
                else:
                    time.sleep(0.2)

    # --- internals ---------------------------------------------------------------

    def _running(self, state: _State, home: Path) -> Running:
        alive = bool(state.pid) and self._alive(state.instance_id, state.pid, state.start_ticks)
        proxy: WorkloadState | None = None
        if state.admin_port:
            proxy = WorkloadState.RUNNING if self._alive(
                state.instance_id, state.envoy_pid, state.envoy_ticks, role="envoy",
            ) else WorkloadState.EXITED
        exit_code: int | None = None
        if not alive:
            try:
                exit_code = int((home / "exit_code").read_text().strip())
            except (OSError, ValueError):
                exit_code = -1  # killed before the wrapper could record it
        return Running(
            instance_id=state.instance_id, namespace=state.namespace, service=state.service,
            revision=state.revision,
            state=WorkloadState.RUNNING if alive else WorkloadState.EXITED,
            address=state.address, port=state.port, exit_code=exit_code,
            started_at=state.started_at, handle=str(state.pid), restarts=state.restarts,
            proxy=proxy, admin=f"127.0.0.1:{state.admin_port}" if state.admin_port else "",
            app_address="127.0.0.1" if state.app_port else "", app_port=state.app_port,
        )

    def _alive(self, instance_id: str, pid: int, start_ticks: int | None = None,
               role: str = "app") -> bool:
        with self._lock:
            child = self._children.get(instance_id if role == "app" else f"{instance_id}/{role}")
        if child is not None and child.pid == pid:
            return child.poll() is None  # also reaps our own children
        if child is not None:
            child.poll()  # Envoy's keeper: reaped once it ended
        ticks = start_ticks_of(pid)
        return ticks is not None and (start_ticks is None or ticks == start_ticks)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        if pid <= 0:  # never our own process group (killpg(0)) or every process
            return
        try:
            os.killpg(pid, signum)  # the wrapper leads its own process group
        except (ProcessLookupError, PermissionError):
            pass
