"""A seeded random walk over the public HTTP API against a real `paygate serve --replica` with Ray, the card
connector and the simulated acquirer and bank: legitimate and hostile requests mixed (orders with splits, good and
bad; PATCHes; card payments with every test card; QR and bank-transfer payments paid right, wrong, twice and late;
wallet checkouts, deposits, withdrawals, adjustments, refunds (some racing), captures, cancels, payouts; amounts at
and past the API's range, malformed JSON, wrong types, huge bodies, unknown and foreign ids, Idempotency-Key
replays). During and after the walk:

- no answer is a 5xx (a 503 `shard_unavailable` is counted, and fails the test); every error is in the API's one
  shape, and every answer carries a Request-Id;
- the shard processes never exit: their pids stay the same, and serve's log tells of no restart and no error;
- every merchant, sub-account and wallet balance read over HTTP is >= 0, the ledger check is ok, and money held
  (those balances plus payouts and withdrawals in flight) equals money received (captured card money, transfers the
  bank says the gateway took, adjustments) less money sent (refunds to a card or a bank, paid payouts and
  withdrawals), per currency, each side computed from the answers the walk got; what was refunded through the bank
  is what the bank says it gave back;
- a withdrawal and a payout above what the bank takes at once fail, and their money returns;
- once the providers are quiet, the replica's state hash equals the primary's; after serve stops, `paygate verify`
  on the data folder exits 0.

`PAYGATE_WALK_SEED=<n>` replays a walk; the seed is printed and named in every failure.
"""

import asyncio
import collections
import concurrent.futures
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import orjson
import pytest

from bench.server import ROOT
from edge.http import OVERFLOW_CODES
from edge_harness import Response, Server
from engine.types import AMOUNT_MAX
from journal.client import ShardClient
from journal.processes import running_address, running_key, shard_folder
from test_http_auth import signed_headers
from test_payments_e2e import EXPIRY, LUHN_INVALID, SILENT, SUCCEEDS, THREE_D_SECURE, bank_transfer, card, fetch, wait_until

SEED = int(os.environ.get("PAYGATE_WALK_SEED") or random.SystemRandom().randrange(2**32))
STEPS = 300
SLOW_STEPS = 3000
PROCESSING_TIMEOUT_S = 3
AUTHORIZATION_HOLD_S = 5
QUIET_WITHIN_S = 60
QUIET_POLL_S = 0.5
BANK_AMOUNT_MAX = 10**15  # the most the simulated bank takes in one transfer
SHORT_EXPIRY_S = 60  # the shortest an order may live: some expire during the walk, and are paid after
LATE_ORDERS = 3
RACE_CHANCE = 0.2
CHECK_EVERY_STEPS = 100
RACERS = 4
CURRENCIES = ("usd", "vnd")
CARD_NUMBERS = (SUCCEEDS, SUCCEEDS, SUCCEEDS, SUCCEEDS, "4000000000000002", "4000000000009995", THREE_D_SECURE,
                THREE_D_SECURE, SILENT, "4000000000000119", LUHN_INVALID)
HOSTILE_AMOUNTS = (0, -1, 2**63, 2**64, "100", 1.5, True, [1])
ERROR_TYPES = {400: {"invalid_request_error"}, 401: {"authentication_error"}, 402: {"card_error", "balance_error"},
               403: {"permission_error"}, 404: {"invalid_request_error"}, 405: {"invalid_request_error"},
               409: {"invalid_request_error"}, 413: {"invalid_request_error"}, 422: {"invalid_request_error"},
               429: {"rate_limit_error"}, 503: {"api_error"}}
# What serve's log says when a shard process stops or starts again, or anything fails
TROUBLE_WORDS = ("stopped (", "starting", "serving again", "gave up", "no replica took over", "Traceback",
                 '"level":"ERROR"', '"level":"CRITICAL"')


@dataclass
class Shop:
    id: str
    key: str
    signing_secret: str
    signed: bool
    sub_accounts: list[str] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)


@dataclass
class OrderModel:
    shop: Shop
    id: str
    amount: int
    currency: str
    splits_sum: int
    expires_at: float  # on this process's monotonic clock


