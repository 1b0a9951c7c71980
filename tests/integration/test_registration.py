"""gRPC registration of instances Flotilla does not run, against real parts:
a real server with ``--catalog`` on a dev Consul (tests/consul.py), one agent
on 127.0.0.2 running a consumer (the HTTP echo, calling ``payments`` by name)
with the process driver and a real Envoy sidecar, and a gRPC echo server
started here on 127.0.0.5 that registers itself as ``payments``.

A registered instance is in ``flotilla get instances``, in the consumer's
Envoy's EDS (and answers calls through it) and in Consul's passing list;
once its client is killed (heartbeats stop) it leaves all three after its
TTL; leaving ``with client.register(...)`` removes it at once; bad requests
are refused naming the field, storing nothing; a server restart keeps it.
The mesh runs without mTLS: the registered server has no sidecar and speaks
plaintext.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from controlplane import errors
from controlplane.api.flotilla.v1 import instances_pb2, instances_pb2_grpc
from controlplane.client import Client
from controlplane.identity.ca import new_key_and_csr
from tests.consul import ConsulAgent
from tests.harness import (
    AgentProcess,
    ServerProcess,
    dump_endpoints,
    eventually,
    free_port,
    run_cli,
)
from tests.mesh_scenarios import APPS, process_workload, serving

REGISTERED_ADDRESS = "127.0.0.5"
SERVICE = "payments"
CONSUMER = "shop"
#: The TTL the killed client registers with, and how late the reaper may be
#: on a busy machine (it sweeps every 0.2 s; EDS and Consul follow the store
#: within a second).
TTL = 3.0
SLACK = 5.0
#: How long the tests wait at most for anything else: generous, for slow machines.
PATIENCE = 60.0

Endpoint = tuple[str, int]


@dataclass
class Cluster:
    consul: ConsulAgent
    server: ServerProcess
    agent: AgentProcess
    tmp: Path


def manifests() -> list[dict[str, Any]]:
    return [
        # No workload: its instances come from registrations.
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": SERVICE},
         "spec": {"port": 9090, "protocol": "grpc",
                  "registration": {"cidrs": ["127.0.0.0/8"]}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": CONSUMER},
         "spec": {**process_workload("http_echo"), "port": 8080, "replicas": 1,
                  "env": {"PYTHONPATH": str(APPS), "GRPC_UPSTREAM": f"{SERVICE}:9090"},
                  "resources": {"cpu": 100, "memory": 64}, "upstreams": [{"name": SERVICE}],
                  "healthCheck": {"http": {"path": "/healthz"}, "interval": "500ms"}}},
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("registration")
    consul = ConsulAgent(tmp / "consul")
    server: ServerProcess | None = None
    agent: AgentProcess | None = None
    try:
        consul.start()
        server = ServerProcess(tmp / "server", extra_args=(
            "--node-grace", "5", "--catalog", consul.url)).start()  # mTLS: the default
        agent = AgentProcess(server, "n2", "127.0.0.2", tmp / "n2").start()
        with server.client() as client:
            eventually(lambda: client.list("Node", "")[0], 30, "the node")
            client.apply([(doc, "registration") for doc in manifests()])
            eventually(lambda: serving(client, CONSUMER, 1), PATIENCE, "a serving consumer")
        yield Cluster(consul, server, agent, tmp)
    finally:
        if agent is not None:
            agent.cleanup()
        if server is not None:
            server.stop()
        consul.stop()


@pytest.fixture
def backend(cluster: Cluster) -> Iterator[tuple[int, str]]:
    """A gRPC echo server on 127.0.0.5 (not run by Flotilla): (port, the
    name it answers with)."""
    port, name = free_port(REGISTERED_ADDRESS), f"outside-{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(APPS), "HOST": REGISTERED_ADDRESS,
           "PORT": str(port), "FLOTILLA_INSTANCE_ID": name}
    with (cluster.tmp / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flotilla_examples.grpc_echo"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port, name
    finally:
        _end(proc)


def _end(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


# --- what each view holds ------------------------------------------------------------


def listed_by_cli(cluster: Cluster) -> dict[str, list[str]]:
    """`flotilla get instances payments`: instance id -> its row's cells."""
    result = run_cli("get", "instances", SERVICE, server=cluster.server)
    assert result.returncode == 0, result.stderr
    return {cells[0]: cells for line in result.stdout.splitlines()[1:]
            if (cells := line.split())}


def consumer(cluster: Cluster) -> dict[str, Any]:
    with cluster.server.client() as client:
        found = serving(client, CONSUMER, 1)
    assert found, "the consumer is not serving"
    return found[0]


def in_eds(cluster: Cluster) -> set[Endpoint]:
    """The endpoints of ``payments`` in the consumer's real Envoy (its
    admin /config_dump?include_eds, read through the agent)."""
    with cluster.server.client() as client:
        return dump_endpoints(client.proxy_config(consumer(cluster)), f"{SERVICE}.default")


