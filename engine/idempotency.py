"""Idempotency keys: a merchant's key answers its first outcome again for 24 hours, for the same request only.

A shard keeps at most MAX_IDEMPOTENCY_KEYS: a new key past that is refused for now (`idempotency_keys_full`), never
one forgotten early. The tiers' rate limits keep a merchant's day of keys well below it.
"""

import msgspec

from engine.changes import Changes
from engine.credentials import SIGNATURE_REPLAYED, SIGNATURE_WINDOW_FULL
from engine.records import Idempotent, Outcome
from engine.types import NANOSECONDS_PER_SECOND

IDEMPOTENCY_RETENTION_NS = 24 * 3600 * NANOSECONDS_PER_SECOND
MAX_IDEMPOTENCY_KEYS = 2_000_000  # a day of the premium tier's 1,000 a minute is 1.44 million
IDEMPOTENCY_KEYS_FULL = "idempotency_keys_full"
# Refusals of the moment: a retry under the same key (signed anew, or later) must be tried again, not answered them.
ANSWERS_FOR_NOW = ("rate_limited", SIGNATURE_REPLAYED, SIGNATURE_WINDOW_FULL, IDEMPOTENCY_KEYS_FULL)
_outcome_encoder = msgspec.msgpack.Encoder()
_outcome_decoder = msgspec.msgpack.Decoder(Outcome)


class IdempotencyRecord(msgspec.Struct, array_like=True):
    request_hash: str
    outcome: bytes  # the first outcome, encoded as it was then
    created_at: int


class IdempotencyKeys:
    def __init__(self, changes: Changes) -> None:
        # (merchant id, key) -> record, oldest first: pruned from the front as time passes.
        self.records: dict[tuple[str, str], IdempotencyRecord] = changes.dict()

    def first_outcome(self, command: Idempotent) -> Outcome | None:
        """The answer the key already holds for `command` (refused if its request differs, or if it is new and no
        more keys fit); None if the command is to run."""
        record = self.records.get((command.merchant_id, command.key))
        if record is None:
            return Outcome(IDEMPOTENCY_KEYS_FULL) if len(self.records) >= MAX_IDEMPOTENCY_KEYS else None
        if record.request_hash != command.request_hash:
            return Outcome("idempotency_key_reused")
        outcome = _outcome_decoder.decode(record.outcome)
        outcome.replayed = True
        return outcome

    def remember(self, command: Idempotent, outcome: Outcome, timestamp: int) -> None:
        if outcome.code not in ANSWERS_FOR_NOW:  # a refusal for now is not the request's answer for 24 hours
            self.records[(command.merchant_id, command.key)] = IdempotencyRecord(
                command.request_hash, _outcome_encoder.encode(outcome), timestamp)

    def forget_before(self, timestamp: int) -> None:
        """Forget the keys past retention at `timestamp`."""
        records = self.records
        while records:
            key = next(iter(records))
            if records[key].created_at + IDEMPOTENCY_RETENTION_NS > timestamp:
                break
            del records[key]

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"idempotency": [(merchant_id, key, record) for (merchant_id, key), record in self.records.items()]}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot."""
        self.records.load(((merchant_id, key), record) for merchant_id, key, record in snapshot.idempotency)
