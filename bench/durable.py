"""Durable shard benchmark: transfers per second through real shard processes, with fsync.

`python -m bench.durable [--batches N] [--in-flight N] [--replica-in-flight N]`. This process is the
client of real shard processes (journal.processes) journaling to LMDB with
fsync: run 1 is one primary, run 2 a primary with a sync replica. Each run
creates 100,000 accounts, then submits `--batches` (40) batches of 8190 plain
transfers between random accounts. The primary alone gets `--in-flight` (2)
at a time: one applied while the one before is journaled (more in flight only
queue, adding latency). With a replica, `--replica-in-flight` (1): the replica
applies each batch on the other core, so a second batch in flight finds no
core free and only waits, doubling latency for no more throughput.
Rates are medians over windows of 4 consecutive batches; latency is each
batch's send to reply (the RESULT's `batch_p99_ms` is run 2's). Every run
checks every result code and that all processes end with one state hash.
The same run measures LMDB's raw rate (the same transfers, msgpack-encoded, one
put each and one fsync per batch), replay of run 1's journal into a fresh
engine, and the floor of any Python replay of that journal (`replay_reference_per_s`:
read, check and decode each entry, then only move an integer between two dict
entries per transfer). Prints rows and a RESULT line.
"""

import argparse
import asyncio
import pathlib
import random
import statistics
import sys
import tempfile
import time

import lmdb
import msgspec

from bench.report import Report
from engine import Account, CreateAccounts, CreateTransfers, Transfer
from journal.client import ShardClient
from journal.auth import MessageKey, ensure_key_file, key_path, load_key
from journal.processes import InternalAddresses, Layout, ShardProcess, shard_configs, shard_folder
from journal.recovery import batch_decoder, replay_from_scratch
from journal.store import DEFAULT_MAP_SIZE_BYTES, GENESIS_HASH, KEY, Journal
from journal.wire import Reply, ReplyStatus

BATCH_SIZE = 8190
ACCOUNT_COUNT = 100_000
ACCOUNTS_PER_SUBMIT = 50_000
WINDOW_BATCHES = 4
CURRENCY = "usd"


class RunFigures(msgspec.Struct):
    transfers_per_s: float
    latencies_s: list[float]
    state_hash: str


def account_ids() -> list[str]:
    return [f"bench:acct_{n}" for n in range(1, ACCOUNT_COUNT + 1)]


def make_batches(count: int, seed: int = 7) -> list[list[Transfer]]:
    """Batches of plain transfers between distinct random accounts; ids unique across all batches."""
    generator = random.Random(seed)
    accounts = account_ids()
    batches = []
    for batch in range(count):
        transfers = []
        for n in range(batch * BATCH_SIZE + 1, (batch + 1) * BATCH_SIZE + 1):
            debit, credit = generator.sample(accounts, 2)
            transfers.append(Transfer(f"bench:tr_{n}", debit, credit, generator.randint(1, 100_000), CURRENCY))
        batches.append(transfers)
    return batches


def check(reply: Reply, what: str) -> None:
    """The submit went through and every item in it succeeded (code 0)."""
    if reply.status != ReplyStatus.OK:
        raise RuntimeError(f"{what}: shard answered {ReplyStatus.NAMES[reply.status]} {reply.message!r}")
    failed = [code for codes in reply.results for code in codes if code]
    if failed:
        raise RuntimeError(f"{what}: {len(failed)} items failed, first code {failed[0]}")


