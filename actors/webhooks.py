"""Sending webhooks: the retry schedule, and one signed POST to a merchant's endpoint.

A delivery is delivered by a 2xx within `timeout_s` (10 s); anything else (another status, a timeout, no
connection, a redirect, which is never followed) is a failed attempt, retried after the schedule's next delay with
±20 % jitter, and dead after the last. With `production`, a connection is made only to public addresses, checked on
the address the socket connects to (actors/outbound.py), whatever the URL's name resolved to.

May import engine types and aiohttp; never the edge, never Ray.
"""

import asyncio
import math
import random
import time

import aiohttp
import msgspec

from actors.merchant_secrets import SIGNATURE_HEADER
from actors.outbound import NOT_PUBLIC, RefusedAddress, internal_host, public_only_socket

DEFAULT_RETRY_SCHEDULE = "2,10,60,300,1800,7200,21600,86400"
MAX_RETRIES = 16
MAX_RETRY_DELAY_S = 7 * 86400
JITTER = 0.2
REQUEST_TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 * 1024  # read to keep the connection; a longer answer closes it
MAX_ERROR_CHARS = 200
USER_AGENT = "paygate-webhooks/1"


class RetrySchedule(msgspec.Struct, frozen=True):
    """The delays (seconds) before each retry: attempt n+1 follows a failed attempt n after delays_s[n-1]."""

    delays_s: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> "RetrySchedule":
        """From `2,10,60` (seconds); ValueError naming what is wrong."""
        parts = [part.strip() for part in text.split(",")]
        if not 1 <= len(parts) <= MAX_RETRIES:
            raise ValueError(f"a retry schedule has 1..{MAX_RETRIES} delays, not {len(parts)}")
        delays = []
        for part in parts:
            try:
                delay = float(part)
            except ValueError:
                raise ValueError(f"not a number of seconds: {part!r}") from None
            if not (math.isfinite(delay) and 0 < delay <= MAX_RETRY_DELAY_S):
                raise ValueError(f"a delay is more than 0 and at most {MAX_RETRY_DELAY_S} seconds, not {part!r}")
            delays.append(delay)
        return cls(tuple(delays))

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s) + 1

    def next_delay_s(self, attempt: int, rng: random.Random) -> float | None:
        """How long after failed attempt `attempt` (1-based) the next one goes, jittered; None after the last."""
        if attempt >= self.max_attempts:
            return None
        return self.delays_s[attempt - 1] * rng.uniform(1 - JITTER, 1 + JITTER)


class AttemptResult(msgspec.Struct, frozen=True):
    """What one attempt got: a 2xx (delivered), another status, or an error (status_code 0)."""

    delivered: bool
    status_code: int = 0
    error: str = ""
    duration_ms: int = 0


def failed(error: str, duration_ms: int = 0) -> AttemptResult:
    return AttemptResult(False, 0, error[:MAX_ERROR_CHARS], duration_ms)


class WebhookSender:
    """One HTTP client session for every webhook: at most `max_connections` open, never a redirect followed."""

    def __init__(self, production: bool, timeout_s: float = REQUEST_TIMEOUT_S, max_connections: int = 256,
                 resolver: aiohttp.abc.AbstractResolver | None = None) -> None:
        self.production = production
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_connections = max_connections
        self.resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_connections, resolver=self.resolver,
                                         socket_factory=public_only_socket if self.production else None)
        # trust_env off: no proxy from the environment stands between the check and the merchant's address.
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, trust_env=False,
                                              headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, signature: str) -> AttemptResult:
        """POST `body` to `url` with its `Paygate-Signature`; never raises for the network's or the receiver's sake."""
        if not url.startswith(("http://", "https://")):
            return failed("invalid_url")
        if self.production and internal_host(url):
            return failed("address_not_public")
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature}
        started = time.monotonic()
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await _drain(response)
                status = response.status
        except asyncio.TimeoutError:
            return failed("timeout", ms_since(started))
        except aiohttp.ClientConnectorError as error:
            # Several addresses refused at once come as one OSError that only names them.
            refused = isinstance(error.os_error, RefusedAddress) or NOT_PUBLIC in str(error)
            return failed("address_not_public" if refused else "connection_failed", ms_since(started))
        except (aiohttp.ClientError, ValueError) as error:  # ValueError: a URL aiohttp cannot use
            return failed(type(error).__name__, ms_since(started))
        return AttemptResult(200 <= status < 300, status, "", ms_since(started))


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a short answer (so the connection is kept); a long one is left, and its connection closed."""
    if response.content_length is not None and response.content_length > MAX_ANSWER_BYTES:
        response.close()
        return
    read = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        read += len(chunk)
        if read > MAX_ANSWER_BYTES:
            response.close()
            return


def ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
