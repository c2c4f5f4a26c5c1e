"""Merchants' secrets, for the edge (which checks requests with them) and the notifier (which signs webhooks with
them): the ones derived from the gateway key (`gateway.key`), the rotated ones sealed with AES-256-GCM under
`credentials.key` (two key files of the data folder that never enter the journal or a snapshot), and the
`Paygate-Signature` header of an outgoing webhook.

A sealed secret is bound to what it is the secret of (merchant, set, kind), so it cannot be moved to another.
May import engine types and the journal's key files; never the edge.
"""

import hashlib
import hmac
import os
import pathlib
import re
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.credentials import live_sets
from engine.records import Merchant
from journal.auth import CREDENTIALS_KEY_FILE, GATEWAY_KEY_FILE, read_or_create_key

SERVER_KEY_BYTES = 32
SECRET_CHARS = 43  # 62**43 > 2**256, so the whole HMAC fits in base62
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CARD_FINGERPRINT_CHARS = 24  # 62**24 > 2**142: no two cards alike in practice
MERCHANT_ID = re.compile(r"mer_[a-z0-9]{1,64}")
SEALING_KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_VERSION = b"\x01"
MAX_OPENED_SECRETS = 10_000
SIGNATURE_HEADER = "Paygate-Signature"


def utf8(text: str) -> bytes:
    # surrogatepass: aiohttp decodes undecodable header bytes to lone surrogates, which plain encode() rejects
    return text.encode("utf-8", "surrogatepass")


def hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(utf8(secret), message, hashlib.sha256).hexdigest()


