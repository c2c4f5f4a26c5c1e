"""Locust users for the HTTP benchmark (`make bench-http` runs them through bench/http.py).

Run by locust in its own process only: locust patches the whole process with
gevent when imported, so nothing in the service or the tests imports this file.

Configuration comes from the environment (bench/http.py sets it):

- PAYGATE_BENCH_MERCHANTS: a JSON file with {"keys": [merchant API keys], "admin_token"};
  each user takes the next key, round-robin, and keeps it; the admin token
  funds each wallet user's customer (an adjustment: no payment to wait for).
- PAYGATE_BENCH_CHECKOUTS_PER_S: checkouts per second per order-and-wallet user
  (each checkout is 3 requests), paced with constant_throughput.
- PAYGATE_BENCH_BATCHES_PER_S: batches per second per batch-transfer user.
- PAYGATE_BENCH_BATCH_SIZE: transfers per POST /v1/transfers batch.
- PAYGATE_BENCH_BATCH_USERS: how many batch-transfer users (fixed_count; 0: none).
- PAYGATE_BENCH_CARD_USERS: "0" leaves out the card-payment users (a run
  without the actors has no acquirer).
- PAYGATE_BENCH_SINGLE_USERS: "0" leaves out every single-request user class
  (a batch-only run); the -u left after the batch users goes to them by weight.
- PAYGATE_BENCH_LATENCY_FILE: where to write, at exit, the merged response-time
  histogram of the single-request users (locust's own 1 ms buckets), because
  locust's CSV has no aggregate over a subset of request names.

Request names decide how bench/http.py counts a request: a name ending in
SETUP ("[setup]") is set-up and left out, one ending in BATCH ("[batch]") is a
batch, and every other name is a single request in the aggregate RESULT
figures. A new user (say card payments) subclasses PaygateUser, is decorated
with @single_request_user, names its requests and sets a `weight` beside
OrderWalletUser's; bench/http.py needs no change.

Every request is checked (catch_response): a non-2xx, a body that is not the
expected JSON, or a result that is not what the API promises is a failure.
"""

import itertools
import os
import random
import time
import uuid

import orjson
from locust import FastHttpUser, constant_throughput, events, task

from bench.names import BATCH, CAPTURE, SETUP

CURRENCY = "usd"
DEPOSIT = 10**15  # minor units: far more than a run's checkouts spend


def _number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _credentials() -> tuple[list[str], str]:
    path = os.environ.get("PAYGATE_BENCH_MERCHANTS")
    if not path:
        raise RuntimeError("set PAYGATE_BENCH_MERCHANTS to a JSON file of merchant keys (bench/http.py does)")
    with open(path, "rb") as file:
        credentials = orjson.loads(file.read())
    if not credentials["keys"] or not credentials.get("admin_token"):
        raise RuntimeError(f"{path} holds no merchant keys or no admin token")
    return credentials["keys"], credentials["admin_token"]


MERCHANT_KEYS, ADMIN_TOKEN = _credentials()
SINGLE_USERS = os.environ.get("PAYGATE_BENCH_SINGLE_USERS", "1") != "0"
CARD_USERS = os.environ.get("PAYGATE_BENCH_CARD_USERS", "1") != "0"
BATCH_USERS = int(_number("PAYGATE_BENCH_BATCH_USERS", 1))
_next_merchant = itertools.count()


class CheckFailed(Exception):
    """The response was 2xx but not what the API promises."""


