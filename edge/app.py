"""The HTTP API: the application and its handlers, to the contract of API.md (plumbing in edge.http)."""

import asyncio
import logging
import os
import pathlib
import time

import msgspec
import orjson
from aiohttp import web

from actors.merchant_secrets import MerchantSecrets, SecretSealer, Secrets
from edge import (
    cards,
    credentials_api,
    deliveries_api,
    events_api,
    invoices_api,
    login,
    pages,
    payments_api,
    qr_api,
    reconciliations_api,
    risk,
    schemas,
    wallets_api,
)
from edge.auth import AdminToken, TokenIssuer, hash_secret
from edge.credentials import CredentialUses, client_secret_set, report_uses
from edge.errors import ApiError, not_found
from edge.gateway import Gateway
from edge.http import (
    ADMIN,
    MAX_BODY_BYTES,
    RequestFingerprints,
    TOKEN_TTL_S,
    Settings,
    authenticate,
    body_of,
    cached_merchant,
    check_currency,
    check_cursor,
    check_merchant_access,
    engine_now_ns,
    errors_and_metrics,
    ledger_codes,
    ledger_id,
    ledger_prefix,
    merchant_caches,
    merchant_principal,
    merchant_visible,
    new_id,
    parse_limit,
    parse_status,
    parse_time,
    raise_for,
    respond,
    run,
)
from edge.limits import SharedTokenBuckets, malformed_networks
from edge.metrics import Metrics
from edge.outbound import check_outbound_urls
from edge.openapi import document
from engine import views
from engine.codes import AccountCode, TransferCode
from engine.queries import AccountBalance, AccountTransfers, GetCustomer, GetOrder, ListMerchants, ListOrders, \
    LookupAccounts, LookupTransfers
from engine.records import (
    AddDashboardUser,
    AdmitOrderIp,
    CancelOrder,
    CreateCustomer,
    CreateMerchant,
    CreateOrder,
    CreateSubAccount,
    Customer,
    DashboardUser,
    Merchant,
    Order,
    Outcome,
    SettlementAccount,
    Split,
    SubAccount,
    UpdateMerchant,
    UpdateOrder,
    wallet_account_id,
)
from engine.states import ORDER_STATUSES
from engine.types import Account, AccountFlag, CreateAccounts, CreateTransfers, \
    Transfer, TransferFlag
from journal.auth import key_path, load_key