def base62(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    for _ in range(SECRET_CHARS):  # fixed width, so every secret has the same length
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(digits)


def random_secret() -> str:
    """Fresh randomness (256 bits) in the shape of a derived secret, for a rotated credential."""
    return base62(secrets.token_bytes(SERVER_KEY_BYTES))


def webhook_signature(webhook_secrets: Sequence[str], body: bytes, timestamp: int) -> str:
    """The `Paygate-Signature` value for an outgoing webhook: `t=<timestamp>,v1=<hex>`, a v1 per secret (while a
    rotated secret's grace lasts, the new one's first), so a receiver that knows either accepts it."""
    message = f"{timestamp}.".encode() + body
    return ",".join([f"t={timestamp}", *(f"v1={hmac_hex(secret, message)}" for secret in webhook_secrets)])


class Secrets:
    """A merchant's credentials, derived from the gateway key so a replayed "create merchant" can show them again."""

    def __init__(self, server_key: bytes) -> None:
        if len(server_key) < SERVER_KEY_BYTES:
            raise ValueError(f"the server key must be at least {SERVER_KEY_BYTES} bytes")
        self._key = server_key

    @classmethod
    def of_data_folder(cls, data: pathlib.Path) -> "Secrets":
        """From the data folder's gateway key, made on first use."""
        return cls(read_or_create_key(pathlib.Path(data) / GATEWAY_KEY_FILE, SERVER_KEY_BYTES))

    def _derive(self, purpose: str, merchant_id: str) -> str:
        # the purpose in the message keeps each credential independent of the others for the same merchant
        return base62(hmac.new(self._key, utf8(f"{purpose}:{merchant_id}"), hashlib.sha256).digest())

    def api_key(self, merchant_id: str) -> str:
        # only ids that edge.auth.merchant_id_from_api_key can read back are given keys
        if not MERCHANT_ID.fullmatch(merchant_id):
            raise ValueError(f"not a merchant id: {merchant_id!r}")
        return f"sk_{merchant_id}_{self._derive('api_key', merchant_id)}"

    def signing_secret(self, merchant_id: str) -> str:
        return f"sig_{self._derive('signing_secret', merchant_id)}"

    def webhook_secret(self, merchant_id: str) -> str:
        return f"whsec_{self._derive('webhook_secret', merchant_id)}"

    def provider_secret(self, provider: str) -> str:
        """The secret a payment provider signs its callbacks with (written to its secret file at start)."""
        return f"psp_{self._derive('provider_secret', provider)}"

    def client_id(self, merchant_id: str) -> str:
        # public, and naming the merchant lets a token request find its merchant without a lookup table
        return f"cli_{merchant_id}"

    def client_secret(self, merchant_id: str) -> str:
        return f"cs_{self._derive('client_secret', merchant_id)}"

    def card_fingerprint(self, number: str) -> str:
        """The same for the same card number anywhere on this gateway; without the key, no way back to the number."""
        return self._derive("card_fingerprint", number)[:CARD_FINGERPRINT_CHARS]


class SecretSealer:
    """Seals the secrets that must be recovered (rotated signing and webhook secrets) under `credentials.key`."""

    def __init__(self, key: bytes) -> None:
        if len(key) != SEALING_KEY_BYTES:
            raise ValueError(f"the credentials key must be {SEALING_KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    @classmethod
    def of_data_folder(cls, data: pathlib.Path) -> "SecretSealer":
        """From the data folder's credentials key, made on first use."""
        return cls(read_or_create_key(pathlib.Path(data) / CREDENTIALS_KEY_FILE, SEALING_KEY_BYTES))

    def seal(self, secret: str, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return SEALED_VERSION + nonce + self._aead.encrypt(nonce, secret.encode(), context.encode())

    def unseal(self, sealed: bytes, context: str) -> str | None:
        """The secret, or None for a blob this key did not seal for `context` (the key was replaced, or tampering)."""
        if sealed[:1] != SEALED_VERSION or len(sealed) <= 1 + NONCE_BYTES:
            return None
        nonce, ciphertext = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, context.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None


def seal_context(merchant_id: str, credential_id: str, kind: str) -> str:
    return f"{merchant_id}/{credential_id}/{kind}"


class MerchantSecrets:
    """The signing and webhook secrets of a merchant's sets: the first set's derived from the gateway key, the
    others unsealed."""

    def __init__(self, derived: Secrets, sealer: SecretSealer) -> None:
        self.derived = derived
        self.sealer = sealer
        # (merchant, set, kind, sealed bytes) -> the secret: derived or unsealed once, not at every signature
        self._opened: dict[tuple[str, str, str, bytes], str] = {}

    @classmethod
    def of_data_folder(cls, data: pathlib.Path) -> "MerchantSecrets":
        return cls(Secrets.of_data_folder(data), SecretSealer.of_data_folder(data))

    def signing_secrets(self, merchant: Merchant, now_ns: int) -> list[str]:
        return self._secrets(merchant, now_ns, "signing")

    def webhook_secrets(self, merchant: Merchant, now_ns: int) -> list[str]:
        """Newest first: while a rotated secret's grace lasts, deliveries carry a signature under each."""
        return self._secrets(merchant, now_ns, "webhook")

    def webhook_header(self, merchant: Merchant, body: bytes, timestamp: int) -> str:
        """The `Paygate-Signature` of a delivery to the merchant at `timestamp` (unix seconds)."""
        return webhook_signature(self.webhook_secrets(merchant, timestamp * 1_000_000_000), body, timestamp)

    def _secrets(self, merchant: Merchant, now_ns: int, kind: str) -> list[str]:
        found = []
        for credential in live_sets(merchant, now_ns):
            sealed = getattr(credential, f"sealed_{kind}_secret")
            key = (merchant.id, credential.id, kind, sealed)
            secret = self._opened.get(key)
            if secret is None:
                secret = self._open(merchant.id, credential.id, kind, sealed)
                if len(self._opened) >= MAX_OPENED_SECRETS:
                    self._opened.clear()
                self._opened[key] = secret
            if secret:  # "": sealed under a key this gateway no longer has, so that set cannot sign
                found.append(secret)
        return found

    def _open(self, merchant_id: str, credential_id: str, kind: str, sealed: bytes) -> str:
        if not sealed:  # the first set: derived, never stored
            return getattr(self.derived, f"{kind}_secret")(merchant_id)
        return self.sealer.unseal(sealed, seal_context(merchant_id, credential_id, kind)) or ""
