"""Every result code of the engine, their precedence, and the semantics behind them.

Commands are written as field dicts (`tr`, `pending`, `post`, `void`, `acct`) and
turned into fresh objects on each submission, because the engine takes ownership
of (and completes) the objects it stores. Every test runs on a `Book`: an engine
holding BASE_ACCOUNTS, whose consistency check runs after the test.
"""

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import pytest

from engine import Account, AccountFlag, Engine, Transfer, TransferFlag
from engine.check import InvariantBroken
from engine.codes import ACCOUNT_CODES, TRANSFER_CODES, TRANSIENT_TRANSFER_CODES
from engine.types import AMOUNT_MAX, CODE_MAX, ID_MAX_LENGTH, TIMESTAMP_MAX, Event, PendingState
from engine.types import NANOSECONDS_PER_SECOND as NS
from ledger_helpers import apply_batch, build_engine, create_accounts, create_transfers

LINKED = TransferFlag.LINKED
PENDING = TransferFlag.PENDING
BALANCING_DEBIT = TransferFlag.BALANCING_DEBIT
BALANCING_CREDIT = TransferFlag.BALANCING_CREDIT
CLOSING_DEBIT = TransferFlag.CLOSING_DEBIT
CLOSING_CREDIT = TransferFlag.CLOSING_CREDIT
# Two transfers of HALF overflow any balance they both add to (AMOUNT_MAX is 2**63 - 1).
HALF = (AMOUNT_MAX + 1) // 2
T0 = 1_700_000_000 * NS


# Commands as field dicts


def acct(aid: str = "a", currency: str = "USD", **fields) -> dict:
    return dict(id=aid, currency=currency, **fields)


def tr(tid: str = "t", dr: str = "A", cr: str = "B", amount: int = 1, currency: str = "USD", **fields) -> dict:
    """A transfer: by default 1 USD from A to B."""
    return dict(id=tid, debit_account_id=dr, credit_account_id=cr, amount=amount, currency=currency, **fields)


def pending(tid: str = "p", flags: int = 0, **fields) -> dict:
    return tr(tid, flags=PENDING | flags, **fields)


def _resolution(flag: int):
    def resolve(tid: str = "t", pending_id: str = "p", flags: int = 0, **fields) -> dict:
        """Accounts, currency and (if 0) amount come from the pending transfer."""
        return dict(id=tid, pending_id=pending_id, flags=flag | flags, **fields)

    return resolve


post = _resolution(TransferFlag.POST_PENDING)
void = _resolution(TransferFlag.VOID_PENDING)

BASE_ACCOUNTS = (
    acct("A"),
    acct("B"),
    acct("C"),
    acct("E", currency="EUR"),
    acct("L", flags=AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS),
    acct("M", flags=AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS),
    acct("H", flags=AccountFlag.HISTORY),
)

KINDS = {"accounts": (Account, create_accounts), "transfers": (Transfer, create_transfers)}


class State(NamedTuple):
    """What a rejected command must leave as it was."""

    # (debits_pending, debits_posted, credits_pending, credits_posted, flags) of every account.
    balances: dict[str, tuple[int, ...]]
    # The identity of every stored object, so a replaced one is seen too.
    accounts: dict[str, int]
    transfers: dict[str, int]


