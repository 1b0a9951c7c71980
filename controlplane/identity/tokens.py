"""Join tokens: what an agent shows to join the cluster.

The control plane makes one on first start, keeps only its hash (sealed, in
the store) and writes the token to ``<data dir>/join-token`` (mode 0600) for
the operator to hand to agents (``flotilla agent --join-token``).

The token never travels: an agent's Join carries a *proof*, an HMAC-SHA256
of the request keyed with the token's SHA-256 (which is all the server
keeps), and the server proves the same over its answer, so the agent trusts
the trust bundle it gets only from a server that knows the token (kubeadm's
signed cluster-info, in one step). A Join with a wrong proof is
UNAUTHENTICATED; every later call is authenticated by the node certificate
the Join returned.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from controlplane.errors import Unauthenticated
from controlplane.identity.proof import digest_of as _digest
from controlplane.identity.proof import proof
from controlplane.store import Store

PRIVATE_KEY = "join-tokens"
FILE_NAME = "join-token"
#: Seconds a Join's timestamp may be off the server's clock.
MAX_SKEW = 600.0


class JoinTokens:
    def __init__(self, store: Store, data_dir: Path) -> None:
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

    def verify(self, given: str, payload: bytes, timestamp: float) -> str:
        """The digest of the token ``given`` proves ``payload`` with (the key
        to prove the answer with); UNAUTHENTICATED when none does."""
        stored = self._store.get_private(PRIVATE_KEY) or {}  # another replica's, too
        self._digests = list(stored.get("digests") or self._digests)
        if not given:
            raise Unauthenticated(
                "no join token: start the agent with --join-token (the token is in the "
                f"server's {FILE_NAME} file)")
        for digest in self._digests:
            if hmac.compare_digest(proof(digest, payload), given):
                if abs(time.time() - timestamp) > MAX_SKEW:
                    raise Unauthenticated(
                        f"the join request is {abs(time.time() - timestamp):.0f}s off the "
                        "server's clock: set the node's clock right (NTP)")
                return digest
        raise Unauthenticated(
            f"the join token is wrong: use the one in the server's {FILE_NAME} file")
