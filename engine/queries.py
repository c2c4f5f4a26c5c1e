"""Reads of engine state: served from memory, never journaled."""

import msgspec

from engine.check import check
from engine.commerce import Commerce
from engine.idempotency import IdempotencyRecord
from engine.ledger import Ledger
from engine.records import Delivery, EventRecord, Invoice, Merchant, Order, Payment, Record, Refund, VaultedCard
from engine.types import TIMESTAMP_MAX, Account, Balance, Transfer

MAX_PAGE = 8190
MAX_JOBS = 1000  # deliveries per GetDeliveryJobs or PendingDeliveries


class LookupAccounts(msgspec.Struct, tag="lookup_accounts", array_like=True):
    ids: list[str]


class LookupTransfers(msgspec.Struct, tag="lookup_transfers", array_like=True):
    ids: list[str]


class AccountTransfers(msgspec.Struct, tag="account_transfers", array_like=True):
    account_id: str
    timestamp_min: int = 0
    timestamp_max: int = TIMESTAMP_MAX
    limit: int = 20
    after_id: str = ""
    newest_first: bool = False


class AccountBalance(msgspec.Struct, tag="account_balance", array_like=True):
    account_id: str
    timestamp: int


class GetMerchant(msgspec.Struct, tag="get_merchant", array_like=True, kw_only=True):
    merchant_id: str = ""
    api_key_hash: str = ""
    client_id: str = ""
    sub_account_id: str = ""


class FindDashboardUser(msgspec.Struct, tag="find_dashboard_user", array_like=True):
    """The merchants on this shard that have a dashboard user with this email."""

    email: str


class FindOrder(msgspec.Struct, tag="find_order", array_like=True):
    """An order by id alone, if this shard holds it (for a bank that quotes only the order)."""

    order_id: str


class GetOrder(msgspec.Struct, tag="get_order", array_like=True):
    merchant_id: str
    order_id: str


class ListOrders(msgspec.Struct, tag="list_orders", array_like=True, kw_only=True):
    merchant_id: str
    name_contains: str = ""
    status: str = ""
    created_gte: int = 0
    created_lt: int = TIMESTAMP_MAX
    limit: int = 20
    starting_after: str = ""
    # Set by the shard when `starting_after` names a record only its cold store holds: where that record stands.
    starting_after_created_at: int = -1


class GetCustomer(msgspec.Struct, tag="get_customer", array_like=True):
    """A merchant's customer by id; or, with `email` (and no id), the first customer made with that e-mail address
    (in any case)."""

    merchant_id: str
    customer_id: str
    email: str = ""


class GetPaymentRecord(msgspec.Struct, tag="get_payment_record", array_like=True):
    """A payment, refund or payout of a merchant, by id (kind: "payment" | "refund" | "payout")."""

    merchant_id: str
    kind: str
    record_id: str


class GetWalletRecord(msgspec.Struct, tag="get_wallet_record", array_like=True):
    """A deposit, withdrawal or adjustment of a merchant, by id (kind: "deposit" | "withdrawal" | "adjustment")."""

    merchant_id: str
    kind: str
    record_id: str


class FindDeposit(msgspec.Struct, tag="find_deposit", array_like=True):
    """A deposit by id alone, if this shard holds it (for a bank transfer that quotes only the deposit)."""

    deposit_id: str


class FindCustomer(msgspec.Struct, tag="find_customer", array_like=True):
    """A customer by id alone, if this shard holds it (for an operator, who names no merchant)."""

    customer_id: str


class FindPayment(msgspec.Struct, tag="find_payment", array_like=True):
    """A payment by id alone (for the provider follower, which hears of an engine deadline by payment id)."""

    payment_id: str


class GetCard(msgspec.Struct, tag="get_card", array_like=True):
    merchant_id: str
    token_id: str


class GetIdempotencyRecord(msgspec.Struct, tag="get_idempotency_record", array_like=True):
    """What a merchant's Idempotency-Key holds: the edge compares a record made before keyed fingerprints itself."""

    merchant_id: str
    key: str


class ListCards(msgspec.Struct, tag="list_cards", array_like=True):
    """Vaulted cards by position, for `paygate rotate-kek`."""

    start: int = 0
    limit: int = 1000


class ListPayments(msgspec.Struct, tag="list_payments", array_like=True, kw_only=True):
    merchant_id: str
    limit: int = 20
    starting_after: str = ""
    status: str = ""  # only payments in this status ("": all)
    order_id: str = ""  # only the payments of this order ("": all)
    # Set by the shard when `starting_after` names a record only its cold store holds: where that record stands.
    starting_after_created_at: int = -1


