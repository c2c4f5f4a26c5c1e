"""The merchant's dashboard (`/dashboard`) and the operator's admin (`/admin`) in real headless Chromium, against a
real `paygate serve` with a replica, Ray, the connector actors, the shard-health actor and the simulated providers:
what a merchant and an operator see and do, asserted by text, labels and roles.

One server, one browser and one merchant's site (its webhooks) for the module; each test makes its own merchant and
opens its own browser contexts.
"""

import contextlib
import hashlib
import hmac
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from playwright.sync_api import expect

from browser_harness import LOW_CONTRAST, UNLABELLED, CallbackReceiver, assert_strict_page_headers, new_page, \
    pay_by_card, reload_until
from edge_harness import Server
from edge.limits import LOGIN_FREE_FAILURES

PASSWORD = "correct horse battery staple"
SUCCEEDS = "4242424242424242"
# A webhook that always fails is dead after three attempts, within a second.
RETRY_SCHEDULE = "0.1,0.2"

pytestmark = pytest.mark.usefixtures("double_entry_holds")


@pytest.fixture(scope="module")
def site():
    """The merchants' site: their webhook endpoints, each answering 200 unless a test says otherwise."""
    with CallbackReceiver() as site:
        yield site


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Behind a trusted proxy, so each test signs in from an address of its own (see `page`).
    server = Server(tmp_path_factory.mktemp("pages-dashboard"), workers=2, actors=True,
                    extra=("--order-ip-limit", "100000", "--replica", "--webhook-retry-schedule", RETRY_SCHEDULE,
                           "--trusted-proxy", "127.0.0.1")).start()
    yield server
    server.stop()


@pytest.fixture
def shop(server, site) -> dict:
    return new_shop(server, site, f"Tea Shop {uuid.uuid4().hex[:6]}")


def new_shop(server, site, name: str) -> dict:
    """A fresh merchant with a dashboard user: its creation's answer, the user's `user_email`, and its
    `webhook_path` on the site."""
    path = f"/hooks/{uuid.uuid4().hex[:8]}"
    created = server.request("POST", "/v1/merchants", {"name": name, "email": "owner@example.com", "tier": "premium",
                                                       "webhook_url": site.site + path},
                             key=server.admin_token).json()
    email = f"clerk-{uuid.uuid4().hex[:8]}@example.com"
    added = server.request("POST", f"/v1/merchants/{created['id']}/dashboard_users",
                           {"email": email, "password": PASSWORD}, key=server.admin_token)
    assert added.status == 200, added.body
    return {**created, "user_email": email, "webhook_path": path}


@pytest.fixture
def page(browser):
    """A browser whose requests come from an address of its own: each worker allows an address a few sign-ins a
    minute, which every test's together would pass."""
    address = "10." + ".".join(str(octet) for octet in uuid.uuid4().bytes[:3])
    with new_page(browser, extra_http_headers={"X-Forwarded-For": address}) as page:
        yield page


def order(server, shop, name: str = "Matcha latte", amount: int = 2000, **fields) -> dict:
    reply = server.request("POST", "/v1/orders", {"name": name, "amount": amount, "currency": "usd", **fields},
                           key=shop["api_key"])
    assert reply.status == 200, reply.body
    return reply.json()


def api(server, shop, method: str, path: str, body=None) -> dict:
    reply = server.request(method, path, body, key=shop["api_key"])
    assert reply.status == 200, (path, reply.body)
    return reply.json()


