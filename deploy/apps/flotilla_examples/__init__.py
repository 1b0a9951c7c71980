"""Example workloads for Flotilla: an HTTP echo and a gRPC echo server.

Each runs as ``python3 -m flotilla_examples.<name>`` with ``deploy/apps`` on
``PYTHONPATH``, on the host (process driver) or in the images that
``deploy/images/build.sh`` makes (docker driver). They need only the standard
library and grpcio, so Debian's ``python3-grpcio`` is enough.

Environment, shared by both:

- ``PORT``: the port to listen on;
- ``HOST``: the address to listen on (the process driver sets the node's
  address, so instances on different nodes of one machine do not collide);
  every address when unset, as in a container;
- ``FLOTILLA_INSTANCE_ID``, ``FLOTILLA_SERVICE``, ``FLOTILLA_NAMESPACE``: who
  this instance is (set by the agent's drivers), echoed back to callers;
- ``HEALTH_FAIL_FILE``: while the file it names exists, health checks fail,
  so tests can make a healthy instance unhealthy and back.

Both exit 0 promptly on SIGTERM (and SIGINT).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """Who this instance is, from the environment the driver set."""

    instance: str
    service: str
    namespace: str

    @classmethod
    def from_env(cls) -> Identity:
        return cls(
            instance=os.environ.get("FLOTILLA_INSTANCE_ID", ""),
            service=os.environ.get("FLOTILLA_SERVICE", ""),
            namespace=os.environ.get("FLOTILLA_NAMESPACE", ""),
        )


def listen_port(default: int) -> int:
    return int(os.environ.get("PORT", str(default)))


def listen_host() -> str:
    return os.environ.get("HOST", "0.0.0.0")


def healthy() -> bool:
    """False while the file named by ``HEALTH_FAIL_FILE`` exists."""
    fail_file = os.environ.get("HEALTH_FAIL_FILE", "")
    return not (fail_file and os.path.exists(fail_file))


def stop_requested() -> threading.Event:
    """An event set on SIGTERM or SIGINT; call from the main thread.

    As PID 1 in a container, a process that installs no handler ignores
    SIGTERM, so every example installs this one.
    """
    event = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return event


def say(message: str) -> None:
    """One line on stdout, flushed at once so ``logs`` shows it."""
    print(message, flush=True)