def in_consul(cluster: Cluster) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = cluster.consul.get(
        f"/v1/health/service/{urllib.parse.quote(SERVICE)}?passing")
    return [e["Service"] for e in entries]


def mesh_client(cluster: Cluster) -> urllib.request.OpenerDirector:
    """An HTTPS opener with a certificate of the mesh (identity default/tester):
    the consumer's sidecar takes only mutual TLS. The registered instance behind
    it has no sidecar: the consumer's Envoy calls it in plaintext."""
    key, csr = new_key_and_csr("")
    with cluster.server.client() as client:
        signed = client.sign_client("default", "tester", csr)
    (cluster.tmp / "tester.key").write_text(key)
    (cluster.tmp / "tester.crt").write_text(signed.certificate_pem)
    context = ssl.create_default_context(cadata=signed.trust_bundle_pem)
    context.check_hostname = False  # a SPIFFE identity, no DNS name
    context.load_cert_chain(cluster.tmp / "tester.crt", cluster.tmp / "tester.key")
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=context))


def answered_by(cluster: Cluster) -> str:
    """Who answers a call from the consumer's app through its Envoy."""
    status = consumer(cluster)["status"]
    with mesh_client(cluster).open(f"https://{status['address']}:{status['port']}/",
                                   timeout=10) as reply:
        body: dict[str, Any] = json.loads(reply.read())
    return str(body.get("upstream", {}).get("answeredBy", body.get("upstream")))


def everywhere(cluster: Cluster, instance_id: str, endpoint: Endpoint) -> Callable[[], bool]:
    """The instance is in get instances, the consumer's EDS and Consul."""
    def check() -> bool:
        consul = [(e["ID"], e["Address"], e["Port"]) for e in in_consul(cluster)]
        return (instance_id in listed_by_cli(cluster) and endpoint in in_eds(cluster)
                and (f"flotilla-default-{instance_id}", *endpoint) in consul)
    return check


def nowhere(cluster: Cluster, instance_id: str, endpoint: Endpoint) -> Callable[[], bool]:
    def check() -> bool:
        return (instance_id not in listed_by_cli(cluster) and endpoint not in in_eds(cluster)
                and not any(e["Meta"]["flotilla-instance"] == instance_id
                            for e in in_consul(cluster)))
    return check


# --- the tests -------------------------------------------------------------------------

CLIENT = textwrap.dedent("""
    import sys, time
    from controlplane.client import Client
    registration = Client(sys.argv[1]).register("payments", sys.argv[2], int(sys.argv[3]),
                                                ttl=float(sys.argv[4]))
    print(registration.id, flush=True)
    time.sleep(600)
""")


