"""The public HTTP API of API.md, black-box: a real `paygate serve` (shards + two edge workers), over HTTP only.

Every request must answer below 500 with a Request-Id; every error has the API's one shape; after every test the
full double-entry check passes.
"""

import asyncio
import collections
import datetime
import json
import os
import re
import signal
import socket
import time
import urllib.parse
import uuid

import aiohttp
import pytest

from edge.schemas import CURRENCY_NUMBERS
from edge_harness import Server
from engine.emvco import parse_payload

ANY = object()
ERROR_TYPES = {400: "invalid_request_error", 402: "balance_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
ORDER = {"name": "Coffee", "amount": 1999, "currency": "usd"}
CUSTOMER = {"email": "ann@example.com", "name": "Ann"}


pytestmark = pytest.mark.usefixtures("double_entry_holds")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("edge"), workers=2, extra=("--order-ip-limit", "100000")).start()
    yield server
    server.stop()


# --- helpers -------------------------------------------------------------------------------------------------------

def call(server, method, path, body=None, key=None, status=None, **options):
    reply = server.request(method, path, body if not isinstance(body, bytes) else None, key=key,
                           raw=body if isinstance(body, bytes) else None, **options)
    assert reply.status < 500, (method, path, reply.status, reply.body[:300])
    assert reply.headers.get("Request-Id"), (method, path)
    if status is not None:
        assert reply.status == status, (method, path, reply.status, reply.body[:300])
    return reply


def ok(server, method, path, body=None, key=None, **options):
    return call(server, method, path, body, key, status=200, **options).json()


def error(server, method, path, body=None, key=None, status=400, code=ANY, param=ANY, **options) -> dict:
    problem = call(server, method, path, body, key, status=status, **options).json()["error"]
    assert set(problem) == {"type", "code", "message", "param"} and problem["message"]
    assert problem["type"] == ERROR_TYPES[status]
    assert code is ANY or problem["code"] == code, problem
    assert param is ANY or problem["param"] == param, problem
    return problem


def merchant(server) -> str:
    name = f"shop-{uuid.uuid4().hex[:8]}"
    return ok(server, "POST", "/v1/merchants", {"name": name, "email": f"{name}@example.com", "tier": "premium"},
              key=server.admin_token)["api_key"]


def order(server, key, **fields) -> dict:
    return ok(server, "POST", "/v1/orders", {**ORDER, **fields}, key=key)


def customer(server, key) -> str:
    return ok(server, "POST", "/v1/customers", CUSTOMER, key=key)["id"]


def accounts(server, key, *ids, **flags) -> None:
    for account_id in ids:
        ok(server, "POST", "/v1/accounts", {"id": account_id, "currency": "usd", "flags": flags}, key=key)


def transfer(transfer_id, debit="a", credit="b", amount=10, **fields) -> dict:
    return {"id": transfer_id, "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
            "currency": "usd", **fields}


def account(server, key, account_id) -> dict:
    return ok(server, "GET", f"/v1/accounts/{account_id}", key=key)


def walk(server, key, path, limit, **query) -> list[str]:
    """Every id of a list, page by page; has_more must be true exactly when another page follows."""
    ids, after = [], None
    while True:
        cursor = {"starting_after": after} if after else {}
        page = ok(server, "GET", f"{path}?{urllib.parse.urlencode({**query, 'limit': limit, **cursor})}", key=key)
        assert page["data"] or after is None, "has_more promised a page that is empty"
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            assert len(page["data"]) <= limit
            return ids
        assert len(page["data"]) == limit
        after = ids[-1]


def moment(text: str) -> datetime.datetime:
    assert RFC3339.match(text), text
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_between(start: str, end: str) -> float:
    return (moment(end) - moment(start)).total_seconds()


def time_mark() -> str:
    """An RFC 3339 instant (µs) strictly between what happened before the call and what happens after it."""
    time.sleep(0.01)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    time.sleep(0.01)
    return now


async def _post_all(server, key, requests: list[tuple[str, dict]]) -> list[tuple[int, dict]]:
    async with aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {key}"},
                                     connector=aiohttp.TCPConnector(limit=64)) as session:
        async def post(path, body):
            async with session.post(path, json=body) as reply:
                return reply.status, await reply.json()
        return await asyncio.gather(*(post(path, body) for path, body in requests))


def post_concurrently(server, key, requests):
    replies = asyncio.run(_post_all(server, key, requests))
    assert all(status < 500 for status, _ in replies), collections.Counter(status for status, _ in replies)
    return replies


# --- 1. orders -----------------------------------------------------------------------------------------------------

def test_order_lifecycle_create_get_patch_cancel(server):
    key = merchant(server)
    created = order(server, key, name="Iced latte", amount=450, note="no sugar", expires_in=600)
    assert created["id"].startswith("ord_") and created["status"] == "pending"
    assert [created[name] for name in ("amount", "currency", "name", "note")] == [450, "usd", "Iced latte", "no sugar"]
    assert created["payment_url"].endswith(f"/pay/{created['id']}")
    assert seconds_between(created["created_at"], created["expires_at"]) == pytest.approx(600, abs=2)
    assert ok(server, "GET", f"/v1/orders/{created['id']}", key=key) == created

    changes = {"name": "Hot latte", "note": "oat milk", "amount": 500, "expires_in": 3600}
    patched = ok(server, "PATCH", f"/v1/orders/{created['id']}", changes, key=key)
    assert [patched[name] for name in ("name", "note", "amount", "status")] == ["Hot latte", "oat milk", 500, "pending"]
    assert seconds_between(created["expires_at"], patched["expires_at"]) == pytest.approx(3000, abs=2)
    assert seconds_between(patched["updated_at"], patched["expires_at"]) == pytest.approx(3600, abs=2)
    assert ok(server, "GET", f"/v1/orders/{created['id']}", key=key) == patched

    cancelled = ok(server, "DELETE", f"/v1/orders/{created['id']}", key=key)
    assert cancelled["status"] == "cancelled" and cancelled["amount"] == 500
    for method, body in (("DELETE", None), ("PATCH", {"name": "Too late"})):
        error(server, method, f"/v1/orders/{created['id']}", body, key=key, status=409, code="order_not_pending")
    assert ok(server, "GET", f"/v1/orders/{created['id']}", key=key) == cancelled


