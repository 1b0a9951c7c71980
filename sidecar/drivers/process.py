"""The process driver: each instance is a local process group.

The default when no Docker engine is reachable, so `flotilla dev` works
everywhere. Each instance gets a port on the node's address (``PORT`` in its
environment; the app must listen there), its own directory under the agent's
data dir with ``state.json`` and ``output.log``, and its own session, so it
keeps running when the agent restarts; a restarted agent adopts it from
``state.json``. A small ``sh`` wrapper records the exit code in
``exit_code`` because an adopted process is no longer the agent's child.

CPU and memory limits are not enforced by this driver (use docker for that).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sidecar.drivers.base import DriverError, Running, Workload, WorkloadState

#: Runs the command, then writes its exit status next to its state file.
_WRAPPER = '"$@"; echo $? > "$FLOTILLA_EXIT_FILE"'
#: Environment passed through from the agent to every process.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR", "VIRTUAL_ENV")


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


def start_ticks_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return int(fields[19])


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
        self.root = data_dir / "instances"
        self.root.mkdir(parents=True, exist_ok=True)
        self._environ = dict(os.environ if environ is None else environ)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def start(self, workload: Workload) -> Running:
        if not workload.command:
            raise DriverError(
                f"the process driver runs spec.command, and Service {workload.namespace}/"
                f"{workload.service} has none; add a command or run it with the docker driver"
            )
        home = self.root / workload.instance_id
        if (home / "state.json").exists():
            raise DriverError(f"instance {workload.instance_id} already exists on {self.node}")
        home.mkdir(parents=True, exist_ok=True)
        port = free_port(self.address) if workload.port is not None else None
        env = {k: v for k, v in self._environ.items() if k in _INHERITED}
        env |= dict(workload.env)
        env |= {
            "FLOTILLA_INSTANCE_ID": workload.instance_id,
            "FLOTILLA_SERVICE": workload.service,
            "FLOTILLA_NAMESPACE": workload.namespace,
            "FLOTILLA_EXIT_FILE": str(home / "exit_code"),
            "HOST": self.address,
        }
        if port is not None:
            env["PORT"] = str(port)
        argv = ["/bin/sh", "-c", _WRAPPER, "sh", *workload.command, *workload.args]
        with open(home / "output.log", "ab") as log:
            try:
                child = subprocess.Popen(
                    argv, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:
                shutil.rmtree(home, ignore_errors=True)
                raise DriverError(f"cannot start {workload.command[0]!r}: {error}") from error
        state = _State(
            workload.instance_id, workload.namespace, workload.service, workload.revision,
            child.pid, start_ticks_of(child.pid) or 0, self.address, port, time.time(),
            workload.restarts,
        )
        (home / "state.json").write_text(json.dumps(asdict(state)))
        with self._lock:
            self._children[workload.instance_id] = child
        return self._running(state, home)

    def inspect(self, instance_id: str) -> Running | None:
        home = self.root / instance_id
        try:
            state = _State(**json.loads((home / "state.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return self._running(state, home)

    def list(self) -> Sequence[Running]:
        found = (self.inspect(home.name) for home in sorted(self.root.iterdir()))
        return [r for r in found if r is not None]

    def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        home = self.root / instance_id
        running = self.inspect(instance_id)
        if running is not None and running.state is WorkloadState.RUNNING:
            pid = int(running.handle)
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(instance_id, pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(instance_id, pid):
                self._signal(pid, signal.SIGKILL)
                while self._alive(instance_id, pid) and time.monotonic() < deadline + 5:
                    time.sleep(0.05)
        with self._lock:
            self._children.pop(instance_id, None)
        shutil.rmtree(home, ignore_errors=True)

    def logs(self, instance_id: str, tail: int | None = None,
             follow: bool = False) -> Iterator[bytes]:
        path = self.root / instance_id / "output.log"
        if not path.exists():
            return
        with open(path, "rb") as log:
            lines = log.readlines()
            yield from lines[-tail:] if tail else lines
            while follow and path.exists():
                line = log.readline()
                if line:
                    yield line
                else:
                    time.sleep(0.2)

    # --- internals ---------------------------------------------------------------

    def _running(self, state: _State, home: Path) -> Running:
        alive = self._alive(state.instance_id, state.pid, state.start_ticks)
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
        )

    def _alive(self, instance_id: str, pid: int, start_ticks: int | None = None) -> bool:
        with self._lock:
            child = self._children.get(instance_id)
        if child is not None and child.pid == pid:
            return child.poll() is None  # also reaps our own children
        ticks = start_ticks_of(pid)
        return ticks is not None and (start_ticks is None or ticks == start_ticks)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.killpg(pid, signum)  # the wrapper leads its own process group
        except (ProcessLookupError, PermissionError):
            pass
