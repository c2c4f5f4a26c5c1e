"""The cold store: the records an `Archive` command took out of a shard's engine memory (engine/archival.py), and
the events pruned past their cap, in an LMDB environment beside the journal (`<shard folder>/cold`), read back
whenever the engine no longer holds them.

Every process that applies batches (the primary, the replica, recovery's replay) writes what each batch archived
before anything can take a snapshot after that batch, in one write transaction with its fsync; replay writes it
again, so the store is a function of the journal: a crash at any point loses nothing, and `paygate verify` checks
it against a replay from scratch. Keys:

    records   kind byte + id                                  -> the record (msgpack); a transfer's kind is `t`
    listing   list byte + owner id + NUL + created_at + id    -> nothing: an owner's records by age (LISTED_IN)
              `a` + account id + NUL + timestamp + transfer id -> nothing: an account's statement
              `h` + account id + NUL + timestamp + the archive's cut-off + index -> an account's balances then

Reads complete what the engine answered (journal/sequencer.py): a record by id it no longer holds, and list pages,
whose cold records are merged with the engine's by (created_at, id), the order the engine pages in too, so that a
page reads the same before and after archival. A page looks at no more than MAX_SCANNED cold records (a name search
over years of orders stops there, with has_more set). A payment or order a refund brought back into memory (an event
a redelivery brought back) is read from memory, in the place the cold store lists it. A settlement file's ids are
found archived too, with their records for the reconciliation to carry, and a receipt's delivery job gets the order,
invoice, payment and refund archival took while it was pending.
"""

import pathlib
import struct
from itertools import takewhile

import lmdb
import msgspec

from engine.queries import (MAX_PAGE, AccountBalance, AccountTransfers, Answer, FindDeposit, FindOrder, FindPayment,
                            FindSettlementItems, GetDelivery, GetDeliveryJobs, GetEvent, GetInvoice, GetOrder,
                            GetPaymentRecord, GetWalletRecord, ListDeliveries, ListEvents, ListInvoices, ListOrders,
                            ListPayments, ListPayouts, ListRefunds, LookupTransfers)
from engine.records import (Adjustment, Archived, Delivery, Deposit, EventRecord, Invoice, Order, Payment, Payout,
                            Refund, Withdrawal)
from engine.types import Balance, Transfer

MAP_SIZE_BYTES = 1 << 40  # sparse: only what is written takes disk
MAX_SCANNED = 50_000
ORDER, PAYMENT, REFUND, INVOICE, TRANSFER = b"o", b"p", b"r", b"i", b"t"
PAYOUT, DEPOSIT, WITHDRAWAL, ADJUSTMENT, EVENT, DELIVERY = b"u", b"k", b"w", b"j", b"e", b"d"
STATEMENT, HISTORY = b"a", b"h"
TYPES = {ORDER: Order, PAYMENT: Payment, REFUND: Refund, INVOICE: Invoice, TRANSFER: Transfer, PAYOUT: Payout,
         DEPOSIT: Deposit, WITHDRAWAL: Withdrawal, ADJUSTMENT: Adjustment, EVENT: EventRecord, DELIVERY: Delivery}
