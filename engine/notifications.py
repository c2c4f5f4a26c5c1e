"""Notifications: the events a merchant hears of, and their deliveries to its webhook, the order's IPN URL and the
customer's e-mail.

In the command that logs an engine Event a merchant should hear of (MERCHANT_EVENTS), the event is stored
(EventRecord) with its object as it stands when the command ends, and a Delivery is made for each target; an order
just paid gets its invoice first, so that its events name it. Ids come from the batch's sequence and a position in
the batch's events, so replay and the replica make the same ones. Each delivery queued, new or again, logs an
internal `delivery.queued` Event (one made dead at once, `delivery.dead`), which a journal follower (the notifier)
reads; the notifier reports each attempt back (RecordDeliveryAttempts), and a merchant may redeliver an event or
replay dead deliveries.

Bounds, per shard: at most MAX_EVENTS events are kept (a batch of PRUNE_BATCH more between two prunes), the oldest
leaving first with their deliveries for the shard's cold store (engine.archived), as end-of-day archival takes those
older than a day (engine/archival.py) — but an event with a delivery still pending stays (moved behind the others, a
newer one going in its place) until that delivery ends, so that more are kept only while the oldest are all being
delivered (no more of them than deliveries pending); at most MAX_PENDING_DELIVERIES are pending, beyond which a new
delivery is made dead untried (dead_reason backlog_full), as is one whose merchant has MAX_PENDING_PER_MERCHANT
pending already (endpoints that never answer keep theirs pending for a day); a merchant's redelivery and replay are
refused past half of them (an operator's replay past all), so that no merchant's events or requests can fill the
queue the events of every merchant on the shard need; a delivery keeps its latest MAX_ATTEMPTS_KEPT attempts and is
replayed at most MAX_REPLAYS times; an event is redelivered at most MAX_REDELIVERIES times. An event in the cold
store is read as before and may be redelivered: the command carries it (read from the cold store by the edge) and
brings it back into memory, unlisted (the cold store lists it), with its new deliveries, until archival takes it
again. Its dead deliveries archived with it are beyond a replay, which looks at memory's only: they are a day old
(archival's cut-off) or past the events' cap, and a redelivery of their event sends it again.
"""

import itertools

import msgspec

from engine.changes import Changes, append_to, peek
from engine.check import check
from engine.invoices import Invoices
from engine.listing import Listing, Queue
from engine.paging import page
from engine.records import (
    Delivery,
    DeliveryAttempt,
    DeliveryResult,
    EventObjectType,
    EventRecord,
    Merchant,
    Order,
    Outcome,
    Payment,
    RecordDeliveryAttempts,
    RedeliverEvent,
    Refund,
    ReplayDeliveries,
)
from engine.states import transition
from engine.types import TIMESTAMP_MAX, Event