class PaygateUser(FastHttpUser):
    """One merchant's API client: its key, JSON in and out, every response checked."""

    abstract = True
    concurrency = 1  # one request at a time per user: one keep-alive connection

    def on_start(self) -> None:
        self.merchant_key = MERCHANT_KEYS[next(_next_merchant) % len(MERCHANT_KEYS)]
        self.headers = {"Authorization": f"Bearer {self.merchant_key}", "Content-Type": "application/json"}
        self.tag = uuid.uuid4().hex[:16]
        self.sequence = itertools.count(1)
        self.ready = False

    def call(self, method: str, path: str, name: str, body=None, check=None, idempotent: bool = False,
             as_admin: bool = False):
        """The decoded JSON of a 200 that passes `check` (which raises CheckFailed), or None after a failure."""
        headers = {**self.headers, "Authorization": f"Bearer {ADMIN_TOKEN}"} if as_admin else self.headers
        if idempotent:
            headers = {**headers, "Idempotency-Key": f"{self.tag}-{next(self.sequence)}"}
        data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        with self.client.request(method, path, name=name, data=data, headers=headers,
                                 catch_response=True) as response:
            if response.status_code != 200:
                text = (response.text or "")[:300] if response.status_code else repr(response.error)
                response.failure(f"HTTP {response.status_code}: {text}")
                return None
            try:
                payload = orjson.loads(response.content)
                if check is not None:
                    check(payload)
            except (orjson.JSONDecodeError, CheckFailed, KeyError, TypeError, IndexError) as error:
                response.failure(f"{type(error).__name__}: {error}"[:300])
                return None
            response.success()
            return payload


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def single_request_user(user_class: type) -> type:
    """A user class of single requests (spawned by weight); left out of a batch-only run."""
    if not SINGLE_USERS:
        user_class.abstract = True
    return user_class


@single_request_user
class OrderWalletUser(PaygateUser):
    """A shop checking out with the customer's wallet: create an order, pay it, read it back."""

    weight = 1
    wait_time = constant_throughput(_number("PAYGATE_BENCH_CHECKOUTS_PER_S", 5))

    def on_start(self) -> None:
        super().on_start()
        self.customer_id = ""
        self.set_up()

    def set_up(self) -> None:
        customer = self.call("POST", "/v1/customers", f"POST /v1/customers {SETUP}",
                             {"email": f"bench-{self.tag}@example.com", "name": "Bench customer"},
                             check=lambda body: expect(body["id"].startswith("cus_"), f"customer id {body['id']!r}"))
        if customer is None:
            return
        funded = self.call("POST", f"/v1/customers/{customer['id']}/adjustments",
                           f"POST /v1/customers/{{id}}/adjustments {SETUP}",
                           {"amount": DEPOSIT, "currency": CURRENCY, "reason": "benchmark funds"}, as_admin=True,
                           check=lambda body: expect(body["customer_id"] == customer["id"], "credited whom?"))
        if funded is None:
            return
        self.customer_id = customer["id"]
        self.ready = True

    @task
    def checkout(self) -> None:
        if not self.ready:
            self.set_up()
            return
        amount = random.randint(100, 100_000)

        def order_created(body) -> None:
            expect(body["status"] == "pending", f"new order status {body['status']!r}")
            expect(body["amount"] == amount and body["payment_methods"] == ["wallet"], "order fields differ")

        order = self.call("POST", "/v1/orders", "POST /v1/orders",
                          {"name": "Bench order", "amount": amount, "currency": CURRENCY,
                           "payment_methods": ["wallet"]}, check=order_created, idempotent=True)
        if order is None:
            return
        order_id = order["id"]

        def paid(body) -> None:
            expect(body["status"] == "succeeded", f"payment status {body['status']!r}")
            expect(body["order_id"] == order_id and body["amount"] == amount, "payment fields differ")

        payment = self.call("POST", "/v1/payments", "POST /v1/payments",
                            {"order_id": order_id, "payment_method": {"type": "wallet", "customer_id": self.customer_id}},
                            check=paid, idempotent=True)
        if payment is None:
            return

        def order_paid(body) -> None:
            expect(body["status"] == "paid", f"paid order status {body['status']!r}")
            expect(body["payment_id"] == payment["id"], f"order payment_id {body['payment_id']!r}")

        self.call("GET", f"/v1/orders/{order_id}", "GET /v1/orders/{id}", check=order_paid)


# A merchant's reads of a payment while the acquirer's callback is on its way: first after about one acquirer round
# trip, then backing off, at most 12 reads (about 3 s).
CARD_POLL_FIRST_S = 0.02
CARD_POLL_MAX_S = 0.4
CARD_POLLS = 12


