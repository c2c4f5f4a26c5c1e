"""The shard's snapshots: forked when due, reaped without blocking, older ones (and, if asked, the journal they
cover) removed."""

import gc
import logging
import os
import time

from engine import Engine
from engine.check import check
from journal.store import Journal, Snapshots

log = logging.getLogger("paygate.shard")


class Snapshotter:
    def __init__(self, journal: Journal, snapshots: Snapshots, sequence: int, every_batches: int, every_s: float,
                 keep: int, prune_journal: bool) -> None:
        self.journal = journal
        self.snapshots = snapshots
        self.every_batches = every_batches
        self.every_s = every_s
        self.keep = keep
        self.prune_journal = prune_journal
        self.last_sequence = sequence
        self.last_time = time.monotonic()
        self.child = 0

    def maybe_take(self, engine: Engine, entry_hash: bytes, durable_sequence: int) -> None:
        """Fork a snapshot when due; `entry_hash` is the hash of the journal entry last applied."""
        self.reap(block=False, durable_sequence=durable_sequence)
        due = (engine.sequence - self.last_sequence >= self.every_batches
               or time.monotonic() - self.last_time >= self.every_s)
        if not due or self.child or engine.sequence == self.last_sequence:
            return
        self.last_sequence = engine.sequence
        self.last_time = time.monotonic()
        durable = min(durable_sequence, engine.sequence)
        # Durable entries stay until a snapshot past them is kept, so the journal holds this one.
        durable_hash = entry_hash if durable == engine.sequence else self.journal.hash_through(durable)
        check(durable_hash is not None, f"journal entry {durable} is durable but not in the journal")
        paused_at = time.perf_counter()
        # Objects the collector never visits are never copied by the child's writes.
        gc.freeze()
        self.child = take_snapshot_in_child(engine, entry_hash, self.snapshots, (durable, durable_hash))
        log.info("snapshot of batch %d forked; the writer paused %.1f ms", engine.sequence,
                 (time.perf_counter() - paused_at) * 1000)

    def reap(self, block: bool, durable_sequence: int) -> None:
        if not self.child:
            return
        pid, status = os.waitpid(self.child, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        self.child = 0
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("snapshot child failed with status %d", status)
            return
        self.snapshots.remove_older_than(self.keep)
        kept = self.snapshots.paths()
        if self.prune_journal and len(kept) >= self.keep:
            oldest = self.snapshots.load(kept[-1])[0].sequence
            if oldest <= durable_sequence:
                self.journal.prune_before(oldest)


def take_snapshot_in_child(engine: Engine, entry_hash: bytes, snapshots: Snapshots, durable: tuple[int, bytes]) -> int:
    """Fork: the child writes the engine as of now (copy-on-write) while the parent goes on; `durable` is the
    journal's durable head then, and its entry's hash."""
    sequence = engine.sequence
    pid = os.fork()
    if pid:
        return pid
    try:
        snapshots.write(sequence, entry_hash, engine.snapshot(), durable)
        os._exit(0)
    except BaseException:
        os._exit(1)
