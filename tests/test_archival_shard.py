"""End-of-day archival on a real shard process: records leave memory for the cold store (journal/cold.py) and every
read answers as before; a kill -9 while it archives loses nothing; `paygate verify` checks the cold store.

The shard archives what ended a second ago (archive_after_s=1), five times a second, so a test need not wait a day.
Pages that mix memory and the cold store in one batch, and every kind of list, are tests/test_cold_pages.py's.
"""

import asyncio
import datetime
import random
import time
import types

from actors import settlements
from edge.cli import verify_folder
from edge.events_api import redeliver
from edge.payments_api import _archived
from actors.notifier import email_of
from engine.queries import (AccountBalance, AccountTransfers, FindPayment, GetDeliveryJobs, GetEvent, GetOrder,
                            GetPaymentRecord, ListDeliveries, ListEvents, ListOrders, ListPayments, LookupAccounts,
                            LookupTransfers)
from engine.records import (
    AdjustWallet,
    Adjustment,
    CardDetails,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreatePayment,
    CreateRefund,
    Customer,
    DeliveryResult,
    Merchant,
    Order,
    PayOrderFromWallet,
    Payment,
    RecordDeliveryAttempts,
    RecordPspResult,
    Refund,
    SettlementRow,
    system_account_id,
)
from journal.client import ShardClient, ShardUnavailable
from journal.cold import EVENT, INVOICE, ORDER, PAYMENT, REFUND, ColdStore
from journal.wire import ReplyStatus
from shard_harness import key_of, primary_config, start

ARCHIVING = {"archive_after_s": 1, "archive_every_s": 0.2}


def order(oid: str, name: str) -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name=name, amount=100, currency="USD",
                                   payment_methods=["wallet"]), expires_in_s=None)


def pay(oid: str) -> PayOrderFromWallet:
    return PayOrderFromWallet(merchant_id="m1", order_id=oid, customer_id="c1", payment_id=f"pay_{oid}",
                              transfer_id=f"m1:pay_{oid}")


async def ok(client: ShardClient, *commands) -> list:
    reply = await client.submit(list(commands))
    assert reply.status == ReplyStatus.OK and all(result.code == "ok" for result in reply.results), reply
    return reply.results