class ListRefunds(msgspec.Struct, tag="list_refunds", array_like=True, kw_only=True):
    """A payment's refunds, newest first."""

    merchant_id: str
    payment_id: str
    limit: int = 20
    starting_after: str = ""
    # Set by the shard when `starting_after` names a record only its cold store holds: where that record stands.
    starting_after_created_at: int = -1


class ListPayouts(msgspec.Struct, tag="list_payouts", array_like=True, kw_only=True):
    """A merchant's payouts, newest first."""

    merchant_id: str
    limit: int = 20
    starting_after: str = ""
    # Set by the shard when `starting_after` names a record only its cold store holds: where that record stands.
    starting_after_created_at: int = -1


class ListMerchants(msgspec.Struct, tag="list_merchants", array_like=True, kw_only=True):
    """This shard's merchants, newest first, before the one created at (created_before, before_id) when given."""

    name_contains: str = ""
    created_before: int = 0
    before_id: str = ""
    limit: int = 20


class GetReconciliation(msgspec.Struct, tag="get_reconciliation", array_like=True):
    """This shard's part of a reconciliation."""

    reconciliation_id: str


class ListReconciliations(msgspec.Struct, tag="list_reconciliations", array_like=True, kw_only=True):
    """This shard's parts of reconciliations, newest first."""

    limit: int = 20
    starting_after: str = ""


class FindSettlementItems(msgspec.Struct, tag="find_settlement_items", array_like=True):
    """Which of these payment and refund ids (a settlement file's) this shard holds."""

    ids: list[str]


class ListBlocklist(msgspec.Struct, tag="list_blocklist", array_like=True, kw_only=True):
    """The risk block list, newest first (on the shard that keeps it)."""

    limit: int = 20
    starting_after: str = ""


class ListEvents(msgspec.Struct, tag="list_events", array_like=True, kw_only=True):
    """A merchant's events, newest first, of one type and one object if given."""

    merchant_id: str
    kind: str = ""
    object_id: str = ""
    limit: int = 20
    starting_after: str = ""
    # Set by the shard when `starting_after` names a record only its cold store holds.
    starting_after_archived: bool = False


class GetEvent(msgspec.Struct, tag="get_event", array_like=True):
    merchant_id: str
    event_id: str


class ListDeliveries(msgspec.Struct, tag="list_deliveries", array_like=True, kw_only=True):
    """Deliveries newest first, in one status and of one event if given; merchant_id "": every merchant's (an
    operator)."""

    merchant_id: str
    status: str = ""
    event_id: str = ""
    limit: int = 20
    starting_after: str = ""
    # Set by the shard when `starting_after` names a record only its cold store holds.
    starting_after_archived: bool = False


class GetDelivery(msgspec.Struct, tag="get_delivery", array_like=True):
    merchant_id: str
    delivery_id: str


class GetDeliveryJobs(msgspec.Struct, tag="get_delivery_jobs", array_like=True):
    """What the notifier needs to send each delivery (at most MAX_JOBS): one job per id still known, in order."""

    delivery_ids: list[str]


class PendingDeliveries(msgspec.Struct, tag="pending_deliveries", array_like=True, kw_only=True):
    """Pending deliveries in the order they were queued, after `starting_after` (a delivery id; "": from the
    first), at most `limit` (MAX_JOBS): for a notifier starting again."""

    starting_after: str = ""
    limit: int = 1000


class GetInvoice(msgspec.Struct, tag="get_invoice", array_like=True):
    merchant_id: str
    invoice_id: str


class ListInvoices(msgspec.Struct, tag="list_invoices", array_like=True, kw_only=True):
    """A merchant's invoices, newest first; only the order's if `order_id` is given."""

    merchant_id: str
    order_id: str = ""
    limit: int = 20
    starting_after: str = ""
    # Set by the shard when `starting_after` names a record only its cold store holds: where that record stands.
    starting_after_created_at: int = -1


class DeliveryJob(msgspec.Struct, array_like=True, kw_only=True):
    """A delivery with what sending it takes: its event, its merchant (whose credential sets hold the sealed
    webhook secrets) and, for a receipt, the order, its invoice and payment, and the refund."""

    delivery: Delivery
    event: EventRecord
    merchant: Merchant
    order: Order | None = None
    invoice: Invoice | None = None
    payment: Payment | None = None
    refund: Refund | None = None


Query = (
    LookupAccounts | LookupTransfers | AccountTransfers | AccountBalance | GetMerchant | FindDashboardUser | GetOrder
    | ListOrders | GetCustomer | GetPaymentRecord | ListPayments | GetCard | FindOrder | FindPayment
    | ListBlocklist | GetWalletRecord | FindDeposit | FindCustomer | GetIdempotencyRecord | ListCards | ListRefunds
    | ListPayouts | ListMerchants | ListEvents | GetEvent | ListDeliveries | GetDelivery | GetDeliveryJobs
    | PendingDeliveries | GetInvoice | ListInvoices
    | GetReconciliation | ListReconciliations | FindSettlementItems
)


