"""Engine benchmark: transfers applied per second, against a same-run reference loop.

`python -m bench.engine [--batches N] [--memory-transfers N]`. Workloads: batches
of 8190 transfers among 100,000 accounts, uniform; 80% on 10 hot accounts; and
a pending / post mix. The reference loop only moves integers between two dict
entries per transfer; the minimal ledger loop does what any ledger keeping
transfers by id and by account must (find both accounts, store the transfer,
list it on both, move the amount) with no check at all. Memory is RSS growth at 1,000,000 accounts and at
`--memory-transfers` (5,000,000) stored transfers. Prints medians and a RESULT line.
"""

import argparse
import gc
import random
import statistics
import time

import msgspec

from bench.report import Report, rss_bytes
from engine import Account, Batch, CreateAccounts, CreateTransfers, Engine, Transfer, TransferFlag

BATCH_SIZE = 8190
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Transfer])
ACCOUNT_COUNT = 100_000
HOT_ACCOUNT_COUNT = 10
CURRENCY = "usd"


class Bench:
    def __init__(self, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.engine = Engine()
        self.next_id = 0
        self.timestamp = 1_000_000_000

    def apply(self, commands: list) -> list:
        self.timestamp += 1_000_000
        return self.engine.apply(Batch(self.engine.sequence + 1, self.timestamp, commands)).results

    def create_accounts(self, count: int) -> list[str]:
        ids = [f"acct_{self.next_id + n}" for n in range(count)]
        self.next_id += count
        for start in range(0, count, BATCH_SIZE):
            chunk = [Account(account_id, CURRENCY) for account_id in ids[start : start + BATCH_SIZE]]
            assert not any(self.apply([CreateAccounts(chunk)])[0])
        return ids

    def transfer_ids(self, count: int) -> list[str]:
        ids = [f"tr_{self.next_id + n}" for n in range(count)]
        self.next_id += count
        return ids

    def pairs(self, accounts: list[str], count: int, hot_share: float) -> list[tuple[str, str]]:
        pick = self.random.choice
        hot = accounts[:HOT_ACCOUNT_COUNT]
        result = []
        for _ in range(count):
            pool = hot if self.random.random() < hot_share else accounts
            debit = pick(pool)
            credit = pick(accounts)
            while credit == debit:
                credit = pick(accounts)
            result.append((debit, credit))
        return result

    def plain_batch(self, accounts: list[str], hot_share: float) -> tuple[list, list]:
        pairs = self.pairs(accounts, BATCH_SIZE, hot_share)
        amounts = [self.random.randint(1, 100_000) for _ in pairs]
        ids = self.transfer_ids(len(pairs))
        transfers = as_received([
            Transfer(transfer_id, debit, credit, amount, CURRENCY)
            for transfer_id, (debit, credit), amount in zip(ids, pairs, amounts)
        ])
        return transfers, [((t.debit_account_id, t.credit_account_id), t.amount) for t in transfers]

    def pending_post_batch(self, accounts: list[str]) -> tuple[list, list]:
        """Half the batch opens pending transfers, the other half posts them (partly)."""
        half = BATCH_SIZE // 2
        pairs = self.pairs(accounts, half, 0.0)
        ids = self.transfer_ids(half)
        post_ids = self.transfer_ids(half)
        pending = [
            Transfer(transfer_id, debit, credit, 1000, CURRENCY, timeout_s=3600, flags=TransferFlag.PENDING)
            for transfer_id, (debit, credit) in zip(ids, pairs)
        ]
        posts = [
            Transfer(post_id, amount=600, pending_id=transfer_id, flags=TransferFlag.POST_PENDING)
            for post_id, transfer_id in zip(post_ids, ids)
        ]
        transfers = as_received(pending + posts)
        return transfers, [((t.debit_account_id, t.credit_account_id), 600) for t in transfers[:half]] * 2

    def time_engine(self, transfers: list[Transfer]) -> float:
        start = time.perf_counter()
        results = self.apply([CreateTransfers(transfers)])[0]
        elapsed = time.perf_counter() - start
        assert not any(results), "benchmark transfers must all succeed"
        return len(transfers) / elapsed


def as_received(transfers: list[Transfer]) -> list[Transfer]:
    """The transfers as a shard gets them: decoded from a message, every id a string of its own (not the
    account's own id object, whose hash and identity would make lookups cheaper than they are in service)."""
    return _decoder.decode(_encoder.encode(transfers))


def time_reference(moves: list[tuple[tuple[str, str], int]], balances: dict[str, int]) -> float:
    """The floor of any Python ledger: move an integer between two dict entries."""
    start = time.perf_counter()
    for (debit, credit), amount in moves:
        balances[debit] -= amount
        balances[credit] += amount
    elapsed = time.perf_counter() - start
    return len(moves) / elapsed


def time_minimal_ledger(transfers: list[Transfer], accounts: dict[str, Account], stored: dict[str, Transfer]) -> float:
    """The floor of any ledger that keeps transfers by id and by account, with no check at all: find both
    accounts, store the transfer, list it on both, move the amount."""
    start = time.perf_counter()
    for t in transfers:
        debit = accounts[t.debit_account_id]
        credit = accounts[t.credit_account_id]
        stored[t.id] = t
        debit.transfers.append(t)
        credit.transfers.append(t)
        debit.debits_posted += t.amount
        credit.credits_posted += t.amount
    elapsed = time.perf_counter() - start
    return len(transfers) / elapsed


def measure_minimal_ledger(bench: "Bench", accounts: list[str], batches: int, report: Report) -> float:
    minimal_accounts = {account_id: Account(account_id, CURRENCY, transfers=[]) for account_id in accounts}
    stored: dict[str, Transfer] = {}
    rates = [time_minimal_ledger(bench.plain_batch(accounts, 0.0)[0], minimal_accounts, stored) for _ in range(batches)]
    rate = statistics.median(rates)
    report.row(workload="minimal_ledger_uniform", transfers_per_s=round(rate))
    return rate


def measure_speed(batches: int, report: Report) -> tuple[float, float, float]:
    bench = Bench()
    accounts = bench.create_accounts(ACCOUNT_COUNT)
    reference_balances = dict.fromkeys(accounts, 0)
    gc.freeze()
    engine_rates: list[float] = []
    reference_rates: list[float] = []
    workloads = {
        "uniform": lambda: bench.plain_batch(accounts, 0.0),
        "hot_80_percent": lambda: bench.plain_batch(accounts, 0.8),
        "pending_post": lambda: bench.pending_post_batch(accounts),
    }
    for name, make_batch in workloads.items():
        rates = []
        for _ in range(batches):
            transfers, moves = make_batch()
            rates.append(bench.time_engine(transfers))
            reference_rates.append(time_reference(moves, reference_balances))
        report.row(workload=name, transfers_per_s=round(statistics.median(rates)))
        engine_rates.extend(rates)
    bench.engine.verify()
    minimal_rate = measure_minimal_ledger(bench, accounts, batches, report)
    return statistics.median(engine_rates), statistics.median(reference_rates), minimal_rate


def measure_memory(account_count: int, transfer_count: int, report: Report) -> tuple[float, float]:
    bench = Bench(seed=11)
    gc.collect()
    before = rss_bytes()
    accounts = bench.create_accounts(account_count)
    gc.collect()
    after_accounts = rss_bytes()
    for _ in range(transfer_count // BATCH_SIZE):
        transfers, _ = bench.plain_batch(accounts, 0.0)
        bench.time_engine(transfers)
    gc.collect()
    after_transfers = rss_bytes()
    stored = len(bench.engine.ledger.transfers)
    per_account = (after_accounts - before) / account_count
    per_transfer = (after_transfers - after_accounts) / stored
    report.row(accounts=account_count, stored_transfers=stored, bytes_per_account=round(per_account),
               bytes_per_transfer=round(per_transfer))
    return per_account, per_transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=15, help="batches per workload")
    parser.add_argument("--memory-accounts", type=int, default=1_000_000)
    parser.add_argument("--memory-transfers", type=int, default=5_000_000)
    args = parser.parse_args()
    report = Report("engine")
    engine_rate, reference_rate, minimal_rate = measure_speed(args.batches, report)
    per_account, per_transfer = measure_memory(args.memory_accounts, args.memory_transfers, report)
    report.result(
        transfers_per_s=round(engine_rate),
        reference_per_s=round(reference_rate),
        ratio=round(engine_rate / reference_rate, 3),
        minimal_ledger_per_s=round(minimal_rate),
        bytes_per_account=round(per_account),
        bytes_per_transfer=round(per_transfer),
    )


if __name__ == "__main__":
    main()
