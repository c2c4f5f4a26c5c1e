"""`/admin`: the operator's pages. The admin token, typed once, becomes a session cookie (the token itself is never
kept by the page). Then the shards' health as the shard-health actor reports it (role, epoch, committed sequence,
replica lag, queue depth), the merchants (onboard, suspend or reactivate, change tier), and the risk block list.

Every action calls the API's own function for it, under the session's CSRF token and a one-time attempt.
"""

import functools
import pathlib
import time
import urllib.parse

import msgspec
from aiohttp import web

from actors.health_report import HEALTH_FOLDER, REPORT_FILE, ClusterHealth, report_decoder
from edge import app as api, deliveries_api, login, reconciliations_api, risk, schemas
from edge.errors import ApiError
from edge.http import ADMIN
from edge.pages.common import action_form, checked, csrf_token, end_session, filled, form_of, page, redirect, render, \
    session, signed_in_context, start_session, submitted
from edge.pages.dashboard import PAGE_SIZE

AUDIENCE = "admin_session"
STALE_AFTER_MS = 5_000  # the actor reports every second: older than this, it has stopped
NOTICES = {"suspended": "Merchant suspended.", "active": "Merchant reactivated.", "tier": "Tier changed.",
           "blocked": "Added to the block list.", "unblocked": "Removed from the block list.",
           "replayed": "Dead deliveries queued again."}
DEAD_LETTERS_SHOWN = 100
RECONCILIATIONS_SHOWN = 50
BLOCK_KINDS = {"card_fingerprint": "Card fingerprint", "ip": "IP address", "email": "Email", "customer": "Customer id"}


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/admin/login", login_page)
    router.add_post("/admin/login", sign_in)
    router.add_post("/admin/logout", sign_out)
    router.add_get("/admin", shards_page)
    router.add_get("/admin/merchants", merchants_page)
    router.add_post("/admin/merchants", onboard)
    router.add_post("/admin/merchants/{id}", change_merchant)
    router.add_get("/admin/risk", risk_page)
    router.add_post("/admin/risk", block)
    router.add_post("/admin/risk/{id}/remove", unblock)
    router.add_get("/admin/dead-letters", dead_letters_page)
    router.add_post("/admin/dead-letters/replay", replay_dead_letters)
    router.add_get("/admin/reconciliations", reconciliations_page)


@page
async def login_page(request: web.Request) -> web.Response:
    if session(request, AUDIENCE) is not None:
        return redirect("/admin")
    return render(request, "admin_login.html", {"problem": ""})


@page
async def sign_in(request: web.Request) -> web.Response:
    fields = await form_of(request, None)
    login.check_login_rate(request)  # the same per-address window as the dashboard's logins
    if not request.app["admin"].check(str(fields.get("token", "")).strip()):
        return render(request, "admin_login.html", {"problem": "That is not the admin token."}, status=401)
    response = redirect("/admin")
    start_session(request, response, AUDIENCE, ADMIN)
    return response


def signed_in(handler):
    """An operator's page: without a live admin session, the sign-in page."""
    @page
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        claims = session(request, AUDIENCE)
        if claims is None or claims["sub"] != ADMIN:
            return redirect("/admin/login")
        request["session"], request["csrf_token"] = claims, csrf_token(request, claims)
        return await handler(request)
    return answer


@signed_in
async def sign_out(request: web.Request) -> web.Response:
    await form_of(request, request["csrf_token"])
    response = redirect("/admin/login")
    end_session(request, response, AUDIENCE, request["session"])
    return response


def _show(request: web.Request, template: str, context: dict, status: int = 200) -> web.Response:
    return render(request, template, {**signed_in_context(request, NOTICES), **context}, status)


# Shards


@signed_in
async def shards_page(request: web.Request) -> web.Response:
    health, problem = _health_report(request)
    stale = health is not None and time.time() * 1000 - health.checked_at_ms > STALE_AFTER_MS
    return _show(request, "admin_shards.html", {"section": "shards", "health": health, "stale": stale,
                                                "health_problem": problem})


def _health_report(request: web.Request) -> tuple[ClusterHealth | None, str]:
    """What the shard-health actor last published, or why there is nothing to show."""
    path = pathlib.Path(request.app["settings"].data) / HEALTH_FOLDER / REPORT_FILE
    try:
        return report_decoder.decode(path.read_bytes()), ""
    except FileNotFoundError:
        return None, "The shard-health actor has published nothing: it runs with the actors (not with " \
                     "serve --without-actors)."
    except (OSError, msgspec.DecodeError) as error:
        return None, f"The shard-health report cannot be read: {error}"


