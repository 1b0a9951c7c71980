"""External services against a real Consul: services someone else registered
in a dev ``consul agent`` (tests/consul.py) through its HTTP API, as an
outsider would, become upstreams of a mesh service.

A real server with ``--catalog consul://...``, one agent (process driver,
real Envoy sidecars) on 127.0.0.2 running ``shop`` (tests/apps/relay.py,
which calls its upstreams through its sidecar) behind an ingress gateway;
outside the mesh, small apps (tests/apps/outside.py) on 127.0.0.5 and
127.0.0.6 that the tests start, register in Consul and stop.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.certs import ServerCertificate, server_certificate
from tests.consul import ConsulAgent
from tests.harness import (
    AgentProcess,
    ServerProcess,
    dump_endpoints,
    end_process,
    eventually,
    free_port,
    run_cli,
)
from tests.mesh_scenarios import serving

APPS = Path(__file__).resolve().parents[1] / "apps"
NODE = ("n2", "127.0.0.2")
#: Generous: every wait polls and returns as soon as its condition holds.
PATIENCE = 60.0
#: Straight to the gateway, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LEDGER_SNI = "ledger.example.com"


@dataclass
class Outside:
    """Apps outside the mesh that the tests started (stopped by pid)."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, host: str, log_dir: Path,
              certificate: ServerCertificate | None = None) -> int:
        port = free_port(host)
        env = {**os.environ, "HOST": host, "PORT": str(port), "NAME": name}
        if certificate is not None:
            env |= {"TLS_CERT": str(certificate.cert_path), "TLS_KEY": str(certificate.key_path)}
        with (log_dir / f"{name}.log").open("ab") as log:
            self.processes.append(subprocess.Popen(
                [sys.executable, str(APPS / "outside.py")], env=env, stdout=log,
                stderr=subprocess.STDOUT))
        eventually(lambda: _listening(host, port), 30, f"{name} listening on {host}:{port}")
        return port

    def stop(self) -> None:
        for process in self.processes:
            end_process(process, 10)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class Mesh:
    consul: ConsulAgent
    server: ServerProcess
    agent: AgentProcess
    gateway: str
    shop: str
    ca: str
    #: The port of each app outside the mesh, by instance.
    ports: dict[str, int]
    #: Consul check IDs of the instances registered outside the mesh.
    checks: dict[str, str]

    def call(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET ``path`` through the gateway and shop's relay."""
        try:
            with DIRECT.open(f"http://{self.gateway}{path}", timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def answer(self, upstream: str) -> dict[str, Any] | None:
        """What the upstream answered shop through shop's sidecar, or None."""
        try:
            status, relayed = self.call(f"/{upstream}/hello")
        except (OSError, ValueError):
            return None
        if status != 200 or relayed.get("status") != 200:
            return None
        answer: dict[str, Any] = json.loads(relayed["body"])
        return answer

    def endpoints(self, cluster: str) -> set[tuple[str, int]]:
        """The endpoints shop's Envoy holds for ``cluster`` (its admin API)."""
        with self.server.client() as client:
            return dump_endpoints(
                client.proxy_config(client.get("Instance", self.shop, "default")), cluster)

    def stat(self, name: str) -> int:
        """A counter of shop's Envoy, from its admin API (port in the
        process driver's state file)."""
        state = json.loads((self.agent.data_dir / "instances" / self.shop / "state.json")
                           .read_text())
        url = f"http://127.0.0.1:{state['admin_port']}/stats?filter=^{name}$"
        with DIRECT.open(url, timeout=10) as reply:
            text = reply.read().decode()
        return int(text.split(":")[1]) if ":" in text else 0


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
            "spec": spec}


def manifests(gateway_port: int, ca: str) -> list[dict[str, Any]]:
    return [
        service("payments", port=8000, external={}),
        # TLS as the instances' Consul meta says, not verified.
        service("ledger", port=8443, external={}),
        # The same instances, verified against the CA (name from Consul's meta) ...
        service("ledger-verified", port=8444, external={"service": "ledger",
                                                        "tls": {"ca": ca}}),
        # ... and expecting a name their certificate does not carry.
        service("ledger-strict", port=8445, external={
            "service": "ledger", "tls": {"sni": "wrong.example.com", "ca": ca}}),
        service("shop", command=[sys.executable, str(APPS / "relay.py")], port=8080,
                upstreams=[{"name": n} for n in ("payments", "ledger", "ledger-verified",
                                                 "ledger-strict")],
                healthCheck={"http": {"path": "/healthz"}, "interval": "500ms"}),
        {"apiVersion": "flotilla.dev/v1", "kind": "Gateway", "metadata": {"name": "edge"},
         "spec": {"listeners": [{"name": "web", "port": gateway_port,
                                 "routes": [{"pathPrefix": "/", "service": "shop"}]}]}},
    ]


def register(consul: ConsulAgent, instance: str, name: str, address: str, port: int,
             meta: dict[str, str] | None = None) -> str:
    """Register an instance as someone outside Flotilla would, with a TTL
    check they pass and fail; returns the check's ID."""
    check = f"{instance}-alive"
    consul.put("/v1/agent/service/register", {
        "ID": instance, "Name": name, "Address": address, "Port": port, "Meta": meta or {},
        "Check": {"CheckID": check, "Name": "alive", "TTL": "30m", "Status": "passing"},
    })
    return check


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("external")
    consul = ConsulAgent(tmp / "consul")
    outside = Outside()
    server: ServerProcess | None = None
    agent: AgentProcess | None = None
    try:
        consul.start()
        certificate = server_certificate(tmp / "certs", LEDGER_SNI)
        ports = {"payments-1": outside.start("payments-1", "127.0.0.5", tmp),
                 "ledger-1": outside.start("ledger-1", "127.0.0.6", tmp, certificate)}
        checks = {
            "payments": register(consul, "payments-1", "payments", "127.0.0.5",
                                 ports["payments-1"]),
            "ledger": register(consul, "ledger-1", "ledger", "127.0.0.6", ports["ledger-1"],
                               {"flotilla-tls": "true", "flotilla-sni": LEDGER_SNI}),
        }
        server = ServerProcess(tmp / "server", extra_args=("--catalog", consul.url)).start()
        agent = AgentProcess(server, *NODE, tmp / NODE[0]).start()
        gateway_port = free_port(NODE[1])
        with server.client() as client:
            eventually(lambda: client.list("Node", "")[0], 30, "the node")
            client.apply([(doc, "external") for doc in manifests(gateway_port,
                                                                 certificate.ca_pem)])
            shop = eventually(lambda: serving(client, "shop", 1), PATIENCE, "a serving shop")
            eventually(lambda: serving(client, "edge", 1), PATIENCE, "the gateway")
        yield Mesh(consul, server, agent, f"{NODE[1]}:{gateway_port}",
                   shop[0]["metadata"]["name"],
                   certificate.ca_pem, ports, checks)
    finally:
        if agent is not None:
            agent.cleanup()
        if server is not None:
            server.stop()
        outside.stop()
        consul.stop()


def test_a_mesh_service_reaches_a_service_registered_in_consul(mesh: Mesh) -> None:
    answer = eventually(lambda: mesh.answer("payments"), PATIENCE, "payments through the mesh")
    assert answer == {"name": "payments-1", "tls": False, "sni": ""}
    assert {address for address, _ in mesh.endpoints("payments.default")} == {"127.0.0.5"}
    config = run_cli("proxy-config", mesh.shop, "endpoints", server=mesh.server)
    assert config.returncode == 0, config.stderr
    assert f"127.0.0.5:{mesh.ports['payments-1']} (payments-1)" in config.stdout
    listing = run_cli("get", "services", "payments", "ledger-verified", server=mesh.server)
    assert listing.returncode == 0, listing.stderr
    assert "consul:payments" in listing.stdout and "consul:ledger" in listing.stdout


def test_marked_critical_it_leaves_eds_and_passing_again_it_returns(mesh: Mesh) -> None:
    eventually(lambda: mesh.answer("payments"), PATIENCE, "payments through the mesh")
    mesh.consul.put(f"/v1/agent/check/fail/{mesh.checks['payments']}")
    start = time.monotonic()
    eventually(lambda: not mesh.endpoints("payments.default"), PATIENCE, "payments out of EDS")
    print(f"critical -> out of EDS: {time.monotonic() - start:.2f} s")
    status, relayed = mesh.call("/payments/hello")
    assert status == 200 and relayed["status"] == 503, relayed  # Envoy: no healthy upstream

    mesh.consul.put(f"/v1/agent/check/pass/{mesh.checks['payments']}")
    start = time.monotonic()
    eventually(lambda: mesh.endpoints("payments.default"), PATIENCE, "payments back in EDS")
    print(f"passing -> back in EDS: {time.monotonic() - start:.2f} s")
    assert eventually(lambda: mesh.answer("payments"), PATIENCE, "payments answers again")


def test_an_instance_marked_tls_is_called_over_tls_with_its_server_name(mesh: Mesh) -> None:
    answer = eventually(lambda: mesh.answer("ledger"), PATIENCE, "ledger through the mesh")
    assert answer == {"name": "ledger-1", "tls": True, "sni": LEDGER_SNI}


def test_a_ca_verifies_the_instances_certificate(mesh: Mesh) -> None:
    answer = eventually(lambda: mesh.answer("ledger-verified"), PATIENCE,
                        "ledger-verified through the mesh")
    assert answer == {"name": "ledger-1", "tls": True, "sni": LEDGER_SNI}
    assert mesh.stat(r"cluster\.ledger-verified\.default\.ssl\.handshake") > 0


def test_a_certificate_without_the_expected_name_is_refused(mesh: Mesh) -> None:
    eventually(lambda: mesh.endpoints("ledger-strict.default"), PATIENCE,
               "ledger-strict's endpoints")
    status, relayed = mesh.call("/ledger-strict/hello")
    assert status == 200 and relayed["status"] == 503, relayed
    assert mesh.stat(r"cluster\.ledger-strict\.default\.ssl\.fail_verify_san") > 0


def test_an_instance_registered_later_joins_the_balancing(mesh: Mesh, tmp_path: Path) -> None:
    outside = Outside()
    try:
        port = outside.start("payments-2", "127.0.0.7", tmp_path)
        register(mesh.consul, "payments-2", "payments", "127.0.0.7", port)
        eventually(lambda: {a for a, _ in mesh.endpoints("payments.default")} >= {"127.0.0.7"},
                   PATIENCE, "payments-2 in EDS")
        answered = {answer["name"] for _ in range(40) if (answer := mesh.answer("payments"))}
        assert answered == {"payments-1", "payments-2"}
    finally:
        mesh.consul.put("/v1/agent/service/deregister/payments-2")
        outside.stop()
    eventually(lambda: {a for a, _ in mesh.endpoints("payments.default")} == {"127.0.0.5"},
               PATIENCE, "payments-2 gone from EDS")


def test_a_consul_that_restarted_empty_empties_eds_until_the_owner_registers_again(
        mesh: Mesh) -> None:
    eventually(lambda: mesh.answer("payments"), PATIENCE, "payments through the mesh")
    mesh.consul.restart()
    eventually(lambda: not mesh.endpoints("payments.default"), PATIENCE,
               "payments out of EDS once Consul forgot it")
    register(mesh.consul, "payments-1", "payments", "127.0.0.5", mesh.ports["payments-1"])
    assert eventually(lambda: mesh.answer("payments"), PATIENCE, "payments answers again")


def test_without_a_catalog_an_external_service_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        manifest = tmp_path / "payments.yaml"
        manifest.write_text(json.dumps(service("payments", port=8000, external={})))
        result = run_cli("apply", "-f", str(manifest), server=server)
        assert result.returncode == 1, result
        assert "spec.external: an external Service follows Consul, and this server has no " \
               "catalog: start `flotilla server` with --catalog consul://HOST:PORT" \
               in " ".join(result.stderr.split()), result.stderr
    finally:
        server.stop()
