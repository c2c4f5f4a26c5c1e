"""The client side of the shards: routing by a stable shard map, following primaries.

`ShardClient` talks to one shard (its primary and, if any, its replica): it
keeps a bounded pool of channels, follows the process that answers as primary
with the highest epoch, and retries a busy shard a bounded number of times.
`Cluster` routes command batches to the shard that owns their key and gathers
the replies.
"""

import asyncio
import hashlib

import pynng

from engine import CreateTransfers, Transfer
from engine.queries import AccountBalance, AccountTransfers, Answer, LookupAccounts, LookupTransfers, Query
from journal.sending import Sender
from journal.wire import (
    Read,
    ReadEntries,
    Reply,
    ReplyStatus,
    Request,
    Status,
    Submit,
    reply_decoder,
    request_encoder,
)

# Ledger ids are namespaced by their owner, the shard key: "<owner>:<rest>".
OWNER_SEPARATOR = ":"
ACCOUNTS_ON_DIFFERENT_SHARDS = "accounts_on_different_shards"


class EntriesPruned(RuntimeError):
    """A reader's cursor is behind the first entry the shard still keeps: what it missed is gone from the journal."""


class ShardUnavailable(RuntimeError):
    """No process of the shard answered as primary within the retries."""


class ShardMap:
    """A stable map from a key (a merchant id) to one of `count` shards."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a shard map needs at least one shard, not {count}")
        self.count = count

    def shard_for(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count

    def shard_for_id(self, ledger_id: str) -> int:
        return self.shard_for(ledger_id.partition(OWNER_SEPARATOR)[0])

    def shard_for_ip(self, client_ip: str) -> int:
        """The shard that keeps a client IP's order window: one for the IP, whatever merchants it orders from."""
        return self.shard_for(client_ip)


