"""What every handler shares: settings, the error middleware, authentication and limits, running commands.

A request is authenticated and limited here, becomes one engine command (under
its Idempotency-Key when it has one) or one read, and goes to the shard that
owns its merchant. Errors always take the API's error shape.
"""

import hashlib
import hmac
import logging
import os
import pathlib
import re
import secrets as random_tokens
import time

import msgspec
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edge import cards, schemas
from edge.auth import merchant_id_from_api_key, signature_valid, signed_message
from edge.cache import MISSING, LruCache
from edge.credentials import api_key_set, set_live
from edge.errors import ApiError, from_validation, not_found, shard_unavailable
from edge.gateway import InvalidCommand, ShardBusy
from edge.limits import client_ip, ip_allowed
from engine import views
from engine.credentials import INITIAL_CREDENTIAL_ID, SIGNATURE_REPLAYED
from journal.auth import HmacSha256, create_file_once
from engine.queries import GetIdempotencyRecord, GetMerchant
from engine.records import Idempotent, Merchant, Outcome, Signed

log = logging.getLogger("paygate.edge")

MAX_BODY_BYTES = 4 << 20
FINGERPRINT_KEY_BYTES = 32
KEYED_REQUEST_HASH_PREFIX = "hmac-sha256:"
# A request hash written before keyed fingerprints: SHA-256 of the whole request, card number and CVC included.
UNKEYED_REQUEST_HASH = re.compile(r"[0-9a-f]{64}")
_outcome_decoder = msgspec.msgpack.Decoder(Outcome)
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# Methods that change nothing, so take no Idempotency-Key.
READ_METHODS = ("GET", "HEAD", "OPTIONS")
# Said instead of aiohttp's default, which names the Python and aiohttp versions to anyone who asks.
SERVER_NAME = "paygate"
TOKEN_TTL_S = 3600  # the access tokens of OAuth and dashboard logins
MERCHANT_CACHE_SECONDS = 2.0
MERCHANT_CACHE_SIZE = 10_000
MERCHANT_MISS_CACHE_SIZE = 1_000
ADMIN = "admin"
SIGNATURE_WINDOW_S = 300
SIGNATURE_CLOCK_SKEW_S = 60
# Engine outcome codes as HTTP errors: status and the API's code.
OUTCOME_ERRORS = {
    "exists": (409, "resource_exists"),
    "merchant_not_found": (404, "resource_missing"),
    "order_not_found": (404, "resource_missing"),
    "customer_not_found": (404, "resource_missing"),
    "payment_not_found": (404, "resource_missing"),
    "payout_not_found": (404, "resource_missing"),
    "deposit_not_found": (404, "resource_missing"),
    "withdrawal_not_found": (404, "resource_missing"),
    "sub_account_not_found": (404, "resource_missing"),
    "token_not_found": (404, "resource_missing"),
    "blocklist_entry_not_found": (404, "resource_missing"),
    "payment_in_progress": (409, "payment_in_progress"),
    "order_not_pending": (409, "order_not_pending"),
    "rate_limited": (429, "rate_limited"),
    "signature_window_full": (429, "rate_limited"),
    "idempotency_keys_full": (503, "idempotency_keys_full"),
    "insufficient_funds": (402, "insufficient_funds"),
    "amount_too_large": (402, "amount_too_large"),
    "payment_method_not_allowed": (400, "payment_method_not_allowed"),
    "split_destination_not_found": (400, "split_destination_not_found"),
    "split_destination_duplicated": (400, "split_destination_duplicated"),
    "split_to_own_merchant": (400, "split_to_own_merchant"),
    "split_amount_must_be_positive": (400, "split_amount_must_be_positive"),
    "splits_too_many": (400, "splits_too_many"),
    "splits_exceed_amount": (400, "splits_exceed_amount"),
    "amount_out_of_range": (400, "amount_out_of_range"),
    "idempotency_key_reused": (409, "idempotency_key_reused"),
    "event_not_found": (404, "resource_missing"),
    "redelivery_limit_reached": (409, "redelivery_limit_reached"),
    "no_delivery_target": (409, "no_delivery_target"),
    "backlog_full": (429, "backlog_full"),  # the deliveries a merchant may queue are queued: later, not a fault
    # The command raised (a bug), was undone whole and logged by its shard.
    "internal_error": (500, "internal_error"),
}
# A move that would take a balance field past the API's int64: the amount does not fit what the account holds.
OVERFLOW_CODES = ("overflows_debits_pending", "overflows_credits_pending", "overflows_debits_posted",
                  "overflows_credits_posted", "overflows_debits", "overflows_credits")

