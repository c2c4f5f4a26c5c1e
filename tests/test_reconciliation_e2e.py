"""Reconciliation end to end: a real `paygate serve` on two shards with Ray, the connectors and the simulated
acquirer, whose settlement file for today is fetched (or posted as CSV) and reconciled over HTTP; and the reconciler
actor's day, driven in-process against the same shards.

The books after a reconciliation equal the bank's to the unit: for each merchant, its `settled_piggybank` account
holds exactly what the file says the acquirer paid in for it (captures less refunds, chargebacks and fees), and its
`fees_piggybank` the fees. Every test makes its own merchants; the file holds every test's payments, so each test
looks at its own rows. After every test the full double-entry check passes on every shard.
"""

import asyncio
import csv
import datetime
import io
import json
import urllib.request
import uuid

import aiohttp
import pytest

from actors.reconciler import ReconcilerActor
from edge.rotation import shard_addresses
from edge_harness import Server
from journal.auth import key_path

pytestmark = pytest.mark.usefixtures("double_entry_holds")
CARD = {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123",
                                 "holder_name": "Ann Example"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("reconcile"), workers=1, actors=True, shards=2,
                    extra=("--order-ip-limit", "100000")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_faults(server):
    yield
    acquirer(server, "DELETE", "/v1/settlement_faults")


def call(server, method, path, body=None, key=None, status=200, **options):
    reply = server.request(method, path, body, key=key, **options)
    assert reply.status == status, (method, path, reply.status, reply.body[:400])
    return reply


def acquirer(server, method, path, body=None) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{server.base_port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def merchant(server) -> str:
    name = f"shop-{uuid.uuid4().hex[:8]}"
    return call(server, "POST", "/v1/merchants", {"name": name, "email": f"{name}@example.com", "tier": "premium"},
                key=server.admin_token).json()["api_key"]


def pay(server, key, amount: int) -> str:
    payment = call(server, "POST", "/v1/payments", {"amount": amount, "currency": "usd", "payment_method": CARD},
                   key=key).json()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=15)
    while payment["status"] != "succeeded":
        assert datetime.datetime.now() < deadline, payment
        payment = call(server, "GET", f"/v1/payments/{payment['id']}", key=key).json()
    return payment["id"]


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def settlement_file(server) -> list[dict]:
    text = acquirer(server, "GET", f"/psp/piggybank/settlements/{today()}.csv").decode()
    return list(csv.DictReader(io.StringIO(text)))


def wait_in_file(server, ids: set[str]) -> None:
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=15)
    while not ids <= {row["transaction_id"] for row in settlement_file(server)}:
        assert datetime.datetime.now() < deadline, f"{ids} never reached the acquirer"


def reconcile(server, body=None, csv_text=None, key=None, status=200, query="") -> dict:
    headers = {"Idempotency-Key": key} if key else {}
    if csv_text is not None:
        headers["Content-Type"] = "text/csv"
        return call(server, "POST", f"/v1/reconciliations{query}", raw=csv_text.encode(), key=server.admin_token,
                    headers=headers, status=status).json()
    return call(server, "POST", "/v1/reconciliations", body or {"provider": "piggybank", "date": today()},
                key=server.admin_token, headers=headers, status=status).json()


def books(server, key) -> dict[str, int]:
    """The merchant's settlement accounts on their normal side: money at the bank, fees, owed chargebacks."""
    found = {}
    for name in ("settled_piggybank", "fees_piggybank", "disputes", "balance", "clearing_piggybank"):
        reply = server.request("GET", f"/v1/accounts/.{name}.usd", key=key)
        account = reply.json() if reply.status == 200 else {"debits_posted": 0, "credits_posted": 0}
        net = account["debits_posted"] - account["credits_posted"]
        found[name] = -net if name == "balance" else net
    return found


def bank_net(rows: list[dict], ids: set[str]) -> tuple[int, int]:
    """What the file says the acquirer paid in for these ids, and the fees it kept."""
    sign = {"captured": 1, "refunded": -1, "chargeback": -1}
    paid = sum(sign[row["status"]] * int(row["amount"]) - int(row["fee"]) for row in rows
               if row["transaction_id"] in ids)
    return paid, sum(int(row["fee"]) for row in rows if row["transaction_id"] in ids)