def test_registered_everywhere_and_gone_after_its_ttl_once_heartbeats_stop(
        cluster: Cluster, backend: tuple[int, str]) -> None:
    port, name = backend
    endpoint = (REGISTERED_ADDRESS, port)
    client = subprocess.Popen(  # the registering client, killed below
        [sys.executable, "-c", CLIENT, cluster.server.address, REGISTERED_ADDRESS, str(port),
         str(TTL)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert client.stdout is not None
        instance_id = client.stdout.readline().strip()
        assert instance_id.startswith(f"{SERVICE}-"), instance_id
        eventually(everywhere(cluster, instance_id, endpoint), PATIENCE,
                   "the registration in get instances, EDS and Consul")

        row = listed_by_cli(cluster)[instance_id]
        assert row[1:4] == [SERVICE, "healthy", "-"]  # SERVICE STATE NODE
        assert row[4] == f"{REGISTERED_ADDRESS}:{port}"
        assert " ".join(row[6:9]) == f"registered, TTL {TTL:g}s"
        entry = next(e for e in in_consul(cluster) if e["Port"] == port)
        assert entry["Meta"]["flotilla-registered"] == "true"
        assert entry["Meta"]["flotilla-node"] == ""
        # Heartbeats (every TTL/3) keep it well past its TTL.
        time.sleep(TTL * 2)
        assert everywhere(cluster, instance_id, endpoint)()
        # A call from the consumer's app through its Envoy reaches it.
        assert eventually(lambda: answered_by(cluster) == name, PATIENCE,
                          f"{name} answering through the consumer's sidecar")

        client.send_signal(signal.SIGKILL)  # no deregistration, heartbeats stop
        client.wait(timeout=30)
        killed = time.monotonic()
        eventually(nowhere(cluster, instance_id, endpoint), PATIENCE,
                   "the registration gone from get instances, EDS and Consul", interval=0.2)
        elapsed = time.monotonic() - killed
        print(f"gone from get instances, EDS and Consul {elapsed:.2f} s after the client died "
              f"(TTL {TTL:g} s)")
        assert elapsed < TTL + SLACK
        assert "removed 1 registered instance(s), no heartbeat" in cluster.server.log()
    finally:
        _end(client)


def test_leaving_the_with_block_deregisters_at_once(
        cluster: Cluster, backend: tuple[int, str]) -> None:
    port, _ = backend
    endpoint = (REGISTERED_ADDRESS, port)
    with Client(cluster.server.address).register(SERVICE, REGISTERED_ADDRESS, port,
                                                 ttl=300, labels={"zone": "a"}) as registration:
        assert registration.ttl == 300.0
        eventually(everywhere(cluster, registration.id, endpoint), PATIENCE,
                   "the registration everywhere")
        with cluster.server.client() as client:
            doc = client.get("Instance", registration.id)
        assert doc["metadata"]["labels"] == {"zone": "a", "flotilla.dev/service": SERVICE}
    left = time.monotonic()
    eventually(nowhere(cluster, registration.id, endpoint), PATIENCE, "the registration gone")
    assert time.monotonic() - left < SLACK  # not after its 300 s TTL


@pytest.mark.parametrize(("fields", "error", "field", "message"), [
    ({"service": ""}, errors.InvalidRequest, "service", "required"),
    ({"service": "ledger"}, errors.NotFound, "service", "Service default/ledger does not exist"),
    ({"address": "payments.example"}, errors.InvalidRequest, "address", "not an IP address"),
    ({"port": 0}, errors.InvalidRequest, "port", "must be 1-65535, got 0"),
    ({"ttl": 0.2}, errors.InvalidRequest, "ttl", "must be between 1s and 1h, got 0.2s"),
    ({"ttl": 7200.0}, errors.InvalidRequest, "ttl", "got 2h"),
], ids=["no-service", "unknown-service", "bad-address", "bad-port", "ttl-short", "ttl-long"])
def test_bad_registrations_are_refused_naming_the_field(
        cluster: Cluster, fields: dict[str, Any], error: type[errors.UserError], field: str,
        message: str) -> None:
    asked: dict[str, Any] = {"service": SERVICE, "address": REGISTERED_ADDRESS, "port": 9999,
                             "ttl": 10.0, **fields}
    with cluster.server.client() as client:
        before = client.list("Instance")[0]
        with pytest.raises(error) as raised:
            client.register(asked.pop("service"), asked.pop("address"), asked.pop("port"),
                            **asked).close()
        if isinstance(raised.value, errors.InvalidRequest):
            assert [(v.path, message in v.message) for v in raised.value.violations] == [
                (field, True)]
            assert str(raised.value).startswith("invalid request, nothing was stored")
        else:
            assert str(raised.value).startswith(f"{field}: ") and message in str(raised.value)
        assert client.list("Instance")[0] == before


def test_a_registration_outside_the_services_ranges_is_permission_denied(
        cluster: Cluster) -> None:
    """spec.registration.cidrs (127.0.0.0/8 here) bounds where a registration
    may point the Service's traffic; a Service naming none takes none."""
    with cluster.server.client() as client:
        before = client.list("Instance")[0]
        with pytest.raises(errors.PermissionDenied, match=(
                r"address 10\.0\.0\.5 is not in a range Service default/payments takes "
                r"registrations from \(127\.0\.0\.0/8\)")):
            client.register(SERVICE, "10.0.0.5", 9000, ttl=10.0).close()
        with pytest.raises(errors.PermissionDenied, match=r"takes registrations from \(none\)"):
            client.register(CONSUMER, REGISTERED_ADDRESS, 9000, ttl=10.0).close()
        assert client.list("Instance")[0] == before
    with grpc.insecure_channel(cluster.server.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            instances_pb2_grpc.InstanceServiceStub(channel).RegisterInstance(
                instances_pb2.RegisterInstanceRequest(service=SERVICE, address="169.254.169.254",
                                                      port=80), timeout=30)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_api_answers_invalid_argument_and_not_found(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.server.address) as channel:
        stub = instances_pb2_grpc.InstanceServiceStub(channel)
        request = instances_pb2.RegisterInstanceRequest(
            service=SERVICE, address=REGISTERED_ADDRESS, port=9999,
            ttl=duration_pb2.Duration(seconds=0))
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterInstance(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl: must be between 1s and 1h, got 0s" in (raised.value.details() or "")
        with pytest.raises(grpc.RpcError) as raised:
            stub.Heartbeat(instances_pb2.InstanceHeartbeatRequest(id="payments-gone"),
                           timeout=30)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "instance payments-gone is not registered" in (raised.value.details() or "")


def test_a_server_restart_keeps_registrations_with_a_fresh_ttl(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        with server.client() as client:
            client.apply([(manifests()[0], "registration")])
            with client.register(SERVICE, REGISTERED_ADDRESS, 9000, ttl=2) as registration:
                first = registration.id
                server.kill()
                time.sleep(3)  # longer than the TTL: heartbeats fail meanwhile
                server.start()
                time.sleep(4)  # heartbeats resume; the TTL counts from the restart
                found = client.list("Instance")[0]
                assert [i["metadata"]["name"] for i in found] == [first]
                assert registration.id == first  # renewed, not registered again
            assert client.list("Instance")[0] == []
    finally:
        server.stop()
