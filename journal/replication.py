"""Replication, both sides: the primary sends its journal records to its replica (`ReplicationSender`); the replica
makes them durable, acknowledges, applies them later, and may take over (`ReplicaLink`).

Both work on the shard's state (journal/shard.py): its epoch, role and sequences.
"""

import asyncio
import collections
import logging
import time
import typing

import msgspec
import pynng

from journal.recovery import batch_decoder
from journal.store import HASH_BYTES, chained_entries
from journal.wire import (
    Reply,
    ReplicateHead,
    ReplyStatus,
    replicate_head_decoder,
    replicate_head_encoder,
    reply_decoder,
    reply_encoder,
)

if typing.TYPE_CHECKING:
    from journal.shard import Shard

log = logging.getLogger("paygate.shard")
result_encoder = msgspec.msgpack.Encoder()


class ReplicationSender:
    """The primary's side: records from where the replica stands on, a heartbeat when idle; a higher epoch fences."""

    def __init__(self, shard: "Shard") -> None:
        self.shard = shard
        self.config = shard.config
        self.key = shard.key.for_receiver(f"shard {shard.config.data}, replication replies")

    async def run(self) -> None:
        shard, config = self.shard, self.config
        socket = pynng.Req0(recv_timeout=config.replica_timeout_ms, send_timeout=config.replica_timeout_ms,
                            resend_time=-1)
        socket.dial(config.replica_address, block=False)
        context = socket.new_context()
        next_sequence = 0  # unknown until the replica answers
        try:
            while shard.role == "primary":
                records, first = self.records_from(next_sequence)
                if not records and next_sequence:
                    shard.to_replicate.clear()
                    try:
                        # Not wait_for: its extra task would cost loop turns before a new entry leaves.
                        async with asyncio.timeout(config.heartbeat_ms / 1000):
                            await shard.to_replicate.wait()
                    except TimeoutError:
                        pass
                    records, first = self.records_from(next_sequence)
                try:
                    await context.asend(self.message(first, records))
                    reply = self.key.open(await context.arecv())
                except pynng.NNGException:
                    reply = None
                if reply is None:
                    context.close()
                    context = socket.new_context()
                    await asyncio.sleep(config.heartbeat_ms / 1000)
                    continue
                reply = reply_decoder.decode(reply)
                if reply.epoch > shard.epoch:
                    shard.fence(reply.epoch)
                    return
                shard.replica_sequence = max(shard.replica_sequence,
                                             min(reply.sequence, shard.journal.prepared_sequence))
                next_sequence = reply.sequence + 1
                shard.release()
        finally:
            context.close()
            socket.close()

    def message(self, first_sequence: int, records: list[bytes]) -> bytes:
        """The records under a tag of their head, which names the hash their chain ends at (each record starts with
        its own hash)."""
        head = ReplicateHead(self.shard.epoch, first_sequence, [len(record) for record in records],
                             records[-1][:HASH_BYTES] if records else b"")
        return self.shard.key.seal_head(replicate_head_encoder.encode(head), records)

    def records_from(self, next_sequence: int) -> tuple[list[bytes], int]:
        """Records from `next_sequence` on: from memory when recent, else from the journal."""
        journal = self.shard.journal
        if not next_sequence or next_sequence > journal.prepared_sequence:
            return [], next_sequence or journal.prepared_sequence + 1
        recent = self.shard.recent
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
        return journal.read_records(next_sequence, 1024, self.config.max_replicate_bytes), next_sequence


def _split(rest: memoryview, sizes: list[int]) -> list[memoryview] | None:
    """The records that follow a replication message's head, by their sizes; None if they do not fill it."""
    if any(size < 0 for size in sizes) or sum(sizes) != len(rest):
        return None
    records = []
    start = 0
    for size in sizes:
        records.append(rest[start:start + size])
        start += size
    return records


