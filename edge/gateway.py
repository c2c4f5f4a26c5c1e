"""The edge's way to the shards: commands that arrive together leave together.

Each worker keeps one nng connection per shard process. Commands for a shard
queued during one turn of the event loop are sent as one Submit (bounded in
count), so a burst of requests costs one shard batch, not one each; a lone
request waits no extra time.
"""

import asyncio

import msgspec

from journal.client import Cluster, ShardClient
from journal.wire import ReplyStatus

MAX_COMMANDS_PER_SUBMIT = 1024


class ShardBusy(Exception):
    """The shard refused the batch for now (queue full or failing over)."""


class InvalidCommand(ValueError):
    """A command that cannot be encoded (text that is not valid Unicode): refused alone, never its batch."""


_command_encoder = msgspec.msgpack.Encoder()


class Coalescer:
    def __init__(self, client: ShardClient, max_commands: int = MAX_COMMANDS_PER_SUBMIT) -> None:
        self.client = client
        self.max_commands = max_commands
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.flush_scheduled = False
        self.batch_sizes: list[int] = []  # since the last metrics read

    async def submit(self, command):
        # Encoded here, once: a command that cannot be encoded fails alone, and the batch just joins bytes.
        try:
            encoded = msgspec.Raw(_command_encoder.encode(command))
        except (UnicodeEncodeError, OverflowError) as error:
            raise InvalidCommand(str(error)) from error
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((encoded, future))
        if len(self.pending) >= self.max_commands:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if not self.pending:
            return
        batch, self.pending = self.pending[: self.max_commands], self.pending[self.max_commands :]
        if self.pending:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        self.batch_sizes.append(len(batch))
        asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[object, asyncio.Future]]) -> None:
        try:
            reply = await self.client.submit([command for command, _ in batch])
            if reply.status != ReplyStatus.OK:
                raise ShardBusy(ReplyStatus.NAMES[reply.status])
        except Exception as error:  # every waiter must hear of the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(ShardBusy(str(error)))
            return
        for (_, future), result in zip(batch, reply.results):
            if not future.done():
                future.set_result(result)


class Gateway:
    """All shards, by merchant: submit commands (coalesced) and read state."""

    def __init__(self, shard_addresses: list[list[str]], timeout_ms: int = 10_000) -> None:
        self.cluster = Cluster(shard_addresses, timeout_ms=timeout_ms, busy_retries=5)
        self.coalescers = [Coalescer(shard) for shard in self.cluster.shards]

    def close(self) -> None:
        self.cluster.close()

    def shard_index(self, merchant_id: str) -> int:
        return self.cluster.map.shard_for(merchant_id)

    async def submit(self, merchant_id: str, command):
        return await self.coalescers[self.shard_index(merchant_id)].submit(command)

    async def read(self, merchant_id: str, query):
        try:
            return await self.cluster.shards[self.shard_index(merchant_id)].read(query)
        except Exception as error:
            raise ShardBusy(str(error)) from error

    async def read_everywhere(self, query) -> list:
        """The same read on every shard (rare lookups whose key is not a merchant id)."""
        try:
            return await asyncio.gather(*(shard.read(query) for shard in self.cluster.shards))
        except Exception as error:
            raise ShardBusy(str(error)) from error

    async def statuses(self, with_check: bool = False) -> list:
        return await asyncio.gather(*(shard.status(with_check=with_check) for shard in self.cluster.shards),
                                    return_exceptions=True)
