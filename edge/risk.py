"""Risk at the edge: each payment checked against the risk actor's table, locally, and the block list over HTTP.

Each worker keeps in memory the last table the actor published (Settings.risk_table_path) and looks at the file every
RELOAD_INTERVAL_S from a background task, never per request and never through Ray: a payment's check is a few dict
lookups (and, for an order, one read of the order for its currency and customer). A payment the table refuses is
still submitted, with the reason, so the shard records it failed (`risk_rejected`) and no acquirer hears of it.
Risk fails closed: while no table has been loaded, a card or wallet payment waits for one up to TABLE_WAIT_S, then
is refused `503 risk_unavailable` (nothing recorded, so the same request may be sent again). Only an edge started
without the actors (no table path) checks nothing.

The block list is engine state on the shard of BLOCKLIST_OWNER: the admin changes it by commands, and the actor
reads the changes from the journal like any other.
"""

import asyncio
import contextlib
import ipaddress
import logging
import pathlib
import time

import msgspec
from aiohttp import web

from actors.risk_table import BLOCKLIST_OWNER, RiskTable, blocklist_id, risk_attributes, table_decoder
from edge import schemas
from edge.errors import ApiError, not_found
from edge.http import authenticate, body_of, cached_merchant, parse_limit, raise_for, respond, run
from engine import views
from engine.queries import GetOrder, ListBlocklist
from engine.records import AddToBlocklist, BlocklistEntry, Merchant, Payment, RemoveFromBlocklist

log = logging.getLogger("paygate.edge")
RELOAD_INTERVAL_S = 0.1
TABLE_WAIT_S = 5.0
TABLE_RETRY_AFTER_S = 2
BLOCKLIST_ID_LENGTH = 28  # "blk_" and 24 hex digits


class LocalTable:
    """This worker's copy of the risk table: None until one is published."""

    def __init__(self, path: str, test_cards: frozenset[str] = frozenset()) -> None:
        self.path = pathlib.Path(path) if path else None
        self.test_cards = test_cards
        self.table: RiskTable | None = None
        self.loaded = asyncio.Event()
        self.payer_scopes: frozenset[str] = frozenset()
        self.file_identity: tuple[int, int, int] | None = None

    def reload(self) -> None:
        """Read the file again if it was replaced; a file that cannot be read leaves the last table in force."""
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return  # none published yet
        except OSError as error:
            log.warning("risk table %s out of reach: %s", self.path, error)
            return
        identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        if identity == self.file_identity:
            return
        self.file_identity = identity  # a bad file is reported once, not at every look
        try:
            self.table = table_decoder.decode(self.path.read_bytes())
            self.payer_scopes = self.table.payer_scopes()
            self.loaded.set()
        except (OSError, msgspec.DecodeError) as error:
            log.warning("risk table %s unreadable, keeping version %s: %s", self.path,
                        self.table.version if self.table else None, error)


async def watch_table(app: web.Application):
    """aiohttp cleanup context: the table as the worker starts, then reloaded in the background while it runs."""
    local: LocalTable = app["risk"]
    task = None
    if local.path:
        local.reload()
        task = asyncio.get_running_loop().create_task(_reload_forever(local))
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _reload_forever(local: LocalTable) -> None:
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_S)
        local.reload()


def customer_ip(raw: str) -> str:
    """The payer's IP address in its one canonical spelling, so a block and a count name it alike."""
    return _ip_address(raw, "customer_ip") if raw else ""


def _ip_address(raw: str, param: str) -> str:
    try:
        return ipaddress.ip_address(raw).compressed
    except ValueError:
        raise ApiError(400, "parameter_invalid", f"{param} must be an IPv4 or IPv6 address", param) from None


async def assess(request: web.Request, merchant: Merchant, payment: Payment,
                 card_number: str = "") -> tuple[str, dict[str, int]]:
    """What the table says of a payment: why to refuse it ('' if nothing), and its tier's amount limits by currency.

    The shard checks the amount it settles on (an order's) against the limits itself, so an order changed meanwhile
    cannot slip past them. An order's customer and email count too, but the order is read only when the table
    flags some customer or email where this merchant's payments are checked: most payments cost no extra read.
    The configured test cards (`card_number`) are not held to attempt counts."""
    local: LocalTable = request.app["risk"]
    if local.path is None:
        return "", {}  # started without the actors: no risk rules at all
    table = await _loaded_table(local)
    if payment.order_id and (merchant.id in local.payer_scopes or "" in local.payer_scopes):
        order = (await request.app["gateway"].read(merchant.id, GetOrder(merchant.id, payment.order_id))).record
        if order is None:
            return "", {}  # the shard answers order_not_found
        payment = msgspec.structs.replace(payment, customer_email=order.customer_email,
                                          customer_id=payment.customer_id or order.customer_id)
    uncounted = ("card_fingerprint",) if card_number in local.test_cards else ()
    return (table.refusal(merchant.id, risk_attributes(payment), time.time_ns(), uncounted),
            table.tier_limits(merchant.tier))


async def _loaded_table(local: LocalTable) -> RiskTable:
    """The table, waiting a bounded time for a first one: a payment is never let through unchecked."""
    if local.table is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(local.loaded.wait(), TABLE_WAIT_S)
    if local.table is None:
        raise ApiError(503, "risk_unavailable", "the risk rules are not loaded yet; retry shortly", error_type="api_error",
                       headers={"Retry-After": str(TABLE_RETRY_AFTER_S)})
    return local.table


# The block list (admin)


async def create_blocklist_entry(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    fields, body = await body_of(request, schemas.BlocklistEntryCreate)
    kind = type(fields).__struct_config__.tag
    if fields.merchant_id and (not fields.merchant_id.startswith("mer_")
                               or await cached_merchant(request.app, fields.merchant_id) is None):
        raise not_found("merchant", fields.merchant_id, "merchant_id")
    value = _ip_address(fields.value, "value") if kind == "ip" else fields.value
    value = value.lower() if kind == "email" else value
    entry = BlocklistEntry(id=blocklist_id(kind, value, fields.merchant_id), kind=kind, value=value,
                           merchant_id=fields.merchant_id, reason=fields.reason)
    outcome = await run(request, BLOCKLIST_OWNER, AddToBlocklist(entry), body)
    raise_for(outcome)
    return respond(request, views.blocklist_entry(outcome.record))


async def list_blocklist(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    query = ListBlocklist(limit=parse_limit(request.query), starting_after=request.query.get("starting_after", "")[:64])
    answer = await request.app["gateway"].read(BLOCKLIST_OWNER, query)
    return respond(request, views.BlocklistEntryList("list", [views.blocklist_entry(entry) for entry in
                                                                answer.records], answer.has_more))


async def delete_blocklist_entry(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    entry_id = request.match_info["id"]
    if len(entry_id) != BLOCKLIST_ID_LENGTH or not entry_id.startswith("blk_"):
        raise not_found("block list entry", entry_id)
    outcome = await run(request, BLOCKLIST_OWNER, RemoveFromBlocklist(entry_id), await request.read())
    if outcome.code == "blocklist_entry_not_found":
        raise not_found("block list entry", entry_id)
    raise_for(outcome)
    return respond(request, views.blocklist_entry(outcome.record, deleted=True))
