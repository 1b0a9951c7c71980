"""Proofs of a join token that do not reveal it (both sides of a Join).

The key is the token's SHA-256 (all the server keeps of it); a proof is the
hex HMAC-SHA256 of a message serialized with its proof field empty. No I/O:
the agent imports this without the store.
"""

from __future__ import annotations

import hashlib
import hmac

from google.protobuf.message import Message


def digest_of(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def proof(digest: str, payload: bytes) -> str:
    """The proof over ``payload`` by whoever knows the token behind ``digest``."""
    return hmac.new(bytes.fromhex(digest), payload, hashlib.sha256).hexdigest()


def unproven(message: Message) -> bytes:
    """``message`` as its proof covers it: deterministic, ``proof`` empty."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.ClearField("proof")
    return copy.SerializeToString(deterministic=True)


def prove(digest: str, message: Message) -> str:
    return proof(digest, unproven(message))


def proves(digest: str, message: Message) -> bool:
    return hmac.compare_digest(prove(digest, message), getattr(message, "proof", ""))
