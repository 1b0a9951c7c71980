"""The mesh CA through the real server: leaves only for what a node runs,
recorded for `flotilla certs`, the root kept across restarts and never served."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from controlplane.api.flotilla.v1 import agent_pb2, agent_pb2_grpc
from controlplane.identity.ca import new_key_and_csr
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"
WEB_SERVICE = {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"command": [sys.executable, str(WEB)], "port": 8080}}


@pytest.fixture
def placed(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(tmp_path / "server",
                           extra_args=("--trust-domain", "mesh.test", "--cert-ttl", "1h")).start()
    agent = AgentProcess(server, "n1", "127.0.0.2", tmp_path / "n1").start()
    try:
        with server.client() as client:
            client.apply([(WEB_SERVICE, "web")])
            instance = eventually(lambda: [i for i in client.list("Instance", "default")[0]
                                           if i["spec"].get("node") == "n1"], 30,
                                  "an instance on n1")[0]
        yield server, instance["metadata"]["name"]
    finally:
        agent.cleanup()
        server.stop()


def sign(server: ServerProcess, node: str, instance: str, csr: str, token: str | None = None
         ) -> agent_pb2.SignCertificateResponse:
    token = (server.data_dir / "join-token").read_text().strip() if token is None else token
    with grpc.insecure_channel(server.address) as channel:
        reply: agent_pb2.SignCertificateResponse = agent_pb2_grpc.AgentServiceStub(
            channel).SignCertificate(agent_pb2.SignCertificateRequest(
                node=node, namespace="default", instance_id=instance, csr_pem=csr), timeout=10,
            metadata=[("flotilla-join-token", token)] if token else None)
        return reply


def test_a_node_gets_leaves_only_for_what_it_runs(placed: tuple[ServerProcess, str]) -> None:
    server, instance = placed
    identity = "spiffe://mesh.test/ns/default/svc/web"
    _, csr = new_key_and_csr(identity)
    reply = sign(server, "n1", instance, csr)
    leaf = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    root = x509.load_pem_x509_certificate(reply.trust_bundle_pem.encode())
    leaf.verify_directly_issued_by(root)
    assert reply.identity == identity
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 3600 <= lifetime.total_seconds() <= 3600 + 120

    for token in ("", "flotilla-wrong"):
        with pytest.raises(grpc.RpcError) as unknown:
            sign(server, "n1", instance, csr, token)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as denied:
        sign(server, "n2", instance, csr)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not run instance" in (denied.value.details() or "")
    _, other = new_key_and_csr("spiffe://mesh.test/ns/default/svc/payments")
    with pytest.raises(grpc.RpcError) as refused:
        sign(server, "n1", instance, other)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "asks for spiffe://mesh.test/ns/default/svc/payments" in (refused.value.details() or "")

    listed = run_cli("certs", server=server)
    assert listed.returncode == 0, listed.stderr
    assert identity in listed.stdout and reply.serial[:16] in listed.stdout
    assert "PRIVATE KEY" not in run_cli("get", "all", "-A", "-o", "yaml", server=server).stdout

    server.stop()
    server.start()
    again = sign(server, "n1", instance, csr)
    assert again.trust_bundle_pem == reply.trust_bundle_pem  # the same root after a restart
    assert (server.data_dir / "flotilla.db").read_bytes().find(b"PRIVATE KEY") == -1


def test_another_trust_domain_on_the_same_data_dir_is_refused(
        placed: tuple[ServerProcess, str]) -> None:
    server, _ = placed
    server.stop()
    done = subprocess.run(
        [sys.executable, "-m", "controlplane", "server", "--listen", server.address,
         "--data-dir", str(server.data_dir), "--trust-domain", "other.test"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "is for trust domain 'mesh.test'" in done.stderr
    assert "start with --trust-domain mesh.test" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--cert-ttl", "30s"), "shorter than the 1m minimum"),
    (("--cert-ttl", "soon"), "is not a duration"),
    (("--trust-domain", "Mesh_Test"), "is not a trust domain"),
])
def test_bad_identity_settings_are_refused_before_anything_starts(
        tmp_path: Path, args: tuple[str, str], message: str) -> None:
    done = run_cli("server", "--data-dir", str(tmp_path / "server"), *args)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "server").exists()


def test_agents_keep_a_leaf_per_instance_and_renew_it_at_half_life(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", extra_args=("--cert-ttl", "1m")).start()
    agent = AgentProcess(server, "n1", "127.0.0.2", tmp_path / "n1").start()
    try:
        with server.client() as client:
            client.apply([(WEB_SERVICE, "web")])

            def certificate() -> dict[str, str] | None:
                found = client.list("Instance", "default")[0]
                return found[0].get("status", {}).get("certificate") if found else None

            first = eventually(certificate, 30, "the instance's certificate")
            assert not first.get("error")
            time.sleep(10)  # well before half-life: the same leaf
            assert certificate()["serial"] == first["serial"]  # type: ignore[index]
            renewed = eventually(lambda: (c := certificate()) and c["serial"] != first["serial"]
                                 and c, 75, "a renewed certificate (1m TTL: at 30s)")
            assert renewed["notAfter"] > first["notAfter"]
        listed = run_cli("certs", server=server)
        assert "spiffe://flotilla.local/ns/default/svc/web" in listed.stdout
        assert renewed["serial"][:16] in listed.stdout and "n1" in listed.stdout
    finally:
        agent.cleanup()
        server.stop()


def test_an_agent_needs_the_join_token(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        assert oct((server.data_dir / "join-token").stat().st_mode & 0o777) == "0o600"
        base = [sys.executable, "-m", "controlplane", "--server", server.address, "agent",
                "--name", "n1", "--address", "127.0.0.2", "--data-dir", str(tmp_path / "n1")]
        missing = subprocess.run(base, capture_output=True, text=True, timeout=60)
        assert missing.returncode == 2 and "join token" in missing.stderr
        wrong = subprocess.run([*base, "--join-token", "flotilla-guess"], capture_output=True,
                               text=True, timeout=60)
        assert wrong.returncode == 1
        assert "the control plane refused this agent: the join token is wrong" in wrong.stderr
        assert "Traceback" not in wrong.stderr
        with server.client() as client:
            assert client.list("Node", "")[0] == []  # it never joined
    finally:
        server.stop()
