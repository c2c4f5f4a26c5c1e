"""Actors that follow the shards' committed batches, each with a durable cursor per shard.

A follower reads entries by sequence number (nng pub/sub may drop; the journal does not), acts on each, and only
then moves its cursor, which it keeps in a small file written atomically: after a crash it reads again from where
it had finished, so it acts at least once, and the providers drop the repeats (a payout id, a refund id, the same
capture again, a second void).

The provider follower is one. What the shards committed that a provider must hear of goes to that provider's
connector actor (actors/connectors.py), one Ray call per batch of entries and provider; only first-time successes
count (an `ok` outcome, not a replay):

    CapturePayment                               → capture at the payment's acquirer, of what the engine captured
    CancelPayment of a card payment              → void at the acquirer (of a held authorization, or of one
                                                   still on its way: a captured one is refunded whole)
    an authorization that came after the payment
    was cancelled or failed                      → void at the acquirer, the same way
    a held authorization the ledger released     → void at the acquirer (its transfer.expired event)
    CreateRefund                                 → refund at the payment's acquirer, under the refund's id
    CreatePayout                                 → payout at the bank
    CreateWithdrawal                             → payout at the bank, to the customer, under the withdrawal's id

It also watches card payments left open (`processing`, or `requires_action` while the cardholder is at the
3-D Secure page), a card deposit's payment too: a committed CreatePayment (or CreateDeposit) says when the engine
will fail it (deadline_at), and a margin before that the acquirer's connector asks the acquirer and settles the
payment (an authorization whose callback was lost is recorded). The engine's deadline stays the backstop, for a
payment still undecided or when this actor was away: a payment it fails so (a `payment.failed` event no command of
the batch caused) is voided at the acquirer, so a late authorization holds nothing on the card. Everything it keeps
is bounded (max_watched).
"""

import asyncio
import heapq
import logging
import os
import pathlib
import struct
import time

import msgspec
import ray

from actors.connectors import NAMESPACE, actor_name, configure_logging
from actors.psp import (
    CaptureRequest,
    FollowUp,
    PaymentStatusQuery,
    PayoutRequest,
    RefundRequest,
    VoidRequest,
    subject,
)
from actors.runtime import die_with_parent
from engine.batch import applied_outcomes
from engine.payments import OPEN_STATUSES
from engine.queries import FindPayment, GetPaymentRecord
from engine.records import (
    AUTHORIZATION_SUFFIX,
    CancelPayment,
    CapturePayment,
    CreateDeposit,
    CreatePayout,
    CreateRefund,
    CreateWithdrawal,
    inner_command,
    Outcome,
    Payment,
    RecordPspResult,
)
from journal.auth import load_key
from journal.client import ShardClient
from journal.store import write_atomically

log = logging.getLogger("paygate.actors.followers")
CURSOR = struct.Struct(">Q")
POLL_S = 0.2
WATCH_INTERVAL_S = 0.1
ENTRIES_PER_READ = 64
MAX_REQUESTS_PER_CALL = 256
# A connector bounds each request itself (retries × request timeout); this bounds a whole call.
CALL_TIMEOUT_S = 120.0
CALL_ATTEMPTS = 5  # for follow-ups; a stuck payment is asked about once (the engine's deadline follows)
CALL_BACKOFF_S = 0.5
PROCESSING_TIMEOUT = "processing_timeout"


