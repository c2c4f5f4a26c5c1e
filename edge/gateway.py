"""The edge's way to the shards: commands that arrive together leave together, and so do reads.

Each worker keeps its own nng connections per shard process. Commands for a
shard leave as one Submit (bounded in count), so a burst of requests costs one
shard batch, not one each; reads go the same way as one Read. Batching is the
LMAX kind: a lone request leaves on the next turn of the event loop, and while
`max_in_flight` requests to a shard are out, what arrives waits for the first
reply and then leaves together, so batches grow with the load instead of the
messages (each nng message costs far more than the items in it).
"""

import asyncio
import collections

import msgspec

from journal.auth import MessageKey
from journal.client import SEEN_BACK_WITHIN_MS, Cluster, ShardClient
from journal.wire import MAX_BATCH_ITEMS, ReplyStatus, command_items

MAX_ITEMS_PER_REQUEST = 1024
MAX_IN_FLIGHT = 2
# Weight (transfers, accounts, other commands, queries) waiting while the requests in flight are out: beyond it
# the shard is too slow, and the edge says so.
MAX_PENDING_WEIGHT = 4 * MAX_BATCH_ITEMS
# A shard with no process up (being started again, given up, changing primaries) is answered 503 this soon.
DOWN_WAIT_MS = SEEN_BACK_WITHIN_MS


class ShardBusy(Exception):
    """The shard refused the batch for now (queue full or failing over)."""


class InvalidCommand(ValueError):
    """A command or query that cannot be encoded (text that is not valid Unicode): refused alone, never its batch."""


_item_encoder = msgspec.msgpack.Encoder()


def _ignore(size: int) -> None:
    pass


class Coalescer:
    """Items for one shard leave in as few requests as the requests in flight allow; `send` answers one result
    per item. A request holds at most `max_items` items and `max_weight` weight (what the shard counts: a batch of
    transfers weighs as many as it holds), so the shard never refuses one for its size."""

    def __init__(self, send, max_items: int = MAX_ITEMS_PER_REQUEST, max_weight: int = MAX_BATCH_ITEMS,
                 max_in_flight: int = MAX_IN_FLIGHT, max_pending_weight: int = MAX_PENDING_WEIGHT,
                 on_batch=_ignore) -> None:
        self.send = send
        self.on_batch = on_batch  # told each request's item count (the metrics' batch sizes)
        self.max_items = max_items
        self.max_weight = max_weight
        self.max_in_flight = max_in_flight
        self.max_pending_weight = max_pending_weight
        self.pending: collections.deque[tuple[object, asyncio.Future, int]] = collections.deque()
        self.pending_weight = 0
        self.in_flight = 0
        self.flush_scheduled = False

    async def submit(self, item, weight: int = 1):
        if weight > self.max_weight:
            raise InvalidCommand(f"more than {self.max_weight} items in one command")
        if self.pending_weight + weight > self.max_pending_weight:
            raise ShardBusy(f"{self.pending_weight} items already wait for the shard")
        # Encoded here, once: an item that cannot be encoded fails alone, and the request just joins bytes.
        try:
            encoded = msgspec.Raw(_item_encoder.encode(item))
        except (UnicodeEncodeError, OverflowError) as error:
            raise InvalidCommand(str(error)) from error
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((encoded, future, weight))
        self.pending_weight += weight
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.flush_scheduled and self.in_flight < self.max_in_flight:
            self.flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        loop = asyncio.get_running_loop()
        while self.pending and self.in_flight < self.max_in_flight:
            batch = self._take()
            self.in_flight += 1
            self.on_batch(len(batch))
            loop.create_task(self._send(batch))

    def _take(self) -> list[tuple[object, asyncio.Future, int]]:
        """The next request's items, in order: at least one, within both bounds."""
        pending = self.pending
        batch = [pending.popleft()]
        weight = batch[0][2]
        while pending and len(batch) < self.max_items and weight + pending[0][2] <= self.max_weight:
            batch.append(pending.popleft())
            weight += batch[-1][2]
        self.pending_weight -= weight
        return batch

    async def _send(self, batch: list[tuple[object, asyncio.Future, int]]) -> None:
        try:
            results = await self.send([item for item, _, _ in batch])
        except Exception as error:  # every waiter must hear of the failure
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(ShardBusy(str(error)))
            return
        finally:
            self.in_flight -= 1
            if self.pending:
                self._schedule(asyncio.get_running_loop())
        for (_, future, _), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


def submit_to(client: ShardClient):
    async def send(commands: list) -> list:
        reply = await client.submit(commands)
        if reply.status != ReplyStatus.OK:
            raise ShardBusy(ReplyStatus.NAMES[reply.status])
        return reply.results
    return send


class Gateway:
    """All shards, by merchant: submit commands (coalesced) and read state."""

    def __init__(self, shard_addresses: list[list[str]], key: MessageKey, timeout_ms: int = 10_000,
                 on_batch=_ignore) -> None:
        self.key = key  # also the connectors' (edge/payments_api.py)
        self.cluster = Cluster(shard_addresses, key=key, timeout_ms=timeout_ms, busy_retries=5, down_wait_ms=DOWN_WAIT_MS)
        self.coalescers = [Coalescer(submit_to(shard), on_batch=on_batch) for shard in self.cluster.shards]
        self.readers = [Coalescer(shard.read_many) for shard in self.cluster.shards]

    def close(self) -> None:
        self.cluster.close()

    def shard_count(self) -> int:
        return len(self.coalescers)

    def shard_index(self, merchant_id: str) -> int:
        return self.cluster.map.shard_for(merchant_id)

    def ip_shard_index(self, client_ip: str) -> int:
        return self.cluster.map.shard_for_ip(client_ip)

    async def submit(self, merchant_id: str, command):
        return await self.submit_to(self.shard_index(merchant_id), command)

    async def submit_to(self, shard_index: int, command):
        return await self.coalescers[shard_index].submit(command, command_items(command))

    async def read(self, merchant_id: str, query):
        return await self.read_on(self.shard_index(merchant_id), query)

    async def read_on(self, shard_index: int, query):
        return await self.readers[shard_index].submit(query)

    async def read_everywhere(self, query) -> list:
        """The same read on every shard (rare lookups whose key is not a merchant id)."""
        return await asyncio.gather(*(reader.submit(query) for reader in self.readers))

    async def statuses(self, with_check: bool = False, timeout_s: float | None = None) -> list:
        """Each shard's status, or the exception that stands for it (a timeout after `timeout_s`)."""
        return await asyncio.gather(*(asyncio.wait_for(shard.status(with_check=with_check), timeout_s)
                                      for shard in self.cluster.shards), return_exceptions=True)