def test_the_fetched_file_settles_every_shards_payments_and_the_books_equal_the_banks(server):
    shops = [merchant(server) for _ in range(4)]  # two shards: most likely both hold some
    paid = {key: [pay(server, key, 1000 + index), pay(server, key, 2000 + index)] for index, key in enumerate(shops)}
    first = paid[shops[0]]
    refund = call(server, "POST", "/v1/refunds", {"payment_id": first[0], "amount": 300}, key=shops[0]).json()
    wait_in_file(server, {refund["id"]})  # the acquirer hears of a refund after the gateway made it
    result = reconcile(server)
    assert result["status"] == "completed" and result["id"].startswith("rec_")
    ours = {payment for payments in paid.values() for payment in payments} | {refund["id"]}
    assert ours <= set(result["matched_ids"]) and result["matched"] == len(result["matched_ids"])
    rows = settlement_file(server)
    for key, payments in paid.items():
        assert {call(server, "GET", f"/v1/payments/{payment}", key=key).json()["status"] for payment in payments} == {
            "settled"}
        ids = set(payments) | ({refund["id"]} if key == shops[0] else set())
        money_in, fees = bank_net(rows, ids)
        assert (books(server, key)["settled_piggybank"], books(server, key)["fees_piggybank"]) == (money_in, fees)
        assert books(server, key)["clearing_piggybank"] == 0
    again = call(server, "GET", f"/v1/reconciliations/{result['id']}", key=server.admin_token).json()
    assert again == result
    listed = call(server, "GET", "/v1/reconciliations?limit=100", key=server.admin_token).json()
    assert result["id"] in [item["id"] for item in listed["data"]]


def test_a_file_the_acquirer_gets_wrong_names_every_kind_of_mismatch_and_moves_nothing_for_them(server):
    key = merchant(server)
    omitted, changed, kept = pay(server, key, 500), pay(server, key, 600), pay(server, key, 700)
    unknown = f"pay_{uuid.uuid4().hex[:24]}"
    acquirer(server, "PUT", "/v1/settlement_faults", {
        "omit": [omitted], "amounts": {changed: 601},
        "unknown": [{"transaction_id": unknown, "amount": 99, "currency": "usd", "date": today()}]})
    result = reconcile(server)
    assert omitted in result["missing_in_settlement"] and changed in result["amount_mismatch"]
    assert unknown in result["missing_in_ledger"] and kept in result["matched_ids"]
    assert books(server, key)["clearing_piggybank"] == 500 + 600  # still owed by the acquirer
    statuses = {payment: call(server, "GET", f"/v1/payments/{payment}", key=key).json()["status"]
                for payment in (omitted, changed, kept)}
    assert statuses == {omitted: "succeeded", changed: "succeeded", kept: "settled"}
    acquirer(server, "DELETE", "/v1/settlement_faults")
    fixed = reconcile(server)  # the corrected file: what waited settles, what settled is a duplicate
    assert {omitted, changed} <= set(fixed["matched_ids"]) and kept in fixed["duplicates"]
    assert books(server, key)["clearing_piggybank"] == 0


def test_a_chargeback_end_to_end_takes_the_money_back_from_the_merchant_into_disputes(server):
    key = merchant(server)
    payment = pay(server, key, 5000)
    reconcile(server)
    acquirer(server, "PUT", "/v1/settlement_faults", {
        "chargebacks": [{"transaction_id": payment, "amount": 1200, "date": today()}]})
    result = reconcile(server)
    assert payment in result["chargebacks"]
    view = call(server, "GET", f"/v1/payments/{payment}", key=key).json()
    assert view["status"] == "disputed"
    money_in, fees = bank_net(settlement_file(server), {payment})
    assert books(server, key) == {"settled_piggybank": money_in, "fees_piggybank": fees, "disputes": 0,
                                  "balance": 5000 - 1200, "clearing_piggybank": 0}
    # What was taken back cannot be refunded too.
    problem = call(server, "POST", "/v1/refunds", {"payment_id": payment, "amount": 3801}, key=key, status=402)
    assert problem.json()["error"]["code"] == "amount_too_large"


