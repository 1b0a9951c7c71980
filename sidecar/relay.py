"""A byte relay from a unix socket to the control plane, for Envoys in docker pods.

An Envoy in a pod's network namespace cannot reach the node's loopback, where
the control plane (or the agent's way to it) is. The agent listens on a unix
socket in a directory it bind-mounts into every pod's Envoy container, and
forwards each connection made there, byte for byte, to ``target``
(``host:port``): the Envoy's ADS stream passes through unchanged.

Contract:

- one thread accepts; each connection gets two threads, one per direction;
- a half-close is passed on (EOF from one side shuts down writing to the
  other); a connection ends once both directions ended, or at once when
  either side fails, and then both of its sockets are closed;
- the connection to ``target`` has TCP keepalive and a user timeout: when the
  control plane's host vanishes the connection ends within ~30 s, also after
  Envoy gave up on it (its HTTP/2 pings pass through the relay unchanged);
- ``target`` may change while the relay runs; it applies to new connections;
- ``close()`` stops accepting, ends every open connection and removes the
  socket file; it is idempotent;
- thread-safe.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
#: Seconds: idle time before TCP keepalive probes, between probes, and how
#: long sent data may stay unacknowledged before the connection is dropped.
_KEEPIDLE, _KEEPINTVL, _KEEPCNT, _USER_TIMEOUT = 10, 5, 3, 30


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle connection and bound unacknowledged data (Linux options,
    where the platform has them)."""
    with suppress(OSError):  # a connection that failed already ends on its own
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", _KEEPIDLE), ("TCP_KEEPINTVL", _KEEPINTVL),
                              ("TCP_KEEPCNT", _KEEPCNT),
                              ("TCP_USER_TIMEOUT", _USER_TIMEOUT * 1000)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _endpoint(target: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[v6]:port``."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"relay target {target!r} is not host:port")
    return host.strip("[]"), int(port)


class Relay:
    """Forwards every connection to the unix socket ``path`` to ``target``
    (``host:port``, or several comma-separated: the control plane's replicas,
    tried in turn from the last one that answered)."""

    def __init__(self, path: Path, target: str, connect_timeout: float = 5.0) -> None:
        self.path = path
        self._targets = [_endpoint(t) for t in target.split(",")]
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        #: Sockets of the open connections, both ends (guarded by _lock).
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        #: Why the last connection to the target failed; empty once one
        #: succeeds. Logged once per run of failures: Envoys retry every second
        #: while the control plane is away.
        self.last_error = ""

    @property
    def target(self) -> str:
        return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                        for host, port in self._targets)

    @target.setter
    def target(self, target: str) -> None:
        self._targets = [_endpoint(t) for t in target.split(",")]

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._open) // 2

    def start(self) -> None:
        """Listens on ``path`` (replacing the socket a previous agent left
        there) and starts accepting, once. Raises OSError when it cannot."""
        with self._lock:
            if self._closed or self._listener is not None:
                raise RuntimeError("a relay starts once")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        with self._lock:
            if self._closed:
                listener.close()
                raise RuntimeError("the relay is closed")
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="xds-relay",
                         daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listener, self._listener = self._listener, None
            ends = list(self._open)
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
            with suppress(OSError):
                self.path.unlink()
        for end in ends:  # the forwarding threads see EOF or an error and finish
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    # --- threads ------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connect, args=(downstream,), name="xds-relay-conn",
                             daemon=True).start()

    def _connect(self, downstream: socket.socket) -> None:
        targets = list(self._targets)
        upstream: socket.socket | None = None
        failure: OSError | None = None
        for target in targets:
            try:
                upstream = socket.create_connection(target, timeout=self._connect_timeout)
            except OSError as error:
                failure = error
                continue
            if target != targets[0]:  # the next connection tries this replica first
                with self._lock:
                    if self._targets == targets:
                        self._targets = [target, *(t for t in targets if t != target)]
            break
        if upstream is None:
            if not self.last_error:
                log.warning("xDS relay: cannot reach the control plane at %s: %s",
                            self.target, failure)
            self.last_error = str(failure) or type(failure).__name__
            downstream.close()
            return
        if self.last_error:
            log.info("xDS relay: the control plane at %s answers again", self.target)
        self.last_error = ""
        upstream.settimeout(None)
        _keepalive(upstream)
        with self._lock:
            if self._closed:
                upstream.close()
                downstream.close()
                return
            self._open.update((downstream, upstream))
        finished = 0

        def done() -> None:
            nonlocal finished
            with self._lock:
                finished += 1
                if finished < 2:
                    return
                self._open.difference_update((downstream, upstream))
            downstream.close()
            upstream.close()

        threading.Thread(target=_forward, args=(upstream, downstream, done),
                         name="xds-relay-down", daemon=True).start()
        _forward(downstream, upstream, done)


def _forward(source: socket.socket, sink: socket.socket, done: Callable[[], None]) -> None:
    """Copies ``source`` to ``sink`` until EOF (passed on as a half-close);
    on an error, ends both directions of the connection."""
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
    finally:
        done()