def test_order_search_filters_combine_and_pages_walk_every_order_once(server):
    key = merchant(server)
    created, marks = [], []
    for group in range(3):
        if group:
            marks.append(time_mark())
        created += [order(server, key, name=f"{name} {group}") for name in ("Blue Coffee", "green tea", "COFFEE beans",
                                                                             "Water")]
    for cancelled in created[1::3]:
        cancelled["status"] = ok(server, "DELETE", f"/v1/orders/{cancelled['id']}", key=key)["status"]
    pending = lambda o: o["status"] == "pending"
    searches = [  # query, which orders (by creation index) it finds
        ({}, lambda i, o: True),
        ({"name": "coffee"}, lambda i, o: "coffee" in o["name"].lower()),
        ({"status": "cancelled"}, lambda i, o: o["status"] == "cancelled"),
        ({"name": "CoFfEe", "status": "pending"}, lambda i, o: "coffee" in o["name"].lower() and pending(o)),
        ({"created_gte": marks[0], "created_lt": marks[1]}, lambda i, o: 4 <= i < 8),
        ({"created_gte": marks[0], "name": "TEA", "status": "pending"},
         lambda i, o: i >= 4 and "tea" in o["name"] and pending(o)),
        ({"created_lt": marks[0], "status": "paid"}, lambda i, o: False),
    ]
    for query, finds in searches:
        expected = [o["id"] for i, o in reversed(list(enumerate(created))) if finds(i, o)]  # newest first
        for limit in (1, 3, 100):
            assert walk(server, key, "/v1/orders", limit, **query) == expected, (query, limit)


# --- 2. the ledger -------------------------------------------------------------------------------------------------

def test_accounts_client_and_generated_ids_duplicates_and_flags(server):
    key = merchant(server)
    cash = ok(server, "POST", "/v1/accounts", {"id": "cash", "currency": "usd", "code": 7}, key=key)
    assert cash["id"] == "cash" and cash["code"] == 7 and not any(cash["flags"].values())
    assert all(cash[field] == 0 for field in ("debits_pending", "debits_posted", "credits_pending", "credits_posted",
                                              "balance", "available"))
    assert ok(server, "POST", "/v1/accounts", {"currency": "eur"}, key=key)["id"].startswith("acct_")
    for duplicate, code in (({"currency": "usd", "code": 7}, "exists"),
                            ({"currency": "eur", "code": 7}, "exists_with_different_currency")):
        error(server, "POST", "/v1/accounts", {"id": "cash", **duplicate}, key=key, status=409, code=code, param="id")
    flags = {"debits_must_not_exceed_credits": True, "history": True}
    capped = ok(server, "POST", "/v1/accounts", {"id": "capped", "currency": "usd", "flags": flags}, key=key)
    assert {name for name, on in capped["flags"].items() if on} == set(flags)
    error(server, "POST", "/v1/accounts", {"id": "both", "currency": "usd", "flags": {
        "debits_must_not_exceed_credits": True, "credits_must_not_exceed_debits": True}}, key=key, param="flags")
    assert account(server, key, "capped") == capped
    error(server, "GET", "/v1/accounts/both", key=key, status=404)
    labelled = ok(server, "POST", "/v1/accounts", {"id": "till", "currency": "usd", "metadata": {"store": "d1"}},
                  key=key)
    assert labelled["metadata"] == account(server, key, "till")["metadata"] == {"store": "d1"}
    assert cash["metadata"] == {}