def sign_in(server, page, shop, password: str = PASSWORD) -> None:
    page.goto(server.url + "/dashboard")
    expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()
    page.get_by_label("Email").fill(shop["user_email"])
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def eventually(condition, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "never came true"
        time.sleep(0.1)


def webhook_signed(secret: str, header: str, body: bytes) -> bool:
    """Whether one of the header's v1 signatures is the webhook secret's over "<t>.<body>"."""
    fields = [part.partition("=")[::2] for part in header.split(",")]
    timestamp = dict(fields)["t"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(name == "v1" and hmac.compare_digest(value, expected) for name, value in fields)


def card_payment(server, shop, name: str) -> dict:
    """An order paid by card over the API (the acquirer answers a moment later); the order."""
    the_order = order(server, shop, name=name)
    api(server, shop, "POST", "/v1/payments", {"order_id": the_order["id"], "payment_method": {
        "type": "card", "card": {"number": SUCCEEDS, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}})
    return the_order


def test_sign_in_find_the_order_watch_it_turn_paid_and_refund_half(server, shop, page, browser):
    the_order = order(server, shop)
    order(server, shop, name="Hojicha", amount=1500)
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()
    page.get_by_label("Order name").fill("MATCHA")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="Matcha latte")).to_be_visible()
    expect(page.get_by_role("link", name="Hojicha")).to_have_count(0)
    page.get_by_role("link", name="Matcha latte").click()
    expect(page.get_by_role("heading", name="Matcha latte")).to_be_visible()
    expect(page.get_by_text("Status: pending")).to_be_visible()
    expect(page.get_by_text("No payment yet.")).to_be_visible()

    page.evaluate("window.stillTheSamePage = true")
    with new_page(browser) as shopper:  # another browser context: the shopper's
        shopper.goto(the_order["payment_url"])
        pay_by_card(shopper, SUCCEEDS)
        expect(shopper.get_by_role("heading", name="Payment successful")).to_be_visible()
    expect(page.get_by_text("Status: paid")).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile("Card · visa ending in 4242 · succeeded"))).to_be_visible()
    assert page.evaluate("window.stillTheSamePage") is True  # it turned paid live, without a reload

    page.get_by_label("Amount to refund (USD)").fill("10.00")
    page.get_by_label("Reason").fill("one cup was cold")
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_role("status").filter(has_text="Refund made.")).to_be_visible()
    expect(page.get_by_text("Status: partially refunded")).to_be_visible()
    refunds = page.get_by_role("table", name="Refunds")
    expect(refunds.get_by_role("cell", name="10.00 USD")).to_be_visible()
    expect(refunds.get_by_text("one cup was cold")).to_be_visible()
    after = api(server, shop, "GET", f"/v1/orders/{the_order['id']}")
    assert (after["status"], after["amount_refunded"]) == ("partially_refunded", 1000)
    # The refund's event, with its webhook delivery, beside the payment's and the order's.
    for event in ("refund.succeeded", "order.partially_refunded", "order.paid", "payment.succeeded"):
        expect(page.get_by_role("heading", name=re.compile(rf"^{re.escape(event)} "))).to_be_visible()
    deliveries = page.get_by_role("table", name="Deliveries of refund.succeeded")
    expect(deliveries.get_by_role("cell", name=f"Webhook: {shop['webhook_url']}")).to_be_visible()
    invoice_link = page.get_by_role("link", name="Download the invoice (PDF)").get_attribute("href")
    invoice = page.request.get(server.url + invoice_link)
    assert invoice.status == 200 and invoice.headers["content-type"] == "application/pdf"
    assert invoice.body().startswith(b"%PDF")
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []


def test_sign_in_refuses_a_wrong_password_and_keeps_its_session_cookie_from_scripts(server, shop, page):
    sign_in(server, page, shop, password="not the password")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()
    cookie, = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["secure"], cookie["path"]) == (
        "paygate_dashboard", True, "Strict", True, "/dashboard")
    assert page.evaluate("document.cookie") == ""
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()
    page.goto(server.url + "/dashboard/balances")
    expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()