class Answer(msgspec.Struct, omit_defaults=True):
    accounts: list[Account | None] | None = None
    transfers: list[Transfer | None] | None = None
    balance: Balance | None = None
    record: Record | None = None
    card: VaultedCard | None = None
    records: list[Record] | None = None
    has_more: bool = False
    idempotency: IdempotencyRecord | None = None
    cards: list[tuple[str, VaultedCard]] | None = None
    jobs: list[DeliveryJob] | None = None
    ids: list[str] | None = None
    archived: bool = False  # `record` came from the shard's cold store (journal/cold.py), not from memory


def answer(query: Query, ledger: Ledger, commerce: Commerce) -> Answer:
    kind = type(query)
    if kind is LookupAccounts:
        return Answer(accounts=[_bare(ledger.accounts.get(account_id)) for account_id in query.ids])
    if kind is LookupTransfers:
        return Answer(transfers=[ledger.transfers.get(transfer_id) for transfer_id in query.ids])
    if kind is AccountTransfers:
        limit = max(1, min(query.limit, MAX_PAGE))
        return Answer(transfers=ledger.account_transfers(
            query.account_id, query.timestamp_min, query.timestamp_max, limit, query.after_id, query.newest_first))
    if kind is AccountBalance:
        return Answer(balance=ledger.balance_at(query.account_id, query.timestamp))
    if kind is GetMerchant:
        return Answer(record=_merchant(query, commerce))
    if kind is FindDashboardUser:
        return Answer(records=commerce.merchants.merchants_of_user(query.email))
    if kind is GetOrder:
        return Answer(record=commerce.orders.order_of(query.merchant_id, query.order_id))
    if kind is ListOrders:
        orders, has_more = commerce.orders.list_orders(
            query.merchant_id, query.name_contains, query.status, query.created_gte, query.created_lt,
            max(1, min(query.limit, MAX_PAGE)), query.starting_after, query.starting_after_created_at)
        return Answer(records=orders, has_more=has_more)
    if kind is GetCustomer:
        customer_id = query.customer_id or commerce.wallets.customer_with_email(query.merchant_id, query.email)
        return Answer(record=commerce.wallets.customer_of(query.merchant_id, customer_id))
    if kind is GetPaymentRecord:
        return Answer(record=commerce.payments.record_of(query.merchant_id, query.kind, query.record_id))
    if kind is FindOrder:
        return Answer(record=commerce.orders.by_id.get(query.order_id))
    if kind is FindPayment:
        return Answer(record=commerce.payments.payments.get(query.payment_id))
    if kind is GetWalletRecord:
        return Answer(record=commerce.deposits.record_of(query.merchant_id, query.kind, query.record_id))
    if kind is FindDeposit:
        return Answer(record=commerce.deposits.deposits.get(query.deposit_id))
    if kind is FindCustomer:
        return Answer(record=commerce.wallets.customers.get(query.customer_id))
    if kind is GetCard:
        return Answer(card=commerce.payments.card_of(query.merchant_id, query.token_id))
    if kind is GetIdempotencyRecord:
        return Answer(idempotency=commerce.idempotency.records.get((query.merchant_id, query.key)))
    if kind is ListCards:
        return Answer(cards=commerce.payments.vaulted_cards(max(0, query.start), max(1, min(query.limit, MAX_PAGE))))
    if kind in _NOTIFICATION_READS:
        return _NOTIFICATION_READS[kind](query, commerce)
    if kind is GetReconciliation:
        return Answer(record=commerce.reconciliations.by_id.get(query.reconciliation_id))
    if kind is ListReconciliations:
        parts, has_more = commerce.reconciliations.list_parts(max(1, min(query.limit, MAX_PAGE)), query.starting_after)
        return Answer(records=parts, has_more=has_more)
    if kind is FindSettlementItems:
        return Answer(ids=commerce.reconciliations.settlement_items(query.ids[:MAX_PAGE]))
    if kind is ListBlocklist:
        entries, has_more = commerce.blocklist.list_entries(max(1, min(query.limit, MAX_PAGE)), query.starting_after)
        return Answer(records=entries, has_more=has_more)
    limit = max(1, min(query.limit, MAX_PAGE))
    if kind is ListRefunds:
        return _listed(*commerce.payments.list_refunds(query.merchant_id, query.payment_id, limit,
                                                       query.starting_after, query.starting_after_created_at))
    if kind is ListPayouts:
        return _listed(*commerce.payments.list_payouts(query.merchant_id, limit, query.starting_after,
                                                       query.starting_after_created_at))
    if kind is ListMerchants:
        return _listed(*commerce.merchants.list_merchants(query.name_contains, query.created_before,
                                                          query.before_id, limit))
    check(kind is ListPayments, f"no answer for a {kind.__name__} query")
    return _listed(*commerce.payments.list_payments(query.merchant_id, limit, query.starting_after, query.status,
                                                    query.order_id, query.starting_after_created_at))


