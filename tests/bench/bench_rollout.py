"""Rollout latency: `apply` of a 10-replica Service -> all 10 instances healthy.

Run from the repository root::

    python -m tests.bench.bench_rollout [--runs 5] [--replicas 10] [--driver docker|process]

For each driver it starts a server of its own (temporary data dir, free port)
and one agent offering only that driver, then repeats: apply the example HTTP
app, time until every replica reports healthy (GET /healthz every 250 ms), and
delete the Service and wait until its Instance objects *and* its workloads
(containers, processes) are gone, so runs never overlap. It prints each run's
seconds, p50 and max, and how many restarts the rollout needed (a healthy
rollout needs none). For scale it also measures the runtime's floor: the same
workloads started straight through the driver, all at once, without server,
agent or scheduler, timed until each answers GET /healthz.

- docker: image ``flotilla/example-http:dev`` (``bash deploy/images/build.sh``);
  skipped when no Docker Engine answers or the image is missing.
- process: ``<this Python> -m flotilla_examples.http_echo`` (it needs grpcio) with
  ``PYTHONPATH=deploy/apps``; the driver sets HOST and PORT.

Bounded: a rollout that is not healthy within ``--timeout`` seconds counts as a
timeout and the next run starts. Everything started is stopped or removed at
the end, containers included. Exits 1 with ``--check`` when a driver misses its
target (p50) or a run timed out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from controlplane.client import Client
from controlplane.convert import workload_to_pb
from controlplane.model.specs import ServiceSpec
from sidecar.drivers.base import Driver, Workload
from sidecar.drivers.docker import DockerDriver
from sidecar.drivers.process import ProcessDriver
from sidecar.health import probe
from sidecar.runner import Assignment
from tests.harness import AgentProcess, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "deploy" / "apps"
HTTP_IMAGE = "flotilla/example-http:dev"
PAUSE_IMAGE = "flotilla/pause:dev"
NODE_LABEL = "dev.flotilla.node"
ADDRESS = "127.0.0.1"
#: Reference targets for the p50 of apply -> all replicas healthy, in seconds.
TARGETS = {"docker": 3.0, "process": 1.0}
POLL = 0.02
GONE_SECONDS = 60.0


def manifest(driver: str, replicas: int) -> dict[str, Any]:
    """The example HTTP app, as an image (docker) or a command (process)."""
    run: dict[str, Any] = (
        {"image": HTTP_IMAGE} if driver == "docker" else
        {"command": [sys.executable, "-m", "flotilla_examples.http_echo"],
         "env": {"PYTHONPATH": str(APPS)}}
    )
    return {
        "apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "rollout"},
        "spec": {
            **run, "port": 8080, "replicas": replicas,
            "resources": {"cpu": 100, "memory": 64},
            "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms",
                            "failureThreshold": 2},
        },
    }


@dataclass(frozen=True)
class Rollout:
    #: Seconds from apply to all replicas healthy; None when it timed out.
    seconds: float | None
    #: Restarts the instances needed on the way.
    restarts: int


@dataclass(frozen=True)
class Result:
    driver: str
    runs: Sequence[Rollout]
    #: Seconds the runtime alone needed for the same workloads, per run.
    floors: Sequence[float] = ()
    note: str = ""

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs if r.seconds is not None]

    @property
    def timeouts(self) -> int:
        return sum(r.seconds is None for r in self.runs)

    def met(self) -> bool:
        return bool(self.times) and not self.timeouts and (
            statistics.median(self.times) < TARGETS[self.driver])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} within {timeout:g} s")
        time.sleep(POLL)


def instances(client: Client) -> list[dict[str, Any]]:
    return client.list("Instance", "default", {"flotilla.dev/service": "rollout"})[0]


def rollout(client: Client, driver: str, replicas: int, timeout: float) -> Rollout:
    began = time.monotonic()
    client.apply([(manifest(driver, replicas), "bench")])
    end = began + timeout
    while time.monotonic() < end:
        found = instances(client)
        if len(found) == replicas and all(
                i.get("status", {}).get("state") == "healthy" for i in found):
            seconds = time.monotonic() - began
            return Rollout(seconds, sum(i["status"].get("restarts", 0) for i in found))
        time.sleep(POLL)
    return Rollout(None, sum(i.get("status", {}).get("restarts", 0) for i in instances(client)))


class Workloads:
    """What one driver runs for the bench's node: counted and force-removed."""

    def __init__(self, driver: str, node: str, agent: AgentProcess) -> None:
        self._agent = agent
        self._filters = {"label": f"{NODE_LABEL}={node}"}
        self._docker = docker.from_env(timeout=60) if driver == "docker" else None

    def count(self) -> int:
        if self._docker is not None:
            return len(self._docker.api.containers(all=True, filters=self._filters))
        return len(self._agent.workload_pids())

    def remove_all(self) -> None:
        """After the agent has stopped: what it left behind (processes are
        ended by ``AgentProcess.cleanup``)."""
        if self._docker is None:
            return
        summaries = self._docker.api.containers(all=True, filters=self._filters)
        # Apps first: each pause holds its app's network namespace.
        for summary in sorted(summaries, key=lambda s: s["Labels"].get(
                "dev.flotilla.role") == "pause"):
            try:
                self._docker.api.remove_container(summary["Id"], v=True, force=True)
            except docker.errors.NotFound:
                pass
        self._docker.close()