# Merchants


@signed_in
async def merchants_page(request: web.Request) -> web.Response:
    return await _merchants(request)


async def _merchants(request: web.Request, problem: str = "", status: int = 200, created=None) -> web.Response:
    query = {"name": request.query.get("name", "")[:200], "limit": str(PAGE_SIZE)}
    if request.query.get("after"):
        query["starting_after"] = request.query["after"][:64]
    listed = await api.merchants_page(request, query)
    next_page = ""
    if listed.has_more:
        next_page = "/admin/merchants?" + urllib.parse.urlencode({"name": query["name"], "after": listed.data[-1].id})
    return _show(request, "admin_merchants.html", {
        "section": "merchants", "merchants": listed.data, "name": query["name"], "next_page": next_page,
        "problem": problem, "created": created, "tiers": ("basic", "standard", "premium")}, status)


@signed_in
async def onboard(request: web.Request) -> web.Response:
    fields = filled(await action_form(request, "admin"), ("name", "email", "tier", "webhook_url"))
    created = await submitted(schemas.MerchantCreate, fields,
                              lambda merchant, body: api.onboard_merchant(request, merchant, body))
    if isinstance(created, ApiError):
        return await _merchants(request, created.message, created.status)
    # Its secrets are shown in this answer only (as the API's create does); the page is never stored (no-store).
    return await _merchants(request, created=created)


@signed_in
async def change_merchant(request: web.Request) -> web.Response:
    fields = await action_form(request, "admin")
    change = filled(fields, ("status", "tier"))
    refusal = await submitted(schemas.MerchantUpdate, change, lambda wanted, body: api.change_merchant(
        request, request.match_info["id"], wanted, body))
    if isinstance(refusal, ApiError):
        return await _merchants(request, refusal.message, refusal.status)
    return redirect("/admin/merchants?done=" + change.get("status", "tier"))


# The risk block list


@signed_in
async def risk_page(request: web.Request) -> web.Response:
    return await _blocklist(request)


async def _blocklist(request: web.Request, problem: str = "", status: int = 200) -> web.Response:
    query = {"limit": "100", **({"starting_after": request.query["after"][:64]} if request.query.get("after") else {})}
    listed = await risk.blocklist_page(request, query)
    return _show(request, "admin_risk.html", {
        "section": "risk", "entries": listed.data, "kinds": BLOCK_KINDS, "problem": problem,
        "next_page": f"/admin/risk?after={listed.data[-1].id}" if listed.has_more else ""}, status)


@signed_in
async def block(request: web.Request) -> web.Response:
    fields = filled(await action_form(request, "admin"), ("kind", "value", "merchant_id", "reason"))
    refusal = await submitted(schemas.BlocklistEntryCreate, fields, lambda entry, body: risk.block(request, entry, body))
    if isinstance(refusal, ApiError):
        return await _blocklist(request, refusal.message, refusal.status)
    return redirect("/admin/risk?done=blocked")


@signed_in
async def unblock(request: web.Request) -> web.Response:
    await action_form(request, "admin")
    await risk.unblock(request, request.match_info["id"], b"")
    return redirect("/admin/risk?done=unblocked")


# Dead letters


@signed_in
async def dead_letters_page(request: web.Request) -> web.Response:
    listed = await deliveries_api.dead_letters(request, DEAD_LETTERS_SHOWN)
    return _show(request, "admin_dead_letters.html", {"section": "dead_letters", "deliveries": listed.data,
                                                      "has_more": listed.has_more})


@signed_in
async def reconciliations_page(request: web.Request) -> web.Response:
    listed = await reconciliations_api.newest(request, RECONCILIATIONS_SHOWN)
    return _show(request, "admin_reconciliations.html", {"section": "reconciliations",
                                                         "reconciliations": listed.data, "has_more": listed.has_more})


@signed_in
async def replay_dead_letters(request: web.Request) -> web.Response:
    await action_form(request, "admin")
    wanted, body = checked(schemas.DeliveriesReplay, {"status": "dead"})
    await deliveries_api.replay(request, "", wanted, body)
    return redirect("/admin/dead-letters?done=replayed")
