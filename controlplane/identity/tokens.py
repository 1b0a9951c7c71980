"""Join tokens: what an agent shows to join the cluster.

The control plane makes one on first start, keeps only its hash (sealed, in
the store) and writes the token to ``<data dir>/join-token`` (mode 0600) for
the operator to hand to agents (``flotilla agent --join-token``). Every call
an agent makes carries it (gRPC metadata ``flotilla-join-token``); a wrong or
missing one is UNAUTHENTICATED.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from controlplane.errors import Unauthenticated
from controlplane.store import SqliteStore

PRIVATE_KEY = "join-tokens"
METADATA = "flotilla-join-token"
FILE_NAME = "join-token"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JoinTokens:
    def __init__(self, store: SqliteStore, data_dir: Path) -> None:
        self._store = store
        self.path = data_dir / FILE_NAME
        stored = store.get_private(PRIVATE_KEY) or {}
        self._digests: list[str] = list(stored.get("digests") or [])
        if not self._digests or not self.path.exists():
            self._digests.append(self._create())

    def _create(self) -> str:
        token = f"flotilla-{secrets.token_hex(24)}"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        digest = _digest(token)
        self._store.put_private(PRIVATE_KEY, {"digests": [*self._digests, digest]})
        return digest

    def check(self, token: str | None) -> None:
        if not token:
            raise Unauthenticated(
                "no join token: start the agent with --join-token (the token is in the "
                f"server's {FILE_NAME} file)")
        digest = _digest(token.strip())
        if not any(hmac.compare_digest(digest, known) for known in self._digests):
            raise Unauthenticated(
                "the join token is wrong: use the one in the server's "
                f"{FILE_NAME} file")


def token_of(metadata: object) -> str | None:
    """The join token in a call's invocation metadata."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == METADATA:
            return str(value)
    return None
