"""Two control-plane replicas on Consul KV (a real dev agent), a real agent
with Envoy sidecars: kill -9 the leader during a stream of applies; the other
replica leads within 15 s, no acknowledged apply is lost, traffic through the
sidecars never stops, and the new leader schedules."""

from __future__ import annotations

import datetime
import http.client
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.api.flotilla.v1 import instances_pb2
from controlplane.client import Client
from controlplane.errors import TemporaryError
from controlplane.server.app import LEADER_SERVICE
from tests.consul import ConsulAgent, consul  # noqa: F401 - the fixture
from tests.harness import AgentProcess, ServerProcess, eventually

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"
TAKEOVER = 15.0


def leads(server: ServerProcess) -> bool:
    with grpc.insecure_channel(server.address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=LEADER_SERVICE), timeout=2)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def web(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"command": [sys.executable, str(WEB)], "port": 8080, "replicas": replicas,
                     "resources": {"cpu": 100, "memory": 64},
                     "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms"},
                     # The test registers instances on loopback too.
                     "registration": {"cidrs": ["127.0.0.0/8"]}}}


def healthy(client: Client) -> list[dict[str, Any]]:
    return [i for i in client.list("Instance", "default")[0]
            if i.get("status", {}).get("state") == "healthy"]


def test_a_replica_takes_over_when_the_leader_is_killed(
        tmp_path: Path, consul: ConsulAgent) -> None:  # noqa: F811
    shared = ("--store", f"{consul.url}/ha", "--node-grace", "5", "--no-mtls")
    first = ServerProcess(tmp_path / "s1", extra_args=shared).start()
    second: ServerProcess | None = None
    agent: AgentProcess | None = None
    try:
        eventually(lambda: leads(first), 30, "the first replica to lead")
        (tmp_path / "s2").mkdir(mode=0o700)  # replicas share the sealing key
        (tmp_path / "s2" / "secrets.key").write_bytes((tmp_path / "s1" / "secrets.key")
                                                     .read_bytes())
        second = ServerProcess(tmp_path / "s2", extra_args=shared).start()
        both = f"{first.address},{second.address}"
        agent = AgentProcess(first, "n1", "127.0.0.2", tmp_path / "n1", servers=both).start()
        assert not leads(second)
        # A replica with a sealing key of its own cannot read the shared store: it says so.
        stranger = subprocess.run(
            [sys.executable, "-m", "controlplane", "server", "--listen", "127.0.0.1:0",
             "--data-dir", str(tmp_path / "s3"), *shared], capture_output=True, text=True,
            timeout=60)
        assert stranger.returncode == 1 and "copy secrets.key" in stranger.stderr
        assert "Traceback" not in stranger.stderr
        with Client(second.address) as client:  # a write to the follower: replicated
            client.apply([(web(2), "web")])
            instances = eventually(lambda: len(found := healthy(client)) == 2 and found, 60,
                                   "two healthy instances")
        endpoints = [(i["status"]["address"], int(i["status"]["port"])) for i in instances]

        # An instance registered and heartbeated through the follower outlives its TTL
        # (the leader reaps only what nobody heartbeats), and leaves when deregistered.
        with Client(second.address) as client:
            with client.register("web", "127.0.0.9", 9000, ttl=2) as registration:
                time.sleep(6)
                names = {i["metadata"]["name"] for i in client.list("Instance", "default")[0]}
                assert registration.id in names
            eventually(lambda: registration.id not in {
                i["metadata"]["name"] for i in client.list("Instance", "default")[0]}, 10,
                "the registration gone")
            # One registered through the follower that never heartbeats: the leader reaps it.
            lone = client.register_instance(instances_pb2.RegisterInstanceRequest(
                service="web", address="127.0.0.9", port=9001,
                ttl=datetime.timedelta(seconds=2)))
            eventually(lambda: lone.id not in {
                i["metadata"]["name"] for i in client.list("Instance", "default")[0]}, 15,
                "the leader to reap a registration it did not take")

        # Traffic through the sidecars, and applies through whichever replica answers.
        stop = threading.Event()
        failures: list[str] = []
        served = [0]
        acknowledged: list[str] = []

        def traffic() -> None:
            while not stop.is_set():
                for host, port in endpoints:
                    try:
                        conn = http.client.HTTPConnection(host, port, timeout=5)
                        conn.request("GET", "/")
                        if conn.getresponse().status != 200:
                            failures.append(f"{host}:{port} answered non-200")
                        conn.close()
                        served[0] += 1
                    except OSError as error:
                        failures.append(f"{host}:{port}: {error}")
                time.sleep(0.05)

        def applies() -> None:
            with Client(both, timeout=5) as client:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    name = f"cm-{n}"
                    doc = {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap",
                           "metadata": {"name": name}, "spec": {"data": {"n": str(n)}}}
                    try:
                        client.apply([(doc, name)])
                        acknowledged.append(name)
                    except TemporaryError:
                        time.sleep(0.1)  # a replica went away: the next call tries another

        workers = [threading.Thread(target=traffic), threading.Thread(target=applies)]
        for worker in workers:
            worker.start()
        try:
            eventually(lambda: len(acknowledged) >= 20, 60, "applies flowing")
            first.kill()  # SIGKILL: no goodbye to Consul
            killed = time.monotonic()
            eventually(lambda: leads(second), 60, "the second replica to lead")
            takeover = time.monotonic() - killed
            count = len(acknowledged)
            eventually(lambda: len(acknowledged) >= count + 20, 60, "applies after the takeover")
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        print(f"takeover in {takeover:.1f}s; {len(acknowledged)} applies acknowledged; "
              f"{served[0]} requests served")
        assert takeover <= TAKEOVER
        assert failures == []
        with Client(second.address) as client:
            stored = {c["metadata"]["name"] for c in client.list("ConfigMap", "default")[0]}
            assert set(acknowledged) <= stored  # nothing acknowledged was lost

            # The new leader schedules, and the agent reports to it (the node stays ready).
            client.scale("web", 3)
            eventually(lambda: len(healthy(client)) == 3, 60, "a third instance, placed by "
                       "the new leader")
            nodes = client.list("Node", "")[0]
            assert [n["status"]["state"] for n in nodes] == ["ready"]
    finally:
        if agent is not None:
            agent.cleanup()
        for server in (first, second):
            if server is not None:
                server.stop()