def test_forms_without_the_sessions_csrf_token_or_from_another_site_change_nothing(server, shop, page):
    the_order = order(server, shop)
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()
    cancel = f"{server.url}/dashboard/orders/{the_order['id']}/cancel"
    forged = page.request.post(cancel, form={"csrf_token": "guessed", "attempt": "0" * 32})
    assert forged.status == 403 and "This form has expired" in forged.text()
    page.goto(f"{server.url}/dashboard/orders/{the_order['id']}")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    elsewhere = page.request.post(cancel, form={"csrf_token": token, "attempt": "1" * 32},
                                  headers={"Origin": "https://attacker.example"})
    assert elsewhere.status == 403
    assert api(server, shop, "GET", f"/v1/orders/{the_order['id']}")["status"] == "pending"
    page.get_by_role("button", name="Cancel order").click()
    expect(page.get_by_role("status").filter(has_text="Order cancelled.")).to_be_visible()
    expect(page.get_by_text("Status: cancelled")).to_be_visible()


def test_a_date_past_the_calendars_last_day_is_refused_on_the_page(server, shop, page):
    sign_in(server, page, shop)
    # The search would end the day after the last day there is, which no calendar has.
    page.get_by_label("Created until").fill("9999-12-31")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_have_text("the to date must be a day as YYYY-MM-DD, before 9999-12-31")
    expect(page.get_by_label("Created until")).to_have_value("9999-12-31")


def test_a_token_that_is_not_ascii_is_refused_as_any_wrong_token_is(server, shop, page):
    the_order = order(server, shop)
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()
    cancel = f"{server.url}/dashboard/orders/{the_order['id']}/cancel"
    for path, form in ((cancel, {"attempt": "4" * 32}), (f"{server.url}/dashboard/logout", {})):
        forged = page.request.post(path, form={"csrf_token": "jeton-volé-é", **form})
        assert forged.status == 403 and "This form has expired" in forged.text(), (path, forged.status)
    admin_sign_in(server, page, server.admin_token)
    expect(page.get_by_role("heading", name="Shards")).to_be_visible()
    forged = page.request.post(f"{server.url}/admin/logout", form={"csrf_token": "jeton-volé-é"})
    assert forged.status == 403 and "This form has expired" in forged.text(), forged.status
    assert api(server, shop, "GET", f"/v1/orders/{the_order['id']}")["status"] == "pending"
    page.goto(server.url + "/dashboard")
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()  # still signed in


def test_orders_filter_by_status_and_date_and_page_through(server, shop, page):
    made = [order(server, shop, name=f"Order {number:02d}") for number in range(23)]
    api(server, shop, "DELETE", f"/v1/orders/{made[0]['id']}")
    sign_in(server, page, shop)
    rows = page.get_by_role("table", name="Orders, newest first").get_by_role("row")
    expect(rows).to_have_count(21)  # the header and a page of 20
    expect(page.get_by_role("link", name="Order 22")).to_be_visible()
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(4)
    expect(page.get_by_role("link", name="Order 00")).to_be_visible()
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="First page").click()
    page.get_by_label("Status").select_option("cancelled")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(2)
    expect(page.get_by_role("link", name="Order 00")).to_be_visible()
    page.get_by_label("Status").select_option("")
    today = made[0]["created_at"][:10]
    page.get_by_label("Created from").fill(today)
    page.get_by_label("Created until").fill(today)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="Order 22")).to_be_visible()
    page.get_by_label("Created until").fill("2000-01-01")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No orders match.")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []


def manual_card_payment(server, shop, name: str) -> dict:
    the_order = order(server, shop, name=name)
    payment = api(server, shop, "POST", "/v1/payments", {
        "order_id": the_order["id"], "capture_method": "manual",
        "payment_method": {"type": "card", "card": {"number": SUCCEEDS, "exp_month": 12, "exp_year": 2034,
                                                    "cvc": "123"}}})
    return the_order, payment