log = logging.getLogger("paygate.edge")
READY_TIMEOUT_S = 2.0  # a readiness probe answers within this: a shard silent that long is not ready


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_and_metrics])
    data = pathlib.Path(settings.data)
    app["settings"] = settings
    app["secrets"] = Secrets.of_data_folder(data)
    app["admin"] = (AdminToken(settings.admin_token_hash) if settings.admin_token_hash else
                    AdminToken.load_or_create(data / "admin_token.sha256", None)[0])
    app["issuer"] = TokenIssuer.load_or_create(data / "jwt_signing_key.pem")
    app["buckets"] = SharedTokenBuckets(data / "rate_limits.bin")
    login.install(app, data / "login_lockouts.bin")
    app["merchant_cache"], app["merchant_misses"] = merchant_caches()
    app["png_cache"] = qr_api.png_cache()
    app["card_keys"] = cards.KeyRing.load(data)
    app["fingerprints"] = RequestFingerprints.load_or_create(data / "request_fingerprint.key",
                                                             app["secrets"].card_fingerprint)
    app["merchant_secrets"] = MerchantSecrets(app["secrets"], SecretSealer.of_data_folder(data))
    app["credential_uses"] = CredentialUses()
    app["metrics"] = Metrics(data)
    invoices_api.install(app)
    app["risk"] = risk.LocalTable(settings.risk_table_path, frozenset(settings.risk_test_cards))
    app.on_startup.append(_open_gateway)
    app.on_cleanup.append(_close_gateway)
    app.cleanup_ctx.append(risk.watch_table)
    app.cleanup_ctx.append(cards.watch_key_ring)
    app.cleanup_ctx.append(report_uses)
    app.cleanup_ctx.append(reconciliations_api.settlement_session)
    routes = [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/v1/admin/ledger_check", ledger_check),
        web.get("/openapi.json", openapi),
        web.get("/.well-known/jwks.json", jwks),
        web.post("/oauth/token", oauth_token),
        web.post("/v1/auth/login", login.login),
        web.post("/v1/merchants", create_merchant),
        web.get("/v1/merchants", list_merchants),
        web.get("/v1/merchants/me", get_me),
        web.get("/v1/merchants/{id}", get_merchant),
        web.patch("/v1/merchants/{id}", update_merchant),
        web.post("/v1/merchants/{id}/sub_accounts", create_sub_account),
        web.post("/v1/merchants/{id}/dashboard_users", create_dashboard_user),
        web.post("/v1/merchants/{id}/api_keys", credentials_api.create_api_key),
        web.get("/v1/merchants/{id}/api_keys", credentials_api.list_api_keys),
        web.post("/v1/orders", create_order),
        web.get("/v1/orders", list_orders),
        web.get("/v1/orders/{id}", get_order),
        web.patch("/v1/orders/{id}", update_order),
        web.delete("/v1/orders/{id}", cancel_order),
        web.post("/v1/accounts", create_account),
        web.get("/v1/accounts/{id}", get_account),
        web.get("/v1/accounts/{id}/transfers", account_statement),
        web.get("/v1/accounts/{id}/balances", account_balances),
        web.post("/v1/transfers", create_transfers),
        web.get("/v1/transfers/{id}", get_transfer),
        web.post("/v1/customers", create_customer),
        web.get("/v1/customers/{id}", get_customer),
        web.post("/v1/customers/{id}/deposits", wallets_api.create_deposit),
        web.get("/v1/deposits/{id}", wallets_api.get_deposit),
        web.post("/v1/customers/{id}/withdrawals", wallets_api.create_withdrawal),
        web.get("/v1/withdrawals/{id}", wallets_api.get_withdrawal),
        web.post("/v1/customers/{id}/adjustments", wallets_api.create_adjustment),
        web.get("/v1/customers/{id}/wallet", get_wallet),
        web.post("/v1/payments", payments_api.create_payment),
        web.get("/v1/payments", payments_api.list_payments),
        web.get("/v1/payments/{id}", payments_api.get_payment),
        web.post("/v1/payments/{id}/capture", payments_api.capture_payment),
        web.post("/v1/payments/{id}/cancel", payments_api.cancel_payment),
        web.post("/v1/refunds", payments_api.create_refund),
        web.get("/v1/refunds", payments_api.list_refunds),
        web.get("/v1/refunds/{id}", payments_api.get_refund),
        web.post("/v1/payouts", payments_api.create_payout),
        web.get("/v1/payouts", payments_api.list_payouts),
        web.get("/v1/payouts/{id}", payments_api.get_payout),
        web.post("/v1/psp/{provider}/webhook", payments_api.provider_callback),
        web.post("/v1/qr/dynamic", qr_api.create_dynamic),
        web.post("/v1/qr/static", qr_api.create_static),
        web.get("/v1/qr/orders/{id}.png", qr_api.order_png),
        web.get("/v1/qr/payments/{id}.png", qr_api.payment_png),
        web.get("/v1/qr/merchants/{id}.png", qr_api.merchant_png),
        web.get("/v1/qr/deposits/{id}.png", qr_api.deposit_png),
        web.post("/v1/risk/blocklist", risk.create_blocklist_entry),
        web.get("/v1/risk/blocklist", risk.list_blocklist),
        web.delete("/v1/risk/blocklist/{id}", risk.delete_blocklist_entry),
        web.get("/v1/events", events_api.list_events),
        web.get("/v1/events/{id}", events_api.get_event),
        web.post("/v1/events/{id}/redeliver", events_api.redeliver_event),
        web.get("/v1/webhook_deliveries", deliveries_api.list_deliveries),
        web.post("/v1/webhook_deliveries/replay", deliveries_api.replay_deliveries),
        web.get("/v1/invoices", invoices_api.list_invoices),
        web.get("/v1/invoices/{id}.pdf", invoices_api.get_invoice_pdf),  # before {id}, which would take "x.pdf"
        web.get("/v1/invoices/{id}", invoices_api.get_invoice),
        web.post("/v1/reconciliations", reconciliations_api.create_reconciliation),
        web.get("/v1/reconciliations", reconciliations_api.list_reconciliations),
        web.get("/v1/reconciliations/{id}", reconciliations_api.get_reconciliation),
    ]
    app.add_routes(routes)
    app["routes"] = routes
    pages.install(app)
    return app


