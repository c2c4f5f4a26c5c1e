"""What every page shares: rendering with the security headers, errors as pages, sessions in cookies, forms with
CSRF tokens, and money and times as a person reads them.

Pages answer HTML, never the API's JSON errors: a handler wrapped in `page` turns an ApiError (or a shard that is
busy) into an error page with the same status. Redirects are built here rather than raised, since the API's
middleware turns a raised HTTPException into a JSON error.
"""

import datetime
import functools
import hmac
import re
import secrets as random_tokens
import time
import urllib.parse
from collections.abc import Mapping

import aiohttp_jinja2
import msgspec
from aiohttp import web
from multidict import MultiDictProxy

from edge.errors import ApiError, from_validation
from edge.gateway import ShardBusy
from edge.http import TOKEN_TTL_S, is_text, log
from engine.currencies import CURRENCY_EXPONENTS

# No inline script or style, nothing from elsewhere, and no page of ours inside anyone's frame (the payment page
# leaves for the acquirer's 3-D Secure page at the top level, so it needs no framing either).
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# audience of the session's JWT -> its cookie and the path it is sent to
SESSIONS = {"dashboard": ("paygate_dashboard", "/dashboard"), "admin_session": ("paygate_admin", "/admin")}
MAX_FORM_FIELD_CHARS = 2000
ATTEMPT = re.compile(r"[0-9a-f]{32}")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def secure(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def render(request: web.Request, template: str, context: Mapping, status: int = 200) -> web.Response:
    return secure(aiohttp_jinja2.render_template(template, request, dict(context), status=status))


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser asks for the next page with GET."""
    return secure(web.Response(status=303, headers={"Location": location}))


def page(handler):
    """A page handler: its refusals (ApiError) and a busy shard become error pages with their status."""
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return error_page(request, error)
        except ShardBusy as error:
            log.warning("page %s: shard unavailable: %s", request.path, error)
            return error_page(request, ApiError(503, "shard_unavailable", "This service is busy for a moment. "
                                                "Please try again shortly.", headers={"Retry-After": "1"}))
    return answer


def error_page(request: web.Request, error: ApiError) -> web.Response:
    response = render(request, "error.html", {"status": error.status, "message": sentence(error.message)},
                      status=error.status)
    response.headers.update(error.headers)
    return response


def sentence(message: str) -> str:
    """An API message as a sentence a person reads."""
    message = message.strip()
    return (message[:1].upper() + message[1:] + ("" if message.endswith((".", "!", "?")) else ".")) if message else ""


# Money and time


def money(amount: int, currency: str) -> str:
    """Minor units in major units with the currency, as a person reads them: 1999 usd -> "19.99 USD"."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    whole, fraction = divmod(abs(amount), 10**exponent)
    text = f"{whole:,}" + (f".{fraction:0{exponent}d}" if exponent else "")
    return f"{'-' if amount < 0 else ''}{text} {currency.upper()}"


def major_units(amount: int, currency: str) -> str:
    """What a form shows in an amount field: 1999 usd -> "19.99"."""
    return money(amount, currency).rsplit(" ", 1)[0].replace(",", "")


def minor_units(text: str, currency: str, param: str = "amount") -> int | None:
    """An amount typed in major units ("19.99", "120,000") in minor units; None for an empty field."""
    text = text.strip().replace(",", "")
    if not text:
        return None
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    whole, _, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit() and len(whole) <= 15) or len(fraction) > exponent or \
            (fraction and not (fraction.isascii() and fraction.isdigit())):
        raise ApiError(400, "parameter_invalid", f"the amount must be a number with at most {exponent} decimals",
                       param)
    return int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or 0)


def when(rfc3339: str | None) -> str:
    """An API time as a person reads it: "2026-01-02 03:04 UTC"."""
    return f"{rfc3339[:10]} {rfc3339[11:16]} UTC" if rfc3339 else ""


def unix_time(seconds: int) -> str:
    """Unix seconds as a person reads them: "2026-01-02 03:04:05 UTC"."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def words(code: str | None) -> str:
    """A status or code as words: "partially_refunded" -> "partially refunded"."""
    return (code or "").replace("_", " ")


FILTERS = {"money": money, "when": when, "words": words, "unix_time": unix_time}


# Sessions


def cookie_secure(request: web.Request) -> bool:
    """Secure cookies, except where a browser would drop them: plain HTTP to a host other than loopback."""
    public = urllib.parse.urlsplit(request.app["settings"].public_url)
    return public.scheme == "https" or request.secure or (public.hostname or "") in LOOPBACK_HOSTS or \
        request.host.rsplit(":", 1)[0] in LOOPBACK_HOSTS


def start_session(request: web.Request, response: web.StreamResponse, audience: str, subject: str) -> None:
    cookie, path = SESSIONS[audience]
    token = request.app["issuer"].issue(subject, audience, TOKEN_TTL_S, int(time.time()))
    set_token_cookie(request, response, cookie, path, token, TOKEN_TTL_S)


def set_token_cookie(request: web.Request, response: web.StreamResponse, cookie: str, path: str, token: str,
                     max_age_s: int) -> None:
    """A signed token in a cookie scripts cannot read, sent to `path` alone and never from another site."""
    response.set_cookie(cookie, token, max_age=max_age_s, path=path, httponly=True, samesite="Strict",
                        secure=cookie_secure(request))


def end_session(request: web.Request, response: web.StreamResponse, audience: str, claims: dict) -> None:
    """Sign the session out: its token is refused from now on, on every worker, and its cookie is dropped."""
    if not request.app["signed_out_sessions"].sign_out(str(claims["jti"]), claims["exp"], time.time()):
        log.warning("sign-out not recorded: the signed-out sessions' bucket is full")
        raise ApiError(503, "sign_out_unavailable", "signing out could not be recorded just now, so you are still "
                       "signed in: please try again in a minute", headers={"Retry-After": "60"})
    cookie, path = SESSIONS[audience]
    response.del_cookie(cookie, path=path, httponly=True, samesite="Strict", secure=cookie_secure(request))


def session(request: web.Request, audience: str) -> dict | None:
    """The claims of the request's live session for `audience` (signed, not expired, not signed out), else None."""
    token = request.cookies.get(SESSIONS[audience][0], "")
    now_s = int(time.time())
    claims = request.app["issuer"].verify(token, audience, now_s) if token else None
    if claims is None or request.app["signed_out_sessions"].signed_out(str(claims["jti"]), now_s):
        return None
    return claims


