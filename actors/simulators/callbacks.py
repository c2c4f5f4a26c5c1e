"""Signed callbacks from the simulated providers (piggybank, bank) to the gateway.

A callback is a JSON POST carrying a unique `callback_id` ("cb_" + random hex; the same id on every retry of one
callback, so the gateway can drop duplicates) and the header
`Paygate-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`, the format the gateway uses for its
own webhooks. Delivery retries connection errors, timeouts and non-2xx answers with short, bounded exponential
back-off. `Outbox` queues callbacks (bounded) and delivers them from a few worker tasks, so a request handler
answers at once and the callback follows.

Standard library and aiohttp only: the actors folder must not import the edge.
"""

import asyncio
import hashlib
import hmac
import logging
import pathlib
import secrets
import time

import aiohttp
import orjson

SIGNATURE_HEADER = "Paygate-Signature"
MAX_ATTEMPTS = 10
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
ATTEMPT_TIMEOUT_S = 5.0
MAX_SECRET_CHARS = 4096

log = logging.getLogger("paygate.simulators.callbacks")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Paygate-Signature` value: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`."""
    digest = hmac.new(secret.encode("utf-8", "surrogatepass"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def new_callback_id() -> str:
    return "cb_" + secrets.token_hex(16)


def read_secret(path: str | pathlib.Path) -> str:
    """The shared callback secret: the file's text without surrounding whitespace; ValueError when empty or huge."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    secret = text.strip()
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"{path} must hold a secret of 1..{MAX_SECRET_CHARS} characters")
    return secret


def encode(payload: dict) -> bytes:
    return orjson.dumps(payload)


async def deliver(session: aiohttp.ClientSession, url: str, secret: str, payload: dict, attempts: int = 5, *,
                  first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S,
                  timeout_s: float = ATTEMPT_TIMEOUT_S, on_answer=None) -> bool:
    """POSTs `payload` (given a `callback_id` if it has none) signed with `secret`; True once a 2xx answers, whose
    body goes to `on_answer` if given.

    At most `attempts` tries (clamped to 1..MAX_ATTEMPTS), each signed afresh with the current time, with
    back-off first_delay_s, doubling, capped at max_delay_s. Never raises for network trouble; False after the
    last failed attempt.
    """
    payload = dict(payload)
    payload.setdefault("callback_id", new_callback_id())
    body = encode(payload)
    attempts = max(1, min(int(attempts), MAX_ATTEMPTS))
    delay = first_delay_s
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    problem = ""
    for attempt in range(1, attempts + 1):
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body, int(time.time()))}
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout,
                                    allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    if on_answer is not None:
                        on_answer(await response.read())
                    return True
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            problem = type(error).__name__
        if attempt < attempts:
            log.info("callback %s attempt %d failed (%s); retrying in %.1fs", payload["callback_id"], attempt,
                     problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
    log.warning("callback %s gave up after %d attempts (%s)", payload["callback_id"], attempts, problem)
    return False


class OutboxFull(Exception):
    """More callbacks are waiting than the outbox holds; the caller should answer 503."""


class Outbox:
    """A bounded queue of callbacks to one URL, delivered by a fixed number of worker tasks.

    `send` stamps the payload with a fresh `callback_id` and returns it at once; `delay_s` holds each callback back
    that long after it was queued (so it tends to arrive after the reply that announced it).
    """

    def __init__(self, url: str, secret: str, *, attempts: int = 5, capacity: int = 10_000, workers: int = 32,
                 delay_s: float = 0.0) -> None:
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.delay_s = max(0.0, delay_s)
        self.workers = max(1, workers)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, capacity))
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task] = []
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.workers)
        self.session = aiohttp.ClientSession(connector=connector)
        self.tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    def send(self, payload: dict, on_answer=None) -> str:
        """Queue the callback; `on_answer` gets the body of the 2xx that takes it."""
        payload = {"callback_id": new_callback_id(), **payload}
        try:
            self.queue.put_nowait((time.monotonic() + self.delay_s, payload, on_answer))
        except asyncio.QueueFull:
            raise OutboxFull from None
        return payload["callback_id"]

    def stats(self) -> dict:
        return {"queued": self.queue.qsize(), "delivered": self.delivered, "failed": self.failed}

    async def _work(self) -> None:
        while True:
            due, payload, on_answer = await self.queue.get()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if await deliver(self.session, self.url, self.secret, payload, self.attempts, on_answer=on_answer):
                    self.delivered += 1
                else:
                    self.failed += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad callback must not stop the worker
                self.failed += 1
                log.exception("callback %s could not be delivered", payload.get("callback_id"))
            finally:
                self.queue.task_done()

    async def close(self, grace_s: float = 2.0) -> None:
        """Gives queued callbacks up to `grace_s` to go out, then stops the workers and the HTTP session."""
        if self.tasks:
            try:  # join() also waits for the callbacks workers are delivering right now
                await asyncio.wait_for(self.queue.join(), grace_s)
            except asyncio.TimeoutError:
                log.warning("stopping with callbacks undelivered (%d queued)", self.queue.qsize())
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        if self.session is not None:
            await self.session.close()
            self.session = None
