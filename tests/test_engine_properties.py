"""Property tests of the balance engine: invariants, determinism, snapshots, retries, a model.

Hypothesis draws *plans*: batches of plain field dicts. Every engine gets its
own Account/Transfer structs built from those dicts, because the engine takes
ownership of the structs it is given and completes them in place.

Run more examples with HYPOTHESIS_PROFILE=slow.
"""

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine import Account, AccountFlag, Batch, CreateAccounts, CreateTransfers, Engine, Transfer, TransferFlag
from engine.codes import ACCOUNT_CODES, TRANSFER_CODES, TRANSIENT_TRANSFER_CODES
from engine.types import AMOUNT_MAX, NANOSECONDS_PER_SECOND, TIMESTAMP_MAX, Event, PendingState
from ledger_helpers import state_without_failed_ids

settings.register_profile("fast", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

F = TransferFlag
LINKED = F.LINKED  # the same bit for accounts and transfers
SECOND = NANOSECONDS_PER_SECOND

# The last account id is left out of the accounts that open a run.
ACCOUNT_IDS = ("a0", "a1", "a2", "a3", "a4", "a5")
OPENED_ACCOUNT_IDS = ACCOUNT_IDS[:-1]
TRANSFER_IDS = tuple(f"t{number}" for number in range(24))
CURRENCIES = ("EUR", "USD", "GBP")
ACCOUNT_CURRENCIES = ("EUR", "EUR", "EUR", "USD", "USD", "GBP")
# Both limits at once is invalid: kept, rarely, for the validation path.
LIMIT_FLAGS = (0, 0, 0, 0, AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS, AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS, AccountFlag.LIMITS)
CHAIN_LENGTHS = (1, 1, 1, 1, 2, 3)
# The largest timeout that still fits at a time below 0.86 s: it overflows later on.
EDGE_TIMEOUT_S = TIMESTAMP_MAX // SECOND
TIMEOUTS_S = (0, 1, 5, 60) * 2 + (EDGE_TIMEOUT_S,)
TIME_STEPS_NS = (0, 1, SECOND // 2, SECOND, 2 * SECOND, 6 * SECOND, 61 * SECOND)


# Result codes, by what a retry of the same command may answer.


def _codes_between(first: str, last: str) -> frozenset[str]:
    return frozenset(TRANSFER_CODES[TRANSFER_CODES.index(first) : TRANSFER_CODES.index(last) + 1])


CHAIN_CODES = frozenset({"linked_event_failed", "linked_event_chain_open"})
# The transfer's own fields, checked before any state is read.
VALIDATION_CODES = _codes_between("id_must_not_be_empty", "timestamp_must_be_zero")
EXISTS_CODES = _codes_between("exists_with_different_flags", "exists")
TRANSIENT_CODES = frozenset(TRANSIENT_TRANSFER_CODES)
# Failures on state that never changes back (account currencies, a stored
# pending transfer, a finished one): not spent, and a retry fails alike.
PERMANENT_STATE_CODES = (
    frozenset(TRANSFER_CODES) - {"ok", "id_already_failed"} - CHAIN_CODES - VALIDATION_CODES - EXISTS_CODES - TRANSIENT_CODES
)
# What a transfer that once succeeded inside a rolled-back chain may answer when
# it is tried again against today's state.
TRANSFER_FRESH_FAILURES = (
    EXISTS_CODES
    | TRANSIENT_CODES
    | {"id_already_failed", "pending_transfer_already_posted", "pending_transfer_already_voided", "pending_transfer_expired"}
)
ACCOUNT_EXISTS_CODES = frozenset(code for code in ACCOUNT_CODES if code.startswith("exists"))


def transfer_retry_codes(original: str) -> frozenset[str]:
    """What a retry answers for a transfer whose own attempt answered `original`."""
    if original == "ok":
        return frozenset({"exists"})
    if original in TRANSIENT_CODES:
        return frozenset({"id_already_failed"})
    if original in PERMANENT_STATE_CODES:
        # The id was not spent: another transfer with this id may since have
        # been stored or have failed for a transient reason.
        return frozenset({original, "id_already_failed"}) | (EXISTS_CODES - {"exists"})
    return frozenset({original})


def account_retry_codes(original: str) -> frozenset[str]:
    return frozenset({"exists"}) if original == "ok" else frozenset({original})


# Plans: what hypothesis draws, turned into fresh structs per engine.


@dataclass(frozen=True)
class BatchPlan:
    timestamp: int
    # ("accounts" | "transfers", field dicts), one per command.
    commands: tuple[tuple[str, tuple[dict, ...]], ...]


COMMAND_TYPES = {"accounts": (CreateAccounts, Account, ACCOUNT_CODES), "transfers": (CreateTransfers, Transfer, TRANSFER_CODES)}


def build_batch(sequence: int, plan: BatchPlan, timestamp: int | None = None) -> Batch:
    commands = []
    for kind, items in plan.commands:
        command_type, item_type, _ = COMMAND_TYPES[kind]
        commands.append(command_type([item_type(**fields) for fields in items]))
    return Batch(sequence, plan.timestamp if timestamp is None else timestamp, commands)


def apply_plan(engine: Engine, plan: BatchPlan, timestamp: int | None = None) -> tuple[list[list[str]], list[Event]]:
    """Apply the plan as the engine's next batch: the result codes by name, one list per command, and the events."""
    result = engine.apply(build_batch(engine.sequence + 1, plan, timestamp))
    assert len(result.results) == len(plan.commands)
    named = []
    for (kind, items), codes in zip(plan.commands, result.results):
        assert len(codes) == len(items)
        named.append([COMMAND_TYPES[kind][2][code] for code in codes])
    return named, result.events


def apply(engine: Engine, plan: BatchPlan, timestamp: int | None = None) -> list[list[str]]:
    return apply_plan(engine, plan, timestamp)[0]


def run_engine(plans: list[BatchPlan]) -> tuple[Engine, list[list[list[str]]]]:
    engine = Engine()
    return engine, [apply(engine, plan) for plan in plans]


# Drawing plans. `runs` is the strategy; each function below draws one part of a
# plan, given hypothesis' `draw` and the run's PlanContext, which remembers what
# earlier parts planned (account currencies, transfer ids, pending ids) and what
# a scout engine, fed the batches drawn so far, holds: the transfers still
# pending and the accounts closed. The scout only steers the draws; each test
# runs the plans on engines of its own. (Draw functions rather than nested
# strategies keep generating and shrinking fast.)
# Choices written `draw(OFTEN) ...` hold most of the time; hypothesis shrinks them to true.


@dataclass
class PlanContext:
    currency_of: dict[str, str] = field(default_factory=dict)
    transfers_planned: int = 0
    pending_ids: list[str] = field(default_factory=list)  # planned in the current batch
    live_pending_ids: tuple[str, ...] = ()
    live_pending_accounts: frozenset[str] = frozenset()  # their debit and credit accounts
    live_pending_on_closed: tuple[str, ...] = ()  # those with an account closed
    closed_counterparties: frozenset[str] = frozenset()  # the other accounts of those
    closed: frozenset[str] = frozenset()

    def observe(self, scout: Engine) -> None:
        """Learn the scout's state after a batch."""
        ledger = scout.ledger
        self.currency_of.update((a.id, a.currency) for a in ledger.accounts.values())
        self.closed = frozenset(a.id for a in ledger.accounts.values() if a.flags & AccountFlag.CLOSED)
        self.live_pending_ids = tuple(sorted(pending_ids(scout)))
        live = [ledger.transfers[tid] for tid in self.live_pending_ids]
        self.live_pending_accounts = frozenset(a for t in live for a in (t.debit_account_id, t.credit_account_id))
        on_closed = [t for t in live if self.closed.intersection((t.debit_account_id, t.credit_account_id))]
        self.live_pending_on_closed = tuple(t.id for t in on_closed)
        self.closed_counterparties = frozenset(a for t in on_closed for a in (t.debit_account_id, t.credit_account_id)) - self.closed
        self.pending_ids = []


@functools.cache
def choice(options: tuple) -> st.SearchStrategy:
    """st.sampled_from, built once per tuple of options."""
    return st.sampled_from(options)


OFTEN = st.integers(0, 7).map(lambda n: n != 7)
AMOUNTS = st.integers(1, 100)
AMOUNTS_OR_ALL = st.one_of(st.just(0), AMOUNTS)  # 0: "all of it" for posts and balancing
POST_AMOUNTS = st.one_of(st.just(0), st.integers(1, 3), AMOUNTS)  # in full, or in part
TIMEOUTS = choice(TIMEOUTS_S)
NO_TIMEOUT = st.just(0)


def account_spec(draw, ctx: PlanContext, limit_flags=True, account_id=None) -> dict:
    """An account; given its id, a valid one (to open a run)."""
    valid = account_id is not None
    account_id = account_id or draw(choice(ACCOUNT_IDS))
    currency = draw(choice(ACCOUNT_CURRENCIES))
    ctx.currency_of.setdefault(account_id, currency)
    flags = draw(choice((0, AccountFlag.HISTORY)))
    if limit_flags:
        flags |= draw(choice(LIMIT_FLAGS[:-1] if valid else LIMIT_FLAGS))
    return dict(id=account_id, currency=currency, code=draw(choice((0, 0, 1))), flags=flags)


def opening_accounts(draw, ctx: PlanContext, limit_flags=True) -> list[dict]:
    """The first command of a run: one valid, unlinked account per opened id."""
    return [account_spec(draw, ctx, limit_flags, account_id) for account_id in OPENED_ACCOUNT_IDS]


def transfer_id(draw, ctx: PlanContext) -> str:
    """Mostly the pool's next unused id, sometimes one used before."""
    used = ctx.transfers_planned
    if used and (used == len(TRANSFER_IDS) or not draw(OFTEN)):
        return draw(choice(TRANSFER_IDS[:used]))
    ctx.transfers_planned += 1
    return TRANSFER_IDS[used]


def account_pair(draw, ctx: PlanContext, touching: frozenset[str] = frozenset()) -> tuple[str, str]:
    """A debit and a credit account: mostly two open accounts of one currency (one of them
    in `touching`, if such pairs exist), else any two ids."""
    planned = sorted((a, currency) for a, currency in ctx.currency_of.items() if a not in ctx.closed)
    pairs = [(debit, credit) for debit, currency in planned for credit, other in planned if debit != credit and currency == other]
    pairs = [pair for pair in pairs if touching.intersection(pair)] or pairs
    if pairs and draw(OFTEN):
        return draw(choice(tuple(pairs)))
    return draw(choice(ACCOUNT_IDS)), draw(choice(ACCOUNT_IDS))


def movement(draw, ctx: PlanContext, flags: int, amount=AMOUNTS, timeout=NO_TIMEOUT, touching=frozenset()) -> dict:
    """A transfer that names its accounts: single-phase, pending, balancing or closing."""
    debit, credit = account_pair(draw, ctx, touching)
    currency = ctx.currency_of.get(debit, CURRENCIES[0]) if draw(OFTEN) else draw(choice(CURRENCIES))
    spec = dict(
        id=transfer_id(draw, ctx),
        debit_account_id=debit,
        credit_account_id=credit,
        amount=draw(amount),
        currency=currency,
        timeout_s=draw(timeout),
        flags=flags,
    )
    if flags & F.PENDING:
        ctx.pending_ids.append(spec["id"])
    return spec


def plain_transfer(draw, ctx: PlanContext) -> dict:
    return movement(draw, ctx, 0)


def pending_transfer(draw, ctx: PlanContext) -> dict:
    return movement(draw, ctx, F.PENDING, timeout=TIMEOUTS)


def balancing_transfer(draw, ctx: PlanContext) -> dict:
    flags = draw(choice((F.BALANCING_DEBIT, F.BALANCING_CREDIT, F.BALANCING))) | draw(choice((0, F.PENDING)))
    return movement(draw, ctx, flags, amount=AMOUNTS_OR_ALL, timeout=TIMEOUTS if flags & F.PENDING else NO_TIMEOUT)


def closing_transfer(draw, ctx: PlanContext) -> dict:
    """A pending transfer that closes one or both accounts, sometimes balancing them first,
    often touching an account with transfers in flight, first the counterparty of a closed one."""
    balancing = draw(choice((0, F.BALANCING_DEBIT, F.BALANCING_CREDIT)))
    flags = F.PENDING | balancing | draw(choice((F.CLOSING_DEBIT, F.CLOSING_CREDIT, F.CLOSING)))
    touching = frozenset()
    for tier in (ctx.closed_counterparties, ctx.live_pending_accounts):
        if tier and draw(st.booleans()):
            touching = tier
            break
    return movement(draw, ctx, flags, amount=AMOUNTS_OR_ALL if balancing else AMOUNTS, timeout=TIMEOUTS, touching=touching)


def resolution(draw, ctx: PlanContext, flags: int, amount) -> dict:
    """A post or a void, mostly of a transfer still pending (often one on a closed
    account, if any) or planned pending in this batch."""
    candidates = TRANSFER_IDS
    for tier, chosen in ((ctx.live_pending_on_closed, st.booleans()), (ctx.live_pending_ids, OFTEN), (tuple(ctx.pending_ids), OFTEN)):
        if tier and draw(chosen):
            candidates = tier
            break
    pending_id = draw(choice(candidates))
    return dict(id=transfer_id(draw, ctx), pending_id=pending_id, amount=draw(amount), flags=flags)


def post_transfer(draw, ctx: PlanContext) -> dict:
    return resolution(draw, ctx, F.POST_PENDING, POST_AMOUNTS)


def void_transfer(draw, ctx: PlanContext) -> dict:
    return resolution(draw, ctx, F.VOID_PENDING, choice((0, 0, 0, 7)))


# Repeats weight the draw; hypothesis shrinks towards the first.
TRANSFER_KINDS = (
    (plain_transfer,) * 4
    + (pending_transfer,) * 3
    + (post_transfer,) * 3
    + (void_transfer,) * 2
    + (balancing_transfer,)
    + (closing_transfer,) * 2
)


def transfer_spec(draw, ctx: PlanContext) -> dict:
    kind = draw(choice(TRANSFER_KINDS))
    if kind in (post_transfer, void_transfer) and not (ctx.live_pending_ids or ctx.pending_ids):
        kind = pending_transfer  # nothing to post or void yet
    return kind(draw, ctx)


def linked_items(draw, ctx: PlanContext, item, max_chains: int = 4) -> list[dict]:
    """Items in chains, mostly of one; the last chain is sometimes left open."""
    chains = [[item(draw, ctx) for _ in range(draw(choice(CHAIN_LENGTHS)))] for _ in range(draw(st.integers(1, max_chains)))]
    leave_open = not draw(OFTEN)
    specs = []
    for index, chain in enumerate(chains):
        open_chain = leave_open and index == len(chains) - 1
        for position, spec in enumerate(chain):
            linked = position < len(chain) - 1 or open_chain
            specs.append({**spec, "flags": spec["flags"] | (LINKED if linked else 0)})
    return specs


def unlinked_items(draw, ctx: PlanContext, item, max_items: int = 6) -> list[dict]:
    return [item(draw, ctx) for _ in range(draw(st.integers(1, max_items)))]


Draw = Callable[..., object]


@dataclass(frozen=True)
class RunShape:
    """What a run may contain: which accounts and transfers, and how they group."""

    accounts: Draw = account_spec
    opening: Draw = opening_accounts
    transfers: Draw = transfer_spec
    group: Draw = linked_items


FULL = RunShape()


def batch_plan(draw, ctx: PlanContext, shape: RunShape, timestamp: int, first: bool) -> BatchPlan:
    commands = [("accounts", tuple(shape.opening(draw, ctx)))] if first else []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(choice(("transfers", "transfers", "transfers", "accounts")))
        item = shape.transfers if kind == "transfers" else shape.accounts
        commands.append((kind, tuple(shape.group(draw, ctx, item))))
    return BatchPlan(timestamp, tuple(commands))


@st.composite
def runs(draw, shape: RunShape = FULL, max_batches: int = 8) -> list[BatchPlan]:
    """Plans of one to `max_batches` batches, at times that never run back."""
    ctx, scout = PlanContext(), Engine()
    timestamp = draw(choice((1, SECOND)))  # a batch's time is never 0
    plans = []
    for index in range(draw(st.integers(1, max_batches))):
        if index:
            timestamp += draw(choice(TIME_STEPS_NS))
        plans.append(batch_plan(draw, ctx, shape, timestamp, first=index == 0))
        apply(scout, plans[-1])
        ctx.observe(scout)
    # Reported with a failing example: schemathesis' pytest plugin swaps in a
    # printer that leaves the example's arguments blank.
    note(plans)
    return plans


# Checks.


def balances(account: Account) -> tuple[int, int, int, int]:
    return (account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted)


def closing_sides(t: Transfer) -> list[str]:
    """The accounts a closing transfer closes."""
    return ([t.debit_account_id] if t.flags & F.CLOSING_DEBIT else []) + ([t.credit_account_id] if t.flags & F.CLOSING_CREDIT else [])


def check_closed_accounts(engine: Engine) -> None:
    """An account is closed exactly while a pending or posted closing transfer holds it,
    and after that transfer only voids and the closing transfer's own post touch it."""
    ledger = engine.ledger
    closers = {}
    for transfer_id, state in ledger.pending_states.items():
        t = ledger.transfers[transfer_id]
        if state in (PendingState.PENDING, PendingState.POSTED):
            for account_id in closing_sides(t):
                assert account_id not in closers, f"{account_id} closed twice: {closers.get(account_id)}, {transfer_id}"
                closers[account_id] = t
    for account in ledger.accounts.values():
        closer = closers.get(account.id)
        assert bool(account.flags & AccountFlag.CLOSED) == (closer is not None), (account.id, account.flags, closer)
        if closer is None:
            continue
        log = account.transfers
        for t in log[next(index for index, logged in enumerate(log) if logged is closer) + 1 :]:
            allowed = t.flags & F.VOID_PENDING or (t.flags & F.POST_PENDING and t.pending_id == closer.id)
            assert allowed, f"transfer {t.id} moved money on {account.id}, closed by {closer.id}: {t}"


def pending_ids(engine: Engine) -> set[str]:
    return {tid for tid, state in engine.ledger.pending_states.items() if state == PendingState.PENDING}


def check_invariants(engine: Engine) -> None:
    engine.verify()  # double entry per currency, limits, pending balances
    for tid in pending_ids(engine):
        t = engine.ledger.transfers[tid]
        assert not t.timeout_s or t.timestamp + t.timeout_s * SECOND > engine.timestamp, f"{tid} outlived its timeout"
    for account in engine.ledger.accounts.values():
        assert min(balances(account)) >= 0, account
        if account.history:
            # The history holds the balances after each change: the last is today's.
            latest = account.history[-1]
            assert (latest.debits_pending, latest.debits_posted, latest.credits_pending, latest.credits_posted) == balances(account)
    check_closed_accounts(engine)


def check_results_match_state(engine: Engine, plan: BatchPlan, results: list[list[str]], failed_before: set[str]) -> None:
    """An `ok` item is stored, and the ids spent are exactly those answered with a transient code."""
    ledger = engine.ledger
    refused = set()
    for (kind, items), codes in zip(plan.commands, results):
        for spec, code in zip(items, codes):
            if kind == "accounts":
                assert code != "ok" or spec["id"] in ledger.accounts
            elif code == "ok":
                assert spec["id"] in ledger.transfers
            elif code in TRANSIENT_CODES:
                assert spec["id"] not in ledger.transfers
                refused.add(spec["id"])
    assert set(ledger.failed_ids) - failed_before == refused


def account_indexes(engine: Engine) -> dict[str, tuple[list[str], list]]:
    """Each account's transfer log, which the state hash leaves out, and its history, copied."""
    return {a.id: ([t.id for t in a.transfers or ()], list(a.history or ())) for a in engine.ledger.accounts.values()}


def split_chains(items: tuple[dict, ...]) -> list[tuple[int, int, str]]:
    """(start, stop, shape) per single item, closed chain or open chain, as the engine groups them."""
    groups = []
    start = 0
    for index, item in enumerate(items):
        if not item["flags"] & LINKED:
            groups.append((start, index + 1, "single" if index == start else "chain"))
            start = index + 1
    if start < len(items):
        groups.append((start, len(items), "open"))
    return groups


def first_failure(codes: list[str]) -> int | None:
    return next((index for index, code in enumerate(codes) if code not in ("ok", "linked_event_failed")), None)


def check_retried_command(items, original: list[str], retried: list[str], retry_codes, fresh_failures) -> None:
    """A retried command answers as its first attempt did, chain by chain.

    A single item answers `retry_codes(original)`. A chain that succeeded
    answers `exists` for its first item. A chain that failed fails again, no
    later than before; its items that had succeeded and were rolled back were
    never spent, so they are tried afresh against today's state and may fail
    with `fresh_failures` first. The last item of an open chain is never run
    and answers `linked_event_chain_open`.
    """
    assert "ok" not in retried
    for start, stop, shape in split_chains(items):
        old, new = original[start:stop], retried[start:stop]
        context = (shape, old, new, items[start:stop])
        if shape == "single":
            assert new[0] in retry_codes(old[0]), context
            continue
        visible = len(old) - (shape == "open")
        if shape == "open":
            assert new[-1] == "linked_event_chain_open", context
        if shape == "chain" and old == ["ok"] * len(old):
            assert new == ["exists"] + ["linked_event_failed"] * (len(new) - 1), context
            continue
        old_first, new_first = first_failure(old[:visible]), first_failure(new[:visible])
        assert all(code == "linked_event_failed" for index, code in enumerate(new[:visible]) if index != new_first), context
        if shape == "chain" or old_first is not None:
            assert new_first is not None and new_first <= old_first, context
        if new_first is None:
            continue
        if new_first == old_first:
            assert new[new_first] in retry_codes(old[old_first]), context
        else:
            assert new[new_first] in fresh_failures, context


def retry(engine: Engine, plan: BatchPlan, original: list[list[str]]) -> None:
    """Resubmit an old batch at the current time and check that it changes nothing but spent ids."""
    before_state, before_failed, before_hash = state_without_failed_ids(engine), set(engine.ledger.failed_ids), engine.state_hash()
    retried = apply(engine, plan, timestamp=engine.timestamp)
    check_invariants(engine)
    assert state_without_failed_ids(engine) == before_state
    refused = set()  # ids refused for a transient reason
    for (kind, items), old, new in zip(plan.commands, original, retried):
        if kind == "accounts":
            check_retried_command(items, old, new, account_retry_codes, ACCOUNT_EXISTS_CODES)
        else:
            check_retried_command(items, old, new, transfer_retry_codes, TRANSFER_FRESH_FAILURES)
            refused |= {spec["id"] for spec, code in zip(items, new) if code in TRANSIENT_CODES}
    # Exactly those spend their ids, and only fresh attempts can be refused so.
    assert set(engine.ledger.failed_ids) - before_failed == refused
    if not refused:
        assert engine.state_hash() == before_hash


# Property 1: the ledger stays consistent after every batch.


@PROFILE
@given(runs())
def test_every_batch_leaves_a_consistent_ledger(plans):
    engine = Engine()
    for plan in plans:
        pending_before, failed_before = pending_ids(engine), set(engine.ledger.failed_ids)
        results, events = apply_plan(engine, plan)
        check_results_match_state(engine, plan, results, failed_before)
        check_invariants(engine)
        expired = {tid for tid in pending_before if engine.ledger.pending_states[tid] == PendingState.EXPIRED}
        assert [(e.kind, e.timestamp) for e in events] == [("transfer.expired", plan.timestamp)] * len(events)
        assert sorted(e.object_id for e in events) == sorted(expired)


# Property 2: the state is a function of the batches; snapshots lose nothing.


@PROFILE
@given(runs())
def test_same_batches_give_same_state_and_results(plans):
    first, second = Engine(), Engine()
    for plan in plans:
        assert apply_plan(first, plan) == apply_plan(second, plan)
        assert first.state_hash() == second.state_hash()


@PROFILE
@given(runs())
def test_restored_snapshot_continues_like_the_original(plans):
    original = Engine()
    snapshots, hashes, indexes, results = [original.snapshot()], [original.state_hash()], [account_indexes(original)], []
    for plan in plans:
        results.append(apply_plan(original, plan))
        snapshots.append(original.snapshot())
        hashes.append(original.state_hash())
        indexes.append(account_indexes(original))
    for k, snapshot in enumerate(snapshots):
        restored = Engine.restore(snapshot)
        assert restored.snapshot() == snapshot
        check_invariants(restored)
        for index in range(k, len(plans) + 1):
            if index > k:
                assert apply_plan(restored, plans[index - 1]) == results[index - 1]
            assert restored.state_hash() == hashes[index]
            assert account_indexes(restored) == indexes[index]
        assert (restored.sequence, restored.timestamp) == (original.sequence, original.timestamp)


# Property 3: a resubmitted batch changes nothing.


@PROFILE
@given(runs())
def test_resubmitted_batches_change_nothing(plans):
    engine, results = run_engine(plans)
    for plan, original in zip(plans, results):
        retry(engine, plan, original)


def one_command(timestamp: int, kind: str, *items: dict) -> BatchPlan:
    return BatchPlan(timestamp, ((kind, items),))


def euros(tid: str, amount: int = 1, flags: int = 0, **fields) -> dict:
    """A transfer from account a to account b, both in EUR."""
    return dict(id=tid, debit_account_id="a", credit_account_id="b", amount=amount, currency="EUR", flags=flags, **fields)


EURO_ACCOUNTS = one_command(SECOND, "accounts", dict(id="a", currency="EUR"), dict(id="b", currency="EUR"))
CLOSE_A = one_command(SECOND, "transfers", euros("c", flags=F.PENDING | F.CLOSING_DEBIT))


def test_a_retried_chain_member_is_a_first_attempt():
    """Why property 3 lets a retry spend ids: a chain member rolled back by a
    later member's failure was never tried to the end, so its id is not spent
    and a retry tries it against today's state. If that state now refuses it
    for a transient reason, the retry spends the id: `failed_ids` grows and the
    state hash changes, though no money moves."""
    chain = one_command(SECOND, "transfers", euros("t1", flags=LINKED), euros("t2", amount=0))
    engine = Engine()
    apply(engine, EURO_ACCOUNTS)
    assert apply(engine, chain) == [["linked_event_failed", "amount_must_not_be_zero"]]
    assert apply(engine, CLOSE_A) == [["ok"]]
    before = engine.state_hash()
    assert apply(engine, chain) == [["debit_account_already_closed", "linked_event_failed"]]
    assert "t1" in engine.ledger.failed_ids
    assert engine.state_hash() != before


def test_retry_of_a_timeout_overflow_changes_nothing():
    """A pending transfer whose timeout would run past TIMESTAMP_MAX fails with
    `overflows_timeout`, and time only grows, so a retry can never succeed.
    The failure spends the id, so the retry answers `id_already_failed` even
    after the debit account closed, and changes nothing. (Found by property 3:
    before `overflows_timeout` was transient, the retry ran every check again,
    answered `debit_account_already_closed` and only then spent the id.)"""
    overflowing = one_command(SECOND, "transfers", euros("p", flags=F.PENDING, timeout_s=EDGE_TIMEOUT_S))
    engine = Engine()
    apply(engine, EURO_ACCOUNTS)
    assert apply(engine, overflowing) == [["overflows_timeout"]]
    assert "p" in engine.ledger.failed_ids
    assert apply(engine, CLOSE_A) == [["ok"]]
    before = engine.state_hash()
    assert apply(engine, overflowing) == [["id_already_failed"]]
    assert engine.state_hash() == before


def test_retry_of_a_chain_that_took_too_much_of_a_balanced_hold_changes_nothing():
    """Account b holds 4. A chain puts all of b on hold (balancing, amount 0,
    so 4) and posts 5 of the hold: the post exceeds the hold, the chain fails,
    and the post's id is spent, since the hold's size was state. Once b holds 5,
    the same chain, resubmitted, still fails and moves nothing."""
    hold_all_of_b = dict(id="h", debit_account_id="b", credit_account_id="a", currency="EUR", flags=F.PENDING | F.BALANCING_DEBIT | LINKED)
    chain = one_command(SECOND, "transfers", hold_all_of_b, dict(id="p", pending_id="h", amount=5, flags=F.POST_PENDING))
    engine = Engine()
    apply(engine, EURO_ACCOUNTS)
    assert apply(engine, one_command(SECOND, "transfers", euros("f1", amount=4))) == [["ok"]]
    assert apply(engine, chain) == [["linked_event_failed", "exceeds_pending_transfer_amount"]]
    assert apply(engine, one_command(SECOND, "transfers", euros("f2", amount=1))) == [["ok"]]
    before = engine.state_hash()
    assert apply(engine, chain) == [["linked_event_failed", "id_already_failed"]]
    assert engine.state_hash() == before


# Property 4: plain transfers between accounts without limits match a model.


class PlainLedgerModel:
    """Balances and result codes of single-phase, unlinked transfers, straight from the code table."""

    def __init__(self) -> None:
        self.accounts: dict[str, dict] = {}
        self.transfers: dict[str, dict] = {}
        self.failed: set[str] = set()

    def create_account(self, spec: dict) -> str:
        existing = self.accounts.get(spec["id"])
        if existing is None:
            self.accounts[spec["id"]] = {**spec, "debits_posted": 0, "credits_posted": 0}
            return "ok"
        for name in ("flags", "currency", "code"):
            if spec[name] != existing[name]:
                return f"exists_with_different_{name}"
        return "exists"

    def create_transfer(self, t: dict) -> str:
        if t["debit_account_id"] == t["credit_account_id"]:
            return "accounts_must_be_different"
        if t["amount"] < 0:
            return "amount_must_not_be_negative"
        if t["amount"] == 0:
            return "amount_must_not_be_zero"
        if t["amount"] > AMOUNT_MAX:
            return "amount_exceeds_maximum"
        existing = self.transfers.get(t["id"])
        if existing is not None:
            for name in ("debit_account_id", "credit_account_id", "amount", "currency"):
                if t[name] != existing[name]:
                    return f"exists_with_different_{name}"
            return "exists"
        if t["id"] in self.failed:
            return "id_already_failed"
        code = self._move(t)
        if code in TRANSIENT_CODES:
            self.failed.add(t["id"])
        return code

    def _move(self, t: dict) -> str:
        debit = self.accounts.get(t["debit_account_id"])
        if debit is None:
            return "debit_account_not_found"
        credit = self.accounts.get(t["credit_account_id"])
        if credit is None:
            return "credit_account_not_found"
        if debit["currency"] != credit["currency"]:
            return "accounts_must_have_the_same_currency"
        if t["currency"] != debit["currency"]:
            return "transfer_must_have_the_same_currency_as_accounts"
        if debit["debits_posted"] + t["amount"] > AMOUNT_MAX:
            return "overflows_debits_posted"
        if credit["credits_posted"] + t["amount"] > AMOUNT_MAX:
            return "overflows_credits_posted"
        debit["debits_posted"] += t["amount"]
        credit["credits_posted"] += t["amount"]
        self.transfers[t["id"]] = t
        return "ok"

    def apply(self, plan: BatchPlan) -> list[list[str]]:
        create = {"accounts": self.create_account, "transfers": self.create_transfer}
        return [[create[kind](spec) for spec in items] for kind, items in plan.commands]


EDGE_AMOUNTS = st.one_of(AMOUNTS, choice((0, -1, AMOUNT_MAX // 2 + 1, AMOUNT_MAX, AMOUNT_MAX + 1)))


def model_transfer(draw, ctx: PlanContext) -> dict:
    """A single-phase transfer, now and then naming an unknown account or an amount at the edges."""
    spec = movement(draw, ctx, 0, amount=EDGE_AMOUNTS)
    if not draw(OFTEN):
        spec[draw(choice(("debit_account_id", "credit_account_id")))] = "nobody"
    return spec


MODEL = RunShape(
    accounts=functools.partial(account_spec, limit_flags=False),
    opening=functools.partial(opening_accounts, limit_flags=False),
    transfers=model_transfer,
    group=unlinked_items,
)


@PROFILE
@given(runs(MODEL))
def test_plain_transfers_match_a_model(plans):
    engine, model = Engine(), PlainLedgerModel()
    for plan in plans:
        assert apply(engine, plan) == model.apply(plan)
        check_invariants(engine)
        assert {a.id: balances(a) for a in engine.ledger.accounts.values()} == {
            account_id: (0, a["debits_posted"], 0, a["credits_posted"]) for account_id, a in model.accounts.items()
        }
