"""Soak: millions of orders with their payments through one engine (in process, batched), engine time moving a day
on every so often with end-of-day archival on, to see that memory and the apply rate stay flat with history.

`python -m bench.soak [--orders 5000000] [--orders-per-batch 1000] [--orders-per-day 500000]`. Each order is paid
by a bank transfer quoting it (a payment, a transfer, an invoice, events); after each day the engine archives what
ended a day ago (engine/archival.py; the archived records are dropped here, where a shard would write them to its
cold store). Prints the RSS and the apply rate at each tenth, and

    RESULT soak orders=<n> rss_first_mb=<n> rss_last_mb=<n> rss_growth_pct=<n> apply_per_s_first=<n>
           apply_per_s_last=<n>

where `first` is the first tenth that ends after the first archival that took anything (the end of the second day:
at the first, nothing has ended a day ago yet), and `last` the last tenth.
"""

import argparse
import gc
import time

from bench.report import Report, rss_bytes
from engine import Batch, Engine
from engine.records import Archive, CreateMerchant, CreateOrder, Merchant, Order, ReceiveBankTransfer
from engine.types import NANOSECONDS_PER_SECOND

DAY_S = 86_400
MERCHANTS = 100
AMOUNT = 2_500


class Soak:
    def __init__(self, orders_per_batch: int, orders_per_day: int) -> None:
        self.engine = Engine()
        self.orders_per_batch = orders_per_batch
        self.day_ns = DAY_S * NANOSECONDS_PER_SECOND
        # Engine time per batch: a day takes orders_per_day orders.
        self.step_ns = max(1, self.day_ns * orders_per_batch // orders_per_day)
        self.timestamp = 1_700_000_000 * NANOSECONDS_PER_SECOND
        self.made = 0
        self.archived = 0
        self.archive_runs = 0
        self.apply([CreateMerchant(Merchant(id=f"m{number}", name=f"Shop {number}", email=f"m{number}@example.com"))
                    for number in range(MERCHANTS)])

    def apply(self, commands: list) -> list:
        self.timestamp += self.step_ns
        return self.engine.apply(Batch(self.engine.sequence + 1, self.timestamp, commands)).results

    def orders(self) -> None:
        """One batch of new orders, each followed by the bank transfer that pays it."""
        first = self.made
        self.made += self.orders_per_batch
        commands = []
        for number in range(first, self.made):
            merchant_id, order_id = f"m{number % MERCHANTS}", f"ord_{number}"
            commands += [
                CreateOrder(order=Order(id=order_id, merchant_id=merchant_id, name=f"Order {order_id}", amount=AMOUNT,
                                        currency="usd", payment_methods=["bank_transfer"]), expires_in_s=3600),
                ReceiveBankTransfer(merchant_id=merchant_id, order_id=order_id, callback_id=f"cb_{order_id}",
                                    amount=AMOUNT, currency="usd", method="bank_transfer",
                                    payment_id=f"pay_{order_id}", transfer_id=f"{merchant_id}:pay_{order_id}")]
        self.apply(commands)

    def archive(self) -> None:
        """End of day: Archive until nothing more has ended a day ago."""
        self.archive_runs += 1
        while True:
            archived = self.apply([Archive(DAY_S)])[0].record
            self.archived += len(archived.orders) + len(archived.payments) + len(archived.invoices)
            if not archived.more:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--orders-per-batch", type=int, default=1_000)
    parser.add_argument("--orders-per-day", type=int, default=500_000)
    args = parser.parse_args()
    soak = Soak(args.orders_per_batch, args.orders_per_day)
    report = Report("soak")
    tenth = max(args.orders // 10, args.orders_per_batch)
    next_day_at = args.orders_per_day
    next_tenth_at = tenth
    started = time.perf_counter()
    measured: list[tuple[int, float]] = []  # (RSS bytes, orders per second) at each tenth after the first archival
    tenth_started, tenth_orders = time.perf_counter(), 0
    while soak.made < args.orders:
        soak.orders()
        tenth_orders += args.orders_per_batch
        if soak.made >= next_day_at:
            next_day_at += args.orders_per_day
            soak.archive()
        if soak.made >= next_tenth_at:
            next_tenth_at += tenth
            gc.collect()
            rate = tenth_orders / (time.perf_counter() - tenth_started)
            rss = rss_bytes()
            report.row(orders=soak.made, rss_mb=round(rss / 2**20), orders_per_s=round(rate),
                       archived=soak.archived, days=soak.archive_runs)
            if soak.archived:
                measured.append((rss, rate))
            tenth_started, tenth_orders = time.perf_counter(), 0
    (first_rss, first_rate), (last_rss, last_rate) = (measured[0], measured[-1]) if measured else ((0, 0.0),) * 2
    report.result(orders=soak.made, rss_first_mb=round(first_rss / 2**20), rss_last_mb=round(last_rss / 2**20),
                  rss_growth_pct=round(100 * (last_rss - first_rss) / first_rss, 1) if first_rss else 0,
                  apply_per_s_first=round(first_rate), apply_per_s_last=round(last_rate),
                  seconds=round(time.perf_counter() - started))


if __name__ == "__main__":
    main()
