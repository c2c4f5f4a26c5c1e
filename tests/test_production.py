"""`paygate serve --production`: merchant URLs on public hosts only, no demo merchant, risk closed without its table,
and no start over a data folder other users can open. Without the flag, the same requests pass as before."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from edge.cli import exposed_path
from actors.outbound import internal_host
from edge.server import DEMO_MERCHANT_ID
from edge_harness import Server

ROOT = pathlib.Path(__file__).resolve().parent.parent
CARD = {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}}


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "https://127.8.9.10:8443/", "http://localhost/", "http://LOCALHOST./x",
    "http://shop.localhost/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://[fd00::1]/", "http://[fe80::1]/", "http://2130706433/", "http://0x7f.1/", "http://127.1/",
    "http://0177.0.0.1/", "http://224.0.0.1/", "http://user@10.0.0.1:80/", "http:///path",
])
def test_internal_hosts_in_every_spelling(url):
    assert internal_host(url)


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://93.184.216.34/", "https://shop.cafe/ipn",
                                 "http://[2606:4700::1111]/", "https://8.8.8.8:8443/x"])
def test_public_hosts(url):
    assert not internal_host(url)


def test_a_data_folder_is_exposed_by_any_file_or_folder_others_may_open(tmp_path):
    data = tmp_path / "data"
    assert exposed_path(data) == ""  # none yet: serve makes it
    (data / "shard-0" / "journal").mkdir(parents=True)
    for folder in (data, data / "shard-0", data / "shard-0" / "journal"):
        folder.chmod(0o700)
    (data / "shard-0" / "journal" / "data.mdb").write_bytes(b"")
    (data / "shard-0" / "journal" / "data.mdb").chmod(0o600)
    assert exposed_path(data) == ""
    (data / "shard-0" / "journal" / "data.mdb").chmod(0o640)
    assert exposed_path(data) == f"{data / 'shard-0' / 'journal' / 'data.mdb'} (mode 0640)"
    (data / "shard-0" / "journal" / "data.mdb").chmod(0o600)
    (data / "shard-0").chmod(0o711)
    assert exposed_path(data) == f"{data / 'shard-0'} (mode 0711)"


def test_production_refuses_to_start_on_a_folder_others_can_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "gateway.key").write_bytes(b"x" * 32)
    (data / "gateway.key").chmod(0o644)
    command = [sys.executable, "-m", "edge.cli", "serve", "--production", "--without-actors", "--data", str(data)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 1
    assert finished.stderr.strip() == (f"paygate serve --production: {data / 'gateway.key'} (mode 0644) is open to "
                                       f"other users than its owner; chmod -R go-rwx {data}")
    assert sorted(path.name for path in data.iterdir()) == ["gateway.key"]  # nothing started, nothing made


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("production") / "data", extra=("--production",)).start()
    yield server
    server.stop()


def merchant(server, **fields):
    return server.request("POST", "/v1/merchants", {"name": "Shop", "email": "owner@example.com", **fields},
                          key=server.admin_token)


def assert_url_refused(reply, param: str) -> None:
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("url_not_allowed", param)


def test_production_has_no_demo_merchant(production):
    assert production.demo_key == ""
    assert production.request("GET", f"/v1/merchants/{DEMO_MERCHANT_ID}", key=production.admin_token).status == 404


def test_production_refuses_merchant_urls_naming_internal_hosts(production):
    assert_url_refused(merchant(production, webhook_url="http://169.254.169.254/latest"), "webhook_url")
    created = merchant(production, webhook_url="https://shop.example.com/hooks")
    assert created.status == 200, created.body
    shop = created.json()
    patched = production.request("PATCH", f"/v1/merchants/{shop['id']}", {"webhook_url": "http://10.0.0.7/"},
                                 key=production.admin_token)
    assert_url_refused(patched, "webhook_url")
    order = {"name": "Tea", "amount": 500, "currency": "usd"}
    assert_url_refused(production.request("POST", "/v1/orders", {**order, "callback_url": "http://localhost/"},
                                          key=shop["api_key"]), "callback_url")
    assert_url_refused(production.request("POST", "/v1/orders", {**order, "ipn_url": "http://[::1]:8080/ipn"},
                                          key=shop["api_key"]), "ipn_url")
    fine = {**order, "callback_url": "https://shop.example.com/back", "ipn_url": "https://shop.example.com/ipn"}
    assert production.request("POST", "/v1/orders", fine, key=shop["api_key"]).status == 200


def test_production_without_the_risk_table_refuses_card_payments(production):
    shop = merchant(production).json()
    reply = production.request("POST", "/v1/payments", {"amount": 1000, "currency": "usd", "payment_method": CARD},
                               key=shop["api_key"])
    assert reply.status == 503 and reply.json()["error"]["code"] == "risk_unavailable", reply.body
    assert reply.headers["Retry-After"] == "2"


def test_without_production_internal_urls_stay_allowed(tmp_path):
    server = Server(tmp_path / "data").start()
    try:
        assert server.demo_key
        created = merchant(server, webhook_url="http://127.0.0.1:9000/hooks")
        assert created.status == 200, created.body
    finally:
        server.stop()


def test_production_holds_the_test_cards_to_the_attempt_counts(tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"velocity": {"card_fingerprint": {"attempts": 2, "window_s": 600}}}))
    server = Server(tmp_path / "data", actors=True, extra=("--production", "--risk-rules", str(rules))).start()
    try:
        shop = merchant(server).json()
        deadline = time.monotonic() + 30
        while True:  # the risk actor publishes its counts a moment after the payments
            payment = server.request("POST", "/v1/payments", {"amount": 1000, "currency": "usd",
                                                              "payment_method": CARD}, key=shop["api_key"]).json()
            if payment["status"] == "failed":
                break
            assert time.monotonic() < deadline, payment
            time.sleep(0.2)
        assert (payment["failure_code"], payment["failure_message"]) == (
            "risk_rejected", "at most 2 payment attempts in 600 s for this card")
    finally:
        server.stop()