MAX_EVENTS = 50_000
MAX_PENDING_DELIVERIES = 50_000
MAX_PENDING_PER_MERCHANT = MAX_PENDING_DELIVERIES // 2
MAX_ATTEMPTS_KEPT = 50
MAX_REPLAYS = 10
MAX_REDELIVERIES = 10
MAX_DELIVERY_RESULTS = 1_000  # per RecordDeliveryAttempts
MAX_REPLAY_LIMIT = 1_000  # deliveries per ReplayDeliveries
MAX_ERROR_CHARS = 500
MAX_STATUS_CODE = 999
MAX_DURATION_MS = 2**31 - 1
# Events stored past the cap between two prunes, each of at most PRUNE_ROUNDS walks from the front: a walk passes
# every slot the dict keeps for the keys removed before, so one per event would cost the dict's length.
PRUNE_BATCH = 1024
PRUNE_ROUNDS = 4
POSITION_BITS = 24  # an id's position among its batch's events
QUEUED = "delivery.queued"
DEAD_UNTRIED = "delivery.dead"  # logged for a delivery made dead at once (the queue full): its id is that position
BACKLOG_FULL = "backlog_full"
NO_WEBHOOK_URL = "no_webhook_url"  # the merchant removed its webhook_url while the delivery was pending
# Logged (with the merchant's id) when a change of its webhook_url moved or ended pending deliveries: the notifier
# reads them again before their next attempt.
WEBHOOK_MOVED = "merchant.webhook_moved"
# What the notifier follows the journal for: a shard announces the batches that hold one (journal/shard.py).
FOLLOWED_EVENTS = frozenset({QUEUED, WEBHOOK_MOVED})
DELIVERY_OUTCOMES = ("delivered", "retry", "dead")
# Engine Events a merchant hears of, and the type of their object. Not the internal ones (transfer.expired, *.created,
# delivery.queued, delivery.dead).
MERCHANT_EVENTS: dict[str, EventObjectType] = {kind: kind.partition(".")[0] for kind in (
    "payment.succeeded", "payment.failed", "payment.requires_action", "payment.requires_capture", "payment.captured",
    "payment.cancelled", "payment.settled", "payment.disputed", "order.paid", "order.expired", "order.exception", "order.cancelled",
    "order.partially_refunded", "order.refunded", "refund.succeeded", "payout.paid", "payout.failed",
    "deposit.succeeded", "deposit.failed", "withdrawal.paid", "withdrawal.failed")}
EVENT_TYPES: tuple[str, ...] = tuple(sorted(MERCHANT_EVENTS))
# The receipt e-mailed to the order's customer for an event, by event kind.
RECEIPTS = {"order.paid": "receipt", "refund.succeeded": "refund_receipt"}
_encoder = msgspec.msgpack.Encoder()
_order_decoder = msgspec.msgpack.Decoder(Order)


def make_id(prefix: str, sequence: int, position: int) -> str:
    """An id from the batch's sequence and a position among its events: the same on replay and on the replica."""
    if position >> POSITION_BITS:
        check(False, f"position {position} in batch {sequence}")
    return f"{prefix}{sequence:012x}{position:06x}"