class _Channel:
    """One nng Req0 socket to one process, one request at a time, on the event loop that made it.

    The loop watches nng's receive descriptor and sends without waiting (journal/sending.py): no nng thread calls
    back into Python and no call blocks the loop. A channel whose request failed or timed out is closed, never
    reused.
    """

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop, timeout_ms: int) -> None:
        self.loop = loop
        self.socket = pynng.Req0(resend_time=-1)
        self.socket.dial(address, block=False)
        self.sender = Sender(self.socket, timeout_ms, max_in_flight=2)
        self.receive_fd = self.socket.recv_fd
        self.waiter: asyncio.Future | None = None
        loop.add_reader(self.receive_fd, self._on_receivable)

    def _on_receivable(self) -> None:
        try:
            message = self.socket.recv(block=False)
        except pynng.TryAgain:
            return
        except pynng.NNGException as error:
            message = error
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def request(self, message: bytes, timeout_s: float) -> bytes | None:
        """The reply, or None if the process did not answer within `timeout_s` (or nng refused the request)."""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, _expire, waiter)
        try:
            if not self.sender.send(message):
                return None
            reply = await waiter
        except pynng.NNGException:
            return None
        finally:
            timer.cancel()
        return reply if type(reply) is bytes else None

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self.receive_fd)
        self.sender.close()
        self.socket.close()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class ShardClient:
    def __init__(
        self,
        addresses: list[str],
        timeout_ms: int = 10_000,
        max_in_flight: int = 64,
        busy_retries: int = 20,
        failover_rounds: int = 10,
    ) -> None:
        if not addresses:
            raise ValueError("a shard client needs at least one address")
        self.addresses = addresses
        self.timeout_ms = timeout_ms
        self.busy_retries = busy_retries
        self.failover_rounds = failover_rounds
        self.idle_channels: list[list[_Channel]] = [[] for _ in addresses]  # at most max_in_flight each
        self.current = 0
        self.epoch = 0
        self.slots = asyncio.Semaphore(max_in_flight)

    def close(self) -> None:
        for idle in self.idle_channels:
            for channel in idle:
                channel.close()
            idle.clear()

    async def request(self, request: Request) -> Reply:
        """The reply of the primary. Retries and failover all fit in one `timeout_ms`, so a stalled shard costs a
        caller that long at most; each process gets its share of it before the next is tried."""
        message = request_encoder.encode(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_ms / 1000
        busy = 0
        for _ in range(self.failover_rounds * len(self.addresses) + self.busy_retries):
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                break
            index = self.current
            reply = await self._send(index, message, min(remaining_s, self.timeout_ms / 1000 / len(self.addresses)))
            if reply is None or reply.status == ReplyStatus.NOT_PRIMARY:
                self._next_process(index, reply)
                await asyncio.sleep(0.05)
                continue
            if reply.status == ReplyStatus.BUSY and busy < self.busy_retries:
                busy += 1
                await asyncio.sleep(min(0.001 * 2**busy, 0.2))
                continue
            self.epoch = max(self.epoch, reply.epoch)
            return reply
        raise ShardUnavailable(f"no primary answered at {self.addresses}")

    async def _send(self, index: int, message: bytes, timeout_s: float) -> Reply | None:
        async with self.slots:
            channel = self._channel(index)
            reply = None
            try:
                reply = await channel.request(message, timeout_s)
            finally:  # a channel whose request failed, timed out or was cancelled is never reused
                if reply is None:
                    channel.close()
                else:
                    self.idle_channels[index].append(channel)
            return None if reply is None else reply_decoder.decode(reply)

    def _channel(self, index: int) -> _Channel:
        """An idle channel to process `index` on this loop (one made on an earlier loop is closed), or a new one."""
        loop = asyncio.get_running_loop()
        idle = self.idle_channels[index]
        while idle:
            channel = idle.pop()
            if channel.loop is loop:
                return channel
            channel.close()
        return _Channel(self.addresses[index], loop, self.timeout_ms)

    def _next_process(self, failed_index: int, reply: Reply | None) -> None:
        if reply is not None:
            self.epoch = max(self.epoch, reply.epoch)
        # Many requests fail at once when a primary dies: move on once, not once per request.
        if self.current == failed_index:
            self.current = (failed_index + 1) % len(self.addresses)

    # Convenience over `request`

    async def submit(self, commands: list) -> Reply:
        return await self.request(Submit(commands))

    async def read(self, query: Query) -> Answer:
        return (await self.read_many([query]))[0]

    async def read_many(self, queries: list) -> list[Answer]:
        """One answer per query, in order, from one request; ShardUnavailable when the shard cannot answer now."""
        reply = await self.request(Read(queries))
        if reply.status != ReplyStatus.OK:
            raise ShardUnavailable(f"the shard answered {ReplyStatus.NAMES[reply.status]}: {reply.message}")
        return reply.answers

    async def lookup_accounts(self, ids: list[str]) -> list:
        return (await self.read(LookupAccounts(ids))).accounts

    async def lookup_transfers(self, ids: list[str]) -> list:
        return (await self.read(LookupTransfers(ids))).transfers

    async def account_transfers(self, account_id: str, **filters) -> list:
        return (await self.read(AccountTransfers(account_id, **filters))).transfers

    async def account_balance(self, account_id: str, timestamp: int):
        return (await self.read(AccountBalance(account_id, timestamp))).balance

    async def read_entries(self, start_sequence: int, limit: int = 64) -> list:
        """Committed entries from `start_sequence` on; EntriesPruned if the journal no longer holds it."""
        reply = await self.request(ReadEntries(start_sequence, limit))
        if reply.status != ReplyStatus.OK:
            raise EntriesPruned(reply.message)
        return reply.entries

    async def status(self, with_state_hash: bool = False, with_check: bool = False):
        return (await self.request(Status(with_state_hash, with_check))).shard_status


class Cluster:
    """All shards: routes each command to the shard of its owner key and gathers replies."""

    def __init__(self, shard_addresses: list[list[str]], **client_options) -> None:
        self.map = ShardMap(len(shard_addresses))
        self.shards = [ShardClient(addresses, **client_options) for addresses in shard_addresses]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def shard(self, key: str) -> ShardClient:
        return self.shards[self.map.shard_for(key)]

    async def create_transfers(self, transfers: list[Transfer]) -> list[int | str]:
        """Route each transfer to its accounts' shard; a transfer spanning two shards is rejected.

        Returns one engine code per transfer, or ACCOUNTS_ON_DIFFERENT_SHARDS.
        """
        results: list[int | str] = [0] * len(transfers)
        by_shard: dict[int, list[int]] = {}
        for index, transfer in enumerate(transfers):
            # A post or void may name only its pending transfer, whose id carries the owner too.
            shard = self.map.shard_for_id(transfer.debit_account_id or transfer.pending_id)
            if transfer.credit_account_id and self.map.shard_for_id(transfer.credit_account_id) != shard:
                results[index] = ACCOUNTS_ON_DIFFERENT_SHARDS
                continue
            by_shard.setdefault(shard, []).append(index)
        replies = await asyncio.gather(
            *(self.shards[shard].submit([CreateTransfers([transfers[i] for i in indexes])]) for shard, indexes in by_shard.items())
        )
        for indexes, reply in zip(by_shard.values(), replies):
            for index, code in zip(indexes, reply.results[0]):
                results[index] = code
        return results