def test_single_transfer_resubmission_and_lookup(server):
    key = merchant(server)
    accounts(server, key, "a", "b")
    for body, result in ((transfer("t1"), "created"), (transfer("t1"), "exists"),
                         (transfer("t1", amount=11), "exists_with_different_amount")):
        assert ok(server, "POST", "/v1/transfers", body, key=key) == {"id": "t1", "result": result}
    stored = ok(server, "GET", "/v1/transfers/t1", key=key)
    assert {k: stored[k] for k in ("id", "debit_account_id", "credit_account_id", "amount", "currency", "flags")} == \
        {"id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 10, "currency": "usd", "flags": []}
    moment(stored["created_at"])
    assert (account(server, key, "a")["balance"], account(server, key, "b")["balance"]) == (-10, 10)
    error(server, "GET", "/v1/transfers/t2", key=key, status=404)


def test_transfer_batch_answers_each_item_in_order(server):
    key = merchant(server)
    accounts(server, key, "src")
    accounts(server, key, "capped", debits_must_not_exceed_credits=True)
    batch = [  # transfer, expected result
        (transfer("fund", "src", "capped", 100), "created"),
        (transfer("to-nowhere", "src", "missing"), "credit_account_not_found"),
        (transfer("overdraw", "capped", "src", 101), "exceeds_credits"),
        (transfer("chain-1", "src", "capped", 5, flags=["linked"]), "linked_event_failed"),
        (transfer("chain-2", "capped", "src", 10_000, flags=["linked"]), "exceeds_credits"),
        (transfer("chain-3", "src", "capped", 7), "linked_event_failed"),
        (transfer("drain", "capped", "src", 100), "created"),
    ]
    results = ok(server, "POST", "/v1/transfers", [item for item, _ in batch], key=key)
    assert results == [{"id": item["id"], "result": result} for item, result in batch]
    capped = account(server, key, "capped")
    assert (capped["credits_posted"], capped["debits_posted"], capped["balance"]) == (100, 100, 0)
    for failed in ("chain-1", "chain-3", "overdraw"):
        error(server, "GET", f"/v1/transfers/{failed}", key=key, status=404)


def test_a_batch_with_one_id_outside_the_alphabet_is_refused_whole_naming_the_field(server):
    key = merchant(server)
    accounts(server, key, "a", "b")
    for field in ("id", "debit_account_id", "credit_account_id", "pending_id"):
        batch = [transfer("fine-1"), {**transfer("fine-2"), field: "a b"}, transfer("fine-3")]
        error(server, "POST", "/v1/transfers", batch, key=key, code="parameter_invalid", param=field)
    # Two bad items: the first one's field is named, whichever field of the second is bad
    batch = [transfer("fine-1"), {**transfer("fine-2"), "credit_account_id": "a b"}, {**transfer("fine-3"), "id": "c d"}]
    error(server, "POST", "/v1/transfers", batch, key=key, code="parameter_invalid", param="credit_account_id")
    assert account(server, key, "a")["debits_posted"] == 0


def test_two_phase_post_partially_and_void(server):
    key = merchant(server)
    accounts(server, key, "a", "b")
    steps = [  # transfer, expected result, a's (debits_pending, debits_posted, available) afterwards
        (transfer("hold", amount=50, flags=["pending"], timeout_s=3600), "created", (50, 0, -50)),
        ({"id": "capture", "pending_id": "hold", "amount": 20, "flags": ["post_pending"]}, "created", (0, 20, -20)),
        ({"id": "capture-again", "pending_id": "hold", "flags": ["post_pending"]}, "pending_transfer_already_posted",
         (0, 20, -20)),
        (transfer("hold-2", amount=30, flags=["pending"], timeout_s=3600), "created", (30, 20, -50)),
        ({"id": "release", "pending_id": "hold-2", "flags": ["void_pending"]}, "created", (0, 20, -20)),
    ]
    for body, result, balances_after in steps:
        assert ok(server, "POST", "/v1/transfers", body, key=key) == {"id": body["id"], "result": result}
        a = account(server, key, "a")
        assert (a["debits_pending"], a["debits_posted"], a["available"]) == balances_after, body
    capture = ok(server, "GET", "/v1/transfers/capture", key=key)
    assert (capture["amount"], capture["pending_id"], capture["flags"]) == (20, "hold", ["post_pending"])
    assert ok(server, "GET", "/v1/transfers/hold", key=key)["timeout_s"] == 3600


def test_transfer_array_of_8190_is_accepted_and_8191_is_413(server):
    key = merchant(server)
    accounts(server, key, "a", "b")
    batch = [transfer(f"x{index}", amount=1) for index in range(8191)]
    results = ok(server, "POST", "/v1/transfers", batch[:8190], key=key)
    assert len(results) == 8190 and {result["result"] for result in results} == {"created"}
    error(server, "POST", "/v1/transfers", [{**item, "id": f"y{item['id']}"} for item in batch], key=key,
          status=413, code="too_many_transfers")
    assert account(server, key, "a")["debits_posted"] == 8190
    error(server, "GET", "/v1/transfers/yx0", key=key, status=404)


def test_full_batches_sent_at_once_are_all_applied(server):
    """More full batches than one shard batch holds, at once: the edge splits them across shard requests by
    the transfers they hold, so none is refused for its size."""
    key = merchant(server)
    accounts(server, key, "a", "b")
    requests = [("/v1/transfers", [transfer(f"full{batch}_{index}", amount=1) for index in range(8190)])
                for batch in range(24)]
    replies = post_concurrently(server, key, requests)
    assert [status for status, _ in replies] == [200] * 24
    assert all({result["result"] for result in results} == {"created"} for _, results in replies)
    assert account(server, key, "a")["debits_posted"] == 24 * 8190


def test_statement_is_newest_first_and_pages_through_every_transfer(server):
    key = merchant(server)
    accounts(server, key, "a", "b", "c")
    ids = [f"s{index}" for index in range(8)]
    for half in (ids[:4], ids[4:]):
        ok(server, "POST", "/v1/transfers", [transfer(transfer_id, amount=1) for transfer_id in half], key=key)
    ok(server, "POST", "/v1/transfers", transfer("elsewhere", "b", "c"), key=key)
    for limit in (1, 3, 8, 100):
        assert walk(server, key, "/v1/accounts/a/transfers", limit) == ids[::-1]
    assert walk(server, key, "/v1/accounts/b/transfers", 3) == ["elsewhere", *ids[::-1]]
    # a transfer that is not on the account is no cursor in its statement
    error(server, "GET", "/v1/accounts/a/transfers?starting_after=elsewhere", key=key, param="starting_after")


def test_a_statement_window_ending_at_the_epoch_is_an_empty_page(server):
    key = merchant(server)
    accounts(server, key, "a", "b")
    ok(server, "POST", "/v1/transfers", transfer("t1"), key=key)
    for created_lt in ("0", "1970-01-01T00:00:00Z"):
        page = ok(server, "GET", f"/v1/accounts/a/transfers?created_lt={created_lt}", key=key)
        assert page == {"object": "list", "data": [], "has_more": False}


def test_balance_as_of_a_time_for_history_accounts_only(server):
    key = merchant(server)
    accounts(server, key, "h", history=True)
    accounts(server, key, "b")
    ok(server, "POST", "/v1/transfers", transfer("first", "h", "b", 10), key=key)
    between = int(time.time()) + 1  # the next whole second: after `first`, before `second`
    time.sleep(between + 0.05 - time.time())
    ok(server, "POST", "/v1/transfers", transfer("second", "h", "b", 25), key=key)
    for at, debits_posted in ((between, 10), (between + 3600, 35), (1, 0)):
        balance = ok(server, "GET", f"/v1/accounts/h/balances?at={at}", key=key)
        assert [balance[field] for field in ("account_id", "debits_posted", "balance")] == ["h", debits_posted,
                                                                                             -debits_posted]
    error(server, "GET", f"/v1/accounts/b/balances?at={between}", key=key, status=404)


def test_ledger_ids_up_to_the_documented_48_characters(server):
    key = merchant(server)
    long_a, long_b = "a" * 48, "b" * 48
    accounts(server, key, long_a, long_b)
    assert ok(server, "POST", "/v1/transfers", transfer("t" * 48, long_a, long_b), key=key)["result"] == "created"


# --- 3. customers and wallets --------------------------------------------------------------------------------------

def wallet(server, key, customer_id) -> dict:
    return ok(server, "GET", f"/v1/customers/{customer_id}/wallet", key=key)


def balances(reply: dict) -> dict:
    return {entry["currency"]: (entry["balance"], entry["available"]) for entry in reply["balances"]}


def fund(server, customer_id: str, amount: int, currency: str = "usd") -> dict:
    """An operator's adjustment: the one way to credit a wallet without a payment (admin only, with a reason)."""
    return ok(server, "POST", f"/v1/customers/{customer_id}/adjustments",
              {"amount": amount, "currency": currency, "reason": "test funds"}, key=server.admin_token)


def test_wallet_adjustments_withdrawals_and_insufficient_funds(server):
    key = merchant(server)
    created = ok(server, "POST", "/v1/customers", CUSTOMER, key=key)
    assert created["id"].startswith("cus_") and created["email"] == CUSTOMER["email"]
    assert ok(server, "GET", f"/v1/customers/{created['id']}", key=key) == created
    customer_id = created["id"]
    assert wallet(server, key, customer_id)["balances"] == []
    adjusted = fund(server, customer_id, 1000)
    assert (adjusted["object"], adjusted["customer_id"]) == ("adjustment", customer_id)
    assert adjusted["reason"] == "test funds"
    # Without actors the bank never hears of it: the withdrawal stays pending, its money held.
    withdrawn = ok(server, "POST", f"/v1/customers/{customer_id}/withdrawals", {"amount": 300, "currency": "usd"},
                   key=key)
    assert (withdrawn["object"], withdrawn["status"], withdrawn["amount"]) == ("withdrawal", "pending", 300)
    assert ok(server, "GET", f"/v1/withdrawals/{withdrawn['id']}", key=key) == withdrawn
    fund(server, customer_id, 50, "eur")
    before = wallet(server, key, customer_id)
    assert balances(before) == {"usd": (1000, 700), "eur": (50, 50)}
    assert [entry["amount"] for entry in before["history"]] == [50, 300, 1000]  # newest first
    error(server, "POST", f"/v1/customers/{customer_id}/withdrawals", {"amount": 701, "currency": "usd"}, key=key,
          status=402, code="insufficient_funds")
    error(server, "POST", f"/v1/customers/{customer_id}/withdrawals", {"amount": 1, "currency": "gbp"}, key=key,
          status=402, code="insufficient_funds")
    assert wallet(server, key, customer_id) == before
    error(server, "POST", "/v1/customers/cus_missing/deposits",
          {"amount": 1, "currency": "usd", "payment_method": {"type": "qr"}}, key=key, status=404)


def test_adjustments_are_admin_only_and_name_their_reason(server):
    key = merchant(server)
    customer_id = customer(server, key)
    path = f"/v1/customers/{customer_id}/adjustments"
    error(server, "POST", path, {"amount": 5, "currency": "usd", "reason": "mine"}, key=key, status=403,
          code="admin_only")
    error(server, "POST", path, {"amount": 5, "currency": "usd"}, key=server.admin_token, param="reason")
    error(server, "POST", path, {"amount": 5, "currency": "usd", "reason": " "}, key=server.admin_token,
          param="reason")
    error(server, "POST", "/v1/customers/cus_0000/adjustments", {"amount": 5, "currency": "usd", "reason": "x"},
          key=server.admin_token, status=404)
    assert wallet(server, key, customer_id)["balances"] == []


def test_deposit_replayed_after_later_deposits_answers_the_first_response(server):
    """Without actors: a QR deposit waits for the payer's transfer, and its wallet is not credited meanwhile."""
    key = merchant(server)
    customer_id = ok(server, "POST", "/v1/customers", CUSTOMER, key=key)["id"]
    path = f"/v1/customers/{customer_id}/deposits"
    headers = {"Idempotency-Key": f"deposit-{uuid.uuid4().hex}"}
    body = {"amount": 40, "currency": "usd", "payment_method": {"type": "qr"}}
    first = call(server, "POST", path, body, key=key, status=200, headers=headers)
    ok(server, "POST", path, {**body, "amount": 5}, key=key)
    again = call(server, "POST", path, body, key=key, status=200, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == first.json()
    deposit = first.json()
    assert (deposit["object"], deposit["status"], deposit["next_action"]["type"]) == ("deposit", "requires_action",
                                                                                      "display_qr")
    assert ok(server, "GET", f"/v1/deposits/{deposit['id']}", key=key) == deposit
    error(server, "POST", path, {**body, "amount": 41}, key=key, status=409, code="idempotency_key_reused",
          headers=headers)
    assert wallet(server, key, customer_id)["balances"] == []


def test_wallet_of_a_newly_created_merchant(tmp_path):
    own = Server(tmp_path, workers=1).start()
    try:
        key = merchant(own)
        customer_id = customer(own, key)
        fund(own, customer_id, 100)
        assert balances(wallet(own, key, customer_id)) == {"usd": (100, 100)}
    finally:
        own.stop()


# --- 4. the race ---------------------------------------------------------------------------------------------------

def test_concurrent_wallet_payments_never_overdraw(server):
    key, price, covered, attempts = server.demo_key, 250, 100, 500
    payer = customer(server, key)
    fund(server, payer, covered * price)
    tag = f"race-{uuid.uuid4().hex[:8]}"
    orders = post_concurrently(server, key, [("/v1/orders", {**ORDER, "name": f"{tag} #{index}", "amount": price,
                                                              "payment_methods": ["wallet"]})
                                             for index in range(attempts)])
    assert {status for status, _ in orders} == {200}
    payments = post_concurrently(server, key, [("/v1/payments", {"order_id": body["id"], "payment_method": {
        "type": "wallet", "customer_id": payer}}) for _, body in orders])

    assert collections.Counter(status for status, _ in payments) == {200: covered, 402: attempts - covered}
    refused = [body["error"] for status, body in payments if status == 402]
    assert {(problem["type"], problem["code"]) for problem in refused} == {("balance_error", "insufficient_funds")}
    paid = sorted(body["order_id"] for status, body in payments if status == 200)
    assert all(body["status"] == "succeeded" and body["amount"] == price for status, body in payments if status == 200)
    assert balances(wallet(server, key, payer)) == {"usd": (0, 0)}
    assert sorted(walk(server, key, "/v1/orders", 100, status="paid", name=tag)) == paid
    assert len(walk(server, key, "/v1/orders", 100, status="pending", name=tag)) == attempts - covered


def test_payments_filtered_by_status_page_through_the_matches_only(server):
    """Without Ray: a wallet payment succeeds at once; a QR payment waits for its transfer (requires_action), and
    is cancelled with its order."""
    key = merchant(server)
    payer = customer(server, key)
    fund(server, payer, 3 * ORDER["amount"])

    def pay(kind: str) -> tuple[str, str]:
        order_id = order(server, key, payment_methods=[kind])["id"]
        method = {"type": "wallet", "customer_id": payer} if kind == "wallet" else {"type": kind}
        return order_id, ok(server, "POST", "/v1/payments", {"order_id": order_id, "payment_method": method},
                            key=key)["id"]

    made = [pay(kind) for kind in ("wallet", "qr") * 3]
    ok(server, "DELETE", f"/v1/orders/{made[3][0]}", key=key)
    newest_first = [payment_id for _, payment_id in reversed(made)]
    expected = {"succeeded": newest_first[1::2], "requires_action": [newest_first[0], newest_first[4]],
                "cancelled": [newest_first[2]], "failed": []}
    for status, ids in expected.items():
        for limit in (1, 2, 100):
            assert walk(server, key, "/v1/payments", limit, status=status) == ids, (status, limit)
    assert walk(server, key, "/v1/payments", 4) == newest_first


def test_an_orders_payments_a_payments_refunds_and_the_payouts_are_listed(server):
    key = merchant(server)
    payer = customer(server, key)
    fund(server, payer, 3 * ORDER["amount"])
    order_id = order(server, key, payment_methods=["wallet", "qr"])["id"]
    waiting = ok(server, "POST", "/v1/payments", {"order_id": order_id, "payment_method": {"type": "qr"}}, key=key)
    paid = ok(server, "POST", "/v1/payments", {"order_id": order_id,
                                               "payment_method": {"type": "wallet", "customer_id": payer}}, key=key)
    ok(server, "POST", "/v1/payments", {"order_id": order(server, key)["id"],
                                        "payment_method": {"type": "wallet", "customer_id": payer}}, key=key)
    assert walk(server, key, "/v1/payments", 1, order_id=order_id) == [paid["id"], waiting["id"]]
    refunds = [ok(server, "POST", "/v1/refunds", {"payment_id": paid["id"], "amount": amount}, key=key)["id"]
               for amount in (100, 200)]
    assert walk(server, key, "/v1/refunds", 1, payment_id=paid["id"]) == refunds[::-1]
    assert walk(server, key, "/v1/refunds", 5, payment_id=waiting["id"]) == []
    error(server, "GET", "/v1/refunds", key=key, code="parameter_missing", param="payment_id")
    error(server, "GET", f"/v1/refunds?payment_id={paid['id']}&starting_after=re_nothing", key=key,
          param="starting_after")
    payouts = [ok(server, "POST", "/v1/payouts", {"amount": 10, "currency": "usd"}, key=key)["id"] for _ in range(3)]
    assert walk(server, key, "/v1/payouts", 2) == payouts[::-1]
    other = merchant(server)
    assert walk(server, other, "/v1/payouts", 2) == []
    assert walk(server, other, "/v1/refunds", 2, payment_id=paid["id"]) == []
    error(server, "GET", "/v1/payouts", key=server.admin_token, status=403)


def test_merchants_are_listed_newest_first_across_shards(tmp_path):
    server = Server(tmp_path, workers=1, shards=2).start()
    try:
        made = [ok(server, "POST", "/v1/merchants", {"name": f"Listed shop {number}", "email": "o@example.com"},
                   key=server.admin_token)["id"] for number in range(5)]
        listed = walk(server, server.admin_token, "/v1/merchants", 2, name="listed SHOP")
        assert listed == made[::-1]
        assert walk(server, server.admin_token, "/v1/merchants", 10)[-1] == "mer_demo"
        error(server, "GET", "/v1/merchants", key=merchant(server), status=403)
        error(server, "GET", "/v1/merchants?starting_after=mer_nothing", key=server.admin_token,
              param="starting_after")
    finally:
        server.stop()


# --- 5. bad input --------------------------------------------------------------------------------------------------

def bad(name, method, path, body, status=400, code=ANY, param=ANY):
    return pytest.param(method, path, body, status, code, param, id=name)


BAD_INPUT = [
    bad("malformed-json", "POST", "/v1/orders", b'{"name": "tea", ', code="invalid_json"),
    bad("amount-as-string", "POST", "/v1/orders", {**ORDER, "amount": "10"}, param="amount"),
    bad("currency-as-number", "POST", "/v1/orders", {**ORDER, "currency": 5}, param="currency"),
    bad("missing-amount", "POST", "/v1/orders", {"name": "tea", "currency": "usd"}, param="amount"),
    bad("zero-amount", "POST", "/v1/orders", {**ORDER, "amount": 0}, param="amount"),
    bad("negative-amount", "POST", "/v1/orders", {**ORDER, "amount": -5}, param="amount"),
    bad("unknown-currency", "POST", "/v1/orders", {**ORDER, "currency": "xyz"}, code="currency_unknown",
        param="currency"),
    bad("expiry-below-minimum", "POST", "/v1/orders", {**ORDER, "expires_in": 59}, param="expires_in"),
    bad("unknown-field", "POST", "/v1/orders", {**ORDER, "colour": "red"}, code="parameter_invalid"),
    bad("body-over-4-MiB", "POST", "/v1/orders", b'{"name": "' + b"x" * (4 << 20) + b'"}', 413, "request_too_large"),
    bad("patch-amount-as-string", "PATCH", "/v1/orders/{order}", {"amount": "7"}, param="amount"),
    bad("patch-unknown-field", "PATCH", "/v1/orders/{order}", {"status": "paid"}),
    bad("account-missing-currency", "POST", "/v1/accounts", {"id": "bad-input"}, param="currency"),
    bad("transfer-negative-amount", "POST", "/v1/transfers", transfer("bad-input", amount=-1), param="amount"),
    bad("transfer-empty-array", "POST", "/v1/transfers", []),
    bad("customer-bad-email", "POST", "/v1/customers", {"email": "nobody"}, param="email"),
    # A pattern's end is the end of the text: no newline may trail a value (Python's `$` lets one through).
    bad("account-id-with-a-trailing-newline", "POST", "/v1/accounts", {"id": "bad-input\n", "currency": "usd"},
        param="id"),
    bad("customer-email-with-a-trailing-newline", "POST", "/v1/customers", {"email": "ann@example.com\n"},
        param="email"),
    bad("order-callback-url-with-a-trailing-newline", "POST", "/v1/orders",
        {**ORDER, "callback_url": "https://shop.example/done\n"}, param="callback_url"),
    bad("card-cvc-with-a-trailing-newline", "POST", "/v1/payments", {"amount": 1, "currency": "usd", "payment_method": {
        "type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123\n"}}},
        param="payment_method.card.cvc"),
    bad("order-bad-customer-email", "POST", "/v1/orders", {**ORDER, "customer_email": "not an email"},
        param="customer_email"),
    bad("deposit-zero", "POST", "/v1/customers/{customer}/deposits",
        {"amount": 0, "currency": "usd", "payment_method": {"type": "qr"}}, param="amount"),
    bad("deposit-by-wallet", "POST", "/v1/customers/{customer}/deposits",
        {"amount": 1, "currency": "usd", "payment_method": {"type": "wallet", "customer_id": "{customer}"}},
        param="payment_method.type"),
    bad("withdrawal-unknown-currency", "POST", "/v1/customers/{customer}/withdrawals", {"amount": 1, "currency": "xyz"},
        code="currency_unknown", param="currency"),
    bad("payment-missing-method", "POST", "/v1/payments", {"order_id": "{order}"}, param="payment_method"),
    bad("payment-wallet-not-allowed", "POST", "/v1/payments", {"order_id": "{card_order}", "payment_method": {
        "type": "wallet", "customer_id": "{customer}"}}, code="payment_method_not_allowed"),
    bad("unknown-field-param", "POST", "/v1/orders", {**ORDER, "colour": "red"}, param="colour"),
    bad("split-naming-both", "POST", "/v1/orders", {**ORDER, "splits": [
        {"merchant_id": "mer_x", "sub_account_id": "sub_x", "amount": 1}]}, code="parameter_invalid", param="splits[0]"),
    bad("split-naming-neither", "POST", "/v1/orders", {**ORDER, "splits": [{"merchant_id": "mer_x", "amount": 1},
                                                                         {"amount": 1}]}, param="splits[1]"),
    bad("transfer-array-malformed-json", "POST", "/v1/transfers", b'[{"id": ', code="invalid_json"),
    bad("transfer-array-infinite-number", "POST", "/v1/transfers", b'[{"id": "bad-input", "amount": 1e400}]'),
    bad("transfer-array-nested-too-deep", "POST", "/v1/transfers", b"[" * 2000 + b"]" * 2000),
    # An id in the body that names nothing: the 404 names that field, not the path's `id`.
    bad("qr-dynamic-unknown-order", "POST", "/v1/qr/dynamic", {"order_id": "ord_nope"}, 404, "resource_missing",
        "order_id"),
    bad("qr-payment-unknown-order", "POST", "/v1/payments", {"order_id": "ord_nope", "payment_method": {
        "type": "qr"}}, 404, "resource_missing", "order_id"),
    bad("qr-static-unknown-sub-account", "POST", "/v1/qr/static", {"sub_account_id": "sub_nope"}, 404,
        "resource_missing", "sub_account_id"),
    bad("payout-unknown-sub-account", "POST", "/v1/payouts", {"amount": 1, "currency": "usd",
                                                              "sub_account_id": "sub_nope"}, 404, "resource_missing",
        "sub_account_id"),
    bad("payment-unknown-token", "POST", "/v1/payments", {"amount": 1, "currency": "usd", "payment_method": {
        "type": "card", "token": "tok_" + "0" * 24}}, 404, "resource_missing", "payment_method.token"),
]


def state(server, key, context) -> tuple:
    """What a refused request must leave as it was."""
    return (ok(server, "GET", "/v1/orders?limit=100", key=key)["data"], wallet(server, key, context["customer"]),
            call(server, "GET", "/v1/accounts/bad-input", key=key).status,
            call(server, "GET", "/v1/transfers/bad-input", key=key).status)


def fill(template, context):
    if isinstance(template, str):
        return template.format(**context)
    if isinstance(template, dict):
        return {name: fill(value, context) for name, value in template.items()}
    return [fill(value, context) for value in template] if isinstance(template, list) else template


@pytest.mark.parametrize("method, path, body, status, code, param", BAD_INPUT)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(server, method, path, body, status, code, param):
    key = server.demo_key  # has wallets; the state comparison needs no fresh merchant
    context = {"order": order(server, key, payment_methods=["wallet"])["id"], "customer": customer(server, key),
               "card_order": order(server, key, payment_methods=["card"])["id"]}
    before = state(server, key, context)
    error(server, method, fill(path, context), fill(body, context), key=key, status=status, code=code, param=param)
    assert state(server, key, context) == before


BAD_QUERIES = [
    ("/v1/orders?limit=0", "limit"), ("/v1/orders?limit=101", "limit"),
    ("/v1/orders?limit=ten", "limit"), ("/v1/orders?status=shipped", "status"),
    ("/v1/orders?created_gte=yesterday", "created_gte"), ("/v1/accounts/a/transfers?limit=0", "limit"),
    ("/v1/orders?limit=" + "9" * 5000, "limit"),
    ("/v1/orders?created_gte=9999-12-31T23:59:59Z", "created_gte"),
    ("/v1/accounts/a/balances?at=0001-01-01T00:00:00Z", "at"),
    ("/v1/orders?starting_after=ord_doesnotexist", "starting_after"),
    ("/v1/payments?starting_after=pay_doesnotexist", "starting_after"),
    ("/v1/payments?status=paid", "status"), ("/v1/payments?status=partially_refunded", "status"),
    ("/v1/accounts/a/transfers?starting_after=nothing", "starting_after"),
]


@pytest.mark.parametrize("path, param", [pytest.param(path, param, id=path[:60]) for path, param in BAD_QUERIES])
def test_query_values_out_of_range_are_400_never_clamped(server, path, param):
    key = merchant(server)
    accounts(server, key, "a", history=True)
    order(server, key)
    error(server, "GET", path, key=key, param=param)


def test_a_split_names_a_merchant_as_merchant_id_and_a_sub_account_as_sub_account_id(server):
    key, other = merchant(server), ok(server, "GET", "/v1/merchants/me", key=merchant(server))["id"]
    me = ok(server, "GET", "/v1/merchants/me", key=key)["id"]
    store = ok(server, "POST", f"/v1/merchants/{me}/sub_accounts", {"name": "Store"}, key=key)["id"]
    for split in ({"sub_account_id": other, "amount": 1}, {"merchant_id": store, "amount": 1}):
        error(server, "POST", "/v1/orders", {**ORDER, "splits": [split]}, key=key, code="split_destination_not_found",
              param="splits[0]")
    ok(server, "POST", "/v1/orders", {**ORDER, "splits": [{"merchant_id": other, "amount": 1},
                                                         {"sub_account_id": store, "amount": 1}]}, key=key)


def test_objects_of_another_merchant_are_404_and_untouched(server):
    owner, other = merchant(server), server.demo_key
    accounts(server, owner, "a", "b")
    ok(server, "POST", "/v1/transfers", transfer("t1"), key=owner)
    owned, customer_id = order(server, owner), customer(server, owner)
    attempts = [("GET", f"/v1/orders/{owned['id']}", None), ("PATCH", f"/v1/orders/{owned['id']}", {"amount": 1}),
                ("DELETE", f"/v1/orders/{owned['id']}", None), ("GET", "/v1/accounts/a", None),
                ("GET", "/v1/transfers/t1", None), ("GET", f"/v1/customers/{customer_id}", None),
                ("GET", f"/v1/customers/{customer_id}/wallet", None),
                ("POST", f"/v1/customers/{customer_id}/deposits",
                 {"amount": 5, "currency": "usd", "payment_method": {"type": "qr"}}),
                ("POST", f"/v1/customers/{customer_id}/withdrawals", {"amount": 5, "currency": "usd"}),
                ("POST", "/v1/payments", {"order_id": owned["id"], "payment_method": {
                    "type": "wallet", "customer_id": customer_id}})]
    for method, path, body in attempts + [("GET", "/v1/accounts/a/transfers", None),
                                          ("GET", "/v1/accounts/nothing/transfers", None)]:
        error(server, method, path, body, key=other, status=404)
    assert ok(server, "GET", f"/v1/orders/{owned['id']}", key=owner) == owned
    assert account(server, owner, "a")["balance"] == -10


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nowhere", 404), ("POST", "/v2/orders", 404),
                                                  ("PUT", "/v1/orders", 405), ("DELETE", "/v1/accounts", 405)])
