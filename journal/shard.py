"""The shard process: one engine, its sequencer, its journal and its replication.

One event loop thread owns the engine (the single writer). Requests arrive on
an nng socket read from the loop (journal/replier.py) and wait in one
bounded queue. The loop takes what is queued, stamps it as one batch (sequence
and time), chains it into the journal and hands the entry to the journal thread
(one LMDB transaction and one fsync for every batch queued meanwhile: group
commit) and to the replica, then applies it while they work. A batch's results
follow its entry into the journal later (recovery recomputes any a crash lost).
A batch's replies, and those of reads that saw it, leave only once it is durable
here and, in sync mode, on the replica.
"""

import asyncio
import collections
import concurrent.futures
import gc
import json
import logging
import os
import pathlib
import signal
import sys
import time

import msgspec
import pynng

from engine import Engine
from engine.machine import ADVANCE
from journal import logs
from journal.auth import load_key
from journal.cold import ColdStore
from journal.intake import Intake
from journal.recovery import recover
from journal.replication import ReplicaLink, ReplicationSender
from journal.sequencer import Round, Sequencer
from journal.snapshotter import Snapshotter
from journal.store import CorruptionError, Entry, Journal, Snapshots
from journal.wire import ANNOUNCEMENT, MAX_BATCH_ITEMS, Reply, ReplyStatus, reply_encoder

log = logging.getLogger("paygate.shard")
EXIT_DAMAGED = 65  # EX_DATAERR: the journal or a snapshot is damaged
ADVANCE_FAILURE_LOG_INTERVAL_S = 60.0


class ShardConfig(msgspec.Struct, kw_only=True):
    data: str
    client_address: str
    # The data folder's message key (journal/auth.py): every message to and from this shard carries its proof.
    key_file: str
    # Replica: where it listens for its primary. Primary: its replica's address, if any.
    replication_address: str = ""
    replica_address: str = ""
    announce_address: str = ""
    role: str = "primary"
    sync_replication: bool = True
    snapshot_every_batches: int = 20_000
    snapshot_every_s: float = 600.0
    keep_snapshots: int = 2
    prune_journal: bool = False
    max_queue_items: int = 262_144
    max_batch_items: int = MAX_BATCH_ITEMS
    max_unreleased_batches: int = 256
    max_replicate_bytes: int = 32 << 20
    max_read_entries: int = 1024
    # Requests held at once (queued, or waiting to be durable); past it a request is answered "busy" at once.
    max_requests: int = 4096
    # How long a reply may wait for its client's connection to take it (journal/replier.py).
    reply_timeout_ms: int = 1000
    heartbeat_ms: int = 250
    replica_timeout_ms: int = 2_000
    auto_promote_ms: int = 0
    # End-of-day archival (engine/archival.py): records ended this long ago leave memory for the cold store; the
    # primary sends an Archive command every archive_every_s, and again at once while one finds more (0: never).
    archive_after_s: int = 86_400
    archive_every_s: float = 60.0