# Lists, by the byte that starts their keys: (the kind they list, what owns each list).
ORDERS_OF_MERCHANT, PAYMENTS_OF_MERCHANT, INVOICES_OF_MERCHANT = b"o", b"p", b"i"
PAYMENTS_OF_ORDER, REFUNDS_OF_PAYMENT, PAYOUTS_OF_MERCHANT = b"q", b"r", b"u"
EVENTS_OF_MERCHANT, EVENTS_OF_OBJECT = b"e", b"v"
DELIVERIES_OF_MERCHANT, DELIVERIES_OF_EVENT, ALL_DELIVERIES = b"d", b"x", b"y"
LISTED_IN = {
    ORDER: ((ORDERS_OF_MERCHANT, "merchant_id"),),
    PAYMENT: ((PAYMENTS_OF_MERCHANT, "merchant_id"), (PAYMENTS_OF_ORDER, "order_id")),
    REFUND: ((REFUNDS_OF_PAYMENT, "payment_id"),),
    INVOICE: ((INVOICES_OF_MERCHANT, "merchant_id"),),
    PAYOUT: ((PAYOUTS_OF_MERCHANT, "merchant_id"),),
    EVENT: ((EVENTS_OF_MERCHANT, "merchant_id"), (EVENTS_OF_OBJECT, "object_id")),
    DELIVERY: ((DELIVERIES_OF_MERCHANT, "merchant_id"), (DELIVERIES_OF_EVENT, "event_id"), (ALL_DELIVERIES, None)),
}
# An Archived's field for each kind it holds.
ARCHIVED_FIELDS = {ORDER: "orders", PAYMENT: "payments", REFUND: "refunds", INVOICE: "invoices", TRANSFER: "transfers",
                   PAYOUT: "payouts", DEPOSIT: "deposits", WITHDRAWAL: "withdrawals", ADJUSTMENT: "adjustments",
                   EVENT: "events", DELIVERY: "deliveries"}
CREATED = struct.Struct(">Q")
HISTORY_AT = struct.Struct(">QQI")  # timestamp, the archive's cut-off, index: in the order the ledger kept them
_balance_decoder = msgspec.msgpack.Decoder(Balance)
# What reads of one record by id look for: GetPaymentRecord's and GetWalletRecord's kinds by name.
RECORD_KINDS = {"payment": PAYMENT, "refund": REFUND, "payout": PAYOUT, "deposit": DEPOSIT, "withdrawal": WITHDRAWAL,
                "adjustment": ADJUSTMENT}
_encoder = msgspec.msgpack.Encoder()
_decoders = {kind: msgspec.msgpack.Decoder(record_type) for kind, record_type in TYPES.items()}