def test_capture_an_authorization_refund_it_in_full_and_void_another(server, shop, page):
    to_capture, _ = manual_card_payment(server, shop, "Gyokuro")
    to_void, payment = manual_card_payment(server, shop, "Bancha")
    sign_in(server, page, shop)
    page.goto(f"{server.url}/dashboard/orders/{to_capture['id']}")
    expect(page.get_by_role("button", name="Capture")).to_be_visible()  # live: once the acquirer authorized it
    page.get_by_label("Amount to capture (USD)").fill("20.00")
    page.get_by_role("button", name="Capture").click()
    expect(page.get_by_role("status").filter(has_text="Payment captured.")).to_be_visible()
    expect(page.get_by_text("Status: paid")).to_be_visible()
    page.get_by_role("button", name="Refund").click()  # no amount: all of it
    expect(page.get_by_role("status").filter(has_text="Refund made.")).to_be_visible()
    expect(page.get_by_text("Status: refunded")).to_be_visible()
    expect(page.get_by_role("table", name="Refunds").get_by_role("cell", name="20.00 USD")).to_be_visible()
    page.goto(f"{server.url}/dashboard/orders/{to_void['id']}")
    page.get_by_role("button", name="Void authorization").click()
    expect(page.get_by_role("status").filter(has_text="Authorization voided.")).to_be_visible()
    expect(page.get_by_role("heading", name="Card · visa ending in 4242 · cancelled")).to_be_visible()
    assert api(server, shop, "GET", f"/v1/payments/{payment['id']}")["status"] == "cancelled"


def test_balances_payouts_and_masked_api_keys(server, shop, page, browser):
    the_order = order(server, shop)
    with new_page(browser) as shopper:
        shopper.goto(the_order["payment_url"])
        pay_by_card(shopper, SUCCEEDS)
        expect(shopper.get_by_role("heading", name="Payment successful")).to_be_visible()
    sign_in(server, page, shop)
    page.get_by_role("link", name="Balances and payouts").click()
    expect(page.get_by_role("table", name="Balances by currency").get_by_role("cell", name="20.00 USD")).to_be_visible()
    page.get_by_label("Amount").fill("5.00")
    page.get_by_role("button", name="Request payout").click()
    expect(page.get_by_role("status").filter(has_text="Payout requested.")).to_be_visible()
    payouts = page.get_by_role("table", name="Payouts, newest first")
    expect(payouts.get_by_role("cell", name="5.00 USD")).to_be_visible()
    page.get_by_label("Amount").fill("100.00")
    page.get_by_role("button", name="Request payout").click()
    expect(page.get_by_role("alert")).to_contain_text("insufficient")
    page.get_by_role("link", name="API keys and webhooks").click()
    expect(page.get_by_text(f"sk_{shop['id']}_••••••••")).to_be_visible()
    assert shop["api_key"] not in page.content() and shop["webhook_secret"] not in page.content()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []


def test_wrong_passwords_lock_the_account_and_the_page_says_for_how_long(server, shop, page):
    for _ in range(LOGIN_FREE_FAILURES):
        sign_in(server, page, shop, password="not the password")
        expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    # Each failure past the free ones doubles the wait (1 s, 2 s, 4 s): waited out, two more make it 4 s.
    for wait_ms in (1100, 2100):
        page.wait_for_timeout(wait_ms)
        sign_in(server, page, shop, password="not the password")
        expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    sign_in(server, page, shop)  # the right password, refused while the account is locked
    locked = re.compile(r"This account is locked after too many failed sign-ins: try again in ([1-4]) seconds?\.")
    expect(page.get_by_role("alert")).to_have_text(locked)
    expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    page.wait_for_timeout(int(locked.search(page.get_by_role("alert").inner_text()).group(1)) * 1000 + 300)
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *arguments, **options):
        return None


def with_cookie(server, path: str, cookie: str, token: str) -> tuple[int, str]:
    """GET `path` on a new connection (so on either worker) with the session cookie: the status, and where a
    redirect points; every answer with the pages' strict headers."""
    request = urllib.request.Request(server.url + path, headers={"Cookie": f"{cookie}={token}"})
    try:
        with urllib.request.build_opener(NoRedirects).open(request, timeout=10) as response:
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as error:
        status, headers = error.code, error.headers
    assert_strict_page_headers(headers)
    return status, headers.get("Location", "")


