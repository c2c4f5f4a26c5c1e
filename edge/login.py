"""Dashboard login (`POST /v1/auth/login`) and the password hashing it needs, off the event loop.

Each attempt costs one scrypt per matching user, or one against a dummy hash when the email names nobody, so the
time taken does not tell which emails exist. Hashes run on one thread per worker, at most MAX_PENDING_HASHES
waiting: a flood of logins queues there (then is refused 429) while the event loop goes on serving the API.
Failed logins in a row delay the next attempt on that account (edge/limits.py LoginLockouts), on every worker. A
password stored with older scrypt parameters is hashed again at its next successful login.
"""

import asyncio
import base64
import concurrent.futures
import logging
import math
import pathlib
import time

from aiohttp import web

from edge import schemas
from edge.auth import SCRYPT_BYTES, SCRYPT_N, SCRYPT_P, SCRYPT_R, SALT_BYTES, hash_password, verify_password
from edge.errors import ApiError
from edge.gateway import ShardBusy
from edge.http import TOKEN_TTL_S, body_of, respond
from edge.limits import LoginLockouts, SlidingWindow, client_ip
from engine import views
from engine.queries import FindDashboardUser
from engine.records import AddDashboardUser, DashboardUser, Merchant

LOGIN_ATTEMPTS = 20  # per client IP and worker, per LOGIN_WINDOW_S
LOGIN_WINDOW_S = 60
MAX_PENDING_HASHES = 32  # per worker
log = logging.getLogger("paygate.edge")
CURRENT_PARAMETERS = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
# Well formed and at today's cost, matching no password: what an unknown email is checked against.
DUMMY_HASH = f"{CURRENT_PARAMETERS}{base64.b64encode(bytes(SALT_BYTES)).decode()}${base64.b64encode(bytes(SCRYPT_BYTES)).decode()}"


class PasswordHasher:
    """scrypt on a thread of its own (hashlib releases the GIL), a bounded queue in front of it."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrypt")
        self._pending = 0

    async def _run(self, function, *arguments):
        if self._pending >= MAX_PENDING_HASHES:
            raise ApiError(429, "rate_limited", "too many logins in progress", headers={"Retry-After": "1"})
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *arguments)
        finally:
            self._pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)

    async def verify(self, password: str, stored: str) -> bool:
        return await self._run(verify_password, password, stored)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def install(app: web.Application, lockouts_path: pathlib.Path) -> None:
    """The login's state on an app: a per-IP window (this worker), per-account lockouts (all workers), a hasher."""
    app["login_attempts"] = SlidingWindow(LOGIN_ATTEMPTS, LOGIN_WINDOW_S)
    app["login_lockouts"] = LoginLockouts(lockouts_path)
    app["passwords"] = PasswordHasher()
    app.on_cleanup.append(_close)


async def _close(app: web.Application) -> None:
    app["passwords"].close()
    app["login_lockouts"].close()


async def login(request: web.Request) -> web.Response:
    peer = client_ip(request.remote, request.headers.get("X-Forwarded-For"), request.app["settings"].trusted_proxies)
    wait_s = request.app["login_attempts"].hit(peer, time.monotonic())
    if wait_s:
        raise ApiError(429, "rate_limited", "too many login attempts", headers={"Retry-After": str(round(wait_s + 0.5))})
    credentials, _ = await body_of(request, schemas.Login)
    account = credentials.email.lower()
    lockouts: LoginLockouts = request.app["login_lockouts"]
    wait_s = lockouts.wait_s(account, time.time())
    if wait_s:
        raise ApiError(429, "login_locked", "too many failed logins for this account; retry later",
                       headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
    # Counted as failed before the hash is checked, so logins racing on one account cannot all pass the check above.
    lockouts.failed(account, time.time())
    matched = await _matching_user(request, credentials)
    if matched is None:
        raise ApiError(401, "invalid_login", "wrong email or password")
    lockouts.succeeded(account)
    merchant, stored = matched
    if not stored.startswith(CURRENT_PARAMETERS):
        await _rehash(request, merchant.id, credentials, stored)
    token = request.app["issuer"].issue(merchant.id, "dashboard", TOKEN_TTL_S, int(time.time()))
    return respond(request, views.TokenOut(token, "Bearer", TOKEN_TTL_S))


async def _matching_user(request: web.Request, credentials: schemas.Login) -> tuple[Merchant, str] | None:
    """The merchant whose user this is, and the user's stored hash: the same email may sign in to several, and the
    password tells which."""
    answers = await request.app["gateway"].read_everywhere(FindDashboardUser(credentials.email))
    candidates = [(merchant, user.password_hash) for answer in answers for merchant in answer.records
                  for user in merchant.users if user.email == credentials.email]
    passwords: PasswordHasher = request.app["passwords"]
    if not candidates:
        await passwords.verify(credentials.password, DUMMY_HASH)
        return None
    for merchant, stored in candidates:
        if await passwords.verify(credentials.password, stored):
            return merchant, stored
    return None


async def _rehash(request: web.Request, merchant_id: str, credentials: schemas.Login, stored: str) -> None:
    """Store the password hashed with today's parameters, unless it was set anew meanwhile (the engine checks)."""
    gateway = request.app["gateway"]
    try:
        user = DashboardUser(credentials.email, await request.app["passwords"].hash(credentials.password))
        await gateway.submit_to(gateway.shard_index(merchant_id), AddDashboardUser(merchant_id, user, stored))
    except (ApiError, ShardBusy) as error:  # hashes queued up, or no shard: the login stands, the next one retries
        log.warning("re-hashing a dashboard password put off: %s", error)
        return
    request.app["merchant_cache"].pop(merchant_id)
