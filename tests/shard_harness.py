"""Real shard processes for tests: free loopback ports, start, kill -9, restart, and a load that tracks acknowledgements."""

import asyncio
import pathlib
import random
import socket

from engine import Account, AccountCode, CreateAccounts, CreateTransfers, Transfer, TransferCode, TransferFlag
from journal.auth import MessageKey, ensure_key_file, key_path, load_key
from journal.client import ShardClient, ShardUnavailable
from journal.processes import ShardProcess, running_address, running_key, shard_folder
from journal.shard import ShardConfig
from journal.wire import ReplyStatus

OWNER = "test"
CURRENCY = "usd"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def address(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def shard_key_file(root: pathlib.Path) -> str:
    """The message key of the shards under `root`, made on first use (as serve makes a data folder's)."""
    path = key_path(root)
    ensure_key_file(path)
    return str(path)


def key_of(config: ShardConfig) -> MessageKey:
    return load_key(config.key_file)


def primary_config(folder: pathlib.Path, **options) -> ShardConfig:
    client, announce = free_ports(2)
    return ShardConfig(data=str(folder), client_address=address(client), announce_address=address(announce),
                       key_file=shard_key_file(folder.parent), **options)


def replica_pair(root: pathlib.Path, sync: bool = True, **options) -> tuple[ShardConfig, ShardConfig]:
    primary_client, replica_client, replication = free_ports(3)
    options.setdefault("key_file", shard_key_file(root))
    primary = ShardConfig(data=str(root / "primary"), client_address=address(primary_client),
                          replica_address=address(replication), sync_replication=sync, **options)
    replica = ShardConfig(data=str(root / "replica"), client_address=address(replica_client),
                          replication_address=address(replication), role="replica", **options)
    return primary, replica


def start(config: ShardConfig) -> ShardProcess:
    process = ShardProcess(config, log_path=pathlib.Path(config.data).with_suffix(".log")).start()
    process.wait_ready()
    return process


def account_id(number: int) -> str:
    return f"{OWNER}:acct_{number}"


class Load:
    """Submits linked pairs of transfers and remembers exactly which were acknowledged.

    Each submission is a chain A→B then B→C of the same amount: after any
    crash, both exist or neither does, so a half-applied chain shows up.
    """

    def __init__(self, client: ShardClient, accounts: int = 50, seed: int = 1) -> None:
        self.client = client
        self.accounts = accounts
        self.random = random.Random(seed)
        self.next_id = 0
        self.acknowledged: list[tuple[str, str]] = []
        self.unacknowledged: list[tuple[str, str]] = []
        self.stopped = False

    def stop(self) -> None:
        """Workers finish the submission they are in, then stop."""
        self.stopped = True

    async def create_accounts(self) -> None:
        accounts = [Account(account_id(number), CURRENCY) for number in range(self.accounts)]
        reply = await self.client.submit([CreateAccounts(accounts)])
        assert set(reply.results[0]) <= {0, AccountCode.exists}, reply

    def _chain(self) -> list[Transfer]:
        first, second, third = self.random.sample(range(self.accounts), 3)
        self.next_id += 1
        amount = self.random.randint(1, 1000)
        ids = (f"{OWNER}:tr_{self.next_id}_a", f"{OWNER}:tr_{self.next_id}_b")
        return [
            Transfer(ids[0], account_id(first), account_id(second), amount, CURRENCY, flags=TransferFlag.LINKED),
            Transfer(ids[1], account_id(second), account_id(third), amount, CURRENCY),
        ]

    async def _submit_one(self, chains_per_submit: int) -> None:
        chains = [self._chain() for _ in range(chains_per_submit)]
        pairs = [(chain[0].id, chain[1].id) for chain in chains]
        try:
            reply = await self.client.submit([CreateTransfers([t for chain in chains for t in chain])])
        except ShardUnavailable:
            self.unacknowledged += pairs
            return
        assert reply.status == ReplyStatus.OK, reply
        # A retry after a lost reply finds its own transfers: "exists" is success too.
        assert set(reply.results[0]) <= {0, TransferCode.exists}, reply.results
        self.acknowledged += pairs

    async def run(self, duration_s: float, concurrency: int = 8, chains_per_submit: int = 20) -> None:
        """Keep `concurrency` submissions in flight for `duration_s` or until stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration_s
        self.stopped = False

        async def worker() -> None:
            while loop.time() < deadline and not self.stopped:
                await self._submit_one(chains_per_submit)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def state_hashes(data: pathlib.Path, shard: int = 0) -> set[str]:
    """The state hashes of a running shard's primary and replica (one, when they agree)."""
    async def hashes() -> set[str]:
        found = set()
        for folder in (shard_folder(data, shard), shard_folder(data, shard, replica=True)):
            client = ShardClient([running_address(folder)], running_key(folder), timeout_ms=2000)
            try:
                found.add((await client.status(with_state_hash=True)).state_hash)
            finally:
                client.close()
        return found

    return asyncio.run(hashes())

