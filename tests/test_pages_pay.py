"""The hosted payment page (`/pay/{order_id}`) in real headless Chromium, against a real `paygate serve` with Ray, the
connector actors and the simulated acquirer and bank: what a shopper sees and does, asserted by text, labels and
roles.

One server (two edge workers, so a callback and the page's live stream may meet on different workers) and one
browser for the module; each test makes its own merchant and opens its own browser context.
"""

import base64
import datetime
import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from playwright.sync_api import expect

from bench.browser import PHONE
from browser_harness import LOW_CONTRAST, UNLABELLED, CallbackReceiver, assert_strict_page_headers, new_page, \
    pay_by_card, reload_until
from edge_harness import Server
from notify_harness import smtp_server

SUCCEEDS, DECLINED, THREE_D_SECURE = "4242424242424242", "4000000000000002", "4000000000003220"
LUHN_INVALID = "4242424242424241"
SHORTEST_EXPIRY_S = 60  # the API's least expires_in
MERCHANT_KEPT_MS = 2500  # each edge worker keeps a merchant two seconds

pytestmark = pytest.mark.usefixtures("double_entry_holds")


@pytest.fixture(scope="module")
def inbox():
    """The SMTP server serve sends mail to: wallet codes, receipts."""
    with smtp_server() as inbox:
        yield inbox


@pytest.fixture(scope="module")
def server(tmp_path_factory, inbox):
    server = Server(tmp_path_factory.mktemp("pages-pay"), workers=2, actors=True,
                    extra=("--order-ip-limit", "100000", "--smtp-url", inbox.url)).start()
    yield server
    server.stop()


def new_shop(server) -> dict:
    """A fresh merchant as its creation answered it (its id, name, API key and webhook secret)."""
    name = f"Shop {uuid.uuid4().hex[:6]}"
    reply = server.request("POST", "/v1/merchants", {"name": name, "email": "owner@example.com", "tier": "premium"},
                           key=server.admin_token)
    assert reply.status == 200, reply.body
    return reply.json()


@pytest.fixture
def shop(server) -> dict:
    return new_shop(server)


@pytest.fixture(scope="module", autouse=True)
def expiring(server, browser):
    """(shop, order, page) of an order at the shortest expiry whose page opened without scripts as the module began:
    the ended-orders test sends that form after the expiry, and the module's other tests pass the minute meanwhile."""
    its_shop = new_shop(server)
    the_order = order(server, its_shop, expires_in=SHORTEST_EXPIRY_S)
    with new_page(browser, java_script_enabled=False) as stale:  # its form stays as it was when the page opened
        stale.goto(the_order["payment_url"])
        expect(stale.get_by_role("button", name="Pay", exact=True)).to_be_visible()
        yield its_shop, the_order, stale


@pytest.fixture
def page(browser):
    with new_page(browser) as page:
        yield page


@pytest.fixture
def receiver():
    with CallbackReceiver() as receiver:
        yield receiver


def order(server, shop, **fields) -> dict:
    body = {"name": "Green tea", "amount": 1999, "currency": "usd", **fields}
    reply = server.request("POST", "/v1/orders", body, key=shop["api_key"])
    assert reply.status == 200, reply.body
    return reply.json()


def order_now(server, shop, order_id: str) -> dict:
    return server.request("GET", f"/v1/orders/{order_id}", key=shop["api_key"]).json()


def signature_valid(secret: str, query: dict) -> bool:
    """The redirect's signature as README documents it: a webhook's, over "<order id>.<status>"."""
    fields = dict(part.split("=", 1) for part in query["signature"].split(","))
    message = f"{fields['t']}.{query['order_id']}.{query['status']}".encode()
    return hmac.compare_digest(fields["v1"], hmac.new(secret.encode(), message, hashlib.sha256).hexdigest())


def test_card_payment_shows_success_and_returns_to_the_merchant_signed(server, shop, page, receiver):
    the_order = order(server, shop, callback_url=receiver.url)
    response = page.goto(the_order["payment_url"])
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    expect(page.get_by_text(shop["name"]).first).to_be_visible()
    expect(page.get_by_role("heading", name="Green tea")).to_be_visible()
    expect(page.get_by_text("19.99 USD", exact=True).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"Pay within 1[45]:[0-5][0-9]"))).to_be_visible()
    for tab in ("Card", "QR code", "Bank transfer", "Wallet"):
        expect(page.get_by_role("tab", name=tab)).to_be_visible()

    pay_by_card(page, SUCCEEDS)
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    query = receiver.wait_for("/return")
    assert (query["order_id"], query["status"]) == (the_order["id"], "paid")
    assert signature_valid(shop["webhook_secret"], query), query
    expect(page.get_by_role("heading", name="Back at the shop")).to_be_visible()
    assert order_now(server, shop, the_order["id"])["status"] == "paid"


