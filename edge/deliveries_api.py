"""Webhook deliveries over HTTP: each with its attempts, by status (the dead letters among them), and replay of
the dead ones in bulk (a merchant's own; with the admin token, every merchant's on every shard)."""

from aiohttp import web

from edge import schemas
from edge.errors import ApiError
from edge.http import (
    authenticate,
    body_of,
    merchant_principal,
    parse_limit,
    parse_status,
    raise_for,
    read_page,
    respond,
    run,
)
from engine import views
from engine.queries import GetDelivery, ListDeliveries
from engine.records import Merchant, ReplayDeliveries
from engine.states import DELIVERY_STATUSES
from engine.types import NANOSECONDS_PER_SECOND, TIMESTAMP_MAX


async def list_deliveries(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await deliveries_of(request, merchant, request.query))


async def deliveries_of(request: web.Request, merchant: Merchant, query) -> views.DeliveryList:
    """A page of the merchant's deliveries, newest first (in one status, of one event, if given)."""
    read = ListDeliveries(merchant_id=merchant.id, status=parse_status(query, DELIVERY_STATUSES),
                          event_id=query.get("event_id", "")[:64], limit=parse_limit(query),
                          starting_after=query.get("starting_after", "")[:64])
    answer = await read_page(request, merchant.id, read, lambda delivery_id: GetDelivery(merchant.id, delivery_id))
    return views.DeliveryList("list", [views.delivery(record) for record in answer.records], answer.has_more)


async def dead_letters(request: web.Request, limit: int) -> views.DeliveryList:
    """The newest dead deliveries of every merchant on every shard (an operator's view), at most `limit`."""
    answers = await request.app["gateway"].read_everywhere(ListDeliveries(merchant_id="", status="dead", limit=limit))
    dead = sorted((record for answer in answers for record in answer.records),
                  key=lambda record: (record.created_at, record.id), reverse=True)
    return views.DeliveryList("list", [views.delivery(record) for record in dead[:limit]],
                              len(dead) > limit or any(answer.has_more for answer in answers))


async def replay_deliveries(request: web.Request) -> web.Response:
    principal = await authenticate(request, admin_allowed=True)
    fields, body = await body_of(request, schemas.DeliveriesReplay)
    merchant_id = principal.merchant.id if principal.kind == "merchant" else ""
    return respond(request, await replay(request, merchant_id, fields, body))


async def replay(request: web.Request, merchant_id: str, fields: schemas.DeliveriesReplay,
                 body: bytes) -> views.QueuedOut:
    """Queue dead deliveries again: a merchant's, or (merchant_id "") every merchant's on every shard."""
    created_gte = _time(fields.created_gte, "created_gte", 0)
    created_lt = _time(fields.created_lt, "created_lt", TIMESTAMP_MAX)
    if created_gte >= created_lt:  # a window that holds nothing is a mistake, never an empty replay
        raise ApiError(400, "parameter_invalid", "created_lt must be later than created_gte", "created_lt")

    def command() -> ReplayDeliveries:  # one per shard: the engine takes ownership of what it is given
        return ReplayDeliveries(merchant_id=merchant_id, status=fields.status, created_gte=created_gte,
                                created_lt=created_lt, limit=fields.limit)
    if merchant_id:
        outcomes = [await run(request, merchant_id, command(), body)]
    else:  # an operator's replay: every shard's dead deliveries, `limit` on each
        outcomes = [await run(request, "", command(), body, shard=index)
                    for index in range(request.app["gateway"].shard_count())]
    replayed = [outcome for outcome in outcomes if outcome.code == "ok"]
    if not replayed:
        raise_for(outcomes[0])
    # A shard that could not replay (its queue full) has dead deliveries left: more to replay.
    has_more = len(replayed) < len(outcomes) or any(outcome.has_more for outcome in replayed)
    return views.QueuedOut("replay", sum(outcome.count for outcome in replayed), has_more)


def _time(value: int | str | None, name: str, default: int) -> int:
    """A body's time as engine nanoseconds: unix seconds, or an RFC 3339 time."""
    if value is None:
        return default
    nanoseconds = value * NANOSECONDS_PER_SECOND if isinstance(value, int) else views.parse_time_ns(value)
    if nanoseconds is None:
        raise ApiError(400, "parameter_invalid", f"{name} must be unix seconds or an RFC 3339 time", name)
    return nanoseconds