def window_rates(start: float, finishes: list[float]) -> list[float]:
    """Transfers per second over each group of WINDOW_BATCHES consecutive batch completions."""
    edges = [start] + sorted(finishes)[WINDOW_BATCHES - 1 :: WINDOW_BATCHES]
    return [WINDOW_BATCHES * BATCH_SIZE / (end - begin) for begin, end in zip(edges, edges[1:])]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def drive(primary_address: str, addresses: list[str], key: MessageKey, batches: list[list[Transfer]],
                in_flight: int) -> tuple[float, list[float], list[float], list[str]]:
    """Create the accounts, then submit the batches `in_flight` at a time.

    Returns the start time, each batch's completion time and latency, and the
    state hash of every process at `addresses`.
    """
    clients = {address: ShardClient([address], key) for address in addresses}
    client = clients[primary_address]
    try:
        accounts = account_ids()
        for first in range(0, ACCOUNT_COUNT, ACCOUNTS_PER_SUBMIT):
            chunk = [Account(account_id, CURRENCY) for account_id in accounts[first : first + ACCOUNTS_PER_SUBMIT]]
            check(await client.submit([CreateAccounts(chunk)]), "create accounts")
        pending = iter(batches)
        finishes: list[float] = []
        latencies: list[float] = []

        async def submitter() -> None:
            for transfers in pending:
                sent = time.perf_counter()
                reply = await client.submit([CreateTransfers(transfers)])
                finished = time.perf_counter()
                check(reply, "create transfers")
                finishes.append(finished)
                latencies.append(finished - sent)

        start = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(in_flight)))
        statuses = [await clients[address].status(with_state_hash=True) for address in addresses]
        return start, finishes, latencies, [status.state_hash for status in statuses]
    finally:
        for each in clients.values():
            each.close()


def run_shard(name: str, folder: pathlib.Path, replica: bool, batches: list[list[Transfer]], in_flight: int,
              report: Report) -> RunFigures:
    """Start a primary (and, with `replica`, its sync replica first), drive it, stop every process."""
    layout = Layout(shard_count=1, replica=replica)
    key_file = key_path(folder)
    ensure_key_file(key_file)
    addresses = InternalAddresses.in_data_folder(folder)
    primary_config, replica_config = shard_configs(folder, layout, addresses, sync=True, key_file=key_file)[0]
    configs = [config for config in (replica_config, primary_config) if config is not None]
    processes: list[ShardProcess] = []
    try:
        for config in configs:
            processes.append(ShardProcess(config).start())
            processes[-1].wait_ready()
        start, finishes, latencies, hashes = asyncio.run(
            drive(primary_config.client_address, [config.client_address for config in configs], load_key(key_file), batches,
                  in_flight)
        )
    finally:
        exit_codes = {process.config.role: process.stop() for process in reversed(processes)}
    if any(exit_codes.values()):
        # The figures are in and checked; a shard that had to be killed to stop is reported, not fatal.
        print(f"warning: {name}: exit codes on stop {exit_codes} (-9: killed after ignoring SIGTERM)",
              file=sys.stderr, flush=True)
    state_hashes = {config.role: state_hash for config, state_hash in zip(configs, hashes)}
    if len(set(hashes)) != 1:
        raise RuntimeError(f"{name}: state hashes differ: {state_hashes}")
    rate = statistics.median(window_rates(start, finishes))
    report.row(
        run=name,
        processes=len(configs),
        batches=len(batches),
        transfers_per_s=round(rate),
        overall_per_s=round(len(batches) * BATCH_SIZE / (max(finishes) - start)),
        batch_p50_ms=round(statistics.median(latencies) * 1000, 1),
        batch_p99_ms=round(p99(latencies) * 1000, 1),
        **{f"{role}_exit_code": code for role, code in exit_codes.items()},
        **{f"{role}_state_hash": state_hash for role, state_hash in state_hashes.items()},
    )
    return RunFigures(rate, latencies, hashes[0])


def measure_replay(folder: pathlib.Path, expected_hash: str, report: Report) -> float:
    """Replay a stopped shard's whole journal into a fresh engine; transfers replayed per second."""
    journal = Journal(folder)
    try:
        start = time.perf_counter()
        engine, recovery = replay_from_scratch(journal)
        elapsed = time.perf_counter() - start
    finally:
        journal.close()
    if engine.state_hash() != expected_hash:
        raise RuntimeError(f"replay: state hash {engine.state_hash()} differs from the shard's {expected_hash}")
    rate = recovery.replayed_transfers / elapsed
    report.row(run="replay", replayed_batches=recovery.replayed_batches, replayed_transfers=recovery.replayed_transfers,
               seconds=round(elapsed, 2), replay_entries_per_s=round(rate))
    return rate