class ColdStore:
    """Opened once per process (LMDB's rule); `readonly` for verify, which changes nothing."""

    def __init__(self, folder: pathlib.Path, readonly: bool = False) -> None:
        path = folder / "cold"
        self.exists = readonly is False or path.exists()
        if not self.exists:
            return
        self.environment = lmdb.open(str(path), map_size=MAP_SIZE_BYTES, max_dbs=2, sync=True, metasync=True,
                                     readahead=False, readonly=readonly, create=not readonly)
        self.records = self.environment.open_db(b"records", create=not readonly)
        self.listing = self.environment.open_db(b"listing", create=not readonly)

    def close(self) -> None:
        if self.exists:
            self.environment.close()

    # Writing

    def keep(self, archived: list[Archived]) -> None:
        """What a batch archived, durable before this returns (one transaction, one fsync)."""
        with self.environment.begin(write=True) as transaction:
            for each in archived:
                for key, value in _records_of(each):
                    transaction.put(key, value, db=self.records)
                for key in _listing_keys_of(each):
                    transaction.put(key, b"", db=self.listing)
                for account_id, history in each.histories:
                    for index, balance in enumerate(history):
                        transaction.put(_history_key(account_id, balance.timestamp, each.before, index),
                                        _encoder.encode(balance), db=self.listing)

    # Reading

    def record(self, kind: bytes, record_id: str):
        if not self.exists:
            return None
        with self.environment.begin() as transaction:
            stored = transaction.get(kind + record_id.encode(), db=self.records)
        return None if stored is None else _decoders[kind].decode(stored)

    def count(self) -> int:
        if not self.exists:
            return 0
        with self.environment.begin() as transaction:
            return transaction.stat(self.records)["entries"]

    def all_records(self):
        """(kind, id, stored bytes) of every record, for verify."""
        if not self.exists:
            return
        with self.environment.begin() as transaction:
            for key, stored in transaction.cursor(db=self.records):
                yield key[:1], bytes(key[1:]).decode(), bytes(stored)

    def newest_first(self, kind: bytes, listed_in: bytes, owner: str, before: tuple[int, str] | None = None):
        """The cold records of `kind` an owner's list holds, newest first by (created_at, id) (at most MAX_SCANNED);
        only those before `before`, if given."""
        if not self.exists:
            return
        prefix = listed_in + owner.encode() + b"\0"
        start = prefix + b"\xff" * (CREATED.size + 1)  # past every key of the prefix
        if before is not None:
            start = prefix + CREATED.pack(before[0]) + before[1].encode()
        with self.environment.begin() as transaction:
            cursor = transaction.cursor(db=self.listing)
            found = cursor.prev() if cursor.set_range(start) else cursor.last()
            for _ in range(MAX_SCANNED):
                if not found or not cursor.key().startswith(prefix):
                    return
                record_id = bytes(cursor.key()[len(prefix) + CREATED.size:])
                yield _decoders[kind].decode(transaction.get(kind + record_id, db=self.records))
                found = cursor.prev()

    # Completing the engine's answers

    def complete(self, query, answer: Answer, engine) -> Answer:
        """The engine's answer to `query`, with what only the cold store holds."""
        if not self.exists:
            return answer
        kind = type(query)
        if kind is LookupTransfers:
            return Answer(transfers=[found if found is not None else self.record(TRANSFER, transfer_id)
                                     for transfer_id, found in zip(query.ids, answer.transfers)])
        if kind is AccountTransfers:
            return Answer(transfers=self._statement(query, answer.transfers or [], engine))
        if kind is AccountBalance:
            return self._balance(query, answer, engine)
        if kind is FindSettlementItems:
            return self._settlement_items(query, answer)
        if kind is GetDeliveryJobs:
            return Answer(jobs=[self._job(job, engine) for job in answer.jobs or ()])
        if kind in BY_ID:
            if answer.record is not None:
                return answer
            record = self._by_id(query)
            return Answer(record=record, archived=record is not None)
        if kind is ListInvoices and query.order_id:
            return answer if answer.records else self._invoice_of_order(query)
        if kind in LISTS:
            return self._page(query, answer, engine)
        return answer

    def _by_id(self, query):
        kind, record_id = BY_ID[type(query)](query)
        record = self.record(kind, record_id) if kind is not None else None
        merchant_id = getattr(query, "merchant_id", "")
        return None if record is None or merchant_id not in ("", record.merchant_id) else record

    def _page(self, query, answer: Answer, engine) -> Answer:
        """The engine's page merged with the cold records of the same list, newest first by (created_at, id), after
        a cursor either holds."""
        kind, listed_in, owner = LISTS[type(query)](query)
        before = None
        if query.starting_after:
            hot = _hot(engine, kind, query.starting_after)
            if hot is not None:
                if not _matches_owner(query, hot):
                    return answer
                before = (hot.created_at, hot.id)
            else:
                cursor = self.record(kind, query.starting_after)
                if cursor is None or not _matches_owner(query, cursor):
                    return answer  # a cursor that names nothing: the engine's empty page
                before = (cursor.created_at, cursor.id)
                answer = engine.query(_placed(query, cursor))
        hot_records = list(answer.records or ())
        created_gte = 0
        if type(query) is ListOrders:  # the cold records of a window of time only: no scan past it
            before = min(before or (query.created_lt, ""), (query.created_lt, ""))
            created_gte = query.created_gte
        cold = (record for record in takewhile(lambda record: record.created_at >= created_gte,
                                               self._cold_listed(kind, listed_in, owner, before, engine))
                if _matches(query, record))
        found: list = []
        limit = max(1, min(query.limit, MAX_PAGE))
        next_cold = next(cold, None)
        while len(found) < limit and (hot_records or next_cold is not None):
            if next_cold is None or (hot_records and _key(hot_records[0]) > _key(next_cold)):
                found.append(hot_records.pop(0))
            else:
                found.append(next_cold)
                next_cold = next(cold, None)
        return Answer(records=found, has_more=bool(hot_records) or answer.has_more or next_cold is not None)

    def _cold_listed(self, kind: bytes, listed_in: bytes, owner: str, before, engine):
        """The cold records a list holds, newest first: one the engine holds again (brought back by a refund) as it
        stands there, one the engine still holds and lists (archived in a batch that never became durable) not."""
        for record in self.newest_first(kind, listed_in, owner, before):
            hot = _hot(engine, kind, record.id)
            if hot is None:
                yield record
            elif _brought_back(engine, kind, record.id):
                yield hot

    def _statement(self, query: AccountTransfers, hot: list[Transfer], engine) -> list[Transfer]:
        """An account's statement page through memory and the cold store: the cold transfers are the older."""
        cold_cursor = query.after_id and engine.ledger.transfers.get(query.after_id) is None
        if query.newest_first:
            if cold_cursor:  # the page is all cold, after it
                return list(self._cold_statement(query, query.after_id, query.limit, descending=True))
            return hot + list(self._cold_statement(query, "", query.limit - len(hot), descending=True))
        if not cold_cursor and query.after_id:
            return hot  # after a transfer in memory: only later ones, all in memory
        cold = list(self._cold_statement(query, query.after_id, query.limit, descending=False))
        if len(cold) == query.limit:
            return cold
        rest = engine.query(msgspec.structs.replace(query, after_id="", limit=query.limit - len(cold))).transfers
        return cold + (rest or [])

    def _cold_statement(self, query: AccountTransfers, after: str, limit: int, descending: bool):
        # A window that holds no instant (one ending before the epoch) has no key to bound the scan with.
        if limit <= 0 or not 0 <= query.timestamp_min <= query.timestamp_max:
            return
        prefix = STATEMENT + query.account_id.encode() + b"\0"
        low, high = prefix + CREATED.pack(query.timestamp_min), prefix + CREATED.pack(query.timestamp_max) + b"\xff"
        if after:
            cursor_transfer = self.record(TRANSFER, after)
            if cursor_transfer is None:
                return
            if descending:
                high = prefix + CREATED.pack(cursor_transfer.timestamp) + after.encode()
            else:
                low = prefix + CREATED.pack(cursor_transfer.timestamp) + after.encode() + b"\0"
        with self.environment.begin() as transaction:
            cursor = transaction.cursor(db=self.listing)
            if descending:
                found = cursor.prev() if cursor.set_range(high) else cursor.last()
            else:
                found = cursor.set_range(low)
            for _ in range(min(limit, MAX_SCANNED)):
                if not found or not low <= cursor.key() < high:
                    return
                transfer_id = bytes(cursor.key()[len(prefix) + CREATED.size:])
                yield _decoders[TRANSFER].decode(transaction.get(TRANSFER + transfer_id, db=self.records))
                found = cursor.prev() if descending else cursor.next()

    def _balance(self, query: AccountBalance, answer: Answer, engine) -> Answer:
        """Balances as of a time before the oldest the ledger still keeps come from the archived history."""
        account = engine.ledger.accounts.get(query.account_id)
        if account is None or not account.history or account.history[0].timestamp <= query.timestamp:
            return answer
        prefix = HISTORY + query.account_id.encode() + b"\0"
        with self.environment.begin() as transaction:
            cursor = transaction.cursor(db=self.listing)
            found = cursor.prev() if cursor.set_range(prefix + CREATED.pack(query.timestamp + 1)) else cursor.last()
            if found and cursor.key().startswith(prefix):
                return Answer(balance=_balance_decoder.decode(cursor.value()))
        return answer

    def _settlement_items(self, query: FindSettlementItems, answer: Answer) -> Answer:
        """The file's ids this shard holds, in memory or archived, with the archived records (and each archived
        refund's payment, each archived payment's order), which the reconciliation carries
        (engine/reconciliations.py)."""
        ids = list(answer.ids or ())
        held, records = set(ids), []
        for item_id in query.ids[:MAX_PAGE]:
            record = None if item_id in held else self.record(PAYMENT, item_id) or self.record(REFUND, item_id)
            if record is None:
                continue
            ids.append(item_id)
            records.append(record)
            payment = self.record(PAYMENT, record.payment_id) if type(record) is Refund else record
            if payment is not None and payment is not record:
                records.append(payment)
            order = self.record(ORDER, payment.order_id) if payment is not None and payment.order_id else None
            if order is not None:
                records.append(order)
        return Answer(ids=ids, records=records)

    def _job(self, job, engine):
        """A receipt's job with the order, invoice, payment and refund archival took while it was pending."""
        if job.delivery.kind == "event" or None not in (job.order, job.invoice, job.payment):
            return job

        def find(kind: bytes, record_id: str):
            return (_hot(engine, kind, record_id) or self.record(kind, record_id)) if record_id else None
        if job.delivery.kind == "refund_receipt":
            job.refund = job.refund or find(REFUND, job.event.object_id)
            paid_by = find(PAYMENT, job.refund.payment_id) if job.refund is not None else None
            job.order = job.order or (find(ORDER, paid_by.order_id) if paid_by is not None else None)
        else:
            job.order = job.order or find(ORDER, job.event.object_id)
        if job.order is not None:
            job.invoice = job.invoice or find(INVOICE, job.order.invoice_id)
            job.payment = job.payment or find(PAYMENT, job.order.payment_id)
        return job

    def _invoice_of_order(self, query: ListInvoices) -> Answer:
        order = self.record(ORDER, query.order_id)
        invoice = self.record(INVOICE, order.invoice_id) if order is not None and order.invoice_id else None
        if invoice is None or invoice.merchant_id != query.merchant_id or query.starting_after:
            return Answer(records=[], has_more=False)
        return Answer(records=[invoice], has_more=False)


