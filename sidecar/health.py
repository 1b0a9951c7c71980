"""Health checks the agent runs against an instance: the probes, and the
schedule that says when to probe and what the results mean.

``probe(check, address, port)`` returns ``(ok, detail)``; it never raises for
a failing app. ``check`` is the assignment's typed ``HealthCheck``, every
default filled in by the control plane; ``port`` is the app's, probed unless
the check names a port of its own. A check naming no probe this agent knows
fails: nothing passes unprobed.

:class:`HealthSchedule` does no I/O: on a :class:`Clock` it decides when the
next probe is due (``interval``, ``initialDelay``) and what a run of results
means for the instance (``failureThreshold``, the startup grace), so tests
drive it with a ``FakeClock``.
"""

from __future__ import annotations

import enum
import http.client
import socket
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.api.flotilla.v1 import agent_pb2
from controlplane.model.clock import Clock

#: The probe kinds a ``healthCheck`` names exactly one of.
KINDS = ("http", "tcp", "grpc")


@dataclass(frozen=True)
class CheckTiming:
    """A ``healthCheck``'s timing, in seconds."""

    interval: float
    timeout: float
    initial_delay: float
    failure_threshold: int

    @classmethod
    def of(cls, check: agent_pb2.HealthCheck) -> CheckTiming:
        """The timing the control plane sent (the schema's defaults filled in)."""
        return cls(interval=check.interval.ToTimedelta().total_seconds(),
                   timeout=check.timeout.ToTimedelta().total_seconds(),
                   initial_delay=check.initial_delay.ToTimedelta().total_seconds(),
                   failure_threshold=check.failure_threshold)


def probe(check: agent_pb2.HealthCheck, address: str, port: int) -> tuple[bool, str]:
    timeout = CheckTiming.of(check).timeout
    kind = check.WhichOneof("probe")
    if kind == "http":
        return _http(check.http, address, port, timeout)
    if kind == "tcp":
        return _tcp(check.tcp, address, port, timeout)
    if kind == "grpc":
        return _grpc(check.grpc, address, port, timeout)
    return False, f"nothing to probe: a health check needs one of {', '.join(KINDS)}"


def _failure(error: OSError | http.client.HTTPException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within the {timeout:g}s timeout"
    return f"{type(error).__name__}: {error}"


def _http(spec: agent_pb2.HttpProbe, address: str, port: int,
          timeout: float) -> tuple[bool, str]:
    target, path = spec.port or port, spec.path or "/"
    what = f"GET {path}" + (f" on port {target}" if spec.port else "")
    conn = http.client.HTTPConnection(address, target, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "flotilla-health"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return False, f"{what}: {_failure(error, timeout)}"
    finally:
        conn.close()
    return 200 <= status < 400, f"{what} -> {status}"


def _tcp(spec: agent_pb2.TcpProbe, address: str, port: int,
         timeout: float) -> tuple[bool, str]:
    target = spec.port or port
    try:
        with socket.create_connection((address, target), timeout=timeout):
            pass
    except OSError as error:
        return False, f"tcp {address}:{target}: {_failure(error, timeout)}"
    return True, f"tcp {address}:{target} accepts connections"


def _grpc(spec: agent_pb2.GrpcProbe, address: str, port: int,
          timeout: float) -> tuple[bool, str]:
    target = f"{address}:{spec.port or port}"
    service = spec.service
    what = f"grpc health {service}" if service else "grpc health"
    # The app is reached directly: never through an http_proxy of the agent's.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"{what} at {target}: no answer within the {timeout:g}s timeout"
            return False, f"{what} at {target}: {code.name}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{what} {name}"


class Verdict(enum.Enum):
    """What one probe's result means for the instance."""

    #: The probe passed.
    HEALTHY = "healthy"
    #: It failed, but the check has never passed and the startup grace runs.
    STARTING = "starting"
    #: It failed, fewer than ``failureThreshold`` times in a row.
    FAILING = "failing"
    #: It failed ``failureThreshold`` times in a row (and has passed since
    #: the run started, or the startup grace is over): restart the instance.
    RESTART = "restart"


class HealthSchedule:
    """When one run of an instance is probed, and what the results mean.

    No probe before ``initialDelay`` after the schedule is made (the run's
    start); until the first pass, one every ``tick`` (or ``interval``, if
    shorter), so a ready instance is noticed as soon as it answers; after it,
    one every ``interval``, counted from the start of the last probe.
    ``failureThreshold`` failures in a row restart the instance, but until a
    probe has passed none does for ``grace`` seconds beyond ``initialDelay``:
    slow starters are not killed in a loop. Those failures still count, so
    the first one after the grace restarts an instance that never passed.

    Not thread-safe: the runner's own thread owns it.
    """

    def __init__(self, timing: CheckTiming, clock: Clock, *, tick: float, grace: float) -> None:
        self.timing = timing
        self._clock = clock
        self._tick = tick
        self._next = clock.monotonic() + timing.initial_delay
        self._grace_ends = self._next + grace
        #: Consecutive failed probes (0 after a pass).
        self.failures = 0
        #: Whether a probe of this run has passed.
        self.passed = False

    def probe_if_due(self, probe: Callable[[], tuple[bool, str]]
                     ) -> tuple[Verdict, str] | None:
        """Call ``probe`` if a probe is due and judge its ``(ok, detail)``;
        returns ``(verdict, detail)``, or None when none is due."""
        started = self._clock.monotonic()
        if started < self._next:
            return None
        ok, detail = probe()
        if ok:
            self.failures, self.passed = 0, True
        else:
            self.failures += 1
        gap = self.timing.interval if self.passed else min(self.timing.interval, self._tick)
        self._next = started + gap
        if ok:
            return Verdict.HEALTHY, detail
        if not self.passed and started < self._grace_ends:
            return Verdict.STARTING, detail
        if self.failures < self.timing.failure_threshold:
            return Verdict.FAILING, detail
        return Verdict.RESTART, detail
