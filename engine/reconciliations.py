"""Reconciliation against an acquirer's settlement file: the books are made to agree with the bank's.

The file lists each captured payment and refund the acquirer settled, under the reference we gave it (the payment's
or refund's id), with the fee it kept, and the chargebacks it took back. Each row is matched, or named as a
mismatch: `missing_in_ledger` (no such capture or refund here), `amount_mismatch` (another amount or currency:
nothing moves, it waits for a corrected file), `duplicates` (listed twice, or settled already); and the captures and
refunds made here that day that the file left out are `missing_in_settlement` (they stay unsettled, and a later
file may still list them). Money moves only for matched rows (chart: engine/ACCOUNTS.md):

    a payment      its money still owed, from `clearing_<acquirer>` to `settled_<acquirer>` (our bank account):
                   what it captured, less its refunds, plus those of them settled before it (which moved it back);
                   the payment becomes `settled`
    a refund       made before its payment settled: from `settled_` back to `clearing_`, unless the payment's own
                   settlement already left it out; made after: from `refunds_<acquirer>` (owed to the acquirer) to
                   `settled_`; the refund becomes `settled`
    a fee          from `settled_` to `fees_<acquirer>`
    a chargeback   the acquirer took it back: from `settled_` to `disputes`, which the merchant's balance (a
                   deposit's wallet) pays at once as far as it holds; the rest stays owed there, and each later
                   reconciliation takes it from the balance as far as it can. The payment becomes `disputed` and
                   `payment.disputed` is raised; a payment is charged back once.

So after a file whose refunds come with their payments (or after them), `settled_` moved by exactly what the
acquirer paid in, and `fees_` by what it kept. Mismatches raise `reconciliation.mismatch`.

Every shard applies its part (`Reconcile`) under the reconciliation's id: a part already made answers again, and
another file under the same id is refused. A part carries the archived payments and refunds its rows name, as the
shard's cold store holds them (engine/archival.py): a row finds them as it finds those in memory, and one that
changes a payment (a chargeback) brings it back into memory first, with its order, as a refund does.
"""

from engine.changes import Changes
from engine.check import check
from engine.days import day_of, day_of_date
from engine.ledger import Ledger
from engine.listing import EVERYWHERE, Listing
from engine.payments import Payments, move, system_account
from engine.records import Order, Outcome, Payment, Reconcile, Reconciliation, Refund, SettlementRow, \
    system_account_id, wallet_account_id
from engine.states import transition
from engine.types import AMOUNT_MAX, ID_MAX_LENGTH, Event, Transfer

SETTLING_ACQUIRERS = ("piggybank",)  # the providers whose card payments settle through a file
ROW_STATUSES = ("captured", "refunded", "chargeback")
ACQUIRER_ACCOUNTS = ("clearing", "settled", "refunds", "fees")  # one per acquirer: `settled_piggybank`
MAX_SETTLEMENT_ROWS = 50_000  # per file: one command, under a shard batch's item limit
MAX_RECONCILIATIONS = 400  # parts kept, the oldest forgotten first: a re-run of one forgotten finds its rows settled
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"


