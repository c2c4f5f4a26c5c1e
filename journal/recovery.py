"""Start-up: newest valid snapshot, then the journal tail, with every link checked.

A damaged last entry with no result beside it is a write that never completed,
so never acknowledged: it is dropped. Damage anywhere else (a damaged last entry
that has its result included) stops the shard with a message naming the sequence
number or the snapshot file; nothing is repaired silently.
"""

import logging
import pathlib

import msgspec

from engine import Batch, CreateTransfers, Engine
from engine.check import check
from journal.cold import ColdStore
from journal.store import GENESIS_HASH, CorruptionError, Journal, SnapshotInfo, Snapshots

log = logging.getLogger("paygate.recovery")
NEVER_COMMITTED = "its batch never committed"
RESULTS_MISSING = "taken before its batches' results were written"
batch_decoder = msgspec.msgpack.Decoder(Batch)
batch_encoder = msgspec.msgpack.Encoder()


class RecoveryReport(msgspec.Struct):
    snapshot_sequence: int = 0
    replayed_batches: int = 0
    replayed_transfers: int = 0
    dropped_tail_entries: int = 0
    skipped_snapshots: list[str] = msgspec.field(default_factory=list)


def load_snapshot(journal: Journal, snapshots: Snapshots, report: RecoveryReport,
                  paths: list[pathlib.Path] | None = None) -> tuple[Engine, int, bytes]:
    """The engine from the newest snapshot (of `paths`, default all) that the journal vouches for, or an empty one."""
    results_through = journal.last_result_sequence()
    for path in snapshots.paths() if paths is None else paths:
        try:
            info, payload = snapshots.load(path)
        except CorruptionError as error:
            log.error("skipping damaged %s", error)
            report.skipped_snapshots.append(str(error))
            continue
        if info.durable_sequence > journal.head_sequence:
            raise CorruptionError(f"snapshot {path.name} was taken when the journal held entries through "
                                  f"{info.durable_sequence}, but it ends at {journal.head_sequence}: entries were lost",
                                  journal.head_sequence + 1)
        if journal.entry_hash_at(info.sequence) != info.entry_hash:  # none there, when it is ahead of the journal
            report.skipped_snapshots.append(f"snapshot {path.name}: {_not_in_journal(journal, info)}")
            continue
        if 0 < results_through < info.sequence:
            # Replay recomputes only the results of batches after the snapshot: these would be missing for good.
            report.skipped_snapshots.append(f"snapshot {path.name}: {RESULTS_MISSING}")
            continue
        engine = Engine.restore(payload)
        if engine.sequence != info.sequence:
            raise CorruptionError(f"snapshot {path.name} holds batch {engine.sequence}, its header says {info.sequence}",
                                  info.sequence)
        report.snapshot_sequence = info.sequence
        return engine, info.sequence + 1, info.entry_hash
    first = journal.first_sequence()
    if first != 1:
        raise CorruptionError(f"journal starts at entry {first} but no valid snapshot covers the entries before it", first)
    return Engine(), 1, GENESIS_HASH


def _not_in_journal(journal: Journal, info: SnapshotInfo) -> str:
    """Why a snapshot's batch is not in the journal. Taken before that batch was durable, with every entry it knew
    durable still there: the batch was lost to a crash (never acknowledged), and another may since have taken its
    number. Anything else: another journal's snapshot, or this journal lost or rewrote entries."""
    ahead = info.sequence > journal.head_sequence
    if info.durable_sequence < info.sequence and journal.hash_through(info.durable_sequence) == info.durable_hash:
        return f"ahead of the journal ({NEVER_COMMITTED})" if ahead else \
            f"not in this journal ({NEVER_COMMITTED}; another took its number)"
    return "not in this journal"


def replay(engine: Engine, journal: Journal, start: int, previous_hash: bytes, report: RecoveryReport,
           until_sequence: int | None = None, on_batch=None, cold: ColdStore | None = None) -> None:
    """Apply checked journal entries from `start` (through `until_sequence`) to the engine; what they archive is
    written to `cold` again (a crash may have come before it was)."""
    for entry in journal.scan(start, previous_hash):
        if until_sequence is not None and entry.sequence > until_sequence:
            return
        batch = batch_decoder.decode(entry.payload)
        report.replayed_transfers += sum(len(c.transfers) for c in batch.commands if type(c) is CreateTransfers)
        result = engine.apply(batch)
        for failure in engine.failures:  # logged when first applied; said again so a replay's reader knows
            log.warning("batch %d, command %d (%s) raised %s on replay: undone, as when it was first applied",
                        failure.sequence, failure.index, failure.command, failure.error)
        report.replayed_batches += 1
        if cold is not None and engine.archived:
            cold.keep(engine.archived)
        if on_batch is not None:
            on_batch(entry, result, engine.archived)


def replay_from_scratch(journal: Journal, on_batch=None) -> tuple[Engine, RecoveryReport]:
    """A fresh engine fed every entry from the first: what the journal alone says."""
    first = journal.first_sequence()
    if first != 1:
        raise CorruptionError(f"journal starts at entry {first}: pruned, so it cannot be replayed from scratch", first)
    engine = Engine()
    report = RecoveryReport()
    replay(engine, journal, 1, GENESIS_HASH, report, on_batch=on_batch)
    return engine, report


def recover(journal: Journal, snapshots: Snapshots, cold: ColdStore | None = None) -> tuple[Engine, RecoveryReport]:
    """Rebuild the engine from the newest usable snapshot and the journal tail (and the cold store with it)."""
    report = RecoveryReport()
    engine, start, previous_hash = load_snapshot(journal, snapshots, report)
    journal.check_through(start - 1)  # not replayed, but damage there must stop start-up all the same
    missing_results = []

    def keep_missing_result(entry, result, archived) -> None:
        # A replica writes results after acknowledging; a crash in between leaves them to replay.
        if not journal.has_result(entry.sequence):
            missing_results.append((entry.sequence, batch_encoder.encode(result)))

    try:
        replay(engine, journal, start, previous_hash, report, on_batch=keep_missing_result, cold=cold)
    except CorruptionError as error:
        # Only a last entry that was never applied can be a torn write nobody heard of: a stored result says the
        # batch was applied, and its answers may have left.
        if not error.damaged_record or error.sequence != journal.head_sequence or journal.has_result(error.sequence):
            raise
        log.warning("dropping torn last entry: %s", error)
        report.dropped_tail_entries = journal.truncate_after(error.sequence - 1)
    check(engine.sequence == journal.head_sequence, f"replayed to {engine.sequence}, the journal ends at "
                                                     f"{journal.head_sequence}")
    journal.write_results(missing_results)
    return engine, report
