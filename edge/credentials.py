"""Merchant credential sets at the edge: which set a key, token or signature belongs to, and their last use, sent to
the shards once a minute (their secrets, derived or sealed, are actors/merchant_secrets.py's)."""

import asyncio
import contextlib
import hmac
import logging

from aiohttp import web

from edge.auth import hash_secret
from edge.gateway import ShardBusy
from engine.credentials import credential_sets, live
from engine.records import Credential, Merchant, TouchCredentials

log = logging.getLogger("paygate.edge")
MAX_PENDING_USES = 10_000


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