class Reconciliations:
    def __init__(self, ledger: Ledger, changes: Changes, payments: Payments, events: list[Event]) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.ledger = ledger
        self.payments = payments
        self.events = events
        self.by_id: dict[str, Reconciliation] = changes.dict()  # oldest first
        self.listing = Listing(changes)  # the same ids, for pages (derived: restore rebuilds it)
        # Captures and refunds not settled yet, by "<acquirer>:<day>" (derived: restore rebuilds them).
        self.unsettled_payments = Listing(changes)
        self.unsettled_refunds = Listing(changes)
        # payment id -> how many of its refunds wait for their settlement (derived: restore rebuilds it)
        self.refunds_waiting: dict[str, int] = changes.dict(ordered=False)
        # (merchant id, currency) whose `disputes` account is owed money, at most one per merchant account (derived:
        # restore rebuilds it; read sorted, so its order is not state).
        self.owing: dict[tuple[str, str], bool] = changes.dict(ordered=False)

    # Following the payments

    def follow(self, first_event: int) -> None:
        """List the card captures and refunds since `first_event` as unsettled."""
        for event in self.events[first_event:]:
            if event.kind == "payment.succeeded":
                self._list_payment(self.payments.payments[event.object_id])
            elif event.kind == "refund.succeeded":
                self._list_refund(self.payments.refunds[event.object_id])

    def _list_payment(self, payment: Payment) -> None:
        if settles_by_file(payment) and not payment.settled_at:
            self.unsettled_payments.add(_captured_day(payment), payment.id)

    def unlist_payment(self, payment: Payment) -> None:
        """An unsettled payment archived (charged back first) is listed no more, as restore would not list it."""
        if self.unsettled_payments.has(payment.id):
            self.unsettled_payments.remove(_captured_day(payment), payment.id)

    def _list_refund(self, refund: Refund) -> None:
        payment = self.payments.payments.get(refund.payment_id)
        if payment is not None and settles_by_file(payment) and not refund.settled_at:
            self.unsettled_refunds.add(_day_key(payment.acquirer, day_of(refund.created_at)), refund.id)
            self.refunds_waiting[payment.id] = self.refunds_waiting.get(payment.id, 0) + 1

    # The command

    def reconcile(self, command: Reconcile, timestamp: int) -> Outcome:
        existing = self.by_id.get(command.reconciliation_id)
        if existing is not None:
            if existing.request_hash != command.request_hash:
                return Outcome(IDEMPOTENCY_KEY_REUSED, record=existing)
            return Outcome(record=existing, replayed=True)
        refusal = _refusal(command)
        if refusal:
            return Outcome(refusal)
        part = Reconciliation(id=command.reconciliation_id, provider=command.provider, date=command.date,
                              request_hash=command.request_hash, rows=len(command.rows) + len(command.unknown),
                              matched=[], missing_in_settlement=[], missing_in_ledger=[], amount_mismatch=[],
                              duplicates=[], chargebacks=[], fees={}, created_at=timestamp)
        seen = set()
        archived = self._archived(command)
        for row in command.rows:
            if (row.status, row.transaction_id) in seen:
                part.duplicates.append(row.transaction_id)
                continue
            seen.add((row.status, row.transaction_id))
            self._settle_row(row, part, archived, timestamp)
        part.missing_in_ledger += (row.transaction_id for row in command.unknown)
        listed = {transaction_id for _, transaction_id in seen}
        day = _day_key(command.provider, day_of_date(command.date))
        for listing in (self.unsettled_payments, self.unsettled_refunds):  # by id: restore lists in another order
            part.missing_in_settlement += sorted(item_id for item_id in listing.newest_first(day)
                                                 if item_id not in listed)
        self._recover_disputes(part, timestamp)
        self._keep(part)
        if part.missing_in_settlement or part.missing_in_ledger or part.amount_mismatch or part.duplicates:
            self.events.append(Event("reconciliation.mismatch", part.id, timestamp))
        self.events.append(Event("reconciliation.completed", part.id, timestamp))
        return Outcome(record=part)

    def _archived(self, command: Reconcile) -> tuple[dict[str, Payment], dict[str, Refund], dict[str, Order]]:
        """The archived payments and refunds the command carries, by id, but those memory holds (again); a payment
        only with its order, in memory or carried, which it brings back with it."""
        orders = {order.id: order for order in command.archived_orders if order.id not in self.payments.orders}
        payments = {payment.id: payment for payment in command.archived_payments
                    if payment.id not in self.payments.payments and (
                        not payment.order_id or payment.order_id in self.payments.orders
                        or (payment.order_id in orders
                            and orders[payment.order_id].merchant_id == payment.merchant_id))}
        return payments, {refund.id: refund for refund in command.archived_refunds
                          if refund.id not in self.payments.refunds}, orders

    def _settle_row(self, row: SettlementRow, part: Reconciliation, archived: tuple[dict, dict, dict],
                    timestamp: int) -> None:
        payments, refunds, orders = archived
        if row.status == "refunded":
            refund = self.payments.refunds.get(row.transaction_id) or refunds.get(row.transaction_id)
            payment = (self.payments.payments.get(refund.payment_id) or payments.get(refund.payment_id)
                       if refund is not None else None)
        else:
            refund = None
            payment = self.payments.payments.get(row.transaction_id) or payments.get(row.transaction_id)
        if payment is None or payment.acquirer != part.provider or payment.method != "card" or \
                not payment.amount_captured:
            part.missing_in_ledger.append(row.transaction_id)
        elif row.status == "chargeback":
            self._charge_back(row, payment, part, orders, timestamp)
        elif (refund or payment).settled_at:
            part.duplicates.append(row.transaction_id)
        elif row.currency.lower() != payment.currency.lower() or row.amount != (
                refund.amount if refund is not None else payment.amount_captured):
            part.amount_mismatch.append(row.transaction_id)
        elif not self._fits(payment, [_settlement(payment, refund), _fee_move(row)]):
            part.amount_mismatch.append(row.transaction_id)  # a sum past what an account holds (AMOUNT_MAX)
        else:
            self._bring_back(payment, orders)
            if refund is None:
                self._settle_payment(payment, timestamp)
            else:
                self._settle_refund(refund, payment, timestamp)
            self._fee(payment, row, part, timestamp)
            part.matched.append(row.transaction_id)

    def _settle_payment(self, payment: Payment, timestamp: int) -> None:
        settlement = _settlement(payment, None)
        self._move(payment, settlement, timestamp)
        payment.amount_settled += settlement[3]
        payment.settled_at = payment.updated_at = timestamp
        if payment.status == "succeeded":
            transition(payment, "settled")
        self.unlist_payment(payment)  # one archived unsettled (charged back first) is listed no more
        self.events.append(Event("payment.settled", payment.id, timestamp))

    def _settle_refund(self, refund: Refund, payment: Payment, timestamp: int) -> None:
        self._move(payment, _settlement(payment, refund), timestamp)
        if not refund.after_settlement and not payment.settled_at:  # moved out of the clearing: netted when it settles
            payment.amount_settled -= refund.amount
        refund.settled_at = payment.updated_at = timestamp
        transition(refund, "settled")
        self.unsettled_refunds.remove(_day_key(payment.acquirer, day_of(refund.created_at)), refund.id)
        waiting = self.refunds_waiting[payment.id] - 1
        if waiting:
            self.refunds_waiting[payment.id] = waiting
        else:
            del self.refunds_waiting[payment.id]

    def _fee(self, payment: Payment, row: SettlementRow, part: Reconciliation, timestamp: int) -> None:
        if row.fee:
            self._move(payment, _fee_move(row), timestamp)
            part.fees = {**part.fees, payment.currency: part.fees.get(payment.currency, 0) + row.fee}

    def _charge_back(self, row: SettlementRow, payment: Payment, part: Reconciliation, orders: dict[str, Order],
                     timestamp: int) -> None:
        if payment.amount_disputed:
            part.duplicates.append(row.transaction_id)
            return
        if row.currency.lower() != payment.currency.lower() or row.amount > (
                payment.amount_captured - payment.amount_refunded):
            part.amount_mismatch.append(row.transaction_id)
            return
        chargeback = (f"{payment.id}.chargeback", "disputes", "settled", row.amount)
        if not self._fits(payment, [chargeback, _fee_move(row)]):  # what it takes from the merchant cannot overflow
            part.amount_mismatch.append(row.transaction_id)  # a sum past what an account holds (AMOUNT_MAX)
            return
        self._bring_back(payment, orders)
        self._move(payment, chargeback, timestamp)
        merchant_id, currency = payment.merchant_id, payment.currency
        source = (wallet_account_id(merchant_id, payment.customer_id, currency) if payment.deposit_id
                  else system_account_id(merchant_id, "balance", currency))
        recovered = min(row.amount, self.ledger.available(source))
        if recovered:
            code = move(self.ledger, Transfer(f"{merchant_id}:{payment.id}.chargeback.recovered", source,
                                              system_account_id(merchant_id, "disputes", currency), recovered,
                                              currency), timestamp)
            check(code == "ok", f"chargeback of {payment.id} not recovered: {code}")
        if recovered < row.amount:
            self.owing[(merchant_id, currency)] = True
        payment.amount_disputed = row.amount
        payment.updated_at = timestamp
        transition(payment, "disputed")
        self.events.append(Event("payment.disputed", payment.id, timestamp))
        self._fee(payment, row, part, timestamp)
        part.chargebacks.append(payment.id)

    def _bring_back(self, payment: Payment, orders: dict[str, Order]) -> None:
        """An archived payment a row changes, in memory again with its order (unlisted: the cold store lists them),
        as a refund brings them back, until archival takes them again."""
        if payment.id not in self.payments.payments:
            self.payments.bring_back(payment)
            if payment.order_id and payment.order_id not in self.payments.orders:
                self.payments.bring_back_order(orders[payment.order_id])

    def _recover_disputes(self, part: Reconciliation, timestamp: int) -> None:
        """What merchants still owe for chargebacks, taken from their balances as far as they hold."""
        for merchant_id, currency in sorted(self.owing):
            disputes = self.ledger.accounts[system_account_id(merchant_id, "disputes", currency)]
            owed = disputes.debits_posted - disputes.credits_posted
            balance = system_account_id(merchant_id, "balance", currency)
            recovered = min(owed, self.ledger.available(balance))
            recovery = Transfer(f"{merchant_id}:{part.id}.disputes.{currency}", balance, disputes.id, recovered,
                                currency)
            if recovered and (recovery.id in self.ledger.transfers or recovery.id in self.ledger.failed_ids):
                continue  # a forgotten part run again, whose recovery holds the id still: the next one recovers it
            if recovered:
                code = move(self.ledger, recovery, timestamp)
                check(code == "ok", f"chargebacks of {merchant_id} not recovered: {code}")
            if recovered == owed:
                del self.owing[(merchant_id, currency)]

    def _fits(self, payment: Payment, moves: list[tuple[str, str, str, int]]) -> bool:
        """Whether the ledger takes a row's moves one after another: limits hold by construction, but the sums of a
        file's amounts (fees, a refund settled before its large payment) may take an account past AMOUNT_MAX."""
        return not self.ledger.moves_refusal([_transfer(payment, planned) for planned in moves if planned[3]])

    def _move(self, payment: Payment, planned: tuple[str, str, str, int], timestamp: int) -> None:
        """A settlement's move, (name, debit, credit, amount), its accounts made on first use; nothing, for no
        amount."""
        if not planned[3]:
            return
        for chart in planned[1:3]:
            system_account(self.ledger, payment.merchant_id, _chart_name(chart, payment.acquirer), payment.currency,
                           timestamp)
        transfer = _transfer(payment, planned)
        code = move(self.ledger, transfer, timestamp)
        check(code == "ok", f"settlement transfer {transfer.id}: {code}")  # checked by _fits, limits by construction

    def _keep(self, part: Reconciliation) -> None:
        self._add(part)
        if len(self.by_id) > MAX_RECONCILIATIONS:
            oldest = next(iter(self.by_id))
            del self.by_id[oldest]
            self.listing.remove(EVERYWHERE, oldest)

    def _add(self, part: Reconciliation) -> None:
        self.by_id[part.id] = part
        self.listing.add(EVERYWHERE, part.id)

    # Reads

    def list_parts(self, limit: int, starting_after: str = "") -> tuple[list[Reconciliation], bool]:
        """This shard's parts, newest first, and whether more follow."""
        return self.listing.page(EVERYWHERE, self.by_id, limit, starting_after)

    def settlement_items(self, ids: list[str]) -> list[str]:
        """Which of `ids` name a payment or refund of this shard."""
        return [item_id for item_id in ids if item_id in self.payments.payments or item_id in self.payments.refunds]

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"reconciliations": list(self.by_id.values())}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot, rebuilding the unsettled captures and refunds and who owes chargebacks."""
        for part in snapshot.reconciliations:
            self._add(part)
        brought_back = set(snapshot.unlisted_payments)  # archived, so listed no more (settled, or unlisted then)
        for payment in snapshot.payments:
            if payment.status in ("succeeded", "disputed") and payment.id not in brought_back:
                self._list_payment(payment)
        # From the accounts, not the payments: the payment charged back may have been archived since.
        for account in self.ledger.accounts.values():
            merchant_id = _disputes_owner(account.id, account.currency)
            if merchant_id and account.debits_posted > account.credits_posted:
                self.owing[(merchant_id, account.currency)] = True
        for refund in snapshot.refunds:
            if refund.status == "succeeded":
                self._list_refund(refund)


def settles_by_file(payment: Payment) -> bool:
    """A card payment at an acquirer whose settlement file lists it (and its refunds)."""
    return payment.acquirer in SETTLING_ACQUIRERS and payment.method == "card"


def _settlement(payment: Payment, refund: Refund | None) -> tuple[str, str, str, int]:
    """The move settling a matched payment (what it still owes) or refund: (transfer name, debit, credit, amount)."""
    if refund is None:
        owed = payment.amount_captured - payment.amount_refunded - payment.amount_settled
        check(owed >= 0, f"payment {payment.id}: settles {owed}")
        return f"{payment.id}.settled", "settled", "clearing", owed
    if refund.after_settlement:  # owed to the acquirer since it was made: its settlement deducted it now
        return f"{refund.id}.settled", "refunds", "settled", refund.amount
    if not payment.settled_at:  # the acquirer deducted it before paying the payment in: the clearing holds it
        return f"{refund.id}.settled", "clearing", "settled", refund.amount
    return f"{refund.id}.settled", "", "", 0  # netted into its payment's settlement already: nothing moves


def _transfer(payment: Payment, planned: tuple[str, str, str, int]) -> Transfer:
    """A settlement's move between two of the payment's merchant's accounts, named by the chart: the acquirer's own
    ones without their acquirer."""
    name, debit, credit, amount = planned
    merchant_id, currency = payment.merchant_id, payment.currency
    debit_id, credit_id = (system_account_id(merchant_id, _chart_name(chart, payment.acquirer), currency)
                           for chart in (debit, credit))
    return Transfer(f"{merchant_id}:{name}", debit_id, credit_id, amount, currency)


def _fee_move(row: SettlementRow) -> tuple[str, str, str, int]:
    return f"{row.transaction_id}.{row.status}.fee", "fees", "settled", row.fee


def _disputes_owner(account_id: str, currency: str) -> str:
    """The merchant whose `disputes` account in `currency` this is ('' for any other account)."""
    suffix = system_account_id("", "disputes", currency)
    return account_id[:-len(suffix)] if account_id.endswith(suffix) else ""


def _chart_name(name: str, acquirer: str) -> str:
    return f"{name}_{acquirer}" if name in ACQUIRER_ACCOUNTS else name


def _day_key(acquirer: str, day: int) -> str:
    return f"{acquirer}:{day}"


def _captured_day(payment: Payment) -> str:
    # Payments captured before captured_at was kept count from their creation, close to it for a card.
    return _day_key(payment.acquirer, day_of(payment.captured_at or payment.created_at))


def _refusal(command: Reconcile) -> str:
    """Why a reconciliation cannot run ('' if it can), before anything changes."""
    if command.provider not in SETTLING_ACQUIRERS:
        return "provider_not_found"
    if day_of_date(command.date) is None:
        return "date_invalid"
    if not command.reconciliation_id.startswith("rec_") or len(command.reconciliation_id) > ID_MAX_LENGTH:
        return "reconciliation_id_invalid"
    if len(command.rows) + len(command.unknown) > MAX_SETTLEMENT_ROWS:
        return "too_many_rows"
    # At most a record per row, and a refund's payment and a payment's order: what the rows name, no more.
    if len(command.archived_payments) + len(command.archived_refunds) + len(command.archived_orders) > \
            3 * len(command.rows):
        return "too_many_archived_records"
    for row in (*command.rows, *command.unknown):
        if (row.status not in ROW_STATUSES or not 0 < row.amount <= AMOUNT_MAX or not 0 <= row.fee <= AMOUNT_MAX
                or not 0 < len(row.transaction_id) <= ID_MAX_LENGTH or not 0 < len(row.currency) <= 8):
            return "settlement_row_invalid"
    return ""