# The field an outcome code is about, whatever the request.
OUTCOME_PARAMS = {
    "idempotency_key_reused": "Idempotency-Key",
    "expires_in_invalid": "expires_in",
    **{code: "splits" for code in ("split_destination_not_found", "split_destination_duplicated",
                                   "split_to_own_merchant", "split_amount_must_be_positive", "splits_too_many",
                                   "splits_exceed_amount")},
    **{code: "amount" for code in ("amount_out_of_range", *OVERFLOW_CODES)},
}


class Settings(msgspec.Struct, kw_only=True):
    data: str
    shard_addresses: list[list[str]]
    public_url: str = "http://127.0.0.1:8080"
    order_ip_limit: int = 10
    order_ip_window_s: int = 600
    trusted_proxies: list[str] = []
    admin_token_hash: str = ""  # of PAYGATE_ADMIN_TOKEN, when set: the token itself never leaves serve
    # provider name -> the nng address of its connector actor
    providers: dict[str, str] = {}
    # provider name -> the base URL its settlement files are fetched from (POST /v1/reconciliations)
    settlement_urls: dict[str, str] = {}
    processing_timeout_s: int = 30
    # How long an authorization held for manual capture lasts before the ledger releases it.
    authorization_hold_s: int = 7 * 86400
    # The risk actor's published table (empty: no actors, and no risk rules at the edge).
    risk_table_path: str = ""
    # How often a worker reports the credential sets it saw used (last-used times are this coarse).
    last_used_every_s: int = 60
    # Card numbers not held to the risk rules' attempt counts (RiskRules.test_cards; none in production).
    risk_test_cards: list[str] = []
    # `serve --production`: merchant-supplied URLs must name public hosts (edge/outbound.py).
    production: bool = False
    # Where the payment page sends a customer's wallet sign-in code (serve's --smtp-url or its mail sink; "": none).
    smtp_url: str = ""


class Principal(msgspec.Struct):
    kind: str  # "admin" | "merchant"
    merchant: Merchant | None = None


@web.middleware
async def errors_and_metrics(request: web.Request, handler):
    request_id = request_id_of(request)
    request["request_id"] = request_id
    # Every request has these, so that reading one finds a value (a key missing from a request costs an exception).
    request["idempotency_key"] = None
    request["replayed"] = False
    request["signed"] = None
    started = time.perf_counter()
    try:
        if request.method not in READ_METHODS:  # every route that changes something checks the key here, once
            request["idempotency_key"] = _checked_idempotency_key(request.headers.get("Idempotency-Key"))
        response = await handler(request)
    except ApiError as error:
        response = error.response()
    except web.HTTPRequestEntityTooLarge:
        response = ApiError(413, "request_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes").response()
    except web.HTTPException as error:
        # Keep what the exception says about the request (Allow on a 405).
        response = ApiError(error.status, _http_code(error.status), error.reason or "request failed",
                            headers={name: value for name, value in error.headers.items() if name == "Allow"}).response()
    except (HttpProcessingError, web.RequestPayloadError) as error:
        response = ApiError(400, "unreadable_body", f"the body could not be read: {error}").response()
    except ConnectionResetError:  # the client left mid-request: nobody reads the answer, and it is no server fault
        response = ApiError(400, "connection_lost", "the client closed the connection").response()
    except msgspec.ValidationError as error:
        response = from_validation(error).response()
    except msgspec.DecodeError as error:
        response = ApiError(400, "invalid_json", f"the body is not valid JSON: {error}").response()
    except InvalidCommand as error:
        response = ApiError(400, "invalid_characters", f"the request holds text that is not valid Unicode: {error}"
                            ).response()
    except ShardBusy as error:
        response = shard_unavailable().response()
        passed = _unavailable_log.passed()
        if passed is not None:
            log.warning("shard unavailable: %s (%d more since the last line)", error, passed,
                        extra={"request_id": request_id})
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        response = ApiError(500, "internal_error", "an internal error occurred; it has been logged").response()
    response.headers["Request-Id"] = request_id
    response.headers["Server"] = SERVER_NAME
    if request["replayed"]:  # an error the first request got is replayed too, and says so
        response.headers["Idempotent-Replayed"] = "true"
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    request.app["metrics"].observe(request.method, route, response.status, time.perf_counter() - started)
    return response


