"""The single writer: takes what the intake queued, stamps it as one batch (sequence and time), chains it into the
journal for the disk and the replica, applies it, answers the reads after it, and holds the replies until the
batch is durable (and replicated, in sync mode)."""

import asyncio
import logging
import time
import typing

import msgspec

from engine import Batch
from engine.machine import ERROR_MAX_CHARS, PROCESS_FAULTS
from engine.notifications import FOLLOWED_EVENTS
from engine.records import Archive
from engine.submits import SubmitSpan
from journal.recovery import batch_encoder
from journal.wire import JournaledBatch, Read, Reply, ReplyStatus, Submit, reply_encoder

if typing.TYPE_CHECKING:
    from journal.shard import Shard

log = logging.getLogger("paygate.shard")
TICK_S = 0.25
result_encoder = msgspec.msgpack.Encoder()


class Round(msgspec.Struct):
    """Replies that may leave once `sequence` is durable (and replicated, in sync mode)."""

    sequence: int
    replies: list[tuple[asyncio.Future, bytes]]


class Sequencer:
    def __init__(self, shard: "Shard") -> None:
        self.shard = shard
        self.config = shard.config
        self.archive_at = time.monotonic() + self.config.archive_every_s  # when to send the next Archive

    async def run(self) -> None:
        shard = self.shard
        while True:
            await shard.work.wait()
            shard.work.clear()
            while shard.queue:
                while len(shard.rounds) >= self.config.max_unreleased_batches:
                    shard.released.clear()
                    await shard.released.wait()
                submits, reads = self._take()
                batch = self._journal_batch(submits) if submits else None
                if batch is not None:
                    # One turn of the loop: the journal thread and the replicator take the entry before the engine
                    # holds the loop to apply it.
                    await asyncio.sleep(0)
                self._apply_round(batch, submits, reads)
                shard.snapshotter.maybe_take(shard.engine, shard.journal.prepared_hash, shard.durable_sequence)
                # Let replies, the journal and the replicator run between rounds.
                await asyncio.sleep(0)

    async def tick(self) -> None:
        """Time moves only with batches: when something is due and nothing arrives, send an empty one."""
        shard = self.shard
        while True:
            await asyncio.sleep(TICK_S)
            deadline = shard.engine.next_deadline()
            due = deadline is not None and deadline <= time.time_ns()
            # An advance that raised stays due: batches that carry commands try it again, empty ones would only repeat.
            if shard.role == "primary" and not shard.queue and due and not shard.failure_log.advance_failing:
                shard.queue.append((Submit([]), 0, asyncio.get_running_loop().create_future(), []))
                shard.work.set()
            if shard.role == "primary" and self.config.archive_after_s and time.monotonic() >= self.archive_at:
                self.archive_at = time.monotonic() + self.config.archive_every_s
                archive = Archive(self.config.archive_after_s)
                shard.queue.append((Submit([archive]), 1, asyncio.get_running_loop().create_future(),
                                    [msgspec.Raw(result_encoder.encode(archive))]))
                shard.queue_items += 1
                shard.work.set()

    def _journal_batch(self, submits: list) -> Batch:
        """Stamp the submits as the next batch, chain it into the journal and queue it for the disk and the replica."""
        shard = self.shard
        commands = [command for request, _, _ in submits for command in request.commands]
        # Each Submit's commands stay together under its id, so the engine can tell a re-sent one.
        spans = [SubmitSpan(request.submit_id, len(request.commands)) for request, _, _ in submits if request.commands]
        batch = Batch(shard.engine.sequence + 1, max(time.time_ns(), shard.engine.timestamp + 1), commands, spans)
        received = [command for _, _, raw_commands in submits for command in raw_commands]
        journaled = JournaledBatch(batch.sequence, batch.timestamp, received, spans)
        entry = shard.journal.prepare(batch.sequence, batch_encoder.encode(journaled))
        shard.unwritten.append(entry)
        shard.recent.append(entry)
        shard.to_write.set()
        shard.to_replicate.set()
        return batch

    def _apply_round(self, batch: Batch | None, submits: list, reads: list) -> None:
        """Apply the batch, answer the reads after it, and queue the replies until the batch is durable."""
        shard = self.shard
        replies: list[tuple[asyncio.Future, bytes]] = []
        if batch is not None:
            result = shard.apply(batch)
            if any(event.kind in FOLLOWED_EVENTS for event in result.events):
                shard.announce_through = batch.sequence
            if any(archived.more for archived in shard.engine.archived):
                self.archive_at = 0.0  # the next tick archives more
            shard.keep_result(batch.sequence, result_encoder.encode(result))
            start = 0
            for request, future, _ in submits:
                count = len(request.commands)
                reply = Reply(ReplyStatus.OK, shard.epoch, batch.sequence, results=result.results[start : start + count])
                replies.append((future, reply_encoder.encode(reply)))
                start += count
        for request, future in reads:
            replies.append((future, self._answer_read(request)))
        shard.rounds.append(Round(shard.engine.sequence, replies))
        if shard.role != "primary":  # fenced while the batch was on its way: its replies can never be released
            shard.refuse_rounds()
        shard.release()

    def _answer_read(self, request: Read) -> bytes:
        """The answers to a read; one that raises (a bug: reads change nothing) is refused, logged, and forgotten."""
        shard = self.shard
        try:
            engine = shard.engine
            answers = [shard.cold.complete(query, engine.query(query), engine) for query in request.queries]
        except PROCESS_FAULTS:
            raise
        except Exception as error:
            log.critical("a read (%d queries) raised %s: refused; serving on", len(request.queries),
                         repr(error)[:ERROR_MAX_CHARS])
            return shard.reply(ReplyStatus.INVALID, message="the read failed; the shard logged why")
        return reply_encoder.encode(Reply(ReplyStatus.OK, shard.epoch, shard.engine.sequence, answers=answers))

    def _take(self) -> tuple[list, list]:
        shard = self.shard
        submits, reads = [], []
        taken = 0
        queue = shard.queue
        while queue and (taken == 0 or taken + queue[0][1] <= self.config.max_batch_items):
            request, items, future, received = queue.popleft()
            taken += items
            shard.queue_items -= items
            if type(request) is Submit:
                submits.append((request, future, received))
            else:
                reads.append((request, future))
        return submits, reads
