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
from engine.records import ReplayDeliveries
from engine.states import DELIVERY_STATUSES
from engine.types import NANOSECONDS_PER_SECOND, TIMESTAMP_MAX


async def list_deliveries(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    query = request.query
    read = ListDeliveries(merchant_id=merchant.id, status=parse_status(query, DELIVERY_STATUSES),
                          event_id=query.get("event_id", "")[:64], limit=parse_limit(query),
                          starting_after=query.get("starting_after", "")[:64])
    answer = await read_page(request, merchant.id, read, lambda delivery_id: GetDelivery(merchant.id, delivery_id))
    return respond(request, views.DeliveryList("list", [views.delivery(record) for record in answer.records],
                                               answer.has_more))


async def replay_deliveries(request: web.Request) -> web.Response:
    principal = await authenticate(request, admin_allowed=True)
    fields, body = await body_of(request, schemas.DeliveriesReplay)
    created_gte = _time(fields.created_gte, "created_gte", 0)
    created_lt = _time(fields.created_lt, "created_lt", TIMESTAMP_MAX)
    merchant_id = principal.merchant.id if principal.kind == "merchant" else ""

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
    return respond(request, views.QueuedOut("replay", sum(outcome.count for outcome in replayed), has_more))


def _time(value: int | str | None, name: str, default: int) -> int:
    """A body's time as engine nanoseconds: unix seconds, or an RFC 3339 time."""
    if value is None:
        return default
    nanoseconds = value * NANOSECONDS_PER_SECOND if isinstance(value, int) else views.parse_time_ns(value)
    if nanoseconds is None:
        raise ApiError(400, "parameter_invalid", f"{name} must be unix seconds or an RFC 3339 time", name)
    return nanoseconds