def test_a_posted_csv_reconciles_as_a_fetched_one_and_an_idempotency_key_answers_it_again(server):
    key = merchant(server)
    payment = pay(server, key, 1234)
    text = ("transaction_id,amount,currency,status,settled_at,fee\n"
            f"{payment},1234,usd,captured,{today()}T10:00:00Z,37\n")
    idempotency_key = uuid.uuid4().hex
    result = reconcile(server, csv_text=text, key=idempotency_key)
    assert (result["matched_ids"], result["date"], result["fees"]) == ([payment], today(), {"usd": 37})
    assert books(server, key)["settled_piggybank"] == 1234 - 37
    reply = server.request("POST", "/v1/reconciliations", raw=text.encode(), key=server.admin_token,
                           headers={"Content-Type": "text/csv", "Idempotency-Key": idempotency_key})
    assert reply.status == 200 and reply.json() == result and reply.headers["Idempotent-Replayed"] == "true"
    other = text.replace(",37\n", ",38\n")
    assert reconcile(server, csv_text=other, key=idempotency_key, status=409)["error"]["code"] == \
        "idempotency_key_reused"


@pytest.mark.parametrize("csv_text, query, param", [
    ("id,amount\nx,1\n", "", "body"),
    ("transaction_id,amount,currency,status\npay_x,-5,usd,captured\n", "?date=2024-01-01", "body"),
    ("transaction_id,amount,currency,status\npay_x,5,usd,reversed\n", "?date=2024-01-01", "body"),
    ("transaction_id,amount,currency,status\npay_x,5,usd,captured\n", "", "date"),
    ("transaction_id,amount,currency,status\n", "?date=2024-02-30", "date"),
    ("transaction_id,amount,currency,status\n", "?date=2024-01-01&provider=bank", "provider"),
])
def test_a_file_that_cannot_be_reconciled_is_400_naming_what_is_wrong(server, csv_text, query, param):
    problem = reconcile(server, csv_text=csv_text, query=query, status=400)["error"]
    assert problem["param"] == param and problem["type"] == "invalid_request_error"


def test_only_the_admin_reconciles_and_an_unknown_reconciliation_is_404(server):
    key = merchant(server)
    assert call(server, "POST", "/v1/reconciliations", {"provider": "piggybank", "date": today()}, key=key,
                status=403)
    assert call(server, "GET", "/v1/reconciliations/rec_nothing", key=server.admin_token, status=404)
    assert call(server, "GET", "/v1/reconciliations?starting_after=rec_nothing", key=server.admin_token, status=400)


def test_the_reconciler_reconciles_a_day_once_its_cut_off_has_passed_and_only_once(server, tmp_path):
    key = merchant(server)
    payment = pay(server, key, 4321)
    actor = ReconcilerActor(shard_addresses(server.data), str(key_path(server.data)), str(tmp_path), "piggybank",
                            f"http://127.0.0.1:{server.base_port}", cutoff_s=600, max_catch_up_days=1)
    midnight = datetime.datetime.combine(datetime.date.fromisoformat(today()) + datetime.timedelta(days=1),
                                         datetime.time(), datetime.timezone.utc)

    async def run(now):
        async with aiohttp.ClientSession() as session:
            await actor.catch_up(session, now)

    yesterday = (datetime.date.fromisoformat(today()) - datetime.timedelta(days=1)).isoformat()
    asyncio.run(run(midnight + datetime.timedelta(seconds=599)))  # before today's cut-off: only yesterday
    assert (actor.stats()["days_reconciled"], actor.stats()["last_day"]) == (1, yesterday)
    assert call(server, "GET", f"/v1/payments/{payment}", key=key).json()["status"] == "succeeded"
    asyncio.run(run(midnight + datetime.timedelta(seconds=601)))
    rec_id = f"rec_piggybank_{today().replace('-', '')}"
    result = call(server, "GET", f"/v1/reconciliations/{rec_id}", key=server.admin_token).json()
    assert payment in result["matched_ids"] + result["duplicates"]
    assert call(server, "GET", f"/v1/payments/{payment}", key=key).json()["status"] == "settled"
    asyncio.run(run(midnight + datetime.timedelta(seconds=900)))  # done: not again
    assert actor.stats()["days_reconciled"] == 2 and actor.due_days(midnight + datetime.timedelta(hours=1)) == []
