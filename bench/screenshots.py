"""`make screenshots`: every page of paygate at desktop and phone sizes, as PNG files under bench/out/screenshots/
(`<page>-desktop.png`, `<page>-phone.png`).

Starts a real `paygate serve` (with the actors and the simulated providers) on free ports in a temporary folder,
makes a merchant with a dashboard user and orders in each state, then walks the pages in headless Chromium as a
shopper, the merchant and the operator would.
"""

import pathlib
import sys
import tempfile
import time

from bench.browser import DESKTOP, PHONE, launched
from bench.server import ROOT, PaygateServer

OUT = ROOT / "bench" / "out" / "screenshots"
PASSWORD = "correct horse battery staple"
USER = "clerk@example.com"
CARD = {"exp_month": 12, "exp_year": 2034, "cvc": "123", "holder_name": "Ann Example"}
TIMEOUT_MS = 20_000


def api(server: PaygateServer, method: str, path: str, body=None, key: str | None = None) -> dict:
    status, answer = server.request(method, path, body, key)
    if status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {status} {answer}")
    return answer


def set_up(server: PaygateServer) -> dict:
    """A merchant with a dashboard user, and orders pending, paid and refunded in part, and cancelled."""
    shop = api(server, "POST", "/v1/merchants", {"name": "Kettle & Leaf Tea", "email": "owner@example.com",
                                                 "tier": "premium", "webhook_url": "http://127.0.0.1:9/webhook"},
               key=server.admin_token)
    api(server, "POST", f"/v1/merchants/{shop['id']}/dashboard_users", {"email": USER, "password": PASSWORD},
        key=server.admin_token)
    key = shop["api_key"]

    customer = api(server, "POST", "/v1/customers", {"email": "ann@example.com", "name": "Ann"}, key=key)

    def order(name: str, amount: int = 2450, currency: str = "usd") -> dict:
        return api(server, "POST", "/v1/orders", {"name": name, "amount": amount, "currency": currency,
                                                  "customer_email": "ann@example.com", "customer_id": customer["id"]},
                   key=key)

    paid = order("Sencha, 200 g")
    payment = api(server, "POST", "/v1/payments", {"order_id": paid["id"], "payment_method": {
        "type": "card", "card": {"number": "4242424242424242", **CARD}}}, key=key)
    deadline = time.monotonic() + 30
    while api(server, "GET", f"/v1/payments/{payment['id']}", key=key)["status"] != "succeeded":
        if time.monotonic() > deadline:
            raise RuntimeError("the card payment did not succeed")
        time.sleep(0.2)
    api(server, "POST", "/v1/refunds", {"payment_id": payment["id"], "amount": 1000, "reason": "one tin dented"},
        key=key)
    cancelled = order("Genmaicha, 100 g")
    api(server, "DELETE", f"/v1/orders/{cancelled['id']}", key=key)
    api(server, "POST", "/v1/risk/blocklist", {"kind": "ip", "value": "203.0.113.9", "reason": "card testing"},
        key=server.admin_token)
    return {"shop": shop, "order": order, "pending": order("Matcha starter kit", 120000, "vnd"), "paid": paid,
            "cancelled": cancelled}


def shoot(browser, server: PaygateServer, scenes: dict, size: str, options: dict) -> None:
    def new_page():
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        return context.new_page()

    def save(page, name: str) -> None:
        page.screenshot(path=str(OUT / f"{name}-{size}.png"), full_page=True)

    shopper = new_page()
    for method in ("card", "qr", "bank_transfer", "wallet"):
        shopper.goto(f"{scenes['pending']['payment_url']}?method={method}")
        save(shopper, f"pay-{method.replace('_', '-')}")
    for number, name in (("4000000000000002", "pay-declined"), ("4000000000003220", "pay-3ds")):
        shopper.goto(scenes["order"]("Hojicha, 100 g")["payment_url"])
        shopper.get_by_label("Card number").fill(number)
        shopper.get_by_label("Expiry (MM/YY)").fill("12/34")
        shopper.get_by_label("CVC").fill("123")
        shopper.get_by_role("button", name="Pay", exact=True).click()
        shopper.get_by_role("heading", name="Your payment failed").or_(
            shopper.get_by_role("button", name="Approve")).wait_for()
        save(shopper, name)
    shopper.get_by_role("button", name="Approve").click()
    shopper.get_by_role("heading", name="Payment successful").wait_for()
    save(shopper, "pay-success")
    shopper.goto(scenes["cancelled"]["payment_url"])
    save(shopper, "pay-cancelled")
    shopper.goto(f"{server.url}/pay/ord_{'0' * 24}")
    save(shopper, "not-found")

    merchant = new_page()
    merchant.goto(f"{server.url}/dashboard")
    save(merchant, "dashboard-login")
    merchant.get_by_label("Email").fill(USER)
    merchant.get_by_label("Password").fill(PASSWORD)
    merchant.get_by_role("button", name="Sign in").click()
    merchant.get_by_role("heading", name="Orders").wait_for()
    save(merchant, "dashboard-orders")
    for path, name in ((f"/dashboard/orders/{scenes['paid']['id']}", "dashboard-order"),
                       ("/dashboard/balances", "dashboard-balances"), ("/dashboard/developers", "dashboard-developers")):
        merchant.goto(server.url + path)
        save(merchant, name)

    operator = new_page()
    operator.goto(f"{server.url}/admin")
    save(operator, "admin-login")
    operator.get_by_label("Admin token").fill(server.admin_token)
    operator.get_by_role("button", name="Sign in").click()
    operator.get_by_role("heading", name="Shards").wait_for()
    save(operator, "admin-shards")
    for path, name in (("/admin/merchants", "admin-merchants"), ("/admin/risk", "admin-risk"),
                       ("/admin/dead-letters", "admin-dead-letters")):
        operator.goto(server.url + path)
        save(operator, name)
    for page in (shopper, merchant, operator):
        page.context.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="paygate-screenshots-") as data:
        server = PaygateServer(pathlib.Path(data), workers=1, extra=("--no-dashboard", "--order-ip-limit", "100000"))
        try:
            server.start()
            scenes = set_up(server)
            with launched() as browser:
                for size, options in (("desktop", DESKTOP), ("phone", PHONE)):
                    shoot(browser, server, scenes, size, options)
        finally:
            server.stop()
    shots = sorted(OUT.glob("*.png"))
    print(f"{len(shots)} screenshots in {OUT.relative_to(ROOT)}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