async def set_up(client: ShardClient) -> None:
    await ok(client, CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com")),
             CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")))
    await ok(client, AdjustWallet(adjustment=Adjustment(id="adj_1", merchant_id="m1", customer_id="c1", amount=10**9,
                                                        currency="USD", reason="funds"), transfer_id="m1:funds"))


async def walk(client: ShardClient, make, limit: int) -> list:
    """Every page of a list, `limit` at a time."""
    records, after = [], ""
    while True:
        answer = await client.read(make(after, limit))
        records += answer.records
        if not answer.has_more:
            return records
        after = answer.records[-1].id


async def statement(client: ShardClient, account_id: str, newest_first: bool, limit: int = 5) -> list:
    """An account's whole statement, `limit` transfers a page."""
    transfers, after = [], ""
    while True:
        page = (await client.read(AccountTransfers(account_id, limit=limit, after_id=after,
                                                   newest_first=newest_first))).transfers
        transfers += page
        if len(page) < limit:
            return transfers
        after = page[-1].id


async def reads(client: ShardClient, order_ids: list[str], refund_ids: list[str]) -> dict:
    """What the merchant's reads answer: each record by id, every list page, statements and past balances."""
    balance = "m1:.balance.USD"
    newest = await statement(client, balance, newest_first=True)
    times = sorted({transfer.timestamp for transfer in newest})
    return {
        "statement": newest,
        "statement oldest first": await statement(client, balance, newest_first=False, limit=4),
        "transfers": (await client.read(LookupTransfers([transfer.id for transfer in newest]))).transfers,
        "balances": [(await client.read(AccountBalance(balance, at))).balance for time_ in times
                     for at in (time_ - 1, time_)],
        "orders": [(await client.read(GetOrder("m1", oid))).record for oid in order_ids],
        "payments": [(await client.read(FindPayment(f"pay_{oid}"))).record for oid in order_ids],
        "refunds": [(await client.read(GetPaymentRecord("m1", "refund", rid))).record for rid in refund_ids],
        "order pages": await walk(client, lambda after, limit: ListOrders(merchant_id="m1", limit=limit,
                                                                          starting_after=after), 4),
        "tea pages": await walk(client, lambda after, limit: ListOrders(merchant_id="m1", name_contains="TEA",
                                                                        limit=limit, starting_after=after), 3),
        "paid pages": await walk(client, lambda after, limit: ListOrders(merchant_id="m1", status="paid",
                                                                         limit=limit, starting_after=after), 5),
        "payment pages": await walk(client, lambda after, limit: ListPayments(merchant_id="m1", limit=limit,
                                                                              starting_after=after), 7),
    }


async def wait_archived(folder, at_least: int, timeout_s: float = 30, until=lambda cold: True) -> None:
    """Until the cold store holds `at_least` records (and `until` it holds what that asks)."""
    cold = ColdStore(folder, readonly=True)
    try:
        deadline = time.monotonic() + timeout_s
        while cold.count() < at_least or not until(cold):
            assert time.monotonic() < deadline, f"only {cold.count()} records archived"
            await asyncio.sleep(0.1)
    finally:
        cold.close()


def test_reads_answer_the_same_before_and_after_archival_and_after_a_restart(tmp_path):
    folder = tmp_path / "shard"
    config = primary_config(folder, **{**ARCHIVING, "archive_after_s": 3600})  # nothing goes yet
    process = start(config)

    async def build() -> tuple[list[str], list[str], dict]:
        client = ShardClient([config.client_address], key_of(config))
        try:
            await set_up(client)
            order_ids = [f"o{number:02d}" for number in range(20)]
            for number, oid in enumerate(order_ids):
                await ok(client, order(oid, f"{'Tea' if number % 3 else 'Coffee'} {number}"))
                if number < 16:  # the last four stay pending: newer than any that ends
                    await ok(client, pay(oid))
            refund_ids = [f"re_{number}" for number in range(3)]
            for number, rid in enumerate(refund_ids):
                await ok(client, CreateRefund(refund=Refund(id=rid, merchant_id="m1", payment_id=f"pay_o{number:02d}",
                                                            amount=100), transfer_id=f"m1:{rid}"))
            return order_ids, refund_ids, await reads(client, order_ids, refund_ids)
        finally:
            client.close()

    order_ids, refund_ids, before = asyncio.run(build())
    process.stop()
    config.archive_after_s = 1
    process = start(config)

    async def after() -> dict:
        # Orders, payments, refunds, invoices, transfers; the events of each paid order and refund, the adjustment.
        await wait_archived(folder, 16 + 16 + 3 + 16 + 20 + (16 * 2 + 3 * 2) + 1)
        client = ShardClient([config.client_address], key_of(config))
        try:
            return await reads(client, order_ids, refund_ids)
        finally:
            client.close()

    try:
        assert asyncio.run(after()) == before
        process.kill()
        process = start(config)
        assert asyncio.run(after()) == before  # recovered from the journal, the cold store kept
    finally:
        process.stop()
    assert verify_folder(folder) == 0
    cold = ColdStore(folder)
    try:  # a record no journaled Archive took, and one changed: verify names both
        with cold.environment.begin(write=True) as transaction:
            transaction.put(b"ostray", b"\x80", db=cold.records)
            transaction.put(b"oo00", transaction.get(b"oo01", db=cold.records), db=cold.records)
    finally:
        cold.close()
    assert verify_folder(folder) == 2


class ShardGateway:
    """The edge's gateway to one shard, as the edge's refund handler reads through it."""

    def __init__(self, client: ShardClient) -> None:
        self.client = client

    async def read(self, merchant_id: str, query):
        return await self.client.read(query)

    def shard_index(self, merchant_id: str) -> int:
        return 0

    async def submit_to(self, shard: int, command):
        return (await self.client.submit([command])).results[0]


def test_a_refund_of_an_archived_payment_carries_it_back_as_the_edge_reads_it(tmp_path):
    folder = tmp_path / "shard"
    config = primary_config(folder, **ARCHIVING)
    process = start(config)

    async def refund_after_archival() -> None:
        client = ShardClient([config.client_address], key_of(config))
        try:
            await set_up(client)
            await ok(client, order("o1", "Tea"))
            await ok(client, pay("o1"))
            await wait_archived(folder, 1, until=lambda cold: cold.record(PAYMENT, "pay_o1") is not None)
            request = types.SimpleNamespace(app={"gateway": ShardGateway(client)})
            merchant = types.SimpleNamespace(id="m1")
            archived = await _archived(request, merchant, "pay_o1")
            assert (archived["archived_payment"].id, archived["archived_order"].id) == ("pay_o1", "o1")
            [refund] = await ok(client, CreateRefund(refund=Refund(id="re_1", merchant_id="m1", payment_id="pay_o1",
                                                                   amount=40), transfer_id="m1:re_1", **archived))
            assert refund.record.amount == 40
            assert await _archived(request, merchant, "pay_o1") == {}  # in memory again
            assert (await client.read(GetOrder("m1", "o1"))).record.status == "partially_refunded"
            assert [payment.amount_refunded for payment in await walk(
                client, lambda after, limit: ListPayments(merchant_id="m1", limit=limit, starting_after=after), 1)
            ] == [40]
        finally:
            client.close()

    try:
        asyncio.run(refund_after_archival())
    finally:
        process.stop()
    assert verify_folder(folder) == 0


def test_a_chargeback_of_an_archived_payment_is_posted_once_as_the_reconciliation_reads_it(tmp_path):
    folder = tmp_path / "shard"
    config = primary_config(folder, **ARCHIVING)
    process = start(config)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()

    async def charge_back_after_archival() -> None:
        client = ShardClient([config.client_address], key_of(config))

        async def read(shard: int, queries: list) -> list:
            return await client.read_many(queries)

        async def submit(shard: int, command):
            return (await client.submit([command])).results[0]

        async def reconcile(reconciliation_id: str, rows: list):
            [part] = await settlements.reconcile(read, submit, 1, reconciliation_id, "piggybank", today, rows)
            return part
        try:
            await set_up(client)
            card = CardDetails("visa", "4242", 12, 2030)
            await ok(client, CreatePayment(payment=Payment(id="pay_c", merchant_id="m1", amount=1000, currency="USD",
                                                           token_id="tok_c", card=card),
                                           sealed_card=b"sealed", processing_timeout_s=0))
            await ok(client, RecordPspResult(merchant_id="m1", payment_id="pay_c", callback_id="cb_c",
                                             result="authorized", transfer_id="m1:pay_c.authorization"))
            assert (await reconcile("rec_1", [SettlementRow("pay_c", 1000, "usd", "captured")])).record.matched == \
                ["pay_c"]
            await wait_archived(folder, 1, until=lambda cold: cold.record(PAYMENT, "pay_c") is not None)
            chargeback = [SettlementRow("pay_c", 400, "usd", "chargeback")]
            part = await reconcile("rec_2", chargeback)
            assert (part.record.chargebacks, part.record.missing_in_ledger) == (["pay_c"], [])
            payment = (await client.read(GetPaymentRecord("m1", "payment", "pay_c"))).record
            assert (payment.status, payment.amount_disputed) == ("disputed", 400)
            [disputes] = (await client.read(LookupAccounts([system_account_id("m1", "disputes", "USD")]))).accounts
            assert (disputes.debits_posted, disputes.credits_posted) == (400, 400)  # taken from the balance
            assert (await reconcile("rec_2", chargeback)).replayed  # the file again: nothing posts twice
            await wait_archived(folder, 1, until=lambda cold: cold.record(PAYMENT, "pay_c").status == "disputed")
            assert (await reconcile("rec_3", chargeback)).record.duplicates == ["pay_c"]
        finally:
            client.close()

    try:
        asyncio.run(charge_back_after_archival())
    finally:
        process.stop()
    assert verify_folder(folder) == 0


def test_receipts_pending_when_their_order_was_archived_are_composed_from_the_cold_store(tmp_path):
    folder = tmp_path / "shard"
    config = primary_config(folder, **ARCHIVING)
    process = start(config)

    async def receipts_after_archival() -> list:
        client = ShardClient([config.client_address], key_of(config))
        try:
            await set_up(client)
            await ok(client, CreateOrder(order=Order(id="o1", merchant_id="m1", name="Tea", amount=100, currency="USD",
                                                     payment_methods=["wallet"], customer_email="c1@example.com"),
                                         expires_in_s=None))
            await ok(client, pay("o1"))
            await ok(client, CreateRefund(refund=Refund(id="re_1", merchant_id="m1", payment_id="pay_o1", amount=40),
                                          transfer_id="m1:re_1"))
            # No notifier runs: the receipts stay pending, and their event in memory, while the order leaves.
            await wait_archived(folder, 4, until=lambda cold: all(
                cold.record(kind, record_id) is not None
                for kind, record_id in ((ORDER, "o1"), (PAYMENT, "pay_o1"), (REFUND, "re_1"))))
            deliveries = (await client.read(ListDeliveries(merchant_id="m1", limit=10))).records
            emails = [delivery.id for delivery in deliveries if delivery.channel == "email"]
            assert len(emails) == 2 and all(delivery.status == "pending" for delivery in deliveries)
            return (await client.read(GetDeliveryJobs(delivery_ids=emails))).jobs
        finally:
            client.close()

    try:
        jobs = asyncio.run(receipts_after_archival())
    finally:
        process.stop()
    cold = ColdStore(folder, readonly=True)
    try:
        assert cold.record(INVOICE, jobs[0].order.invoice_id) is not None  # archived too
    finally:
        cold.close()
    assert sorted(job.delivery.kind for job in jobs) == ["receipt", "refund_receipt"]
    for job in jobs:
        assert (job.order.id, job.payment.id, job.invoice.order_id) == ("o1", "pay_o1", "o1")
        assert b"c1@example.com" in email_of(job)
    assert [job.refund.id for job in jobs if job.delivery.kind == "refund_receipt"] == ["re_1"]


def test_an_archived_event_is_redelivered_as_the_edge_reads_it(tmp_path):
    folder = tmp_path / "shard"
    config = primary_config(folder, **ARCHIVING)
    process = start(config)

    async def redeliver_after_archival() -> None:
        client = ShardClient([config.client_address], key_of(config))
        try:
            await ok(client, CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com",
                                                     webhook_url="https://shop.example/hook")),
                     CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")))
            await ok(client, AdjustWallet(adjustment=Adjustment(id="adj_1", merchant_id="m1", customer_id="c1",
                                                                amount=1000, currency="USD", reason="funds"),
                                          transfer_id="m1:funds"))
            await ok(client, order("o1", "Tea"))
            await ok(client, pay("o1"))
            [paid] = (await client.read(ListEvents(merchant_id="m1", kind="order.paid", limit=10))).records
            dead = (await client.read(ListDeliveries(merchant_id="m1", limit=100))).records
            await ok(client, RecordDeliveryAttempts([DeliveryResult(
                delivery_id=delivery.id, attempt=1, attempted_at=time.time_ns(), status_code=500, error="",
                duration_ms=1, outcome="dead") for delivery in dead]))
            await wait_archived(folder, 1, until=lambda cold: cold.record(EVENT, paid.id) is not None)
            queued = await redeliver(_Request(ShardGateway(client)), types.SimpleNamespace(id="m1"), paid.id)
            assert queued.queued == 1
            event = (await client.read(GetEvent("m1", paid.id))).record
            assert (event.id, event.redeliveries) == (paid.id, 1)
            listed = (await client.read(ListEvents(merchant_id="m1", limit=100))).records
            assert [record.id for record in listed].count(paid.id) == 1  # in its place, once
            deliveries = (await client.read(ListDeliveries(merchant_id="m1", event_id=paid.id, limit=100))).records
            assert sorted(delivery.status for delivery in deliveries) == ["dead", "pending"]
        finally:
            client.close()

    try:
        asyncio.run(redeliver_after_archival())
    finally:
        process.stop()
    assert verify_folder(folder) == 0


