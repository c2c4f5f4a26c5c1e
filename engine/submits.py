"""Exactly-once Submits: the ids of recent Submits with their first results, so a re-sent Submit changes nothing.

A sender names each Submit with an id of its own (unique per sending process) and re-sends the same id when it
retries. The sequencer keeps each Submit's commands together in the batch (a `SubmitSpan`), and the engine applies
a span only if its id is not in the window; otherwise it answers the first results again. The window is engine
state: bounded by engine time and by size, oldest first, kept in snapshots and in the state hash, so replay and the
replica answer a duplicate exactly as the primary did.

The size bounds never forget a record younger than `SUBMIT_KEPT_NS`, past any sender's whole retry budget: a
re-sent Submit always finds its record. While the window is full of such records (`has_room` false) the shard
answers new Submits busy before it journals them, so the window holds at most its bounds and the Submits the
shard had queued by then.
"""

import collections

import msgspec

from engine.records import Outcome
from engine.types import NANOSECONDS_PER_SECOND

# Far past any sender's whole retry budget (the shard client's is 10 s by default).
SUBMIT_WINDOW_NS = 10 * 60 * NANOSECONDS_PER_SECOND
# Twice that budget: a record is never forgotten younger than this to make room.
SUBMIT_KEPT_NS = 20 * NANOSECONDS_PER_SECOND
# Busy only past 10,000 Submits/s held for SUBMIT_KEPT_NS (the old bound of 100,000 began forgetting records still
# inside a sender's retry budget at that rate; this one refuses instead).
MAX_SUBMITS = 200_000
# Results held at once: 8 bytes per ledger code, an outcome's encoded size.
MAX_SUBMIT_RESULT_BYTES = 128 << 20
CODE_BYTES = 8
SUBMIT_ID_REUSED = "submit_id_reused"

_outcome_encoder = msgspec.msgpack.Encoder()
_outcome_decoder = msgspec.msgpack.Decoder(Outcome)


class SubmitSpan(msgspec.Struct, array_like=True, gc=False):
    """The next `command_count` commands of a batch came in one Submit named `submit_id` (empty: no id given)."""

    submit_id: bytes
    command_count: int


class SubmitRecord(msgspec.Struct, array_like=True, gc=False):
    """A Submit the engine applied at `created_at`, with what it answered."""

    submit_id: bytes
    created_at: int
    # One per command: a ledger command's codes as they were answered; an Outcome encoded when it was answered
    # (its record changes later).
    results: list[list[int] | bytes]


def spans_cover(spans: list[SubmitSpan], command_count: int) -> bool:
    """Whether the spans split exactly `command_count` commands."""
    return all(span.command_count >= 0 for span in spans) and sum(span.command_count for span in spans) == command_count


def _result_bytes(results: list[list[int] | bytes]) -> int:
    size = 0
    for result in results:
        size += len(result) * CODE_BYTES if type(result) is list else len(result)
    return size


class SubmitWindow:
    """Records of the Submits applied lately, by id and oldest first, within both bounds."""

    def __init__(self) -> None:
        self.records: collections.deque[SubmitRecord] = collections.deque()  # oldest first
        self.by_id: dict[bytes, SubmitRecord] = {}
        self.result_bytes = 0

    def forget_before(self, timestamp: int) -> None:
        """Drop the records that have been in the window for its whole length at `timestamp`."""
        records = self.records
        while records and records[0].created_at + SUBMIT_WINDOW_NS <= timestamp:
            self._forget_oldest()

    def first_results(self, span: SubmitSpan) -> list | None:
        """The first results of the span's Submit if it was applied within the window, else None."""
        if not span.submit_id:
            return None
        record = self.by_id.get(span.submit_id)
        if record is None:
            return None
        if len(record.results) != span.command_count:  # a sender's bug: refuse, rather than guess
            return [Outcome(SUBMIT_ID_REUSED) for _ in range(span.command_count)]
        return [result if type(result) is list else _outcome_decoder.decode(result) for result in record.results]

    def remember(self, submit_id: bytes, results: list, timestamp: int) -> None:
        """Keep the first results of a Submit just applied (nothing, if it named no id)."""
        if not submit_id:
            return
        kept = [result if type(result) is list else _outcome_encoder.encode(result) for result in results]
        self._add(SubmitRecord(submit_id, timestamp, kept))
        while (len(self.records) > MAX_SUBMITS or self.result_bytes > MAX_SUBMIT_RESULT_BYTES) and \
                self._oldest_may_go(timestamp):
            self._forget_oldest()

    def has_room(self, timestamp: int) -> bool:
        """Whether a Submit applied at `timestamp` would be remembered within the bounds, no record too young to
        forget left past them; the shard answers busy when not."""
        within = len(self.records) < MAX_SUBMITS and self.result_bytes < MAX_SUBMIT_RESULT_BYTES
        return within or self._oldest_may_go(timestamp)

    def _oldest_may_go(self, timestamp: int) -> bool:
        return self.records[0].created_at + SUBMIT_KEPT_NS <= timestamp

    def _add(self, record: SubmitRecord) -> None:
        self.records.append(record)
        self.by_id[record.submit_id] = record
        self.result_bytes += _result_bytes(record.results)

    def _forget_oldest(self) -> None:
        record = self.records.popleft()
        del self.by_id[record.submit_id]
        self.result_bytes -= _result_bytes(record.results)

    # State

    def snapshot(self) -> list[SubmitRecord]:
        return list(self.records)

    def restore(self, records: list[SubmitRecord]) -> None:
        for record in records:
            self._add(record)
