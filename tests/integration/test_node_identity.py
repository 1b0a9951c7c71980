"""Agent <-> control plane over mutual TLS, through the real server: a join
proves the token without sending it and brings a node certificate; the
agent port takes only node certificates of this cluster, each acting for its
own node; a revoked node is refused."""

from __future__ import annotations

import datetime
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from controlplane.api.flotilla.v1 import agent_pb2, agent_pb2_grpc, nodes_pb2
from controlplane.identity.ca import (
    CONTROL_PLANE_NAME,
    CertificateAuthority,
    new_key_and_csr,
    new_root,
)
from controlplane.identity.proof import digest_of, prove
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server", extra_args=("--trust-domain", "mesh.test")).start()
    try:
        yield proc
    finally:
        proc.stop()


def agent_stub(server: ServerProcess, key_pem: str = "", cert_pem: str = "",
               roots: str | None = None) -> tuple[grpc.Channel, agent_pb2_grpc.AgentServiceStub]:
    """A channel to the agent port with the given client certificate (or none)."""
    if roots is None:
        with server.client() as client:
            roots = client.trust_bundle().bundle_pem
    credentials = grpc.ssl_channel_credentials(
        roots.encode(), key_pem.encode() or None, cert_pem.encode() or None)
    channel = grpc.secure_channel(f"127.0.0.1:{server.agent_port}", credentials,
                                  options=[("grpc.ssl_target_name_override", CONTROL_PLANE_NAME)])
    return channel, agent_pb2_grpc.AgentServiceStub(channel)