class _Request(dict):
    """What the edge's handlers use of a request without an Idempotency-Key or a signature."""

    def __init__(self, gateway: ShardGateway) -> None:
        super().__init__(signed=None, idempotency_key=None)
        self.app = {"gateway": gateway}


def test_kill_nine_during_archival_loses_nothing_and_verify_checks_the_cold_store(tmp_path):
    folder = tmp_path / "shard"
    config = primary_config(folder, **ARCHIVING, snapshot_every_batches=40)
    chooser = random.Random(7)
    acknowledged: list[str] = []

    async def load(client: ShardClient, first: int, seconds: float) -> None:
        number = first
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            oid = f"o{number:05d}"
            number += 1
            try:
                reply = await client.submit([order(oid, f"Order {oid}"), pay(oid)])
            except ShardUnavailable:
                return
            if reply.status == ReplyStatus.OK and reply.results[1].code == "ok":
                acknowledged.append(oid)

    async def round_(first: int, kill_after_s: float | None) -> None:
        process = start(config)
        client = ShardClient([config.client_address], key_of(config), timeout_ms=2000)
        try:
            if first == 0:
                await set_up(client)
            task = asyncio.create_task(load(client, first, 30))
            if kill_after_s is None:
                await task
            else:
                await asyncio.sleep(kill_after_s)
                process.kill()
                await task
        finally:
            client.close()
            if kill_after_s is None:
                process.stop()

    for index in range(3):
        asyncio.run(round_(index * 100_000, 1.5 + chooser.uniform(0, 2)))
    process = start(config)

    async def check() -> None:
        await wait_archived(folder, 1)
        client = ShardClient([config.client_address], key_of(config))
        try:
            for oid in acknowledged:
                found = (await client.read(GetOrder("m1", oid))).record
                assert found is not None and found.status == "paid", oid
        finally:
            client.close()

    try:
        asyncio.run(check())
    finally:
        process.stop()
    assert len(acknowledged) > 10
    assert verify_folder(folder) == 0
