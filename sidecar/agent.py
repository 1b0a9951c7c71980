"""The node agent: joins the control plane, follows its node's assignments,
runs each instance through a driver (one runner thread per instance) and
reports what runs, which doubles as its heartbeat.

It keeps every workload running while the control plane is away (assignments
are only acted on when they arrive), and after a restart it adopts the
workloads its drivers list for this node instead of starting duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import code_pb2

from controlplane.api.flotilla.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    nodes_pb2,
)
from sidecar import envoy
from sidecar.drivers.base import Driver, DriverError, MountedFiles, Sidecar
from sidecar.history import History, last_lines
from sidecar.identity import Certificates, Refusal, Request, Signed
from sidecar.link import ControlPlaneLink, Refused
from sidecar.sds import SdsServer
from sidecar.runner import Assignment, Backoff, InstanceRunner

log = logging.getLogger(__name__)

#: The largest message the agent takes from the control plane: an
#: Assignments message carries the ConfigMap and Secret data (up to 1 MiB
#: each) of every instance on the node, well past gRPC's default of 4 MiB.
ASSIGNMENTS_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class AgentConfig:
    server: str
    name: str
    address: str
    data_dir: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_millis: int = 0
    memory_mib: int = 0
    backoff: Backoff = Backoff()
    #: Seconds an instance gets to stop (TERM, then KILL).
    stop_timeout: float = 10.0
    #: Port of the agent's LogService on its address; 0 picks a free one.
    logs_port: int = 0
    #: The Envoy binary for sidecars (checked to be the pinned version); None
    #: runs instances without sidecars.
    envoy: str | None = None
    #: The cluster's join token, proven (not shown) when joining.
    join_token: str = ""


def detect_capacity() -> tuple[int, int]:
    """(cpu millicores, memory MiB) of this machine."""
    cpu = (os.cpu_count() or 1) * 1000
    memory = 1024
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except OSError:
        pass
    return cpu, memory


class Agent:
    def __init__(self, config: AgentConfig, drivers: Mapping[str, Driver]) -> None:
        self.config = config
        self.drivers = dict(drivers)
        # Reconnect quickly after the control plane comes back: reports are
        # the heartbeat, and a long channel back-off would outlast the grace.
        self.link = ControlPlaneLink(config.server, config.join_token, options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", ASSIGNMENTS_MAX_BYTES),
        ])
        #: Why the agent gave up (a refused join token), when it did.
        self.failure = ""
        #: Whether Envoys use the certificates (the mesh runs mTLS).
        self._mtls = False
        self._runners: dict[str, InstanceRunner] = {}
        #: What the agent remembers of its instances across runs and restarts
        #: (counts, how runs ended, the last output of those that did).
        self.history = History(config.data_dir / "history")
        #: Runners told to stop whose workload may still be winding down.
        self._retiring: dict[str, InstanceRunner] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._report_now = threading.Event()
        self._interval = 1.0
        self._stream: grpc.Future | None = None
        self._logs = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        agent_pb2_grpc.add_LogServiceServicer_to_server(_LogServicer(self), self._logs)
        port = self._logs.add_insecure_port(f"{config.address}:{config.logs_port}")
        self.logs_endpoint = f"{config.address}:{port}" if port else ""
        self._threads = [
            threading.Thread(target=self._follow_assignments, name="assignments", daemon=True),
            threading.Thread(target=self._report_loop, name="reports", daemon=True),
            threading.Thread(target=self._link_loop, name="link", daemon=True),
        ]
        #: Service certificates of the instances here, served to their Envoys
        #: over SDS (with sidecars only).
        self.certificates = Certificates(self._sign)
        self._sds: SdsServer | None = None
        self._certificates_due = threading.Event()
        if config.envoy is not None:
            self._sds = SdsServer(self.certificates,
                                  (config.data_dir / "xds" / "sds.sock").resolve())
            self._threads.append(threading.Thread(target=self._certificate_loop,
                                                  name="certificates", daemon=True))

    def start(self) -> None:
        if self._sds is not None:
            self._sds.start()
        self._logs.start()
        for thread in self._threads:
            thread.start()

    def stop(self, *, stop_workloads: bool = False) -> None:
        """Stop talking to the control plane. Workloads keep running (a
        restarted agent adopts them) unless ``stop_workloads``, as when
        `flotilla dev` ends."""
        self._stopping.set()
        self._report_now.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        self._logs.stop(1.0).wait()
        if self._sds is not None:
            self._sds.stop()
        self.link.close()
        if stop_workloads:
            runners = list(self.runners().values()) + list(self._retiring.values())
            for runner in runners:
                runner.stop(self.config.stop_timeout)
            for runner in runners:
                runner.stopped.wait(self.config.stop_timeout + 5)
        for driver in self.drivers.values():
            close = getattr(driver, "close", None)
            if close is not None:  # e.g. the docker driver's xDS relay
                close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def runners(self) -> dict[str, InstanceRunner]:
        with self._lock:
            return dict(self._runners)

    # --- assignments ---------------------------------------------------------------

    def _join(self) -> None:
        cpu, memory = detect_capacity()
        reply = self.link.join(agent_pb2.JoinRequest(
            name=self.config.name, address=self.config.address, labels=dict(self.config.labels),
            capacity=nodes_pb2.Capacity(cpu_millis=self.config.cpu_millis or cpu,
                                        memory_mib=self.config.memory_mib or memory),
            drivers=sorted(self.drivers), logs_endpoint=self.logs_endpoint,
        ), timeout=10)
        self._interval = reply.report_interval_seconds or 1.0

    def _follow_assignments(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self._join()
                log.info("joined %s as node %s (%s)", self.config.server, self.config.name,
                         self.config.address)
                self._stream = self.link.agent.WatchAssignments(
                    agent_pb2.WatchAssignmentsRequest(node=self.config.name))
                for message in self._stream:
                    delay = 0.2
                    self._converge([Assignment.of(a) for a in message.assignments])
            except Refused as error:
                self._give_up(str(error))
                return
            except grpc.RpcError as error:
                if self._stopping.is_set():
                    return
                if error.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                    grpc.StatusCode.PERMISSION_DENIED):
                    self._give_up(f"the control plane refused this agent: {error.details()}")
                    return
                log.warning("control plane %s: %s; retrying in %.1fs (workloads keep running)",
                            self.config.server, error.code().name, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def _give_up(self, why: str) -> None:
        """Stop talking to the control plane (workloads keep running: an
        operator decides what happens to them)."""
        self.failure = why
        log.error("%s", why)
        self._stopping.set()

    def _link_loop(self) -> None:
        """Keep the node's certificate and the trust bundle current."""
        while not self._stopping.wait(1.0):
            self.link.refresh()

    def _converge(self, assignments: list[Assignment]) -> None:
        """Make the runners match the assignment set: start runners for new
        instances (adopting what a driver already runs), stop the rest,
        including workloads no runner knows (left by an earlier agent)."""
        wanted = {a.instance_id: a for a in assignments}
        with self._lock:
            for instance_id in list(self._runners):
                if instance_id not in wanted:
                    runner = self._runners.pop(instance_id)
                    runner.stop(self.config.stop_timeout)
                    self._retiring[instance_id] = runner
            for instance_id, runner in list(self._retiring.items()):
                if runner.stopped.is_set():
                    del self._retiring[instance_id]
            for instance_id, assignment in wanted.items():
                driver = self.drivers.get(assignment.driver)
                if instance_id in self._runners or driver is None:
                    continue
                runner = InstanceRunner(assignment, driver, self._report_now.set,
                                        self.config.backoff, self._sidecar(assignment),
                                        history=self.history)
                self._runners[instance_id] = runner
                runner.start()
            known = set(self._runners) | set(self._retiring)
        self.history.keep_only(known)  # e.g. instances deleted while the agent was away
        for driver in self.drivers.values():
            for running in driver.list():
                if running.instance_id not in known:
                    log.info("%s: not assigned to this node; stopping it", running.instance_id)
                    driver.stop(running.instance_id, self.config.stop_timeout)
        self._report_now.set()

    def _sidecar(self, assignment: Assignment) -> Sidecar | None:
        if self.config.envoy is None:
            return None
        self._certificates_due.set()  # a new instance: its certificate now
        return Sidecar(envoy=self.config.envoy, xds=self.config.server, node=self.config.name,
                       sds=str(self._sds.socket) if self._sds is not None else "")

    # --- certificates -------------------------------------------------------------

    def _sign(self, requests: list[Request]) -> list[Signed | Exception]:
        """Leaves for instances here, all in one call."""
        reply = self.link.agent.SignCertificates(agent_pb2.SignCertificatesRequest(
            node=self.config.name, requests=[
                agent_pb2.SignCertificateRequest(namespace=namespace, instance_id=instance_id,
                                                 csr_pem=csr_pem)
                for namespace, instance_id, csr_pem in requests]), timeout=10)
        results: list[Signed | Exception] = []
        for result in reply.results:
            leaf = result.certificate
            results.append(
                Signed(leaf.certificate_pem, leaf.trust_bundle_pem, leaf.identity, leaf.serial,
                       leaf.root) if result.HasField("certificate")
                else Refusal(f"{code_pb2.Code.Name(result.code)}: {result.error}"))
        return results

    def _certificate_loop(self) -> None:
        """Every instance here holds a leaf that is not past half its life."""
        while not self._stopping.is_set():
            self._certificates_due.wait(1.0)
            self._certificates_due.clear()
            # The mesh's roots as the link fetched them this second (a rotation
            # changes them); None while the control plane is away (certificates
            # in hand stay in use).
            trust = self.link.trust
            if trust is not None:
                self._mtls = trust.mtls
            before = {i: m.serial for i, r in self.runners().items()
                      if (m := self.certificates.current(i)) is not None}
            rebundled = trust is not None and self.certificates.set_bundle(trust.bundle_pem)
            self.certificates.keep({i: r.assignment.namespace
                                    for i, r in self.runners().items()},
                                   trust.active_root if trust is not None else "")
            after = {i: m.serial for i in self.runners()
                     if (m := self.certificates.current(i)) is not None}
            if after != before or rebundled:
                if self._sds is not None:
                    self._sds.changed()
                self._report_now.set()
            self._verify_served()

    #: Seconds an Envoy gets to serve a renewed certificate before that is an error.
    SERVE_GRACE = 15.0

    def _verify_served(self) -> None:
        """Rotation is done when the instance's Envoy serves the new serial
        (its admin /certs), not when the leaf is issued."""
        if not self._mtls:
            return  # Envoys do not use the certificates: nothing to see there
        for instance_id, runner in self.runners().items():
            material = self.certificates.current(instance_id)
            if material is None or (material.served == material.serial
                                    and material.trusted == material.bundle_serials):
                continue
            driver = self.drivers.get(runner.assignment.driver)
            try:
                running = driver.inspect(instance_id) if driver else None
                if running is None or not running.admin:
                    continue
                host, _, port = running.admin.rpartition(":")
                served, trusted = envoy.Admin(host, int(port), timeout=1.0).served()
                if not served and not trusted:  # an Envoy with no TLS to do
                    served, trusted = material.serial, material.bundle_serials
            except (DriverError, OSError, ValueError, envoy.EnvoyError):
                continue  # not up yet: the next pass looks again
            late = time.time() - material.issued_at > self.SERVE_GRACE
            error = "" if served == material.serial or not late else (
                f"its Envoy still serves certificate {served or 'none'}, not the renewed "
                f"{material.serial} ({time.time() - material.issued_at:.0f}s after issue)")
            if (served, trusted, error) != (material.served, material.trusted, material.error):
                self.certificates.served(instance_id, served, trusted, error)
                self._report_now.set()

    # --- reports (the heartbeat) -----------------------------------------------------

    def _report_loop(self) -> None:
        while not self._stopping.is_set():
            self._report_now.wait(self._interval)
            self._report_now.clear()
            if self._stopping.is_set():
                return
            reports = []
            for instance_id, runner in self.runners().items():
                status = runner.status()
                report = agent_pb2.InstanceReport(
                    instance_id=instance_id, namespace=runner.assignment.namespace,
                    state=status.state, reason=status.reason,
                    address=status.address, port=status.port, restarts=status.restarts,
                    exit_code=status.exit_code, sidecar_restarts=status.sidecar_restarts,
                )
                cert = self.certificates.current(instance_id)
                if cert is not None:
                    report.cert_serial, report.cert_error = cert.serial, cert.error
                    report.cert_served, report.cert_root = cert.served, cert.root
                    # The roots it trusts: as its Envoy serves them, with mTLS.
                    report.cert_trusts.extend(sorted(
                        cert.trusted if self._mtls else cert.bundle_serials))
                    report.cert_not_after.FromSeconds(int(cert.not_after))
                reports.append(report)
            try:
                self.link.agent.Report(agent_pb2.ReportRequest(node=self.config.name,
                                                          instances=reports), timeout=5)
            except grpc.RpcError:
                pass  # the assignments thread reports and retries the connection


