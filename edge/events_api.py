"""Events over HTTP: what happened to a merchant's objects, newest first, each as its webhooks receive it, and
redelivery of one to the merchant's webhook (and the order's IPN URL)."""

import msgspec
from aiohttp import web

from edge.errors import not_found
from edge.http import merchant_principal, parse_limit, parse_status, raise_for, read_page, respond, run
from engine import views
from engine.notifications import EVENT_TYPES
from engine.queries import GetEvent, ListEvents
from engine.records import Merchant, RedeliverEvent


async def list_events(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await events_of(request, merchant, request.query))


async def events_of(request: web.Request, merchant: Merchant, query) -> views.EventList:
    """A page of the merchant's events, newest first (of one type, about one object, if given)."""
    read = ListEvents(merchant_id=merchant.id, kind=parse_status(query, EVENT_TYPES, "type"),
                      object_id=query.get("object_id", "")[:64], limit=parse_limit(query),
                      starting_after=query.get("starting_after", "")[:64])
    answer = await read_page(request, merchant.id, read, lambda event_id: GetEvent(merchant.id, event_id))
    public_url = request.app["settings"].public_url
    return views.EventList("list", [views.event(record, public_url) for record in answer.records], answer.has_more)


async def get_event(request: web.Request) -> web.Response:
    """The event's bytes exactly as its deliveries post them."""
    merchant = await merchant_principal(request)
    event_id = request.match_info["id"]
    record = (await request.app["gateway"].read(merchant.id, GetEvent(merchant.id, event_id))).record
    if record is None:
        raise not_found("event", event_id)
    return respond(request, msgspec.Raw(views.event_body(record, request.app["settings"].public_url)))


async def redeliver_event(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await redeliver(request, merchant, request.match_info["id"]))


async def redeliver(request: web.Request, merchant: Merchant, event_id: str) -> views.QueuedOut:
    """Queue the event again to the merchant's webhook (and the order's IPN URL); an archived one, as the shard's
    cold store holds it, comes back into the engine's memory with the command."""
    answer = await request.app["gateway"].read(merchant.id, GetEvent(merchant.id, event_id))
    archived = answer.record if answer.archived else None
    outcome = await run(request, merchant.id, RedeliverEvent(merchant.id, event_id, archived))
    raise_for(outcome)
    return views.QueuedOut("redelivery", outcome.count, False)
