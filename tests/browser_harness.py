"""Real headless Chromium for the page tests (bench/browser.py: Debian's chromium driven by playwright-python), and a
merchant's site on loopback for the pages' redirects to a callback_url and for the merchant's webhooks."""

import contextlib
import html
import http.server
import threading
import urllib.parse
from typing import NamedTuple

import pytest

from bench.browser import ChromiumMissing, launched as launched_browser

TIMEOUT_MS = 15_000  # what a page may take to show what a test waits for
CSP_REFUSAL = "Content Security Policy"  # in what Chromium logs when a page's policy refuses something


@contextlib.contextmanager
def launched():
    """One browser, or the test fails saying what to install."""
    try:
        with launched_browser() as browser:
            yield browser
    except ChromiumMissing as error:
        pytest.fail(str(error))


@contextlib.contextmanager
def new_page(browser, **options):
    """A page in a context of its own (its own cookies), closed after. Anything a page did that its
    Content-Security-Policy refused (an inline script or style, something from elsewhere) fails the test."""
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    refused: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda message: refused.append(message.text) if CSP_REFUSAL in message.text else None)
        yield page
    finally:
        context.close()
    assert not refused, refused


class Hook(NamedTuple):
    """A webhook the merchant's site was sent, and the status it answered."""

    path: str
    body: bytes
    signature: str
    status: int


class CallbackReceiver:
    """A merchant's site on loopback: records each GET (path and query) and answers a small page (at /frame?src=, one
    that frames `src`); records each POST (a webhook) and answers it `answers[path]`, 200 unless set."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hooks: list[Hook] = []
        self.answers: dict[str, int] = {}
        self.arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                with receiver.arrived:
                    receiver.requests.append((parts.path, query))
                    receiver.arrived.notify_all()
                body = b"<!doctype html><title>Shop</title><h1>Back at the shop</h1>"
                if parts.path == "/frame":
                    body = (f'<!doctype html><title>Elsewhere</title><h1>Another site</h1>'
                            f'<iframe title="Framed page" src="{html.escape(query["src"])}"></iframe>').encode()
                self.answer(200, body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.answers.get(self.path, 200)
                with receiver.arrived:
                    receiver.hooks.append(Hook(self.path, body, self.headers.get("Paygate-Signature", ""), status))
                    receiver.arrived.notify_all()
                self.answer(status, b"")

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *arguments) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.site = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.site}/return"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "CallbackReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self.server.shutdown()
        self.server.server_close()

    def hooks_to(self, path: str, timeout_s: float = 15, count: int = 1, ok_only: bool = False) -> list[Hook]:
        """The webhooks posted to `path` once at least `count` (answered 2xx, with `ok_only`) have arrived."""
        def arrived() -> list[Hook]:
            return [hook for hook in self.hooks if hook.path == path and (not ok_only or hook.status < 300)]
        with self.arrived:
            self.arrived.wait_for(lambda: len(arrived()) >= count, timeout_s)
        found = arrived()
        assert len(found) >= count, f"{len(found)} of {count} webhooks reached {path}"
        return found

    def wait_for(self, path: str, timeout_s: float = 15) -> dict[str, str]:
        """The query of the first request to `path`."""
        with self.arrived:
            self.arrived.wait_for(lambda: any(seen == path for seen, _ in self.requests), timeout_s)
        found = [query for seen, query in self.requests if seen == path]
        assert found, f"nothing reached {path}: {self.requests}"
        return found[0]


def pay_by_card(page, number: str, expiry: str = "12/34", cvc: str = "123") -> None:
    """Fill the hosted payment page's card form as a shopper does, and send it."""
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiry (MM/YY)").fill(expiry)
    page.get_by_label("CVC").fill(cvc)
    page.get_by_label("Name on card").fill("Ann Example")
    page.get_by_role("button", name="Pay", exact=True).click()


def assert_strict_page_headers(headers) -> None:
    """A page's answer forbids inline script and style and anything from elsewhere, and any framing."""
    policy = {directive.strip().split(" ", 1)[0]: directive.strip() for directive in
              headers["content-security-policy"].split(";")}
    assert policy["default-src"] == "default-src 'none'" and policy["script-src"] == "script-src 'self'", policy
    assert policy["style-src"] == "style-src 'self'" and policy["frame-ancestors"] == "frame-ancestors 'none'", policy
    assert "unsafe" not in headers["content-security-policy"]
    assert (headers["x-frame-options"], headers["x-content-type-options"]) == ("DENY", "nosniff")


# Every form control that a person cannot name: no label, no aria-label, a button without text.
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter(element => !element.closest('[hidden]'))
    .filter(element => !(element.labels && element.labels.length) && !element.getAttribute('aria-label')
                       && !(element.tagName === 'BUTTON' && element.textContent.trim()))
    .map(element => element.outerHTML)"""

# The contrast ratio (WCAG 2) of each visible text element against the first opaque background behind it.
LOW_CONTRAST = """() => {
  const luminance = rgb => {
    const [r, g, b] = rgb.map(value => { value /= 255;
      return value <= 0.03928 ? value / 12.92 : Math.pow((value + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const parse = color => color.match(/[0-9.]+/g).map(Number);
  const background = element => {
    for (let node = element; node; node = node.parentElement) {
      const color = parse(getComputedStyle(node).backgroundColor);
      if (color.length < 4 || color[3] > 0) return color.slice(0, 3);
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll('body *')]
    .filter(element => element.offsetParent && [...element.childNodes].some(
      node => node.nodeType === Node.TEXT_NODE && node.textContent.trim()))
    .map(element => {
      const [a, b] = [luminance(parse(getComputedStyle(element).color).slice(0, 3)), luminance(background(element))];
      return [element.tagName + ': ' + element.textContent.trim().slice(0, 40),
              (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
    })
    .filter(([, ratio]) => ratio < 4.5);
}"""