class _LogServicer(agent_pb2_grpc.LogServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def Logs(self, request: agent_pb2.LogsRequest,
             context: grpc.ServicerContext) -> Iterator[agent_pb2.LogChunk]:
        """An instance's output: from its driver while the runtime has its
        workload, else (it exited) the last output the agent kept of it."""
        instance_id = request.instance_id
        runner = self._agent.runners().get(instance_id)
        driver = self._agent.drivers.get(runner.assignment.driver) if runner else None
        if driver is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"instance {instance_id} does not "
                          f"run on node {self._agent.config.name}")
            return

        def read() -> Iterator[bytes]:
            if driver.inspect(instance_id) is None:
                kept = self._agent.history.output(instance_id)
                if kept:
                    yield last_lines(kept, request.tail)
                return
            yield from driver.logs(instance_id, request.tail or None, request.follow)

        # A driver's follow may block on a quiet instance: read it on a daemon
        # thread, so this handler can notice the caller leaving (or shutdown).
        chunks: queue.Queue[bytes | DriverError | None] = queue.Queue(maxsize=1000)

        def pump() -> None:
            try:
                for data in read():
                    chunks.put(data)
            except DriverError as error:
                chunks.put(error)
            finally:
                chunks.put(None)

        threading.Thread(target=pump, name=f"logs-{instance_id}", daemon=True).start()
        while context.is_active() and not self._agent.stopping:
            try:
                data = chunks.get(timeout=0.5)
            except queue.Empty:
                continue
            if data is None:
                return
            if isinstance(data, DriverError):
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              f"node {self._agent.config.name}: {data}")
                return
            yield agent_pb2.LogChunk(data=data)


    def ProxyConfig(self, request: agent_pb2.ProxyConfigRequest,
                    context: grpc.ServicerContext) -> agent_pb2.ProxyConfigResponse:
        runner = self._agent.runners().get(request.instance_id)
        driver = self._agent.drivers.get(runner.assignment.driver) if runner else None
        running = driver.inspect(request.instance_id) if driver else None
        if running is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"instance {request.instance_id} does not "
                          f"run on node {self._agent.config.name}")
            raise AssertionError("unreachable")
        if not running.admin:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"instance {request.instance_id} runs without a sidecar")
        host, _, port = running.admin.rpartition(":")
        try:
            dump = envoy.Admin(host, int(port), timeout=5.0).config_dump()
        except (OSError, envoy.EnvoyError) as error:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"the Envoy of instance {request.instance_id} does not answer on its "
                          f"admin API {running.admin}: {error}")
        return agent_pb2.ProxyConfigResponse(config_dump_json=json.dumps(dump))
