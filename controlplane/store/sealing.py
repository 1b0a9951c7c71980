"""Encryption at rest for Secret data and private values (AES-256-GCM, a
random nonce per write). Replicas sharing a store (``--store consul://``)
share one key: each data dir's ``secrets.key`` is a copy of the first's."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controlplane.errors import FailedPrecondition

SEALED = "$sealed"


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte key at ``path``, created (mode 0600) on first use."""
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path}: a secret key is 32 bytes, found {len(key)}")
        return key
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, value: Any) -> dict[str, str]:
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(nonce, json.dumps(value).encode(), None)
        return {SEALED: base64.b64encode(nonce + ciphertext).decode()}

    def unseal(self, value: Any) -> Any:
        if not (isinstance(value, dict) and SEALED in value):
            return value
        raw = base64.b64decode(value[SEALED])
        try:
            return json.loads(self._aead.decrypt(raw[:12], raw[12:], None))
        except InvalidTag:
            raise FailedPrecondition(
                "this server's secrets key cannot open the store's sealed values: they were "
                "sealed by another replica; copy secrets.key from its data dir into this "
                "one's before starting (replicas share one key)") from None
