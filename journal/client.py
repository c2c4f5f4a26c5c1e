"""The client side of the shards: routing by a stable shard map, following primaries.

`ShardClient` talks to one shard (its primary and, if any, its replica): it
keeps a bounded pool of nng contexts, follows the process that answers as
primary with the highest epoch, and retries a busy shard a bounded number of
times. `Cluster` routes command batches to the shard that owns their key and
gathers the replies.
"""

import asyncio
import hashlib

import pynng

from engine import CreateTransfers, Transfer
from engine.queries import AccountBalance, AccountTransfers, Answer, LookupAccounts, LookupTransfers, Query
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


class ShardUnavailable(RuntimeError):
    """No process of the shard answered as primary within the retries."""


class ShardMap:
    """A stable map from a key (a merchant id) to one of `count` shards."""

    def __init__(self, count: int) -> None:
        assert count >= 1
        self.count = count

    def shard_for(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count

    def shard_for_id(self, ledger_id: str) -> int:
        return self.shard_for(ledger_id.partition(OWNER_SEPARATOR)[0])


class ShardClient:
    def __init__(
        self,
        addresses: list[str],
        timeout_ms: int = 10_000,
        max_in_flight: int = 64,
        busy_retries: int = 20,
        failover_rounds: int = 10,
    ) -> None:
        assert addresses
        self.addresses = addresses
        self.timeout_ms = timeout_ms
        self.busy_retries = busy_retries
        self.failover_rounds = failover_rounds
        self.sockets = [self._open(address) for address in addresses]
        self.idle_contexts: list[list] = [[] for _ in addresses]  # at most max_in_flight each
        self.current = 0
        self.epoch = 0
        self.slots = asyncio.Semaphore(max_in_flight)

    def _open(self, address: str) -> pynng.Req0:
        socket = pynng.Req0(recv_timeout=self.timeout_ms, send_timeout=self.timeout_ms, resend_time=-1)
        socket.dial(address, block=False)
        return socket

    def close(self) -> None:
        # Contexts before their sockets: nng refuses to close a context of a closed socket.
        for idle in self.idle_contexts:
            for context in idle:
                context.close()
            idle.clear()
        for socket in self.sockets:
            socket.close()

    async def request(self, request: Request) -> Reply:
        message = request_encoder.encode(request)
        busy = 0
        for _ in range(self.failover_rounds * len(self.sockets) + self.busy_retries):
            index = self.current
            reply = await self._send(index, message)
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

    async def _send(self, index: int, message: bytes) -> Reply | None:
        async with self.slots:
            # A context that saw its reply is ready for the next request; one that failed is closed.
            idle = self.idle_contexts[index]
            context = idle.pop() if idle else self.sockets[index].new_context()
            reusable = False
            try:
                await context.asend(message)
                reply = reply_decoder.decode(await context.arecv())
                reusable = True
                return reply
            except pynng.NNGException:
                return None
            finally:
                if reusable:
                    idle.append(context)
                else:
                    context.close()

    def _next_process(self, failed_index: int, reply: Reply | None) -> None:
        if reply is not None:
            self.epoch = max(self.epoch, reply.epoch)
        # Many requests fail at once when a primary dies: move on once, not once per request.
        if self.current == failed_index:
            self.current = (failed_index + 1) % len(self.sockets)

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
        return (await self.request(ReadEntries(start_sequence, limit))).entries

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
