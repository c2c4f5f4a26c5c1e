"""The notifier: a Ray actor that delivers what the shards queued for merchants and their customers, off the request
path, and records every attempt's outcome back in the engine.

    shard journal ──read by sequence, durable cursor per shard──▶ `delivery.queued` events
        ──one GetDeliveryJobs per batch of entries──▶ Schedule (actors/delivery_schedule.py: in order per object,
                                                       bounded in flight per endpoint)
        ──▶ webhook / IPN: signed POST (actors/webhooks.py)      e-mail: SMTP (actors/mail.py)
        ──▶ outcomes: one RecordDeliveryAttempts per shard per round ──▶ the engine keeps attempts, next try, dead

The engine's deliveries are the durable truth: at start (and whenever the schedule had no room) the pending ones
are loaded with PendingDeliveries; the journal only says what is new. So a notifier killed at any point loses
nothing: what it had not recorded is attempted again (at least once), and a delivery recorded delivered is never
pending again. The retry times are the notifier's (the schedule with ±20 % jitter); the engine keeps them as data.

A shard's follower reads its journal when the shard announces a durable sequence that queued a delivery or moved a
webhook (its announce socket, nng pub/sub: a wake-up only, the cursor decides what is read), and once a second
should an announcement be lost or no commit need one (the rest of the journal is read then, in pages); a
shard without an announce socket is polled every 50 ms. The shard never waits on the notifier: it publishes without
blocking, to whoever listens.

Its counts (deliveries by channel and outcome, the backlog, commit-to-delivery latency) go to Ray metrics and, once
a second, to `<data>/notifier/stats.json`, which the edge's /metrics reads.
"""

import asyncio
import collections
import logging
import os
import pathlib
import random
import time

import msgspec
import ray
from ray.util.metrics import Counter, Gauge

from actors import mail
from actors.invoice_pdf import invoice_pdf, payment_method
from actors.connectors import NAMESPACE, configure_logging
from actors.delivery_schedule import Job, Schedule
from actors.followers import Cursor
from actors.merchant_secrets import MerchantSecrets
from actors.notifier_stats import NotifierStats, stats_path
from actors.runtime import die_with_parent
from actors.webhooks import AttemptResult, RetrySchedule, WebhookSender
from engine.notifications import MAX_DELIVERY_RESULTS, QUEUED, WEBHOOK_MOVED
from engine.queries import MAX_JOBS, DeliveryJob, GetDeliveryJobs, PendingDeliveries
from engine.records import DeliveryResult, RecordDeliveryAttempts
from engine.views import event_body
from journal.auth import load_key
from journal.client import Announcements, EntriesPruned, ShardClient
from journal.store import write_atomically

ACTOR_NAME = "notifier"
ENTRIES_PER_READ = 256  # results alone (no payloads): small entries
IDS_PER_QUERY = MAX_JOBS
PAGE = 256  # pending deliveries loaded per request
MAX_RESULTS_PER_SUBMIT = MAX_DELIVERY_RESULTS
# After an announcement, before reading: under load many commits queue deliveries, and one read then takes many.
WAKE_GATHER_S = 0.01
POLL_S = 0.05  # between reads of a shard's journal with nothing new, for a shard that announces nothing
FALLBACK_POLL_S = 1.0  # the same for a shard whose announcements wake the notifier: they may be lost, or stop
MAX_SLEEP_S = 1.0
RETRY_BACKOFF_S = 0.2
MAX_RETRY_BACKOFF_S = 5.0
STATS_EVERY_S = 1.0
LATENCIES_KEPT = 10_000
RELOAD_BELOW = 0.5  # a schedule that had no room loads again once it is this empty
WHERE = f"the {ACTOR_NAME} actor in the Ray dashboard, metrics ray_paygate_notifier_*; counts in /metrics"

log = logging.getLogger("paygate.actors.notifier")


