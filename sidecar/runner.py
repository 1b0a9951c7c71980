"""One thread per instance: start it, watch it, health-check it, restart it
by its restart policy with exponential backoff, stop it when told.

An exited sidecar Envoy is started again while the app keeps running: at
once, then backing off while it exits before it serves; the instance's reason
says so until it serves again, and ``sidecar_restarts`` counts it.

Contract: only the runner's own thread calls the driver for its instance and
writes its history (``sidecar.history``); ``status()`` may be read from any
thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane.api.flotilla.v1 import agent_pb2
from controlplane.model.clock import SYSTEM_CLOCK
from sidecar import envoy
from sidecar.drivers.base import (
    Driver,
    DriverError,
    MountedFiles,
    Running,
    Sidecar,
    Workload,
    WorkloadState,
)
from sidecar.health import CheckTiming, HealthSchedule, Verdict, probe
from sidecar.history import OUTPUT_LINES, Ended, History, Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    instance_id: str
    namespace: str
    service: str
    revision: int
    #: What it runs, every default filled in by the control plane.
    spec: agent_pb2.Workload
    driver: str
    #: ``spec.envFrom`` as the control plane resolved it (may hold Secret
    #: values: left out of repr); ``spec.env`` wins over it.
    env_from: Mapping[str, str] = field(default_factory=dict, repr=False)
    mounts: tuple[MountedFiles, ...] = ()

    @classmethod
    def of(cls, message: agent_pb2.Assignment) -> Assignment:
        return cls(
            instance_id=message.instance_id, namespace=message.namespace,
            service=message.service, revision=message.revision, spec=message.workload,
            driver=message.driver, env_from=dict(message.env_from),
            mounts=tuple(MountedFiles(m.path, dict(m.files), m.mode) for m in message.mounts),
        )

    def workload(self, restarts: int = 0, sidecar: Sidecar | None = None) -> Workload:
        spec = self.spec
        if sidecar is not None:
            sidecar = replace(sidecar, kind="gateway" if spec.gateway else "sidecar",
                              upstreams=tuple((u.namespace, u.name, u.port or None)
                                              for u in spec.upstreams))
        return Workload(
            instance_id=self.instance_id, namespace=self.namespace, service=self.service,
            revision=self.revision, image=spec.image or None,
            command=list(spec.command) or None, args=tuple(spec.args),
            env={**self.env_from, **spec.env}, port=spec.port or None, protocol=spec.protocol,
            cpu_millis=spec.cpu_millis, memory_mib=spec.memory_mib,
            restarts=restarts, sidecar=sidecar, mounts=self.mounts,
        )


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: ``base * 2**(n-1)`` capped at ``cap`` seconds;
    the count resets once an instance has run ``reset_after`` seconds."""

    base: float = 1.0
    cap: float = 60.0
    reset_after: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))


@dataclass
class InstanceStatus:
    state: str = "pending"
    reason: str = ""
    address: str = ""
    port: int = 0
    restarts: int = 0
    exit_code: int = 0
    #: Times its sidecar Envoy was started again (not in ``restarts``).
    sidecar_restarts: int = 0
    #: Seconds until the next start attempt, while crash-looping.
    backoff: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class InstanceRunner:
    TICK = 0.2
    #: Seconds after a start (beyond the check's initialDelay) during which a
    #: health check that has never passed keeps the instance "starting"
    #: instead of restarting it: slow starters are not killed in a loop.
    STARTUP_GRACE = 30.0
    #: The reason while the instance's Envoy is started again, until it serves.
    SIDECAR_DOWN = "sidecar exited; restarting it"
    #: States an instance's restart policy lets it rest in.
    RESTING = ("exited", "failed")

    def __init__(self, assignment: Assignment, driver: Driver,
                 on_change: Callable[[], None], backoff: Backoff = Backoff(),
                 sidecar: Sidecar | None = None, *, history: History) -> None:
        self.assignment = assignment
        self._sidecar = sidecar
        self._driver = driver
        self._on_change = on_change
        self._backoff = backoff
        self._status = InstanceStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_timeout = 10.0
        self._adopted = False
        self._history = history
        #: What supervising the app last found (shown once the sidecar serves).
        self._app_reason = ""
        #: The sidecar was started again and does not serve yet; its
        #: consecutive restarts without serving, and when the next may be.
        self._sidecar_down = False
        self._sidecar_failures = 0
        self._sidecar_due = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"instance-{assignment.instance_id}", daemon=True
        )
        self.stopped = threading.Event()

    @property
    def instance_id(self) -> str:
        return self.assignment.instance_id

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the runner to stop its instance (asynchronously)."""
        self._stop_timeout = timeout
        self._stop.set()

    def status(self) -> InstanceStatus:
        with self._lock:
            return InstanceStatus(**self._status.__dict__)

    # --- the runner's thread ------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        with self._lock:
            before = dict(self._status.__dict__)
            for key, value in changes.items():
                setattr(self._status, key, value)
            changed = before != self._status.__dict__
        if changed:
            if "state" in changes and changes["state"] != before["state"]:
                log.info("%s: %s %s", self.instance_id, changes["state"],
                         changes.get("reason", ""))
            self._on_change()

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    failures = self._step(failures)
                except DriverError as error:  # the runtime hiccuped: try again
                    log.warning("%s: %s; retrying", self.instance_id, error)
                    self._set(reason=f"runtime error, retrying: {error}")
                    self._stop.wait(1.0)
                except Exception:  # never let a runner die: record, back off, retry
                    log.exception("%s: runner error", self.instance_id)
                    self._set(state="failed", reason="agent error (see the agent log); retrying")
                    self._stop.wait(5.0)
        finally:
            try:
                self._driver.stop(self.instance_id, self._stop_timeout)
            except DriverError as error:
                log.warning("%s: stop failed: %s", self.instance_id, error)
            self._history.forget(self.instance_id)  # the node no longer runs it
            self.stopped.set()

    def _step(self, failures: int) -> int:
        """Start the instance if it is not running, then supervise it until it
        exits or fails; returns the consecutive failure count."""
        running = self._driver.inspect(self.instance_id)
        if not self._adopted:
            self._adopted = True
            failures, rest = self._adopt(running)
            if rest:
                self._stop.wait()
                return failures
        if running is None or running.state is WorkloadState.EXITED:
            if running is not None:
                failures, again = self._exited(running, failures)
                if not again:
                    self._stop.wait()
                    return failures
            running = self._start_after_backoff(failures)
            if running is None:
                return failures
        return self._supervise(running, failures)

    def _adopt(self, running: Running | None) -> tuple[int, bool]:
        """Go on from what an earlier agent left on the node: the counts go on,
        and an instance its restart policy let rest stays so. Returns
        (consecutive failures, rest?)."""
        past = self._history.get(self.instance_id)
        self._set(sidecar_restarts=past.sidecar_restarts)
        if running is not None:  # started by an earlier agent: keep its count
            self._set(restarts=running.restarts)
            return 0, False
        ended = past.ended
        if ended is None:
            return 0, False
        self._set(restarts=ended.restarts, exit_code=ended.exit_code)
        if ended.state in self.RESTING:
            self._set(state=ended.state, reason=ended.reason, backoff=0.0)
            return 0, True
        return 1, False  # it was being restarted: the next start is a restart

    def _exited(self, running: Running, failures: int) -> tuple[int, bool]:
        """Record an exit and keep the run's last output; returns
        (consecutive failures, restart?)."""
        code = running.exit_code if running.exit_code is not None else -1
        policy = self.assignment.spec.restart_policy
        self._keep_output()
        self._driver.stop(self.instance_id, 1.0)  # clean up what is left of it
        if policy == "never" or (policy == "on-failure" and code == 0):
            state = "exited" if code == 0 else "failed"
            self._set(state=state, reason=f"exited with code {code}", exit_code=code,
                      backoff=0.0)
            self._ended()
            return failures, False
        ran = time.time() - running.started_at if running.started_at else 0.0
        failures = 1 if ran >= self._backoff.reset_after else failures + 1
        delay = self._backoff.delay(failures)
        self._set(
            state="crashloop", exit_code=code, backoff=delay,
            reason=f"exited with code {code}; restarting in {delay:g}s "
                   f"(restart {self._status.restarts + 1}, back-off doubles up to "
                   f"{self._backoff.cap:g}s)",
        )
        self._ended()
        return failures, True

    def _keep_output(self) -> None:
        """Keep the run's last output: the driver removes it with the workload."""
        try:
            self._history.keep_output(self.instance_id,
                                      self._driver.logs(self.instance_id, OUTPUT_LINES))
        except DriverError as error:
            log.warning("%s: its last output is lost: %s", self.instance_id, error)

    def _ended(self) -> None:
        """Remember how the run ended (the status now), across agent restarts."""
        status = self.status()
        self._history.put(self.instance_id, Record(status.sidecar_restarts, Ended(
            status.state, status.reason, status.exit_code, status.restarts, time.time())))

    def _start_after_backoff(self, failures: int) -> Running | None:
        if failures and self._stop.wait(self._backoff.delay(failures)):
            return None
        restarts = self._status.restarts + (1 if failures else 0)
        self._set(state="starting", reason="", backoff=0.0, restarts=restarts)
        try:
            running = self._driver.start(self.assignment.workload(restarts, self._sidecar))
        except DriverError as error:
            self._set(state="failed", reason=str(error))
            self._stop.wait(2.0)
            return None
        # A new run: the last one's end and output are the past.
        self._history.put(self.instance_id, Record(self._status.sidecar_restarts))
        self._history.drop_output(self.instance_id)
        self._set(address=running.address, port=running.port or 0)
        return running

    def _supervise(self, running: Running, failures: int) -> int:
        """Watch a running instance until it exits, fails its health check or
        the runner stops; returns the consecutive failure count."""
        check = (self.assignment.spec.health_check
                 if self.assignment.spec.HasField("health_check") else None)
        self._sidecar_down, self._sidecar_failures, self._sidecar_due = False, 0, 0.0
        self._app("waiting for the first health check" if check is not None else "", ok=True,
                  address=running.address, port=running.port or 0,
                  state="starting" if check is not None else "running")
        schedule = HealthSchedule(CheckTiming.of(check), SYSTEM_CLOCK, tick=self.TICK,
                                  grace=self.STARTUP_GRACE) if check is not None else None
        # The app itself, not through its sidecar, when it has one.
        address = running.app_address or running.address
        port = (running.app_port if running.app_address else running.port) or 0
        while not self._stop.wait(self.TICK):
            now = self._driver.inspect(self.instance_id)
            if now is None or now.state is WorkloadState.EXITED:
                return failures
            if self._watch_sidecar(now):
                continue
            if schedule is None or check is None:
                continue
            judged = schedule.probe_if_due(lambda: probe(check, address, port))
            if judged is None:
                continue
            verdict, detail = judged
            if verdict is Verdict.HEALTHY:
                self._app(detail, ok=True, state="healthy")
                if time.time() - running.started_at >= self._backoff.reset_after:
                    failures = 0
                continue
            if verdict is Verdict.STARTING:
                self._app(f"not healthy yet: {detail}", ok=False, state="starting")
                continue
            fails, threshold = schedule.failures, schedule.timing.failure_threshold
            if verdict is Verdict.FAILING:
                self._app(f"health check failing ({fails}/{threshold}): {detail}", ok=False)
                continue
            self._app(f"health check failed {fails} times: {detail}; restarting", ok=False,
                      state="unhealthy")
            self._keep_output()
            self._driver.stop(self.instance_id, self._stop_timeout)
            self._ended()
            return failures + 1
        return failures

    def _app(self, reason: str, ok: bool, **changes: Any) -> None:
        """Set what supervising the app found (``ok``: nothing wrong with it).
        While the sidecar is down and the app is fine, the reason is the
        sidecar's."""
        self._app_reason = reason
        self._set(reason=self.SIDECAR_DOWN if self._sidecar_down and ok else reason, **changes)

    def _watch_sidecar(self, now: Running) -> bool:
        """Start an exited Envoy again: at once, then backing off while it
        exits before it serves; once it serves (LIVE: it has its config) the
        reason is the app's again. Returns True while the Envoy is not running."""
        if now.proxy is WorkloadState.EXITED:
            if time.monotonic() >= self._sidecar_due:
                self._sidecar_failures += 1
                self._sidecar_due = time.monotonic() + self._backoff.delay(self._sidecar_failures)
                self._restart_sidecar()
            return True
        if self._sidecar_down and _serving(now.admin):
            log.info("%s: its Envoy serves again", self.instance_id)
            self._sidecar_down, self._sidecar_failures, self._sidecar_due = False, 0, 0.0
            self._set(reason=self._app_reason)
        return False

    def _restart_sidecar(self) -> None:
        restarts = self._status.sidecar_restarts + 1
        log.warning("%s: its Envoy exited; starting it again (sidecar restart %d)",
                    self.instance_id, restarts)
        self._sidecar_down = True
        self._set(sidecar_restarts=restarts, reason=self.SIDECAR_DOWN)
        self._history.put(self.instance_id, Record(restarts))
        self._driver.restart_proxy(self.instance_id)


def _serving(admin: str) -> bool:
    """Whether the Envoy with its admin API at ``host:port`` is LIVE."""
    host, _, port = admin.rpartition(":")
    return bool(host) and port.isdigit() and envoy.Admin(host, int(port), timeout=1.0).ready()