def serving(data: pathlib.Path):
    server = Server(data, workers=2, actors=True,
                    # snapshots along the way, for verify to hold against a replay of the journal
                    extra=("--replica", "--order-ip-limit", "100000", "--snapshot-every-batches", "100",
                           "--processing-timeout-s", str(PROCESSING_TIMEOUT_S),
                           "--authorization-hold-s", str(AUTHORIZATION_HOLD_S))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One server for the module's default tests: the walk, last in the file, stops it to verify its folder."""
    yield from serving(tmp_path_factory.mktemp("walk") / "data")


@pytest.fixture
def own_gateway(tmp_path):
    yield from serving(tmp_path / "data")


def test_a_refund_of_a_bank_transfer_payment_reaches_the_payer(gateway):
    """Its money goes back through the bank to whoever sent the transfer, in parts, never more than it brought."""
    walk = Walk(gateway, random.Random(SEED))
    walk.open_shops()
    shop = walk.shops[0]
    payment = walk.expect(walk.send(shop, "POST", "/v1/payments", {
        "amount": 120000, "currency": "vnd", "payment_method": {"type": "bank_transfer"}}), 200)
    reference = bank_transfer(gateway, payment["id"], 120000, "vnd")
    wait_until(lambda: walk.get(shop, f"/v1/payments/{payment['id']}")["status"], lambda status: status == "succeeded",
               what="the transfer to pay the payment")
    for amount, refunded, status in ((20000, 20000, "credited"), (100000, 120000, "refunded")):
        refund = walk.expect(walk.send(shop, "POST", "/v1/refunds", {"payment_id": payment["id"], "amount": amount}),
                             200)
        assert (refund["status"], refund["amount"]) == ("succeeded", amount)
        # the bank shows the money it took for the payment going back to the payer
        view = wait_until(lambda: walk.at_the_bank(reference), lambda view: view["amount_refunded"] == refunded,
                          timeout_s=10, what=f"the bank to send {amount} back to the payer")
        assert view["status"] == status, view


def test_http_walk(gateway):
    walk_and_check(gateway, STEPS, wait_for_expiry=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_http_walk_at_length(own_gateway):
    walk_and_check(own_gateway, SLOW_STEPS, wait_for_expiry=True)


def walk_and_check(server: Server, steps: int, wait_for_expiry: bool) -> None:
    """`wait_for_expiry`: wait (up to a minute) for an order to expire, and pay it late."""
    print(f"http walk seed: {SEED} (PAYGATE_WALK_SEED={SEED} replays it)")
    pids = shard_pids(server)
    walk = Walk(server, random.Random(SEED))
    started = time.monotonic()
    walk.open_shops()
    beyond_the_bank = walk.send_out_more_than_the_bank_takes()
    actions = [action for action, weight in walk.actions() for _ in range(weight)]
    for step in range(steps):
        walk.step = step
        walk.rng.choice(actions)()
        if step % CHECK_EVERY_STEPS == CHECK_EVERY_STEPS - 1:
            walk.money_held()  # every balance >= 0 on the way
            walk.check_ledger()
    walked = time.monotonic()
    late = walk.pay_after_expiry(wait_for_expiry)
    walk.wait_until_quiet()
    quiet = time.monotonic()
    for shop, kind, object_id in beyond_the_bank:
        refused = walk.get(shop, f"/v1/{kind}/{object_id}")
        assert refused["status"] == "failed" and refused["failure_code"], f"{walk.where()}: {refused}"
    for order in late:
        paid = walk.get(order.shop, f"/v1/orders/{order.id}")
        assert (paid["status"], paid["error_code"]) == ("exception", "order_not_pending"), f"{walk.where()}: {paid}"
    assert walk.unavailable == 0, f"{walk.where()}: {walk.unavailable} answers were 503 shard_unavailable"
    walk.check_money()
    assert_replica_agrees(server, walk.where())
    assert shard_pids(server) == pids, f"{walk.where()}: a shard process exited"
    for pid in pids:
        os.kill(pid, 0)  # still there: raises ProcessLookupError otherwise
    trouble = [line for line in server.output if any(word in line for word in TROUBLE_WORDS)]
    assert not trouble, f"{walk.where()}: serve's log:\n{''.join(trouble)}"
    print(f"http walk seed {SEED}: {sum(walk.statuses.values())} requests, statuses {sorted(walk.statuses.items())}; "
          f"outcomes {sorted(walk.outcomes.items())}; walked {walked - started:.1f} s, quiet after "
          f"{quiet - walked:.1f} s, checked in {time.monotonic() - quiet:.1f} s")
    assert server.stop() == 0, "".join(server.output)
    verified = subprocess.run([sys.executable, "-m", "edge.cli", "verify", "--data", str(server.data)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, f"{walk.where()}: paygate verify:\n{verified.stdout}{verified.stderr}"


# --- the shard processes -----------------------------------------------------------------------------------------------

def shard_pids(server: Server) -> list[int]:
    folders = (shard_folder(server.data, 0), shard_folder(server.data, 0, replica=True))
    return [json.loads((folder / "shard.json").read_text())["pid"] for folder in folders]


def state_hashes(server: Server) -> list[str]:
    async def read() -> list[str]:
        hashes = []
        for folder in (shard_folder(server.data, 0), shard_folder(server.data, 0, replica=True)):
            client = ShardClient([running_address(folder)], running_key(folder), timeout_ms=2000)
            try:
                hashes.append((await client.status(with_state_hash=True)).state_hash)
            finally:
                client.close()
        return hashes

    return asyncio.run(read())


def assert_replica_agrees(server: Server, where: str) -> None:
    """The replica reaches the primary's state hash (a deadline ticking between the two reads is read again)."""
    wait_until(lambda: state_hashes(server), lambda hashes: hashes[0] == hashes[1], timeout_s=20,
               what=f"{where}: the replica's state hash to equal the primary's")


# --- the walk --------------------------------------------------------------------------------------------------------

class Walk:
    def __init__(self, server: Server, rng: random.Random) -> None:
        self.server, self.rng = server, rng
        self.step = -1
        self.lock = threading.Lock()
        self.statuses: collections.Counter = collections.Counter()
        self.last_signed: dict[tuple, int] = {}  # (method, path, body) -> the newest timestamp signed for it
        self.unavailable = 0
        self.shops: list[Shop] = []
        self.orders: list[OrderModel] = []
        self.payments: dict[str, tuple[Shop, str]] = {}  # id -> (its merchant, its method)
        self.challenged: set[str] = set()  # card payments whose 3-D Secure step was answered
        self.outbound: list[tuple[Shop, str, str]] = []  # (merchant, "payouts" | "withdrawals", id)
        self.references: list[tuple[str, int, str]] = []  # what a transfer may quote: (reference, amount, currency)
        self.transfers: list[str] = []  # bank references of every transfer sent
        self.adjusted: collections.Counter = collections.Counter()  # money in by the admin, per currency
        self.refunded: collections.Counter = collections.Counter()  # money back to a card or a bank, per currency
        self.refunded_by_bank: collections.Counter = collections.Counter()  # ...of which through the bank
        self.outcomes: collections.Counter = collections.Counter()  # how the money moves ended, for the record

    def where(self) -> str:
        return f"seed {SEED}, " + (f"step {self.step}" if self.step >= 0 else "before the walk")

    # Speaking HTTP, checking every answer

    def send(self, shop: Shop | None, method: str, path: str, body=None, raw: bytes | None = None,
             headers: dict | None = None, key: str | None = None) -> Response:
        """One request as `shop` (signed when it must be) or with `key`; every answer is checked."""
        # the standard library's encoder, which writes integers past 64 bits too
        raw = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = dict(headers or {})
        if shop is not None and shop.signed and key is None:
            headers.update(signed_headers(shop.signing_secret, method, path.split("?")[0], raw or b"",
                                          self.fresh_timestamp(method, path, raw)))
        reply = self.server.request(method, path, key=key or (shop.key if shop else None), raw=raw, headers=headers)
        self.check(method, path, reply)
        return reply

    def fresh_timestamp(self, method: str, path: str, raw: bytes | None) -> int:
        """Now, or a second later than any signature of the same request: the gateway takes each signature once,
        so a client sending the same request twice within a second signs it anew."""
        with self.lock:
            message = (method, path, raw)
            timestamp = max(int(time.time()), self.last_signed.get(message, 0) + 1)
            self.last_signed[message] = timestamp
            return timestamp

    def check(self, method: str, path: str, reply: Response) -> None:
        what = f"{self.where()}: {method} {path} -> {reply.status} {reply.body[:300]!r}"
        with self.lock:
            self.statuses[reply.status] += 1
        assert reply.headers.get("Request-Id"), what
        if reply.status < 400:
            return
        try:
            problem = orjson.loads(reply.body)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise AssertionError(f"not the API's error shape: {what}") from None
        assert set(problem) == {"type", "code", "message", "param"} and problem["message"], what
        if reply.status == 503 and problem["code"] == "shard_unavailable":
            with self.lock:
                self.unavailable += 1
            return
        assert reply.status < 500, what
        assert problem["type"] in ERROR_TYPES[reply.status], what

    def send_racing(self, shop: Shop, path: str, body: dict) -> list[Response]:
        """One POST, or now and then the same one several times at once: racing for the same money."""
        if self.rng.random() >= RACE_CHANCE:
            return [self.send(shop, "POST", path, body)]
        with concurrent.futures.ThreadPoolExecutor(RACERS) as pool:
            return list(pool.map(lambda _: self.send(shop, "POST", path, body), range(RACERS)))

    def expect(self, reply: Response, *statuses: int, codes: tuple[str, ...] = ()) -> dict:
        """The answer's body, its status one of `statuses` (and an error's code one of `codes`, when given)."""
        body = reply.json()
        assert reply.status in statuses, f"{self.where()}: {reply.status} {reply.body[:300]!r}"
        if codes and reply.status >= 400:
            assert body["error"]["code"] in codes, f"{self.where()}: {body}"
        return body

    def get(self, shop: Shop, path: str) -> dict:
        return self.expect(self.send(shop, "GET", path), 200)

    # Choosing

    def actions(self) -> list[tuple]:
        """Every step of the walk and how often it is taken."""
        return [(self.create_order, 8), (self.create_order_badly, 4), (self.patch_order, 3), (self.cancel_order, 2),
                (self.pay_by_card, 8), (self.answer_three_d_secure, 3), (self.pay_by_transfer, 4),
                (self.send_transfer, 7), (self.pay_from_wallet, 4), (self.deposit, 4), (self.withdraw, 2),
                (self.adjust, 2), (self.refund, 6), (self.capture, 3),
                (self.cancel_payment, 2), (self.payout, 3), (self.hostile, 6), (self.replay, 3),
                (self.discover_payments, 2)]

    def shop(self) -> Shop:
        return self.rng.choice(self.shops)

    def amount(self) -> int:
        """Mostly everyday amounts; one in twenty the largest the API takes."""
        if self.rng.random() < 0.05:
            return AMOUNT_MAX
        return self.rng.choice((1, 1500, 2500, 120000, self.rng.randint(1, 10**6)))

    def recent(self, items: list):
        """One of the last few items (what was made lately is most likely to take a next step), else None."""
        return items[-1 - self.rng.randrange(min(6, len(items)))] if items else None

    def some_payment(self, method: str | None = None) -> tuple[str, Shop, str] | None:
        ids = [payment_id for payment_id, (_, kind) in self.payments.items() if method in (None, kind)]
        payment_id = self.recent(ids)
        return (payment_id, *self.payments[payment_id]) if payment_id else None

    # Setting up: three merchants (one signs its requests), their stores and customers

    def open_shops(self) -> None:
        for number, signed in enumerate((False, True, False)):
            created = self.expect(self.send(None, "POST", "/v1/merchants", {
                "name": f"Walk shop {number}", "email": f"walk{number}@example.com", "tier": "premium",
                "require_signature": signed}, key=self.server.admin_token), 200)
            shop = Shop(created["id"], created["api_key"], created["signing_secret"], signed)
            self.shops.append(shop)
            for store in range(1 + number % 2):
                shop.sub_accounts.append(self.expect(self.send(shop, "POST", f"/v1/merchants/{shop.id}/sub_accounts",
                                                               {"name": f"Store {store}"}), 200)["id"])
            for person in range(2):
                shop.customers.append(self.expect(self.send(shop, "POST", "/v1/customers", {
                    "email": f"payer{person}@example.com", "name": f"Payer {person}"}), 200)["id"])
            self.references += [("M" + shop.id.removeprefix("mer_"), 0, ""), (shop.id, 0, "")]
            self.references += [("S" + sub.removeprefix("sub_"), 0, "") for sub in shop.sub_accounts]

    def send_out_more_than_the_bank_takes(self) -> list[tuple[Shop, str, str]]:
        """A withdrawal and a payout above the most the bank takes at once: the bank refuses them, so they fail and
        the money goes back (the walk then goes on with these large balances)."""
        shop, other = self.shops[0], self.shops[2]
        self.expect(self.send(None, "POST", f"/v1/customers/{shop.customers[0]}/adjustments", {
            "amount": AMOUNT_MAX, "currency": "usd", "reason": "the largest credit"}, key=self.server.admin_token), 200)
        self.adjusted["usd"] += AMOUNT_MAX
        withdrawal = self.expect(self.send(shop, "POST", f"/v1/customers/{shop.customers[0]}/withdrawals",
                                           {"amount": AMOUNT_MAX, "currency": "usd"}), 200)
        for _ in range(2):
            self.transfers.append(bank_transfer(self.server, other.id, BANK_AMOUNT_MAX, "usd"))
        wait_until(lambda: self.account(other, "balance", "usd")["available"],
                   lambda available: available == 2 * BANK_AMOUNT_MAX, what=f"{self.where()}: two transfers")
        payout = self.expect(self.send(other, "POST", "/v1/payouts", {"amount": 2 * BANK_AMOUNT_MAX,
                                                                      "currency": "usd"}), 200)
        self.outbound += [(shop, "withdrawals", withdrawal["id"]), (other, "payouts", payout["id"])]
        return self.outbound[-2:]

    # Orders

    def splits(self, shop: Shop, amount: int) -> list[dict]:
        """Valid splits: distinct destinations (other merchants, the shop's own stores), together below `amount`."""
        destinations = [{"merchant_id": other.id} for other in self.shops if other is not shop]
        destinations += [{"sub_account_id": sub} for sub in shop.sub_accounts]
        chosen = self.rng.sample(destinations, self.rng.randint(1, min(3, amount, len(destinations))))
        return [{**destination, "amount": self.rng.randint(1, max(1, amount // 4))} for destination in chosen]

    def create_order(self) -> None:
        shop = self.shop()
        amount, currency = self.amount(), self.rng.choice(CURRENCIES)
        splits = self.splits(shop, amount) if self.rng.random() < 0.5 else []
        expires_in = self.rng.choice((SHORT_EXPIRY_S, 900, 900))
        body = {"name": "Walk", "amount": amount, "currency": currency, "splits": splits, "expires_in": expires_in,
                "payment_methods": self.rng.choice((["card", "qr", "wallet", "bank_transfer"], ["card"]))}
        created = self.expect(self.send(shop, "POST", "/v1/orders", body), 200)
        self.orders.append(OrderModel(shop, created["id"], amount, currency, sum(split["amount"] for split in splits),
                                      time.monotonic() + expires_in))
        self.references.append(("O" + created["id"].removeprefix("ord_"), amount, currency))

    def create_order_badly(self) -> None:
        shop = self.shop()
        other = self.rng.choice([each for each in self.shops if each is not shop])
        seller = {"merchant_id": other.id, "amount": 1}
        cases = {
            "split_to_own_merchant": [{"merchant_id": shop.id, "amount": 1}],
            "split_destination_duplicated": [seller, seller],
            "splits_exceed_amount": [{"merchant_id": other.id, "amount": 1001}],
            "split_destination_not_found": [{"sub_account_id": self.rng.choice(other.sub_accounts), "amount": 1}],
            "parameter_invalid": [{"merchant_id": f"mer_{number}", "amount": 1} for number in range(11)],
        }
        code = self.rng.choice([*cases, "amount"])
        body = {"name": "Walk", "amount": 1000, "currency": "usd", "splits": cases.get(code, [])}
        if code == "amount":
            body["amount"] = self.rng.choice(HOSTILE_AMOUNTS)
        self.expect(self.send(shop, "POST", "/v1/orders", body), 400,
                    codes=(code,) if code != "amount" else ())

    def patch_order(self) -> None:
        order = self.recent(self.orders)
        if order is None:
            return
        below = order.splits_sum and self.rng.random() < 0.5
        amount = order.splits_sum - 1 if below else self.rng.choice((order.amount, order.amount + 1, self.amount()))
        amount = amount if amount > 0 else self.rng.choice(HOSTILE_AMOUNTS)
        reply = self.send(order.shop, "PATCH", f"/v1/orders/{order.id}", {"amount": amount})
        patched = self.expect(reply, 200, 400, 409, codes=("splits_exceed_amount", "parameter_invalid",
                                                           "order_not_pending", "payment_in_progress"))
        if below and reply.status != 409:
            assert reply.status == 400 and patched["error"]["param"] == "amount", f"{self.where()}: {order.id} to {amount}: {patched}"
        if reply.status == 200:
            order.amount = amount
            self.references.append(("O" + order.id.removeprefix("ord_"), amount, order.currency))

    def cancel_order(self) -> None:
        order = self.recent(self.orders)
        if order is not None:
            self.expect(self.send(order.shop, "DELETE", f"/v1/orders/{order.id}"), 200, 409)

    # Payments

    def payment_target(self, shop: Shop) -> dict:
        """An order of the shop's (or, now and then, another's), or an amount and currency."""
        order = self.recent(self.orders)
        if order is not None and self.rng.random() < 0.6:
            return {"order_id": (order if self.rng.random() < 0.9 else self.rng.choice(self.orders)).id}
        return {"amount": self.amount(), "currency": self.rng.choice(CURRENCIES)}

    def created_payment(self, shop: Shop, reply: Response, method: str) -> dict | None:
        body = self.expect(reply, 200, 400, 402, 404, 409)
        if reply.status == 200:
            self.payments[body["id"]] = (shop, method)
        return body if reply.status == 200 else None

    def pay_by_card(self) -> None:
        shop = self.shop()
        body = {**self.payment_target(shop), "payment_method": card(self.rng.choice(CARD_NUMBERS)),
                "capture_method": self.rng.choice(("automatic", "automatic", "manual"))}
        self.created_payment(shop, self.send(shop, "POST", "/v1/payments", body), "card")

    def answer_three_d_secure(self) -> None:
        """The cardholder approves or declines a waiting 3-D Secure challenge at the acquirer's page."""
        found = self.some_payment("card")
        if found is None:
            return
        payment_id, shop, _ = found
        payment = self.get(shop, f"/v1/payments/{payment_id}")
        if payment["status"] == "requires_action":
            fetch(payment["next_action"]["url"], form={"outcome": self.rng.choice(("complete", "fail"))})
            self.challenged.add(payment_id)

    def pay_by_transfer(self) -> None:
        shop = self.shop()
        method = self.rng.choice(("qr", "bank_transfer"))
        body = {**self.payment_target(shop), "payment_method": {"type": method}}
        payment = self.created_payment(shop, self.send(shop, "POST", "/v1/payments", body), method)
        if payment is not None and payment["status"] == "requires_action":
            self.references.append(("P" + payment["id"].removeprefix("pay_"), payment["amount"], payment["currency"]))

    def send_transfer(self) -> None:
        """A payer's transfer at the bank quoting something of ours (or nothing): the amount asked, another, twice."""
        reference, amount, currency = self.recent(self.references) if self.rng.random() < 0.7 else \
            self.rng.choice(self.references + [("O" + "0" * 24, 0, "")])
        amount = amount if amount and self.rng.random() < 0.6 else self.rng.choice(
            (amount + 1, max(1, amount - 1), self.amount(), BANK_AMOUNT_MAX))
        amount = min(amount, BANK_AMOUNT_MAX)
        currency = currency if currency and self.rng.random() < 0.9 else self.rng.choice(CURRENCIES)
        for _ in range(self.rng.choice((1, 1, 2))):
            status, _, answer = fetch(f"http://127.0.0.1:{self.server.base_port + 1}/v1/transfers",
                                      body={"reference": reference, "amount": amount, "currency": currency})
            assert status == 202, f"{self.where()}: the bank: {status} {answer[:300]!r}"
            self.transfers.append(json.loads(answer)["bank_reference"])

    def pay_from_wallet(self) -> None:
        shop = self.shop()
        customer_id = self.rng.choice(shop.customers + ["cus_nobody"])
        body = {**self.payment_target(shop), "payment_method": {"type": "wallet", "customer_id": customer_id}}
        for reply in self.send_racing(shop, "/v1/payments", body):
            self.created_payment(shop, reply, "wallet")

    # Wallets

    def deposit(self) -> None:
        shop = self.shop()
        customer_id = self.rng.choice(shop.customers)
        method = self.rng.choice(("card", "card", "qr", "bank_transfer"))
        payment_method = card(self.rng.choice(CARD_NUMBERS)) if method == "card" else {"type": method}
        amount = self.amount() if self.rng.random() < 0.9 else self.rng.choice(HOSTILE_AMOUNTS)
        reply = self.send(shop, "POST", f"/v1/customers/{customer_id}/deposits", {
            "amount": amount, "currency": self.rng.choice(CURRENCIES), "payment_method": payment_method})
        created = self.expect(reply, 200, 400, 402)
        if reply.status != 200:
            return
        if method == "card":
            self.payments[created["payment_id"]] = (shop, "card")
        elif created["status"] == "requires_action":
            self.references.append(("D" + created["id"].removeprefix("dep_"), amount, created["currency"]))

    def withdraw(self) -> None:
        shop = self.shop()
        customer_id = self.rng.choice(shop.customers)
        amount = self.rng.choice((1, 100, 1013, self.amount(), AMOUNT_MAX))  # the bank refuses amounts ending in 13
        body = {"amount": amount, "currency": self.rng.choice(CURRENCIES)}
        for reply in self.send_racing(shop, f"/v1/customers/{customer_id}/withdrawals", body):
            created = self.expect(reply, 200, 402, codes=("insufficient_funds",))
            if reply.status == 200:
                self.outbound.append((shop, "withdrawals", created["id"]))

    def adjust(self) -> None:
        """An operator's manual credit (admin only; a merchant's own key is refused)."""
        shop = self.shop()
        customer_id = self.rng.choice(shop.customers)
        amount = self.amount()
        body = {"amount": amount, "currency": self.rng.choice(CURRENCIES), "reason": "goodwill"}
        if self.rng.random() < 0.25:
            self.expect(self.send(shop, "POST", f"/v1/customers/{customer_id}/adjustments", body), 401, 403)
            return
        reply = self.send(None, "POST", f"/v1/customers/{customer_id}/adjustments", body, key=self.server.admin_token)
        self.expect(reply, 200, 400, codes=OVERFLOW_CODES)
        if reply.status == 200:
            self.adjusted[body["currency"]] += body["amount"]

    # After a payment: refunds, captures, cancels; payouts

    def refund_request(self) -> tuple[Shop, dict, str] | None:
        found = self.some_payment()
        if found is None:
            return None
        payment_id, shop, method = found
        amount = self.rng.choice((None, 1, 100, 500, 10**9, self.rng.choice(HOSTILE_AMOUNTS)))
        return shop, {"payment_id": payment_id, **({"amount": amount} if amount is not None else {})}, method

    def refunded_by(self, reply: Response, method: str) -> None:
        """A refund's answer; one to a card or a bank is money sent outside."""
        refund = self.expect(reply, 200, 400, 402, 404, 409)
        if reply.status == 200 and method != "wallet":
            with self.lock:
                self.refunded[refund["currency"]] += refund["amount"]
                if method != "card":
                    self.refunded_by_bank[refund["currency"]] += refund["amount"]

    def refund(self) -> None:
        request = self.refund_request()
        if request is not None:
            shop, body, method = request
            for reply in self.send_racing(shop, "/v1/refunds", body):
                self.refunded_by(reply, method)

    def capture(self) -> None:
        found = self.some_payment("card")
        if found is not None:
            payment_id, shop, _ = found
            body = self.rng.choice(({}, {"amount": 1}, {"amount": 10**9}, {"amount": self.rng.choice(HOSTILE_AMOUNTS)}))
            for reply in self.send_racing(shop, f"/v1/payments/{payment_id}/capture", body):
                self.expect(reply, 200, 400, 402, 409)

    def cancel_payment(self) -> None:
        found = self.some_payment()
        if found is not None:
            payment_id, shop, _ = found
            self.expect(self.send(shop, "POST", f"/v1/payments/{payment_id}/cancel"), 200, 400, 409)

    def payout(self) -> None:
        shop = self.shop()
        body = {"amount": self.rng.choice((1, 500, 1013, self.amount(), AMOUNT_MAX)),
                "currency": self.rng.choice(CURRENCIES)}
        if self.rng.random() < 0.3:
            body["sub_account_id"] = self.rng.choice(shop.sub_accounts + ["sub_missing"])
        for reply in self.send_racing(shop, "/v1/payouts", body):
            created = self.expect(reply, 200, 402, 404, codes=("insufficient_balance", "resource_missing"))
            if reply.status == 200:
                self.outbound.append((shop, "payouts", created["id"]))

    def discover_payments(self) -> None:
        """Payments the walk did not make itself (a transfer paying an order, a static code): refundable too."""
        shop = self.shop()
        for payment in self.get(shop, "/v1/payments?limit=20")["data"]:
            self.payments.setdefault(payment["id"], (shop, payment["payment_method"]["type"]))

    # Hostile requests

    def hostile(self) -> None:
        shop = self.shop()
        other = self.rng.choice([each for each in self.shops if each is not shop])
        foreign = [order.id for order in self.orders if order.shop is other]
        foreign_payments = [payment_id for payment_id, (owner, _) in self.payments.items() if owner is other]
        unknown = uuid.uuid4().hex[:24]
        cases = [
            ("POST", "/v1/orders", {"raw": b'{"name": "Walk", "amount": '}, (400,)),
            ("POST", "/v1/orders", {"body": {"name": 5, "amount": "12", "currency": 840}}, (400,)),
            ("POST", "/v1/orders", {"raw": b'{"name": "Walk", "amount": 1e400, "currency": "usd"}'}, (400,)),
            ("POST", "/v1/orders", {"raw": b'{"name": "' + b"x" * (5 << 20) + b'"}'}, (413,)),
            ("POST", "/v1/payments", {"body": {"amount": self.rng.choice(HOSTILE_AMOUNTS), "currency": "usd",
                                               "payment_method": card(SUCCEEDS)}}, (400,)),
            ("POST", "/v1/payments", {"body": {"amount": 100, "currency": "usd", "payment_method": {
                "type": "card", "card": {"number": SUCCEEDS, **EXPIRY, "cvc": 123}}}}, (400,)),
            ("GET", f"/v1/orders/ord_{unknown}", {}, (404,)),
            ("GET", "/v1/orders/" + "%C3%A9%00" * 500, {}, (400, 404)),
            ("GET", self.rng.choice(("/v1/orders?limit=0", "/v1/orders?limit=101", "/v1/orders?limit=1e3",
                                     "/v1/orders?status=bogus", "/v1/orders?created_gte=yesterday",
                                     f"/v1/orders?starting_after=ord_{unknown}", "/v1/payments?limit=-1",
                                     "/v1/accounts/.balance.usd/balances?at=never",
                                     "/v1/accounts/.balance.usd/transfers?starting_after=nothing")), {}, (400, 404)),
            ("GET", f"/v1/payments/pay_{unknown}", {}, (404,)),
            ("GET", f"/v1/customers/cus_{unknown}/wallet", {}, (404,)),
            ("GET", f"/v1/withdrawals/wd_{unknown}", {}, (404,)),
            ("POST", f"/v1/payments/pay_{unknown}/capture", {"body": {}}, (404,)),
            ("GET", f"/v1/orders/{self.rng.choice(foreign or ['ord_x'])}", {}, (404,)),
            ("POST", "/v1/refunds", {"body": {"payment_id": self.rng.choice(foreign_payments or ["pay_x"])}}, (404,)),
            ("POST", "/v1/payouts", {"body": {"amount": 1, "currency": "usd", "sub_account_id":
                                              self.rng.choice(other.sub_accounts)}}, (404,)),
            ("POST", f"/v1/customers/{self.rng.choice(other.customers)}/withdrawals",
             {"body": {"amount": 1, "currency": "usd"}}, (404,)),
            ("POST", "/v1/transfers", {"body": {"id": "t1", "debit_account_id": ".clearing_bank.usd",
                                                "credit_account_id": ".balance.usd", "amount": 1,
                                                "currency": "usd"}}, (400,)),
            ("POST", "/v1/psp/bank/webhook", {"raw": orjson.dumps({
                "callback_id": "cb_" + unknown, "kind": "transfer_received", "reference": shop.id,
                "amount": 10**6, "currency": "usd"}), "key": "none"}, (401,)),
            ("POST", "/v1/orders", {"body": {"name": "Walk", "amount": 1, "currency": "usd"}, "key": "sk_forged"},
             (401,)),
        ]
        method, path, options, statuses = self.rng.choice(cases)
        if options.get("key") == "none":  # a provider's callback carries no API key, and this one no signature
            options = {**options, "key": None}
            shop = None
        self.expect(self.send(shop, method, path, **options), *statuses)
        if self.rng.random() < 0.2:  # the signing merchant, unsigned
            signer = next(each for each in self.shops if each.signed)
            self.expect(self.send(None, "GET", "/v1/merchants/me", key=signer.key), 401)

    def replay(self) -> None:
        """The same Idempotency-Key: the same body answers the first answer again, byte for byte; another body is
        409."""
        shop = self.shop()
        path, body, keep = self.rng.choice((
            ("/v1/orders", {"name": "Walk", "amount": self.amount(), "currency": "usd"}, lambda created: None),
            ("/v1/payouts", {"amount": self.rng.choice((1, 10**12)), "currency": "usd"},
             lambda created: self.outbound.append((shop, "payouts", created["id"]))),
            ("/v1/customers", {"email": "again@example.com", "name": "Again"},
             lambda created: shop.customers.append(created["id"])),
            ("/v1/payments", {"amount": self.amount(), "currency": "usd",
                              "payment_method": card(self.rng.choice(CARD_NUMBERS))},
             lambda created: self.payments.setdefault(created["id"], (shop, "card")))))
        headers = {"Idempotency-Key": f"walk-{uuid.uuid4().hex}"}
        first = self.send(shop, "POST", path, body, headers=headers)
        created = self.expect(first, 200, 402)
        if first.status == 200:
            keep(created)
        elif created["error"]["code"] == "incorrect_number":
            return  # refused by the edge before anything was stored: nothing to replay (as with a schema error)
        again = self.send(shop, "POST", path, body, headers=headers)
        assert (again.status, again.body, again.headers.get("Idempotent-Replayed")) == (
            first.status, first.body, "true"), f"{self.where()}: {first.body[:300]!r} then {again.body[:300]!r}"
        other = self.send(shop, "POST", path, {**body, "currency": "vnd"} if "currency" in body else
                          {**body, "name": "Other"}, headers=headers)
        self.expect(other, 409, codes=("idempotency_key_reused",))

    # After the walk

    def pay_after_expiry(self, wait: bool) -> list[OrderModel]:
        """A transfer for the amount asked to a few orders that expired unpaid: each becomes an exception. (With
        `wait`, first waits for the first order made to expire soon.)"""
        short = [order for order in self.orders
                 if order.expires_at - time.monotonic() < SHORT_EXPIRY_S and order.amount <= BANK_AMOUNT_MAX]
        if short and wait:
            time.sleep(max(0.0, short[0].expires_at - time.monotonic()))
        late = []
        for order in [order for order in short if order.expires_at <= time.monotonic()][:LATE_ORDERS]:
            status = wait_until(lambda: self.get(order.shop, f"/v1/orders/{order.id}")["status"],
                                lambda current: current != "pending", what=f"{self.where()}: {order.id} to expire")
            if status == "expired":
                reference = "O" + order.id.removeprefix("ord_")
                self.transfers.append(bank_transfer(self.server, reference, order.amount, order.currency))
                late.append(order)
        return late

    def wait_until_quiet(self) -> None:
        """Until no card payment waits for the acquirer, no payout or withdrawal for the bank, and the bank has
        settled every transfer: then nothing moves money any more. What settled is not asked about again (the
        merchants' rate limits stay far)."""
        waiting = {payment_id: lambda shop=shop, payment_id=payment_id: self.get(shop, f"/v1/payments/{payment_id}")[
            "status"] not in self.card_waits(payment_id) for payment_id, (shop, method) in self.payments.items()
            if method == "card"}
        waiting.update({object_id: lambda shop=shop, path=f"/v1/{kind}/{object_id}": self.get(shop, path)["status"]
                        != "pending" for shop, kind, object_id in self.outbound})
        waiting.update({reference: lambda reference=reference: self.at_the_bank(reference)["status"] != "received"
                        for reference in self.transfers})
        deadline = time.monotonic() + QUIET_WITHIN_S
        while waiting:
            waiting = {name: settled for name, settled in waiting.items() if not settled()}
            assert time.monotonic() < deadline, f"{self.where()}: still waiting for the providers: {sorted(waiting)}"
            time.sleep(QUIET_POLL_S if waiting else 0)

    def card_waits(self, payment_id: str) -> tuple[str, ...]:
        """The statuses in which a card payment still waits for the acquirer's answer."""
        return ("processing", "requires_action") if payment_id in self.challenged else ("processing",)

    def at_the_bank(self, bank_reference: str) -> dict:
        status, _, answer = fetch(f"http://127.0.0.1:{self.server.base_port + 1}/v1/transfers/{bank_reference}")
        assert status == 200, f"{self.where()}: the bank lost {bank_reference}: {answer[:300]!r}"
        return json.loads(answer)

    def money_held(self) -> collections.Counter:
        """What the merchants' balances, their stores and their customers' wallets hold, plus money in flight;
        every balance read is checked >= 0 on the way."""
        held: collections.Counter = collections.Counter()
        for shop in self.shops:
            for currency in CURRENCIES:
                for name in ("balance", *shop.sub_accounts):
                    account = self.account(shop, name, currency)
                    assert account["balance"] >= 0 and account["available"] >= 0, f"{self.where()}: {account}"
                    held[currency] += account["available"]
                for name in ("payouts", "withdrawals"):
                    held[currency] += self.account(shop, name, currency)["credits_pending"]
            for customer_id in shop.customers:
                for entry in self.get(shop, f"/v1/customers/{customer_id}/wallet")["balances"]:
                    assert entry["balance"] >= 0 and entry["available"] >= 0, f"{self.where()}: {entry}"
                    held[entry["currency"]] += entry["available"]
        return held

    def account(self, shop: Shop, name: str, currency: str) -> dict:
        """A merchant's ledger account by name; one never used is all zeros."""
        reply = self.send(shop, "GET", f"/v1/accounts/.{name}.{currency}")
        if reply.status == 404:
            return {"balance": 0, "available": 0, "credits_pending": 0}
        return self.expect(reply, 200)

    def money_received_less_sent(self) -> collections.Counter:
        """Captured card money, transfers the bank says the gateway took, adjustments; less refunds to a card or a
        bank, and payouts and withdrawals the bank paid."""
        net = collections.Counter(self.adjusted)
        for payment_id, (shop, method) in self.payments.items():
            if method == "card":
                payment = self.get(shop, f"/v1/payments/{payment_id}")
                net[payment["currency"]] += payment["amount_captured"]
                self.outcomes[f"card {payment['status']}"] += 1
        for reference in self.transfers:
            transfer = self.at_the_bank(reference)
            self.outcomes[f"transfer {transfer['status']}"] += 1
            if transfer["status"] in ("credited", "refunded"):  # the gateway took it (and may have given it back)
                net[transfer["currency"]] += transfer["amount"]
        net.subtract(self.refunded)
        for shop, kind, object_id in self.outbound:
            sent = self.get(shop, f"/v1/{kind}/{object_id}")
            self.outcomes[f"{kind} {sent['status']}"] += 1
            if sent["status"] == "paid":
                net[sent["currency"]] -= sent["amount"]
        return net

    def check_ledger(self) -> None:
        ledger = self.expect(self.send(None, "GET", "/v1/admin/ledger_check", key=self.server.admin_token), 200)
        assert ledger["ok"] is True, f"{self.where()}: {ledger}"

    def bank_refunds(self) -> collections.Counter:
        """What the bank says went back to the payers of the transfers the walk sent."""
        refunded: collections.Counter = collections.Counter()
        for reference in self.transfers:
            transfer = self.at_the_bank(reference)
            refunded[transfer["currency"]] += transfer["amount_refunded"]
        return refunded

    def check_money(self) -> None:
        self.check_ledger()
        wait_until(self.bank_refunds, lambda refunded: refunded == self.refunded_by_bank,
                   what=f"{self.where()}: the bank to send back {self.refunded_by_bank}")
        held, net = self.money_held(), self.money_received_less_sent()
        for order in self.orders:
            self.outcomes[f"order {self.get(order.shop, f'/v1/orders/{order.id}')['status']}"] += 1
        for currency in CURRENCIES:
            assert held[currency] == net[currency], (
                f"{self.where()}: {currency}: held {held[currency]} != received less sent {net[currency]}")
