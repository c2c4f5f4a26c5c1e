"""Merchants, orders, customers, wallets and idempotency keys: the engine's commerce state machines.

Every command is built fresh for each submission, because the engine takes
ownership of (and mutates) what it is given. Every test runs on a `Shop`: an
engine holding merchants m1 and m2, with a clock that moves one second per
batch unless told otherwise; every engine a test builds is verified after it.
Orders get a far-off expiry by default; `expires_at=0` means none.
"""

from collections import Counter
from collections.abc import Callable

import msgspec
import pytest

from engine import Account, Command, CreateAccounts, CreateTransfers, Transfer, TransferCode
from engine.idempotency import IDEMPOTENCY_RETENTION_NS as RETENTION
from engine.queries import GetCustomer, GetMerchant, GetOrder, ListMerchants, ListOrders, LookupAccounts
from engine.records import (
    AddDashboardUser,
    AdmitOrderIp,
    CancelOrder,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreateSubAccount,
    Customer,
    DashboardUser,
    Idempotent,
    Merchant,
    MoveWallet,
    Order,
    Outcome,
    PayOrderFromWallet,
    SubAccount,
    UpdateMerchant,
    UpdateOrder,
    system_account_id,
    wallet_account_id,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from engine.types import Event
from ledger_helpers import Driver

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
FAR = T0 + 10**6 * S  # default order expiry: later than any test's clock
WINDOW = 600 * S

# Builders: a fresh object on every call


def merchant(mid: str, **fields) -> Merchant:
    defaults = dict(name=f"Shop {mid}", email=f"{mid}@example.com", api_key_hash=f"akh-{mid}", client_id=f"cid-{mid}")
    return Merchant(id=mid, **{**defaults, **fields})


def order(oid: str, mid: str = "m1", amount: int = 10, *, name: str = "", methods=("wallet", "card"),
          expires_at: int = FAR, **fields) -> Order:
    return Order(id=oid, merchant_id=mid, name=name or f"Order {oid}", amount=amount, currency="USD",
                 payment_methods=list(methods), expires_at=expires_at, **fields)


def create(oid: str, mid: str = "m1", amount: int = 10, *, ip: str = "", ip_limit: int = 0, **fields) -> CreateOrder:
    return CreateOrder(order=order(oid, mid, amount, **fields), client_ip=ip, ip_limit=ip_limit, ip_window_s=600)


def customer(cid: str, mid: str = "m1") -> CreateCustomer:
    return CreateCustomer(Customer(id=cid, merchant_id=mid, email=f"{cid}@example.com"))


def deposit(cid: str, tid: str, amount: int, mid: str = "m1") -> MoveWallet:
    return MoveWallet(merchant_id=mid, customer_id=cid, transfer_id=tid, amount=amount, currency="USD")


def withdraw(cid: str, tid: str, amount: int, mid: str = "m1") -> MoveWallet:
    return MoveWallet(merchant_id=mid, customer_id=cid, transfer_id=tid, amount=amount, currency="USD", withdrawal=True)


def pay(oid: str, cid: str, tid: str, mid: str = "m1") -> PayOrderFromWallet:
    return PayOrderFromWallet(merchant_id=mid, order_id=oid, customer_id=cid, payment_id=f"pay_{tid}", transfer_id=tid)


def idem(key: str, command, mid: str = "m1", request_hash: str = "h1") -> Idempotent:
    return Idempotent(merchant_id=mid, key=key, request_hash=request_hash, command=command)


def plain(value) -> dict:
    """A struct as builtins: a copy that later mutation of engine-owned records cannot touch."""
    return msgspec.to_builtins(value)


# The shop

class Shop(Driver):
    def order(self, oid: str, mid: str = "m1") -> Order | None:
        return self.query(GetOrder(mid, oid)).record

    def balance(self, account_id: str) -> int:
        """Credits minus debits (posted), 0 for an account that does not exist yet."""
        account = self.query(LookupAccounts([account_id])).accounts[0]
        return 0 if account is None else account.credits_posted - account.debits_posted

    def wallet(self, cid: str, mid: str = "m1") -> int:
        return self.balance(wallet_account_id(mid, cid, "USD"))

    def takings(self, mid: str = "m1") -> int:
        return self.balance(system_account_id(mid, "balance", "USD"))



@pytest.fixture
def shop() -> Shop:
    shop = Shop()
    shop.ok(CreateMerchant(merchant("m1")), CreateMerchant(merchant("m2")), at=T0)
    return shop


@pytest.fixture
def wallets(shop: Shop) -> Shop:
    """Customer c1 of m1 holds 100 in its wallet; c2 of m2 holds 100; m1 has pending order o1 (amount 10)."""
    shop.ok(customer("c1"), customer("c2", "m2"), deposit("c1", "dep-c1", 100), deposit("c2", "dep-c2", 100, "m2"),
            create("o1"))
    return shop


# 1. Merchants


def test_create_merchant_returns_the_record_stamped_with_the_batch_time(shop: Shop):
    outcome = shop.do(CreateMerchant(merchant("m3", tier="gold")))
    assert outcome.code == "ok"
    assert (outcome.record.id, outcome.record.tier) == ("m3", "gold")
    assert outcome.record.created_at == outcome.record.updated_at == shop.now
    assert plain(shop.query(GetMerchant(merchant_id="m3")).record) == plain(outcome.record)


def test_duplicate_merchant_is_exists_and_changes_nothing(shop: Shop):
    outcome = shop.refused(CreateMerchant(merchant("m1", name="Impostor", api_key_hash="akh-x")), "exists")
    assert outcome.record is None
    assert shop.query(GetMerchant(merchant_id="m1")).record.name == "Shop m1"
    assert shop.query(GetMerchant(api_key_hash="akh-x")).record is None


@pytest.mark.parametrize("field, value", [
    ("webhook_url", "https://m1.example.com/hook"),
    ("tier", "gold"),
    ("ip_allowlist", ["10.0.0.1", "10.0.0.2"]),
    ("status", "suspended"),
    ("require_signature", True),
])
def test_update_merchant_changes_only_the_given_field(shop: Shop, field: str, value):
    before = plain(shop.query(GetMerchant(merchant_id="m1")).record)
    outcome = shop.do(UpdateMerchant(merchant_id="m1", **{field: value}))
    assert outcome.code == "ok"
    assert plain(outcome.record) == {**before, field: value, "updated_at": shop.now}
    assert plain(shop.query(GetMerchant(merchant_id="m1")).record) == plain(outcome.record)


def test_update_unknown_merchant_is_merchant_not_found(shop: Shop):
    shop.refused(UpdateMerchant(merchant_id="ghost", tier="gold"), "merchant_not_found")


def test_sub_account_is_added_once(shop: Shop):
    outcome = shop.do(CreateSubAccount("m1", SubAccount("sa1", "Branch")))
    assert outcome.code == "ok"
    assert [(s.id, s.name, s.created_at) for s in outcome.record.sub_accounts] == [("sa1", "Branch", shop.now)]
    shop.refused(CreateSubAccount("m1", SubAccount("sa1", "Again")), "exists")
    shop.refused(CreateSubAccount("ghost", SubAccount("sa2", "Nowhere")), "merchant_not_found")
    assert [s.name for s in shop.query(GetMerchant(merchant_id="m1")).record.sub_accounts] == ["Branch"]
    assert shop.query(GetMerchant(merchant_id="m2")).record.sub_accounts == []


@pytest.mark.parametrize("lookup, expected", [
    (dict(merchant_id="m2"), "m2"),
    (dict(api_key_hash="akh-m2"), "m2"),
    (dict(client_id="cid-m1"), "m1"),
    (dict(merchant_id="ghost"), None),
    (dict(api_key_hash="akh-ghost"), None),
    (dict(client_id="cid-ghost"), None),
])
def test_get_merchant(shop: Shop, lookup: dict, expected: str | None):
    record = shop.query(GetMerchant(**lookup)).record
    assert (record and record.id) == expected


# 2. Orders


def test_create_order_is_pending_and_stamped(shop: Shop):
    outcome = shop.do(create("o1", status="paid", note="hi"))  # a submitted status is ignored
    assert outcome.code == "ok"
    assert (outcome.record.status, outcome.record.note) == ("pending", "hi")
    assert outcome.record.created_at == outcome.record.updated_at == shop.now
    assert plain(shop.order("o1")) == plain(outcome.record)


@pytest.mark.parametrize("command, code", [
    (lambda: create("o2", mid="ghost"), "merchant_not_found"),
    (lambda: create("o1", name="Again"), "exists"),
    (lambda: create("o1", mid="m2"), "exists"),  # order ids are global
])
def test_create_order_refusals(shop: Shop, command: Callable, code: str):
    shop.ok(create("o1"))
    shop.refused(command(), code)
    assert shop.order("o1").name == "Order o1"


@pytest.mark.parametrize("first_batch_after", [0, 1, 7 * S])
def test_order_expires_in_the_first_batch_at_or_after_its_time(shop: Shop, first_batch_after: int):
    expires = shop.now + 60 * S
    shop.ok(create("o1", expires_at=expires), create("o2", expires_at=expires + 10 * S))
    assert shop.run(at=expires - 1).events == []
    assert shop.order("o1").status == "pending"
    result = shop.run(at=expires + first_batch_after)
    assert result.events == [Event("order.expired", "o1", shop.now)]
    assert (shop.order("o1").status, shop.order("o1").updated_at) == ("expired", shop.now)
    assert shop.order("o2").status == "pending"
    assert shop.run(at=expires + 10 * S).events == [Event("order.expired", "o2", shop.now)]  # o1 expires once


@pytest.mark.parametrize("shift", [+100 * S, -30 * S])
def test_updating_expires_at_moves_the_expiry(shop: Shop, shift: int):
    old = shop.now + 60 * S
    new = old + shift
    shop.ok(create("o1", expires_at=old))
    shop.ok(UpdateOrder(merchant_id="m1", order_id="o1", expires_at=new))
    first, second = sorted((old, new))
    events = shop.run(at=first).events
    if first == old:  # the stale heap entry must not expire it
        assert (events, shop.order("o1").status) == ([], "pending")
        events = shop.run(at=second).events
    assert events == [Event("order.expired", "o1", new)]
    assert shop.order("o1").status == "expired"
    assert shop.run(at=max(old, new)).events == []


def test_order_without_expiry_stays_pending(shop: Shop):
    shop.ok(create("o1", expires_at=0))
    assert shop.run().events == []
    assert shop.order("o1").status == "pending"


def test_an_expiry_given_as_a_duration_counts_from_the_batch_time(shop: Shop):
    shop.ok(CreateOrder(order=order("o1", expires_at=0), expires_in_s=60))
    created = shop.order("o1")
    assert created.expires_at == created.created_at + 60 * S == shop.now + 60 * S
    shop.ok(UpdateOrder(merchant_id="m1", order_id="o1", expires_in_s=120))
    deadline = shop.now + 120 * S
    assert shop.order("o1").expires_at == deadline
    assert shop.run(at=deadline - 1).events == []
    assert shop.run(at=deadline).events == [Event("order.expired", "o1", deadline)]


def test_an_expiry_duration_out_of_range_is_refused(shop: Shop):
    shop.ok(create("o1"))
    for command in (CreateOrder(order=order("o2", expires_at=0), expires_in_s=-1),
                    CreateOrder(order=order("o2", expires_at=0), expires_in_s=2**63 // S),
                    UpdateOrder(merchant_id="m1", order_id="o1", name="Renamed", expires_in_s=-1)):
        shop.refused(command, "expires_in_invalid")
    assert (shop.order("o1").name, shop.order("o1").expires_at, shop.order("o2")) == ("Order o1", FAR, None)


def test_a_journaled_order_command_with_an_absolute_expiry_applies_as_before(shop: Shop):
    """Commands journaled before durations carry the instant: decoded from their old encoding, they keep it."""
    decoder = msgspec.msgpack.Decoder(Command)
    created = decoder.decode(msgspec.msgpack.encode(["create_order", order("o1", expires_at=FAR), "", 0, 600]))
    updated = decoder.decode(msgspec.msgpack.encode(["update_order", "m1", "o1", None, None, None, FAR + S]))
    assert (type(created), created.expires_in_s, type(updated), updated.expires_in_s) == (
        CreateOrder, None, UpdateOrder, None)
    shop.ok(created)
    assert shop.order("o1").expires_at == FAR
    shop.ok(updated)
    assert shop.order("o1").expires_at == FAR + S


@pytest.mark.parametrize("field, value", [("name", "Renamed"), ("note", "gift wrap"), ("amount", 99)])
def test_update_pending_order_changes_only_the_given_field(shop: Shop, field: str, value):
    shop.ok(create("o1"))
    before = plain(shop.order("o1"))
    outcome = shop.do(UpdateOrder(merchant_id="m1", order_id="o1", **{field: value}))
    assert outcome.code == "ok"
    assert plain(outcome.record) == {**before, field: value, "updated_at": shop.now}


LEAVE_PENDING = {
    "cancelled": lambda shop: shop.ok(CancelOrder("m1", "o1")),
    "expired": lambda shop: shop.run(at=shop.order("o1").expires_at),
    "paid": lambda shop: shop.ok(pay("o1", "c1", "pay-o1")),
}


@pytest.mark.parametrize("status", LEAVE_PENDING)
@pytest.mark.parametrize("command", [
    lambda: UpdateOrder(merchant_id="m1", order_id="o1", name="Late"),
    lambda: UpdateOrder(merchant_id="m1", order_id="o1", amount=1),
    lambda: CancelOrder("m1", "o1"),
    lambda: pay("o1", "c1", "pay-again"),
], ids=["update-name", "update-amount", "cancel", "pay"])
def test_only_pending_orders_change(wallets: Shop, status: str, command: Callable):
    LEAVE_PENDING[status](wallets)
    assert wallets.order("o1").status == status
    outcome = wallets.refused(command(), "order_not_pending")
    assert outcome.record.status == status


def test_cancel_pending_order(shop: Shop):
    shop.ok(create("o1"))
    outcome = shop.do(CancelOrder("m1", "o1"))
    assert (outcome.code, outcome.record.status, outcome.record.updated_at) == ("ok", "cancelled", shop.now)
    shop.refused(CancelOrder("m1", "o1"), "order_not_pending")


@pytest.mark.parametrize("command", [
    lambda: UpdateOrder(merchant_id="m2", order_id="o1", name="Mine now"),
    lambda: CancelOrder("m2", "o1"),
    lambda: pay("o1", "c2", "steal", mid="m2"),
    lambda: UpdateOrder(merchant_id="m1", order_id="ghost", name="x"),
], ids=["update", "cancel", "pay", "unknown"])
def test_another_merchants_order_is_not_found(wallets: Shop, command: Callable):
    wallets.refused(command(), "order_not_found")
    assert wallets.order("o1", mid="m2") is None
    assert wallets.order("o1").status == "pending"
    assert wallets.wallet("c2", "m2") == 100


# 3. IP rate limit on CreateOrder


def test_ip_rate_limit_admits_ten_per_window(shop: Shop):
    shop.ok(*(create(f"a{i}", ip="1.1.1.1", ip_limit=10) for i in range(9)))
    start = shop.now
    shop.ok(create("a9", ip="1.1.1.1", ip_limit=10), at=start + 300 * S)
    shop.refused(create("a10", ip="1.1.1.1", ip_limit=10), "rate_limited")
    assert shop.order("a10") is None
    shop.ok(create("b0", ip="2.2.2.2", ip_limit=10))  # another IP is unaffected
    shop.ok(create("u0"))  # and so is an order without a limit
    assert shop.do(create("a10", ip="1.1.1.1", ip_limit=10), at=start + WINDOW - 1).code == "rate_limited"
    # The nine from `start` leave the window; the one at +300 s is still in it.
    shop.ok(*(create(f"a{i}", ip="1.1.1.1", ip_limit=10) for i in range(10, 19)), at=start + WINDOW)
    assert shop.do(create("a19", ip="1.1.1.1", ip_limit=10)).code == "rate_limited"


def admit(ip: str = "1.1.1.1", ip_limit: int = 3) -> AdmitOrderIp:
    return AdmitOrderIp(client_ip=ip, ip_limit=ip_limit, ip_window_s=600)


def test_admit_order_ip_counts_attempts_in_the_ips_one_window(shop: Shop):
    start = shop.now + S
    shop.ok(admit(), create("o1", ip="1.1.1.1", ip_limit=3), at=start)  # orders made here share the window
    shop.ok(admit(), at=start + 100 * S)
    refusal = shop.refused(admit(), "rate_limited")
    assert refusal.retry_after_s == 600 - 101  # until the first two leave the window
    assert shop.do(create("o2", ip="1.1.1.1", ip_limit=3)).code == "rate_limited"
    shop.ok(admit("2.2.2.2"), admit(ip_limit=0))  # another IP, and no limit, are unaffected
    assert shop.do(admit(), at=start + WINDOW - 1).retry_after_s == 1
    shop.ok(admit(), admit(), at=start + WINDOW)  # the two from `start` left the window
    assert shop.do(admit(), at=start + WINDOW + 99 * S).retry_after_s == 1


def test_an_address_idle_for_a_window_is_forgotten(shop: Shop):
    start = shop.now + S
    shop.ok(*(admit(f"10.0.0.{i}") for i in range(4)), at=start)
    shop.ok(admit("10.0.0.3"), at=start + 100 * S)
    shop.ok(admit("10.0.1.0"), at=start + WINDOW)  # each admission forgets up to two idle addresses, oldest first
    shop.ok(admit("10.0.1.1"))
    assert list(shop.engine.commerce.ip_windows.times_by_ip) == ["10.0.0.3", "10.0.1.0", "10.0.1.1"]
    assert shop.do(admit("10.0.0.3", ip_limit=1)).code == "rate_limited"  # its order at +100 s is still counted
    copy = shop.restored()
    assert list(copy.engine.commerce.ip_windows.times_by_ip) == list(shop.engine.commerce.ip_windows.times_by_ip)
    assert copy.engine.state_hash() == shop.engine.state_hash()


def test_an_admission_replayed_under_its_key_takes_no_slot(shop: Shop):
    shop.ok(idem("k1", admit(ip_limit=1)))
    replay = shop.do(idem("k1", admit(ip_limit=1)))
    assert (replay.code, replay.replayed) == ("ok", True)
    assert shop.do(idem("k2", admit(ip_limit=1))).code == "rate_limited"
    copy = shop.restored()  # the window survives a snapshot
    assert copy.engine.state_hash() == shop.engine.state_hash()
    assert copy.do(admit(ip_limit=1)).code == "rate_limited"


# 4. ListOrders

LISTED = [  # (id, name, cancelled): m1's orders, one batch each, a second apart, oldest first
    ("o0", "Blue Shirt", False), ("o1", "red hat", False), ("o2", "T-SHIRT large", True),
    ("o3", "socks", False), ("o4", "shirt & tie", True), ("o5", "Hat, wool", False), ("o6", "shirtless", False),
]


@pytest.fixture
def listed(shop: Shop) -> tuple[Shop, dict[str, int]]:
    """m1's LISTED orders, with m2's orders in between; the creation time of each m1 order."""
    created = {}
    for oid, name, cancelled in LISTED:
        shop.ok(create(oid, name=name), create(f"m2-{oid}", "m2", name=name))
        created[oid] = shop.now
    shop.ok(*(CancelOrder("m1", oid) for oid, _, cancelled in LISTED if cancelled))
    return shop, created


def expected_ids(created: dict[str, int], name_contains="", status="", created_gte=0, created_lt=2**63 - 1, **_):
    found = []
    for oid, name, cancelled in reversed(LISTED):
        if (name_contains.lower() in name.lower() and status in ("", "cancelled" if cancelled else "pending")
                and created_gte <= created[oid] < created_lt):
            found.append(oid)
    return found


def list_ids(shop: Shop, **filters) -> tuple[list[str], bool]:
    answer = shop.query(ListOrders(merchant_id="m1", **filters))
    return [o.id for o in answer.records], answer.has_more


@pytest.mark.parametrize("filters", [
    {}, {"name_contains": "shirt"}, {"name_contains": "SHIRT"}, {"name_contains": "hat"}, {"name_contains": "none"},
    {"status": "pending"}, {"status": "cancelled"}, {"status": "paid"},
    {"created_gte": "o3"}, {"created_lt": "o3"}, {"created_gte": "o1", "created_lt": "o5"},
    {"created_gte": "o1", "created_lt": "o6", "status": "pending", "name_contains": "h"},
])
def test_list_orders_filters_newest_first(listed, filters: dict):
    shop, created = listed
    filters = {k: created[v] if k.startswith("created") else v for k, v in filters.items()}
    assert list_ids(shop, **filters) == (expected_ids(created, **filters), False)


@pytest.mark.parametrize("limit, has_more", [(1, True), (6, True), (7, False), (20, False)])
def test_list_orders_limit_and_has_more(listed, limit: int, has_more: bool):
    shop, created = listed
    assert list_ids(shop, limit=limit) == (expected_ids(created)[:limit], has_more)


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
@pytest.mark.parametrize("filters", [{}, {"name_contains": "shirt"}, {"status": "pending"}])
def test_list_orders_pages_walk_everything_once(listed, limit: int, filters: dict):
    shop, created = listed
    walked, after, has_more = [], "", True
    while has_more:
        page, has_more = list_ids(shop, limit=limit, starting_after=after, **filters)
        assert page and len(page) <= limit
        walked += page
        after = page[-1]
    assert walked == expected_ids(created, **filters)


@pytest.mark.parametrize("after", ["m2-o3", "ghost"])
def test_list_orders_starting_after_a_foreign_order_is_empty(listed, after: str):
    shop, _ = listed
    assert list_ids(shop, starting_after=after) == ([], False)



def test_merchants_are_listed_newest_first_by_name_with_a_cursor(shop: Shop):
    shop.ok(CreateMerchant(merchant("m3", name="Tea House")))
    # made in one batch, the later one with the smaller id: the id breaks the tie, so pages never skip or repeat one
    shop.ok(CreateMerchant(merchant("m5", name="tea garden")), CreateMerchant(merchant("m4", name="Books")))

    def ids(**filters) -> tuple[list[str], bool]:
        answer = shop.query(ListMerchants(**filters))
        return [record.id for record in answer.records], answer.has_more

    assert ids() == (["m5", "m4", "m3", "m2", "m1"], False)
    assert ids(limit=2) == (["m5", "m4"], True)
    assert ids(name_contains="TEA") == (["m5", "m3"], False)
    m4 = shop.query(GetMerchant(merchant_id="m4")).record
    assert ids(created_before=m4.created_at, before_id="m4") == (["m3", "m2", "m1"], False)
    m5 = shop.query(GetMerchant(merchant_id="m5")).record
    assert ids(created_before=m5.created_at, before_id="m5", limit=1) == (["m4"], True)


# 5. Customers and wallets


def test_create_customer(shop: Shop):
    outcome = shop.do(customer("c1"))
    assert (outcome.code, outcome.record.id, outcome.record.created_at) == ("ok", "c1", shop.now)
    assert shop.query(GetCustomer("m1", "c1")).record.email == "c1@example.com"
    assert shop.query(GetCustomer("m2", "c1")).record is None
    # By e-mail, in any case: the merchant's own customers only, the first made with the address.
    shop.ok(CreateCustomer(Customer(id="c2", merchant_id="m1", email="C1@Example.com")))
    assert shop.query(GetCustomer("m1", "", "c1@EXAMPLE.com")).record.id == "c1"
    assert shop.query(GetCustomer("m2", "", "c1@example.com")).record is None
    assert shop.query(GetCustomer("m1", "", "")).record is None
    shop.refused(customer("c1", "m2"), "exists")
    shop.refused(customer("c9", "ghost"), "merchant_not_found")


def test_wallet_deposit_then_withdrawals(shop: Shop):
    shop.ok(customer("c1"))
    assert shop.do(deposit("c1", "d1", 100)).code == "ok"
    assert shop.wallet("c1") == 100
    assert shop.do(withdraw("c1", "w1", 30)).code == "ok"
    assert shop.wallet("c1") == 70
    assert shop.do(withdraw("c1", "w2", 71)).code == "insufficient_funds"
    assert shop.do(withdraw("c1", "w3", 70)).code == "ok"
    assert shop.wallet("c1") == 0
    assert shop.balance(system_account_id("m1", "deposits", "USD")) == -100
    assert shop.balance(system_account_id("m1", "withdrawals", "USD")) == 100


@pytest.mark.parametrize("command", [
    lambda: deposit("ghost", "d", 5),
    lambda: withdraw("ghost", "w", 5),
    lambda: deposit("c2", "d", 5),  # m2's customer, named by m1
    lambda: withdraw("c2", "w", 5),
    lambda: deposit("c1", "d", 5, mid="m2"),
])
def test_wallet_of_unknown_or_foreign_customer_is_customer_not_found(wallets: Shop, command: Callable):
    wallets.refused(command(), "customer_not_found")
    assert (wallets.wallet("c1"), wallets.wallet("c2", "m2")) == (100, 100)


# 6. PayOrderFromWallet


def test_pay_order_from_wallet(wallets: Shop):
    result = wallets.ok(pay("o1", "c1", "pay-o1"))
    payment = result.results[0].record
    assert (payment.id, payment.status, payment.method, payment.customer_id) == ("pay_pay-o1", "succeeded", "wallet", "c1")
    assert result.events == [Event("payment.succeeded", "pay_pay-o1", wallets.now), Event("order.paid", "o1", wallets.now)]
    assert (wallets.wallet("c1"), wallets.takings()) == (90, 10)
    order = wallets.order("o1")
    assert (order.status, order.payment_id, order.customer_id) == ("paid", "pay_pay-o1", "c1")


@pytest.mark.parametrize("make_order, command, code", [
    (lambda: create("o9", amount=101), lambda: pay("o9", "c1", "t9"), "insufficient_funds"),
    (lambda: create("o9", methods=["card"]), lambda: pay("o9", "c1", "t9"), "payment_method_not_allowed"),
    (lambda: create("o9"), lambda: pay("o9", "ghost", "t9"), "customer_not_found"),
    (lambda: create("o9"), lambda: pay("o9", "c2", "t9"), "customer_not_found"),
    (lambda: create("o9"), lambda: pay("o9", "c2", "t9", mid="m2"), "order_not_found"),
])
def test_pay_refusals_move_nothing(wallets: Shop, make_order: Callable, command: Callable, code: str):
    wallets.ok(make_order())
    if code == "insufficient_funds":
        # The ledger spends the failed transfer id (and may open the balance account), so only money is compared.
        assert wallets.do(command()).code == code
    else:
        wallets.refused(command(), code)
    assert wallets.order("o9").status == "pending"
    assert (wallets.wallet("c1"), wallets.wallet("c2", "m2"), wallets.takings(), wallets.takings("m2")) == (100, 100, 0, 0)


def test_a_wallet_pays_an_amount_without_an_order_and_never_below_zero(wallets: Shop):
    command = PayOrderFromWallet(merchant_id="m1", order_id="", customer_id="c1", payment_id="pay_w",
                                 transfer_id="m1:pay_w", amount=60, currency="USD")
    result = wallets.ok(msgspec.structs.replace(command))
    payment = result.results[0].record
    assert (payment.status, payment.amount, payment.currency, payment.order_id) == ("succeeded", 60, "USD", "")
    assert result.events == [Event("payment.succeeded", "pay_w", wallets.now)]
    assert (wallets.wallet("c1"), wallets.takings()) == (40, 60)
    for changes, code in (({"amount": 41}, "insufficient_funds"), ({"currency": "EUR"}, "insufficient_funds"),
                          ({"amount": 0}, "amount_must_not_be_zero"), ({"customer_id": "c2"}, "customer_not_found"),
                          ({"payment_id": "pay_w", "transfer_id": "m1:other"}, "exists")):
        again = msgspec.structs.replace(command, payment_id="pay_x", transfer_id="m1:pay_x")
        wallets.refused(msgspec.structs.replace(again, **changes), code)
    assert (wallets.wallet("c1"), wallets.takings()) == (40, 60)


@pytest.mark.parametrize("batches", [1, 4, 300])
def test_wallet_pays_exactly_what_it_holds(shop: Shop, batches: int):
    shop.ok(customer("c1"), deposit("c1", "d1", 100), *(create(f"p{i}", amount=1, methods=["wallet"]) for i in range(300)))
    codes, paid_events = Counter(), 0
    for part in range(batches):
        result = shop.run(*(pay(f"p{i}", "c1", f"t{i}") for i in range(part, 300, batches)))
        codes.update(outcome.code for outcome in result.results)
        paid_events += sum(event.kind == "order.paid" for event in result.events)
    assert codes == {"ok": 100, "insufficient_funds": 200}
    assert paid_events == 100
    assert (shop.wallet("c1"), shop.takings()) == (0, 100)
    assert len(shop.query(ListOrders(merchant_id="m1", status="paid", limit=1000)).records) == 100
    shop.engine.verify()


# 7. Idempotency keys

WRAPPED = {
    "create_order": lambda: create("o-new"),
    "pay": lambda: pay("o1", "c1", "pay-o1"),
    "deposit": lambda: deposit("c1", "dep-2", 5),
    "cancel": lambda: CancelOrder("m1", "o1"),
    "refused": lambda: pay("o1", "ghost", "pay-x"),
}


@pytest.mark.parametrize("wrapped", WRAPPED)
def test_idempotent_replays_the_first_outcome_and_changes_nothing(wallets: Shop, wrapped: str):
    first = wallets.do(idem("k1", WRAPPED[wrapped]()))
    assert not first.replayed
    first = plain(first)
    after_first = wallets.engine.state_hash()
    for copies in (1, 2):  # in a later batch, and twice in one batch
        result = wallets.run(*(idem("k1", WRAPPED[wrapped]()) for _ in range(copies)))
        for outcome in result.results:
            again = plain(outcome)
            assert again.pop("replayed") is True
            assert again == first
        assert result.events == []
        assert wallets.engine.state_hash() == after_first
    assert wallets.wallet("c1") == {"pay": 90, "deposit": 105}.get(wrapped, 100)


def test_idempotency_key_reused_with_another_request(wallets: Shop):
    wallets.ok(idem("k1", create("o-a")))
    wallets.refused(idem("k1", create("o-b"), request_hash="h2"), "idempotency_key_reused")
    assert wallets.order("o-b") is None


def test_idempotency_keys_are_per_merchant(wallets: Shop):
    wallets.ok(idem("k1", create("o-a")))
    outcome = wallets.do(idem("k1", create("o-b", "m2"), mid="m2"))
    assert (outcome.code, outcome.replayed, wallets.order("o-b", "m2").status) == ("ok", False, "pending")


def test_idempotent_ledger_command_answers_codes(shop: Shop):
    shop.run(CreateAccounts([Account("m1:a", "USD"), Account("m1:b", "USD")]))

    def transfers():
        return CreateTransfers([Transfer("m1:t1", "m1:a", "m1:b", 5, "USD"), Transfer("m1:t2", "m1:a", "m1:ghost", 5, "USD")])

    expected = [0, TransferCode.credit_account_not_found]
    assert shop.do(idem("k1", transfers())) == Outcome(codes=expected)
    before = shop.engine.state_hash()
    assert shop.do(idem("k1", transfers())) == Outcome(codes=expected, replayed=True)
    assert shop.engine.state_hash() == before
    assert shop.balance("m1:b") == 5


def test_idempotency_record_is_forgotten_after_retention(shop: Shop):
    shop.ok(idem("k1", create("o-a")))
    start = shop.now
    assert shop.do(idem("k1", create("o-b")), at=start + RETENTION - 1).replayed
    assert shop.order("o-b") is None
    outcome = shop.do(idem("k1", create("o-b")), at=start + RETENTION + 1)
    assert (outcome.code, outcome.replayed) == ("ok", False)
    assert shop.order("o-b").status == "pending"
    assert shop.do(idem("k1", create("o-c"))).replayed  # the new run is remembered in turn


# 8. Snapshot and restore


def busy(shop: Shop) -> dict[str, int]:
    """A mix of everything above; the times the continuation needs."""
    shop.ok(CreateSubAccount("m1", SubAccount("sa1", "Branch")), AddDashboardUser("m1", DashboardUser("a@m1", "pw")),
            UpdateMerchant(merchant_id="m2", tier="gold"), customer("c1"), customer("c2", "m2"))
    shop.ok(deposit("c1", "d1", 50), deposit("c2", "d2", 20, "m2"), withdraw("c1", "w1", 5),
            *(create(f"o{i}", amount=10, name=f"Item {i}") for i in range(6)), create("m2-o", "m2"))
    shop.ok(pay("o0", "c1", "t0"), pay("o1", "c1", "t1"), CancelOrder("m1", "o2"),
            UpdateOrder(merchant_id="m1", order_id="o3", name="Renamed", expires_at=shop.now + 100 * S))
    shop.ok(*(create(f"ip{i}", ip="9.9.9.9", ip_limit=3) for i in range(3)))
    ip_start = shop.now
    shop.ok(idem("k1", pay("o4", "c1", "t4")), idem("k1", create("m2-o2", "m2"), mid="m2"))
    return {"expiry": shop.order("o3").expires_at, "ip_start": ip_start}


QUERIES = [
    ListOrders(merchant_id="m1", limit=100), ListOrders(merchant_id="m1", status="paid"),
    ListOrders(merchant_id="m2", name_contains="order"), GetMerchant(api_key_hash="akh-m1"),
    GetMerchant(client_id="cid-m2"), GetOrder("m1", "o4"), GetCustomer("m2", "c2"),
    GetCustomer("m1", "", "C1@example.com"),
    LookupAccounts([wallet_account_id("m1", "c1", "USD"), system_account_id("m1", "balance", "USD")]),
]


def test_restore_keeps_state_answers_and_rules(shop: Shop):
    times = busy(shop)
    copy = shop.restored()
    assert copy.engine.state_hash() == shop.engine.state_hash()
    assert copy.engine.snapshot() == shop.engine.snapshot()
    assert (copy.engine.sequence, copy.engine.timestamp) == (shop.engine.sequence, shop.engine.timestamp)
    for query in QUERIES:
        assert plain(copy.query(query)) == plain(shop.query(query))
    assert copy.query(GetMerchant(api_key_hash="akh-m1")).record.sub_accounts[0].id == "sa1"

    continuation = [  # (time, commands, expected codes, expected events)
        (times["expiry"], lambda: [create("ip3", ip="9.9.9.9", ip_limit=3), idem("k1", pay("o4", "c1", "t4")),
                                   idem("k1", pay("o5", "c1", "t5"), request_hash="h2"), pay("o3", "c1", "t3")],
         ["rate_limited", "ok", "idempotency_key_reused", "order_not_pending"],
         [Event("order.expired", "o3", times["expiry"])]),
        (times["ip_start"] + WINDOW, lambda: [create("ip3", ip="9.9.9.9", ip_limit=3), pay("o5", "c1", "t5")],
         ["ok", "ok"], [Event("payment.succeeded", "pay_t5", times["ip_start"] + WINDOW),
                         Event("order.paid", "o5", times["ip_start"] + WINDOW)]),
    ]
    for at, commands, codes, events in continuation:
        results = [s.run(*commands(), at=at) for s in (shop, copy)]
        assert plain(results[0]) == plain(results[1])
        assert [outcome.code for outcome in results[1].results] == codes
        assert results[1].results[1].replayed == (at == times["expiry"])
        assert results[1].events == events
        assert copy.engine.state_hash() == shop.engine.state_hash()
    assert (copy.wallet("c1"), copy.takings()) == (50 - 5 - 40, 40)


def test_refused_wallet_payment_leaves_no_trace_and_a_retry_can_succeed(shop: Shop):
    shop.ok(create("o1", amount=50))
    shop.ok(customer("c1"))
    shop.refused(pay("o1", "c1", "m1:pay1"), "insufficient_funds")
    shop.ok(deposit("c1", "m1:dep1", 50))
    assert shop.do(pay("o1", "c1", "m1:pay1")).code == "ok"


def test_a_merchant_cannot_take_credentials_already_in_use(shop: Shop):
    shop.refused(CreateMerchant(merchant("m3", api_key_hash="akh-m1")), "credentials_in_use")
    shop.refused(CreateMerchant(merchant("m3", client_id="cid-m2")), "credentials_in_use")


def test_a_password_re_hash_replaces_only_the_hash_it_was_made_from(shop):
    shop.ok(AddDashboardUser("m1", DashboardUser("a@m1", "old-hash")))
    shop.ok(AddDashboardUser("m1", DashboardUser("a@m1", "new-hash"), replaces_password_hash="old-hash"))
    assert [user.password_hash for user in shop.query(GetMerchant(merchant_id="m1")).record.users] == ["new-hash"]
    shop.refused(AddDashboardUser("m1", DashboardUser("a@m1", "stale-hash"), replaces_password_hash="old-hash"),
                 "password_changed")
    shop.refused(AddDashboardUser("m1", DashboardUser("b@m1", "x"), replaces_password_hash="new-hash"),
                 "password_changed")
    assert [user.password_hash for user in shop.query(GetMerchant(merchant_id="m1")).record.users] == ["new-hash"]