class Book:
    """An engine holding BASE_ACCOUNTS, created at `start`, with a clock that only `advance` moves."""

    def __init__(self, start: int) -> None:
        self.now = start
        self.engine = build_engine(start, (Account(**spec) for spec in BASE_ACCOUNTS))
        self.ledger = self.engine.ledger

    def create(self, kind: str, specs: Iterable[dict]) -> list[str]:
        model, create = KINDS[kind]
        return create(self.engine, self.now, [model(**spec) for spec in specs])

    def accounts(self, *specs: dict) -> list[str]:
        return self.create("accounts", specs)

    def transfers(self, *specs: dict) -> list[str]:
        return self.create("transfers", specs)

    def ok(self, *specs: dict) -> None:
        names = self.transfers(*specs)
        assert names == ["ok"] * len(specs), names

    def advance(self, nanoseconds: int) -> list[Event]:
        """Move the clock with an empty batch; the events it raised (expiries)."""
        self.now += nanoseconds
        return apply_batch(self.engine, self.now, []).events

    def balances(self, aid: str) -> tuple[int, int, int, int]:
        """(debits_pending, debits_posted, credits_pending, credits_posted)."""
        a = self.ledger.accounts[aid]
        return (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)

    def balance_at(self, aid: str, timestamp: int) -> tuple[int, int, int, int] | None:
        """`balances` of HISTORY account `aid` as of `timestamp`; None for other accounts."""
        b = self.ledger.balance_at(aid, timestamp)
        return b and (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)

    def state(self) -> State:
        ledger = self.ledger
        return State(
            {a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.flags) for a in ledger.accounts.values()},
            {key: id(value) for key, value in ledger.accounts.items()},
            {key: id(value) for key, value in ledger.transfers.items()},
        )


@pytest.fixture
def book(request) -> Iterator[Book]:
    """A Book starting at T0, or at the time given by indirect parametrization."""
    book = Book(getattr(request, "param", T0))
    yield book
    book.engine.verify()


# 1. Every result code


class Case(NamedTuple):
    batch: tuple[dict, ...]  # the batch under test
    setup: tuple[dict, ...]  # created first, in one batch, all "ok"
    wait: int  # nanoseconds between setup and batch
    results: tuple[str, ...] | None  # the batch's codes, when not just the one under test


def case(*batch: dict, setup: tuple[dict, ...] = (), wait: int = 0, results: tuple[str, ...] | None = None) -> Case:
    return Case(batch, setup, wait, results)


ACCOUNT_CASES = {
    "ok": case(acct()),
    "linked_event_failed": case(
        acct("a1", flags=AccountFlag.LINKED), acct("a2", currency=""),
        results=("linked_event_failed", "currency_must_not_be_empty"),
    ),
    "linked_event_chain_open": case(acct(flags=AccountFlag.LINKED)),
    "id_must_not_be_empty": case(acct("")),
    "id_too_long": case(acct("a" * (ID_MAX_LENGTH + 1))),
    "reserved_flag": case(acct(flags=AccountFlag.ALL + 1)),
    "flags_are_mutually_exclusive": case(acct(flags=AccountFlag.LIMITS)),
    "currency_must_not_be_empty": case(acct(currency="")),
    "code_out_of_range": case(acct(code=CODE_MAX + 1)),
    "balances_must_be_zero": case(acct(credits_posted=1)),
    "timestamp_must_be_zero": case(acct(timestamp=1)),
    "exists_with_different_flags": case(acct(flags=AccountFlag.HISTORY), setup=(acct(),)),
    "exists_with_different_currency": case(acct(currency="EUR"), setup=(acct(),)),
    "exists_with_different_code": case(acct(code=1), setup=(acct(),)),
    "exists": case(acct(), setup=(acct(),)),
}