def measure_replay_reference(folder: pathlib.Path, report: Report) -> float:
    """The floor of any replay of that journal in Python: read and check each entry, decode it, and only move
    an integer between two dict entries per transfer (bench/engine.py's reference loop)."""
    balances = dict.fromkeys(account_ids(), 0)
    transfers = 0
    journal = Journal(folder)
    try:
        start = time.perf_counter()
        for entry in journal.scan(1, GENESIS_HASH):
            for command in batch_decoder.decode(entry.payload).commands:
                if type(command) is CreateTransfers:
                    transfers += len(command.transfers)
                    for t in command.transfers:
                        balances[t.debit_account_id] -= t.amount
                        balances[t.credit_account_id] += t.amount
        elapsed = time.perf_counter() - start
    finally:
        journal.close()
    rate = transfers / elapsed
    report.row(run="replay_reference", replayed_transfers=transfers, seconds=round(elapsed, 2),
               replay_reference_per_s=round(rate))
    return rate


def measure_lmdb_raw(folder: pathlib.Path, batches: list[list[Transfer]], report: Report) -> float:
    """LMDB alone: each transfer's msgpack bytes as one appended put, one commit (one fsync) per batch."""
    encoder = msgspec.msgpack.Encoder()
    environment = lmdb.open(str(folder), map_size=DEFAULT_MAP_SIZE_BYTES, sync=True, metasync=True,
                            writemap=False, readahead=False)
    rates = []
    sequence = 0
    try:
        for transfers in batches:
            items = [(KEY.pack(sequence + offset), encoder.encode(transfer)) for offset, transfer in enumerate(transfers, 1)]
            sequence += len(items)
            start = time.perf_counter()
            with environment.begin(write=True) as transaction:
                for key, value in items:
                    transaction.put(key, value, append=True)
            rates.append(len(items) / (time.perf_counter() - start))
    finally:
        environment.close()
    rate = statistics.median(rates)
    report.row(run="lmdb_raw", batches=len(batches), lmdb_raw_per_s=round(rate))
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help=f"batches of {BATCH_SIZE} transfers per run")
    parser.add_argument("--in-flight", type=int, default=2,
                        help="batches submitted and not yet answered, at most, to the primary alone")
    parser.add_argument("--replica-in-flight", type=int, default=1, help="the same, to a primary with a sync replica")
    args = parser.parse_args()
    if args.batches < WINDOW_BATCHES:
        parser.error(f"--batches must be at least {WINDOW_BATCHES}")
    report = Report("durable")
    batches = make_batches(args.batches)
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as temporary:
        root = pathlib.Path(temporary)
        single = run_shard("primary", root / "primary", False, batches, args.in_flight, report)
        replay_rate = measure_replay(shard_folder(root / "primary", 0), single.state_hash, report)
        replay_reference_rate = measure_replay_reference(shard_folder(root / "primary", 0), report)
        replicated = run_shard("sync_replica", root / "replicated", True, batches, args.replica_in_flight, report)
        lmdb_rate = measure_lmdb_raw(root / "lmdb-raw", batches, report)
    report.result(
        transfers_per_s=round(single.transfers_per_s),
        replicated_per_s=round(replicated.transfers_per_s),
        batch_p99_ms=round(p99(replicated.latencies_s) * 1000, 1),
        lmdb_raw_per_s=round(lmdb_rate),
        replay_entries_per_s=round(replay_rate),
        replay_reference_per_s=round(replay_reference_rate),
    )


if __name__ == "__main__":
    main()
