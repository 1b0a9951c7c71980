"""The mesh scenarios every driver must pass: ingress gateway -> frontend
(HTTP, calls backend by name) -> backend (gRPC, three replicas), every hop
through Envoy sidecars configured only by the server's xDS.

A test module binds them to a driver by defining a module-scoped ``mesh``
fixture and importing the ``test_*`` functions from here; the scenarios share
one cluster and run in order (tests/integration/test_mesh.py: process driver,
tests/e2e/test_docker_mesh.py: docker driver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.client import Client
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli

APPS = Path(__file__).resolve().parents[1] / "deploy" / "apps"
#: Straight to the gateway, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def manifests(gateway_port: int, workload: Callable[[str], dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """The example mesh; ``workload(module)`` gives the spec fields that run
    ``python3 -m flotilla_examples.<module>`` on the driver under test."""
    return [
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "backend"},
         "spec": {**workload("grpc_echo"), "port": 9090, "protocol": "grpc", "replicas": 3,
                  "resources": {"cpu": 100, "memory": 64},
                  "healthCheck": {"grpc": {}, "interval": "500ms"},
                  "placement": {"strategy": "spread"}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "frontend"},
         "spec": {**workload("http_echo"), "port": 8080, "replicas": 1,
                  "env": {**workload("http_echo").get("env", {}),
                          "GRPC_UPSTREAM": "backend:9090"},
                  "resources": {"cpu": 100, "memory": 64},
                  "upstreams": [{"name": "backend"}],
                  "healthCheck": {"http": {"path": "/healthz"}, "interval": "500ms"}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "static"},
         "spec": {**workload("http_echo"), "port": 8080, "replicas": 1,
                  "resources": {"cpu": 100, "memory": 64}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Gateway", "metadata": {"name": "ingress"},
         "spec": {"listeners": [{"name": "web", "port": gateway_port, "routes": [
             {"pathPrefix": "/", "service": "frontend"},
             {"pathPrefix": "/static", "service": "static"},
             {"host": "static.example", "pathPrefix": "/", "service": "static"},
         ]}]}},
    ]


def process_workload(module: str) -> dict[str, Any]:
    return {"command": [sys.executable, "-m", f"flotilla_examples.{module}"],
            "env": {"PYTHONPATH": str(APPS)}}


@dataclass
class Mesh:
    server: ServerProcess
    agents: list[AgentProcess]
    gateway: str = ""
    tmp: Path = field(default_factory=Path)
    #: Kills an instance's Envoy; returns what ``envoy_restarted`` compares to.
    kill_envoy: Callable[[dict[str, Any]], object] = lambda instance: None
    #: True once the instance runs a new Envoy (given what ``kill_envoy`` returned).
    envoy_restarted: Callable[[dict[str, Any], object], bool] = lambda instance, old: False

    def client(self) -> Client:
        return self.server.client()

    def call(self, path: str = "/", headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{self.gateway}{path}", headers=headers or {})
        with DIRECT.open(request, timeout=timeout) as reply:
            body: dict[str, Any] = json.loads(reply.read())
        return body


def instances(client: Client, service: str) -> list[dict[str, Any]]:
    return client.list("Instance", "default", {"flotilla.dev/service": service})[0]


def serving(client: Client, service: str, count: int) -> list[dict[str, Any]] | None:
    found = instances(client, service)
    good = [i for i in found if i.get("status", {}).get("state") in ("healthy", "running")
            and not i["spec"].get("draining")]
    return good if len(good) == count and len(found) == count else None


def _answers(mesh: Mesh) -> bool:
    try:
        return "answeredBy" in mesh.call().get("upstream", {})
    except (OSError, ValueError):
        return False


def _answered_by(body: dict[str, Any]) -> str:
    return str(body["upstream"]["answeredBy"])


class Load:
    """Steady requests to ``path`` through the ingress on a thread; counts
    failures, and in ``backends`` what ``seen`` reads off each answer (by
    default the backend instance that answered)."""

    def __init__(self, mesh: Mesh, rate: float = 50.0, path: str = "/",
                 seen: Callable[[dict[str, Any]], str] = _answered_by) -> None:
        self.mesh, self.rate, self.path, self.seen = mesh, rate, path, seen
        self.ok = 0
        self.failures: list[str] = []
        self.backends: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + 300  # bounded, whatever the test does
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                body = self.mesh.call(self.path)
                self.backends[self.seen(body)] += 1
                self.ok += 1
            except (OSError, ValueError, KeyError) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
            next_at += 1 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def test_ingress_to_frontend_to_backend_balances_over_every_replica(mesh: Mesh) -> None:
    answered: Counter[str] = Counter()
    for _ in range(300):
        body = mesh.call()
        assert body["service"] == "frontend"
        answered[body["upstream"]["answeredBy"]] += 1
    with mesh.client() as client:
        backends = {i["metadata"]["name"] for i in instances(client, "backend")}
    assert set(answered) == backends
    assert all(75 <= count <= 125 for count in answered.values()), answered


def test_proxyless_grpc_client_reaches_every_backend(mesh: Mesh) -> None:
    path = mesh.tmp / "proxyless.json"
    written = run_cli("bootstrap", "--proxyless", "--name", "tester", "-o", str(path),
                      server=mesh.server)
    assert written.returncode == 0, written.stderr
    assert json.loads(path.read_text())["xds_servers"][0]["server_uri"] == mesh.server.address
    script = (
        "import grpc, grpc.experimental\n"
        "credentials = grpc.xds_channel_credentials(\n"
        "    grpc.experimental.insecure_channel_credentials())\n"
        "channel = grpc.secure_channel('xds:///backend', credentials)\n"
        "echo = channel.unary_unary('/flotilla.examples.Echo/Echo')\n"
        "print(' '.join(echo(b'', timeout=10).decode() for _ in range(30)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(path)})
    assert done.returncode == 0, done.stderr[-2000:]
    with mesh.client() as client:
        backends = {i["metadata"]["name"] for i in instances(client, "backend")}
    assert set(done.stdout.split()) == backends


def test_proxy_status_and_config_show_every_proxy(mesh: Mesh) -> None:
    status = run_cli("proxy-status", "-o", "json", server=mesh.server)
    assert status.returncode == 0, status.stderr
    proxies = json.loads(status.stdout)["items"] if status.stdout.lstrip().startswith("{") \
        else json.loads(status.stdout)
    kinds = Counter(p.get("kind") for p in proxies)
    assert kinds["sidecar"] == 5 and kinds["gateway"] == 1
    with mesh.client() as client:
        frontend = instances(client, "frontend")[0]["metadata"]["name"]
    config = run_cli("proxy-config", frontend, "endpoints", server=mesh.server)
    assert config.returncode == 0, config.stderr
    assert "backend.default" in config.stdout and config.stdout.count("backend-") == 3


def test_a_policy_envoy_rejects_is_a_visible_nack_and_traffic_keeps_flowing(mesh: Mesh
                                                                           ) -> None:
    policy = mesh.tmp / "bad-policy.yaml"
    # Envoy refuses a zero connect timeout; Flotilla's validation lets it by.
    policy.write_text("apiVersion: flotilla.dev/v1\nkind: TrafficPolicy\n"
                      "metadata: {name: backend}\n"
                      "spec: {destination: backend, connectTimeout: 0s}\n")
    applied = run_cli("apply", "-f", str(policy), "--wait", "--wait-timeout", "30",
                      server=mesh.server)
    assert applied.returncode != 0
    assert "NACK" in applied.stderr and "frontend" in applied.stderr
    status = run_cli("proxy-status", server=mesh.server)
    assert "NACKED" in status.stdout
    assert "backend.default: Proto constraint validation failed" in status.stdout
    assert "ConnectTimeout" in status.stdout
    for _ in range(20):
        assert "answeredBy" in mesh.call()["upstream"]
    policy.write_text("apiVersion: flotilla.dev/v1\nkind: TrafficPolicy\n"
                      "metadata: {name: backend}\n"
                      "spec: {destination: backend, connectTimeout: 2s}\n")
    fixed = run_cli("apply", "-f", str(policy), "--wait", server=mesh.server)
    assert fixed.returncode == 0, fixed.stderr
    assert "ACKed the change" in fixed.stdout
    assert "NACKED" not in run_cli("proxy-status", server=mesh.server).stdout


def test_the_gateway_routes_by_host_and_longest_path_prefix(mesh: Mesh) -> None:
    assert mesh.call()["service"] == "frontend"
    assert mesh.call(path="/static/logo.png")["service"] == "static"
    assert mesh.call(path="/staticky")["service"] == "static"  # a prefix, as Envoy matches
    assert mesh.call(headers={"Host": "static.example"})["service"] == "static"
    assert mesh.call(headers={"Host": "other.example"})["service"] == "frontend"


def test_ring_hash_on_a_header_keeps_each_user_on_one_backend(mesh: Mesh, tmp_path: Path
                                                              ) -> None:
    policy = tmp_path / "ring-hash.yaml"
    policy.write_text("apiVersion: flotilla.dev/v1\nkind: TrafficPolicy\n"
                      "metadata: {name: backend}\n"
                      "spec: {destination: backend, loadBalancer: "
                      "{algorithm: ring-hash, hashOn: {header: x-user}}}\n")
    applied = run_cli("apply", "-f", str(policy), "--wait", server=mesh.server)
    assert applied.returncode == 0, applied.stderr
    for user in ("alice", "bob"):
        answers = {mesh.call(headers={"x-user": user})["upstream"]["answeredBy"]
                   for _ in range(15)}
        assert len(answers) == 1, (user, answers)
    spread = {mesh.call(headers={"x-user": f"user-{n}"})["upstream"]["answeredBy"]
              for n in range(40)}
    assert len(spread) >= 2
    policy.write_text("apiVersion: flotilla.dev/v1\nkind: TrafficPolicy\n"
                      "metadata: {name: backend}\nspec: {destination: backend}\n")
    assert run_cli("apply", "-f", str(policy), "--wait", server=mesh.server).returncode == 0


def test_scale_up_gets_traffic_and_scale_down_under_load_loses_nothing(mesh: Mesh) -> None:
    with mesh.client() as client:
        client.scale("backend", 5)
        grown = eventually(lambda: serving(client, "backend", 5), 60, "5 serving backends")
        healthy_at = time.monotonic()
        new = {i["metadata"]["name"] for i in grown}
        seen: set[str] = set()

        def all_reached() -> bool:
            seen.add(mesh.call()["upstream"]["answeredBy"])
            return new <= seen

        eventually(all_reached, 30, "traffic to every new backend", interval=0.02)
        print(f"new backends got traffic {time.monotonic() - healthy_at:.2f}s after healthy")
        with Load(mesh, rate=50) as load:
            time.sleep(1.0)
            client.scale("backend", 2)
            eventually(lambda: len(instances(client, "backend")) == 2, 60, "2 backends left")
            time.sleep(2.0)
        assert load.failures == [], load.failures[:5]
        assert load.ok >= 50


def test_a_killed_envoy_is_restarted_and_traffic_continues(mesh: Mesh) -> None:
    with mesh.client() as client:
        frontend = instances(client, "frontend")[0]
    old = mesh.kill_envoy(frontend)
    eventually(lambda: mesh.envoy_restarted(frontend, old), 30, "a new Envoy for the frontend")
    eventually(lambda: _answers(mesh), 30, "answers through the restarted Envoy")
    with mesh.client() as client:
        assert instances(client, "frontend")[0]["status"]["restarts"] == \
            frontend["status"]["restarts"]  # the app itself was not restarted


def test_traffic_survives_the_control_plane_and_proxies_reconverge(mesh: Mesh) -> None:
    mesh.server.kill(9)
    for _ in range(50):
        assert "answeredBy" in mesh.call()["upstream"]
    mesh.server.start()
    with mesh.client() as client:
        def converged() -> bool:
            proxies = client.proxies()
            return len(proxies) == 5 and all(
                p.synced_version >= p.view_version > 0 and not p.last_nack_error
                for p in proxies)

        eventually(converged, 60, "every proxy reconnected and in sync")
    for _ in range(20):
        assert "answeredBy" in mesh.call()["upstream"]