@single_request_user
class CardPaymentUser(PaygateUser):
    """A shop taking a card: create an order, pay it by test card (manual capture), wait for the authorization, capture."""

    abstract = not CARD_USERS  # no acquirer without the actors
    weight = int(_number("PAYGATE_BENCH_CARD_WEIGHT", 1))
    wait_time = constant_throughput(_number("PAYGATE_BENCH_CHECKOUTS_PER_S", 5))

    @task
    def pay_by_card(self) -> None:
        amount = random.randint(100, 100_000)
        order = self.call("POST", "/v1/orders", "POST /v1/orders", {"name": "Bench card order", "amount": amount,
                          "currency": CURRENCY, "payment_methods": ["card"]}, idempotent=True)
        if order is None:
            return
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"}
        payment = self.call("POST", "/v1/payments", "POST /v1/payments [card]",
                            {"order_id": order["id"], "capture_method": "manual",
                             "payment_method": {"type": "card", "card": card}}, idempotent=True,
                            check=lambda body: expect(body["payment_method"]["card"]["last4"] == "4242", "last4"))
        if payment is None:
            return
        current = payment
        delay_s = CARD_POLL_FIRST_S
        for _ in range(CARD_POLLS):
            if current["status"] != "processing":
                break
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, CARD_POLL_MAX_S)
            current = self.call("GET", f"/v1/payments/{payment['id']}", "GET /v1/payments/{id}")
            if current is None:
                return
        if current["status"] != "requires_capture":
            return
        self.call("POST", f"/v1/payments/{payment['id']}/capture", CAPTURE, {}, idempotent=True,
                  check=lambda body: expect(body["status"] == "succeeded" and body["amount_captured"] == amount,
                                            f"captured {body.get('amount_captured')} of {amount}"))


class BatchTransferUser(PaygateUser):
    """A ledger client posting arrays of transfers between two of its accounts."""

    abstract = BATCH_USERS == 0
    fixed_count = BATCH_USERS
    wait_time = constant_throughput(_number("PAYGATE_BENCH_BATCHES_PER_S", 10))
    batch_size = int(_number("PAYGATE_BENCH_BATCH_SIZE", 1000))

    def on_start(self) -> None:
        super().on_start()
        self.accounts: list[str] = []
        self.next_transfer = 0
        self.set_up()

    def set_up(self) -> None:
        accounts = []
        for side in ("from", "to"):
            account_id = f"bench_{self.tag}_{side}"
            created = self.call("POST", "/v1/accounts", f"POST /v1/accounts {SETUP}",
                                {"id": account_id, "currency": CURRENCY},
                                check=lambda body, wanted=account_id: expect(body["id"] == wanted, "account id differs"))
            if created is None:
                return
            accounts.append(account_id)
        self.accounts = accounts
        self.ready = True

    def batch_body(self) -> tuple[bytes, int]:
        """`batch_size` transfers with ids unique across users and runs; the JSON built as text (cheap)."""
        debit, credit = self.accounts
        first = self.next_transfer
        self.next_transfer += self.batch_size
        prefix = f'{{"id":"t{self.tag}_'
        rest = f'","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":1,"currency":"{CURRENCY}"}}'
        body = "[" + ",".join(f"{prefix}{n}{rest}" for n in range(first, first + self.batch_size)) + "]"
        return body.encode(), first

    @task
    def post_batch(self) -> None:
        if not self.ready:
            self.set_up()
            return
        body, first = self.batch_body()
        size = self.batch_size

        def all_created(results) -> None:
            expect(isinstance(results, list) and len(results) == size, f"{len(results)} results for {size} transfers")
            refused = [item for item in results if item["result"] != "created"]
            expect(not refused, f"{len(refused)} of {size} not created, first {refused[:1]}")
            expect(results[0]["id"] == f"t{self.tag}_{first}", "results out of order")

        self.call("POST", "/v1/transfers", f"POST /v1/transfers {BATCH}", body, check=all_created)


@events.quitting.add_listener
def _write_single_request_latencies(environment, **_) -> None:
    """The merged histogram of every single-request name (neither set-up nor batch), for bench/http.py."""
    path = os.environ.get("PAYGATE_BENCH_LATENCY_FILE")
    if not path or environment.stats is None:
        return
    histogram: dict[int, int] = {}
    requests = failures = 0
    for (name, _method), entry in environment.stats.entries.items():
        if name.endswith(SETUP) or name.endswith(BATCH):
            continue
        requests += entry.num_requests
        failures += entry.num_failures
        for milliseconds, count in entry.response_times.items():
            histogram[milliseconds] = histogram.get(milliseconds, 0) + count
    with open(path, "wb") as file:
        file.write(orjson.dumps({"requests": requests, "failures": failures,
                                 "response_times_ms": sorted(histogram.items())}))