class LogThrottle:
    """One line per `interval_s` for a storm of the same event (a shard down under load), counting the rest."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.next_at = 0.0
        self.suppressed = 0

    def passed(self) -> int | None:
        """How many were held back since the last line, if this one may be logged; else None."""
        now = time.monotonic()
        if now < self.next_at:
            self.suppressed += 1
            return None
        self.next_at = now + self.interval_s
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


_unavailable_log = LogThrottle(interval_s=1.0)


def request_id_of(request: web.BaseRequest) -> str:
    """The caller's Request-Id (at most 64 characters), or a new one."""
    return request.headers.get("Request-Id", "")[:64] or "req_" + random_tokens.token_hex(12)


def _http_code(status: int) -> str:
    return {404: "resource_missing", 405: "method_not_allowed"}.get(status, "invalid_request")


async def authenticate(request: web.Request, admin_allowed: bool = False, merchant_allowed: bool = True) -> Principal:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ApiError(401, "missing_credentials", "send `Authorization: Bearer <key or token>`")
    token = header[len("Bearer "):].strip()
    app = request.app
    if admin_allowed and app["admin"].check(token):
        return Principal(ADMIN)
    merchant, credential_id = await _merchant_for_token(app, token)
    if merchant is None:
        if not admin_allowed and app["admin"].check(token):
            raise ApiError(403, "merchant_only", "this operation acts as a merchant: use its API key or OAuth token")
        raise ApiError(401, "invalid_credentials", "the key or token is not valid")
    if not merchant_allowed:
        raise ApiError(403, "admin_only", "this operation needs the admin token")
    await _check_merchant_request(request, merchant)
    request["credential_id"] = credential_id
    return Principal("merchant", merchant)


