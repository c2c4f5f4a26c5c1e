"""The cold store: the records an `Archive` command took out of a shard's engine memory (engine/archival.py), in an
LMDB environment beside the journal (`<shard folder>/cold`), read back whenever the engine no longer holds them.

Every process that applies batches (the primary, the replica, recovery's replay) writes what each batch archived
before anything can take a snapshot after that batch, in one write transaction with its fsync; replay writes it
again, so the store is a function of the journal: a crash at any point loses nothing, and `paygate verify` checks
it against a replay from scratch. Keys:

    records   kind byte + id                                  -> the record (msgpack); a transfer's kind is `t`
    listing   kind byte + merchant id + NUL + created_at + id -> nothing: a merchant's records, by age
              `a` + account id + NUL + timestamp + transfer id -> nothing: an account's statement
              `h` + account id + NUL + timestamp + the archive's cut-off + index -> an account's balances then

Reads complete what the engine answered (journal/sequencer.py): a record by id it no longer holds, and list pages
that go on past its oldest into the cold ones. A page looks at no more than MAX_SCANNED cold records (a name search
over years of orders stops there, with has_more set).
"""

import pathlib
import struct

import lmdb
import msgspec

from engine.batch import BatchResult
from engine.queries import (AccountBalance, AccountTransfers, Answer, FindOrder, FindPayment, GetInvoice, GetOrder,
                            GetPaymentRecord, ListInvoices, ListOrders, ListPayments, LookupTransfers)
from engine.records import Archived, Invoice, Order, Outcome, Payment, Refund
from engine.types import Balance, Transfer

MAP_SIZE_BYTES = 1 << 40  # sparse: only what is written takes disk
MAX_SCANNED = 50_000
ORDER, PAYMENT, REFUND, INVOICE, TRANSFER = b"o", b"p", b"r", b"i", b"t"
STATEMENT, HISTORY = b"a", b"h"
TYPES = {ORDER: Order, PAYMENT: Payment, REFUND: Refund, INVOICE: Invoice, TRANSFER: Transfer}
CREATED = struct.Struct(">Q")
HISTORY_AT = struct.Struct(">QQI")  # timestamp, the archive's cut-off, index: in the order the ledger kept them
_balance_decoder = msgspec.msgpack.Decoder(Balance)
COLD_PAYMENT_KINDS = {"payment": PAYMENT, "refund": REFUND}  # GetPaymentRecord's kinds the cold store holds
BY_ID = (GetOrder, FindOrder, GetPaymentRecord, FindPayment, GetInvoice)
LISTS = {ListOrders: ORDER, ListPayments: PAYMENT, ListInvoices: INVOICE}
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

    def newest_first(self, kind: bytes, merchant_id: str, after: str = ""):
        """The merchant's cold records of `kind`, newest first (at most MAX_SCANNED); only those older than the
        cold record `after`, if given."""
        if not self.exists:
            return
        prefix = kind + merchant_id.encode() + b"\0"
        start = prefix + b"\xff" * (CREATED.size + 1)  # past every key of the prefix
        if after:
            cursor_record = self.record(kind, after)
            if cursor_record is None or cursor_record.merchant_id != merchant_id:
                return
            start = _listing_key(kind, cursor_record)
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
        if kind in BY_ID and answer.record is None:
            return Answer(record=self._by_id(query))
        if kind is ListInvoices and query.order_id:
            return answer if answer.records else self._invoice_of_order(query)
        if kind in LISTS and not answer.has_more:
            return self._page(query, answer, engine)
        return answer

    def _by_id(self, query):
        kind = type(query)
        if kind is GetOrder or kind is FindOrder:
            record = self.record(ORDER, query.order_id)
        elif kind is GetInvoice:
            record = self.record(INVOICE, query.invoice_id)
        elif kind is FindPayment:
            record = self.record(PAYMENT, query.payment_id)
        elif query.kind in COLD_PAYMENT_KINDS:
            record = self.record(COLD_PAYMENT_KINDS[query.kind], query.record_id)
        else:
            return None
        merchant_id = getattr(query, "merchant_id", None)
        return None if record is None or (merchant_id is not None and record.merchant_id != merchant_id) else record

    def _page(self, query, answer: Answer, engine) -> Answer:
        """A page the engine ended goes on into the cold records (the older ones, archived), newest first: after
        the engine's last, or after a cursor only the cold store holds."""
        kind = LISTS[type(query)]
        after = ""
        if query.starting_after and not _hot(engine, kind, query.merchant_id, query.starting_after):
            if self.record(kind, query.starting_after) is None:
                return answer  # a cursor that names nothing
            after = query.starting_after
        found = list(answer.records or ())
        for record in self.newest_first(kind, query.merchant_id, after):
            if not _matches(query, record):
                continue
            if len(found) == query.limit:
                return Answer(records=found, has_more=True)
            found.append(record)
        return Answer(records=found, has_more=False)


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
        if limit <= 0:
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

    def add(self, result: BatchResult) -> None:
        for outcome in result.results:
            if type(outcome) is Outcome and type(outcome.record) is Archived:
                self.records.update(_records_of(outcome.record))

    def check(self, cold: ColdStore, engine) -> list[str]:
        """Problems of the cold store against what the journal archived (its records, byte for byte; nothing
        else, but records of an archive whose batch never became durable, which memory still holds)."""
        problems = []
        seen = set()
        for kind, record_id, stored in cold.all_records():
            key = kind + record_id.encode()
            seen.add(key)
            expected = self.records.get(key)
            if expected is None and not _hot(engine, kind, None, record_id):
                problems.append(f"cold store: {kind.decode()} {record_id} was archived by no journaled batch")
            elif expected is not None and expected != stored:
                problems.append(f"cold store: {kind.decode()} {record_id} differs from what the journal archived")
        missing = [key for key in self.records if key not in seen]
        if missing:
            problems.append(f"cold store: {len(missing)} archived records missing, such as "
                            f"{missing[0][:1].decode()} {missing[0][1:].decode()}")
        return problems


