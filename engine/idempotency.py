"""Idempotency keys: a merchant's key answers its first outcome again for 24 hours, for the same request only."""

import msgspec

from engine.changes import Changes
from engine.credentials import SIGNATURE_REPLAYED, SIGNATURE_WINDOW_FULL
from engine.records import Idempotent, Outcome
from engine.types import NANOSECONDS_PER_SECOND

IDEMPOTENCY_RETENTION_NS = 24 * 3600 * NANOSECONDS_PER_SECOND
# Refusals of the moment: a retry under the same key (signed anew, or later) must be tried again, not answered them.
ANSWERS_FOR_NOW = ("rate_limited", SIGNATURE_REPLAYED, SIGNATURE_WINDOW_FULL)
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
        """The answer the key already holds for `command` (refused if its request differs); None if it holds none."""
        record = self.records.get((command.merchant_id, command.key))
        if record is None:
            return None
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
