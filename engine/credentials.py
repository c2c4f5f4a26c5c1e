"""Merchants' credential sets (rotation, expiry, last use) and the signed requests each merchant has sent lately.

Secrets never reach the engine in clear: API keys and client secrets come as hashes, signing and webhook secrets
sealed by the edge. A merchant created before sets existed has one set, described by its record's legacy fields;
its first rotation or use turns that into a stored set.
"""

import collections

import msgspec

from engine.changes import Changes
from engine.records import Credential, Merchant, Outcome, RotateCredentials, Signed, TouchCredentials
from engine.types import NANOSECONDS_PER_SECOND

INITIAL_CREDENTIAL_ID = "key_initial"
MAX_CREDENTIALS = 10  # live sets per merchant: each is checked at every authentication
MAX_GRACE_S = 30 * 86400
MAX_FIELD_CHARS = 256  # an id, a hash, a sealed secret or a digest: each is far shorter
MAX_TOUCHES = 10_000  # per command: the edge sends at most one per shard a minute
SIGNATURE_REPLAYED = "signature_replayed"
SIGNATURE_WINDOW_FULL = "signature_window_full"
MAX_SIGNATURES_PER_MERCHANT = 50_000  # far above 10 minutes of the fastest tier (2,000 burst + 1,000 a minute)
MAX_SIGNATURES = 1_000_000  # per shard
MAX_SIGNATURE_WINDOW_NS = 3600 * NANOSECONDS_PER_SECOND  # a signature is good for minutes: an hour bounds the edge's word


def credential_sets(merchant: Merchant) -> list[Credential]:
    """The merchant's sets, the newest last; one never rotated has its derived first set alone."""
    if merchant.credentials:
        return merchant.credentials
    return [Credential(id=INITIAL_CREDENTIAL_ID, api_key_hash=merchant.api_key_hash,
                       client_secret_hash=merchant.client_secret_hash, created_at=merchant.created_at)]


def live(credential: Credential, now_ns: int) -> bool:
    return credential.expires_at == 0 or now_ns < credential.expires_at


def live_sets(merchant: Merchant, now_ns: int) -> list[Credential]:
    """The sets that authenticate at `now_ns`, the newest first."""
    return [credential for credential in reversed(credential_sets(merchant)) if live(credential, now_ns)]


def _stored_sets(merchant: Merchant) -> list[Credential]:
    """The merchant's sets as stored ones; the legacy clear secrets go, since the edge derives the first set's."""
    if not merchant.credentials:
        merchant.credentials = credential_sets(merchant)
        merchant.signing_secret = merchant.webhook_secret = ""
    return merchant.credentials


class Credentials:
    def __init__(self, merchants: dict[str, Merchant], changes: Changes) -> None:
        # State lives in tracked containers (engine/changes.py); snapshots sort it, so its order is not state.
        self.merchants = merchants
        # (merchant id, digest of the signed message) -> until when a copy is refused (engine time)
        self.signatures: dict[tuple[str, str], int] = changes.dict(ordered=False)
        self.signature_expiries = changes.schedule()  # (merchant id, digest) -> expires_at
        self.signatures_by_merchant: dict[str, int] = changes.dict(ordered=False)

    def rotate(self, command: RotateCredentials, timestamp: int) -> Outcome:
        merchant = self.merchants.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        if not 0 <= command.expires_in_s <= MAX_GRACE_S:
            return Outcome("expires_in_invalid")
        newest = next(iter(live_sets(merchant, timestamp)), None)
        if command.requested_by and (newest is None or newest.id != command.requested_by):
            return Outcome("credential_in_grace", record=merchant)
        new = command.credential
        if not new.id.startswith("key_") or len(new.id) > MAX_FIELD_CHARS:
            return Outcome("credential_id_invalid")
        if max(len(new.api_key_hash), len(new.client_secret_hash), len(new.sealed_signing_secret),
               len(new.sealed_webhook_secret)) > MAX_FIELD_CHARS:
            return Outcome("credential_invalid")
        if any(old.id == new.id for old in credential_sets(merchant)):
            return Outcome("exists", record=merchant)
        grace_ends = timestamp + command.expires_in_s * NANOSECONDS_PER_SECOND
        # a set whose grace ends now or has ended is dropped: the list holds live sets only, at most MAX_CREDENTIALS
        kept = [old for old in credential_sets(merchant) if min(old.expires_at or grace_ends, grace_ends) > timestamp]
        if len(kept) >= MAX_CREDENTIALS:
            return Outcome("credential_limit_reached", record=merchant)
        # Sets are replaced, never changed in place: an undo restores the merchant's fields, not what they hold.
        kept = [msgspec.structs.replace(old, expires_at=min(old.expires_at or grace_ends, grace_ends)) for old in kept]
        new.created_at = timestamp
        new.expires_at = new.last_used_at = 0
        merchant.credentials = [*kept, new]
        merchant.signing_secret = merchant.webhook_secret = ""  # the edge derives the first set's: never kept clear
        merchant.updated_at = timestamp
        return Outcome(record=merchant)

    def touch(self, command: TouchCredentials, timestamp: int) -> Outcome:
        if len(command.uses) > MAX_TOUCHES:
            return Outcome("too_many_uses")
        for merchant_id, credential_id in command.uses:
            merchant = self.merchants.get(merchant_id)
            if merchant is None or not any(old.id == credential_id for old in credential_sets(merchant)):
                continue  # a set rotated away, or a merchant of another shard: nothing to note
            merchant.credentials = [msgspec.structs.replace(credential, last_used_at=timestamp)
                                    if credential.id == credential_id else credential
                                    for credential in _stored_sets(merchant)]
        return Outcome()

    def admit_signature(self, command: Signed, timestamp: int) -> str:
        """'' for a signed message not seen before (now remembered), else why it is refused."""
        if len(command.message_digest) > MAX_FIELD_CHARS:
            return "signature_invalid"
        self._forget_signatures(timestamp)
        key = (command.merchant_id, command.message_digest)
        if key in self.signatures:
            return SIGNATURE_REPLAYED
        count = self.signatures_by_merchant.get(command.merchant_id, 0)
        if count >= MAX_SIGNATURES_PER_MERCHANT or len(self.signatures) >= MAX_SIGNATURES:
            return SIGNATURE_WINDOW_FULL
        expires_at = min(max(command.expires_at, timestamp + 1), timestamp + MAX_SIGNATURE_WINDOW_NS)
        self.signatures_by_merchant[command.merchant_id] = count + 1
        self.signatures[key] = expires_at
        self.signature_expiries.set(key, expires_at)
        return ""

    def _forget_signatures(self, timestamp: int) -> None:
        for key in self.signature_expiries.pop_due(timestamp):
            merchant_id = key[0]
            del self.signatures[key]
            left = self.signatures_by_merchant[merchant_id] - 1
            if left:
                self.signatures_by_merchant[merchant_id] = left
            else:
                del self.signatures_by_merchant[merchant_id]

    def snapshot(self) -> dict[str, list]:
        return {"signatures": sorted((merchant_id, digest, expires_at)
                                     for (merchant_id, digest), expires_at in self.signatures.items())}

    def restore(self, snapshot) -> None:
        signatures = snapshot.signatures
        self.signatures.load(((merchant_id, digest), expires_at) for merchant_id, digest, expires_at in signatures)
        self.signatures_by_merchant.load(collections.Counter(merchant_id for merchant_id, _, _ in signatures).items())
        self.signature_expiries.load((expires_at, (merchant_id, digest)) for merchant_id, digest, expires_at in signatures)
