"""Orders: create, PATCH, cancel and expiry, the checks on their splits, and a merchant's order search."""

from engine.changes import Changes
from engine.ip_windows import IpWindows
from engine.listing import Listing, list_cursor, made_in_order
from engine.merchants import Merchants
from engine.payments import Payments
from engine.records import CancelOrder, CreateOrder, Order, Outcome, Split, UpdateOrder
from engine.states import transition
from engine.types import AMOUNT_MAX, NANOSECONDS_PER_SECOND, TIMESTAMP_MAX, Event

MAX_SPLITS = 10


class Orders:
    # Payments read orders, and orders close their payments: each command hands its Payments in.
    def __init__(self, changes: Changes, merchants: Merchants, ip_windows: IpWindows, events: list[Event]) -> None:
        self.merchants = merchants
        self.ip_windows = ip_windows
        self.events = events
        self.by_id: dict[str, Order] = changes.dict()
        self.by_merchant = Listing(changes)  # each merchant's order ids
        self.expiries = changes.schedule()  # order id -> when it expires
        # Orders back from the cold store for a refund of their payment (engine/archival.py): the cold store lists
        # them, this index does not.
        self.unlisted: dict[str, None] = changes.dict(ordered=False)

    # Time

    def expire(self, timestamp: int, payments: Payments) -> list[Event]:
        """Expire the pending orders whose time is up, and stop their payments."""
        events = []
        for order_id in self.expiries.pop_due(timestamp):
            order = self.by_id[order_id]
            if order.status == "pending":
                transition(order, "expired")
                order.updated_at = timestamp
                events.append(Event("order.expired", order_id, timestamp))
                payments.order_closed(order, timestamp)
        return events

    # Commands

    def create(self, command: CreateOrder, timestamp: int) -> Outcome:
        order = command.order
        if order.merchant_id not in self.merchants.by_id:
            return Outcome("merchant_not_found")
        if order.id in self.by_id:
            return Outcome("exists")
        refusal = self._check_amount(order.merchant_id, order.amount, order.splits)
        if refusal:
            return Outcome(refusal)
        if not duration_fits(command.expires_in_s, timestamp):
            return Outcome("expires_in_invalid")
        retry_after_s = self.ip_windows.admit(command, timestamp)
        if retry_after_s:
            return Outcome("rate_limited", retry_after_s=retry_after_s)
        order.status = "pending"
        order.created_at = order.updated_at = timestamp
        if command.expires_in_s is not None:
            order.expires_at = timestamp + command.expires_in_s * NANOSECONDS_PER_SECOND
        self.by_id[order.id] = order
        self.by_merchant.add(order.merchant_id, order.id)
        self._schedule_expiry(order)
        return Outcome(record=order)

    def update(self, command: UpdateOrder, timestamp: int, payments: Payments) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id)
        if order is None:
            return Outcome("order_not_found")
        if order.status != "pending":
            return Outcome("order_not_pending", record=order)
        if command.amount is not None and payments.payment_in_progress(order):
            return Outcome("payment_in_progress", record=order)  # its payment is for the amount asked then
        if not duration_fits(command.expires_in_s, timestamp):
            return Outcome("expires_in_invalid", record=order)
        if command.amount is not None:
            refusal = self._check_amount(order.merchant_id, command.amount, order.splits)
            if refusal:
                return Outcome(refusal, record=order)
        for field in ("name", "note", "amount"):
            value = getattr(command, field)
            if value is not None:
                setattr(order, field, value)
        expires_at = command.expires_at
        if command.expires_in_s is not None:
            expires_at = timestamp + command.expires_in_s * NANOSECONDS_PER_SECOND
        if expires_at is not None:
            order.expires_at = expires_at
            self._schedule_expiry(order)
        order.updated_at = timestamp
        return Outcome(record=order)

    def cancel(self, command: CancelOrder, timestamp: int, payments: Payments) -> Outcome:
        order = self.order_of(command.merchant_id, command.order_id)
        if order is None:
            return Outcome("order_not_found")
        if order.status != "pending":
            return Outcome("order_not_pending", record=order)
        transition(order, "cancelled")
        order.updated_at = timestamp
        payments.order_closed(order, timestamp)
        self.events.append(Event("order.cancelled", order.id, timestamp))
        return Outcome(record=order)

    def _schedule_expiry(self, order: Order) -> None:
        # Zero means the order never expires, as a zero timeout does in the ledger.
        if order.expires_at:
            self.expiries.set(order.id, order.expires_at)
        else:
            self.expiries.drop(order.id)

    def _check_amount(self, merchant_id: str, amount: int, splits: list[Split]) -> str:
        """An order's amount and its shares: '' if they hold, else the refusal's code.

        Each share is positive and goes once to a merchant of this shard other than the order's own, or to one of
        the order merchant's sub-accounts; at most MAX_SPLITS, together at most the amount. A share has no
        currency of its own: it is paid in the order's.
        """
        if not 0 < amount <= AMOUNT_MAX:
            return "amount_out_of_range"
        if len(splits) > MAX_SPLITS:
            return "splits_too_many"
        if any(split.amount <= 0 for split in splits):
            return "split_amount_must_be_positive"
        if sum(split.amount for split in splits) > amount:
            return "splits_exceed_amount"
        destinations = set()
        for split in splits:
            if split.account_id == merchant_id:
                return "split_to_own_merchant"
            own_sub_account = self.merchants.by_sub_account.get(split.account_id) == merchant_id
            if not (own_sub_account or split.account_id in self.merchants.by_id):
                return "split_destination_not_found"
            if split.account_id in destinations:
                return "split_destination_duplicated"
            destinations.add(split.account_id)
        return ""

    # Reads

    def order_of(self, merchant_id: str, order_id: str) -> Order | None:
        order = self.by_id.get(order_id)
        return order if order is not None and order.merchant_id == merchant_id else None

    def list_orders(self, merchant_id: str, name_contains: str = "", status: str = "", created_gte: int = 0,
                    created_lt: int = 2**63 - 1, limit: int = 20, starting_after: str = "",
                    starting_after_created_at: int = -1) -> tuple[list[Order], bool]:
        """A merchant's orders, newest first, filtered; and whether more follow. A cursor the engine no longer holds
        is placed by its `starting_after_created_at`."""
        cursor = list_cursor(self.by_id, merchant_id, starting_after, starting_after_created_at)
        if cursor is False:
            return [], False
        needle = name_contains.casefold()
        found: list[Order] = []
        for order in self.by_merchant.by_key(merchant_id, self.by_id, cursor):
            if order.created_at < created_gte:
                break  # newest first: everything further is older still
            if order.created_at >= created_lt or (status and order.status != status):
                continue
            if needle and needle not in order.name.casefold():
                continue
            if len(found) == limit:
                return found, True
            found.append(order)
        return found, False

    # Archival (engine/archival.py)

    def unlist(self, order: Order) -> None:
        """An order archived leaves the merchant's list (unless it came back unlisted)."""
        if order.id in self.unlisted:
            del self.unlisted[order.id]
        else:
            self.by_merchant.remove(order.merchant_id, order.id)

    def bring_back(self, order: Order) -> None:
        """An archived order in memory again, as the cold store keeps it, unlisted: the cold store lists it."""
        self.by_id[order.id] = order
        self.unlisted[order.id] = None

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"orders": list(self.by_id.values()),
                "order_expiries": [(expires_at, order_id) for expires_at, order_id in self.expiries.entries()
                                   if self.by_id[order_id].status == "pending"],
                "unlisted_orders": sorted(self.unlisted)}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot, rebuilding the index by merchant in the order orders were made."""
        self.by_id.load((order.id, order) for order in snapshot.orders)
        self.unlisted.load((order_id, None) for order_id in snapshot.unlisted_orders)
        for order in made_in_order(snapshot.orders, self.unlisted):
            self.by_merchant.add(order.merchant_id, order.id)
        # Only the entry that can still expire its order: older snapshots also kept those an order had moved from.
        self.expiries.load((expires_at, order_id) for expires_at, order_id in snapshot.order_expiries
                           if self.by_id[order_id].status == "pending" and self.by_id[order_id].expires_at == expires_at)


def duration_fits(duration_s: int | None, timestamp: int) -> bool:
    """A duration from the batch's time (None: none given) is not negative and ends within the engine's clock."""
    return duration_s is None or 0 <= duration_s <= (TIMESTAMP_MAX - timestamp) // NANOSECONDS_PER_SECOND