def session_token(page, cookie: str) -> str:
    return next(found["value"] for found in page.context.cookies() if found["name"] == cookie)


def test_signing_out_ends_the_session_on_every_worker(server, shop, page, browser):
    the_order = order(server, shop)
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()
    token = session_token(page, "paygate_dashboard")
    assert all(with_cookie(server, "/dashboard", "paygate_dashboard", token)[0] == 200 for _ in range(4))
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()
    pages = ["/dashboard", f"/dashboard/orders/{the_order['id']}", f"/dashboard/orders/{the_order['id']}/live",
             "/dashboard/developers"]
    for path in pages * 2:
        status, location = with_cookie(server, path, "paygate_dashboard", token)
        assert status == 303 and location.startswith("/dashboard/login"), (path, status, location)
    # The old cookie put back in the browser opens the sign-in page, not the dashboard.
    page.context.add_cookies([{"name": "paygate_dashboard", "value": token, "domain": "127.0.0.1",
                               "path": "/dashboard", "httpOnly": True, "secure": True, "sameSite": "Strict"}])
    page.goto(server.url + "/dashboard/balances")
    expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()

    admin_sign_in(server, page, server.admin_token)
    expect(page.get_by_role("heading", name="Shards")).to_be_visible()
    token = session_token(page, "paygate_admin")
    assert with_cookie(server, "/admin/merchants", "paygate_admin", token)[0] == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    for _ in range(4):
        assert with_cookie(server, "/admin/merchants", "paygate_admin", token) == (303, "/admin/login")


def test_a_live_stream_opened_before_signing_out_tells_nothing_after(server, shop, page):
    the_order = order(server, shop)
    sign_in(server, page, shop)
    expect(page.get_by_role("heading", name="Orders")).to_be_visible()
    request = urllib.request.Request(f"{server.url}/dashboard/orders/{the_order['id']}/live?since=",
                                     headers={"Cookie": f"paygate_dashboard={session_token(page, 'paygate_dashboard')}"})
    lines: queue.Queue = queue.Queue()

    def read(stream) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed by the test
            for line in stream:
                lines.put(line)
        lines.put(None)  # the stream ended

    with urllib.request.urlopen(request, timeout=30) as stream:
        threading.Thread(target=read, args=(stream,), daemon=True).start()
        assert next_event(lines) == b"event: status\n"  # the order as it is now: the session is live
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in to your dashboard")).to_be_visible()
        api(server, shop, "PATCH", f"/v1/orders/{the_order['id']}", {"name": "Renamed after signing out"})
        assert next_event(lines) is None


def next_event(lines: queue.Queue, timeout_s: float = 10) -> bytes | None:
    """A live stream's next `event:` line, or None once the stream has ended."""
    while (line := lines.get(timeout=timeout_s)) is not None and not line.startswith(b"event:"):
        pass
    return line