class Shard:
    """The shard's state and its lifecycle; each role works on it from a module of its own: the intake
    (journal/intake.py), the sequencer (journal/sequencer.py), snapshots (journal/snapshotter.py) and both sides of
    replication (journal/replication.py). Durability, the release of replies and fencing are here."""

    def __init__(self, config: ShardConfig) -> None:
        self.config = config
        self.folder = pathlib.Path(config.data)
        self.key = load_key(config.key_file, f"shard {config.data}")
        self.journal = Journal(self.folder)
        self.cold = ColdStore(self.folder)
        snapshots = Snapshots(self.folder)
        self.engine, report = recover(self.journal, snapshots, self.cold)
        log.info("recovered %s", msgspec.json.encode(report).decode())
        self.epoch = self.journal.epoch
        self.role = config.role
        self.durable_sequence = self.journal.head_sequence
        self.replica_sequence = self.journal.head_sequence if not config.replica_address else 0
        self.queue: collections.deque = collections.deque()
        self.queue_items = 0
        self.rounds: collections.deque[Round] = collections.deque()
        self.unwritten: list[Entry] = []
        self.unwritten_results: list[tuple[int, bytes]] = []
        # The results of the entries in `recent`, by sequence: readers near the head (the followers) get both from
        # memory, on disk or not yet.
        self.recent_results: dict[int, bytes] = {}
        # The last batch holding deliveries queued or moved not yet announced (0: none): the write that makes it
        # durable announces. A sequence, not a flag: a write of older entries or results must not take its turn.
        self.announce_through = 0
        # The newest entries, kept to send without a disk read (to the replica, to followers).
        self.recent: collections.deque = collections.deque(maxlen=config.max_unreleased_batches * 2)
        self.snapshotter = Snapshotter(self.journal, snapshots, self.engine.sequence, config.snapshot_every_batches,
                                       config.snapshot_every_s, config.keep_snapshots, config.prune_journal)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self.failure_log = _FailureLog()
        self.intake = Intake(self)
        self.sequencer = Sequencer(self)
        self.replica_link = ReplicaLink(self)
        self.stopping = False
        gc.freeze()

    # Lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.work = asyncio.Event()
        self.to_write = asyncio.Event()
        self.to_replicate = asyncio.Event()
        self.released = asyncio.Event()
        self.stopped = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, self.stop)
        self.intake.open()
        self.announce_socket = pynng.Pub0(listen=self.config.announce_address, send_timeout=0) if self.config.announce_address else None
        tasks = [_critical(self.sequencer.run()), _critical(self._write()), asyncio.create_task(self.sequencer.tick())]
        if self.role == "replica":
            tasks += self.replica_link.tasks(_critical)
        if self.config.replica_address:
            tasks.append(asyncio.create_task(ReplicationSender(self).run()))
        self.write_status_file()
        log.info("shard %s serving as %s at epoch %d, sequence %d", self.folder, self.role, self.epoch, self.engine.sequence)
        await self.stopped.wait()
        await self._drain()
        # pynng can swallow a cancel that lands as a send or receive completes: cancel until all are gone.
        pending = set(tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        self._close()

    def stop(self) -> None:
        self.stopping = True
        self.stopped.set()

    async def _drain(self) -> None:
        """Let committed work finish (bounded), so a clean stop leaves nothing half-said."""
        deadline = time.monotonic() + 5
        while (self.unwritten or self.unwritten_results or self.rounds) and time.monotonic() < deadline:
            self.to_write.set()
            await asyncio.sleep(0.01)

    def _close(self) -> None:
        self.intake.close()
        self.replica_link.close()
        if self.announce_socket is not None:
            self.announce_socket.close()
        self.executor.shutdown(wait=True)
        self.snapshotter.reap(block=True, durable_sequence=self.durable_sequence)
        self.journal.close()
        self.cold.close()

    def apply(self, batch):
        """Apply a batch; what it archived is in the cold store before anything (a snapshot) can follow it."""
        result = self.engine.apply(batch)
        self.failure_log.log(self.engine)
        if self.engine.archived:
            self.cold.keep(self.engine.archived)
        return result

    def keep_result(self, sequence: int, encoded: bytes) -> None:
        """Keep a result to write, and beside its entry in `recent`, as many as that holds."""
        self.unwritten_results.append((sequence, encoded))
        recent_results = self.recent_results
        recent_results[sequence] = encoded
        if len(recent_results) > self.recent.maxlen:
            del recent_results[next(iter(recent_results))]
        self.to_write.set()

    def write_status_file(self) -> None:
        status = {"pid": os.getpid(), "client_address": self.config.client_address, "role": self.role,
                  "replication_address": self.config.replication_address, "key_file": self.config.key_file}
        temporary = self.folder / "shard.json.tmp"
        temporary.write_text(json.dumps(status))
        os.replace(temporary, self.folder / "shard.json")

    def reply(self, status: int, message: str = "") -> bytes:
        return reply_encoder.encode(Reply(status, self.epoch, self.engine.sequence, message=message))

    # Durability and release

    async def _write(self) -> None:
        """Group commit: every entry and result queued meanwhile in one LMDB transaction and one fsync."""
        loop = asyncio.get_running_loop()
        while True:
            await self.to_write.wait()
            self.to_write.clear()
            if not self.unwritten and not self.unwritten_results:
                continue
            entries, self.unwritten = self.unwritten, []
            results, self.unwritten_results = self.unwritten_results, []
            await loop.run_in_executor(self.executor, self.journal.write, entries, results)
            if entries:
                self.durable_sequence = entries[-1].sequence
                self.release()
            self.announce()

    def announce(self) -> None:
        """Wake the notifier once what it follows is durable; a commit with nothing for it wakes nobody."""
        if self.announce_socket is None or not self.announce_through or self.durable_sequence < self.announce_through:
            return
        self.announce_through = 0
        try:
            self.announce_socket.send(self.key.seal(ANNOUNCEMENT.pack(self.durable_sequence)), block=False)
        except pynng.NNGException:
            pass  # Announcements only wake readers; a reader that misses one polls.

    def release(self) -> None:
        """Answer every round whose batch is durable here and, in sync mode, on the replica."""
        watermark = self.durable_sequence
        if self.config.replica_address and self.config.sync_replication:
            watermark = min(watermark, self.replica_sequence)
        rounds = self.rounds
        while rounds and rounds[0].sequence <= watermark:
            for future, reply in rounds.popleft().replies:
                if not future.done():
                    future.set_result(reply)
        self.released.set()

    def fence(self, epoch: int) -> None:
        """A higher epoch exists: this process must never write again."""
        log.error("fenced: epoch %d is above ours (%d); refusing writes", epoch, self.epoch)
        self.role = "fenced"
        self.epoch = epoch
        self.refuse_rounds()
        while self.queue:
            _, _, future, _ = self.queue.popleft()
            future.set_result(self.reply(ReplyStatus.NOT_PRIMARY))
        self.queue_items = 0
        self.write_status_file()

    def refuse_rounds(self) -> None:
        for round_ in self.rounds:
            for future, _ in round_.replies:
                if not future.done():
                    future.set_result(self.reply(ReplyStatus.NOT_PRIMARY))
        self.rounds.clear()


class _FailureLog:
    """Says what the engine undid, a bug to fix and never a reason to stop serving: each command in one line; a
    failed advance of time, which every later batch meets again until the bug is fixed, once a minute at most."""

    def __init__(self) -> None:
        self.advance_failing = False  # the last batch's advance of time was undone
        self.advance_logged_at = -ADVANCE_FAILURE_LOG_INTERVAL_S
        self.advance_repeats = 0

    def log(self, engine: Engine) -> None:
        self.advance_failing = False
        for failure in engine.failures:
            if failure.command == ADVANCE:
                self.advance_failing = True
                if time.monotonic() - self.advance_logged_at < ADVANCE_FAILURE_LOG_INTERVAL_S:
                    self.advance_repeats += 1
                    continue
                self.advance_logged_at = time.monotonic()
                log.critical("batch %d: advancing time raised %s: undone (%d times since the last line); each "
                             "batch tries again, commands apply", failure.sequence, failure.error, self.advance_repeats)
                self.advance_repeats = 0
                continue
            log.critical("batch %d, command %d (%s) raised %s: undone and answered internal_error; serving on",
                         failure.sequence, failure.index, failure.command, failure.error)


def _critical(coroutine) -> asyncio.Task:
    """A task the shard cannot live without: if it fails (an engine invariant, a disk error), the process stops."""

    def check(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("stopping: %r", task.exception(), exc_info=task.exception())
            logging.shutdown()
            os._exit(70)

    task = asyncio.create_task(coroutine)
    task.add_done_callback(check)
    return task


def main(argv: list[str] | None = None) -> None:
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(description="Run one shard process (primary or replica).")
    parser.add_argument("config", help="the shard's configuration as JSON (a ShardConfig)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    config = msgspec.json.decode(args.config, type=ShardConfig)
    try:
        shard = Shard(config)
    except CorruptionError as error:  # damaged data is named, never repaired: an operator must look
        log.critical("cannot start on %s: %s", config.data, error)
        logging.shutdown()
        sys.exit(EXIT_DAMAGED)
    uvloop.run(shard.run())


if __name__ == "__main__":
    main()