@pytest.mark.parametrize("answer, heading", [("Approve", "Payment successful"), ("Decline", "Your payment failed")])
def test_three_d_secure_goes_through_the_acquirers_challenge_page(server, shop, page, answer, heading):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    pay_by_card(page, THREE_D_SECURE)
    # The acquirer's own page, on its own port.
    expect(page.get_by_role("button", name="Decline")).to_be_visible()
    assert page.url.startswith(f"http://127.0.0.1:{server.base_port}/3ds/"), page.url
    expect(page.get_by_text("ending in 3220")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    page.get_by_role("button", name=answer).click()
    expect(page.get_by_role("heading", name=heading)).to_be_visible()
    assert page.url.startswith(the_order["payment_url"]), page.url
    if answer == "Decline":
        expect(page.get_by_text("The cardholder failed 3-D Secure authentication.")).to_be_visible()
        expect(page.get_by_role("button", name="Pay", exact=True)).to_be_visible()
    else:
        assert order_now(server, shop, the_order["id"])["status"] == "paid"


def test_a_declined_card_shows_why_and_the_shopper_tries_again(server, shop, page):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    pay_by_card(page, DECLINED)
    expect(page.get_by_role("heading", name="Your payment failed")).to_be_visible()
    expect(page.get_by_text("The card was declined.")).to_be_visible()
    assert order_now(server, shop, the_order["id"])["status"] == "pending"
    pay_by_card(page, SUCCEEDS)
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    assert order_now(server, shop, the_order["id"])["status"] == "paid"


def test_a_live_update_keeps_what_the_shopper_typed(server, shop, page):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    page.get_by_label("Card number").fill(SUCCEEDS)
    page.get_by_label("CVC").fill("123")
    reply = server.request("PATCH", f"/v1/orders/{the_order['id']}", {"amount": 2999}, key=shop["api_key"])
    assert reply.status == 200, reply.body
    expect(page.locator("p.amount")).to_have_text("29.99 USD")  # the checkout was rendered again, live
    expect(page.get_by_label("Card number")).to_have_value("4242 4242 4242 4242")
    expect(page.get_by_label("CVC")).to_have_value("123")
    page.get_by_label("Expiry (MM/YY)").fill("12/34")
    page.get_by_label("Name on card").fill("Ann Example")
    page.get_by_role("button", name="Pay", exact=True).click()
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()


def test_the_browser_checks_the_card_first_and_sends_nothing_wrong(server, shop, page):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    pay_by_card(page, LUHN_INVALID, expiry="01/20", cvc="12")
    expect(page.get_by_text("Your card number is incorrect.")).to_be_visible()
    expect(page.get_by_text("Your card has expired.")).to_be_visible()
    expect(page.get_by_text("Enter the 3 or 4 digits of your card's CVC.")).to_be_visible()
    expect(page.get_by_label("Card number")).to_be_focused()
    assert server.request("GET", "/v1/payments", key=shop["api_key"]).json()["data"] == []


def test_without_javascript_the_server_decides_and_never_echoes_the_card(server, shop, browser):
    the_order = order(server, shop)
    with new_page(browser, java_script_enabled=False) as page:
        page.goto(the_order["payment_url"])
        pay_by_card(page, LUHN_INVALID)
        expect(page.get_by_text("Your card number is incorrect.")).to_be_visible()
        assert LUHN_INVALID not in page.content() and "4242 4242" not in page.content()
        expect(page.get_by_label("Card number")).to_have_value("")
        with page.expect_navigation():  # the form's own POST and its answer, before the reload
            pay_by_card(page, SUCCEEDS)
        # Without scripts the page does not follow the payment by itself: reloads show where it went.
        reload_until(page, page.get_by_role("heading", name="Payment successful"))


def test_a_form_carrying_what_no_text_is_gets_a_page_never_a_server_error(server, shop, page):
    """A form declared UTF-7 can carry a lone surrogate ("+2AA-"), which is no Unicode text: refused, whichever field
    holds it."""
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    proof = {name: page.locator(f"#panel-card input[name={name}]").get_attribute("value")
             for name in ("attempt", "attempt_token")}
    utf7 = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-7"}
    card = f"number={SUCCEEDS}&expiry=12/34&cvc=123"
    for path, body in ((f"/pay/{the_order['id']}/card", f"attempt={proof['attempt']}&attempt_token=+2AA-"),
                       (f"/pay/{the_order['id']}/card", f"{urllib.parse.urlencode(proof)}&{card}&holder_name=+2AA-"),
                       ("/dashboard/login", "email=ann+2AA-@example.com&password=x"),
                       ("/admin/login", "token=+2AA-")):
        answer = page.request.post(server.url + path, data=body.encode(), headers=utf7)
        assert answer.status == 400 and "The form could not be read." in answer.text(), (path, answer.status)
    assert server.request("GET", f"/v1/payments?order_id={the_order['id']}", key=shop["api_key"]).json()["data"] == []


def bank_transfer(server, reference: str, amount: int, currency: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.base_port + 1}/v1/transfers", method="POST",
                                     data=json.dumps({"reference": reference, "amount": amount,
                                                      "currency": currency}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def test_the_qr_page_turns_paid_by_itself_when_the_transfer_lands(server, shop, page):
    the_order = order(server, shop, amount=120000, currency="vnd", name="Coffee beans")
    page.goto(the_order["payment_url"])
    expect(page.get_by_text("120,000 VND", exact=True).first).to_be_visible()
    page.get_by_role("tab", name="QR code").click()
    image = page.get_by_role("img", name=re.compile("QR code to pay 120,000 VND"))
    expect(image).to_be_visible()
    assert page.evaluate("(image) => image.naturalWidth > 100", image.element_handle())
    page.get_by_role("tab", name="Bank transfer").click()
    reference = page.locator("dt:has-text('Reference') + dd").inner_text()
    assert reference == "O" + the_order["id"].removeprefix("ord_")
    page.evaluate("window.stillTheSamePage = true")
    bank_transfer(server, reference, 120000, "vnd")
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    assert page.evaluate("window.stillTheSamePage") is True  # no reload: the live stream brought it
    assert order_now(server, shop, the_order["id"])["status"] == "paid"


def seconds_left(the_order: dict) -> float:
    expires_at = datetime.datetime.fromisoformat(the_order["expires_at"].replace("Z", "+00:00"))
    return (expires_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


def test_a_suspended_merchants_order_cannot_be_paid_from_its_page(server, shop, page):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    expect(page.get_by_role("button", name="Pay", exact=True)).to_be_visible()
    changed = server.request("PATCH", f"/v1/merchants/{shop['id']}", {"status": "suspended"}, key=server.admin_token)
    assert changed.status == 200, changed.body
    page.wait_for_timeout(MERCHANT_KEPT_MS)
    pay_by_card(page, SUCCEEDS)  # the form the page showed before the suspension
    expect(page.get_by_text("This shop cannot take payments just now.")).to_be_visible()
    page.goto(the_order["payment_url"])
    expect(page.get_by_role("heading", name="This shop cannot take payments just now")).to_be_visible()
    expect(page.get_by_role("button", name="Pay", exact=True)).to_have_count(0)
    expect(page.get_by_role("tab")).to_have_count(0)
    changed = server.request("PATCH", f"/v1/merchants/{shop['id']}", {"status": "active"}, key=server.admin_token)
    assert changed.status == 200, changed.body
    page.wait_for_timeout(MERCHANT_KEPT_MS)
    assert order_now(server, shop, the_order["id"])["status"] == "pending"
    assert server.request("GET", f"/v1/payments?order_id={the_order['id']}", key=shop["api_key"]).json()["data"] == []
    page.reload()
    expect(page.get_by_role("button", name="Pay", exact=True)).to_be_visible()


def test_the_shopper_pays_the_amount_the_page_shows_even_when_the_merchant_changes_it(server, shop, page, browser):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    with new_page(browser, java_script_enabled=False) as stale:  # its form stays as it was when the page opened
        stale.goto(the_order["payment_url"])
        changed = server.request("PATCH", f"/v1/orders/{the_order['id']}", {"amount": 2999}, key=shop["api_key"])
        assert changed.status == 200, changed.body
        # The live page shows the new amount by itself; the form of the old one pays nothing.
        expect(page.get_by_text("29.99 USD", exact=True).first).to_be_visible()
        expect(page.get_by_text("19.99 USD", exact=True)).to_have_count(0)
        pay_by_card(stale, SUCCEEDS)
        expect(stale.get_by_text("This form has expired: open the page again and resend it.")).to_be_visible()
        assert server.request("GET", f"/v1/payments?order_id={the_order['id']}",
                              key=shop["api_key"]).json()["data"] == []
    pay_by_card(page, SUCCEEDS)
    expect(page.get_by_text("29.99 USD paid to")).to_be_visible()
    payment = server.request("GET", f"/v1/payments?order_id={the_order['id']}", key=shop["api_key"]).json()["data"]
    assert [(entry["status"], entry["amount"]) for entry in payment] == [("succeeded", 2999)]


def test_every_page_forbids_inline_script_and_framing_and_another_site_cannot_frame_it(server, shop, browser,
                                                                                       receiver):
    the_order = order(server, shop)
    for path in (f"/pay/{the_order['id']}", "/pay/ord_" + "0" * 24, "/dashboard/login", "/dashboard",
                 "/admin/login", f"/pay/{the_order['id']}/live"):
        request = urllib.request.Request(server.url + path)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                headers = response.headers
                if path.endswith("/live"):  # the live stream: its first bytes are enough
                    assert response.headers["content-type"] == "text/event-stream"
        except urllib.error.HTTPError as error:
            headers = error.headers
        assert_strict_page_headers(headers)
    # A page of another site that frames the payment page: Chromium refuses to show it there.
    context = browser.new_context()
    try:
        page = context.new_page()
        refusals: list[str] = []
        page.on("console", lambda message: refusals.append(message.text))
        page.goto(f"{receiver.site}/frame?" + urllib.parse.urlencode({"src": the_order["payment_url"]}))
        expect(page.get_by_role("heading", name="Another site")).to_be_visible()
        deadline = time.monotonic() + 10
        while not any("frame-ancestors 'none'" in text for text in refusals):
            assert time.monotonic() < deadline, refusals
            page.wait_for_timeout(100)
        expect(page.frame_locator("iframe").get_by_role("heading", name="Green tea")).to_have_count(0)
    finally:
        context.close()


def test_the_page_fits_a_phone(server, shop, browser, receiver):
    the_order = order(server, shop, callback_url=receiver.url)
    with new_page(browser, **PHONE) as page:
        page.goto(the_order["payment_url"])
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        pay_by_card(page, SUCCEEDS)
        expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()


def wallet_code(inbox, address: str, timeout_s: float = 15) -> str:
    """The code of the latest wallet code message mailed to `address`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        codes = [message["Subject"].rsplit(" ", 1)[1] for message in inbox.messages
                 if message["To"] == address and message["Subject"].startswith("Your wallet code:")]
        if codes:
            return codes[-1]
        time.sleep(0.1)
    raise AssertionError(f"no wallet code reached {address}")


def test_a_customer_signs_in_with_a_mailed_code_and_pays_from_the_wallet(server, shop, page, inbox):
    address = f"ann-{uuid.uuid4().hex[:8]}@example.com"
    customer = server.request("POST", "/v1/customers", {"email": address, "name": "Ann"}, key=shop["api_key"]).json()
    funded = server.request("POST", f"/v1/customers/{customer['id']}/adjustments",
                            {"amount": 5000, "currency": "usd", "reason": "test funds"}, key=server.admin_token)
    assert funded.status == 200, funded.body
    the_order = order(server, shop, customer_id=customer["id"])
    page.goto(the_order["payment_url"])
    page.get_by_role("tab", name="Wallet").click()
    expect(page.get_by_text("We send a one-time code to a•••@example.com")).to_be_visible()
    page.get_by_role("button", name="Send me a code").click()
    code = wallet_code(inbox, address)
    page.get_by_label("Code from your e-mail").fill("999999" if code != "999999" else "000000")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That code is not the one we sent, or it is too old.")
    page.get_by_label("Code from your e-mail").fill(code)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Your wallet holds 50.00 USD.")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    page.get_by_role("button", name="Pay 19.99 USD from my wallet").click()
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    assert order_now(server, shop, the_order["id"])["status"] == "paid"
    wallet = server.request("GET", f"/v1/customers/{customer['id']}/wallet", key=shop["api_key"]).json()
    assert [(entry["currency"], entry["balance"]) for entry in wallet["balances"]] == [("usd", 5000 - 1999)]
    assert code not in page.content()


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_any_order_that_takes_wallets_signs_the_customer_in_by_the_address_they_type(server, shop, page, inbox):
    address = f"bo-{uuid.uuid4().hex[:8]}@example.com"
    customer = server.request("POST", "/v1/customers", {"email": address, "name": "Bo"}, key=shop["api_key"]).json()
    funded = server.request("POST", f"/v1/customers/{customer['id']}/adjustments",
                            {"amount": 3000, "currency": "usd", "reason": "test funds"}, key=server.admin_token)
    assert funded.status == 200, funded.body
    the_order = order(server, shop, payment_methods=["card", "wallet"])  # no customer_id
    page.goto(the_order["payment_url"])
    page.get_by_role("tab", name="Wallet").click()
    expect(page.get_by_text("Enter your wallet's e-mail address")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []

    # An address that is no customer's: the page answers as for one that is, and mails nothing.
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    page.get_by_label("Your wallet's e-mail address").fill(nobody)
    page.get_by_role("button", name="Send me a code").click()
    expect(page.get_by_text(f"If n•••@example.com is the address of a wallet with {shop['name']}, a one-time code "
                            "is on its way there.")).to_be_visible()
    page.get_by_label("Code from your e-mail").fill("123456")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That code is not the one we sent, or it is too old.")

    page.get_by_label("Your wallet's e-mail address").fill(address.upper())
    page.get_by_role("button", name="Send a new code").click()
    expect(page.get_by_text(f"If b•••@example.com is the address of a wallet with {shop['name']}")).to_be_visible()
    code = wallet_code(inbox, address)
    assert not any(message["To"] == nobody for message in inbox.messages)
    # The page's cookie says nothing of the customer: the typed address only, and a proof of the code.
    cookie = next(cookie for cookie in page.context.cookies() if cookie["name"] == "paygate_wallet_code")
    assert customer["id"] not in json.dumps(jwt_claims(cookie["value"])) and code not in cookie["value"]
    page.get_by_label("Code from your e-mail").fill(code)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in as b•••@example.com. Your wallet holds 30.00 USD.")).to_be_visible()
    page.get_by_role("button", name="Pay 19.99 USD from my wallet").click()
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    payment = server.request("GET", f"/v1/payments?order_id={the_order['id']}", key=shop["api_key"]).json()["data"][0]
    assert (payment["status"], payment["payment_method"]["type"]) == ("succeeded", "wallet")
    wallet = server.request("GET", f"/v1/customers/{customer['id']}/wallet", key=shop["api_key"]).json()
    assert [(entry["currency"], entry["balance"]) for entry in wallet["balances"]] == [("usd", 3000 - 1999)]


# Accessibility


def test_accessibility_labels_contrast_and_a_keyboard_only_payment(server, shop, page):
    the_order = order(server, shop)
    page.goto(the_order["payment_url"])
    assert page.evaluate(UNLABELLED) == []
    assert page.evaluate(LOW_CONTRAST) == []
    # Tabs by arrow keys.
    page.get_by_role("tab", name="Card").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="QR code")).to_be_focused()
    expect(page.get_by_role("tab", name="QR code")).to_have_attribute("aria-selected", "true")
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("tab", name="Card")).to_have_attribute("aria-selected", "true")
    # The whole card form with the keyboard alone: Tab from the selected tab into the form, Enter sends it.
    page.keyboard.press("Tab")
    expect(page.get_by_label("Card number")).to_be_focused()
    for text in (SUCCEEDS, "1234", "123", "Ann Example"):
        page.keyboard.type(text)
        page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Pay", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()


# Last in the module: by now the expiring order's minute has mostly passed.
def test_ended_orders_show_their_state_instead_of_a_form(server, shop, page, expiring):
    expiring_shop, expiring_order, stale = expiring
    cancelled = order(server, shop)
    assert server.request("DELETE", f"/v1/orders/{cancelled['id']}", key=shop["api_key"]).status == 200
    page.goto(cancelled["payment_url"])
    expect(page.get_by_role("heading", name="This order was cancelled")).to_be_visible()
    expect(page.get_by_role("button", name="Pay", exact=True)).to_have_count(0)
    paid = order(server, shop)
    page.goto(paid["payment_url"])
    pay_by_card(page, SUCCEEDS)
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    page.goto(paid["payment_url"])
    expect(page.get_by_role("heading", name="Payment successful")).to_be_visible()
    expect(page.get_by_role("button", name="Pay", exact=True)).to_have_count(0)
    response = page.goto(cancelled["payment_url"].replace(cancelled["id"], "ord_" + "0" * 24))
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()

    # The expired order's form, sent after its expiry, pays nothing: the page says the order expired.
    time.sleep(max(0.0, seconds_left(expiring_order) + 1))
    with stale.expect_navigation():
        pay_by_card(stale, SUCCEEDS)
    expect(stale.get_by_role("heading", name="This order has expired")).to_be_visible()
    expect(stale.get_by_role("button", name="Pay", exact=True)).to_have_count(0)
    assert order_now(server, expiring_shop, expiring_order["id"])["status"] == "expired"
    response = server.request("GET", f"/v1/payments?order_id={expiring_order['id']}", key=expiring_shop["api_key"])
    assert response.json()["data"] == []