async def _open_gateway(app: web.Application) -> None:
    settings = app["settings"]
    key = load_key(key_path(pathlib.Path(settings.data)), f"edge worker {os.getpid()}")
    app["gateway"] = Gateway(settings.shard_addresses, key, on_batch=app["metrics"].batch_commands.observe)
    app["authorizations"] = payments_api.Authorizations(app["settings"].providers, app["gateway"])


async def _close_gateway(app: web.Application) -> None:
    app["authorizations"].close()
    app["gateway"].close()


# Operations


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    statuses = await request.app["gateway"].statuses(timeout_s=READY_TIMEOUT_S)
    shards = [{"shard": index, "ready": not isinstance(status, BaseException) and status.role == "primary",
               "sequence": getattr(status, "sequence", None), "durable_sequence": getattr(status, "durable_sequence", None)}
              for index, status in enumerate(statuses)]
    ready = all(shard["ready"] and shard["sequence"] == shard["durable_sequence"] for shard in shards)
    return web.Response(status=200 if ready else 503, body=orjson.dumps({"ready": ready, "shards": shards}),
                        content_type="application/json")


async def ledger_check(request: web.Request) -> web.Response:
    """The full double-entry check on every shard (admin; it walks the whole ledger)."""
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    statuses = await request.app["gateway"].statuses(with_check=True)
    shards = [{"shard": index, "check": status.check if not isinstance(status, BaseException) else "unreachable"}
              for index, status in enumerate(statuses)]
    return respond(request, {"ok": all(shard["check"] == "ok" for shard in shards), "shards": shards})


async def metrics(request: web.Request) -> web.Response:
    return await request.app["metrics"].response(request.app["gateway"])


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(document(request.app["routes"])), content_type="application/json")


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app["issuer"].jwks())