class Cursor:
    """The last sequence number a follower finished with, for one shard."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.sequence = CURSOR.unpack(path.read_bytes())[0] if path.exists() else 0

    def advance(self, sequence: int) -> None:
        write_atomically(self.path, CURSOR.pack(sequence))
        self.sequence = sequence


class Watched(msgspec.Struct):
    """A card payment still open, and when to ask its acquirer about it (engine nanoseconds)."""

    acquirer: str
    merchant_id: str
    payment_id: str
    ask_at: int
    deadline_at: int
    # Asked once already: kept until the payment is settled, never asked again.
    asked: bool = False


class _Stats(msgspec.Struct):
    follow_ups: int = 0  # requests handed to connectors
    undelivered: int = 0  # requests no connector took after CALL_ATTEMPTS: logged for an operator
    not_watched: int = 0  # open payments past max_watched, left to the engine's deadline
    stuck_asked: int = 0  # stuck payments handed to their acquirer's connector to settle
    stuck_unasked: int = 0  # ...whose connector could not be reached (the engine's deadline settles them)
    timed_out: int = 0  # card payments the engine failed at their deadline: voided at the acquirer


class ProviderFollowerActor:
    """Sends what the shards committed to the providers' connectors, and has stuck card payments settled."""

    def __init__(self, shard_addresses: list[list[str]], key_file: str, cursor_folder: str, providers: list[str],
                 payout_provider: str = "bank", status_query_margin_s: float = 5.0,
                 max_watched: int = 100_000) -> None:
        die_with_parent()
        configure_logging()
        self.providers = set(providers)
        self.payout_provider = payout_provider
        self.margin_ns = int(status_query_margin_s * 1e9)
        self.max_watched = max_watched
        key = load_key(key_file, "provider follower")
        self.shards = [ShardClient(addresses, key, timeout_ms=5000) for addresses in shard_addresses]
        folder = pathlib.Path(cursor_folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.cursors = [Cursor(folder / f"providers-shard-{index}.cursor") for index in range(len(self.shards))]
        self.watched: dict[str, Watched] = {}
        self.asking_order: list[tuple[int, str]] = []  # (ask_at, payment id), a heap; stale entries are skipped
        self.handles: dict[str, ray.actor.ActorHandle] = {}
        self.stats_ = _Stats()
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> str:
        if not self.tasks:
            self.tasks = [asyncio.create_task(self._follow_all()), asyncio.create_task(self._watch())]
        return "provider follower at " + ", ".join(str(cursor.sequence) for cursor in self.cursors)

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> dict:
        return {**msgspec.structs.asdict(self.stats_), "watching": len(self.watched),
                "cursors": [cursor.sequence for cursor in self.cursors]}

    # Following the journal

    async def _follow_all(self) -> None:
        while True:
            busy = False
            try:
                for shard, cursor in zip(self.shards, self.cursors):
                    busy |= await self._follow(shard, cursor)
            except Exception:  # a cursor that cannot be written, a bug: this round again, later
                log.exception("following the journal failed")
            if not busy:
                await asyncio.sleep(POLL_S)

    async def _follow(self, shard: ShardClient, cursor: Cursor) -> bool:
        try:
            entries = await shard.read_entries(cursor.sequence + 1, ENTRIES_PER_READ, with_ledger_items=False)
            requests = [request for entry in entries for request in await self._requests_of(shard, entry)]
        except Exception as error:  # a shard failing over: read again on the next round
            log.warning("reading committed entries failed: %s: %s", type(error).__name__, error)
            return False
        if not entries:
            return False
        await self._dispatch(requests)
        cursor.advance(entries[-1].sequence)
        return True

    async def _requests_of(self, shard: ShardClient, entry) -> list[tuple[str, FollowUp]]:
        """What one committed batch asks of the providers, as (provider, request), in the batch's order."""
        found = []
        commanded = set()
        for command, result in applied_outcomes(entry.payload, entry.result)[1]:
            if result.replayed:
                continue
            inner = inner_command(command)
            if result.code == "ok":
                commanded.add(getattr(result.record, "id", ""))
                found.append(await self._request_of(shard, inner, result.record))
            elif _late_authorization(inner, result):
                found.append((result.record.acquirer, _void(result.record)))
        found += await self._voids_of(shard, entry.result.events, commanded)
        return [item for item in found if item is not None and item[0] in self.providers]

    async def _request_of(self, shard: ShardClient, command, record) -> tuple[str, FollowUp] | None:
        """What a command that succeeded asks of a provider, if anything; a payment's record also updates the watch."""
        if type(record) is Payment:
            self._watch_payment(record)
        kind = type(command)
        if kind is CreateDeposit and record.method == "card":  # its own payment is watched as any card payment
            payment = (await shard.read(FindPayment(record.payment_id))).record
            if payment is not None:
                self._watch_payment(payment)
            return None
        if kind is CapturePayment:
            return record.acquirer, CaptureRequest(merchant_id=record.merchant_id, payment_id=record.id,
                                                   amount=record.amount_captured, currency=record.currency,
                                                   psp_reference=record.psp_reference)
        if kind is CancelPayment and record.method == "card":  # held, or still on its way: either is dropped
            return record.acquirer, _void(record)
        if kind is CreateRefund:
            payment = await _payment(shard, record.merchant_id, record.payment_id)
            if payment is None:  # no longer in the shard's memory: nobody left to tell
                log.error("refund %s of %s not sent: the payment is gone", record.id, record.payment_id)
                return None
            return payment.acquirer, RefundRequest(merchant_id=record.merchant_id, payment_id=record.payment_id,
                                                   refund_id=record.id, amount=record.amount,
                                                   currency=record.currency, psp_reference=payment.psp_reference)
        if kind is CreatePayout or kind is CreateWithdrawal:
            return self.payout_provider, PayoutRequest(merchant_id=record.merchant_id, payout_id=record.id,
                                                       amount=record.amount, currency=record.currency)
        return None

    async def _voids_of(self, shard: ShardClient, events: list, commanded: set[str]) -> list[tuple[str, FollowUp]]:
        """The voids a batch's events ask for, with every payment they name read in one request:

        - an authorization hold the ledger released (only a payment's own: a ledger client names its transfers
          as it likes);
        - a card payment the engine failed at its deadline (a failure no command of the batch caused): its
          acquirer may still authorize it.
        """
        checks = []  # (payment id, what the payment must show for a void)
        for event in events:
            if event.kind == "transfer.expired" and event.object_id.endswith(AUTHORIZATION_SUFFIX):
                payment_id = event.object_id.partition(":")[2].removesuffix(AUTHORIZATION_SUFFIX)
                checks.append((payment_id, _released_by(event.object_id)))
            elif event.kind == "payment.failed" and event.object_id not in commanded:
                self.watched.pop(event.object_id, None)
                checks.append((event.object_id, _timed_out))
        if not checks:
            return []
        answers = await shard.read_many([FindPayment(payment_id) for payment_id, _ in checks])
        voids = []
        for (_, check), answer in zip(checks, answers):
            payment = answer.record
            if payment is None or payment.acquirer not in self.providers or not check(payment):
                continue
            if check is _timed_out:
                self.stats_.timed_out += 1
            voids.append((payment.acquirer, _void(payment)))
        return voids

    async def _dispatch(self, requests: list[tuple[str, FollowUp]]) -> None:
        by_provider: dict[str, list[FollowUp]] = {}
        for provider, request in requests:
            by_provider.setdefault(provider, []).append(request)
        await asyncio.gather(*(self._send(provider, items) for provider, items in by_provider.items()))

    async def _send(self, provider: str, requests: list[FollowUp]) -> None:
        # One call after the other: a payment's capture reaches the acquirer before its refund.
        for start in range(0, len(requests), MAX_REQUESTS_PER_CALL):
            part = requests[start:start + MAX_REQUESTS_PER_CALL]
            self.stats_.follow_ups += len(part)
            if not await self._call(provider, "follow_up", part, CALL_ATTEMPTS):
                self.stats_.undelivered += len(part)
                for request in part:
                    log.error("%s for %s (merchant %s) not delivered to %s: a person must look",
                              request.__struct_config__.tag, subject(request), request.merchant_id, provider)

    async def _call(self, provider: str, method: str, items: list, attempts: int) -> bool:
        """One call to the provider's connector actor, tried `attempts` times; whether it answered."""
        problem = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(CALL_BACKOFF_S * 2 ** (attempt - 1))
            try:
                handle = self.handles.get(provider) or ray.get_actor(actor_name(provider), namespace=NAMESPACE)
                self.handles[provider] = handle
                reference = getattr(handle, method).remote(items)
                await asyncio.wait_for(asyncio.wrap_future(reference.future()), CALL_TIMEOUT_S)
                return True
            except Exception as error:  # no such actor, the actor died, the call timed out
                self.handles.pop(provider, None)
                problem = type(error).__name__
        log.warning("connector %s did not take %d items (%s): %s", provider, len(items), method, problem)
        return False

    # Stuck payments

    def _watch_payment(self, payment: Payment) -> None:
        """Watch a card payment while it is open; stop once a committed command settled it."""
        if payment.status not in OPEN_STATUSES:
            self.watched.pop(payment.id, None)
            return
        if (payment.method != "card" or not payment.deadline_at or payment.acquirer not in self.providers
                or payment.id in self.watched or payment.deadline_at <= time.time_ns()):
            return
        if len(self.watched) >= self.max_watched:
            self.stats_.not_watched += 1
            return
        # At most a quarter of its time is cut off the acquirer's, however short the processing timeout.
        margin = min(self.margin_ns, (payment.deadline_at - payment.created_at) // 4)
        watched = Watched(payment.acquirer, payment.merchant_id, payment.id, payment.deadline_at - margin,
                          payment.deadline_at)
        self.watched[payment.id] = watched
        if len(self.asking_order) >= 2 * self.max_watched:  # mostly payments settled since: drop those
            self.asking_order = [(item.ask_at, item.payment_id) for item in self.watched.values() if not item.asked]
            heapq.heapify(self.asking_order)
        else:
            heapq.heappush(self.asking_order, (watched.ask_at, payment.id))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                while due := self._due(time.time_ns()):
                    await self._settle(due)
            except Exception:  # one bad round must not end the watch
                log.exception("settling stuck payments failed")

    def _due(self, now: int) -> list[Watched]:
        """Watched payments whose time to ask has come (at most one call's worth), no longer watched."""
        due = []
        while self.asking_order and self.asking_order[0][0] <= now and len(due) < MAX_REQUESTS_PER_CALL:
            ask_at, payment_id = heapq.heappop(self.asking_order)
            watched = self.watched.get(payment_id)
            if watched is None or watched.ask_at != ask_at or watched.asked:
                continue
            watched.asked = True
            if watched.deadline_at > now:  # past it, the engine has failed it already
                due.append(watched)
        return due

    async def _settle(self, due: list[Watched]) -> None:
        by_acquirer: dict[str, list[PaymentStatusQuery]] = {}
        for watched in due:
            by_acquirer.setdefault(watched.acquirer, []).append(
                PaymentStatusQuery(merchant_id=watched.merchant_id, payment_id=watched.payment_id))
        answered = await asyncio.gather(*(self._call(acquirer, "settle_stuck", queries, 1)
                                          for acquirer, queries in by_acquirer.items()))
        for queries, ok in zip(by_acquirer.values(), answered):
            if ok:
                self.stats_.stuck_asked += len(queries)
            else:
                self.stats_.stuck_unasked += len(queries)


async def _payment(shard: ShardClient, merchant_id: str, payment_id: str) -> Payment | None:
    return (await shard.read(GetPaymentRecord(merchant_id, "payment", payment_id))).record


def _released_by(transfer_id: str):
    return lambda payment: payment.authorization_id == transfer_id and payment.status == "cancelled"


def _timed_out(payment: Payment) -> bool:
    return payment.method == "card" and payment.failure_code == PROCESSING_TIMEOUT


def _late_authorization(command, outcome: Outcome) -> bool:
    """An acquirer's authorization of a card payment the gateway had already cancelled or failed: money held (or
    taken) for nothing, to be given back."""
    return (type(command) is RecordPspResult and command.result == "authorized" and outcome.code == "payment_not_open"
            and outcome.record.method == "card" and outcome.record.status in ("cancelled", "failed"))


def _void(payment: Payment) -> VoidRequest:
    return VoidRequest(merchant_id=payment.merchant_id, payment_id=payment.id, psp_reference=payment.psp_reference)


# An async actor: its loop runs the following and the watching; calls (stats) are few. It needs no CPU slot.
ProviderFollower = ray.remote(num_cpus=0, max_concurrency=4)(ProviderFollowerActor)


def spawn(shard_addresses: list[list[str]], key_file: str, cursor_folder: pathlib.Path, providers: list[str],
          start_timeout_s: float = 60, **options) -> "ray.actor.ActorHandle":
    """The provider follower for the connectors named `providers` (made now, or the one already running), started.

    Options: payout_provider, status_query_margin_s, max_watched.
    """
    handle = ProviderFollower.options(name="provider-follower", namespace=NAMESPACE, get_if_exists=True).remote(
        shard_addresses, key_file, str(cursor_folder), providers, **options)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle
