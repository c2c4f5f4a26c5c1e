"""The shard process: one engine, its sequencer, its journal and its replication.

One event loop thread owns the engine (the single writer). Requests arrive on
a raw nng socket read from the loop (journal/replier.py) and wait in one
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

from engine import Batch, Engine
from engine.machine import ADVANCE, ERROR_MAX_CHARS, PROCESS_FAULTS
from engine.submits import SubmitSpan
from journal import logs
from journal.recovery import batch_decoder, batch_encoder, recover
from journal.replier import Replier
from journal.store import KEY, CorruptionError, Entry, Journal, Snapshots
from journal.wire import (
    MAX_BATCH_ITEMS,
    SUBMIT_ID_MAX_BYTES,
    JournaledBatch,
    Promote,
    Read,
    ReadEntries,
    Replicate,
    Reply,
    ReplyStatus,
    ShardStatus,
    Status,
    StoredEntry,
    Submit,
    command_items,
    received_submit_decoder,
    reply_decoder,
    reply_encoder,
    request_decoder,
    request_encoder,
)

log = logging.getLogger("paygate.shard")
EXIT_DAMAGED = 65  # EX_DATAERR: the journal or a snapshot is damaged
TICK_S = 0.25
ADVANCE_FAILURE_LOG_INTERVAL_S = 60.0
result_encoder = msgspec.msgpack.Encoder()


class ShardConfig(msgspec.Struct, kw_only=True):
    data: str
    client_address: str
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
    # Replies nng is still sending: those of held requests and every "busy" beside them, so well past max_requests.
    max_replies_in_flight: int = 16_384
    reply_timeout_ms: int = 1000
    heartbeat_ms: int = 250
    replica_timeout_ms: int = 2_000
    auto_promote_ms: int = 0


class _Round(msgspec.Struct):
    """Replies that may leave once `sequence` is durable (and replicated, in sync mode)."""

    sequence: int
    replies: list[tuple[asyncio.Future, bytes]]


class Shard:
    def __init__(self, config: ShardConfig) -> None:
        self.config = config
        self.folder = pathlib.Path(config.data)
        self.journal = Journal(self.folder)
        self.snapshots = Snapshots(self.folder)
        self.engine, report = recover(self.journal, self.snapshots)
        log.info("recovered %s", msgspec.json.encode(report).decode())
        self.epoch = self.journal.epoch
        self.role = config.role
        self.durable_sequence = self.journal.head_sequence
        self.replica_sequence = self.journal.head_sequence if not config.replica_address else 0
        self.queue: collections.deque = collections.deque()
        self.queue_items = 0
        self.rounds: collections.deque[_Round] = collections.deque()
        self.unwritten: list[Entry] = []
        self.unwritten_results: list[tuple[int, bytes]] = []
        # Results of applied batches not yet on disk, by sequence: readers get them from here meanwhile.
        self.results_in_flight: dict[int, bytes] = {}
        # Entries not yet acknowledged by the replica, kept to send without a disk read.
        self.recent: collections.deque = collections.deque(maxlen=config.max_unreleased_batches * 2)
        # Replica: entries durable and acknowledged, not yet applied.
        self.replicated: collections.deque = collections.deque()
        self.last_snapshot_sequence = self.engine.sequence
        self.last_snapshot_time = time.monotonic()
        self.snapshot_child = 0
        self.last_heard_from_primary = time.monotonic()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self.failure_log = _FailureLog()
        self.stopping = False
        gc.freeze()

    # Lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.work = asyncio.Event()
        self.written = asyncio.Event()
        self.to_write = asyncio.Event()
        self.to_replicate = asyncio.Event()
        self.to_apply = asyncio.Event()
        self.released = asyncio.Event()
        self.stopped = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, self.stop)
        self.replier = Replier(self.config.client_address, self.config.reply_timeout_ms,
                               self.config.max_replies_in_flight)
        self.held_requests: set[asyncio.Task] = set()
        loop.add_reader(self.replier.receive_fd, self._on_requests)
        self.announce_socket = pynng.Pub0(listen=self.config.announce_address, send_timeout=0) if self.config.announce_address else None
        self.replication_socket = self.replication_context = None
        tasks = [_critical(self._sequence()), _critical(self._write()), asyncio.create_task(self._tick())]
        if self.role == "replica":
            self.replication_socket = pynng.Rep0(listen=self.config.replication_address)
            self.replication_context = self.replication_socket.new_context()
            tasks.append(_critical(self._serve_replication(self.replication_context)))
            tasks.append(_critical(self._apply_replicated()))
            if self.config.auto_promote_ms:
                tasks.append(asyncio.create_task(self._watch_primary()))
        if self.config.replica_address:
            tasks.append(asyncio.create_task(self._replicate()))
        self._write_status_file()
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
        asyncio.get_running_loop().remove_reader(self.replier.receive_fd)
        for task in self.held_requests:
            task.cancel()
        self.replier.close()
        # A context before its socket: nng refuses to close a context of a closed socket.
        for each in (self.replication_context, self.replication_socket, self.announce_socket):
            if each is not None:
                each.close()
        self.executor.shutdown(wait=True)
        self._reap_snapshot(block=True)
        self.journal.close()

    def _write_status_file(self) -> None:
        status = {"pid": os.getpid(), "client_address": self.config.client_address, "role": self.role,
                  "replication_address": self.config.replication_address}
        temporary = self.folder / "shard.json.tmp"
        temporary.write_text(json.dumps(status))
        os.replace(temporary, self.folder / "shard.json")

    # Requests

    def _on_requests(self) -> None:
        """Take every request waiting on the client socket; each is answered by a task of its own."""
        loop = asyncio.get_running_loop()
        while (received := self.replier.receive()) is not None:
            header, message = received
            if len(self.held_requests) >= self.config.max_requests:
                self._send_reply(header, self._reply(ReplyStatus.BUSY))
                continue
            task = loop.create_task(self._serve(header, message))
            self.held_requests.add(task)
            task.add_done_callback(self.held_requests.discard)

    async def _serve(self, header: bytes, message: bytes) -> None:
        self._send_reply(header, await self._answer(message))

    def _send_reply(self, header: bytes, reply: bytes) -> None:
        if not self.replier.reply(header, reply):  # clients that stopped reading: they will ask again
            log.warning("a reply of %d bytes dropped: %d replies still under way", len(reply),
                        self.config.max_replies_in_flight)

    async def _answer(self, message: bytes) -> bytes:
        try:
            request = request_decoder.decode(message)
        except msgspec.DecodeError as error:
            return self._reply(ReplyStatus.INVALID, message=str(error))
        kind = type(request)
        if kind is Status:
            return reply_encoder.encode(Reply(ReplyStatus.OK, self.epoch, self.engine.sequence, shard_status=self._status(request)))
        if kind is Promote:
            if self.role != "replica":
                # Nothing to do, and the operator must know: they may have named the wrong folder.
                state = "already the primary" if self.role == "primary" else "fenced (a newer primary exists)"
                return self._reply(ReplyStatus.INVALID, message=f"not promoted: this shard is {state}, epoch {self.epoch}")
            self._promote("requested")
            return self._reply(ReplyStatus.OK)
        if kind is ReadEntries:
            return self._read_entries(request)
        if self.role != "primary":
            return self._reply(ReplyStatus.NOT_PRIMARY)
        if kind is Replicate:
            return self._reply(ReplyStatus.INVALID, message="replication goes to the replication address")
        items = _item_count(request) if kind is Submit else len(request.queries) if kind is Read else 1
        if items > self.config.max_batch_items:
            return self._reply(ReplyStatus.INVALID, message=f"more than {self.config.max_batch_items} items")
        if kind is Submit and len(request.submit_id) > SUBMIT_ID_MAX_BYTES:
            return self._reply(ReplyStatus.INVALID, message=f"a submit id longer than {SUBMIT_ID_MAX_BYTES} bytes")
        if self.queue_items + items > self.config.max_queue_items:
            return self._reply(ReplyStatus.BUSY)
        # A Submit decoded once more, as raw commands (a skim): those bytes are what the journal keeps.
        received = received_submit_decoder.decode(message).commands if kind is Submit else None
        future = asyncio.get_running_loop().create_future()
        self.queue.append((request, items, future, received))
        self.queue_items += items
        self.work.set()
        return await future

    def _reply(self, status: int, message: str = "") -> bytes:
        return reply_encoder.encode(Reply(status, self.epoch, self.engine.sequence, message=message))

    def _status(self, request: Status) -> ShardStatus:
        return ShardStatus(
            role=self.role,
            epoch=self.epoch,
            sequence=self.engine.sequence,
            durable_sequence=self.durable_sequence,
            replica_sequence=self.replica_sequence,
            state_hash=self.engine.state_hash() if request.with_state_hash else "",
            queue_items=self.queue_items,
            check=self._check() if request.with_check else "",
        )

    def _check(self) -> str:
        try:
            self.engine.verify()
        except AssertionError as error:
            return f"failed: {error}"
        return "ok"

    def _read_entries(self, request: ReadEntries) -> bytes:
        first = self.journal.first_sequence()
        if request.start_sequence < first:  # never skip silently past what a reader has not seen
            return self._reply(ReplyStatus.INVALID, f"entries before {first} were pruned; the reader asked for "
                                                    f"{request.start_sequence}")
        limit = max(1, min(request.limit, self.config.max_read_entries))
        pairs = self.journal.read_results(request.start_sequence, limit)
        entries = [StoredEntry(entry.sequence, entry.payload, msgspec.Raw(result)) for entry, result in pairs]
        entries += self._entries_in_flight(pairs[-1][0].sequence + 1 if pairs else request.start_sequence,
                                           limit - len(entries))
        return reply_encoder.encode(Reply(ReplyStatus.OK, self.epoch, self.durable_sequence, entries=entries))

    def _entries_in_flight(self, sequence: int, limit: int) -> list[StoredEntry]:
        """Durable entries whose results are still on their way to the disk, from memory: a crash now would only
        make recovery compute the same results again."""
        found = []
        recent = self.recent
        while (len(found) < limit and sequence <= self.durable_sequence and sequence in self.results_in_flight
               and recent and recent[0].sequence <= sequence):
            entry = recent[sequence - recent[0].sequence]
            found.append(StoredEntry(sequence, entry.payload, msgspec.Raw(self.results_in_flight[sequence])))
            sequence += 1
        return found

    # The single writer

    async def _sequence(self) -> None:
        while True:
            await self.work.wait()
            self.work.clear()
            while self.queue:
                while len(self.rounds) >= self.config.max_unreleased_batches:
                    self.released.clear()
                    await self.released.wait()
                submits, reads = self._take()
                batch = self._journal_batch(submits) if submits else None
                if batch is not None:
                    # One turn of the loop: the journal thread and the replicator take the entry before the engine
                    # holds the loop to apply it.
                    await asyncio.sleep(0)
                self._apply_round(batch, submits, reads)
                self._maybe_snapshot(self.journal.prepared_hash)
                # Let replies, the journal and the replicator run between rounds.
                await asyncio.sleep(0)

    async def _tick(self) -> None:
        """Time moves only with batches: when something is due and nothing arrives, send an empty one."""
        while True:
            await asyncio.sleep(TICK_S)
            deadline = self.engine.next_deadline()
            due = deadline is not None and deadline <= time.time_ns()
            # An advance that raised stays due: batches that carry commands try it again, empty ones would only repeat.
            if self.role == "primary" and not self.queue and due and not self.failure_log.advance_failing:
                self.queue.append((Submit([]), 0, asyncio.get_running_loop().create_future(), []))
                self.work.set()

    def _journal_batch(self, submits: list) -> Batch:
        """Stamp the submits as the next batch, chain it into the journal and queue it for the disk and the replica."""
        commands = [command for request, _, _ in submits for command in request.commands]
        # Each Submit's commands stay together under its id, so the engine can tell a re-sent one.
        spans = [SubmitSpan(request.submit_id, len(request.commands)) for request, _, _ in submits if request.commands]
        batch = Batch(self.engine.sequence + 1, max(time.time_ns(), self.engine.timestamp + 1), commands, spans)
        received = [command for _, _, raw_commands in submits for command in raw_commands]
        journaled = JournaledBatch(batch.sequence, batch.timestamp, received, spans)
        entry = self.journal.prepare(batch.sequence, batch_encoder.encode(journaled))
        self.unwritten.append(entry)
        self.recent.append(entry)
        self.to_write.set()
        self.to_replicate.set()
        return batch

    def _apply_round(self, batch: Batch | None, submits: list, reads: list) -> None:
        """Apply the batch, answer the reads after it, and queue the replies until the batch is durable."""
        replies: list[tuple[asyncio.Future, bytes]] = []
        if batch is not None:
            result = self.engine.apply(batch)
            self.failure_log.log(self.engine)
            encoded = result_encoder.encode(result)
            self.unwritten_results.append((batch.sequence, encoded))
            self.results_in_flight[batch.sequence] = encoded
            self.to_write.set()
            start = 0
            for request, future, _ in submits:
                count = len(request.commands)
                reply = Reply(ReplyStatus.OK, self.epoch, batch.sequence, results=result.results[start : start + count])
                replies.append((future, reply_encoder.encode(reply)))
                start += count
        for request, future in reads:
            replies.append((future, self._answer_read(request)))
        self.rounds.append(_Round(self.engine.sequence, replies))
        if self.role != "primary":  # fenced while the batch was on its way: its replies can never be released
            self._refuse_rounds()
        self._release()

    def _answer_read(self, request: Read) -> bytes:
        """The answers to a read; one that raises (a bug: reads change nothing) is refused, logged, and forgotten."""
        try:
            answers = [self.engine.query(query) for query in request.queries]
        except PROCESS_FAULTS:
            raise
        except Exception as error:
            log.critical("a read (%d queries) raised %s: refused; serving on", len(request.queries),
                         repr(error)[:ERROR_MAX_CHARS])
            return self._reply(ReplyStatus.INVALID, message="the read failed; the shard logged why")
        return reply_encoder.encode(Reply(ReplyStatus.OK, self.epoch, self.engine.sequence, answers=answers))

    def _take(self) -> tuple[list, list]:
        submits, reads = [], []
        taken = 0
        queue = self.queue
        while queue and (taken == 0 or taken + queue[0][1] <= self.config.max_batch_items):
            request, items, future, received = queue.popleft()
            taken += items
            self.queue_items -= items
            if type(request) is Submit:
                submits.append((request, future, received))
            else:
                reads.append((request, future))
        return submits, reads

    def _release(self) -> None:
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

    # Durability

    async def _write(self) -> None:
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
                self._release()
            for sequence, _ in results:
                del self.results_in_flight[sequence]
            self._announce()

    def _announce(self) -> None:
        if self.announce_socket is None:
            return
        try:
            self.announce_socket.send(KEY.pack(self.durable_sequence), block=False)
        except pynng.NNGException:
            pass  # Announcements only wake readers; a reader that misses one polls.

    # Snapshots

    def _maybe_snapshot(self, entry_hash: bytes) -> None:
        """Fork a snapshot when due; `entry_hash` is the hash of the journal entry last applied."""
        self._reap_snapshot(block=False)
        due = (self.engine.sequence - self.last_snapshot_sequence >= self.config.snapshot_every_batches
               or time.monotonic() - self.last_snapshot_time >= self.config.snapshot_every_s)
        if not due or self.snapshot_child or self.engine.sequence == self.last_snapshot_sequence:
            return
        self.last_snapshot_sequence = self.engine.sequence
        self.last_snapshot_time = time.monotonic()
        paused_at = time.perf_counter()
        # Objects the collector never visits are never copied by the child's writes.
        gc.freeze()
        self.snapshot_child = take_snapshot_in_child(self.engine, entry_hash, self.snapshots, self.durable_sequence)
        log.info("snapshot of batch %d forked; the writer paused %.1f ms", self.engine.sequence,
                 (time.perf_counter() - paused_at) * 1000)

    def _reap_snapshot(self, block: bool) -> None:
        if not self.snapshot_child:
            return
        pid, status = os.waitpid(self.snapshot_child, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        self.snapshot_child = 0
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("snapshot child failed with status %d", status)
            return
        self.snapshots.remove_older_than(self.config.keep_snapshots)
        kept = self.snapshots.paths()
        if self.config.prune_journal and len(kept) >= self.config.keep_snapshots:
            oldest = self.snapshots.load(kept[-1])[0].sequence
            if oldest <= self.durable_sequence:
                self.journal.prune_before(oldest)

    # Replication: the primary's side

    async def _replicate(self) -> None:
        socket = pynng.Req0(recv_timeout=self.config.replica_timeout_ms, send_timeout=self.config.replica_timeout_ms,
                            resend_time=-1)
        socket.dial(self.config.replica_address, block=False)
        context = socket.new_context()
        next_sequence = 0  # unknown until the replica answers
        try:
            while self.role == "primary":
                records, first = self._records_for_replica(next_sequence)
                if not records and next_sequence:
                    self.to_replicate.clear()
                    try:
                        # Not wait_for: its extra task would cost loop turns before a new entry leaves.
                        async with asyncio.timeout(self.config.heartbeat_ms / 1000):
                            await self.to_replicate.wait()
                    except TimeoutError:
                        pass
                    records, first = self._records_for_replica(next_sequence)
                try:
                    await context.asend(request_encoder.encode(Replicate(self.epoch, first, records)))
                    reply = reply_decoder.decode(await context.arecv())
                except pynng.NNGException:
                    context.close()
                    context = socket.new_context()
                    await asyncio.sleep(self.config.heartbeat_ms / 1000)
                    continue
                if reply.epoch > self.epoch:
                    self._fence(reply.epoch)
                    return
                self.replica_sequence = max(self.replica_sequence, min(reply.sequence, self.journal.prepared_sequence))
                next_sequence = reply.sequence + 1
                self._release()
        finally:
            context.close()
            socket.close()

    def _records_for_replica(self, next_sequence: int) -> tuple[list[bytes], int]:
        """Records from `next_sequence` on: from memory when recent, else from the journal."""
        if not next_sequence or next_sequence > self.journal.prepared_sequence:
            return [], next_sequence or self.journal.prepared_sequence + 1
        recent = self.recent
        if recent and recent[0].sequence <= next_sequence:
            start = next_sequence - recent[0].sequence
            records = []
            size = 0
            for index in range(start, len(recent)):
                record = recent[index].record()
                if records and size + len(record) > self.config.max_replicate_bytes:
                    break
                records.append(record)
                size += len(record)
            return records, next_sequence
        return self.journal.read_records(next_sequence, 1024, self.config.max_replicate_bytes), next_sequence

    def _fence(self, epoch: int) -> None:
        """A higher epoch exists: this process must never write again."""
        log.error("fenced: epoch %d is above ours (%d); refusing writes", epoch, self.epoch)
        self.role = "fenced"
        self.epoch = epoch
        self._refuse_rounds()
        while self.queue:
            _, _, future, _ = self.queue.popleft()
            future.set_result(self._reply(ReplyStatus.NOT_PRIMARY))
        self.queue_items = 0
        self._write_status_file()

    def _refuse_rounds(self) -> None:
        for round_ in self.rounds:
            for future, _ in round_.replies:
                if not future.done():
                    future.set_result(self._reply(ReplyStatus.NOT_PRIMARY))
        self.rounds.clear()

    # Replication: the replica's side

    async def _serve_replication(self, context) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await context.arecv()
            try:
                request = request_decoder.decode(message)
            except msgspec.DecodeError as error:
                await context.asend(self._reply(ReplyStatus.INVALID, message=str(error)))
                continue
            if type(request) is not Replicate:  # refused, never a reason to stop replicating
                await context.asend(self._reply(ReplyStatus.INVALID, message="only replication comes here"))
                continue
            await context.asend(await self._accept_replicate(request, loop))

    async def _accept_replicate(self, request: Replicate, loop) -> bytes:
        if request.epoch < self.epoch or (self.role != "replica" and request.epoch == self.epoch):
            return self._reply(ReplyStatus.NOT_PRIMARY)
        self.last_heard_from_primary = time.monotonic()
        if request.epoch > self.epoch:
            self.epoch = request.epoch
            self.journal.epoch = request.epoch
        head = self.journal.head_sequence
        skip = head + 1 - request.first_sequence
        if request.first_sequence > head + 1 or not request.records or skip >= len(request.records):
            # Behind or idle: say where we stand; the primary sends from there.
            return reply_encoder.encode(Reply(ReplyStatus.OK, self.epoch, head))
        entries = self.journal.append_records(head + 1, request.records[max(skip, 0) :])
        await loop.run_in_executor(self.executor, self.journal.write, entries)
        self.durable_sequence = self.journal.head_sequence
        # Acknowledge once durable; applying follows, off the primary's critical path.
        self.replicated.extend(entries)
        self.to_apply.set()
        self._announce()
        return reply_encoder.encode(Reply(ReplyStatus.OK, self.epoch, self.journal.head_sequence))

    async def _apply_replicated(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.to_apply.wait()
            self.to_apply.clear()
            results = self._apply_pending_replicated()
            await loop.run_in_executor(self.executor, self.journal.write_results, results)

    def _apply_pending_replicated(self) -> list[tuple[int, bytes]]:
        results = []
        while self.replicated:
            entry = self.replicated.popleft()
            result = self.engine.apply(batch_decoder.decode(entry.payload))
            self.failure_log.log(self.engine)
            results.append((entry.sequence, result_encoder.encode(result)))
            self._maybe_snapshot(entry.hash)
        return results

    async def _watch_primary(self) -> None:
        timeout_s = self.config.auto_promote_ms / 1000
        while self.role == "replica":
            await asyncio.sleep(timeout_s / 4)
            if time.monotonic() - self.last_heard_from_primary > timeout_s:
                self._promote(f"no word from the primary for {self.config.auto_promote_ms} ms")

    def _promote(self, reason: str) -> None:
        if self.role != "replica":
            return
        # The engine must hold every acknowledged entry before it takes writes.
        self.journal.write_results(self._apply_pending_replicated())
        self.epoch += 1
        self.journal.epoch = self.epoch
        self.role = "primary"
        self.replica_sequence = self.journal.head_sequence
        self.durable_sequence = self.journal.head_sequence
        self._write_status_file()
        log.warning("promoted to primary at epoch %d (%s)", self.epoch, reason)


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


def take_snapshot_in_child(engine: Engine, entry_hash: bytes, snapshots: Snapshots, durable_sequence: int) -> int:
    """Fork: the child writes the engine as of now (copy-on-write) while the parent goes on."""
    sequence = engine.sequence
    pid = os.fork()
    if pid:
        return pid
    try:
        snapshots.write(sequence, entry_hash, engine.snapshot(), min(durable_sequence, sequence))
        os._exit(0)
    except BaseException:
        os._exit(1)


def _item_count(request: Submit) -> int:
    return max(sum(map(command_items, request.commands)), 1)


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