def csrf_token(request: web.Request, claims: dict) -> str:
    """The session's CSRF token: every form of the session carries it."""
    return request.app["secrets"].form_token(f"session:{claims['jti']}")


def check_same_origin(request: web.Request) -> None:
    """A form posted from another site is refused, whatever it carries (browsers say where a request comes from)."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    foreign_origin = origin not in (None, "null") and urllib.parse.urlsplit(origin).netloc != request.host
    if (site is not None and site not in ("same-origin", "none")) or foreign_origin:
        raise ApiError(403, "cross_site_form", "this form was sent from another site")


async def form_of(request: web.Request, expected_token: str | None) -> MultiDictProxy:
    """A posted form from this site, its fields bounded; with `expected_token`, carrying that CSRF token."""
    check_same_origin(request)
    try:
        fields = await request.post()
    except (ValueError, LookupError) as error:
        raise ApiError(400, "invalid_form", "the form could not be read") from error
    if any(not isinstance(value, str) or not is_text(value) for value in fields.values()):
        raise ApiError(400, "invalid_form", "the form could not be read")
    if any(len(value) > MAX_FORM_FIELD_CHARS for value in fields.values()):
        raise ApiError(400, "invalid_form", "a field of the form is too long")
    # As bytes: compare_digest refuses str with characters outside ASCII, and a form may carry any.
    if expected_token is not None and not hmac.compare_digest(str(fields.get("csrf_token", "")).encode(),
                                                              expected_token.encode()):
        raise ApiError(403, "csrf_token_invalid", "this form has expired: open the page again and resend it")
    return fields


def new_attempt() -> str:
    """A form's one-time attempt: sent with the form, it is the Idempotency-Key of what the form does."""
    return random_tokens.token_hex(16)


def signed_in_context(request: web.Request, notices: dict[str, str]) -> dict:
    """What every signed-in page shows or puts in its forms: the CSRF token, a new attempt for each form, and the
    notice of what was just done (`?done=`)."""
    return {"csrf_token": request["csrf_token"], "attempt": new_attempt, "problem": "",
            "notice": notices.get(request.query.get("done", ""), "")}


async def action_form(request: web.Request, scope: str) -> MultiDictProxy:
    """A signed-in page's form: from this site, with the session's CSRF token, its attempt the request's
    Idempotency-Key, so the same form sent twice acts once."""
    fields = await form_of(request, request["csrf_token"])
    attempt = str(fields.get("attempt", ""))
    if not ATTEMPT.fullmatch(attempt):
        raise ApiError(400, "invalid_form", "this form has expired: open the page again and resend it")
    request["idempotency_key"] = f"{scope}_{attempt}"
    return fields


def filled(fields, names: tuple[str, ...]) -> dict[str, str]:
    """The named fields of a form that are not empty, without surrounding spaces."""
    values = {name: str(fields.get(name, "")).strip() for name in names}
    return {name: value for name, value in values.items() if value}


async def refused(action):
    """What `await action()` gives, or the ApiError refusing the request (4xx), which the page shows beside its form
    again; a fault of the server's (5xx) stays an error."""
    try:
        return await action()
    except ApiError as error:
        if error.status >= 500:
            raise
        return error


async def submitted(kind: type, fields: dict, call):
    """`call(wanted, body)` with the form's fields validated as the API's request type `kind`: what it gives, or the
    refusal (as `refused`)."""
    async def action():
        return await call(*checked(kind, fields))
    return await refused(action)


def checked(kind: type, fields: dict):
    """A request of the API's type from a page's fields, validated as the API validates it, with its JSON body (what
    an Idempotency-Key fingerprints)."""
    body = msgspec.json.encode(fields)
    try:
        return msgspec.json.decode(body, type=kind), body
    except msgspec.ValidationError as error:
        raise from_validation(error) from error


def seconds_until(rfc3339: str) -> int:
    moment = datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return max(0, int((moment - datetime.datetime.now(datetime.timezone.utc)).total_seconds()))