class Notifications:
    def __init__(self, changes: Changes, merchants: dict[str, Merchant], stores: dict, invoices: Invoices,
                 events: list[Event], leaving: list) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.changes = changes
        self.merchants = merchants
        self.orders: dict[str, Order] = stores["order"]
        self.payments: dict[str, Payment] = stores["payment"]
        self.refunds: dict[str, Refund] = stores["refund"]
        self.payouts = stores["payout"]
        self.deposits = stores["deposit"]
        self.withdrawals = stores["withdrawal"]
        self.invoices = invoices
        self.log = events
        self.leaving = leaving  # events (and their deliveries) pruned past the cap, for the cold store
        self.sequence = 0  # of the batch being applied (the engine sets it): ids are made from it
        # event id -> EventRecord, oldest first but for events kept past the cap (moved to the end); removed only
        # from the front
        self.records: dict[str, EventRecord] = changes.dict()
        # delivery id -> Delivery, oldest first
        self.deliveries: dict[str, Delivery] = changes.dict(ranked=True)
        # Derived (restore rebuilds them): each merchant's event and delivery ids; each object's event ids; event
        # id -> its delivery ids; pending deliveries in the order queued; merchant id -> its dead deliveries that may
        # still be replayed (a replay looks at the merchant's own only); merchant id -> how many of its deliveries
        # are pending.
        self.records_by_merchant = Listing(changes)
        self.records_by_object = Listing(changes)
        self.deliveries_by_merchant = Listing(changes)
        self.deliveries_by_event: dict[str, list[str]] = changes.dict(ordered=False)
        self.pending: dict[str, None] = changes.dict(ranked=True)
        self.replayable: dict[str, dict[str, None]] = changes.dict(ordered=False)
        self.pending_by_merchant: dict[str, int] = changes.dict(ordered=False)
        # Archived events a redelivery brought back: in `records` but in none of the lists, which the cold store keeps.
        self.unlisted: dict[str, None] = changes.dict(ordered=False)
        # Derived: the pending deliveries by when they were queued, for pages that start where the last one ended.
        self.queue = Queue(changes, self._queued_at)

    # Events, as commands log them

    def record(self, first: int, timestamp: int) -> None:
        """Store the merchant's events among those logged from position `first` on (one command's), with their
        deliveries; an order paid gets its invoice first, so that every event shows it."""
        log = self.log
        end = len(log)
        if end == first:
            return
        visible = [position for position in range(first, end) if log[position].kind in MERCHANT_EVENTS]
        if not visible:
            return
        for position in visible:
            event = log[position]
            if event.kind == "order.paid":
                self.invoices.create(make_id("inv_", self.sequence, position), self.orders[event.object_id],
                                     timestamp)
        # Nothing changes an object while its events are stored: one encoding serves all its events in the command.
        encoded: dict[tuple[str, str], bytes] = {}
        for position in visible:
            self._store(position, log[position], timestamp, encoded)

    def _store(self, position: int, event: Event, timestamp: int, encoded: dict[tuple[str, str], bytes]) -> None:
        object_type = MERCHANT_EVENTS[event.kind]
        shown = peek(self._store_of(object_type), event.object_id)
        if shown is None:
            check(False, f"{event.kind} of {event.object_id}, which is not there")
        key = (object_type, event.object_id)
        data = encoded.get(key)
        if data is None:
            data = encoded[key] = _encoder.encode(shown)
        record = EventRecord(id=make_id("evt_", self.sequence, position), kind=event.kind,
                             merchant_id=shown.merchant_id, object_id=event.object_id, object_type=object_type,
                             data=data, created_at=timestamp)
        self._add_record(record)
        for channel, kind, target in self._new_targets(record, shown):
            self._queue_new(record, channel, kind, target, timestamp)
        excess = len(self.records) - MAX_EVENTS
        if excess > 0 and excess % PRUNE_BATCH == 0:
            self._prune()

    def _new_targets(self, record: EventRecord, shown) -> list[tuple[str, str, str]]:
        """(channel, kind, target) of a new event's deliveries; none at once for a merchant without a webhook, an
        object without an IPN URL and an event without a receipt (most, under load)."""
        ipn_url = shown.ipn_url if record.object_type == "order" else ""
        merchant = peek(self.merchants, record.merchant_id)
        if not ipn_url and record.kind not in RECEIPTS and (merchant is None or not merchant.webhook_url):
            return []
        return self._targets(record, ipn_url) + self._receipt_targets(record, shown)

    def _store_of(self, object_type: str) -> dict:
        return getattr(self, _STORES[object_type])

    def _targets(self, record: EventRecord, ipn_url: str) -> list[tuple[str, str, str]]:
        """(channel, kind, target) of the event's posts: the merchant's webhook, and the order's IPN URL."""
        merchant = peek(self.merchants, record.merchant_id)
        targets = [("webhook", "event", merchant.webhook_url)] if merchant is not None and merchant.webhook_url else []
        if ipn_url:
            targets.append(("ipn", "event", ipn_url))
        return targets

    def _receipt_targets(self, record: EventRecord, shown) -> list[tuple[str, str, str]]:
        """The receipt e-mail to the order's customer, for an order paid or a refund of its payment."""
        kind = RECEIPTS.get(record.kind)
        if kind is None:
            return []
        order = shown if kind == "receipt" else self._order_of_refund(shown)
        return [("email", kind, order.customer_email)] if order is not None and order.customer_email else []

    def _order_of_refund(self, refund: Refund) -> Order | None:
        payment = peek(self.payments, refund.payment_id)
        return peek(self.orders, payment.order_id) if payment is not None and payment.order_id else None

    def _add_record(self, record: EventRecord) -> None:
        self.records[record.id] = record
        self._list_record(record)

    def _list_record(self, record: EventRecord) -> None:
        self.records_by_merchant.add(record.merchant_id, record.id)
        self.records_by_object.add(record.object_id, record.id)

    def _list_delivery(self, delivery: Delivery) -> None:
        self.deliveries_by_merchant.add(delivery.merchant_id, delivery.id)
        append_to(self.deliveries_by_event, delivery.event_id, delivery.id)

    def _prune(self) -> None:
        """Drop the oldest events past MAX_EVENTS, with their deliveries, to the cold store; one still being
        delivered moves to the end. Each round walks from the front once: called every PRUNE_BATCH events."""
        records = self.records
        for _ in range(PRUNE_ROUNDS):
            excess = len(records) - MAX_EVENTS
            if excess <= 0:
                return
            for _, oldest in records.take_first(excess):
                if self._being_delivered(oldest.id):
                    records[oldest.id] = oldest
                else:
                    self.leaving.append(oldest)
                    self.leaving += self.drop_event(oldest)

    def _being_delivered(self, event_id: str) -> bool:
        return any(delivery_id in self.pending for delivery_id in peek(self.deliveries_by_event, event_id) or ())

    def may_leave(self, record: EventRecord, before: int) -> bool:
        """Whether an event older than `before` is done with: none of its deliveries pending."""
        return not self._being_delivered(record.id)

    def drop_event(self, record: EventRecord) -> list[Delivery]:
        """An event (out of `records` already) out of the indexes, with its deliveries: answered, for the cold store."""
        if record.id in self.unlisted:
            del self.unlisted[record.id]
        else:
            self.records_by_merchant.remove(record.merchant_id, record.id)
            self.records_by_object.remove(record.object_id, record.id)
        gone = []
        for delivery_id in self.deliveries_by_event.pop(record.id, ()):
            delivery = self.deliveries.pop(delivery_id)
            self.deliveries_by_merchant.remove(delivery.merchant_id, delivery_id)
            self._unmark_dead(delivery)
            gone.append(delivery)
        return gone

    # Deliveries

    def _queue_new(self, record: EventRecord, channel: str, kind: str, target: str, timestamp: int) -> None:
        delivery = Delivery(id=make_id("whd_", self.sequence, len(self.log)), event_id=record.id,
                            merchant_id=record.merchant_id, channel=channel, kind=kind, target=target,
                            ordering_key=record.object_id, created_at=timestamp, updated_at=timestamp)
        self.deliveries[delivery.id] = delivery
        self._list_delivery(delivery)
        if len(self.pending) < MAX_PENDING_DELIVERIES and \
                (peek(self.pending_by_merchant, delivery.merchant_id) or 0) < MAX_PENDING_PER_MERCHANT:
            self._enqueue(delivery, timestamp)
        else:
            delivery.status, delivery.dead_reason = "dead", BACKLOG_FULL
            self._mark_dead(delivery)
            self.log.append(Event(DEAD_UNTRIED, delivery.id, timestamp))

    def _enqueue(self, delivery: Delivery, timestamp: int) -> None:
        """Pending from now, its retry schedule from the start; the notifier hears of it by the Event logged."""
        position = len(self.log)
        delivery.queue_position = self.sequence << POSITION_BITS | position
        delivery.queued_after_attempts = delivery.attempt_count
        delivery.next_attempt_at = delivery.updated_at = timestamp
        self._add_pending(delivery)
        self.log.append(Event(QUEUED, delivery.id, timestamp))

    def _add_pending(self, delivery: Delivery) -> None:
        self.pending[delivery.id] = None
        self.queue.add(delivery.queue_position, delivery.id)
        merchant_id = delivery.merchant_id
        self.pending_by_merchant[merchant_id] = (peek(self.pending_by_merchant, merchant_id) or 0) + 1

    def _queued_at(self, delivery_id: str) -> int | None:
        """The queue position of a pending delivery; None for one not pending."""
        return peek(self.deliveries, delivery_id).queue_position if delivery_id in self.pending else None

    def _finish(self, delivery: Delivery, status: str) -> None:
        transition(delivery, status)
        delivery.next_attempt_at = 0
        del self.pending[delivery.id]
        self.queue.left(len(self.pending))
        left = self.pending_by_merchant[delivery.merchant_id] - 1
        if left:
            self.pending_by_merchant[delivery.merchant_id] = left
        else:
            del self.pending_by_merchant[delivery.merchant_id]
        if status == "dead":
            self._mark_dead(delivery)

    def _mark_dead(self, delivery: Delivery) -> None:
        """Among its merchant's to replay, unless replayed as often as may be: then no replay looks at it again."""
        if delivery.replays < MAX_REPLAYS:
            _add_to_index(self.changes, self.replayable, delivery.merchant_id, delivery.id)

    def _unmark_dead(self, delivery: Delivery) -> None:
        if delivery.id in (peek(self.replayable, delivery.merchant_id) or ()):
            _remove_from_index(self.replayable, delivery.merchant_id, delivery.id)

    # Commands

    def record_attempts(self, command: RecordDeliveryAttempts, timestamp: int) -> Outcome:
        """Each result that is its delivery's next attempt; any other (sent again, or for a delivery no longer
        pending) changes nothing. Answers how many applied."""
        results = command.results
        if len(results) > MAX_DELIVERY_RESULTS:
            return Outcome("too_many_results")
        if not all(_result_valid(result) for result in results):
            return Outcome("result_invalid")
        applied = 0
        for result in results:
            delivery = self.deliveries.get(result.delivery_id)
            if delivery is None or delivery.status != "pending" or result.attempt != delivery.attempt_count + 1:
                continue
            attempt = DeliveryAttempt(result.attempted_at, result.status_code, result.error, result.duration_ms)
            delivery.attempts = [*delivery.attempts[-(MAX_ATTEMPTS_KEPT - 1):], attempt]
            delivery.attempt_count = result.attempt
            delivery.updated_at = timestamp
            if result.outcome == "retry":
                delivery.next_attempt_at = result.next_attempt_at
            else:
                self._finish(delivery, result.outcome)
            applied += 1
        return Outcome(count=applied)

    def redeliver(self, command: RedeliverEvent, timestamp: int) -> Outcome:
        """New deliveries of the event to the merchant's webhook (as it is now) and the order's IPN URL."""
        record = self.event_of(command.merchant_id, command.event_id) or self._archived_event(command)
        if record is None:
            return Outcome("event_not_found")
        if record.redeliveries >= MAX_REDELIVERIES:
            return Outcome("redelivery_limit_reached", record=record)
        ipn_url = _order_decoder.decode(record.data).ipn_url if record.object_type == "order" else ""
        targets = self._targets(record, ipn_url)
        if not targets:
            return Outcome("no_delivery_target", record=record)
        if len(targets) > self._requeue_room(command.merchant_id):
            return Outcome(BACKLOG_FULL, record=record)
        if record is command.archived_event:
            self.records[record.id] = record
            self.unlisted[record.id] = None
        record.redeliveries += 1
        for channel, kind, target in targets:
            self._queue_new(record, channel, kind, target, timestamp)
        return Outcome(record=record, count=len(targets))

    def _archived_event(self, command: RedeliverEvent) -> EventRecord | None:
        """The archived event a redelivery carries, if it is the one asked for and the engine holds it no more."""
        event = command.archived_event
        if event is None or event.id in self.records or (event.id, event.merchant_id) != (command.event_id,
                                                                                          command.merchant_id):
            return None
        return event

    def replay(self, command: ReplayDeliveries, timestamp: int) -> Outcome:
        """Dead deliveries queued again, the oldest made first, at most `limit` and as many as the queue holds; one to
        a webhook goes to the merchant's webhook_url as it is now (none now: it stays dead)."""
        if command.status != "dead":
            return Outcome("status_invalid")
        if not 1 <= command.limit <= MAX_REPLAY_LIMIT:
            return Outcome("limit_invalid")
        owners = ([peek(self.replayable, command.merchant_id) or {}] if command.merchant_id
                  else dict.values(self.replayable))
        dead = (peek(self.deliveries, delivery_id) for delivery_id in itertools.chain.from_iterable(owners))
        # Ids follow the order deliveries were made in (sequence, then position): sorted, the oldest come first.
        matching = sorted(delivery.id for delivery in dead
                          if command.created_gte <= delivery.created_at < command.created_lt
                          and self._current_target(delivery))
        room = min(command.limit, self._requeue_room(command.merchant_id))
        if matching and room <= 0:
            return Outcome(BACKLOG_FULL)
        chosen = matching[:room]
        for delivery_id in chosen:
            delivery = self.deliveries[delivery_id]
            transition(delivery, "pending")
            delivery.target = self._current_target(delivery)
            self._unmark_dead(delivery)
            delivery.replays += 1
            delivery.dead_reason = ""
            self._enqueue(delivery, timestamp)
        return Outcome(count=len(chosen), has_more=len(matching) > len(chosen))

    def webhook_changed(self, merchant_id: str, timestamp: int) -> None:
        """After the merchant's webhook_url changed: its pending webhook deliveries go to the URL as it is now from
        their next attempt on (their schedule and order kept), or, with none now, are dead. A scan of the pending
        deliveries (bounded), for a change as rare as a merchant's settings."""
        url = self._current_target_of(merchant_id)
        moved = [delivery_id for delivery_id in self.pending
                 if (delivery := peek(self.deliveries, delivery_id)).merchant_id == merchant_id
                 and delivery.channel == "webhook" and delivery.target != url]
        for delivery_id in moved:
            delivery = self.deliveries[delivery_id]
            delivery.updated_at = timestamp
            if url:
                delivery.target = url
            else:
                delivery.dead_reason = NO_WEBHOOK_URL
                self._finish(delivery, "dead")
        if moved:
            self.log.append(Event(WEBHOOK_MOVED, merchant_id, timestamp))

    def _current_target(self, delivery: Delivery) -> str:
        """Where the delivery would go now: a webhook's to the merchant's webhook_url as it is ("" if none)."""
        return delivery.target if delivery.channel != "webhook" else self._current_target_of(delivery.merchant_id)

    def _current_target_of(self, merchant_id: str) -> str:
        merchant = peek(self.merchants, merchant_id)
        return merchant.webhook_url if merchant is not None else ""

    def _requeue_room(self, merchant_id: str) -> int:
        """How many deliveries a redelivery or replay may queue: a merchant's up to half the queue, an operator's
        ("") up to all of it."""
        share = MAX_PENDING_DELIVERIES // 2 if merchant_id else MAX_PENDING_DELIVERIES
        return share - len(self.pending)

    # Reads

    def event_of(self, merchant_id: str, event_id: str) -> EventRecord | None:
        record = self.records.get(event_id)
        return record if record is not None and record.merchant_id == merchant_id else None

    def list_events(self, merchant_id: str, kind: str, object_id: str, limit: int, starting_after: str,
                    cursor_archived: bool = False) -> tuple[list[EventRecord], bool]:
        """A merchant's events newest first, of `kind` and about `object_id` if given; and whether more follow. A
        cursor names one of the merchant's events, held here or (`cursor_archived`) in the cold store only."""
        if starting_after and not cursor_archived and self.event_of(merchant_id, starting_after) is None:
            return [], False
        ids = (self.records_by_object.newest_first(object_id) if object_id
               else self.records_by_merchant.newest_first(merchant_id))

        def lookup(event_id: str) -> EventRecord | None:
            record = self.event_of(merchant_id, event_id)
            return record if record is not None and (not kind or record.kind == kind) else None
        return page(_older_than(ids, starting_after), lookup, limit, "")

    def delivery_of(self, merchant_id: str, delivery_id: str) -> Delivery | None:
        """A merchant's delivery ("": anyone's, for an operator)."""
        delivery = self.deliveries.get(delivery_id)
        return delivery if delivery is not None and merchant_id in ("", delivery.merchant_id) else None

    def list_deliveries(self, merchant_id: str, status: str, event_id: str, limit: int, starting_after: str,
                        cursor_archived: bool = False) -> tuple[list[Delivery], bool]:
        """Deliveries newest first (a merchant's, or with merchant_id "" everyone's), in `status` and of `event_id`
        if given; and whether more follow. A cursor names a delivery held here or (`cursor_archived`) in the cold
        store only."""
        if starting_after and not cursor_archived and self.delivery_of(merchant_id, starting_after) is None:
            return [], False
        if event_id:
            ids = reversed(self.deliveries_by_event.get(event_id, []))
        else:
            ids = self.deliveries_by_merchant.newest_first(merchant_id) if merchant_id else reversed(self.deliveries)

        def lookup(delivery_id: str) -> Delivery | None:
            delivery = self.delivery_of(merchant_id, delivery_id)
            return delivery if delivery is not None and (not status or delivery.status == status) else None
        return page(_older_than(ids, starting_after), lookup, limit, "")

    def pending_deliveries(self, starting_after: str, limit: int) -> tuple[list[Delivery], bool]:
        """Pending deliveries in the order queued, after the one `starting_after` names (by when it was queued, so
        that one delivered meanwhile still marks the place); and whether more follow."""
        after = peek(self.deliveries, starting_after) if starting_after else None
        position = after.queue_position if after is not None else -1
        found = [peek(self.deliveries, delivery_id)
                 for delivery_id, _ in zip(self.queue.after(position), range(limit + 1))]
        return found[:limit], len(found) > limit

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"events": list(self.records.values()), "deliveries": list(self.deliveries.values()),
                "unlisted_events": sorted(self.unlisted)}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot; the indexes follow from the events (in the order they were made, which
        their ids keep) and the deliveries."""
        self.records.load((record.id, record) for record in snapshot.events)
        self.unlisted.load((event_id, None) for event_id in snapshot.unlisted_events)
        for record in sorted((record for record in snapshot.events if record.id not in self.unlisted),
                             key=lambda record: record.id):
            self._list_record(record)
        for delivery in snapshot.deliveries:
            self.deliveries[delivery.id] = delivery
            self._list_delivery(delivery)
            if delivery.status == "dead":
                self._mark_dead(delivery)
        for delivery in sorted((d for d in snapshot.deliveries if d.status == "pending"),
                               key=lambda delivery: delivery.queue_position):
            self._add_pending(delivery)


_STORES = {"order": "orders", "payment": "payments", "refund": "refunds", "payout": "payouts", "deposit": "deposits",
           "withdrawal": "withdrawals"}


def _older_than(ids_newest_first, starting_after: str):
    """The ids after `starting_after` ("": all): event and delivery ids grow as they are made, so the place of one
    the engine no longer holds (archived: journal/cold.py) is known too."""
    return (item_id for item_id in ids_newest_first if not starting_after or item_id < starting_after)


def _result_valid(result: DeliveryResult) -> bool:
    return (result.outcome in DELIVERY_OUTCOMES and result.attempt >= 1 and 0 <= result.status_code <= MAX_STATUS_CODE
            and 0 <= result.duration_ms <= MAX_DURATION_MS and len(result.error) <= MAX_ERROR_CHARS
            and 0 <= result.attempted_at <= TIMESTAMP_MAX and 0 <= result.next_attempt_at <= TIMESTAMP_MAX)


def _add_to_index(changes: Changes, index: dict[str, dict[str, None]], owner: str, item_id: str) -> None:
    """`item_id` at the end of `owner`'s ids in `index`."""
    ids = peek(index, owner)  # not handed out: the inner dict tracks its own writes
    if ids is None:
        ids = index[owner] = changes.dict(ranked=True)
    ids[item_id] = None


def _remove_from_index(index: dict[str, dict[str, None]], owner: str, item_id: str) -> None:
    ids = index[owner]
    del ids[item_id]
    if not ids:
        del index[owner]