def floor(driver: str, replicas: int, timeout: float, workdir: Path) -> float:
    """Seconds until *replicas* workloads, started at once straight through
    the driver, all answer their health check; they are removed afterwards."""
    node = f"bench-floor-{uuid.uuid4().hex[:8]}"
    client = docker.from_env(timeout=60) if driver == "docker" else None
    runtime: Driver = (DockerDriver(client, node, ADDRESS) if client is not None
                       else ProcessDriver(node, ADDRESS, workdir / node))
    spec = workload_to_pb(ServiceSpec.model_validate(manifest(driver, replicas)["spec"])
                          .workload(), "default")
    workloads = [Assignment(f"{node}-{i}", "default", "rollout", 1, spec, driver).workload()
                 for i in range(replicas)]
    began = time.monotonic()

    def healthy(workload: Workload) -> None:
        running = runtime.start(workload)
        wait_until(lambda: probe(spec.health_check, running.address, running.port or 0)[0],
                   timeout - (time.monotonic() - began), f"{workload.instance_id} healthy")

    try:
        with ThreadPoolExecutor(replicas) as pool:
            list(pool.map(healthy, workloads))
        return time.monotonic() - began
    finally:
        for workload in workloads:
            runtime.stop(workload.instance_id, 2.0)
        if client is not None:
            client.close()


def measure(driver: str, runs: int, replicas: int, timeout: float) -> Result:
    node = f"bench-{driver}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="flotilla-rollout-") as tmp:
        server = ServerProcess(Path(tmp) / "server").start()
        agent = AgentProcess(server, node, ADDRESS, Path(tmp) / node, drivers=(driver,))
        workloads: Workloads | None = None
        done: list[Rollout] = []
        floors: list[float] = []
        try:
            agent.start()
            workloads = Workloads(driver, node, agent)
            with server.client() as client:
                wait_until(lambda: any(n.get("status", {}).get("state") == "ready"
                                       for n in client.list("Node")[0]), 30, "the agent to join")
                for _ in range(runs):
                    done.append(rollout(client, driver, replicas, timeout))
                    client.delete([("Service", "default", "rollout")], ignore_not_found=True)
                    left = workloads
                    wait_until(lambda: not instances(client) and left.count() == 0,
                               GONE_SECONDS, "the instances and their workloads to be gone")
                    floors.append(floor(driver, replicas, timeout, Path(tmp)))
        except TimeoutError as error:
            return Result(driver, done, floors, f"stopped early: {error}")
        finally:
            agent.cleanup()
            if workloads is not None:
                workloads.remove_all()
            server.stop()
    return Result(driver, done, floors)


def docker_missing() -> str | None:
    """Why the docker driver cannot be measured here, or None when it can."""
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "no engine here"
        return f"no Docker Engine answers ({error}); `bash deploy/scripts/services.sh start`"
    try:
        for image in (HTTP_IMAGE, PAUSE_IMAGE):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return f"image {image} is missing; `bash deploy/images/build.sh`"
    finally:
        client.close()
    return None


def report(result: Result) -> str:
    target = TARGETS[result.driver]
    runs = "  ".join("timeout" if r.seconds is None else f"{r.seconds:.2f}" for r in result.runs)
    restarts = sum(r.restarts for r in result.runs)
    times = result.times
    summary = (f"p50 {statistics.median(times):.2f} s  max {max(times):.2f} s"
               if times else "no rollout finished")
    verdict = "met" if result.met() else "MISSED"
    floors = (f"p50 {statistics.median(result.floors):.2f} s  max {max(result.floors):.2f} s"
              if result.floors else "not measured")
    lines = [f"{result.driver:8} {summary}  target p50 < {target:g} s: {verdict}",
             f"         runs (s): {runs or '-'}; restarts during rollouts: {restarts}"
             + (f"; timeouts: {result.timeouts}" if result.timeouts else ""),
             f"         runtime floor (driver alone, no control plane): {floors}"]
    if result.note:
        lines.append(f"         {result.note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one rollout may take before it counts as a timeout")
    parser.add_argument("--driver", dest="drivers", action="append",
                        choices=sorted(TARGETS), help="repeatable [default: both]")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every measured driver meets its p50 target")
    args = parser.parse_args(argv)

    print(f"flotilla rollout benchmark: apply -> {args.replicas} replicas healthy, "
          f"{args.runs} runs per driver, one agent on {ADDRESS}", flush=True)
    results: list[Result] = []
    for driver in args.drivers or sorted(TARGETS):
        reason = docker_missing() if driver == "docker" else None
        if reason is not None:
            print(f"{driver:8} skipped: {reason}", flush=True)
            continue
        results.append(measure(driver, args.runs, args.replicas, args.timeout))
        print(report(results[-1]), flush=True)
    return 1 if args.check and not all(r.met() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