async def oauth_token(request: web.Request) -> web.Response:
    try:
        form = await request.post()
    except (ValueError, LookupError) as error:  # bad boundary, bad charset, bytes that are not text
        raise ApiError(400, "invalid_form", f"the form could not be read: {error}") from error
    if form.get("grant_type") != "client_credentials":
        raise ApiError(400, "unsupported_grant_type", "grant_type must be client_credentials", "grant_type")
    client_id = str(form.get("client_id", ""))[:128]
    merchant_id = client_id.removeprefix("cli_") if client_id.startswith("cli_mer_") else ""
    merchant = await cached_merchant(request.app, merchant_id) if merchant_id else None
    secret = str(form.get("client_secret", ""))[:256]
    now_ns = time.time_ns()
    credential = client_secret_set(merchant, secret, now_ns) if merchant and merchant.client_id == client_id else None
    if credential is None:
        raise ApiError(401, "invalid_client", "unknown client or wrong secret")
    check_merchant_access(request, merchant)  # a token is API access: the allow list applies to getting one
    request.app["credential_uses"].note(merchant.id, credential.id)
    token = request.app["issuer"].issue(merchant.id, "api", TOKEN_TTL_S, now_ns // 1_000_000_000, credential.id)
    return respond(request, views.TokenOut(token, "Bearer", TOKEN_TTL_S))


# Merchants


async def create_merchant(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    fields, body = await body_of(request, schemas.MerchantCreate)
    return respond(request, await onboard_merchant(request, fields, body))


async def onboard_merchant(request: web.Request, fields: schemas.MerchantCreate, body: bytes) -> views.MerchantOut:
    """A new merchant, shown with its first credential set's secrets (the only time they are shown)."""
    _check_allowlist(fields.ip_allowlist)
    check_outbound_urls(request, webhook_url=fields.webhook_url)
    merchant_id = new_id("mer_", request, ADMIN)
    derived: Secrets = request.app["secrets"]
    api_key = derived.api_key(merchant_id)
    client_secret = derived.client_secret(merchant_id)
    merchant = Merchant(
        id=merchant_id, name=fields.name, email=fields.email, tier=fields.tier, webhook_url=fields.webhook_url,
        require_signature=fields.require_signature, ip_allowlist=fields.ip_allowlist, acquirer=fields.acquirer,
        api_key_hash=hash_secret(api_key), client_id=derived.client_id(merchant_id),
        client_secret_hash=hash_secret(client_secret), settlement_account=_settlement_account(fields),
    )
    outcome = await run(request, merchant_id, CreateMerchant(merchant), body)
    raise_for(outcome)
    shown = views.merchant(outcome.record)
    shown.api_key = api_key
    # The first set's signing and webhook secrets are derived, never stored: shown again by a replay as the key is.
    shown.signing_secret = derived.signing_secret(merchant_id)
    shown.webhook_secret = derived.webhook_secret(merchant_id)
    shown.client_secret = client_secret
    return shown


async def list_merchants(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    return respond(request, await merchants_page(request, request.query))


async def merchants_page(request: web.Request, query) -> views.MerchantList:
    """Every shard's merchants, newest first, by name (`name`), a page at a time (`limit`, `starting_after`)."""
    limit = parse_limit(query)
    after_id = query.get("starting_after", "")[:64]
    after = await cached_merchant(request.app, after_id) if after_id.startswith("mer_") else None
    if after_id:
        check_cursor(after is not None, after_id)
    read = ListMerchants(name_contains=query.get("name", "")[:200], created_before=after.created_at if after else 0,
                         before_id=after_id, limit=limit)
    answers = await request.app["gateway"].read_everywhere(read)
    merchants = sorted((merchant for answer in answers for merchant in answer.records),
                       key=lambda merchant: (merchant.created_at, merchant.id), reverse=True)
    has_more = len(merchants) > limit or any(answer.has_more for answer in answers)
    return views.MerchantList("list", [views.merchant(merchant) for merchant in merchants[:limit]], has_more)


async def get_merchant(request: web.Request) -> web.Response:
    return respond(request, views.merchant(await merchant_visible(request)))


async def get_me(request: web.Request) -> web.Response:
    return respond(request, views.merchant(await merchant_principal(request)))


def _settlement_account(fields) -> SettlementAccount | None:
    given = fields.settlement_account
    return None if given is None else SettlementAccount(**msgspec.structs.asdict(given))


def _check_allowlist(entries: list[str]) -> None:
    """A malformed entry would lock the merchant out from everywhere: refused instead."""
    malformed = malformed_networks(entries)
    if malformed:
        raise ApiError(400, "parameter_invalid", f"not an IP address or network: {malformed[0]!r}", "ip_allowlist")


async def update_merchant(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    fields, body = await body_of(request, schemas.MerchantUpdate)
    return respond(request, await change_merchant(request, request.match_info["id"], fields, body))


async def change_merchant(request: web.Request, merchant_id: str, fields: schemas.MerchantUpdate,
                          body: bytes) -> views.MerchantOut:
    _check_allowlist(fields.ip_allowlist or [])
    check_outbound_urls(request, webhook_url=fields.webhook_url)
    command = UpdateMerchant(merchant_id=merchant_id, **{**msgspec.structs.asdict(fields),
                                                         "settlement_account": _settlement_account(fields)})
    outcome = await run(request, merchant_id, command, body)
    raise_for(outcome)
    request.app["merchant_cache"].pop(merchant_id)
    return views.merchant(outcome.record)


async def create_sub_account(request: web.Request) -> web.Response:
    merchant = await merchant_visible(request)
    fields, body = await body_of(request, schemas.SubAccountCreate)
    sub_account = SubAccount(new_id("sub_", request, merchant.id), fields.name)
    outcome = await run(request, merchant.id, CreateSubAccount(merchant.id, sub_account), body)
    raise_for(outcome)
    request.app["merchant_cache"].pop(merchant.id)
    # By id, not position: under an Idempotency-Key the id is the key's, so a replay's stored merchant names it too.
    created = next(sub for sub in outcome.record.sub_accounts if sub.id == sub_account.id)
    return respond(request, views.sub_account(outcome.record.id, created))


async def create_dashboard_user(request: web.Request) -> web.Response:
    await authenticate(request, admin_allowed=True, merchant_allowed=False)
    merchant_id = request.match_info["id"]
    fields, body = await body_of(request, schemas.DashboardUserCreate)
    user = DashboardUser(fields.email, await request.app["passwords"].hash(fields.password))
    outcome = await run(request, merchant_id, AddDashboardUser(merchant_id, user), body)
    raise_for(outcome)
    request.app["merchant_cache"].pop(merchant_id)
    return respond(request, {"merchant_id": merchant_id, "email": fields.email})


# Orders


async def create_order(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.OrderCreate)
    check_currency(fields.currency)
    check_outbound_urls(request, callback_url=fields.callback_url, ipn_url=fields.ipn_url)
    _check_splits(fields.splits)
    settings: Settings = request.app["settings"]
    order = Order(
        id=new_id("ord_", request, merchant.id), merchant_id=merchant.id, name=fields.name, amount=fields.amount,
        currency=fields.currency, note=fields.note, payment_methods=list(fields.payment_methods),
        payment_sub_type=fields.payment_sub_type, customer_email=fields.customer_email,
        customer_id=fields.customer_id, callback_url=fields.callback_url, ipn_url=fields.ipn_url,
        splits=[Split(split.merchant_id or split.sub_account_id, split.amount) for split in fields.splits],
        metadata=fields.metadata,
    )
    command = CreateOrder(order=order, client_ip=request.get("client_ip", ""), ip_limit=settings.order_ip_limit,
                          ip_window_s=settings.order_ip_window_s, expires_in_s=fields.expires_in)
    gateway = request.app["gateway"]
    ip_shard = gateway.ip_shard_index(command.client_ip)
    if command.ip_limit > 0 and ip_shard != gateway.shard_index(merchant.id):
        # The IP's one window is on another shard: admitted there, the attempt counts even if the order then fails.
        admission = AdmitOrderIp(client_ip=command.client_ip, ip_limit=command.ip_limit,
                                 ip_window_s=command.ip_window_s)
        _raise_if_rate_limited(settings, await run(request, merchant.id, admission, body, shard=ip_shard))
        request["replayed"] = False  # a replay is the order's word: an admission replayed says nothing of it
        command.ip_limit = 0
    outcome = await run(request, merchant.id, command, body)
    _raise_if_rate_limited(settings, outcome)
    raise_for(outcome)
    return respond(request, order_out(request, merchant, outcome.record))


def _raise_if_rate_limited(settings: Settings, outcome: Outcome) -> None:
    if outcome.code == "rate_limited":
        raise ApiError(429, "rate_limited", f"at most {settings.order_ip_limit} orders per "
                       f"{settings.order_ip_window_s} s from one address",
                       headers={"Retry-After": str(outcome.retry_after_s)})


def _check_splits(splits: list[schemas.SplitIn]) -> None:
    """A split names its destination once: both ids, or neither, is refused rather than half read; and in its own
    field (the engine takes both as one id, so a merchant given as a sub-account would pass)."""
    for index, split in enumerate(splits):
        if bool(split.merchant_id) == bool(split.sub_account_id):
            raise ApiError(400, "parameter_invalid", "a split names exactly one of merchant_id and sub_account_id",
                           f"splits[{index}]")
        if not (split.merchant_id.startswith("mer_") or split.sub_account_id.startswith("sub_")):
            raise ApiError(400, "split_destination_not_found", "a split's merchant_id names a merchant (mer_...), its "
                           "sub_account_id one of your sub-accounts (sub_...)", f"splits[{index}]")


def order_out(request: web.Request, merchant: Merchant, order: Order) -> views.OrderOut:
    return views.order(order, request.app["settings"].public_url, qr_api.order_qr(merchant, order))


async def order_of(request: web.Request, merchant: Merchant, order_id: str) -> Order:
    order = (await request.app["gateway"].read(merchant.id, GetOrder(merchant.id, order_id))).record
    if order is None:
        raise not_found("order", order_id)
    return order


async def get_order(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, order_out(request, merchant, await order_of(request, merchant, request.match_info["id"])))


async def update_order(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.OrderUpdate)
    command = UpdateOrder(merchant_id=merchant.id, order_id=request.match_info["id"], name=fields.name,
                          note=fields.note, amount=fields.amount, expires_in_s=fields.expires_in)
    outcome = await run(request, merchant.id, command, body)
    raise_for(outcome, {"splits_exceed_amount": "amount"})  # the new amount is what falls short of the shares
    return respond(request, order_out(request, merchant, outcome.record))


async def cancel_order(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await cancel(request, merchant, request.match_info["id"]))


async def cancel(request: web.Request, merchant: Merchant, order_id: str) -> views.OrderOut:
    """Cancel a pending order."""
    outcome = await run(request, merchant.id, CancelOrder(merchant.id, order_id))
    raise_for(outcome)
    return order_out(request, merchant, outcome.record)


async def list_orders(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    orders, has_more = await search_orders(request, merchant, request.query)
    return respond(request, {"object": "list", "data": orders, "has_more": has_more})


async def search_orders(request: web.Request, merchant: Merchant, query) -> tuple[list[views.OrderOut], bool]:
    """A page of the merchant's orders, newest first, by the list's query parameters (name, status, created_gte,
    created_lt, limit, starting_after); and whether more follow."""
    read = ListOrders(
        merchant_id=merchant.id, name_contains=query.get("name", "")[:200], status=parse_status(query, ORDER_STATUSES),
        created_gte=parse_time(query, "created_gte", 0), created_lt=parse_time(query, "created_lt", 2**63 - 1),
        limit=parse_limit(query), starting_after=query.get("starting_after", "")[:64],
    )
    answer = await request.app["gateway"].read(merchant.id, read)
    if not answer.records and read.starting_after:
        after = (await request.app["gateway"].read(merchant.id, GetOrder(merchant.id, read.starting_after))).record
        check_cursor(after is not None, read.starting_after)
    return [order_out(request, merchant, order) for order in answer.records], answer.has_more


# Ledger


async def create_account(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.AccountCreate)
    check_currency(fields.currency)
    if fields.flags.debits_must_not_exceed_credits and fields.flags.credits_must_not_exceed_debits:
        raise ApiError(400, "flags_are_mutually_exclusive", "an account takes at most one limit flag", "flags")
    client_id = fields.id or new_id("acct_", request, merchant.id)
    flags = ((AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS if fields.flags.debits_must_not_exceed_credits else 0)
             | (AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS if fields.flags.credits_must_not_exceed_debits else 0)
             | (AccountFlag.HISTORY if fields.flags.history else 0))
    account = Account(ledger_id(merchant.id, client_id), fields.currency, code=fields.code, flags=flags,
                      metadata=fields.metadata or None)
    result = await run(request, merchant.id, CreateAccounts([account]), body)
    code = ledger_codes(result)[0]
    if AccountCode.name(code).startswith("exists"):
        raise ApiError(409, AccountCode.name(code), f"account {client_id!r} exists", "id")
    if code:
        raise ApiError(400, AccountCode.name(code), AccountCode.name(code).replace("_", " "))
    stored = (await request.app["gateway"].read(merchant.id, LookupAccounts([account.id]))).accounts[0]
    # The account as it was created, so a replay under the Idempotency-Key answers what the first request did.
    return respond(request, views.account(msgspec.structs.replace(account, timestamp=stored.timestamp)))


async def get_account(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    account_id = request.match_info["id"]
    account = (await accounts_of(request, merchant, [account_id]))[0]
    if account is None:
        raise not_found("account", account_id)
    return respond(request, account)


async def accounts_of(request: web.Request, merchant: Merchant,
                      account_ids: list[str]) -> list[views.AccountOut | None]:
    """The merchant's ledger accounts by their ids (its own, or its system accounts' `.balance.usd`); None for each
    that does not exist."""
    read = LookupAccounts([ledger_id(merchant.id, account_id) for account_id in account_ids])
    accounts = (await request.app["gateway"].read(merchant.id, read)).accounts
    return [None if account is None else views.account(account) for account in accounts]


async def account_statement(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    account_id = request.match_info["id"]
    limit = parse_limit(request.query)
    read = AccountTransfers(ledger_id(merchant.id, account_id), parse_time(request.query, "created_gte", 0),
                            parse_time(request.query, "created_lt", 2**63 - 1) - 1, limit + 1,
                            ledger_id(merchant.id, request.query.get("starting_after", "")[:48]), newest_first=True)
    gateway = request.app["gateway"]
    transfers = (await gateway.read(merchant.id, read)).transfers
    if not transfers:  # an account that is not there (or not this merchant's), or a cursor that names nothing?
        if (await gateway.read(merchant.id, LookupAccounts([read.account_id]))).accounts[0] is None:
            raise not_found("account", account_id)
        if read.after_id:
            after = (await gateway.read(merchant.id, LookupTransfers([read.after_id]))).transfers[0]
            # A transfer of another account is no place in this statement.
            on_account = after is not None and read.account_id in (after.debit_account_id, after.credit_account_id)
            check_cursor(on_account, request.query["starting_after"])
    return respond(request, {"object": "list", "data": [views.transfer(t) for t in transfers[:limit]],
                             "has_more": len(transfers) > limit})


async def account_balances(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    account_id = request.match_info["id"]
    at = parse_time(request.query, "at", engine_now_ns())
    balance = (await request.app["gateway"].read(merchant.id, AccountBalance(ledger_id(merchant.id, account_id), at))).balance
    if balance is None:
        raise ApiError(404, "resource_missing", f"no balance history for account {account_id!r} (created without "
                       "the history flag?)", "id")
    return respond(request, views.balance(account_id, at, balance))


async def create_transfers(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    decoded, body = await body_of(request, schemas.TransferCreate | list[schemas.TransferCreate])
    is_batch = isinstance(decoded, list)
    items = decoded if is_batch else [decoded]
    if len(items) > schemas.MAX_TRANSFERS_PER_REQUEST:
        raise ApiError(413, "too_many_transfers", f"at most {schemas.MAX_TRANSFERS_PER_REQUEST} transfers per request")
    if not items:
        raise ApiError(400, "parameter_missing", "send at least one transfer")
    for currency in {item.currency for item in items} - {""}:
        check_currency(currency)
    prefix = ledger_prefix(merchant.id)
    result = await run(request, merchant.id, CreateTransfers(_transfers_in(prefix, items)), body)
    codes = ledger_codes(result)
    results = [views.TransferResult(item.id, "created" if code == 0 else TransferCode.name(code))
               for item, code in zip(items, codes)]
    return respond(request, results if is_batch else results[0])


def _transfers_in(prefix: str, items: list[schemas.TransferCreate]) -> list[Transfer]:
    """The engine's transfers for checked items, their ids in the merchant's namespace (`prefix`)."""
    # One check over every id of the batch; only a refusal looks for which one it was.
    ids = "".join([item.id + item.debit_account_id + item.credit_account_id + item.pending_id for item in items])
    if not schemas.client_id_valid(ids):
        field = next(name for item in items for name in ("id", "debit_account_id", "credit_account_id", "pending_id")
                     if not schemas.client_id_valid(getattr(item, name)))
        raise ApiError(400, "parameter_invalid", "ids take letters, digits, '_' and '-' only", field)
    flag_values = TransferFlag.NAMES
    transfers = []
    for item in items:
        flags = 0
        for name in item.flags:
            flags |= flag_values[name]
        # As ledger_id: an empty id stays empty, so the engine names what is missing.
        debit, credit, pending = item.debit_account_id, item.credit_account_id, item.pending_id
        transfers.append(Transfer(prefix + item.id, prefix + debit if debit else "", prefix + credit if credit else "",
                                  item.amount, item.currency, prefix + pending if pending else "", item.timeout_s,
                                  item.code, flags))
    return transfers


async def get_transfer(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    transfer_id = request.match_info["id"]
    transfer = (await request.app["gateway"].read(merchant.id, LookupTransfers([ledger_id(merchant.id, transfer_id)]))).transfers[0]
    if transfer is None:
        raise not_found("transfer", transfer_id)
    return respond(request, views.transfer(transfer))


# Customers and wallets


async def create_customer(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    fields, body = await body_of(request, schemas.CustomerCreate)
    customer = Customer(id=new_id("cus_", request, merchant.id), merchant_id=merchant.id, email=fields.email,
                        name=fields.name)
    outcome = await run(request, merchant.id, CreateCustomer(customer), body)
    raise_for(outcome)
    return respond(request, views.customer(outcome.record))


async def _customer(request: web.Request, merchant: Merchant) -> Customer:
    return await customer_of(request, merchant, request.match_info["id"])


async def customer_of(request: web.Request, merchant: Merchant, customer_id: str) -> Customer:
    customer = (await request.app["gateway"].read(merchant.id, GetCustomer(merchant.id, customer_id))).record
    if customer is None:
        raise not_found("customer", customer_id)
    return customer


async def customer_with_email(request: web.Request, merchant: Merchant, email: str) -> Customer | None:
    """The merchant's first customer made with this e-mail address (in any case), if any."""
    return (await request.app["gateway"].read(merchant.id, GetCustomer(merchant.id, "", email))).record


async def get_customer(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, views.customer(await _customer(request, merchant)))


async def get_wallet(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    return respond(request, await wallet_of(request, merchant, await _customer(request, merchant)))


async def wallet_of(request: web.Request, merchant: Merchant, customer: Customer) -> views.WalletOut:
    """The wallet's balances and its latest moves (deposits, adjustments, checkouts, withdrawals)."""
    gateway = request.app["gateway"]
    ids = [wallet_account_id(merchant.id, customer.id, currency) for currency in schemas.CURRENCY_EXPONENTS]
    accounts = [account for account in (await gateway.read(merchant.id, LookupAccounts(ids))).accounts if account]
    # Read side by side: the gateway sends reads made together to the shard as one request.
    statements = await asyncio.gather(*(gateway.read(merchant.id, AccountTransfers(
        account.id, limit=20, newest_first=True)) for account in accounts))
    history = [transfer for statement in statements for transfer in statement.transfers]
    history.sort(key=lambda transfer: transfer.timestamp, reverse=True)
    return views.wallet(customer, accounts, history[:20])
