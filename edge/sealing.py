"""Merchant secrets that must be recovered (signing and webhook secrets) sealed with AES-256-GCM under
`credentials.key`, a key file of the data folder that never enters the journal or a snapshot.

A sealed secret is bound to what it is the secret of (merchant, set, kind), so it cannot be moved to another.
"""

import os
import pathlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from journal.auth import create_file_once

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = b"\x01"


class SecretSealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the credentials key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, path: pathlib.Path) -> "SecretSealer":
        create_file_once(path, AESGCM.generate_key(bit_length=KEY_BYTES * 8))
        return cls(path.read_bytes())

    def seal(self, secret: str, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, secret.encode(), context.encode())

    def unseal(self, sealed: bytes, context: str) -> str | None:
        """The secret, or None for a blob this key did not seal for `context` (the key was replaced, or tampering)."""
        if sealed[:1] != VERSION or len(sealed) <= 1 + NONCE_BYTES:
            return None
        nonce, ciphertext = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, context.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None