def test_the_merchant_changes_its_webhook_endpoint_and_rotates_its_credentials(server, shop, page, site):
    sign_in(server, page, shop)
    page.get_by_role("link", name="API keys and webhooks").click()
    endpoint = page.get_by_label("Webhook endpoint")
    expect(endpoint).to_have_value(shop["webhook_url"])
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    # Refused as the API's PATCH refuses it: the merchant's endpoint stays.
    endpoint.fill("ftp://shop.example/events")
    page.get_by_role("button", name="Save endpoint").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Enter the endpoint as a web address starting with https:// (or http://), or nothing to stop webhooks.")
    expect(endpoint).to_have_value("ftp://shop.example/events")
    assert api(server, shop, "GET", "/v1/merchants/me")["webhook_url"] == shop["webhook_url"]
    forged = page.request.post(server.url + "/dashboard/developers/webhook",
                               form={"csrf_token": "guessed", "attempt": "2" * 32, "webhook_url": "https://x.example"})
    assert forged.status == 403
    new_path = f"/hooks/{uuid.uuid4().hex[:8]}"
    endpoint.fill(site.site + new_path)
    page.get_by_role("button", name="Save endpoint").click()
    expect(page.get_by_role("status").filter(has_text="Webhook endpoint saved.")).to_be_visible()
    expect(endpoint).to_have_value(site.site + new_path)
    # Each edge worker keeps a merchant two seconds: the change holds everywhere within that.
    eventually(lambda: api(server, shop, "GET", "/v1/merchants/me")["webhook_url"] == site.site + new_path)

    page.get_by_label("Credentials in use keep working").select_option(label="For an hour")
    page.get_by_role("button", name="Rotate credentials").click()
    expect(page.get_by_role("heading", name="Your new credentials")).to_be_visible()
    shown = {name: page.locator(f"dt:text-is('{name}') + dd").inner_text().strip()
             for name in ("API key", "Webhook secret")}
    assert shown["API key"].startswith(f"sk_{shop['id']}_") and shown["Webhook secret"].startswith("whsec_")
    expect(page.get_by_role("table", name="API keys, newest first").get_by_role("row")).to_have_count(3)
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    eventually(lambda: server.request("GET", "/v1/merchants/me", key=shown["API key"]).status == 200)
    assert api(server, shop, "GET", "/v1/merchants/me")["id"] == shop["id"]  # the old key, for its hour
    # The next webhook reaches the new endpoint signed with the new secret (and the old one, for its hour).
    card_payment(server, shop, "Sencha")
    hook = site.hooks_to(new_path)[0]
    assert webhook_signed(shown["Webhook secret"], hook.signature, hook.body)
    assert webhook_signed(shop["webhook_secret"], hook.signature, hook.body)
    # The same form sent again (a reload) makes nothing new and shows no secret.
    page.reload()
    expect(page.get_by_text("These credentials were made already: their secrets were shown once")).to_be_visible()
    expect(page.get_by_role("table", name="API keys, newest first").get_by_role("row")).to_have_count(3)
    assert shown["API key"] not in page.content() and shown["Webhook secret"] not in page.content()
    page.get_by_role("link", name="API keys and webhooks").click()
    expect(page.get_by_role("heading", name="Your new credentials")).to_have_count(0)


# The operator's admin


def admin_sign_in(server, page, token: str) -> None:
    page.goto(server.url + "/admin")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_the_operator_sees_each_shards_epoch_and_replica_lag(server, page):
    admin_sign_in(server, page, "adm_not-the-token")
    expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
    admin_sign_in(server, page, server.admin_token)
    expect(page.get_by_role("heading", name="Shards")).to_be_visible()
    table = page.get_by_role("table", name="Shard health")
    header = [text.strip() for text in table.get_by_role("columnheader").all_inner_texts()]
    assert header == ["Shard", "State", "Roles", "Epoch", "Committed sequence", "Replica lag (batches)",
                      "Queue depth"]
    row = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name="Shard 0"))
    cells = [text.strip() for text in row.get_by_role("cell").all_inner_texts()]
    assert cells[:2] == ["healthy", "primary, replica"], cells
    assert int(cells[2]) >= 0 and int(cells[3]) > 0 and int(cells[4]) >= 0, cells
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    assert server.admin_token not in page.content()
    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    expect(page.get_by_text("No delivery is dead.")).to_be_visible()


