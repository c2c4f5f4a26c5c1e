"""A command applies whole or not at all: one that raises half-way is undone, answered internal_error, and reported.

The faults come from engine_faults (commands marked for them change state, then raise). Each test compares the
engine against a twin fed the same batches without the faulty command: the same state hash, the same results for
every other command, the same events, and the same indexes a restore would rebuild (which the hash leaves out).
"""

import copy
import sys
import unittest.mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine_faults
from engine import Account, AccountFlag, Batch, CreateAccounts, CreateTransfers, Engine, Transfer, TransferCode
from engine import TransferFlag as F
from engine.changes import Changes, untracked_containers
from engine import listing as listing_module
from engine.listing import Listing
from engine.machine import ADVANCE, UNDONE_BY_OWN_LOG, CommandFailure
from engine.records import (
    AddToBlocklist,
    BlocklistEntry,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreateSubAccount,
    Customer,
    Idempotent,
    Merchant,
    MoveWallet,
    Order,
    Outcome,
    SubAccount,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from engine.types import PendingState
from ledger_helpers import build_engine

T0 = 1_700_000_000 * S
INTERNAL_ERROR = TransferCode.internal_error


@pytest.fixture(autouse=True)
def faults(monkeypatch):
    engine_faults.install(monkeypatch.setattr, monkeypatch.setitem)


def order(oid: str, *, expires_at: int = T0 + 3600 * S, metadata: dict | None = None,
          ip: str = "10.0.0.1") -> CreateOrder:
    return CreateOrder(order=Order(id=oid, merchant_id="m1", name=oid, amount=700, currency="USD",
                                   payment_methods=["card"], expires_at=expires_at, metadata=metadata or {}),
                       client_ip=ip, ip_limit=5, ip_window_s=600)


def transfer(tid: str, debit: str, credit: str, amount: int, **fields) -> Transfer:
    return Transfer(tid, debit, credit, amount, "usd", **fields)


def setup_commands() -> list[list]:
    """Batches that leave a merchant with a sub-account, orders, a wallet, accounts of every kind and a pending hold."""
    return [
        [CreateMerchant(Merchant(id="m1", name="Shop", email="m1@example.com", api_key_hash="akh", client_id="cid")),
         CreateAccounts([Account("a", "usd"), Account("b", "usd", flags=AccountFlag.HISTORY),
                         Account("limited", "usd", flags=AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS),
                         Account("c", "usd")])],
        [CreateSubAccount("m1", SubAccount("sub1", "Branch")), order("o1"), order("o0", ip="10.0.0.2"),
         *(AddToBlocklist(BlocklistEntry(id=f"b{number}", kind="ip", value=f"10.9.9.{number}")) for number in range(3)),
         CreateCustomer(Customer(id="c1", merchant_id="m1", email="c1@example.com")),
         MoveWallet(merchant_id="m1", customer_id="c1", transfer_id="dep1", amount=500, currency="USD"),
         CreateTransfers([transfer("t0", "a", "b", 100), transfer("limited-in", "c", "limited", 50),
                          transfer("hold", "a", "b", 30, flags=F.PENDING, timeout_s=60),
                          transfer("closing", "c", "a", 1, flags=F.PENDING | F.CLOSING_DEBIT, timeout_s=60)])],
    ]


class Twin:
    """An engine fed the setup, at one second per batch."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.now = T0
        for commands in setup_commands():
            results = self.run(commands).results
            assert all(_ok(result) for result in results), results

    def run(self, commands: list, at: int | None = None):
        self.now = at if at is not None else self.now + S
        return self.engine.apply(Batch(self.engine.sequence + 1, self.now, commands))


def _ok(result) -> bool:
    return result.code == "ok" if isinstance(result, Outcome) else not any(result)


def assert_same(faulty: Engine, clean: Engine) -> None:
    """Equal states, and equal indexes: those a restore rebuilds, which the state hash leaves out."""
    assert faulty.state_hash() == clean.state_hash()
    for engine in (faulty, clean):
        engine.verify()
    assert _indexes(faulty) == _indexes(clean) == _indexes(Engine.restore(clean.snapshot()))


def _indexes(engine: Engine) -> dict:
    commerce = engine.commerce
    payments = commerce.payments
    return {
        "account transfers": {account.id: [t.id for t in account.transfers]
                              for account in engine.ledger.accounts.values()},
        "orders by merchant": _listed(commerce.orders.by_merchant),
        "payments by merchant": _listed(payments.by_merchant),
        "merchant by key": (dict(commerce.merchants.by_api_key_hash), dict(commerce.merchants.by_client_id),
                            dict(commerce.merchants.by_sub_account)),
        "payment by hold": dict(payments.payment_by_hold),
        "deadlines": [entry for entry in payments.deadlines.entries()
                      if payments.payments[entry[1]].status == "processing"],
        "ip windows": [(ip, list(times)) for ip, times in commerce.ip_windows.times_by_ip.items()],
        "block list": (list(commerce.blocklist.entries), _listed(commerce.blocklist.listing)),
        "sub accounts": {merchant.id: [sub.id for sub in merchant.sub_accounts]
                         for merchant in commerce.merchants.by_id.values()},
        "notifications": {name: _listed(getattr(commerce.notifications, name))
                          for name in ("records_by_merchant", "records_by_object", "deliveries_by_merchant")}
        | {"deliveries by event": {event_id: list(ids)
                                   for event_id, ids in commerce.notifications.deliveries_by_event.items()},
           "pending": list(commerce.notifications.pending),
           "pending by merchant": dict(commerce.notifications.pending_by_merchant),
           "replayable": {merchant_id: sorted(ids) for merchant_id, ids in commerce.notifications.replayable.items()}},
        "invoices": (_listed(commerce.invoices.by_merchant), dict(commerce.invoices.by_order)),
    }


def _listed(listing) -> dict[str, list[str]]:
    return {owner: list(listing.newest_first(owner)) for owner in sorted(listing.ids)}


def test_a_commerce_command_that_raises_half_way_changes_nothing_and_the_batch_goes_on():
    faulty, clean = Twin(), Twin()
    before = faulty.engine.state_hash()
    # The fault moves 10.0.0.1's window to the end of the windows and removes a block list entry: both go back.
    faulty_result = faulty.run([order("o2", ip="10.0.0.3"), order("o3", metadata=engine_faults.RAISE_HALF_WAY),
                                order("o4", ip="10.0.0.3")])
    clean_result = clean.run([order("o2", ip="10.0.0.3"), order("o4", ip="10.0.0.3")])
    assert faulty_result.results == [clean_result.results[0], Outcome("internal_error"), clean_result.results[1]]
    assert faulty_result.events == clean_result.events
    assert_same(faulty.engine, clean.engine)
    assert faulty.engine.state_hash() != before  # o2 and o4 were created
    [failure] = faulty.engine.failures
    assert (failure.sequence, failure.index, failure.command) == (faulty_result.sequence, 1, "CreateOrder")
    assert "HalfWay" in failure.error
    # The next batches apply as on the twin.
    assert faulty.run([order("o5")]).results == clean.run([order("o5")]).results
    assert faulty.engine.failures == []
    assert_same(faulty.engine, clean.engine)


def test_the_state_hash_is_the_one_before_the_command():
    twin = Twin()
    before = twin.engine.state_hash()
    result = twin.run([order("o9", metadata=engine_faults.RAISE_HALF_WAY)])
    assert result.results == [Outcome("internal_error")] and result.events == []
    assert twin.engine.state_hash() == before


def test_a_command_under_an_idempotency_key_that_raises_keeps_no_answer_for_its_key():
    twin = Twin()
    before = twin.engine.state_hash()
    command = lambda: Idempotent(merchant_id="m1", key="k1", request_hash="h",  # noqa: E731
                                 command=order("o9", metadata=engine_faults.RAISE_HALF_WAY))
    assert twin.run([command()]).results == [Outcome("internal_error")]
    assert twin.run([command()]).results == [Outcome("internal_error")]  # run again, not a stored answer replayed
    assert twin.engine.state_hash() == before
    ledger_command = Idempotent(merchant_id="m1", key="k2", request_hash="h", command=CreateTransfers(
        [transfer("i1", "a", "b", 1), transfer("i2", "a", "b", 1, code=engine_faults.RAISE_AT_CODE)]))
    assert twin.run([ledger_command]).results == [Outcome("internal_error", codes=[INTERNAL_ERROR] * 2)]
    assert twin.engine.state_hash() == before


def faulty_transfers() -> list[Transfer]:
    """Every kind of ledger change, then the fault: plain transfers (the hot loop), a history account, a pending
    hold with a timeout, a void (of a closing hold) and a post, a linked chain, a transfer refused on the ledger's state
    (its id spent), one refused on its own fields."""
    return [
        Transfer("void", pending_id="closing", flags=F.VOID_PENDING),  # opens c again
        transfer("p1", "a", "c", 10),
        transfer("p2", "c", "b", 5),
        transfer("h1", "b", "a", 7, flags=F.PENDING, timeout_s=5),
        Transfer("post", pending_id="hold", amount=20, flags=F.POST_PENDING),
        transfer("l1", "a", "b", 3, flags=F.LINKED),
        transfer("l2", "b", "c", 3),
        transfer("spent", "limited", "a", 1_000),  # exceeds_credits: the id is spent
        transfer("zero", "a", "b", 0),
        transfer("p3", "b", "c", 1),
        transfer("fault", "a", "b", 1, code=engine_faults.RAISE_AT_CODE),
        transfer("after", "a", "b", 1),
    ]


def test_a_ledger_command_that_raises_half_way_changes_nothing():
    faulty, clean = Twin(), Twin()
    transfers = faulty_transfers()
    result = faulty.run([CreateTransfers(transfers), CreateAccounts([Account("d", "usd")])])
    clean_result = clean.run([CreateAccounts([Account("d", "usd")])])
    assert result.results == [[INTERNAL_ERROR] * len(transfers), clean_result.results[0]]
    assert result.events == clean_result.events
    assert_same(faulty.engine, clean.engine)
    assert faulty.engine.failures == [CommandFailure(result.sequence, 0, "CreateTransfers",
                                                     faulty.engine.failures[0].error)]
    # Without the fault the same transfers apply, ids and all: the one refused on state is refused again, not "spent".
    again = [transfer for transfer in faulty_transfers() if transfer.id != "fault"]
    codes = [TransferCode.name(code) for code in faulty.run([CreateTransfers(again)]).results[0]]
    assert codes == ["ok"] * 7 + ["exceeds_credits", "amount_must_not_be_zero", "ok", "ok"]
    clean.run([CreateTransfers([transfer for transfer in faulty_transfers() if transfer.id != "fault"])])
    assert_same(faulty.engine, clean.engine)


def test_an_advance_of_time_that_raises_is_undone_and_the_commands_still_apply():
    twin = Twin()
    expiry = twin.now + 10 * S
    twin.run([order("late", expires_at=expiry, metadata=engine_faults.RAISE_AT_EXPIRY)])
    before = twin.engine.state_hash()
    # By then the holds (60 s) are due too: the ledger releases them in the same advance, before the order expires.
    later = expiry + 60 * S
    result = twin.run([], at=later)
    assert result.results == [] and result.events == []
    [failure] = twin.engine.failures
    assert (failure.sequence, failure.index, failure.command) == (result.sequence, -1, ADVANCE)
    assert twin.engine.state_hash() == before
    assert twin.engine.ledger.pending_states["hold"] == PendingState.PENDING
    twin.engine.verify()
    # The next batch meets the same fault, and its commands apply all the same.
    result = twin.run([order("o7")])
    assert result.results[0].code == "ok" and twin.engine.commerce.orders.by_id["o7"].status == "pending"
    assert [failure.index for failure in twin.engine.failures] == [-1]


def test_every_piece_of_commerce_state_is_tracked():
    assert untracked_containers(Engine().commerce, skip=UNDONE_BY_OWN_LOG) == []
    assert untracked_containers(Engine.restore(Twin().engine.snapshot()).commerce, skip=UNDONE_BY_OWN_LOG) == []
    commerce = Engine().commerce
    commerce.payments.extra = {}
    assert untracked_containers(commerce, skip=UNDONE_BY_OWN_LOG) == ["commerce.payments.extra"]
    assert any(path.endswith("ledger.accounts") for path in untracked_containers(commerce))  # unless skipped


# `make test` runs the engine and journal tests again under python -O (PYTHONOPTIMIZE): the engine's own asserts are
# gone there, so any check that an assert did vanishes with them. These say the tests' checks are still alive.


def test_a_test_modules_assert_runs_whatever_the_optimization():
    with pytest.raises(AssertionError):
        assert sys.flags.optimize < 0  # rewritten by pytest into a plain raise, which -O keeps


def test_a_test_helpers_assert_runs_whatever_the_optimization():
    with pytest.raises(AssertionError):
        build_engine(T0, [Account("", "usd")])  # its own assert: every account created


# The containers themselves: any sequence of writes within a command, undone, leaves them as they were.

KEYS = st.sampled_from("abcdefgh")
DICT_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("set"), KEYS, st.integers(0, 9)),
    st.tuples(st.just("pop"), KEYS, st.none()),
    st.tuples(st.just("delete_oldest"), st.none(), st.none()),
    st.tuples(st.just("move_to_end"), KEYS, st.integers(0, 9)),
    st.tuples(st.just("append"), KEYS, st.integers(0, 9)),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(start=st.dictionaries(KEYS, st.integers(0, 9)), operations=DICT_OPERATIONS,
       mode=st.sampled_from(["ordered", "ranked", "unordered"]))
def test_a_tracked_dict_undone_is_as_the_command_found_it(start, operations, mode):
    changes = Changes()
    tracked = changes.dict(ordered=mode != "unordered", ranked=mode == "ranked")
    lists = changes.dict()
    tracked.load(start.items())
    lists.load((key, [value]) for key, value in start.items())
    changes.begin()
    for operation, key, value in operations:
        if operation == "set":
            tracked[key] = value
        elif operation == "pop":
            tracked.pop(key, None)
        elif operation == "delete_oldest" and tracked:
            del tracked[next(iter(tracked))]
        elif operation == "move_to_end":
            tracked.pop(key, None)
            tracked[key] = value
        else:
            lists.setdefault(key, []).append(value)
    changes.undo()
    items = list(tracked.items())
    assert (items if mode != "unordered" else sorted(items)) == list(start.items() if mode != "unordered"
                                                                     else sorted(start.items()))
    assert list(lists.items()) == [(key, [value]) for key, value in start.items()]
    # And the next command finds it tracked afresh.
    changes.begin()
    tracked["z"] = 1
    changes.undo()
    assert "z" not in tracked


LISTING_OPERATIONS = st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from("xy"),
                                         st.integers(0, 11)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(start=st.lists(st.tuples(st.just("add"), st.sampled_from("xy"), st.integers(0, 11)), max_size=24),
       operations=LISTING_OPERATIONS)
def test_a_listing_undone_lists_what_it_listed_in_its_places(start, operations):
    changes = Changes()
    listing = Listing(changes)

    def run(steps) -> None:
        for operation, owner, number in steps:
            item_id = f"{owner}{number}"
            if operation == "add" and not listing.has(item_id):
                listing.add(owner, item_id)
            elif operation == "remove" and listing.has(item_id):
                listing.remove(owner, item_id)
    with unittest.mock.patch.object(listing_module, "MIN_PACK_PLACES", 2):  # packs come within a few removes
        run(start)
        before = (copy.deepcopy(listing.ids), dict(listing.places), dict(listing.counts))
        changes.begin()
        run(operations)
        changes.undo()
    assert (listing.ids, listing.places, listing.counts) == before
    changes.begin()  # and the next command's changes are its own
    run([("add", "z", 1)])
    changes.commit()
    assert listing.has("z1") and listing.log == []


@settings(max_examples=200, deadline=None)
@given(start=st.lists(st.tuples(st.integers(0, 20), st.sampled_from("abcdef")), max_size=10),
       operations=st.lists(st.one_of(st.tuples(st.just("set"), st.integers(0, 20), st.sampled_from("abcdefgh")),
                                     st.tuples(st.just("drop"), st.just(0), st.sampled_from("abcdefgh")),
                                     st.tuples(st.just("pop"), st.integers(0, 20), st.just(""))),
                           max_size=30),
       sweep_at=st.integers(1, 8))
def test_a_schedule_undone_holds_what_it_held(start, operations, sweep_at):
    changes = Changes()
    schedule = changes.schedule()
    schedule.load(start)
    schedule.sweep_at = sweep_at  # sweeps inside the command too
    before = schedule.entries()
    changes.begin()
    for operation, time, key in operations:
        if operation == "set":
            schedule.set(key, time)
        elif operation == "drop":
            schedule.drop(key)
        else:
            schedule.pop_due(time)
    changes.undo()
    assert schedule.entries() == before
    assert schedule.pop_due(20) == [key for _, key in before]
    assert len(schedule.heap) == 0


@settings(max_examples=200, deadline=None)
@given(operations=st.lists(st.tuples(st.sampled_from(["set", "drop"]), st.integers(0, 1000), st.integers(0, 30)),
                           max_size=400))
def test_a_schedule_holds_at_most_about_twice_its_live_keys_and_answers_them_in_time_order(operations):
    changes = Changes()
    schedule = changes.schedule()
    schedule.sweep_at = 16
    live = {}
    for operation, time, key in operations:
        if operation == "set":
            schedule.set(key, time)
            live[key] = time
        else:
            schedule.drop(key)
            live.pop(key, None)
        assert len(schedule.heap) <= max(16, 2 * len(live) + 1)
    assert schedule.pop_due(1000) == [key for time, key in sorted((time, key) for key, time in live.items())]


@settings(max_examples=200, deadline=None)
@given(start=st.lists(st.integers(0, 20), max_size=10),
       operations=st.lists(st.one_of(st.tuples(st.just("append"), st.integers(0, 20)), st.just(("popleft", 0))),
                           max_size=20))
def test_a_tracked_deque_undone_holds_what_it_held_in_its_order(start, operations):
    changes = Changes()
    window = changes.deque(start)
    changes.begin()
    for operation, value in operations:
        if operation == "append":
            window.append(value)
        elif window:
            window.popleft()
    changes.undo()
    assert list(window) == start
    changes.begin()
    window.append(99)
    changes.commit()  # kept, and the log starts afresh
    assert list(window) == [*start, 99] and not changes.deque_log
    with pytest.raises(TypeError):
        window.appendleft(1)