class ReplicaLink:
    """The replica's side: accept records (durable, then acknowledged), apply them off the primary's critical path,
    watch the primary's silence, and promote."""

    def __init__(self, shard: "Shard") -> None:
        self.shard = shard
        # Entries durable and acknowledged, not yet applied.
        self.replicated: collections.deque = collections.deque()
        self.to_apply = asyncio.Event()
        self.last_heard_from_primary = time.monotonic()
        self.socket = self.context = None
        self.key = shard.key.for_receiver(f"shard {shard.config.data}, replication socket")

    def tasks(self, critical) -> list[asyncio.Task]:
        """Listen for the primary and start serving it; `critical` wraps a task the shard cannot live without."""
        self.socket = pynng.Rep0(listen=self.shard.config.replication_address)
        self.context = self.socket.new_context()
        tasks = [critical(self._serve()), critical(self._apply())]
        if self.shard.config.auto_promote_ms:
            tasks.append(asyncio.create_task(self._watch_primary()))
        return tasks

    def close(self) -> None:
        # A context before its socket: nng refuses to close a context of a closed socket.
        for each in (self.context, self.socket):
            if each is not None:
                each.close()

    async def _serve(self) -> None:
        context, seal = self.context, self.shard.key.seal
        while True:
            # A message without the key is left unanswered: the next receive drops it.
            if (opened := self.key.open_head(await context.arecv())) is None:
                continue
            try:
                head = replicate_head_decoder.decode(opened[0])
            except msgspec.DecodeError as error:  # refused, never a reason to stop replicating
                await context.asend(seal(self.shard.reply(ReplyStatus.INVALID, message=str(error))))
                continue
            records = _split(opened[1], head.record_sizes)
            reply = None if records is None else await self._accept(head, records)
            if reply is None:  # records other than those the tag was made for: as good as no key
                self.key.drop()
                continue
            await context.asend(seal(reply))

    async def _accept(self, head: ReplicateHead, records: list[memoryview]) -> bytes | None:
        """The reply to a replication message, once its new records are durable; None, changing nothing, if its
        records are not those its head names."""
        shard = self.shard
        entries = chained_entries(head.first_sequence, records, head.last_hash) if records else []
        if entries is None:
            return None
        if head.epoch < shard.epoch or (shard.role != "replica" and head.epoch == shard.epoch):
            return shard.reply(ReplyStatus.NOT_PRIMARY)
        self.last_heard_from_primary = time.monotonic()
        journal = shard.journal
        if head.epoch > shard.epoch:
            shard.epoch = head.epoch
            journal.epoch = head.epoch
        skip = journal.head_sequence + 1 - head.first_sequence
        if head.first_sequence > journal.head_sequence + 1 or not entries or skip >= len(entries):
            # Behind or idle: say where we stand; the primary sends from there.
            return reply_encoder.encode(Reply(ReplyStatus.OK, shard.epoch, journal.head_sequence))
        entries = entries[max(skip, 0):]
        journal.append_entries(entries)
        await asyncio.get_running_loop().run_in_executor(shard.executor, journal.write, entries)
        shard.durable_sequence = journal.head_sequence
        # Acknowledge once durable; applying follows, off the primary's critical path.
        self.replicated.extend(entries)
        self.to_apply.set()
        shard.announce()
        return reply_encoder.encode(Reply(ReplyStatus.OK, shard.epoch, journal.head_sequence))

    async def _apply(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.to_apply.wait()
            self.to_apply.clear()
            results = self._apply_pending()
            await loop.run_in_executor(self.shard.executor, self.shard.journal.write_results, results)

    def _apply_pending(self) -> list[tuple[int, bytes]]:
        shard = self.shard
        results = []
        while self.replicated:
            entry = self.replicated.popleft()
            result = shard.engine.apply(batch_decoder.decode(entry.payload))
            shard.failure_log.log(shard.engine)
            results.append((entry.sequence, result_encoder.encode(result)))
            shard.snapshotter.maybe_take(shard.engine, entry.hash, shard.durable_sequence)
        return results

    async def _watch_primary(self) -> None:
        timeout_s = self.shard.config.auto_promote_ms / 1000
        while self.shard.role == "replica":
            await asyncio.sleep(timeout_s / 4)
            if time.monotonic() - self.last_heard_from_primary > timeout_s:
                self.promote(f"no word from the primary for {self.shard.config.auto_promote_ms} ms")

    def promote(self, reason: str) -> None:
        shard = self.shard
        if shard.role != "replica":
            return
        # The engine must hold every acknowledged entry before it takes writes.
        shard.journal.write_results(self._apply_pending())
        shard.epoch += 1
        shard.journal.epoch = shard.epoch
        shard.role = "primary"
        shard.replica_sequence = shard.journal.head_sequence
        shard.durable_sequence = shard.journal.head_sequence
        shard.write_status_file()
        log.warning("promoted to primary at epoch %d (%s)", shard.epoch, reason)