def test_the_operator_sees_a_reconciliations_mismatches(server, page):
    unknown = "pay_" + uuid.uuid4().hex[:24]
    text = f"transaction_id,amount,currency,status,settled_at,fee\n{unknown},999,usd,captured,2024-01-02T10:00:00Z,3\n"
    reply = server.request("POST", "/v1/reconciliations?date=2024-01-02", raw=text.encode(), key=server.admin_token,
                           headers={"Content-Type": "text/csv"})
    assert reply.status == 200 and reply.json()["missing_in_ledger"] == [unknown], reply.body
    admin_sign_in(server, page, server.admin_token)
    page.get_by_role("link", name="Reconciliations").click()
    expect(page.get_by_role("heading", name="Reconciliations")).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=reply.json()["id"]))
    expect(row.get_by_text(f"Missing in ledger (1): {unknown}")).to_be_visible()
    expect(row.get_by_text("piggybank · 2024-01-02")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []


def test_the_operator_onboards_suspends_and_blocks(server, page):
    admin_sign_in(server, page, server.admin_token)
    page.get_by_role("link", name="Merchants").click()
    name = f"Noodle Bar {uuid.uuid4().hex[:6]}"
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Email").fill("noodles@example.com")
    page.get_by_label("Tier", exact=True).select_option("basic")
    page.get_by_role("button", name="Onboard").click()
    expect(page.get_by_role("heading", name=f"{name} is onboarded")).to_be_visible()
    api_key = page.locator("dt:has-text('API key') + dd").inner_text().strip()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    assert server.request("GET", "/v1/merchants/me", key=api_key).json()["tier"] == "basic"

    page.get_by_label(f"Tier of {name}").select_option("premium")
    page.get_by_role("button", name="Change tier").first.click()
    expect(page.get_by_role("status").filter(has_text="Tier changed.")).to_be_visible()
    page.get_by_label("Merchant name").fill(name.upper())
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("table", name="Merchants, newest first").get_by_role("row")).to_have_count(2)
    page.get_by_role("button", name=f"Suspend {name}").click()
    expect(page.get_by_role("status").filter(has_text="Merchant suspended.")).to_be_visible()
    assert api_key not in page.content()  # shown once, in the onboarding's own answer
    refused = server.request("GET", "/v1/merchants/me", key=api_key)
    # The edge workers keep a merchant two seconds: the suspension holds within that.
    for _ in range(30):
        if refused.status == 403:
            break
        page.wait_for_timeout(200)
        refused = server.request("GET", "/v1/merchants/me", key=api_key)
    assert refused.json()["error"]["code"] == "account_suspended"
    page.get_by_role("button", name=f"Reactivate {name}").click()
    expect(page.get_by_role("status").filter(has_text="Merchant reactivated.")).to_be_visible()

    page.get_by_role("link", name="Risk block list").click()
    page.get_by_label("What").select_option("ip")
    page.get_by_label("Value").fill("203.0.113.9")
    page.get_by_label("Reason").fill("card testing")
    page.get_by_role("button", name="Block").click()
    expect(page.get_by_role("status").filter(has_text="Added to the block list.")).to_be_visible()
    expect(page.get_by_role("cell", name="card testing")).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []
    page.get_by_role("button", name="Remove 203.0.113.9 from the block list").click()
    expect(page.get_by_text("Nothing is blocked.")).to_be_visible()


def test_a_dead_webhook_is_seen_dead_redelivered_and_replayed(server, shop, page, site, browser):
    site.answers[shop["webhook_path"]] = 500
    the_order = card_payment(server, shop, "Genmaicha")
    sign_in(server, page, shop)
    page.goto(f"{server.url}/dashboard/orders/{the_order['id']}")
    paid = page.get_by_role("table", name="Deliveries of order.paid")
    reload_until(page, paid.get_by_role("cell", name="dead"))
    expect(paid.get_by_role("cell", name="3", exact=True)).to_be_visible()  # attempts: the first and two retries
    expect(paid.get_by_role("cell", name=re.compile(r"^500 at "))).to_be_visible()
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(LOW_CONTRAST) == []

    with new_page(browser) as operator:
        admin_sign_in(server, operator, server.admin_token)
        operator.get_by_role("link", name="Dead letters").click()
        dead = operator.get_by_role("table", name="Dead deliveries, newest first")
        expect(dead.get_by_role("cell", name=f"Webhook: {shop['webhook_url']}").first).to_be_visible()
        assert operator.evaluate(UNLABELLED) == [] and operator.evaluate(LOW_CONTRAST) == []

        site.answers[shop["webhook_path"]] = 200  # the merchant's endpoint is fixed
        page.get_by_role("button", name="Redeliver order.paid").click()
        expect(page.get_by_role("status").filter(has_text="Event queued again.")).to_be_visible()
        reload_until(page, paid.get_by_role("cell", name="delivered"))
        expect(paid.get_by_role("cell", name="dead")).to_be_visible()  # the dead one stays as it was
        expect(page.get_by_role("button", name="Redeliver order.paid")).to_have_count(0)
        event_id = page.get_by_role("heading", name=re.compile(r"^order\.paid ")).inner_text().rsplit(" ", 1)[1]
        delivered = [hook for hook in site.hooks_to(shop["webhook_path"], ok_only=True)
                     if f'"id":"{event_id}"'.encode() in hook.body]
        assert delivered and webhook_signed(shop["webhook_secret"], delivered[0].signature, delivered[0].body)

        # The operator queues every dead delivery again: they reach the endpoint, and none is dead any more.
        operator.get_by_role("button", name="Replay every dead delivery").click()
        expect(operator.get_by_role("status").filter(has_text="Dead deliveries queued again.")).to_be_visible()
        reload_until(operator, operator.get_by_text("No delivery is dead."))
    page.reload()
    expect(page.get_by_role("button", name=re.compile("^Redeliver "))).to_have_count(0)


