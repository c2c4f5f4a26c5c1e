"""The shard's client socket: each request read from the loop, checked, then answered at once (status, promote,
journal entries) or queued for the sequencer; "busy" past the limits."""

import asyncio
import logging
import time
import typing

import msgspec

from engine.batch import without_ledger_items
from journal.replier import Replier
from journal.wire import (
    SUBMIT_ID_MAX_BYTES,
    Promote,
    Read,
    ReadEntries,
    Reply,
    ReplyStatus,
    ShardStatus,
    Status,
    StoredEntry,
    Submit,
    command_items,
    received_submit_decoder,
    reply_encoder,
    request_decoder,
)

if typing.TYPE_CHECKING:
    from journal.shard import Shard

log = logging.getLogger("paygate.shard")


class Intake:
    def __init__(self, shard: "Shard") -> None:
        self.shard = shard
        self.config = shard.config
        self.held_requests: set[asyncio.Task] = set()
        self.key = shard.key.for_receiver(f"shard {shard.config.data}, client socket")
        self.replier: Replier | None = None

    def open(self) -> None:
        self.replier = Replier(self.config.client_address, self.config.reply_timeout_ms)
        asyncio.get_running_loop().add_reader(self.replier.receive_fd, self._on_requests)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.replier.receive_fd)
        for task in self.held_requests:
            task.cancel()
        self.replier.close()

    def _on_requests(self) -> None:
        """Take every request waiting on the client socket; each is answered by a task of its own."""
        loop = asyncio.get_running_loop()
        while (received := self.replier.receive()) is not None:
            context, message = received
            message = self.key.open(message)
            if message is None:  # not one of ours: nothing decoded, nothing answered
                self.replier.drop(context)
                continue
            if len(self.held_requests) >= self.config.max_requests:
                self._send_reply(context, self.shard.reply(ReplyStatus.BUSY))
                continue
            task = loop.create_task(self._serve(context, message))
            self.held_requests.add(task)
            task.add_done_callback(self.held_requests.discard)

    async def _serve(self, context, message: bytes) -> None:
        self._send_reply(context, await self._answer(message))

    def _send_reply(self, context, reply: bytes) -> None:
        if not self.replier.reply(context, self.key.seal(reply)):  # a client that stopped reading: it will ask again
            log.warning("a reply of %d bytes dropped: its client took none within %d ms", len(reply),
                        self.config.reply_timeout_ms)

    async def _answer(self, message: bytes) -> bytes:
        shard = self.shard
        try:
            request = request_decoder.decode(message)
        except msgspec.DecodeError as error:
            return shard.reply(ReplyStatus.INVALID, message=str(error))
        kind = type(request)
        if kind is Status:
            return reply_encoder.encode(Reply(ReplyStatus.OK, shard.epoch, shard.engine.sequence,
                                              shard_status=self._status(request)))
        if kind is Promote:
            if shard.role != "replica":
                # Nothing to do, and the operator must know: they may have named the wrong folder.
                state = "already the primary" if shard.role == "primary" else "fenced (a newer primary exists)"
                return shard.reply(ReplyStatus.INVALID, message=f"not promoted: this shard is {state}, epoch {shard.epoch}")
            shard.replica_link.promote("requested")
            return shard.reply(ReplyStatus.OK)
        if kind is ReadEntries:
            return self._read_entries(request)
        if shard.role != "primary":
            return shard.reply(ReplyStatus.NOT_PRIMARY)
        return await self._queue(request, kind, message)

    async def _queue(self, request, kind: type, message: bytes) -> bytes:
        """A Submit or a Read, checked against the limits, waits for the sequencer's answer."""
        shard = self.shard
        items = _item_count(request) if kind is Submit else len(request.queries) if kind is Read else 1
        if items > self.config.max_batch_items:
            return shard.reply(ReplyStatus.INVALID, message=f"more than {self.config.max_batch_items} items")
        if kind is Submit and len(request.submit_id) > SUBMIT_ID_MAX_BYTES:
            return shard.reply(ReplyStatus.INVALID, message=f"a submit id longer than {SUBMIT_ID_MAX_BYTES} bytes")
        if shard.queue_items + items > self.config.max_queue_items:
            return shard.reply(ReplyStatus.BUSY)
        # A window full of records too young to forget (engine/submits.py): refused now, never journaled.
        if kind is Submit and not shard.engine.submits.has_room(max(time.time_ns(), shard.engine.timestamp)):
            return shard.reply(ReplyStatus.BUSY)
        # A Submit decoded once more, as raw commands (a skim): those bytes are what the journal keeps.
        received = received_submit_decoder.decode(message).commands if kind is Submit else None
        future = asyncio.get_running_loop().create_future()
        shard.queue.append((request, items, future, received))
        shard.queue_items += items
        shard.work.set()
        return await future

    def _status(self, request: Status) -> ShardStatus:
        shard = self.shard
        return ShardStatus(
            role=shard.role,
            epoch=shard.epoch,
            sequence=shard.engine.sequence,
            durable_sequence=shard.durable_sequence,
            replica_sequence=shard.replica_sequence,
            state_hash=shard.engine.state_hash() if request.with_state_hash else "",
            queue_items=shard.queue_items,
            check=self._check() if request.with_check else "",
            unauthenticated_messages=self.key.dropped + shard.replica_link.key.dropped,
        )

    def _check(self) -> str:
        try:
            self.shard.engine.verify()
        except AssertionError as error:
            return f"failed: {error}"
        return "ok"

    def _read_entries(self, request: ReadEntries) -> bytes:
        shard = self.shard
        first = shard.journal.first_sequence()
        if request.start_sequence < first:  # never skip silently past what a reader has not seen
            return shard.reply(ReplyStatus.INVALID, f"entries before {first} were pruned; the reader asked for "
                                                    f"{request.start_sequence}")
        limit = max(1, min(request.limit, self.config.max_read_entries))
        start = request.start_sequence
        recent = shard.recent
        in_memory = bool(recent) and recent[0].sequence <= start
        pairs = [] if in_memory else shard.journal.read_results(start, limit)
        entries = [StoredEntry(entry.sequence, _payload(request, entry.payload), msgspec.Raw(result))
                   for entry, result in pairs]
        entries += self._recent_entries(pairs[-1][0].sequence + 1 if pairs else start, limit - len(entries), request)
        return reply_encoder.encode(Reply(ReplyStatus.OK, shard.epoch, shard.durable_sequence, entries=entries))

    def _recent_entries(self, sequence: int, limit: int, request: ReadEntries) -> list[StoredEntry]:
        """Durable entries from memory, with their results (written or still on their way to the disk): no entry read
        from disk, and no checksum to check, for what never left this process."""
        shard = self.shard
        found = []
        recent = shard.recent
        while (len(found) < limit and sequence <= shard.durable_sequence and sequence in shard.recent_results
               and recent and recent[0].sequence <= sequence):
            entry = recent[sequence - recent[0].sequence]
            result = msgspec.Raw(shard.recent_results[sequence])
            found.append(StoredEntry(sequence, _payload(request, entry.payload), result))
            sequence += 1
        return found


def _payload(request: ReadEntries, payload: bytes) -> bytes:
    """What of an entry's payload a ReadEntries asked for."""
    if not request.with_payloads:
        return b""
    return payload if request.with_ledger_items else without_ledger_items(payload)


def _item_count(request: Submit) -> int:
    return max(sum(map(command_items, request.commands)), 1)