TRANSFER_CASES = {
    "ok": case(tr()),
    "linked_event_failed": case(
        tr("t1", flags=LINKED), tr("t2", amount=0),
        results=("linked_event_failed", "amount_must_not_be_zero"),
    ),
    "linked_event_chain_open": case(tr(flags=LINKED)),
    "id_must_not_be_empty": case(tr("")),
    "id_too_long": case(tr("t" * (ID_MAX_LENGTH + 1))),
    "reserved_flag": case(tr(flags=TransferFlag.ALL + 1)),
    "flags_are_mutually_exclusive": case(pending("t", flags=TransferFlag.VOID_PENDING)),
    "debit_account_id_must_not_be_empty": case(tr(dr="")),
    "credit_account_id_must_not_be_empty": case(tr(cr="")),
    "accounts_must_be_different": case(tr(cr="A")),
    "pending_id_must_be_empty": case(tr(pending_id="p")),
    "pending_id_must_not_be_empty": case(post(pending_id="")),
    "pending_id_must_be_different": case(post("p")),
    "timeout_reserved_for_pending_transfer": case(tr(timeout_s=1)),
    "timeout_must_not_be_negative": case(pending("t", timeout_s=-1)),
    "closing_transfer_must_be_pending": case(tr(flags=CLOSING_DEBIT)),
    "amount_must_not_be_negative": case(tr(amount=-1)),
    "amount_must_not_be_zero": case(tr(amount=0)),
    "amount_exceeds_maximum": case(tr(amount=AMOUNT_MAX + 1)),
    "currency_must_not_be_empty": case(tr(currency="")),
    "code_out_of_range": case(tr(code=CODE_MAX + 1)),
    "timestamp_must_be_zero": case(tr(timestamp=1)),
    "exists_with_different_flags": case(pending("t"), setup=(tr(),)),
    "exists_with_different_pending_id": case(post(pending_id="q"), setup=(pending(), post())),
    "exists_with_different_timeout": case(pending("t", timeout_s=1), setup=(pending("t"),)),
    "exists_with_different_debit_account_id": case(tr(dr="C"), setup=(tr(),)),
    "exists_with_different_credit_account_id": case(tr(cr="C"), setup=(tr(),)),
    "exists_with_different_amount": case(tr(amount=2), setup=(tr(),)),
    "exists_with_different_currency": case(tr(currency="EUR"), setup=(tr(),)),
    "exists_with_different_code": case(tr(code=1), setup=(tr(),)),
    "exists": case(tr(), setup=(tr(),)),
    "id_already_failed": case(tr(dr="X"), tr(), results=("debit_account_not_found", "id_already_failed")),
    "debit_account_not_found": case(tr(dr="X")),
    "credit_account_not_found": case(tr(cr="X")),
    "accounts_must_have_the_same_currency": case(tr(cr="E")),
    "transfer_must_have_the_same_currency_as_accounts": case(tr(currency="EUR")),
    "pending_transfer_not_found": case(post()),
    "pending_transfer_not_pending": case(post(), setup=(tr("p"),)),
    "pending_transfer_has_different_debit_account_id": case(post(debit_account_id="C"), setup=(pending(),)),
    "pending_transfer_has_different_credit_account_id": case(post(credit_account_id="C"), setup=(pending(),)),
    "pending_transfer_has_different_currency": case(post(currency="EUR"), setup=(pending(),)),
    "exceeds_pending_transfer_amount": case(post(amount=2), setup=(pending(),)),
    "pending_transfer_has_different_amount": case(void(amount=1), setup=(pending(amount=2),)),
    "pending_transfer_already_posted": case(post(), setup=(pending(), post("t0"))),
    "pending_transfer_already_voided": case(post(), setup=(pending(), void("t0"))),
    "pending_transfer_expired": case(post(), setup=(pending(timeout_s=1),), wait=2 * NS),
    "debit_account_already_closed": case(tr(), setup=(pending(flags=CLOSING_DEBIT),)),
    "credit_account_already_closed": case(tr(), setup=(pending(flags=CLOSING_CREDIT),)),
    "overflows_debits_pending": case(pending("t", amount=HALF), setup=(pending(amount=HALF),)),
    "overflows_credits_pending": case(pending("t", amount=HALF), setup=(pending(dr="C", amount=HALF),)),
    "overflows_debits_posted": case(tr(amount=HALF), setup=(tr("f", cr="C", amount=HALF),)),
    "overflows_credits_posted": case(tr(amount=HALF), setup=(tr("f", dr="C", amount=HALF),)),
    "overflows_debits": case(tr(amount=HALF), setup=(pending(cr="C", amount=HALF),)),
    "overflows_credits": case(tr(amount=HALF), setup=(pending(dr="C", amount=HALF),)),
    "overflows_timeout": case(pending("t", timeout_s=TIMESTAMP_MAX // NS + 1)),
    "exceeds_credits": case(tr(dr="L")),
    "exceeds_debits": case(tr(cr="M")),
}

CASES = {"accounts": ACCOUNT_CASES, "transfers": TRANSFER_CASES}


@pytest.mark.parametrize(
    "kind, code",
    [pytest.param(kind, code, id=f"{kind}:{code}") for kind, table in CASES.items() for code in table],
)
def test_result_code(book, kind, code):
    example = CASES[kind][code]
    assert book.create(kind, example.setup) == ["ok"] * len(example.setup)
    book.advance(example.wait)
    before, failed_before = book.state(), set(book.ledger.failed_ids)

    names = book.create(kind, example.batch)

    assert code in names
    assert names == list(example.results or (code,))
    after = book.state()
    if code == "ok":
        assert {spec["id"] for spec in example.batch} <= getattr(after, kind).keys()
        assert after.balances != before.balances
    else:
        assert after == before
    # Only failures on the ledger's state spend the id.
    spent = {spec["id"] for spec, name in zip(example.batch, names) if name in TRANSIENT_TRANSFER_CODES}
    assert set(book.ledger.failed_ids) - failed_before == spent


# 2. Precedence: of two broken rules, the one listed first answers


class Rule(NamedTuple):
    setup: tuple[dict, ...]
    both: dict  # breaks the winner's rule and the loser's
    winner: str
    alone: dict  # breaks the loser's rule only
    loser: str


PRECEDENCE = {
    "empty id, empty debit account": Rule(
        (), tr("", dr=""), "id_must_not_be_empty", tr(dr=""), "debit_account_id_must_not_be_empty"
    ),
    "own fields before exists": Rule(
        (tr(),), tr(amount=0), "amount_must_not_be_zero", tr(amount=2), "exists_with_different_amount"
    ),
    "exists before a missing account": Rule(
        (tr(),), tr(dr="X"), "exists_with_different_debit_account_id", tr("u", dr="X"), "debit_account_not_found"
    ),
    "first different field": Rule(
        (tr(),), tr(dr="C", cr="A"), "exists_with_different_debit_account_id",
        tr(cr="C"), "exists_with_different_credit_account_id",
    ),
    "debit account before credit account": Rule(
        (), tr(dr="X", cr="Y"), "debit_account_not_found", tr("u", cr="Y"), "credit_account_not_found"
    ),
    "accounts' currencies before the transfer's": Rule(
        (), tr(cr="E", currency="GBP"), "accounts_must_have_the_same_currency",
        tr("u", currency="GBP"), "transfer_must_have_the_same_currency_as_accounts",
    ),
    "overflow before exceeds_credits": Rule(
        (tr("f", dr="C", amount=HALF),), tr(dr="L", amount=HALF), "overflows_credits_posted",
        tr("u", dr="L"), "exceeds_credits",
    ),
    "exceeds_credits before exceeds_debits": Rule(
        (), tr(dr="L", cr="M"), "exceeds_credits", tr("u", cr="M"), "exceeds_debits"
    ),
}


@pytest.mark.parametrize("rule", PRECEDENCE.values(), ids=PRECEDENCE.keys())
def test_first_broken_rule_in_the_table_answers(book, rule):
    assert TRANSFER_CODES.index(rule.winner) < TRANSFER_CODES.index(rule.loser)
    book.ok(*rule.setup)
    assert book.transfers(rule.both) == [rule.winner]
    assert book.transfers(rule.alone) == [rule.loser]


@pytest.mark.parametrize(
    "batch, expected",
    [
        ((tr("t1", dr="X", flags=LINKED), tr("t2", amount=0)), ["debit_account_not_found", "linked_event_failed"]),
        ((tr(amount=0, flags=LINKED),), ["linked_event_chain_open"]),
    ],
    ids=["member after a failure", "open chain"],
)
def test_chain_codes_come_before_a_members_own_code(book, batch, expected):
    assert book.transfers(*batch) == expected


FLAGGED = {
    "id_must_not_be_empty": post(""),
    "id_too_long": post("t" * (ID_MAX_LENGTH + 1)),
    "reserved_flag": tr(flags=-2),  # negative; -1 would carry the linked bit
    "debit_account_id_must_not_be_empty": pending(dr=""),
    "credit_account_id_must_not_be_empty": pending(cr=""),
    "accounts_must_be_different": post(debit_account_id="A", credit_account_id="A"),
    "pending_id_must_be_empty": pending(pending_id="q"),
    "timeout_reserved_for_pending_transfer": post(timeout_s=1),
    "amount_must_not_be_negative": pending(amount=-1),
    "amount_must_not_be_zero": pending(amount=0),
    "amount_exceeds_maximum": tr(amount=AMOUNT_MAX + 1, flags=BALANCING_DEBIT),
    "currency_must_not_be_empty": pending(currency=""),
    "code_out_of_range": post(code=CODE_MAX + 1),
    "timestamp_must_be_zero": post(timestamp=1),
}


@pytest.mark.parametrize("code, transfer", FLAGGED.items(), ids=FLAGGED.keys())
def test_flagged_transfers_get_the_same_checks_of_their_own_fields(book, code, transfer):
    assert book.transfers(transfer) == [code]


CONFLICTS = {
    "pending and post": post(flags=PENDING),
    "post and void": post(flags=TransferFlag.VOID_PENDING),
    "post and balancing": post(flags=BALANCING_CREDIT),
    "void and closing": void(flags=CLOSING_DEBIT),
}


@pytest.mark.parametrize("transfer", CONFLICTS.values(), ids=CONFLICTS.keys())
def test_flags_that_exclude_each_other(book, transfer):
    assert book.transfers(transfer) == ["flags_are_mutually_exclusive"]


# 3. Semantics: linked chains


def test_linked_chain_succeeds_as_one(book):
    book.ok(tr("t1", flags=LINKED), tr("t2", dr="B", cr="C", flags=LINKED), tr("t3", dr="C", cr="A"))
    assert [book.balances(aid) for aid in "ABC"] == [(0, 1, 0, 1)] * 3


def test_failure_in_a_chain_rolls_back_the_earlier_members(book):
    book.ok(tr("f", dr="C", cr="A", amount=10), pending(amount=5))
    before = book.state()
    chain = (
        post("t1", flags=LINKED),
        tr("t2", amount=3, flags=LINKED),
        # Holds with an expiry, closes C, and writes H's history.
        pending("t3", dr="C", cr="H", amount=2, timeout_s=1, flags=LINKED | CLOSING_DEBIT),
        tr("t4", dr="L", flags=LINKED),
        tr("t5"),
    )
    assert book.transfers(*chain) == ["linked_event_failed"] * 3 + ["exceeds_credits", "linked_event_failed"]
    assert book.state() == before
    assert book.ledger.pending_states == {"p": PendingState.PENDING}
    assert [t.id for t in book.ledger.account_transfers("A")] == ["f", "p"]
    assert book.balance_at("H", book.now) == (0, 0, 0, 0)
    assert book.advance(2 * NS) == []  # the rolled-back hold never expires
    book.ok(post("t1"))  # p is still pending, and t1's id was not spent


def test_chain_left_open_at_the_end_of_the_batch_moves_nothing(book):
    before = book.state()
    assert book.transfers(tr("t1", flags=LINKED), tr("t2", flags=LINKED)) == ["linked_event_failed", "linked_event_chain_open"]
    assert book.state() == before


def test_chain_after_a_failed_chain_succeeds(book):
    batch = (tr("t1", flags=LINKED), tr("t2", dr="L"), tr("t3", flags=LINKED), tr("t4"))
    assert book.transfers(*batch) == ["linked_event_failed", "exceeds_credits", "ok", "ok"]
    assert book.balances("A") == (0, 2, 0, 0)


def test_open_chain_spends_no_id(book):
    assert book.transfers(tr(dr="X", flags=LINKED)) == ["linked_event_chain_open"]
    assert book.accounts(acct("X")) == ["ok"]
    assert book.transfers(tr(dr="X")) == ["ok"]


# Two-phase transfers


@pytest.mark.parametrize(
    "resolution, posted, stored_amount, again",
    [
        (post(), 10, 10, "pending_transfer_already_posted"),
        (post(amount=4), 4, 4, "pending_transfer_already_posted"),
        (void(), 0, 10, "pending_transfer_already_voided"),
    ],
    ids=["post in full", "post in part", "void"],
)
def test_resolving_a_pending_transfer_releases_the_whole_hold(book, resolution, posted, stored_amount, again):
    book.ok(pending(amount=10))
    assert (book.balances("A"), book.balances("B")) == ((10, 0, 0, 0), (0, 0, 10, 0))
    book.ok(resolution)
    assert (book.balances("A"), book.balances("B")) == ((0, posted, 0, 0), (0, 0, 0, posted))
    stored = book.ledger.transfers["t"]
    assert (stored.debit_account_id, stored.credit_account_id, stored.currency, stored.amount) == ("A", "B", "USD", stored_amount)
    assert book.transfers(post("t2")) == [again]


def test_expiry_releases_the_hold_and_says_so(book):
    book.ok(pending(amount=10, timeout_s=1))
    assert book.advance(NS - 1) == []
    assert book.balances("A") == (10, 0, 0, 0)
    assert book.advance(1) == [Event("transfer.expired", "p", T0 + NS)]
    assert (book.balances("A"), book.balances("B")) == ((0, 0, 0, 0), (0, 0, 0, 0))
    assert book.transfers(post("t1"), void("t2")) == ["pending_transfer_expired"] * 2


@pytest.mark.parametrize("extra, code", [(0, "ok"), (1, "overflows_timeout")])
def test_timeout_may_end_at_the_last_representable_nanosecond(book, extra, code):
    assert book.transfers(pending(timeout_s=(TIMESTAMP_MAX - T0) // NS + extra)) == [code]


@pytest.mark.parametrize("funding", [tr("f", cr="C", amount=HALF), tr("f", dr="C", amount=HALF)], ids=["debit side", "credit side"])
def test_posting_a_hold_never_overflows(book, funding):
    book.ok(funding, pending(amount=HALF - 1))  # the hold fits: pending + posted == AMOUNT_MAX
    assert book.transfers(post()) == ["ok"]


# Closing accounts

ENDINGS = {
    "post": (lambda book: book.ok(post()), True),
    "void": (lambda book: book.ok(void()), False),
    "expiry": (lambda book: book.advance(NS), False),
}


@pytest.mark.parametrize(
    "flag, probe, code",
    [
        (CLOSING_DEBIT, tr("x", dr="A", cr="C"), "debit_account_already_closed"),
        (CLOSING_CREDIT, tr("x", dr="C", cr="B"), "credit_account_already_closed"),
    ],
    ids=["closing_debit", "closing_credit"],
)
@pytest.mark.parametrize("ending", ENDINGS)
def test_closing_transfer_closes_its_account_until_released(book, flag, probe, code, ending):
    end, stays_closed = ENDINGS[ending]
    book.ok(pending(flags=flag, timeout_s=1))
    assert book.transfers(probe) == [code]
    end(book)
    assert book.transfers({**probe, "id": "y"}) == [code if stays_closed else "ok"]


def test_hold_taken_before_the_account_closed_can_be_voided_but_not_posted(book):
    book.ok(pending("h", cr="C"), pending(flags=CLOSING_DEBIT))
    assert book.transfers(post("t1", pending_id="h")) == ["debit_account_already_closed"]
    book.ok(void("t2", pending_id="h"))
    assert book.balances("A") == (1, 0, 0, 0)  # only the closing hold is left


@pytest.mark.parametrize(
    "transfers, accounts, again",
    [((pending(flags=CLOSING_DEBIT),), (), acct("A")), ((), (acct("a1", flags=AccountFlag.LINKED), acct("a2")), acct("a1"))],
    ids=["closed since", "created in a chain"],
)
def test_resubmitted_account_answers_exists_whether_closed_or_linked(book, transfers, accounts, again):
    book.ok(*transfers)
    assert book.accounts(*accounts) == ["ok"] * len(accounts)
    assert book.accounts(again) == ["exists"]


# Balancing transfers


@pytest.mark.parametrize(
    "transfer, moved",
    [
        (tr(dr="L", amount=100, flags=BALANCING_DEBIT), 10),
        (tr(dr="L", amount=0, flags=BALANCING_DEBIT), 10),
        (tr(dr="L", amount=4, flags=BALANCING_DEBIT), 4),
        (tr(cr="M", amount=100, flags=BALANCING_CREDIT), 6),
        (tr(cr="M", amount=0, flags=BALANCING_CREDIT), 6),
        (tr(dr="L", cr="M", amount=0, flags=BALANCING_DEBIT | BALANCING_CREDIT), 6),
        (tr(amount=5, flags=BALANCING_DEBIT), 0),
        (tr(dr="C", amount=5, flags=BALANCING_DEBIT), 0),
    ],
    ids=["debit capped", "debit all", "debit under cap", "credit capped", "credit all", "both", "nothing left", "overdrawn"],
)
def test_balancing_moves_at_most_what_the_limit_allows(book, transfer, moved):
    # L (debits <= credits) may be debited 10, M (credits <= debits) credited 6; C is 4 overdrawn.
    book.ok(tr("f1", dr="C", cr="L", amount=10), tr("f2", dr="M", cr="C", amount=6))
    dr, cr = transfer["debit_account_id"], transfer["credit_account_id"]
    debited, credited = book.balances(dr)[1], book.balances(cr)[3]
    book.ok(transfer)
    assert book.ledger.transfers["t"].amount == moved
    assert (book.balances(dr)[1], book.balances(cr)[3]) == (debited + moved, credited + moved)


# Idempotency


@pytest.mark.parametrize(
    "setup, first, code, fix",
    [
        ((), tr(dr="L"), "exceeds_credits", tr("f", dr="C", cr="L")),
        ((), post(), "pending_transfer_not_found", pending()),
        ((pending(flags=CLOSING_DEBIT),), tr(), "debit_account_already_closed", void("v")),
    ],
    ids=["exceeds_credits", "pending_transfer_not_found", "debit_account_already_closed"],
)
def test_transient_failure_spends_the_id_even_once_the_retry_would_succeed(book, setup, first, code, fix):
    book.ok(*setup)
    assert book.transfers(first) == [code]
    book.ok(fix)
    assert book.transfers(first) == ["id_already_failed"]
    book.ok({**first, "id": "fresh"})


@pytest.mark.parametrize(
    "first, code",
    [(tr(amount=0), "amount_must_not_be_zero"), (tr(cr="E"), "accounts_must_have_the_same_currency")],
)
def test_other_failures_leave_the_id_free(book, first, code):
    assert book.transfers(first) == [code]
    book.ok(tr())


@pytest.mark.parametrize(
    "setup, transfer",
    [
        ((), tr(code=7)),
        ((), pending(timeout_s=5)),
        ((pending(amount=10),), post()),
        ((pending(amount=10),), post(amount=4)),
        ((pending(amount=10),), void()),
        ((tr("f", dr="C", cr="L", amount=3),), tr(dr="L", amount=0, flags=BALANCING_DEBIT)),
        ((tr("f", dr="C", cr="L", amount=3),), tr(dr="L", amount=100, flags=BALANCING_DEBIT)),
    ],
    ids=["plain", "pending", "post in full", "post in part", "void", "balancing all", "balancing capped"],
)
def test_resubmitting_a_stored_transfer_answers_exists(book, setup, transfer):
    book.ok(*setup, transfer)
    before = book.state()
    assert book.transfers(transfer) == ["exists"]
    assert book.state() == before


def test_a_batch_is_never_stamped_at_time_zero():
    # Time zero marks a transfer not yet stored; a batch at zero could store one twice.
    with pytest.raises(InvariantBroken):
        apply_batch(Engine(), 0, [])


def test_resubmitting_the_stored_object_itself_moves_no_money(book):
    transfer = Transfer(**tr())
    assert create_transfers(book.engine, book.now, [transfer]) == ["ok"]
    assert create_transfers(book.engine, book.now, [transfer]) != ["ok"]
    assert book.balances("A") == (0, 1, 0, 0)


# Account queries

T1, T2 = T0 + NS, T0 + 2 * NS


@pytest.fixture
def five_transfers(book) -> Book:
    """Five transfers from A to B: t1 and t2 at T0, t3 at T1, t4 and t5 at T2."""
    book.ok(tr("t1"), tr("t2"))
    book.advance(NS)
    book.ok(tr("t3"))
    book.advance(NS)
    book.ok(tr("t4"), tr("t5"))
    return book


QUERIES = {
    "all": ({}, "t1 t2 t3 t4 t5"),
    "from": ({"timestamp_min": T1}, "t3 t4 t5"),
    "until": ({"timestamp_max": T1}, "t1 t2 t3"),
    "one instant": ({"timestamp_min": T1, "timestamp_max": T1}, "t3"),
    "limit": ({"limit": 2}, "t1 t2"),
    "after": ({"after_id": "t2", "limit": 2}, "t3 t4"),
    "after, within a batch": ({"after_id": "t1", "timestamp_max": T1}, "t2 t3"),
    "newest first": ({"newest_first": True}, "t5 t4 t3 t2 t1"),
    "newest first, after": ({"newest_first": True, "after_id": "t4"}, "t3 t2 t1"),
    "newest first, from, limit": ({"newest_first": True, "timestamp_min": T1, "limit": 2}, "t5 t4"),
    "newest first, cursor past the range": ({"newest_first": True, "after_id": "t5", "timestamp_max": T1}, "t3 t2 t1"),
    "unknown cursor": ({"after_id": "nope"}, ""),
}


@pytest.mark.parametrize("query, expected", QUERIES.values(), ids=QUERIES.keys())
@pytest.mark.parametrize("account", ["A", "B"])
def test_account_transfers(five_transfers, account, query, expected):
    assert [t.id for t in five_transfers.ledger.account_transfers(account, **query)] == expected.split()


@pytest.mark.parametrize("account", ["C", "nope"])
def test_account_transfers_of_an_account_without_any(five_transfers, account):
    assert five_transfers.ledger.account_transfers(account) == []


@pytest.mark.parametrize(
    "newest_first, pages",
    [(False, [["t1", "t2"], ["t3", "t4"], ["t5"]]), (True, [["t5", "t4"], ["t3", "t2"], ["t1"]])],
)
def test_paging_with_a_cursor_visits_each_transfer_once(five_transfers, newest_first, pages):
    seen, after = [], ""
    while page := five_transfers.ledger.account_transfers("A", limit=2, after_id=after, newest_first=newest_first):
        seen.append([t.id for t in page])
        after = page[-1].id
    assert seen == pages


def test_balance_at_answers_as_of_any_time_for_history_accounts(book):
    book.ok(tr("h1", cr="H", amount=5))
    book.advance(NS)
    book.ok(pending("h2", dr="H", cr="A", amount=3, timeout_s=1))
    book.advance(NS)  # h2 expires
    book.ok(tr("h3", dr="H", amount=1))
    expected = {
        T0 - 1: (0, 0, 0, 0),
        T0: (0, 0, 0, 5),
        T0 + NS // 2: (0, 0, 0, 5),
        T1: (3, 0, 0, 5),
        T2: (0, 1, 0, 5),
        TIMESTAMP_MAX: (0, 1, 0, 5),
    }
    assert {at: book.balance_at("H", at) for at in expected} == expected
    assert book.balance_at("A", T2) is None


# The tables above cover every code, in the engine's order of precedence.


def test_every_result_code_has_a_case():
    # internal_error answers no input, only a command that raised: test_engine_atomic.py has its cases.
    assert (*ACCOUNT_CASES, "internal_error") == ACCOUNT_CODES
    assert (*TRANSFER_CASES, "internal_error") == TRANSFER_CODES