def _hot(engine, kind: bytes, merchant_id: str | None, record_id: str) -> bool:
    """Whether the engine holds the record (of the merchant, if named)."""
    if kind == ORDER:
        found = engine.commerce.orders.by_id.get(record_id)
    elif kind == PAYMENT:
        found = engine.commerce.payments.payments.get(record_id)
    elif kind == REFUND:
        found = engine.commerce.payments.refunds.get(record_id)
    elif kind == INVOICE:
        found = engine.commerce.invoices.by_id.get(record_id)
    else:
        return record_id in engine.ledger.transfers
    return found is not None and merchant_id in (None, found.merchant_id)


def _matches(query, record) -> bool:
    if type(query) is ListInvoices:
        return True
    if query.status and record.status != query.status:
        return False
    if type(query) is ListOrders:
        if not query.created_gte <= record.created_at < query.created_lt:
            return False
        return not query.name_contains or query.name_contains.casefold() in record.name.casefold()
    return True


def _records_of(archived: Archived):
    """(key, stored bytes) of every record an Archive took."""
    for kind, records in ((ORDER, archived.orders), (PAYMENT, archived.payments), (REFUND, archived.refunds),
                          (INVOICE, archived.invoices), (TRANSFER, archived.transfers)):
        for record in records:
            yield kind + record.id.encode(), _encoder.encode(record)


def _listing_keys_of(archived: Archived):
    for kind, records in ((ORDER, archived.orders), (PAYMENT, archived.payments), (INVOICE, archived.invoices)):
        for record in records:
            yield _listing_key(kind, record)
    for transfer in archived.transfers:
        for account_id in (transfer.debit_account_id, transfer.credit_account_id):
            yield (STATEMENT + account_id.encode() + b"\0" + CREATED.pack(transfer.timestamp)
                   + transfer.id.encode())


def _history_key(account_id: str, timestamp: int, before: int, index: int) -> bytes:
    return HISTORY + account_id.encode() + b"\0" + HISTORY_AT.pack(timestamp, before, index)


def _listing_key(kind: bytes, record) -> bytes:
    return kind + record.merchant_id.encode() + b"\0" + CREATED.pack(record.created_at) + record.id.encode()
