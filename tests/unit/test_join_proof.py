"""Join proofs: the token proven, never sent; any change to a proven message
breaks its proof; the server's answer proven the same way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controlplane.api.flotilla.v1 import agent_pb2, nodes_pb2
from controlplane.errors import Unauthenticated
from controlplane.identity.proof import digest_of, prove, proves, unproven
from controlplane.identity.tokens import JoinTokens
from controlplane.store import Store


def request() -> agent_pb2.JoinRequest:
    return agent_pb2.JoinRequest(name="n1", address="127.0.0.2", labels={"zone": "a"},
                                 capacity=nodes_pb2.Capacity(cpu_millis=1000, memory_mib=64),
                                 drivers=["process"], csr_pem="csr", timestamp=int(time.time()))


def test_a_proof_covers_every_field_and_not_itself() -> None:
    digest = digest_of("flotilla-secret")
    message = request()
    message.proof = prove(digest, message)
    assert proves(digest, message)
    assert not proves(digest_of("flotilla-other"), message)
    assert "flotilla-secret" not in message.SerializeToString().decode(errors="replace")
    for change in (lambda m: setattr(m, "address", "10.0.0.1"),
                   lambda m: m.labels.__setitem__("zone", "b"),
                   lambda m: m.drivers.append("docker"),
                   lambda m: setattr(m, "csr_pem", "other")):
        tampered = agent_pb2.JoinRequest()
        tampered.CopyFrom(message)
        change(tampered)
        assert not proves(digest, tampered)
    bare = agent_pb2.JoinRequest()
    bare.CopyFrom(message)
    bare.ClearField("proof")
    assert unproven(message) == bare.SerializeToString(deterministic=True)


def test_the_server_knows_which_token_a_join_proves(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    try:
        tokens = JoinTokens(store, tmp_path)
        token = tokens.path.read_text().strip()
        message = request()
        given = prove(digest_of(token), message)
        assert tokens.verify(given, unproven(message), message.timestamp) == digest_of(token)
        with pytest.raises(Unauthenticated, match="the join token is wrong"):
            tokens.verify(prove(digest_of("flotilla-guess"), message), unproven(message),
                          message.timestamp)
        with pytest.raises(Unauthenticated, match="no join token"):
            tokens.verify("", unproven(message), message.timestamp)
        with pytest.raises(Unauthenticated, match="off the server's clock"):
            tokens.verify(given, unproven(message), message.timestamp - 3600)
        # A restart keeps the token (only its hash is stored).
        assert JoinTokens(store, tmp_path).verify(given, unproven(message), message.timestamp)
    finally:
        store.close()
