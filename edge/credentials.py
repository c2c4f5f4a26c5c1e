"""Merchant credential sets at the edge: which set a key, token or signature belongs to, their secrets (derived or
sealed), and their last use, sent to the shards once a minute."""

import asyncio
import contextlib
import hmac
import logging

from aiohttp import web

from edge.auth import Secrets, hash_secret, webhook_signature
from edge.gateway import ShardBusy
from edge.sealing import SecretSealer
from engine.credentials import credential_sets, live, live_sets
from engine.records import Credential, Merchant, TouchCredentials

log = logging.getLogger("paygate.edge")
MAX_PENDING_USES = 10_000
MAX_OPENED_SECRETS = 10_000


class MerchantSecrets:
    """The signing and webhook secrets of a merchant's sets: the first set's derived from the gateway key, the
    others unsealed."""

    def __init__(self, derived: Secrets, sealer: SecretSealer) -> None:
        self.derived = derived
        self.sealer = sealer
        # (merchant, set, kind, sealed bytes) -> the secret: derived or unsealed once, not at every signed request
        self._opened: dict[tuple[str, str, str, bytes], str] = {}

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


def seal_context(merchant_id: str, credential_id: str, kind: str) -> str:
    return f"{merchant_id}/{credential_id}/{kind}"


def api_key_set(merchant: Merchant, api_key: str, now_ns: int) -> Credential | None:
    """The live set this API key belongs to, if any."""
    key_hash = hash_secret(api_key)
    for credential in credential_sets(merchant):
        if hmac.compare_digest(credential.api_key_hash, key_hash) and live(credential, now_ns):
            return credential
    return None


def client_secret_set(merchant: Merchant, client_secret: str, now_ns: int) -> Credential | None:
    secret_hash = hash_secret(client_secret)
    for credential in credential_sets(merchant):
        if hmac.compare_digest(credential.client_secret_hash, secret_hash) and live(credential, now_ns):
            return credential
    return None


def set_live(merchant: Merchant, credential_id: str, now_ns: int) -> bool:
    """Whether the set a token was issued under still authenticates."""
    return any(credential.id == credential_id and live(credential, now_ns) for credential in credential_sets(merchant))


class CredentialUses:
    """The sets this worker saw used since its last report, at most MAX_PENDING_USES (the rest wait a minute)."""

    def __init__(self) -> None:
        self.pending: set[tuple[str, str]] = set()

    def note(self, merchant_id: str, credential_id: str) -> None:
        if len(self.pending) < MAX_PENDING_USES:
            self.pending.add((merchant_id, credential_id))

    def take(self) -> set[tuple[str, str]]:
        taken, self.pending = self.pending, set()
        return taken


async def report_uses(app: web.Application):
    """cleanup_ctx: every `last_used_every_s` (a minute), one TouchCredentials per shard with the sets used there:
    never a command per request."""
    task = asyncio.get_running_loop().create_task(_report_forever(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _report_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(app["settings"].last_used_every_s)
        gateway = app["gateway"]
        by_shard: dict[int, list[tuple[str, str]]] = {}
        for use in sorted(app["credential_uses"].take()):
            by_shard.setdefault(gateway.shard_index(use[0]), []).append(use)
        for shard, uses in by_shard.items():
            try:
                await gateway.submit_to(shard, TouchCredentials(uses))
            except ShardBusy as error:  # a last-used time is a hint: the next report says it again if used again
                log.info("credential uses not reported to shard %d: %s", shard, error)
