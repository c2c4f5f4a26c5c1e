"""Actors that follow the shards' committed batches, each with a durable cursor per shard.

A follower reads entries by sequence number (nng pub/sub may drop; the journal
does not), acts on each, and only then moves its cursor, which it keeps in a
small file written atomically: after a crash it reads again from where it had
finished, so it acts at least once. The bank's payout dispatcher is one.
"""

import asyncio
import logging
import os
import pathlib
import struct

import aiohttp
import ray

from actors.connectors import NAMESPACE
from actors.runtime import die_with_parent
from engine.records import CreatePayout, Idempotent, Outcome
from journal.client import ShardClient
from journal.recovery import batch_decoder

log = logging.getLogger("paygate.actors.followers")
CURSOR = struct.Struct(">Q")
POLL_S = 0.2
ENTRIES_PER_READ = 64
REQUEST_TIMEOUT_S = 10.0
ATTEMPTS = 5


class Cursor:
    """The last sequence number a follower finished with, for one shard."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.sequence = CURSOR.unpack(path.read_bytes())[0] if path.exists() else 0

    def advance(self, sequence: int) -> None:
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, CURSOR.pack(sequence))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, self.path)
        self.sequence = sequence


def created_payouts(entry) -> list:
    """The payouts a committed batch created (directly or under an idempotency key, first time only)."""
    payouts = []
    batch = batch_decoder.decode(entry.payload)
    for command, result in zip(batch.commands, entry.result.results):
        inner = command.command if type(command) is Idempotent else command
        if type(inner) is CreatePayout and isinstance(result, Outcome) and result.code == "ok" and not result.replayed:
            payouts.append(inner.payout)
    return payouts


class PayoutDispatcherActor:
    """Sends every payout the shards committed to the bank, once it is durable there (the bank dedups by id)."""

    def __init__(self, bank_url: str, shard_addresses: list[list[str]], cursor_folder: str) -> None:
        die_with_parent()
        self.bank_url = bank_url
        self.shards = [ShardClient(addresses, timeout_ms=5000) for addresses in shard_addresses]
        folder = pathlib.Path(cursor_folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.cursors = [Cursor(folder / f"payouts-shard-{index}.cursor") for index in range(len(self.shards))]
        self.task: asyncio.Task | None = None
        self.sent = 0

    async def start(self) -> str:
        if self.task is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
            self.task = asyncio.get_running_loop().create_task(self._run())
        return "payout dispatcher following " + ", ".join(str(cursor.sequence) for cursor in self.cursors)

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> dict:
        return {"sent": self.sent, "cursors": [cursor.sequence for cursor in self.cursors]}

    async def _run(self) -> None:
        while True:
            busy = False
            for shard, cursor in zip(self.shards, self.cursors):
                busy |= await self._follow(shard, cursor)
            if not busy:
                await asyncio.sleep(POLL_S)

    async def _follow(self, shard: ShardClient, cursor: Cursor) -> bool:
        try:
            entries = await shard.read_entries(cursor.sequence + 1, ENTRIES_PER_READ)
        except Exception as error:  # a shard failing over: try again on the next round
            log.warning("reading committed entries failed: %s", error)
            return False
        for entry in entries:
            for payout in created_payouts(entry):
                await self._send(payout)
            cursor.advance(entry.sequence)
        return bool(entries)

    async def _send(self, payout) -> None:
        body = {"payout_id": payout.id, "merchant_id": payout.merchant_id, "amount": payout.amount,
                "currency": payout.currency}
        for attempt in range(ATTEMPTS):
            try:
                async with self.session.post(f"{self.bank_url}/v1/payouts", json=body) as response:
                    if response.status < 500:
                        self.sent += 1
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2 * 2**attempt)
        log.error("the bank did not take payout %s; it stays pending until a person looks", payout.id)


PayoutDispatcher = ray.remote(num_cpus=0, max_concurrency=4)(PayoutDispatcherActor)


def spawn_payouts(bank_url: str, shard_addresses: list[list[str]], cursor_folder: pathlib.Path):
    handle = PayoutDispatcher.options(name="payout-dispatcher", namespace=NAMESPACE, get_if_exists=True).remote(
        bank_url, shard_addresses, str(cursor_folder))
    ray.get(handle.start.remote(), timeout=60)
    return handle