# Whatever merchants, shoppers and links carry is shown as text, never run


HOSTILE = '<img src=x onerror="window.ran=1"><script>window.ran=2</script>'
INJECTED = "() => [window.ran, document.querySelectorAll('img[src=x], script:not([src])').length]"


def test_names_notes_addresses_and_reasons_are_shown_as_typed_never_run(server, site, page, browser):
    name = f"Tea {uuid.uuid4().hex[:6]} {HOSTILE}"
    shop = new_shop(server, site, name)
    email = "<img/src=x/onerror=window.ran=3>@example.com"
    the_order = order(server, shop, name=f"Matcha {HOSTILE}", note=HOSTILE, customer_email=email)
    with new_page(browser) as shopper:
        shopper.goto(the_order["payment_url"])
        expect(shopper.get_by_role("heading", name=f"Matcha {HOSTILE}")).to_be_visible()
        expect(shopper.get_by_text(name, exact=True).first).to_be_visible()
        assert shopper.evaluate(INJECTED) == [None, 0]
        pay_by_card(shopper, SUCCEEDS)
        expect(shopper.get_by_text(f"20.00 USD paid to {name}. Thank you.")).to_be_visible()  # brought live
        assert shopper.evaluate(INJECTED) == [None, 0]

    sign_in(server, page, shop)
    expect(page.get_by_role("link", name=f"Matcha {HOSTILE}")).to_be_visible()
    expect(page.get_by_text(f"paygate · {name}")).to_be_visible()
    page.get_by_role("link", name=f"Matcha {HOSTILE}").click()
    expect(page.get_by_text(email, exact=True)).to_be_visible()
    expect(page.get_by_text(HOSTILE, exact=True)).to_be_visible()  # the note
    page.get_by_label("Amount to refund (USD)").fill("1.00")
    page.get_by_label("Reason").fill(HOSTILE[:200])
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_role("table", name="Refunds").get_by_text(HOSTILE)).to_be_visible()
    assert page.evaluate(INJECTED) == [None, 0]
    # Reflected: what a link puts in the search comes back as the field's value.
    page.goto(f"{server.url}/dashboard?" + urllib.parse.urlencode({"name": HOSTILE, "status": HOSTILE}))
    expect(page.get_by_label("Order name")).to_have_value(HOSTILE)
    expect(page.get_by_role("alert")).to_contain_text("unknown status")
    assert page.evaluate(INJECTED) == [None, 0]

    with new_page(browser) as operator:
        admin_sign_in(server, operator, server.admin_token)
        operator.goto(f"{server.url}/admin/merchants?" + urllib.parse.urlencode({"name": name}))
        expect(operator.get_by_role("button", name=f"Suspend {name}")).to_be_visible()
        assert operator.evaluate(INJECTED) == [None, 0]
