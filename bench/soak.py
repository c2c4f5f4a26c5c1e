"""Soak: millions of orders with their payments through one engine (in process, batched), engine time moving a day
on every so often with end-of-day archival on, to see that memory and the apply rate stay flat with history.

`python -m bench.soak [--orders 5000000] [--orders-per-batch 1000] [--orders-per-day <a tenth of the orders>]`.
Each order is paid by a bank transfer quoting it (a payment, a transfer, an invoice, events); each batch also
refunds part of one payment and pays a merchant out (the bank's answer comes with the next batch). After each day the
engine archives what ended a day ago (engine/archival.py; the archived records are dropped here, where a shard would
write them to its cold store), in batches a nanosecond apart. Prints the RSS and the apply rate at each tenth, and

    RESULT soak orders=<n> rss_first_mb=<n> rss_last_mb=<n> rss_growth_pct=<n> apply_per_s_first=<n>
           apply_per_s_last=<n>

where `first` is the first tenth run wholly after the first day's archival (the archival at the end of the second
day: at the first, nothing has ended a day ago yet), and `last` the last tenth. The apply rate counts this process's
CPU time, not the wall clock's: other work sharing the machine's cores does not count as the engine slowing down.
"""

import argparse
import gc
import time

from bench.report import Report, rss_bytes
from engine import Batch, Engine
from engine.records import (Archive, CreateMerchant, CreateOrder, CreatePayout, CreateRefund, Merchant, Order, Payout,
                            ReceiveBankTransfer, Refund, payout_result)
from engine.types import NANOSECONDS_PER_SECOND

DAY_S = 86_400
MERCHANTS = 100
AMOUNT = 2_500
ARCHIVED_KINDS = ("orders", "payments", "refunds", "invoices", "payouts", "events", "deliveries", "transfers")


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

    def apply(self, commands: list, step_ns: int = 0) -> list:
        self.timestamp += step_ns or self.step_ns
        return self.engine.apply(Batch(self.engine.sequence + 1, self.timestamp, commands)).results

    def orders(self) -> None:
        """One batch of new orders, each followed by the bank transfer that pays it; a payout and the bank's word on
        the payout before, and a refund of part of the batch before's first payment."""
        first = self.made
        self.made += self.orders_per_batch
        batch = first // self.orders_per_batch
        commands = [self.payout(batch)]
        if batch:
            commands += self.after_batch(batch - 1, first - self.orders_per_batch)
        for number in range(first, self.made):
            merchant_id, order_id = f"m{number % MERCHANTS}", f"ord_{number}"
            commands += [
                CreateOrder(order=Order(id=order_id, merchant_id=merchant_id, name=f"Order {order_id}", amount=AMOUNT,
                                        currency="usd", payment_methods=["bank_transfer"]), expires_in_s=3600),
                ReceiveBankTransfer(merchant_id=merchant_id, order_id=order_id, callback_id=f"cb_{order_id}",
                                    amount=AMOUNT, currency="usd", method="bank_transfer",
                                    payment_id=f"pay_{order_id}", transfer_id=f"{merchant_id}:pay_{order_id}")]
        self.apply(commands)

    @staticmethod
    def payout(batch: int) -> CreatePayout:
        merchant_id = f"m{batch % MERCHANTS}"
        return CreatePayout(payout=Payout(id=f"po_{batch}", merchant_id=merchant_id, amount=AMOUNT, currency="usd",
                                          hold_id=f"{merchant_id}:po_{batch}.hold"))

    @staticmethod
    def after_batch(batch: int, first_order: int) -> list:
        """The bank pays the batch's payout; a fifth of its first order's payment goes back."""
        merchant_id, refunded = f"m{first_order % MERCHANTS}", f"pay_ord_{first_order}"
        return [payout_result(f"m{batch % MERCHANTS}", f"po_{batch}", f"bank_{batch}", paid=True),
                CreateRefund(refund=Refund(id=f"re_{batch}", merchant_id=merchant_id, payment_id=refunded,
                                           amount=AMOUNT // 5), transfer_id=f"{merchant_id}:re_{batch}")]

    def archive(self) -> None:
        """End of day: Archive until nothing more has ended a day ago."""
        self.archive_runs += 1
        while True:
            archived = self.apply([Archive(DAY_S)], step_ns=1)[0].record
            self.archived += sum(len(getattr(archived, field)) for field in ARCHIVED_KINDS)
            if not archived.more:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--orders-per-batch", type=int, default=1_000)
    parser.add_argument("--orders-per-day", type=int, default=0, help="default: a tenth of --orders")
    args = parser.parse_args()
    args.orders_per_day = args.orders_per_day or max(args.orders // 10, args.orders_per_batch)
    soak = Soak(args.orders_per_batch, args.orders_per_day)
    report = Report("soak")
    tenth = max(args.orders // 10, args.orders_per_batch)
    next_day_at = args.orders_per_day
    next_tenth_at = tenth
    started = time.perf_counter()
    measured: list[tuple[int, float]] = []  # (RSS bytes, orders per second) of each tenth after the first archival
    archived_before_tenth = False
    tenth_started, tenth_orders = time.process_time(), 0
    while soak.made < args.orders:
        soak.orders()
        tenth_orders += args.orders_per_batch
        if soak.made >= next_day_at:
            next_day_at += args.orders_per_day
            soak.archive()
        if soak.made >= next_tenth_at:
            next_tenth_at += tenth
            gc.collect()
            rate = tenth_orders / (time.process_time() - tenth_started)
            rss = rss_bytes()
            report.row(orders=soak.made, rss_mb=round(rss / 2**20), orders_per_s=round(rate),
                       archived=soak.archived, days=soak.archive_runs)
            if archived_before_tenth:
                measured.append((rss, rate))
            archived_before_tenth = soak.archived > 0
            tenth_started, tenth_orders = time.process_time(), 0
    (first_rss, first_rate), (last_rss, last_rate) = (measured[0], measured[-1]) if measured else ((0, 0.0),) * 2
    report.result(orders=soak.made, rss_first_mb=round(first_rss / 2**20), rss_last_mb=round(last_rss / 2**20),
                  rss_growth_pct=round(100 * (last_rss - first_rss) / first_rss, 1) if first_rss else 0,
                  apply_per_s_first=round(first_rate), apply_per_s_last=round(last_rate),
                  seconds=round(time.perf_counter() - started))


if __name__ == "__main__":
    main()
