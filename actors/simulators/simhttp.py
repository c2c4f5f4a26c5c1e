"""What the simulated providers' HTTP programs share: the command line, a bounded in-memory store, JSON bodies and
errors, field checks, and running the aiohttp app until SIGTERM / SIGINT.

Errors are `{"error": "<code>", "message": "..."}` (plus `"param"` for a bad field) with a 4xx/5xx status.
"""

import argparse
import collections
import logging
import re

import orjson
import uvloop
from aiohttp import web

from actors.simulators.callbacks import Outbox, OutboxFull, read_secret

MAX_BODY_BYTES = 64 * 1024
MAX_RECORDS = 100_000
MAX_AMOUNT = 10**15
MAX_ID_CHARS = 128
CURRENCY = re.compile(r"[a-z]{3}")
ID = re.compile(r"[A-Za-z0-9_\-:.]{1,128}")

log = logging.getLogger("paygate.simulators")


class Invalid(Exception):
    """A request field that breaks the schema: answered 400 with `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class BoundedStore:
    """An insertion-ordered dict of at most `capacity` items; putting a new key past that evicts the oldest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: collections.OrderedDict = collections.OrderedDict()

    def get(self, key, default=None):
        return self._items.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self):
        return self._items.values()

    def put(self, key, value) -> list:
        """Stores `value`; returns the (key, value) pairs evicted to make room."""
        self._items[key] = value
        evicted = []
        while len(self._items) > self.capacity:
            evicted.append(self._items.popitem(last=False))
        return evicted


def error(status: int, code: str, message: str = "", param: str | None = None, headers=None) -> web.Response:
    body = {"error": code, "message": message or code.replace("_", " ")}
    if param is not None:
        body["param"] = param
    return json_response(body, status=status, headers=headers)


def json_response(body, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")


ERROR_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every 4xx/5xx as a JSON error; Invalid as 400 with `param`; OutboxFull as 503; nothing leaks a traceback."""
    try:
        return await handler(request)
    except Invalid as problem:
        return error(400, "invalid_request", problem.message, problem.param)
    except OutboxFull:
        return error(503, "busy", "too many callbacks waiting; retry later", headers={"Retry-After": "1"})
    except web.HTTPException as exception:
        if exception.status < 400:
            raise
        return error(exception.status, ERROR_CODES.get(exception.status, "http_error"), exception.reason)
    except Exception as exception:  # the type only: a message or traceback might quote request data
        log.error("unexpected %s in %s %s", type(exception).__name__, request.method, request.path)
        return error(500, "internal_error")


async def json_body(request: web.Request) -> dict:
    """The request body as a JSON object; Invalid otherwise (413 comes from aiohttp's client_max_size)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Invalid("body", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Invalid("body", "the body must be a JSON object")
    return body


def text_id(body: dict, name: str, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise Invalid(name, f"{name} must be 1..{MAX_ID_CHARS} characters of letters, digits and _-:.")
    return value


def amount(body: dict, name: str = "amount", required: bool = True) -> int:
    value = body.get(name)
    if not required and (value is None or (type(value) is int and value == 0)):
        return 0  # absent, or 0: "all of it" where the field is optional
    if type(value) is not int or not 0 < value <= MAX_AMOUNT:
        raise Invalid(name, f"{name} must be an integer from 1 to {MAX_AMOUNT} (minor units)")
    return value


def currency(body: dict) -> str:
    value = body.get("currency")
    if not isinstance(value, str) or not CURRENCY.fullmatch(value):
        raise Invalid("currency", "currency must be a lower-case ISO 4217 code such as usd")
    return value


def int_in(low: int, high: int):
    """An argparse type: an integer from `low` to `high`."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}")
        return value
    return parse


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int_in(1, 65535), required=True)
    parser.add_argument("--callback-url", required=True, help="where the signed callbacks are POSTed")
    parser.add_argument("--secret-file", required=True, help="file holding the callback signing secret")
    parser.add_argument("--callback-attempts", type=int, default=5, help="tries per callback (1..10, default 5)")
    parser.add_argument("--callback-delay", type=float, default=0.0,
                        help="seconds each callback waits after its request was answered (default 0)")
    parser.add_argument("--max-records", type=int, default=MAX_RECORDS,
                        help=f"records kept in memory before the oldest are evicted (default {MAX_RECORDS})")
    parser.add_argument("--max-body", type=int, default=MAX_BODY_BYTES,
                        help=f"largest request body in bytes (default {MAX_BODY_BYTES})")
    parser.add_argument("--log-level", default="INFO")
    return parser


def outbox_from(options: argparse.Namespace) -> Outbox:
    return Outbox(options.callback_url, read_secret(options.secret_file), attempts=options.callback_attempts,
                  capacity=min(options.max_records, 10_000), delay_s=min(max(options.callback_delay, 0.0), 60.0))


def application(options: argparse.Namespace, outbox: Outbox) -> web.Application:
    """An app bounded to --max-body whose outbox runs while the app does."""
    app = web.Application(client_max_size=max(1024, options.max_body), middlewares=[json_errors])

    async def outbox_lifetime(app: web.Application):
        await outbox.start()
        yield
        await outbox.close()

    app.cleanup_ctx.append(outbox_lifetime)
    return app


def run(app: web.Application, options: argparse.Namespace, name: str) -> None:
    """Serves until SIGTERM or SIGINT, then stops gracefully (aiohttp's run_app)."""
    logging.basicConfig(level=options.log_level.upper(), format=f"%(asctime)s {name} %(levelname)s %(message)s")
    log.info("%s listening on http://%s:%d, callbacks to %s", name, options.host, options.port, options.callback_url)
    web.run_app(app, host=options.host, port=options.port, print=None, handle_signals=True, shutdown_timeout=5,
                loop=uvloop.new_event_loop(), access_log_format='%a "%r" %s %b %Tfs')