class NotifierActor:
    """Used as the Ray actor `Notifier`; it starts its loops itself, so a restarted one goes on by itself."""

    def __init__(self, shard_addresses: list[list[str]], key_file: str, data: str, public_url: str,
                 retry_schedule: str, smtp_url: str, production: bool = False, max_jobs: int = 20_000,
                 max_in_flight: int = 256, max_in_flight_per_endpoint: int = 8,
                 announce_addresses: list[str] | None = None) -> None:
        die_with_parent()
        configure_logging()
        folder = pathlib.Path(data)
        key = load_key(key_file, "notifier")
        self.shards = [ShardClient(addresses, key, timeout_ms=5000) for addresses in shard_addresses]
        # Each shard's announcements of what it committed wake its follower ("": that shard's is polled).
        self.announcements = [Announcements(address, key) if address else None
                              for address in announce_addresses or [""] * len(shard_addresses)]
        (folder / "cursors").mkdir(parents=True, exist_ok=True)
        self.cursors = [Cursor(folder / "cursors" / f"notifier-shard-{index}.cursor")
                        for index in range(len(self.shards))]
        self.stats_path = stats_path(folder)
        self.stats_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.public_url = public_url
        self.secrets = MerchantSecrets.of_data_folder(folder)
        self.retries = RetrySchedule.parse(retry_schedule)
        self.schedule = Schedule(max_jobs, max_in_flight, max_in_flight_per_endpoint)
        self.webhooks = WebhookSender(production)
        self.mail = mail.MailSender(smtp_url)
        self.rng = random.Random()
        self.unloaded = [True] * len(self.shards)  # pending deliveries may be in the engine and not here
        self.unrecorded: list[list] = [[] for _ in self.shards]  # DeliveryResults per shard, oldest first
        self.recordable = [asyncio.Event() for _ in self.shards]
        self.wake = asyncio.Event()
        self.attempts: set[asyncio.Task] = set()
        self.stats_ = NotifierStats(pid=os.getpid())
        self.latencies_ms: collections.deque[int] = collections.deque(maxlen=LATENCIES_KEPT)
        self.loaded = asyncio.Event()  # every shard's pending deliveries loaded once (or no room for more)
        self.loaded_shards = 0
        self.metrics = _metrics()
        # Held: the event loop keeps only a weak reference to a task.
        self.tasks = [asyncio.get_running_loop().create_task(self._run())]

    def __repr__(self) -> str:
        delays = ",".join(f"{delay:g}" for delay in self.retries.delays_s)
        return f"Notifier({len(self.shards)} shard(s), retries after {delays} s)"

    async def start(self, timeout_s: float = 30) -> str:
        """Once the pending deliveries are loaded (or `timeout_s` passed): where it stands."""
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        return (f"notifier holding {len(self.schedule)} pending deliveries, at "
                + ", ".join(str(cursor.sequence) for cursor in self.cursors))

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> NotifierStats:
        return self._stats()

    async def _run(self) -> None:
        await self.webhooks.start()
        self.tasks += [asyncio.create_task(self._dispatch()), asyncio.create_task(self._write_stats()),
                       *(asyncio.create_task(self._record(shard)) for shard in range(len(self.shards))),
                       *(asyncio.create_task(self._follow(shard)) for shard in range(len(self.shards)))]

    # Learning of deliveries: the engine's pending list, then the journal

    async def _load(self, shard: int) -> None:
        """Every pending delivery of the shard the schedule has room for, oldest first; tried until the shard
        answers. A cursor not yet written starts where the shard was before the load: nothing older is pending
        without being loaded, so the journal before it need not be read."""
        backoff = Backoff()
        cursor = self.cursors[shard]
        while True:
            try:
                first_start = not cursor.path.exists()
                head = (await self.shards[shard].status()).durable_sequence if first_start else 0
                await self._load_pages(shard)
                if first_start:
                    cursor.advance(head)
                break
            except Exception as error:  # the shard is away or failing over: again, later
                log.warning("loading pending deliveries of shard %d failed: %s: %s", shard, type(error).__name__,
                            error)
                await backoff.wait()
        self.loaded_shards += 1
        if self.loaded_shards == len(self.shards):
            self.loaded.set()

    async def _load_pages(self, shard: int) -> None:
        client, after = self.shards[shard], ""
        while True:
            answer = await client.read(PendingDeliveries(starting_after=after, limit=PAGE))
            unknown = [delivery.id for delivery in answer.records if (shard, delivery.id) not in self.schedule]
            if unknown and not await self._add(shard, unknown):
                return  # no room: loaded again once there is
            if not answer.has_more or not answer.records:
                self.unloaded[shard] = False
                return
            after = answer.records[-1].id

    async def _follow(self, shard: int) -> None:
        # Loaded first: a lane's older deliveries are all in before the journal adds newer ones behind them.
        await self._load(shard)
        backoff = Backoff()
        pruned = False
        while True:
            # Taken before the read: one announced after it wakes the wait below.
            announced = self.announcements[shard].sequence if self.announcements[shard] else 0
            try:
                if pruned:  # the journal no longer holds what the cursor points at: the engine's list does
                    self.cursors[shard].advance((await self.shards[shard].status()).durable_sequence)
                    self.unloaded[shard], pruned = True, False
                if self.unloaded[shard] and len(self.schedule) < RELOAD_BELOW * self.schedule.max_jobs:
                    await self._load_pages(shard)
                read = await self._follow_entries(shard)
                backoff.reset()
            except EntriesPruned:
                pruned = True
                continue
            except Exception as error:  # a shard failing over, a cursor that cannot be written: again, later
                log.warning("following shard %d failed: %s: %s", shard, type(error).__name__, error)
                await backoff.wait()
                continue
            # A short page holding all that was announced leaves nothing to read: no second, empty read.
            if read < ENTRIES_PER_READ and self.cursors[shard].sequence >= announced:
                await self._idle(shard, announced)

    async def _idle(self, shard: int, announced: int) -> None:
        """Until the shard announces what this follower has not read (or, should that be lost, a slow poll's time)."""
        announcements = self.announcements[shard]
        if announcements is None:
            await asyncio.sleep(POLL_S)
        else:
            after = max(announced, self.cursors[shard].sequence)
            await announcements.wait(after, FALLBACK_POLL_S)
            if announcements.sequence > after:
                self.stats_.woken_by_announcement += 1
                await asyncio.sleep(WAKE_GATHER_S)

    async def _follow_entries(self, shard: int) -> int:
        """How many entries were read (and followed)."""
        cursor = self.cursors[shard]
        self.stats_.journal_reads += 1
        entries = await self.shards[shard].read_entries(cursor.sequence + 1, ENTRIES_PER_READ, with_payloads=False)
        if not entries:
            return 0
        events = [event for entry in entries for event in entry.result.events]
        # Before the new ones are added: those are read as the engine has them now, targets moved already.
        self._mark_moved(shard, {event.object_id for event in events if event.kind == WEBHOOK_MOVED})
        queued = [event.object_id for event in events if event.kind == QUEUED]
        unknown = list(dict.fromkeys(delivery_id for delivery_id in queued
                                     if (shard, delivery_id) not in self.schedule))
        # While the schedule has pending deliveries of this shard it could not hold, new ones wait for the next
        # load, which brings them in order behind the older ones.
        if unknown and not self.unloaded[shard] and not await self._add(shard, unknown):
            self.unloaded[shard] = True
        cursor.advance(entries[-1].sequence)
        return len(entries)

    def _mark_moved(self, shard: int, merchant_ids: set[str]) -> None:
        """These merchants' webhook_url changed: their webhook deliveries are read again before their next attempt."""
        if not merchant_ids:
            return
        for job in self.schedule.jobs.values():
            if job.shard == shard and job.channel == "webhook" and job.merchant.id in merchant_ids:
                job.stale = True

    async def _add(self, shard: int, delivery_ids: list[str]) -> bool:
        """Schedule the deliveries (one request for all their jobs) that are still pending; False when the schedule
        ran out of room."""
        chunks = [delivery_ids[start:start + IDS_PER_QUERY] for start in range(0, len(delivery_ids), IDS_PER_QUERY)]
        answers = await self.shards[shard].read_many([GetDeliveryJobs(delivery_ids=chunk) for chunk in chunks])
        for answer in answers:
            for found in answer.jobs:
                job = self._job_of(shard, found)
                if job is None or job.key in self.schedule:
                    continue
                if not self.schedule.add(job):
                    self.stats_.schedule_full += 1
                    return False
        self.wake.set()
        return True

    def _job_of(self, shard: int, found: DeliveryJob) -> Job | None:
        """What the notifier needs to attempt a delivery the engine described, if it is still pending."""
        delivery = found.delivery
        if delivery.status != "pending":
            return None
        payload = email_of(found) if delivery.kind != "event" else event_body(found.event, self.public_url)
        return Job(delivery_id=delivery.id, shard=shard, channel=delivery.channel, target=delivery.target,
                   ordering_key=delivery.ordering_key, attempts=delivery.attempt_count,
                   queued_after_attempts=delivery.queued_after_attempts, next_attempt_at=delivery.next_attempt_at,
                   created_at=delivery.created_at, payload=payload, merchant=found.merchant)

    # Attempts

    async def _dispatch(self) -> None:
        """Starts the attempts that are due, then sleeps until the next is (or something changed)."""
        while True:
            try:
                self._start(self.schedule.take_due(time.time_ns()))
            except Exception:  # a bug in one round must not end the deliveries
                log.exception("starting deliveries failed")
            due = self.schedule.next_due()
            sleep_s = MAX_SLEEP_S if due is None else min(MAX_SLEEP_S, max(0.0, (due - time.time_ns()) / 1e9))
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), sleep_s)
            except asyncio.TimeoutError:
                pass

    def _start(self, jobs: list[Job]) -> None:
        """First attempts go at once; retries, and deliveries whose webhook_url changed, first read their delivery
        again (one request per shard): its merchant's webhook secrets may have been rotated, or its URL changed, while
        it waited."""
        retries: dict[int, list[Job]] = {}
        for job in jobs:
            if job.stale or job.attempts > job.queued_after_attempts:
                retries.setdefault(job.shard, []).append(job)
            else:
                self._spawn(self._attempt(job))
        for shard, waited in retries.items():
            self._spawn(self._refresh_then_attempt(shard, waited))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self.attempts.add(task)
        task.add_done_callback(self.attempts.discard)

    async def _refresh_then_attempt(self, shard: int, jobs: list[Job]) -> None:
        try:
            found = {item.delivery.id: item for item in
                     (await self.shards[shard].read(GetDeliveryJobs(delivery_ids=[job.delivery_id for job in jobs]))).jobs}
        except Exception as error:  # the shard is away: sent as known (its outcome is recorded once it is back)
            log.info("refreshing %d deliveries on shard %d failed: %s", len(jobs), shard, type(error).__name__)
            found = None
        going = []
        for job in jobs:
            current = found.get(job.delivery_id) if found is not None else None
            if found is not None and (current is None or current.delivery.status != "pending"):
                self.schedule.drop(job.key)  # settled meanwhile (a replay, an operator): nothing to send
                self.wake.set()
                continue
            if current is not None:
                job.merchant = current.merchant
                job.attempts = current.delivery.attempt_count
                job.target, job.stale = current.delivery.target, False
            elif job.stale:  # where it goes now is not known: not where it went before, so later
                self.schedule.later(job.key, time.time_ns() + int(MAX_RETRY_BACKOFF_S * 1e9))
                self.wake.set()
                continue
            going.append(self._attempt(job))
        await asyncio.gather(*going)

    async def _attempt(self, job: Job) -> None:
        attempted_at = time.time_ns()
        try:
            if job.channel == "email":
                result = await self.mail.send(job.payload, job.target)
            else:
                header = self.secrets.webhook_header(job.merchant, job.payload, attempted_at // 1_000_000_000)
                result = await self.webhooks.post(job.target, job.payload, header)
        except Exception as error:  # a bug: counted as a failed attempt, never a lost delivery
            log.exception("attempting delivery %s failed", job.delivery_id)
            result = AttemptResult(False, 0, type(error).__name__)
        self.schedule.sent(job)
        self.unrecorded[job.shard].append(self._result(job, attempted_at, result))
        self.recordable[job.shard].set()
        self.wake.set()

    def _result(self, job: Job, attempted_at: int, result: AttemptResult) -> DeliveryResult:
        """The attempt's outcome; a failure's next time from the schedule, counted from when it was last queued."""
        next_attempt_at = 0
        if result.delivered:
            outcome = "delivered"
        elif (delay_s := self.retries.next_delay_s(job.attempts + 1 - job.queued_after_attempts, self.rng)) is None:
            outcome = "dead"
        else:
            outcome = "retry"
            next_attempt_at = time.time_ns() + int(delay_s * 1e9)
        return DeliveryResult(delivery_id=job.delivery_id, attempt=job.attempts + 1, attempted_at=attempted_at,
                              status_code=result.status_code, error=result.error, duration_ms=result.duration_ms,
                              outcome=outcome, next_attempt_at=next_attempt_at)

    # Recording outcomes: one command per shard per round; what a round did not record goes in the next

    async def _record(self, shard: int) -> None:
        """A result the shard has already (a submit whose answer was lost, sent again) changes nothing there."""
        backoff = Backoff()
        while True:
            await self.recordable[shard].wait()
            self.recordable[shard].clear()
            while self.unrecorded[shard]:
                results = self.unrecorded[shard][:MAX_RESULTS_PER_SUBMIT]
                try:
                    reply = await self.shards[shard].submit([RecordDeliveryAttempts(results=results)])
                except Exception as error:  # ShardUnavailable while it restarts: the same results, later
                    log.warning("recording %d delivery outcomes on shard %d failed: %s", len(results), shard,
                                type(error).__name__)
                    await backoff.wait()
                    continue
                backoff.reset()
                del self.unrecorded[shard][:len(results)]
                try:
                    await self._recorded(shard, results, reply)
                except Exception:  # a bug: these deliveries wait for the next start, the others go on
                    log.exception("settling %d recorded outcomes failed", len(results))

    async def _recorded(self, shard: int, results: list[DeliveryResult], reply) -> None:
        outcome = reply.results[0] if reply.status == 0 and reply.results else None
        if outcome is not None and outcome.code == "ok":
            self._settle(shard, results)
        else:  # refused whole: each delivery as the engine has it now decides what is left to do
            log.error("%d delivery outcomes not recorded on shard %d: %s", len(results), shard,
                      getattr(outcome, "code", reply.status))
            await self._resync(shard, [result.delivery_id for result in results])

    async def _resync(self, shard: int, delivery_ids: list[str]) -> None:
        """Deliveries whose outcome the engine did not take: dropped if no longer pending, else attempted again."""
        backoff = Backoff()
        while True:
            try:
                answer = await self.shards[shard].read(GetDeliveryJobs(delivery_ids=delivery_ids))
                break
            except Exception as error:
                log.warning("reading %d deliveries on shard %d failed: %s", len(delivery_ids), shard,
                            type(error).__name__)
                await backoff.wait()
        pending = {found.delivery.id: found.delivery for found in answer.jobs if found.delivery.status == "pending"}
        for delivery_id in delivery_ids:
            job = self.schedule.jobs.get((shard, delivery_id))
            if delivery_id not in pending:
                self.schedule.drop((shard, delivery_id))
            elif job is not None:
                job.attempts = pending[delivery_id].attempt_count
                self.schedule.retry_unrecorded((shard, delivery_id))
        self.wake.set()

    def _settle(self, shard: int, results: list[DeliveryResult]) -> None:
        now_ms = time.time_ns() // 1_000_000
        for result in results:
            job = self.schedule.jobs.get((shard, result.delivery_id))
            channel = job.channel if job is not None else "unknown"  # dropped meanwhile: read again, not pending
            if job is not None and result.outcome == "delivered" and not job.queued_after_attempts:
                self.latencies_ms.append(max(0, now_ms - job.created_at // 1_000_000))  # not a replay's
            key = f"{channel}.{result.outcome}"
            self.stats_.outcomes[key] = self.stats_.outcomes.get(key, 0) + 1
            self.metrics["outcomes"].inc(tags={"channel": channel, "outcome": result.outcome})
            self.schedule.settle((shard, result.delivery_id), result.outcome, result.next_attempt_at)
        self.wake.set()

    # Stats

    def _stats(self) -> NotifierStats:
        stats = self.stats_
        stats.backlog = len(self.schedule)
        stats.unloaded_shards = sum(self.unloaded)
        stats.unrecorded = sum(len(results) for results in self.unrecorded)
        ordered = sorted(self.latencies_ms)
        stats.latency_p50_ms = ordered[len(ordered) // 2] if ordered else 0
        stats.latency_p99_ms = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] if ordered else 0
        stats.delivered_total = sum(count for key, count in stats.outcomes.items() if key.endswith(".delivered"))
        stats.cursors = [cursor.sequence for cursor in self.cursors]
        stats.written_at_ms = time.time_ns() // 1_000_000
        return stats

    async def _write_stats(self) -> None:
        while True:
            try:
                stats = self._stats()
                self.metrics["backlog"].set(stats.backlog)
                write_atomically(self.stats_path, msgspec.json.encode(stats))
            except Exception:  # a full disk: the counts wait for the next second
                log.exception("writing the notifier's stats failed")
            await asyncio.sleep(STATS_EVERY_S)


def email_of(found: DeliveryJob) -> bytes:
    """A receipt (an order paid, its invoice attached) or a refund receipt, composed once; b"" (never sent, so dead
    in the end) when the records do not make one."""
    try:
        return _compose(found)
    except (AttributeError, TypeError, ValueError) as error:  # a record missing, an address no header takes
        log.error("delivery %s: no message can be made (%s: %s)", found.delivery.id, type(error).__name__, error)
        return b""


def _compose(found: DeliveryJob) -> bytes:
    delivery, merchant, order = found.delivery, found.merchant, found.order
    message_key = f"{delivery.id}.{merchant.id}"
    if delivery.kind == "refund_receipt":
        refund = found.refund
        return mail.refund_receipt(message_key, merchant.name, merchant.email, delivery.target, order.name,
                                   refund.amount, refund.currency, found.event.created_at)
    invoice = found.invoice
    return mail.receipt(message_key, merchant.name, merchant.email, delivery.target, invoice.order_name,
                        invoice.amount, invoice.currency, invoice.number, payment_method(invoice),
                        invoice.created_at, invoice_pdf(invoice))


class Backoff:
    """Doubling pauses between tries of something failing, from RETRY_BACKOFF_S up to MAX_RETRY_BACKOFF_S."""

    def __init__(self) -> None:
        self.delay_s = RETRY_BACKOFF_S

    def reset(self) -> None:
        self.delay_s = RETRY_BACKOFF_S

    async def wait(self) -> None:
        await asyncio.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, MAX_RETRY_BACKOFF_S)


def _metrics() -> dict:
    return {"outcomes": Counter("paygate_notifier_outcomes", "delivery attempts recorded, by channel and outcome",
                                ("channel", "outcome")),
            "backlog": Gauge("paygate_notifier_backlog", "pending deliveries the notifier holds")}


# An async actor restarted by Ray after a crash (its __init__ starts it again); calls (start, stats) are few.
Notifier = ray.remote(num_cpus=0, max_concurrency=4, max_restarts=-1)(NotifierActor)


def spawn(shard_addresses: list[list[str]], key_file: str, data: pathlib.Path, public_url: str, retry_schedule: str,
          smtp_url: str, start_timeout_s: float = 60, **options) -> "ray.actor.ActorHandle":
    """The notifier (made now, or the one already running), its pending deliveries loaded.

    Options: production, max_jobs, max_in_flight, max_in_flight_per_endpoint, announce_addresses (each shard's
    announce socket, "" for none).
    """
    handle = Notifier.options(name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True).remote(
        shard_addresses, key_file, str(data), public_url, retry_schedule, smtp_url, **options)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle
