"""Risk: rules pre-computed from the shards' committed payments into a table that the edge checks locally.

    shards' journals ──read by sequence, a cursor per shard──▶ Risk actor ──<data>/risk/table.msgpack──▶ edge workers

The actor counts card and wallet payment attempts per card fingerprint, payer IP, customer and email, at each
merchant, in sliding windows (BUCKETS buckets per window, a bounded number of keys, the least recently seen
forgotten first); keeps the block list as the shards committed it; and, at most every PUBLISH_INTERVAL_S and only
when something changed, publishes the keys a payment must not use now (each with its reason and expiry) and the
amount limits per merchant tier and currency, as one file replaced atomically. The edge never calls the actor.

Restarts: the counts are saved with the cursors they are complete up to, in one file written atomically (at most
every SAVE_INTERVAL_S), so a restarted actor resumes from there and counts each attempt once. Rebuilding from the
journal instead would mean reading back the longest window of payments (an hour), which may have been pruned.
Without a saved state the actor counts from the shards' current sequence and reads the block list from its shard.

Ray is used only to place and hold the actor: may import engine types, the journal client and ray; never the edge.
"""

import asyncio
import collections
import logging
import os
import pathlib
import time
from typing import Annotated

import msgspec
import ray
from msgspec import Meta

from actors.risk_table import BLOCKLIST_OWNER, TABLE_FILE, Flag, RiskKind, RiskTable, risk_attributes, risk_key, \
    table_encoder
from actors.runtime import NAMESPACE, die_with_parent
from engine.batch import BatchResult, Command, applied_outcomes
from engine.currencies import CURRENCY_EXPONENTS
from engine.queries import ListBlocklist
from engine.records import AddToBlocklist, BlocklistEntry, CreateDeposit, CreatePayment, Deposit, inner_command, \
    Outcome, Payment, PayOrderFromWallet, RemoveFromBlocklist
from engine.types import NANOSECONDS_PER_SECOND
from journal.auth import load_key
from journal.client import ShardClient, ShardMap
from journal.store import write_atomically

log = logging.getLogger("paygate.actors.risk")
BUCKETS = 10  # per window: a count slides by a tenth of its window
POLL_S = 0.1
PUBLISH_INTERVAL_S = 0.2
SAVE_INTERVAL_S = 1.0
ENTRIES_PER_READ = 256
BLOCKLIST_PAGE = 1000
SHARD_TIMEOUT_MS = 5000
STATE_FILE = "state.msgpack"
LABELS = {"card_fingerprint": "card", "ip": "IP address", "customer": "customer", "email": "email address"}


# The rules


class VelocityLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    attempts: Annotated[int, Meta(ge=1)]  # at most this many in any window
    window_s: Annotated[int, Meta(ge=BUCKETS, le=7 * 86400)]


# The basic tier's limit in US dollars; the other tiers' are multiples, and other currencies about as much.
BASIC_AMOUNT_LIMIT_USD = 1000
TIER_MULTIPLES = {"basic": 1, "standard": 5, "premium": 25}
# About how many units of each accepted currency a US dollar buys, rounded: limits need the size, not the rate.
UNITS_PER_USD = {
    "usd": 1, "eur": 1, "gbp": 0.8, "vnd": 25_000, "jpy": 150, "krw": 1_400, "sgd": 1.35, "thb": 35, "idr": 16_000,
    "myr": 4.5, "php": 56, "aud": 1.5, "cad": 1.4, "chf": 0.9, "cny": 7.2, "hkd": 7.8, "inr": 83, "nzd": 1.65,
    "sek": 10.5, "nok": 10.5, "dkk": 6.9, "pln": 4, "czk": 23, "huf": 360, "brl": 5.5, "mxn": 18, "zar": 18.5,
    "aed": 3.67, "twd": 32, "try": 34,
}
if UNITS_PER_USD.keys() != CURRENCY_EXPONENTS.keys():
    raise ImportError("the risk rules need a rate for every accepted currency (engine/currencies.py)")
# The simulated acquirer's published test numbers (its documented outcomes hold however often they are used).
SIMULATED_ACQUIRER_TEST_CARDS = ("4242424242424242", "4000000000000002", "4000000000009995", "4000000000003220",
                                 "4000000000000119", "4000000000000036")


def _default_velocity() -> dict:
    return {"card_fingerprint": VelocityLimit(5, 600), "ip": VelocityLimit(20, 600),
            "customer": VelocityLimit(10, 3600), "email": VelocityLimit(10, 3600)}


def default_amount_limits() -> dict[str, dict[str, int]]:
    """tier -> currency -> the largest amount in minor units, for every accepted currency."""
    return {tier: {currency: round(BASIC_AMOUNT_LIMIT_USD * multiple * rate * 10 ** CURRENCY_EXPONENTS[currency])
                   for currency, rate in UNITS_PER_USD.items()}
            for tier, multiple in TIER_MULTIPLES.items()}


class RiskRules(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What `paygate serve --risk-rules FILE` reads (JSON); a field left out keeps its default."""

    # Per kind of attribute, counted at each merchant; a kind left out is not counted.
    velocity: dict[RiskKind, VelocityLimit] = msgspec.field(default_factory=_default_velocity)
    # merchant tier -> currency -> the largest amount a payment may have; a tier or currency left out keeps its
    # default, so every accepted currency has a limit.
    amount_limits: dict[str, dict[Annotated[str, Meta(pattern=r"^[a-z]{3}\Z")], Annotated[int, Meta(ge=1)]]] = \
        msgspec.field(default_factory=default_amount_limits)
    # Keys counted per kind; past it the least recently seen is forgotten.
    max_keys: Annotated[int, Meta(ge=1, le=10_000_000)] = 50_000
    # Card numbers whose attempts are not counted (a test acquirer's published numbers; the block list still holds).
    # `paygate serve --production` exempts none.
    test_cards: Annotated[list[Annotated[str, Meta(pattern=r"^[0-9]{12,19}\Z")]], Meta(max_length=1000)] = \
        msgspec.field(default_factory=lambda: list(SIMULATED_ACQUIRER_TEST_CARDS))

    def __post_init__(self) -> None:
        for tier, limits in default_amount_limits().items():
            self.amount_limits[tier] = limits | self.amount_limits.get(tier, {})


def load_rules(path: str | None) -> RiskRules:
    """The rules in a JSON file (the defaults without one); for the command line, so a bad file ends it clearly."""
    if not path:
        return RiskRules()
    try:
        return msgspec.json.decode(pathlib.Path(path).read_bytes(), type=RiskRules)
    except (OSError, msgspec.DecodeError) as error:
        raise SystemExit(f"--risk-rules {path}: {error}") from None


# Counting (pure: time comes in as data)


class Velocity:
    """Attempts per key of one kind in a sliding window, and the keys that have reached their limit."""

    def __init__(self, kind: str, limit: VelocityLimit, max_keys: int) -> None:
        self.attempts = limit.attempts
        self.bucket_ns = limit.window_s * NANOSECONDS_PER_SECOND // BUCKETS
        self.max_keys = max_keys
        self.reason = f"at most {limit.attempts} payment attempts in {limit.window_s} s for this {LABELS[kind]}"
        # key -> [[bucket index, attempts], ...] oldest first; keys least recently hit first
        self.counts: collections.OrderedDict[str, list[list[int]]] = collections.OrderedDict()
        # key -> when its count falls below the limit if no attempt follows (nanoseconds)
        self.over: dict[str, int] = {}

    def hit(self, key: str, timestamp: int) -> bool:
        """Count one attempt; whether the key's flag changed."""
        index = timestamp // self.bucket_ns
        buckets = self.counts.get(key)
        if buckets is None:
            buckets = self.counts[key] = []
            if len(self.counts) > self.max_keys:
                self.over.pop(self.counts.popitem(last=False)[0], None)
        else:
            self.counts.move_to_end(key)
        while buckets and buckets[0][0] <= index - BUCKETS:
            del buckets[0]
        if buckets and buckets[-1][0] >= index:  # this bucket, or a clock a little behind: the newest
            buckets[-1][1] += 1
        else:
            buckets.append([index, 1])
        return self._flag(key, self._expiry(buckets))

    def _expiry(self, buckets: list[list[int]]) -> int:
        """When the count falls below the limit if no attempt follows; 0 if it is below already."""
        excess = sum(count for _, count in buckets) - self.attempts + 1  # attempts that must leave the window
        for index, count in buckets:
            if excess <= 0:
                break
            excess -= count
            if excess <= 0:  # below the limit once this bucket leaves the window
                return (index + BUCKETS) * self.bucket_ns
        return 0

    def _flag(self, key: str, expires_at: int) -> bool:
        if self.over.get(key, 0) == expires_at:
            return False
        if expires_at:
            self.over[key] = expires_at
        else:
            del self.over[key]
        return True

    def expire(self, now: int) -> bool:
        """Drop the flags that have run out; whether any did."""
        expired = [key for key, expires_at in self.over.items() if expires_at <= now]
        for key in expired:
            del self.over[key]
        return bool(expired)

    def forget_idle(self, now: int) -> None:
        """Keys with no attempt left in the window (the least recently hit come first, so stop at a live one)."""
        oldest_live = now // self.bucket_ns - BUCKETS + 1
        while self.counts:
            key, buckets = next(iter(self.counts.items()))
            if buckets[-1][0] >= oldest_live:
                return
            del self.counts[key]

    def restore(self, counts: list[tuple[str, list[list[int]]]], now: int) -> None:
        for key, buckets in counts[-self.max_keys:]:
            self.counts[key] = buckets
            expires_at = self._expiry(buckets)
            if expires_at > now:
                self.over[key] = expires_at


class SavedWindow(msgspec.Struct, array_like=True):
    kind: str
    bucket_ns: int
    counts: list[tuple[str, list[list[int]]]]  # least recently hit first


class SavedState(msgspec.Struct, array_like=True):
    cursors: list[int]  # per shard: the last sequence these counts include
    version: int
    windows: list[SavedWindow]
    blocklist: list[BlocklistEntry]


state_encoder = msgspec.msgpack.Encoder()
state_decoder = msgspec.msgpack.Decoder(SavedState)


def block_reason(entry: BlocklistEntry) -> str:
    return f"{LABELS[entry.kind]} on the block list" + (f": {entry.reason}" if entry.reason else "")


def worth_decoding(result: BatchResult) -> bool:
    """Whether a batch may have created a payment (a deposit's too) or changed the block list (most batches of
    transfers cannot)."""
    return any(type(outcome) is Outcome and type(outcome.record) in (Payment, Deposit, BlocklistEntry)
               for outcome in result.results)


class RiskState:
    """The counts and the block list, fed committed batches in order; `changed` says the table is out of date."""

    def __init__(self, rules: RiskRules) -> None:
        self.rules = rules
        self.velocities = {kind: Velocity(kind, limit, rules.max_keys) for kind, limit in rules.velocity.items()}
        self.blocklist: dict[str, BlocklistEntry] = {}
        self.changed = True

    def apply(self, timestamp: int, outcomes: list[tuple[Command, Outcome]]) -> None:
        """Count a committed batch's commerce commands (engine/batch.py's applied_outcomes)."""
        for command, outcome in outcomes:
            if outcome.code != "ok" or outcome.replayed:
                continue  # refused, or an idempotent replay of what was counted the first time
            inner = inner_command(command)
            kind = type(inner)
            if kind is CreatePayment or kind is PayOrderFromWallet:
                self.count(outcome.record, timestamp)
            elif kind is CreateDeposit and inner.deposit.method == "card":  # a card attempt like any other
                self.count(inner.payment.payment, timestamp)
            elif kind is AddToBlocklist:
                self.blocklist[outcome.record.id] = outcome.record
                self.changed = True
            elif kind is RemoveFromBlocklist:
                self.changed |= self.blocklist.pop(outcome.record.id, None) is not None

    def count(self, payment: Payment, timestamp: int) -> None:
        for kind, value in risk_attributes(payment):
            velocity = self.velocities.get(kind)
            if velocity is not None:
                self.changed |= velocity.hit(risk_key(kind, value, payment.merchant_id), timestamp)

    def expire(self, now: int) -> None:
        for velocity in self.velocities.values():
            self.changed |= velocity.expire(now)

    def table(self, version: int, now: int) -> RiskTable:
        flags = {key: Flag(velocity.reason, expires_at)
                 for velocity in self.velocities.values() for key, expires_at in velocity.over.items()}
        # A block outlasts any count.
        flags.update((risk_key(entry.kind, entry.value, entry.merchant_id), Flag(block_reason(entry)))
                     for entry in self.blocklist.values())
        return RiskTable(version=version, published_at=now, flags=flags, amount_limits=self.rules.amount_limits)

    def saved(self, cursors: list[int], version: int, now: int) -> SavedState:
        """What to save, once idle keys are forgotten."""
        for velocity in self.velocities.values():
            velocity.forget_idle(now)
        windows = [SavedWindow(kind, velocity.bucket_ns, list(velocity.counts.items()))
                   for kind, velocity in self.velocities.items()]
        return SavedState(list(cursors), version, windows, list(self.blocklist.values()))

    def restore(self, saved: SavedState, now: int) -> None:
        """Counts of a window whose bucket size changed with the rules are dropped rather than misread."""
        for window in saved.windows:
            velocity = self.velocities.get(window.kind)
            if velocity is not None and velocity.bucket_ns == window.bucket_ns:
                velocity.restore(window.counts, now)
        self.blocklist = {entry.id: entry for entry in saved.blocklist}
        self.changed = True


# The actor


class RiskActor:
    """Follows every shard's committed batches and publishes the risk table. Used as the Ray actor `Risk`; the class
    is importable under its own name, undecorated, so Ray pickles it by reference."""

    def __init__(self, shard_addresses: list[list[str]], key_file: str, folder: str, rules: RiskRules) -> None:
        die_with_parent()
        key = load_key(key_file, "risk")
        self.shards = [ShardClient(addresses, key, timeout_ms=SHARD_TIMEOUT_MS) for addresses in shard_addresses]
        self.blocklist_shard = self.shards[ShardMap(len(self.shards)).shard_for(BLOCKLIST_OWNER)]
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state = RiskState(rules)
        self.cursors = [0] * len(self.shards)
        self.version = 0
        self.unsaved = False
        self.checked_at = self.saved_at = 0.0  # time.monotonic()
        self.task: asyncio.Task | None = None

    async def start(self) -> str:
        """Resume, publish a first table, then follow the shards in the background. Starting twice is harmless."""
        if self.task is None:
            await self._resume()
            self._publish(time.time_ns())
            self.task = asyncio.get_running_loop().create_task(self._run())
        return "risk rules following shards from " + ", ".join(str(cursor) for cursor in self.cursors)

    def pid(self) -> int:
        return os.getpid()

    async def _resume(self) -> None:
        saved = self._load()
        if saved is not None:
            self.cursors, self.version = saved.cursors, saved.version
            self.state.restore(saved, time.time_ns())
            return
        self.cursors = [(await shard.status()).sequence for shard in self.shards]
        # Read after the cursors: a change in between is applied twice, which changes nothing more.
        self.state.blocklist = {entry.id: entry for entry in await self._read_blocklist()}
        self.unsaved = True

    def _load(self) -> SavedState | None:
        path = self.folder / STATE_FILE
        try:
            saved = state_decoder.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as error:
            log.warning("risk state %s unreadable (%s): counting afresh", path, error)
            return None
        if len(saved.cursors) != len(self.shards):
            log.warning("risk state %s is for %d shards, not %d: counting afresh", path, len(saved.cursors),
                        len(self.shards))
            return None
        return saved

    async def _read_blocklist(self) -> list[BlocklistEntry]:
        entries: list[BlocklistEntry] = []
        while True:
            after = entries[-1].id if entries else ""
            answer = await self.blocklist_shard.read(ListBlocklist(limit=BLOCKLIST_PAGE, starting_after=after))
            entries += answer.records
            if not answer.has_more or not answer.records:
                return entries

    async def _run(self) -> None:
        while True:
            try:
                busy = await self._follow()
                self._housekeep()
            except Exception:  # the table must keep coming: say what broke, and go on
                log.exception("a risk round failed")
                busy = False
            if not busy:
                await asyncio.sleep(POLL_S)

    async def _follow(self) -> bool:
        """One read per shard; whether any had new entries."""
        busy = False
        for index, shard in enumerate(self.shards):
            try:
                entries = await shard.read_entries(self.cursors[index] + 1, ENTRIES_PER_READ,
                                                   with_ledger_items=False)
            except Exception as error:  # a shard failing over: again next round
                log.warning("reading shard %d's committed entries failed: %s", index, error)
                continue
            for entry in entries:
                if worth_decoding(entry.result):
                    self.state.apply(*applied_outcomes(entry.payload, entry.result))
                self.cursors[index] = entry.sequence
            busy |= bool(entries)
        self.unsaved |= busy
        return busy

    def _housekeep(self) -> None:
        """Publish (flags that ran out count as a change) and save, each at most once per its interval."""
        clock = time.monotonic()
        if clock - self.checked_at >= PUBLISH_INTERVAL_S:
            self.checked_at = clock
            now = time.time_ns()
            self.state.expire(now)
            if self.state.changed:
                self._publish(now)
        if self.unsaved and clock - self.saved_at >= SAVE_INTERVAL_S:
            self._save(time.time_ns())

    def _publish(self, now: int) -> None:
        self.version += 1
        write_atomically(self.folder / TABLE_FILE, table_encoder.encode(self.state.table(self.version, now)))
        self.state.changed = False

    def _save(self, now: int) -> None:
        saved = self.state.saved(self.cursors, self.version, now)
        write_atomically(self.folder / STATE_FILE, state_encoder.encode(saved))
        self.unsaved = False
        self.saved_at = time.monotonic()


Risk = ray.remote(num_cpus=0, max_concurrency=4)(RiskActor)


def spawn(shard_addresses: list[list[str]], key_file: str, folder: pathlib.Path, rules: RiskRules, start_timeout_s: float = 60):
    """The risk actor (made now, or the one already running under its name), started; tied to the driver (not
    detached), so it stops with `paygate serve`. Blocks until its first table is out: call it at start-up."""
    handle = Risk.options(name="risk", namespace=NAMESPACE, get_if_exists=True).remote(
        shard_addresses, key_file, str(folder), rules)
    ray.get(handle.start.remote(), timeout=start_timeout_s)
    return handle