def test_unknown_routes_and_methods_answer_in_the_error_shape(server, method, path, status):
    error(server, method, path, key=server.demo_key, status=status)


# --- 6. idempotency ------------------------------------------------------------------------------------------------

def test_transfer_replayed_under_its_idempotency_key(server):
    key = merchant(server)
    accounts(server, key, "a", "b")
    headers = {"Idempotency-Key": f"pay-rent-{uuid.uuid4().hex}"}
    first = call(server, "POST", "/v1/transfers", transfer("rent", amount=700), key=key, status=200, headers=headers)
    again = call(server, "POST", "/v1/transfers", transfer("rent", amount=700), key=key, status=200, headers=headers)
    assert first.json() == again.json() == {"id": "rent", "result": "created"}  # not "exists": the first reply again
    assert first.headers.get("Idempotent-Replayed") is None and again.headers.get("Idempotent-Replayed") == "true"
    assert account(server, key, "a")["debits_posted"] == 700


def test_account_create_replayed_after_money_moved_answers_the_first_response(server):
    key = merchant(server)
    accounts(server, key, "payer")
    headers = {"Idempotency-Key": f"open-{uuid.uuid4().hex}"}
    first = call(server, "POST", "/v1/accounts", {"id": "payee", "currency": "usd"}, key=key, status=200,
                 headers=headers)
    ok(server, "POST", "/v1/transfers", transfer("moved", debit="payer", credit="payee", amount=77), key=key)
    again = call(server, "POST", "/v1/accounts", {"id": "payee", "currency": "usd"}, key=key, status=200,
                 headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json() and first.json()["balance"] == 0
    assert account(server, key, "payee")["balance"] == 77


@pytest.mark.parametrize("path, first, second", [
    pytest.param("/v1/orders", ORDER, {**ORDER, "amount": 1}, id="orders"),
    pytest.param("/v1/transfers", transfer("k1"), transfer("k1", amount=11), id="transfers"),
    pytest.param("/v1/accounts", {"id": "k1", "currency": "usd"}, {"id": "k1", "currency": "eur"}, id="accounts"),
])
def test_idempotency_key_reused_with_another_body_is_409(server, path, first, second):
    key = merchant(server)
    accounts(server, key, "a", "b")
    headers = {"Idempotency-Key": "reused"}
    ok(server, "POST", path, first, key=key, headers=headers)
    error(server, "POST", path, second, key=key, status=409, code="idempotency_key_reused", headers=headers)


# --- 7. operations -------------------------------------------------------------------------------------------------

TESTED_ROUTES = {
    "/v1/merchants": {"post"}, "/v1/orders": {"get", "post"}, "/v1/orders/{id}": {"get", "patch", "delete"},
    "/v1/accounts": {"post"}, "/v1/accounts/{id}": {"get"}, "/v1/accounts/{id}/transfers": {"get"},
    "/v1/accounts/{id}/balances": {"get"}, "/v1/transfers": {"post"}, "/v1/transfers/{id}": {"get"},
    "/v1/customers": {"post"}, "/v1/customers/{id}": {"get"}, "/v1/customers/{id}/deposits": {"post"},
    "/v1/customers/{id}/withdrawals": {"post"}, "/v1/customers/{id}/wallet": {"get"},
    "/v1/customers/{id}/adjustments": {"post"}, "/v1/deposits/{id}": {"get"}, "/v1/withdrawals/{id}": {"get"},
    "/v1/payments": {"get", "post"},
    "/v1/admin/ledger_check": {"get"}, "/healthz": {"get"}, "/readyz": {"get"}, "/metrics": {"get"},
    "/openapi.json": {"get"},
}


def test_readiness_says_no_within_its_timeout_when_a_shard_stalls(server):
    """A shard that holds its connections but answers nothing (stopped by SIGSTOP): /readyz answers 503 within its
    timeout rather than wait out every retry, and ready again once the shard resumes."""
    pid = json.loads((server.data / "shard-0" / "shard.json").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = server.request("GET", "/readyz")  # not `call`: a 503 is the answer here
        assert reply.status == 503 and time.monotonic() - started < 5
        assert reply.json()["shards"][0]["ready"] is False
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ok(server, "GET", "/readyz")["ready"] is True


def test_orders_carry_their_qr_payload_in_every_accepted_currency(server):
    key = merchant(server)
    for currency in ("krw", "idr", "aud", "try"):
        payload = order(server, key, currency=currency, payment_methods=["qr"])["qr"]
        assert payload and parse_payload(payload)["53"] == CURRENCY_NUMBERS[currency]


def test_a_static_code_image_for_an_unknown_sub_account_names_the_query_field(server):
    merchant_id = ok(server, "GET", "/v1/merchants/me", key=server.demo_key)["id"]
    error(server, "GET", f"/v1/qr/merchants/{merchant_id}.png?sub_account_id=sub_nope", status=404,
          code="resource_missing", param="sub_account_id")


def test_a_client_that_leaves_mid_body_is_no_server_error(server):
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Authorization: Bearer " + server.demo_key.encode() + b"\r\nContent-Length: 100\r\n\r\n"
                           b'{"name"')
    time.sleep(0.5)
    metrics = call(server, "GET", "/metrics", status=200).body.decode()
    assert not re.search(r'paygate_http_requests_total\{[^}]*status="500"', metrics), "a 500 was counted"


def exchange_raw(server, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are, read until the server closes: (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return status_line, {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}, body


SECRET = b"sk_do_not_echo_me"


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: " + SECRET + b"\r\n\r\n", id="content_length"),
    pytest.param(b"BR@KEN /v1/orders HTTP/1.1\r\nHost: x\r\n\r\n", id="method"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: x\r\n" + SECRET + b" line\r\n\r\n", id="header_line"),
    pytest.param(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + SECRET + b"\r\n",
                 id="chunk_size"),
    pytest.param(b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET * 600 + b"\r\n\r\n",
                 id="header_too_long"),
    pytest.param(b"GET / HTTP/9.1\r\nHost: x\r\n\r\n", id="version"),
])
def test_requests_that_are_not_http_get_the_error_shape_and_no_echo(server, request_bytes):
    """What aiohttp's parser refuses never reaches the app's middleware; it is answered in the API's shape all the
    same, with a Request-Id, without quoting the request back or logging a traceback."""
    status_line, headers, body = exchange_raw(server, request_bytes)
    assert status_line.split(" ")[1] == "400"
    assert headers["content-type"] == "application/json" and headers["request-id"].startswith("req_")
    assert headers["server"] == "paygate"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_request"
    assert SECRET not in body and b"Traceback" not in body
    time.sleep(0.2)  # aiohttp's own handler would log the request's bytes with a traceback, at error level
    assert not any(SECRET.decode() in line or "Traceback" in line for line in list(server.output))


def test_openapi_health_readiness_and_metrics(server):
    document = ok(server, "GET", "/openapi.json")
    assert document["openapi"] == "3.1.0"
    documented = {path: methods & set(document["paths"].get(path, {})) for path, methods in TESTED_ROUTES.items()}
    assert documented == TESTED_ROUTES
    assert ok(server, "GET", "/healthz") == {"status": "ok"}
    assert ok(server, "GET", "/readyz")["ready"] is True
    metrics = call(server, "GET", "/metrics", status=200).body.decode()
    assert "paygate_http_requests_total" in metrics and "paygate_shard_batch_commands" in metrics


# --- 8. one rule for every route -----------------------------------------------------------------------------------

def post_routes(server) -> list[tuple[str, dict]]:
    """Every POST route the gateway serves, as /openapi.json lists it: (path, operation)."""
    return [(path, methods["post"]) for path, methods in ok(server, "GET", "/openapi.json")["paths"].items()
            if "post" in methods]


def auth_of(operation: dict) -> str:
    return operation["description"].removeprefix("Authentication: ").removesuffix(".")


def credentials_for(server, operation: dict, key: str) -> str | None:
    """The token an operation takes: the admin's, the merchant's (`key`), or none."""
    return {"admin": server.admin_token, "none": None}.get(auth_of(operation), key)


def test_every_post_route_refuses_an_idempotency_key_outside_1_to_255_characters(server):
    key = merchant(server)
    merchant_id = ok(server, "GET", "/v1/merchants/me", key=key)["id"]
    routes = post_routes(server)
    assert {"/v1/orders", "/v1/qr/dynamic", "/v1/qr/static", "/v1/payments"} <= {path for path, _ in routes}
    for path, operation in routes:
        filled = re.sub(r"\{\w+\}", merchant_id, path)
        for bad_key in ("k" * 256, "k" * 300):
            error(server, "POST", filled, {}, key=credentials_for(server, operation, key),
                  code="idempotency_key_invalid", param="Idempotency-Key", headers={"Idempotency-Key": bad_key})
    the_order = order(server, key, payment_methods=["qr"])
    longest = {"Idempotency-Key": "k" * 255}
    assert ok(server, "POST", "/v1/qr/dynamic", {"order_id": the_order["id"]}, key=key, headers=longest)["payload"]
    assert ok(server, "GET", "/v1/orders?limit=100", key=key)["data"] == [the_order]  # nothing else was created


def test_every_route_with_a_json_body_refuses_an_empty_one(server):
    """Malformed JSON is 400, and no body at all is not JSON: even where every field of the body is optional."""
    key = merchant(server)
    merchant_id = ok(server, "GET", "/v1/merchants/me", key=key)["id"]
    checked = set()
    for path, operation in post_routes(server):
        request_body = operation.get("requestBody", {})
        takes_json = "application/json" in request_body.get("content", {}) and request_body["required"]
        if not takes_json or auth_of(operation) == "provider signature":  # unsigned: 401 before the body is read
            continue
        filled = re.sub(r"\{\w+\}", merchant_id, path)
        for empty in (b"", b"  \n"):
            error(server, "POST", filled, empty, key=credentials_for(server, operation, key), code="invalid_json",
                  param=None)
        checked.add(path)
    assert {"/v1/qr/static", "/v1/orders", "/v1/transfers"} <= checked
    assert ok(server, "POST", "/v1/qr/static", {}, key=key)["payload"]  # an object with no field is a body


# --- 9. what the contract promises of payments and orders ----------------------------------------------------------

def test_a_wallet_pays_an_amount_without_an_order_and_never_goes_below_zero(server):
    key = merchant(server)
    payer = customer(server, key)
    fund(server, payer, 1000)
    method = {"type": "wallet", "customer_id": payer}
    paid = ok(server, "POST", "/v1/payments", {"amount": 600, "currency": "usd", "payment_method": method}, key=key)
    assert (paid["status"], paid["amount"], paid["amount_captured"], paid["order_id"]) == ("succeeded", 600, 600, None)
    assert ok(server, "GET", f"/v1/payments/{paid['id']}", key=key) == paid
    assert balances(wallet(server, key, payer)) == {"usd": (400, 400)}
    assert account(server, key, ".balance.usd")["balance"] == 600  # the merchant's balance has the money
    for amount, currency in ((401, "usd"), (1, "eur")):
        error(server, "POST", "/v1/payments", {"amount": amount, "currency": currency, "payment_method": method},
              key=key, status=402, code="insufficient_funds")
    error(server, "POST", "/v1/payments", {"amount": 1, "payment_method": method}, key=key, code="parameter_missing")
    assert balances(wallet(server, key, payer)) == {"usd": (400, 400)}
    refund = ok(server, "POST", "/v1/refunds", {"payment_id": paid["id"], "amount": 100}, key=key)
    assert refund["status"] == "succeeded" and balances(wallet(server, key, payer)) == {"usd": (500, 500)}


def test_a_replayed_card_payment_answers_the_first_reply_byte_for_byte(server):
    key = merchant(server)
    body = {"amount": 1000, "currency": "usd", "payment_method": {"type": "card", "card": {
        "number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123", "holder_name": "Ann"}}}
    headers = {"Idempotency-Key": f"card-{uuid.uuid4().hex}"}
    first = call(server, "POST", "/v1/payments", body, key=key, status=200, headers=headers)
    again = call(server, "POST", "/v1/payments", body, key=key, status=200, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.body == first.body
    assert first.json()["payment_method"]["token"].startswith("tok_")


def test_an_orders_expiry_counts_from_the_engines_time(server):
    """The instant is the shard's batch time plus the duration, exactly: the edge's clock has no say in it."""
    key = merchant(server)
    created = order(server, key, expires_in=600)
    assert seconds_between(created["created_at"], created["expires_at"]) == 600
    patched = ok(server, "PATCH", f"/v1/orders/{created['id']}", {"expires_in": 3600}, key=key)
    assert seconds_between(patched["updated_at"], patched["expires_at"]) == 3600