class Expected:
    """What a replay from scratch archived, batch by batch (`add` as each is applied), for `check`."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}

    def add(self, archived: list[Archived]) -> None:
        for each in archived:
            self.records.update(_records_of(each))

    def check(self, cold: ColdStore, engine) -> list[str]:
        """Problems of the cold store against what the journal archived (its records, byte for byte; nothing
        else, but records of an archive whose batch never became durable, which memory still holds)."""
        problems = []
        seen = set()
        for kind, record_id, stored in cold.all_records():
            key = kind + record_id.encode()
            seen.add(key)
            expected = self.records.get(key)
            if expected is None and _hot(engine, kind, record_id) is None:
                problems.append(f"cold store: {kind.decode()} {record_id} was archived by no journaled batch")
            elif expected is not None and expected != stored:
                problems.append(f"cold store: {kind.decode()} {record_id} differs from what the journal archived")
        missing = [key for key in self.records if key not in seen]
        if missing:
            problems.append(f"cold store: {len(missing)} archived records missing, such as "
                            f"{missing[0][:1].decode()} {missing[0][1:].decode()}")
        return problems


# Reads of one record by id: the kind and id they name.
BY_ID = {
    GetOrder: lambda query: (ORDER, query.order_id),
    FindOrder: lambda query: (ORDER, query.order_id),
    GetInvoice: lambda query: (INVOICE, query.invoice_id),
    FindPayment: lambda query: (PAYMENT, query.payment_id),
    GetPaymentRecord: lambda query: (RECORD_KINDS.get(query.kind), query.record_id),
    GetWalletRecord: lambda query: (RECORD_KINDS.get(query.kind), query.record_id),
    FindDeposit: lambda query: (DEPOSIT, query.deposit_id),
    GetEvent: lambda query: (EVENT, query.event_id),
    GetDelivery: lambda query: (DELIVERY, query.delivery_id),
}
# List reads: the kind they list, and the cold list (its byte and owner) that holds it.
LISTS = {
    ListOrders: lambda query: (ORDER, ORDERS_OF_MERCHANT, query.merchant_id),
    ListPayments: lambda query: ((PAYMENT, PAYMENTS_OF_ORDER, query.order_id) if query.order_id
                                 else (PAYMENT, PAYMENTS_OF_MERCHANT, query.merchant_id)),
    ListRefunds: lambda query: (REFUND, REFUNDS_OF_PAYMENT, query.payment_id),
    ListPayouts: lambda query: (PAYOUT, PAYOUTS_OF_MERCHANT, query.merchant_id),
    ListInvoices: lambda query: (INVOICE, INVOICES_OF_MERCHANT, query.merchant_id),
    ListEvents: lambda query: ((EVENT, EVENTS_OF_OBJECT, query.object_id) if query.object_id
                               else (EVENT, EVENTS_OF_MERCHANT, query.merchant_id)),
    ListDeliveries: lambda query: ((DELIVERY, DELIVERIES_OF_EVENT, query.event_id) if query.event_id
                                   else (DELIVERY, DELIVERIES_OF_MERCHANT, query.merchant_id) if query.merchant_id
                                   else (DELIVERY, ALL_DELIVERIES, "")),
}


def _hot(engine, kind: bytes, record_id: str):
    """The record as the engine holds it, if it does."""
    commerce = engine.commerce
    if kind == TRANSFER:
        return engine.ledger.transfers.get(record_id)
    records = {ORDER: commerce.orders.by_id, PAYMENT: commerce.payments.payments, REFUND: commerce.payments.refunds,
               INVOICE: commerce.invoices.by_id, PAYOUT: commerce.payments.payouts,
               DEPOSIT: commerce.deposits.deposits, WITHDRAWAL: commerce.deposits.withdrawals,
               ADJUSTMENT: commerce.deposits.adjustments, EVENT: commerce.notifications.records,
               DELIVERY: commerce.notifications.deliveries}[kind]
    return dict.get(records, record_id)


def _brought_back(engine, kind: bytes, record_id: str) -> bool:
    """Whether the engine holds the archived record again, unlisted (a refund or a redelivery brought it back)."""
    if kind == ORDER:
        return record_id in engine.commerce.orders.unlisted
    if kind == EVENT:
        return record_id in engine.commerce.notifications.unlisted
    return kind == PAYMENT and record_id in engine.commerce.payments.unlisted


def _placed(query, cursor):
    """The list read again, its cursor placed where the cold store's record of it stands."""
    if type(query) in (ListEvents, ListDeliveries):
        return msgspec.structs.replace(query, starting_after_archived=True)
    return msgspec.structs.replace(query, starting_after_created_at=cursor.created_at)