def _listed(records: list, has_more: bool) -> Answer:
    return Answer(records=records, has_more=has_more)


def _list_events(query: ListEvents, commerce: Commerce) -> Answer:
    events, has_more = commerce.notifications.list_events(query.merchant_id, query.kind, query.object_id,
                                                          max(1, min(query.limit, MAX_PAGE)), query.starting_after,
                                                          query.starting_after_archived)
    return Answer(records=events, has_more=has_more)


def _list_deliveries(query: ListDeliveries, commerce: Commerce) -> Answer:
    deliveries, has_more = commerce.notifications.list_deliveries(
        query.merchant_id, query.status, query.event_id, max(1, min(query.limit, MAX_PAGE)), query.starting_after,
        query.starting_after_archived)
    return Answer(records=deliveries, has_more=has_more)


def _pending_deliveries(query: PendingDeliveries, commerce: Commerce) -> Answer:
    deliveries, has_more = commerce.notifications.pending_deliveries(query.starting_after,
                                                                     max(1, min(query.limit, MAX_JOBS)))
    return Answer(records=deliveries, has_more=has_more)


def _list_invoices(query: ListInvoices, commerce: Commerce) -> Answer:
    invoices, has_more = commerce.invoices.list_invoices(query.merchant_id, query.order_id,
                                                         max(1, min(query.limit, MAX_PAGE)), query.starting_after,
                                                         query.starting_after_created_at)
    return Answer(records=invoices, has_more=has_more)


def _delivery_jobs(query: GetDeliveryJobs, commerce: Commerce) -> Answer:
    """A job for each delivery (and its event) still kept, in the order asked."""
    notifications = commerce.notifications
    jobs = []
    for delivery_id in query.delivery_ids[:MAX_JOBS]:
        delivery = notifications.deliveries.get(delivery_id)
        event = notifications.records.get(delivery.event_id) if delivery is not None else None
        if event is not None:
            jobs.append(_job(delivery, event, commerce))
    return Answer(jobs=jobs)


def _job(delivery: Delivery, event: EventRecord, commerce: Commerce) -> DeliveryJob:
    job = DeliveryJob(delivery=delivery, event=event, merchant=commerce.merchants.by_id[delivery.merchant_id])
    if delivery.kind == "event":
        return job
    payments = commerce.payments
    if delivery.kind == "refund_receipt":
        job.refund = payments.refunds.get(event.object_id)
        paid_by = payments.payments.get(job.refund.payment_id) if job.refund is not None else None
        job.order = commerce.orders.by_id.get(paid_by.order_id) if paid_by is not None else None
    else:
        job.order = commerce.orders.by_id.get(event.object_id)
    if job.order is not None:
        job.invoice = commerce.invoices.by_id.get(job.order.invoice_id)
        job.payment = payments.payments.get(job.order.payment_id)
    return job


_NOTIFICATION_READS = {
    ListEvents: _list_events,
    GetEvent: lambda query, commerce: Answer(record=commerce.notifications.event_of(query.merchant_id,
                                                                                   query.event_id)),
    ListDeliveries: _list_deliveries,
    GetDelivery: lambda query, commerce: Answer(record=commerce.notifications.delivery_of(query.merchant_id,
                                                                                         query.delivery_id)),
    GetDeliveryJobs: _delivery_jobs,
    PendingDeliveries: _pending_deliveries,
    GetInvoice: lambda query, commerce: Answer(record=commerce.invoices.invoice_of(query.merchant_id,
                                                                                  query.invoice_id)),
    ListInvoices: _list_invoices,
}


def _merchant(query: GetMerchant, commerce: Commerce) -> Merchant | None:
    merchant_id = query.merchant_id
    if query.api_key_hash:
        merchant_id = commerce.merchants.by_api_key_hash.get(query.api_key_hash, "")
    elif query.client_id:
        merchant_id = commerce.merchants.by_client_id.get(query.client_id, "")
    elif query.sub_account_id:
        merchant_id = commerce.merchants.by_sub_account.get(query.sub_account_id, "")
    return commerce.merchants.by_id.get(merchant_id)


def _bare(account: Account | None) -> Account | None:
    """An account as a reader sees it: balances, without the engine's indexes."""
    if account is None:
        return None
    return msgspec.structs.replace(account, transfers=None, history=None)