def report(stub: agent_pb2_grpc.AgentServiceStub, node: str) -> grpc.StatusCode:
    try:
        stub.Report(agent_pb2.ReportRequest(node=node), timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_join_proves_the_token_and_brings_a_node_certificate(server: ServerProcess) -> None:
    link = server.join("n1", "127.0.0.2")
    try:
        assert report(link.agent, "n1") == grpc.StatusCode.OK
        listed = run_cli("certs", server=server)
        assert "spiffe://mesh.test/node/n1" in listed.stdout and link.serial[:16] in listed.stdout
    finally:
        link.close()

    # The server's certificate on the agent port: its name, chained to the bundle.
    with server.client() as client:
        bundle = client.trust_bundle().bundle_pem
    context = ssl.create_default_context(cadata=bundle)
    context.check_hostname = True
    with socket.create_connection(("127.0.0.1", server.agent_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=CONTROL_PLANE_NAME) as tls:
        served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.test/control-plane"]

    # A proof made with another token, or a request changed after proving, is refused;
    # the token is never on the wire.
    request = agent_pb2.JoinRequest(name="n9", address="127.0.0.9", drivers=["process"],
                                    capacity=nodes_pb2.Capacity(cpu_millis=1000, memory_mib=64))
    _, request.csr_pem = new_key_and_csr()
    request.timestamp = int(datetime.datetime.now().timestamp())
    with grpc.insecure_channel(server.address) as plain:
        stub = agent_pb2_grpc.AgentServiceStub(plain)
        request.proof = prove(digest_of("flotilla-guess"), request)
        with pytest.raises(grpc.RpcError) as wrong:
            stub.Join(request, timeout=10)
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "the join token is wrong" in (wrong.value.details() or "")
        request.proof = prove(digest_of(server.join_token), request)
        request.address = "10.0.0.66"  # a man in the middle redirects the node
        with pytest.raises(grpc.RpcError) as tampered:
            stub.Join(request, timeout=10)
        assert tampered.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Agent calls on the main port (no node certificate) are refused.
        assert report(stub, "n1") == grpc.StatusCode.UNAUTHENTICATED
    with server.client() as client:
        assert [n["metadata"]["name"] for n in client.list("Node", "")[0]] == ["n1"]


def test_the_agent_port_takes_only_this_clusters_node_certificates(
        server: ServerProcess) -> None:
    link = server.join("n1", "127.0.0.2")
    try:
        # No client certificate: the TLS handshake fails.
        channel, stub = agent_stub(server)
        with channel:
            assert report(stub, "n1") == grpc.StatusCode.UNAVAILABLE
        # A node certificate from another CA: the handshake fails too.
        now = datetime.datetime.now(datetime.timezone.utc)
        other = CertificateAuthority("mesh.test", [new_root("mesh.test", now)])
        key, csr = new_key_and_csr("spiffe://mesh.test/node/n1")
        forged = other.sign(csr, "spiffe://mesh.test/node/n1", datetime.timedelta(hours=1), now)
        channel, stub = agent_stub(server, key, forged.cert_pem)
        with channel:
            assert report(stub, "n1") == grpc.StatusCode.UNAVAILABLE
        # A valid certificate of the mesh that names a service, not a node.
        key, csr = new_key_and_csr()
        with server.client() as client:
            leaf = client.sign_client("default", "web", csr)
        channel, stub = agent_stub(server, key, leaf.certificate_pem)
        with channel:
            assert report(stub, "n1") == grpc.StatusCode.PERMISSION_DENIED
        # n1's certificate acts for n1 only.
        assert report(link.agent, "n2") == grpc.StatusCode.PERMISSION_DENIED
        assert report(link.agent, "n1") == grpc.StatusCode.OK
    finally:
        link.close()


def test_a_revoked_node_is_refused_and_its_instances_move(tmp_path: Path,
                                                          server: ServerProcess) -> None:
    agents = [AgentProcess(server, name, address, tmp_path / name).start()
              for name, address in (("n1", "127.0.0.2"), ("n2", "127.0.0.3"))]
    try:
        with server.client() as client:
            eventually(lambda: len(client.list("Node", "")[0]) == 2, 30, "two nodes")
            client.apply([({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                            "metadata": {"name": "web"},
                            "spec": {"command": [sys.executable, str(WEB)], "port": 8080,
                                     "replicas": 2, "resources": {"cpu": 100, "memory": 64},
                                     "healthCheck": {"http": {"path": "/healthz"},
                                                     "interval": "250ms"},
                                     "placement": {"strategy": "spread"}}}, "web")])

            def nodes_of_healthy() -> list[str] | None:
                found = client.list("Instance", "default")[0]
                nodes = sorted(i["spec"].get("node", "") for i in found
                               if i.get("status", {}).get("state") == "healthy")
                return nodes if len(nodes) == 2 else None

            assert eventually(nodes_of_healthy, 60, "two healthy instances") == ["n1", "n2"]
            done = run_cli("revoke", "n1", server=server)
            assert done.returncode == 0, done.stderr
            assert "Node n1 revoked" in done.stdout
            # Its agent is refused at once and says why.
            agents[0].proc.wait(timeout=30)  # type: ignore[union-attr]
            assert agents[0].proc.returncode == 1  # type: ignore[union-attr]
            assert "node n1 is revoked" in agents[0].log()
            assert "Traceback" not in agents[0].log()
            eventually(lambda: nodes_of_healthy() == ["n2", "n2"], 90,
                       "both instances on n2")
            assert "revoked" in run_cli("get", "nodes", server=server).stdout

        # Joining again under its name is refused; after --undo it may, but the
        # certificate issued before the revocation stays refused.
        with pytest.raises(grpc.RpcError) as refused:
            server.join("n1", "127.0.0.2")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "flotilla revoke n1 --undo" in (refused.value.details() or "")
        assert run_cli("revoke", "n1", "--undo", server=server).returncode == 0
        link = server.join("n1", "127.0.0.2")
        try:
            assert report(link.agent, "n1") == grpc.StatusCode.OK
        finally:
            link.close()
        assert run_cli("revoke", "ghost", server=server).returncode == 1
    finally:
        for agent in agents:
            agent.cleanup()