def _key(record) -> tuple[int, str]:
    return record.created_at, record.id


def _matches_owner(query, record) -> bool:
    """Whether the record is the merchant's (any merchant's, for an operator's list of deliveries)."""
    return query.merchant_id in ("", record.merchant_id) if type(query) is ListDeliveries else \
        record.merchant_id == query.merchant_id


def _matches(query, record) -> bool:
    """Whether a listed record passes the read's filters."""
    if not _matches_owner(query, record):
        return False
    kind = type(query)
    if kind is ListEvents:
        return not query.kind or record.kind == query.kind
    if kind in (ListPayments, ListDeliveries) and query.status and record.status != query.status:
        return False
    if kind is ListOrders:
        if (query.status and record.status != query.status) or not query.created_gte <= record.created_at < \
                query.created_lt:
            return False
        return not query.name_contains or query.name_contains.casefold() in record.name.casefold()
    return True


def _records_of(archived: Archived):
    """(key, stored bytes) of every record an Archive took."""
    for kind, field in ARCHIVED_FIELDS.items():
        for record in getattr(archived, field):
            yield kind + record.id.encode(), _encoder.encode(record)


def _listing_keys_of(archived: Archived):
    for kind, lists in LISTED_IN.items():
        for record in getattr(archived, ARCHIVED_FIELDS[kind]):
            for listed_in, owner_field in lists:
                owner = getattr(record, owner_field) if owner_field else ""
                if owner or owner_field is None:
                    yield listed_in + owner.encode() + b"\0" + CREATED.pack(record.created_at) + record.id.encode()
    for transfer in archived.transfers:
        for account_id in (transfer.debit_account_id, transfer.credit_account_id):
            yield (STATEMENT + account_id.encode() + b"\0" + CREATED.pack(transfer.timestamp)
                   + transfer.id.encode())


def _history_key(account_id: str, timestamp: int, before: int, index: int) -> bytes:
    return HISTORY + account_id.encode() + b"\0" + HISTORY_AT.pack(timestamp, before, index)
