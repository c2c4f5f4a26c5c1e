"""Reconciliations over HTTP (admin): a provider's settlement file, posted as CSV or fetched by the gateway, is
reconciled on every shard (actors/settlements.py); the parts every shard keeps read back as one reconciliation.

    POST /v1/reconciliations            text/csv body (?provider=piggybank&date=YYYY-MM-DD; the date defaults to
                                        the one most rows settled on), or JSON {"provider", "date"}: fetched
    GET  /v1/reconciliations            newest first (limit, starting_after)
    GET  /v1/reconciliations/{id}

`matched` counts (API.md), `matched_ids` names them; the mismatches name their ids. Under an Idempotency-Key the
same file answers the same reconciliation again; another file under the key is 409.
"""

import asyncio
from typing import Annotated, Literal

import aiohttp
import msgspec
from aiohttp import web
from msgspec import Meta, Struct

from actors import settlements
from edge import schemas
from edge.errors import ApiError
from edge.http import authenticate, check_cursor, new_id, parse_limit, raise_for, respond
from engine.views import time_of
from engine.queries import ListReconciliations
from engine.records import Reconciliation

PROVIDER_SCOPE = "reconciliations"  # what an Idempotency-Key's reconciliation id is derived within


class ReconciliationCreate(schemas.Request):
    """Fetch the provider's settlement file for the date and reconcile it (or post the CSV itself as text/csv)."""

    provider: Literal["piggybank"]
    date: Annotated[str, Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z", description="YYYY-MM-DD (UTC)")]


class ReconciliationOut(Struct):
    id: str
    object: str
    provider: str
    date: str
    status: Literal["completed", "incomplete"]  # incomplete: a shard's part is still being made
    rows: int
    matched: int
    matched_ids: list[str]
    missing_in_settlement: list[str]
    missing_in_ledger: list[str]
    amount_mismatch: list[str]
    duplicates: list[str]
    chargebacks: list[str]
    fees: dict[str, int]
    created: str


class ReconciliationList(Struct):
    object: str
    data: list[ReconciliationOut]
    has_more: bool


async def create_reconciliation(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    provider, date, rows = await _file_of(request)
    gateway = request.app["gateway"]
    reconciliation_id = new_id("rec_", request, PROVIDER_SCOPE)
    try:
        outcomes = await settlements.reconcile(_reader(gateway), gateway.submit_to, _shard_count(gateway),
                                               reconciliation_id, provider, date, rows)
    except settlements.Refused as refused:
        raise_for(msgspec.structs.replace(refused.outcome, record=None))
    request["replayed"] = all(outcome.replayed for outcome in outcomes)
    return respond(request, render([outcome.record for outcome in outcomes], _shard_count(gateway)))


async def _file_of(request: web.Request) -> tuple[str, str, list]:
    """The provider, the date and the rows of the file the request names or carries."""
    body = await request.read()
    try:
        if request.content_type == "text/csv":
            provider = request.query.get("provider", "piggybank")
            if provider not in settlements.PROVIDERS:
                raise ApiError(400, "parameter_invalid", f"no provider {provider[:32]!r} settles by file", "provider")
            rows = settlements.parse(body.decode("utf-8"))
            date = request.query.get("date") or settlements.date_of(rows)
            if date is None:
                raise ApiError(400, "parameter_missing", "give ?date=YYYY-MM-DD: no row says when it settled", "date")
            return provider, _checked_date(date), rows
        fields = schemas.decode(body, ReconciliationCreate)
        return fields.provider, _checked_date(fields.date), settlements.parse(
            await _fetch(request, fields.provider, fields.date))
    except UnicodeDecodeError:
        raise ApiError(400, "settlement_file_invalid", "the file is not UTF-8 text", "body") from None
    except settlements.SettlementFileError as error:
        raise ApiError(400, "settlement_file_invalid", str(error), "body") from None


def _checked_date(date: str) -> str:
    try:
        return settlements.check_date(date)
    except settlements.SettlementFileError as error:
        raise ApiError(400, "parameter_invalid", str(error), "date") from None


async def _fetch(request: web.Request, provider: str, date: str) -> str:
    base_url = request.app["settings"].settlement_urls.get(provider)
    if base_url is None:
        raise ApiError(503, "provider_unavailable", f"no {provider} to fetch settlement files from: post the CSV")
    try:
        return await settlements.fetch(request.app["settlement_session"], base_url, provider, date)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise ApiError(503, "provider_unavailable", f"{provider} did not give its settlement file: "
                                                    f"{type(error).__name__}") from None


async def get_reconciliation(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    gateway = request.app["gateway"]
    parts = await settlements.parts_of(_reader(gateway), _shard_count(gateway), request.match_info["id"][:128])
    if not parts:
        raise ApiError(404, "resource_missing", "no such reconciliation", "id")
    return respond(request, render(parts, _shard_count(gateway)))


async def list_reconciliations(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    return respond(request, await newest(request, parse_limit(request.query),
                                         request.query.get("starting_after", "")[:128]))


async def newest(request: web.Request, limit: int, starting_after: str = "") -> ReconciliationList:
    """A page of reconciliations, newest first, each whole (its parts from every shard combined)."""
    gateway = request.app["gateway"]
    answers = await asyncio.gather(*(gateway.read_on(shard, ListReconciliations(limit=limit + 1,
                                                                                starting_after=starting_after))
                                     for shard in range(_shard_count(gateway))))
    parts_by_id: dict[str, list[Reconciliation]] = {}
    for answer in answers:
        for part in answer.records or ():
            parts_by_id.setdefault(part.id, []).append(part)
    if starting_after:
        check_cursor(bool(await settlements.parts_of(_reader(gateway), _shard_count(gateway), starting_after)),
                     starting_after)
    newest_first = sorted(parts_by_id.values(), key=lambda parts: (max(part.created_at for part in parts),
                                                                   parts[0].id), reverse=True)
    page = [render(parts, _shard_count(gateway)) for parts in newest_first[:limit]]
    has_more = len(newest_first) > limit or any(answer.has_more for answer in answers)
    return ReconciliationList("list", page, has_more)


def render(parts: list[Reconciliation], shard_count: int) -> ReconciliationOut:
    whole = settlements.combined(parts)
    return ReconciliationOut(
        id=whole.id, object="reconciliation", provider=whole.provider, date=whole.date,
        status="completed" if len(parts) == shard_count else "incomplete", rows=whole.rows,
        matched=len(whole.matched), matched_ids=whole.matched, missing_in_settlement=whole.missing_in_settlement,
        missing_in_ledger=whole.missing_in_ledger, amount_mismatch=whole.amount_mismatch,
        duplicates=whole.duplicates, chargebacks=whole.chargebacks, fees=whole.fees, created=time_of(whole.created_at))


def _shard_count(gateway) -> int:
    return len(gateway.readers)


def _reader(gateway):
    async def read(shard: int, queries: list) -> list:
        return await asyncio.gather(*(gateway.read_on(shard, query) for query in queries))
    return read


async def settlement_session(app: web.Application):
    """One HTTP client for fetching settlement files, for as long as the worker runs."""
    app["settlement_session"] = aiohttp.ClientSession()
    yield
    await app["settlement_session"].close()
