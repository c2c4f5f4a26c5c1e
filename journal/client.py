"""The client side of the shards: routing by a stable shard map, following primaries.

`ShardClient` talks to one shard (its primary and, if any, its replica): it
keeps a bounded pool of channels, follows the process that answers as primary
with the highest epoch, and retries a busy shard a bounded number of times. A
process with no open connection is down: a request never waits on it, and one
for a shard with no process that can answer waits for one `down_wait_ms` at
most (the edge's is short: its callers get a fast 503 instead of a 10 s wait).
Each Submit carries an id of this process's, the same in every copy a retry
sends, so the shard applies it once and answers a copy with the first results.
`Cluster` routes command batches to the shard that owns their key and gathers
the replies.
"""

import asyncio
import hashlib
import itertools
import os

import pynng

from engine import CreateTransfers, Transfer
from engine.queries import AccountBalance, AccountTransfers, Answer, LookupAccounts, LookupTransfers, Query
from journal.auth import MessageKey
from journal.sending import Sender
from journal.wire import (
    ANNOUNCEMENT,
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
# How soon after a process is back its watch connects again (nng redials by itself, backing off up to the maximum).
RECONNECT_MIN_MS = 50
RECONNECT_MAX_MS = 100
# The shortest sensible `down_wait_ms`: a process that has just come back is seen within it.
SEEN_BACK_WITHIN_MS = 2 * RECONNECT_MAX_MS
UP_POLL_S = 0.05
FAILOVER_PAUSE_S = 0.05  # between tries while a shard changes primaries
MAX_ANNOUNCEMENTS_PER_WAKE = 1024  # taken at once when the socket says some arrived; more wait for the next turn


class SubmitIds:
    """This process's Submit ids: 8 random bytes drawn anew in every process (forked ones too), then a counter."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = os.urandom(8)
        self.counter = itertools.count(1)

    def next(self) -> bytes:
        return self.prefix + next(self.counter).to_bytes(8, "big")


submit_ids = SubmitIds()
os.register_at_fork(after_in_child=submit_ids.renew)


class EntriesPruned(RuntimeError):
    """A reader's cursor is behind the first entry the shard still keeps: what it missed is gone from the journal."""


class ShardUnavailable(RuntimeError):
    """No process of the shard answered as primary within the retries, or none is up to answer."""


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
    back into Python and no call blocks the loop; only a lost connection does (pynng's pipe callback), so that the
    request under way ends at once rather than at its timeout. A channel whose request failed or timed out is
    closed, never reused.
    """

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop, timeout_ms: int) -> None:
        self.loop = loop
        self.socket = pynng.Req0(resend_time=-1)
        self.socket.add_post_pipe_remove_cb(self._on_connection_lost)
        self.socket.dial(address, block=False)
        self.sender = Sender(self.socket, timeout_ms, max_in_flight=1, loop=loop)
        self.receive_fd = self.socket.recv_fd
        self.waiter: asyncio.Future | None = None
        loop.add_reader(self.receive_fd, self._on_receivable)

    def _on_connection_lost(self, pipe) -> None:
        """On an nng thread: the process went away; its answer will never come."""
        try:
            self.loop.call_soon_threadsafe(self._give_up)
        except RuntimeError:  # the loop is closed: nobody waits
            pass

    def _give_up(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connected(self) -> bool:
        return bool(self.socket.pipes)

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
        self.socket.remove_post_pipe_remove_cb(self._on_connection_lost)
        if not self.loop.is_closed():
            self.loop.remove_reader(self.receive_fd)
        self.sender.close()
        self.socket.close()


class _Watch:
    """Whether one process is up: a socket that only stays connected to it (nng redials it by itself; pynng tracks
    its open connections), so asking costs no system call."""

    def __init__(self, address: str) -> None:
        self.socket = pynng.Req0(reconnect_time_min=RECONNECT_MIN_MS, reconnect_time_max=RECONNECT_MAX_MS)
        try:
            self.socket.dial(address, block=True)  # up from the first request on, when the process is
        except pynng.NNGException:
            self.socket.dial(address, block=False)

    def up(self) -> bool:
        return bool(self.socket.pipes)

    def close(self) -> None:
        self.socket.close()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class ShardClient:
    def __init__(
        self,
        addresses: list[str],
        key: MessageKey,
        timeout_ms: int = 10_000,
        max_in_flight: int = 64,
        busy_retries: int = 20,
        failover_rounds: int = 10,
        down_wait_ms: int | None = None,
    ) -> None:
        """`down_wait_ms`: how long a request waits for a shard with no process up, or none up but processes that are
        not the primary, before ShardUnavailable; None: as long as its timeout. `key`: the data folder's message key
        (journal/auth.py), which every request and reply carries proof of."""
        if not addresses:
            raise ValueError("a shard needs at least one process address")
        self.addresses = addresses
        self.key = key.for_receiver(f"client of {addresses}")
        self.timeout_ms = timeout_ms
        self.busy_retries = busy_retries
        self.failover_rounds = failover_rounds
        self.down_wait_s = (timeout_ms if down_wait_ms is None else down_wait_ms) / 1000
        self.idle_channels: list[list[_Channel]] = [[] for _ in addresses]  # at most max_in_flight each
        self.watches = [_Watch(address) for address in addresses]
        self.current = 0
        self.epoch = 0
        self.slots = asyncio.Semaphore(max_in_flight)

    def close(self) -> None:
        for idle in self.idle_channels:
            for channel in idle:
                channel.close()
            idle.clear()
        for watch in self.watches:
            watch.close()

    async def request(self, request: Request) -> Reply:
        """The reply of the primary. Retries and failover all fit in one `timeout_ms`, so a stalled shard costs a
        caller that long at most; each process gets its share of it before the next is tried. With no process up,
        or none up but ones that say they are not the primary, ShardUnavailable comes after `down_wait_ms`."""
        message = self.key.seal(request_encoder.encode(request))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_ms / 1000
        give_up_at = min(loop.time() + self.down_wait_s, deadline)
        busy = 0
        for _ in range(self.failover_rounds * len(self.addresses) + self.busy_retries):
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                break
            index = self._process_up()
            if index is None and (index := await self._coming_up(give_up_at)) is None:
                raise ShardUnavailable(f"no process of the shard is up at {self.addresses}")
            reply = await self._send(index, message, min(remaining_s, self.timeout_ms / 1000 / len(self.addresses)))
            if reply is None or reply.status == ReplyStatus.NOT_PRIMARY:
                self._next_process(index, reply)
                if reply is not None and loop.time() >= give_up_at and self._process_up(besides=index) is None:
                    raise ShardUnavailable(f"the shard has no primary now (only {self.addresses[index]} is up)")
                await asyncio.sleep(FAILOVER_PAUSE_S)
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
                # A reply without the key's proof is no answer.
                if (received := await channel.request(message, timeout_s)) is not None:
                    reply = self.key.open(received)
            finally:  # a channel whose request failed, timed out or was cancelled is never reused
                if reply is None:
                    channel.close()
                else:
                    self.idle_channels[index].append(channel)
            return None if reply is None else reply_decoder.decode(reply)

    def _channel(self, index: int) -> _Channel:
        """An idle channel to process `index` on this loop, or a new one; one made on an earlier loop, or whose
        connection went with a process that stopped, is closed."""
        loop = asyncio.get_running_loop()
        idle = self.idle_channels[index]
        while idle:
            channel = idle.pop()
            if channel.loop is loop and channel.connected():
                return channel
            channel.close()
        return _Channel(self.addresses[index], loop, self.timeout_ms)

    def _process_up(self, besides: int | None = None) -> int | None:
        """The process to ask: the current one if it is up, else the next that is (which becomes current)."""
        if self.current != besides and self.watches[self.current].up():
            return self.current
        count = len(self.addresses)
        for step in range(1, count):
            index = (self.current + step) % count
            if index != besides and self.watches[index].up():
                self.current = index
                return index
        return None

    async def _coming_up(self, until: float) -> int | None:
        """A process that comes up before the loop's time `until`; None if none does."""
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await asyncio.sleep(min(UP_POLL_S, until - loop.time()))
            if (index := self._process_up()) is not None:
                return index
        return None

    def _next_process(self, failed_index: int, reply: Reply | None) -> None:
        if reply is not None:
            self.epoch = max(self.epoch, reply.epoch)
        # Many requests fail at once when a primary dies: move on once, not once per request.
        if self.current == failed_index:
            self.current = (failed_index + 1) % len(self.addresses)

    # Convenience over `request`

    async def submit(self, commands: list) -> Reply:
        """Commands applied once, however often `request` re-sends them: the Submit's id goes with every copy."""
        return await self.request(Submit(commands, submit_ids.next()))

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

    async def read_entries(self, start_sequence: int, limit: int = 64, with_payloads: bool = True,
                           with_ledger_items: bool = True) -> list:
        """Committed entries from `start_sequence` on (their payloads empty unless `with_payloads`, their ledger
        commands emptied unless `with_ledger_items`); EntriesPruned if the journal no longer holds it."""
        reply = await self.request(ReadEntries(start_sequence, limit, with_payloads, with_ledger_items))
        if reply.status != ReplyStatus.OK:
            raise EntriesPruned(reply.message)
        return reply.entries

    async def status(self, with_state_hash: bool = False, with_check: bool = False):
        return (await self.request(Status(with_state_hash, with_check))).shard_status


class Announcements:
    """A shard's announcements of its durable sequence, made when a batch that queued deliveries (or moved a webhook)
    is durable (journal/shard.py `announce`): they wake a reader that follows the journal by its cursor, which then
    reads by sequence as always. nng pub/sub drops what a slow subscriber has no room for, and a replica promoted to
    primary announces nothing: a reader still polls, slowly, as well.

    The event loop watches nng's receive descriptor (as `_Channel` does): no nng thread calls into Python. A message
    without the data folder's key is dropped and counted."""

    def __init__(self, address: str, key: MessageKey) -> None:
        self.key = key.for_receiver(f"announcements of {address}")
        self.socket = pynng.Sub0(topics=b"", reconnect_time_min=RECONNECT_MIN_MS, reconnect_time_max=RECONNECT_MAX_MS)
        self.socket.dial(address, block=False)
        self.receive_fd = self.socket.recv_fd
        self.sequence = 0  # the highest announced so far
        self.loop: asyncio.AbstractEventLoop | None = None
        self.arrived: asyncio.Event | None = None

    async def wait(self, after: int, timeout_s: float) -> None:
        """Until the shard announces a sequence above `after`, or `timeout_s` has passed."""
        arrived = self._watched()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.sequence <= after and (remaining_s := deadline - loop.time()) > 0:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining_s)
            except asyncio.TimeoutError:
                return

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.receive_fd)
        self.socket.close()

    def _watched(self) -> asyncio.Event:
        """The event set when announcements arrive, watched from the running loop."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.receive_fd)
            self.loop, self.arrived = loop, asyncio.Event()
            loop.add_reader(self.receive_fd, self._on_receivable)
        return self.arrived

    def _on_receivable(self) -> None:
        for _ in range(MAX_ANNOUNCEMENTS_PER_WAKE):
            try:
                message = self.socket.recv(block=False)
            except pynng.NNGException:  # none left (TryAgain), or the socket closed
                return
            body = self.key.open(message)
            if body is None:
                continue
            if len(body) != ANNOUNCEMENT.size:
                self.key.drop()
                continue
            self.sequence = max(self.sequence, ANNOUNCEMENT.unpack(body)[0])
            self.arrived.set()


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