async def _merchant_for_token(app: web.Application, token: str) -> tuple[Merchant | None, str]:
    """The merchant and its live credential set the API key or OAuth token is of (its use noted), else (None, "")."""
    now_ns = time.time_ns()
    if token.startswith("sk_"):
        merchant_id = merchant_id_from_api_key(token)
        merchant = await cached_merchant(app, merchant_id) if merchant_id else None
        credential = api_key_set(merchant, token, now_ns) if merchant else None
        if credential is None:
            return None, ""
        app["credential_uses"].note(merchant.id, credential.id)
        return merchant, credential.id
    claims = app["issuer"].verify(token, "api", now_ns // 1_000_000_000)
    merchant = await cached_merchant(app, claims["sub"]) if claims else None
    credential_id = claims.get("cred", INITIAL_CREDENTIAL_ID) if claims else ""
    # A token lives with its client secret's set: revoked, or past its grace, the set takes its tokens with it.
    if merchant is None or not isinstance(credential_id, str) or not set_live(merchant, credential_id, now_ns):
        return None, ""
    return merchant, credential_id


def merchant_caches() -> tuple[LruCache, LruCache]:
    """This worker's merchant records, and apart, the ids found to name none: a flood of made-up ids cycles through
    the small second cache and never pushes real merchants out of the first."""
    return LruCache(MERCHANT_CACHE_SIZE, MERCHANT_CACHE_SECONDS), LruCache(MERCHANT_MISS_CACHE_SIZE, MERCHANT_CACHE_SECONDS)


async def cached_merchant(app: web.Application, merchant_id: str) -> Merchant | None:
    """Merchant records change rarely: each worker keeps them a moment (suspensions apply within it)."""
    cache, misses = app["merchant_cache"], app["merchant_misses"]
    now = time.monotonic()
    merchant = cache.get(merchant_id, now)
    if merchant is not MISSING:
        return merchant
    if misses.get(merchant_id, now) is not MISSING:
        return None
    merchant = (await app["gateway"].read(merchant_id, GetMerchant(merchant_id=merchant_id))).record
    if merchant is None:
        misses.put(merchant_id, None, now)
    else:
        cache.put(merchant_id, merchant, now)
    return merchant


async def check_sub_account(request: web.Request, merchant: Merchant, sub_account_id: str) -> None:
    """404 unless the sub-account is the merchant's; a cached merchant may not know one made a moment ago."""
    if not sub_account_id or any(sub.id == sub_account_id for sub in merchant.sub_accounts):
        return
    answer = await request.app["gateway"].read(merchant.id, GetMerchant(sub_account_id=sub_account_id))
    if answer.record is None or answer.record.id != merchant.id:
        raise not_found("sub-account", sub_account_id, "sub_account_id")


async def _check_merchant_request(request: web.Request, merchant: Merchant) -> None:
    check_merchant_access(request, merchant)
    await _check_signature(request, merchant)
    wait_s = request.app["buckets"].take(merchant.id, merchant.tier, time.time())
    if wait_s:
        raise ApiError(429, "rate_limited", f"too many requests for tier {merchant.tier}",
                       headers={"Retry-After": str(max(1, round(wait_s + 0.5)))})


def check_merchant_access(request: web.Request, merchant: Merchant) -> None:
    """403 for a suspended merchant, or a client address outside the merchant's allow list."""
    if merchant.status != "active":
        raise ApiError(403, "account_suspended", "this merchant is suspended")
    peer = client_ip(request.remote, request.headers.get("X-Forwarded-For"), request.app["settings"].trusted_proxies)
    request["client_ip"] = peer
    if not ip_allowed(peer, merchant.ip_allowlist):
        raise ApiError(403, "ip_not_allowed", f"requests from {peer} are not allowed for this merchant")


async def _check_signature(request: web.Request, merchant: Merchant) -> None:
    signature = request.headers.get("Paygate-Signature")
    if signature is None and not merchant.require_signature:
        return
    timestamp = request.headers.get("Paygate-Timestamp", "")
    body = await request.read()
    now_ns = time.time_ns()
    # The path as sent (percent-escapes kept), without the query string.
    path = request.raw_path.partition("?")[0]
    secrets = request.app["merchant_secrets"].signing_secrets(merchant, now_ns)
    if not signature or not signature_valid(secrets, timestamp, signature, request.method, path, body,
                                            now_ns // 1_000_000_000, SIGNATURE_WINDOW_S):
        raise ApiError(401, "signature_invalid", "Paygate-Signature is missing, wrong or outside the 300 s window")
    # The request's first command carries it: a copy of this signed message is refused on every worker, for as long
    # as its timestamp is accepted (and a minute more for clocks apart).
    digest = hashlib.sha256(signed_message(timestamp, request.method, path, body)).hexdigest()[:32]
    expires_at_ns = (int(timestamp) + SIGNATURE_WINDOW_S + SIGNATURE_CLOCK_SKEW_S) * 1_000_000_000
    request["signed"] = (merchant.id, digest, expires_at_ns)


async def merchant_visible(request: web.Request) -> Merchant:
    """The merchant the path names: the admin sees any merchant; a merchant sees only itself (another id is 404)."""
    principal = await authenticate(request, admin_allowed=True)
    merchant_id = request.match_info["id"]
    if principal.kind == "merchant" and principal.merchant.id != merchant_id:
        raise not_found("merchant", merchant_id)
    merchant = await cached_merchant(request.app, merchant_id) if merchant_id.startswith("mer_") else None
    if merchant is None:
        raise not_found("merchant", merchant_id)
    return merchant


async def merchant_principal(request: web.Request) -> Merchant:
    return (await authenticate(request)).merchant


async def run(request: web.Request, merchant_id: str, command, body: bytes = b"", shard: int | None = None):
    """Submit one command to the merchant's shard (or to `shard`), under the request's Idempotency-Key if any."""
    signed = request["signed"]
    if signed is not None:
        request["signed"] = None  # the request's first command carries it
        signer, digest, expires_at_ns = signed
        command = Signed(merchant_id=signer, message_digest=digest, expires_at=expires_at_ns, command=command)
    key = idempotency_key(request)
    if key is not None:
        request_hash = request.app["fingerprints"].of(request.method, request.path, body)
        command = Idempotent(merchant_id=merchant_id, key=key, request_hash=request_hash, command=command)
    gateway = request.app["gateway"]
    shard = gateway.shard_index(merchant_id) if shard is None else shard
    result = await gateway.submit_to(shard, command)
    if isinstance(result, Outcome):
        if result.code == SIGNATURE_REPLAYED:
            raise ApiError(401, "signature_replayed", "this signed request was already received: sign each request "
                           "anew (a new timestamp)")
        if result.code == "idempotency_key_reused":
            first = await _unkeyed_replay(request, shard, merchant_id, key, body)
            if first is None:
                raise_for(result)
            result = first
        request["replayed"] = result.replayed
    return result


async def _unkeyed_replay(request: web.Request, shard: int, merchant_id: str, key: str, body: bytes) -> Outcome | None:
    """The first outcome of a key whose record predates keyed fingerprints (a plain SHA-256, kept at most 24 h), if
    this request is the one it recorded: compared here, since the engine never sees that form's input again."""
    answer = await request.app["gateway"].read_on(shard, GetIdempotencyRecord(merchant_id, key))
    record = answer.idempotency
    if record is None or not UNKEYED_REQUEST_HASH.fullmatch(record.request_hash):
        return None
    unkeyed = hashlib.sha256(_request_text(request.method, request.path, _canonical(body))).hexdigest()
    if not hmac.compare_digest(unkeyed, record.request_hash):
        return None
    outcome = _outcome_decoder.decode(record.outcome)
    outcome.replayed = True
    return outcome


class RequestFingerprints:
    """What an Idempotency-Key keeps of its request: an HMAC, under a key of the data folder, of the canonical JSON
    with a card's number and CVC replaced by the number's fingerprint and a password left out (neither is stored in
    any form, and the same card is the same request whatever CVC came with it)."""

    def __init__(self, key: bytes, card_fingerprint) -> None:
        if len(key) < FINGERPRINT_KEY_BYTES:
            raise ValueError(f"the request fingerprint key must be at least {FINGERPRINT_KEY_BYTES} bytes")
        self._hmac = HmacSha256(key)
        self._card_fingerprint = card_fingerprint

    @classmethod
    def load_or_create(cls, path: pathlib.Path, card_fingerprint) -> "RequestFingerprints":
        create_file_once(path, os.urandom(FINGERPRINT_KEY_BYTES))
        return cls(path.read_bytes(), card_fingerprint)

    def of(self, method: str, path: str, body: bytes) -> str:
        text = _request_text(method, path, _canonical(body, self._card_fingerprint))
        return KEYED_REQUEST_HASH_PREFIX + self._hmac.hexdigest(text)


def _request_text(method: str, path: str, canonical_body: bytes) -> bytes:
    return method.encode() + b" " + path.encode() + b"\n" + canonical_body


def _canonical(body: bytes, card_fingerprint=None) -> bytes:
    """The same JSON however it was spaced or its keys ordered: a client that serializes again sends the same body.
    With `card_fingerprint`, a card's number and CVC are replaced by the number's fingerprint, and a password left
    out."""
    if not body:
        return b""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if card_fingerprint is not None and isinstance(document, dict):
        _without_secrets(document, card_fingerprint)
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def _without_secrets(document: dict, card_fingerprint) -> None:
    # a fast keyed hash of a password beside its scrypt hash would let a reader of the disk skip scrypt
    document.pop("password", None)
    method = document.get("payment_method")
    card = method.get("card") if isinstance(method, dict) else None
    if not isinstance(card, dict):
        return
    card.pop("cvc", None)
    if "number" in card:
        number = card.pop("number")
        card["fingerprint"] = card_fingerprint(cards.normalize_number(number) or str(number))


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, as the middleware checked it."""
    return request["idempotency_key"]


def _checked_idempotency_key(key: str | None) -> str | None:
    if key is not None and not (1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH and key.isprintable() and is_text(key)):
        raise ApiError(400, "idempotency_key_invalid",
                       f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable characters",
                       "Idempotency-Key")
    return key


def is_text(text: str) -> bool:
    """Whether `text` is Unicode text: one decoded from UTF-7 or with surrogate escapes can hold a lone surrogate,
    which no UTF-8 can encode."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def raise_for(outcome: Outcome, params: dict[str, str] | None = None) -> None:
    """An outcome other than ok as its API error; `params` names the field behind an outcome code where the
    request's body, not its path, holds the id."""
    if outcome.code == "ok":
        return
    status, code = OUTCOME_ERRORS.get(outcome.code, (400, outcome.code))
    error_type = "balance_error" if status == 402 else None
    param = (params or {}).get(outcome.code) or OUTCOME_PARAMS.get(code) or ("id" if status == 404 else None)
    raise ApiError(status, code, outcome.code.replace("_", " "), param, error_type=error_type)


def ledger_codes(result: list[int] | Outcome) -> list[int]:
    """A ledger command's code per item: its list, or under an Idempotency-Key or a signature, its Outcome's; an
    Outcome with none (the engine undid a signed command) is answered as its error."""
    if not isinstance(result, Outcome):
        return result
    if result.codes is None:
        raise_for(result)
    return result.codes


def respond(request: web.Request, body, status: int = 200) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if request["replayed"] else None
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json",
                        headers=headers)


def new_id(prefix: str, request: web.Request, scope: str) -> str:
    """A fresh id; under an Idempotency-Key the same key always names the same object, so a replay finds it."""
    key = idempotency_key(request)
    if key:
        return prefix + hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()[:24]
    return prefix + random_tokens.token_hex(12)


async def body_of(request: web.Request, kind, optional: bool = False):
    """The body validated as `kind`, and its bytes. No body is no JSON, even where every field is optional (`{}`),
    except on an `optional` body: an action on an existing object (a full capture), where no body is `kind()`."""
    body = await request.read()
    if not body.strip():
        if optional:
            return kind(), body
        raise ApiError(400, "invalid_json", "the body is empty: send a JSON object")
    return schemas.decode(body, kind), body


def engine_now_ns() -> int:
    return time.time_ns()


def ledger_prefix(merchant_id: str) -> str:
    """What every ledger id of the merchant starts with."""
    return merchant_id + ":"


def ledger_id(merchant_id: str, client_id: str) -> str:
    return ledger_prefix(merchant_id) + client_id if client_id else ""


def check_cursor(found: bool, starting_after: str) -> None:
    """A `starting_after` that names nothing of the merchant's is an error, never an empty page."""
    if not found:
        raise ApiError(400, "parameter_invalid", f"no object {starting_after!r} to start after", "starting_after")


async def read_page(request: web.Request, merchant_id: str, read, cursor_query):
    """A list's page (`read` has `starting_after`); an empty one after a cursor that `cursor_query(id)` finds no
    record for is an error, never an empty page."""
    gateway = request.app["gateway"]
    answer = await gateway.read(merchant_id, read)
    if not answer.records and read.starting_after:
        after = (await gateway.read(merchant_id, cursor_query(read.starting_after))).record
        check_cursor(after is not None, read.starting_after)
    return answer


def parse_limit(query) -> int:
    raw = query.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= 100:
        raise ApiError(400, "parameter_invalid", "limit must be an integer from 1 to 100", "limit")
    return int(raw)


def parse_status(query, statuses: tuple[str, ...], name: str = "status") -> str:
    """A list's `status` filter, or another filter by name ('' for none): a value its objects never take is an
    error, never an empty page."""
    status = query.get(name, "")
    if status and status not in statuses:
        raise ApiError(400, "parameter_invalid", f"unknown {name} {status[:64]!r}", name)
    return status


def parse_time(query, name: str, default: int) -> int:
    """A unix timestamp in seconds, or an RFC 3339 time; nanoseconds for the engine."""
    raw = query.get(name)
    if raw is None:
        return default
    nanoseconds = views.parse_time_ns(raw)
    if nanoseconds is None:
        raise ApiError(400, "parameter_invalid", f"{name} must be unix seconds or an RFC 3339 time", name)
    return nanoseconds


def check_currency(currency: str) -> None:
    if currency not in schemas.CURRENCY_EXPONENTS:
        raise ApiError(400, "currency_unknown", f"unknown or unsupported currency {currency!r}", "currency")
