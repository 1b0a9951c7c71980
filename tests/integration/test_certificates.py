"""The mesh CA through the real server: leaves only for what a node runs,
recorded for `flotilla certs`, the root kept across restarts and never served."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

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


def sign(stub: agent_pb2_grpc.AgentServiceStub, node: str, instance: str, csr: str
         ) -> agent_pb2.SignCertificateResponse:
    reply: agent_pb2.SignCertificateResponse = stub.SignCertificate(
        agent_pb2.SignCertificateRequest(node=node, namespace="default", instance_id=instance,
                                         csr_pem=csr), timeout=10)
    return reply


def test_a_node_gets_leaves_only_for_what_it_runs(placed: tuple[ServerProcess, str]) -> None:
    server, instance = placed
    identity = "spiffe://mesh.test/ns/default/svc/web"
    _, csr = new_key_and_csr(identity)
    n1, n2 = server.join("n1", "127.0.0.2"), server.join("n2")
    reply = sign(n1.agent, "n1", instance, csr)
    leaf = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    root = x509.load_pem_x509_certificate(reply.trust_bundle_pem.encode())
    leaf.verify_directly_issued_by(root)
    assert reply.identity == identity
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 3600 <= lifetime.total_seconds() <= 3600 + 120

    with grpc.insecure_channel(server.address) as plain:  # no node certificate
        with pytest.raises(grpc.RpcError) as unknown:
            sign(agent_pb2_grpc.AgentServiceStub(plain), "n1", instance, csr)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as denied:
        sign(n2.agent, "n2", instance, csr)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not run instance" in (denied.value.details() or "")
    with pytest.raises(grpc.RpcError) as impostor:
        sign(n2.agent, "n1", instance, csr)
    assert impostor.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node n2's certificate cannot act for node n1" in (impostor.value.details() or "")
    _, other = new_key_and_csr("spiffe://mesh.test/ns/default/svc/payments")
    with pytest.raises(grpc.RpcError) as refused:
        sign(n1.agent, "n1", instance, other)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "asks for spiffe://mesh.test/ns/default/svc/payments" in (refused.value.details() or "")

    listed = run_cli("certs", server=server)
    assert listed.returncode == 0, listed.stderr
    assert identity in listed.stdout and reply.serial[:16] in listed.stdout
    assert "PRIVATE KEY" not in run_cli("get", "all", "-A", "-o", "yaml", server=server).stdout

    server.stop()
    server.start()
    n1.close()
    n2.close()
    n1 = server.join("n1", "127.0.0.2")
    again = sign(n1.agent, "n1", instance, csr)
    n1.close()
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
            # The node's own certificate (towards the control plane) is renewed too,
            # and the agent keeps using the new one (its reports go on).
            node_certs = eventually(
                lambda: len(found := client.list("Certificate", "cluster",
                                                 {"flotilla.dev/node": "n1"})[0]) >= 2 and found,
                75, "a renewed node certificate")
            assert {c["spec"]["identity"] for c in node_certs} == {
                "spiffe://flotilla.local/node/n1"}
            eventually(lambda: certificate()["serial"] != renewed["serial"],  # type: ignore[index]
                       75, "a leaf signed over the renewed node certificate")
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


def test_a_proxyless_client_keeps_its_certificate_renewed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", extra_args=("--cert-ttl", "1m")).start()
    bootstrap = tmp_path / "client" / "xds.json"
    bootstrap.parent.mkdir()
    keeper = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "--server", server.address, "bootstrap",
         "--proxyless", "--name", "probe", "-o", str(bootstrap), "--keep-renewed"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def leaf() -> x509.Certificate | None:
            try:
                return x509.load_pem_x509_certificate(bootstrap.with_suffix(".crt").read_bytes())
            except (OSError, ValueError):
                return None

        first = eventually(leaf, 30, "the client's certificate")
        config = json.loads(bootstrap.read_text())["certificate_providers"]["default"]["config"]
        assert int(config["refresh_interval"].rstrip("s")) <= 6  # a tenth of the 1m TTL
        renewed = eventually(lambda: (c := leaf()) and c.serial_number != first.serial_number
                             and c, 75, "a renewed client certificate (1m TTL: at 30s)")
        key = serialization.load_pem_private_key(bootstrap.with_suffix(".key").read_bytes(),
                                                 None)
        assert key.public_key() == renewed.public_key()  # the pair changed together

        with server.client() as client:
            rotated = client.rotate_root()
        new_root = next(r for r in rotated.roots if r != rotated.active_root)

        def signed_by_new_root() -> bool:
            roots = x509.load_pem_x509_certificates(bootstrap.with_suffix(".ca.crt").read_bytes())
            current = leaf()
            return (current is not None and [format(r.serial_number, "x") for r in roots]
                    == [new_root] and current.issuer == roots[0].subject)

        eventually(signed_by_new_root, 60, "the client on the new root alone")
        assert keeper.poll() is None
    finally:
        keeper.terminate()
        keeper.wait(timeout=15)
        server.stop()


def test_a_client_certificate_is_recorded_and_listed(server: ServerProcess) -> None:
    """Every leaf the CA signs shows in `flotilla certs`, those of proxyless
    clients too (they hold a service's identity)."""
    _, csr = new_key_and_csr()
    with server.client() as client:
        leaf = client.sign_client("default", "probe", csr)
        record = eventually(lambda: [c for c in client.list("Certificate", "default")[0]
                                     if c["spec"]["serial"] == leaf.serial], 15,
                            "the client certificate's record")[0]
    assert record["spec"]["identity"] == "spiffe://flotilla.local/ns/default/svc/probe"
    assert record["spec"]["client"] == "probe"
    assert record["metadata"]["labels"] == {"flotilla.dev/client": "probe"}
    listed = run_cli("certs", server=server)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if leaf.serial[:16] in line)
    assert "spiffe://flotilla.local/ns/default/svc/probe" in row and "client probe" in row
