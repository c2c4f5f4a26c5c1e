"""/openapi.json: OpenAPI 3.1 generated from the same msgspec types that validate requests."""

import functools
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from edge import reconciliations_api, schemas
from engine import views
from engine.notifications import EVENT_TYPES
from engine.states import DELIVERY_STATUSES, ORDER_STATUSES, PAYMENT_STATUSES

# Documented only: the handler counts the items itself, to answer too many with 413 rather than a decoding 400.
TRANSFER_ARRAY = Annotated[list[schemas.TransferCreate], Meta(min_length=1, max_length=schemas.MAX_TRANSFERS_PER_REQUEST)]
# handler name -> (summary, request body type, response type, authentication)
OPERATIONS: dict[str, tuple[str, type | None, object, str]] = {
    "healthz": ("process is up", None, dict[str, str], "none"),
    "readyz": ("shards reachable and caught up", None, dict[str, Any], "none"),
    "metrics": ("Prometheus metrics (text)", None, str, "none"),
    "ledger_check": ("run the full double-entry check on every shard", None, dict[str, Any], "admin"),
    "openapi": ("this document", None, dict[str, Any], "none"),
    "jwks": ("public keys of the JWTs this gateway signs", None, dict[str, Any], "none"),
    "oauth_token": ("OAuth2 client credentials → access token", None, views.TokenOut, "none"),
    "login": ("dashboard login → session token", schemas.Login, views.TokenOut, "none"),
    "create_merchant": ("create a merchant (secrets shown once)", schemas.MerchantCreate, views.MerchantOut, "admin"),
    "list_merchants": ("every merchant, newest first (by name: `name`)", None, views.MerchantList, "admin"),
    "get_me": ("the calling merchant", None, views.MerchantOut, "merchant"),
    "get_merchant": ("a merchant", None, views.MerchantOut, "admin or merchant"),
    "update_merchant": ("change a merchant", schemas.MerchantUpdate, views.MerchantOut, "admin"),
    "create_sub_account": ("add a sub-account (one balance per store)", schemas.SubAccountCreate,
                           views.SubAccountObjectOut, "admin or merchant"),
    "create_api_key": ("rotate credentials: a new API key, client secret, signing and webhook secret (shown once); "
                       "the sets before it keep working expires_in seconds (0: revoked now)", schemas.ApiKeyCreate,
                       views.ApiKeyOut, "admin or merchant"),
    "list_api_keys": ("the merchant's live credential sets, newest first, with last use (never a secret)", None,
                      views.ApiKeyList, "admin or merchant"),
    "create_dashboard_user": ("add a dashboard user", schemas.DashboardUserCreate, dict[str, str], "admin"),
    "create_order": ("create an order", schemas.OrderCreate, views.OrderOut, "merchant"),
    "list_orders": ("search orders, newest first", None, views.OrderList, "merchant"),
    "get_order": ("an order", None, views.OrderOut, "merchant"),
    "update_order": ("change a pending order", schemas.OrderUpdate, views.OrderOut, "merchant"),
    "cancel_order": ("cancel a pending order", None, views.OrderOut, "merchant"),
    "create_account": ("create a ledger account", schemas.AccountCreate, views.AccountOut, "merchant"),
    "get_account": ("a ledger account and its balances", None, views.AccountOut, "merchant"),
    "account_statement": ("an account's transfers, newest first", None, views.TransferList, "merchant"),
    "account_balances": ("an account's balances as of a time (history accounts)", None, views.BalanceOut,
                         "merchant"),
    "create_transfers": ("one transfer, or an array of up to 8190", schemas.TransferCreate | TRANSFER_ARRAY,
                         views.TransferResult | list[views.TransferResult], "merchant"),
    "get_transfer": ("a transfer", None, views.TransferOut, "merchant"),
    "create_customer": ("create a customer", schemas.CustomerCreate, views.CustomerOut, "merchant"),
    "get_customer": ("a customer", None, views.CustomerOut, "merchant"),
    "create_deposit": ("top up a customer's wallet by a real payment (card, QR or bank transfer): credited when the "
                       "money arrives", schemas.DepositCreate, views.DepositOut, "merchant"),
    "get_deposit": ("a deposit", None, views.DepositOut, "merchant"),
    "create_withdrawal": ("send wallet money to the customer's bank (held until the bank answers)",
                          schemas.WithdrawalCreate, views.WithdrawalOut, "merchant"),
    "get_withdrawal": ("a withdrawal", None, views.WithdrawalOut, "merchant"),
    "create_adjustment": ("credit a wallet by hand, with a reason, from the merchant's adjustments account",
                          schemas.AdjustmentCreate, views.AdjustmentOut, "admin"),
    "get_wallet": ("a customer's wallet: balances and history", None, views.WalletOut, "merchant"),
    "create_payment": ("pay an order or an amount: card, saved card token, wallet, QR or bank transfer",
                       schemas.PaymentCreate, views.PaymentOut, "merchant"),
    "list_payments": ("payments, newest first", None, views.PaymentList, "merchant"),
    "get_payment": ("a payment", None, views.PaymentOut, "merchant"),
    "capture_payment": ("capture an authorization, in full or in part (once)", schemas.CaptureIn, views.PaymentOut,
                        "merchant"),
    "cancel_payment": ("void an uncaptured authorization", None, views.PaymentOut, "merchant"),
    "create_refund": ("refund a payment, in full or in part", schemas.RefundCreate, views.RefundOut, "merchant"),
    "list_refunds": ("a payment's refunds, newest first", None, views.RefundList, "merchant"),
    "get_refund": ("a refund", None, views.RefundOut, "merchant"),
    "create_dynamic": ("an EMVCo QR code for one order (tag 54 amount, 62 reference)", schemas.DynamicQrCreate,
                       views.QrOut, "merchant"),
    "create_static": ("the merchant's static EMVCo QR code", schemas.StaticQrCreate, views.QrOut, "merchant"),
    "order_png": ("an order's QR code as PNG", None, str, "none"),
    "payment_png": ("the QR code of a QR or bank transfer payment without an order, as PNG, while it waits", None,
                    str, "none"),
    "merchant_png": ("a merchant's static QR code as PNG", None, str, "none"),
    "deposit_png": ("a QR or bank transfer deposit's QR code as PNG, while it waits for the transfer", None, str,
                    "none"),
    "create_payout": ("move balance out through the bank (held until the bank answers)", schemas.PayoutCreate,
                      views.PayoutOut, "merchant"),
    "list_payouts": ("payouts, newest first", None, views.PayoutList, "merchant"),
    "get_payout": ("a payout", None, views.PayoutOut, "merchant"),
    "provider_callback": ("a provider's signed result (Paygate-Signature: t=..,v1=..)", schemas.ProviderCallback,
                          dict[str, Any], "provider signature"),
    "create_blocklist_entry": ("block a card fingerprint, an IP address, an email or a customer: their payments fail "
                               "with risk_rejected", schemas.BlocklistEntryCreate, views.BlocklistEntryOut, "admin"),
    "list_blocklist": ("the risk block list, newest first", None, views.BlocklistEntryList, "admin"),
    "delete_blocklist_entry": ("take an entry off the risk block list", None, views.BlocklistEntryOut, "admin"),
    "list_events": ("events about the merchant's objects, newest first", None, views.EventList, "merchant"),
    "get_event": ("an event, byte for byte as its webhooks receive it", None, views.EventOut, "merchant"),
    "redeliver_event": ("send an event again to the webhook (and the order's IPN URL)", None, views.QueuedOut,
                        "merchant"),
    "list_deliveries": ("webhook, IPN and receipt deliveries, newest first, each with its attempts", None,
                        views.DeliveryList, "merchant"),
    "replay_deliveries": ("queue dead deliveries again (the admin token: every merchant's); archived ones are not: "
                          "redeliver their event", schemas.DeliveriesReplay,
                          views.QueuedOut, "merchant or admin"),
    "list_invoices": ("invoices, newest first", None, views.InvoiceList, "merchant"),
    "get_invoice": ("an invoice", None, views.InvoiceOut, "merchant"),
    "get_invoice_pdf": ("an invoice as PDF", None, str, "merchant"),
    "create_reconciliation": ("reconcile a settlement file, posted as text/csv (?provider=, ?date=) or fetched from "
                              "the provider: matched payments settle, fees and chargebacks are posted",
                              reconciliations_api.ReconciliationCreate, reconciliations_api.ReconciliationOut,
                              "admin"),
    "list_reconciliations": ("reconciliations, newest first", None, reconciliations_api.ReconciliationList, "admin"),
    "get_reconciliation": ("a reconciliation: what matched, and each kind of mismatch", None,
                           reconciliations_api.ReconciliationOut, "admin"),
}
ERROR_STATUSES = ("400", "401", "402", "403", "404", "409", "413", "429", "503")
# Bodies that may also come in another media type than JSON: handler name -> (media type, schema).
OTHER_REQUEST_MEDIA = {
    "create_reconciliation": ("text/csv", {"type": "string", "description": "transaction_id,amount,currency,status,"
                                                                            "settled_at[,fee]"}),
}
# Bodies that are not JSON: handler name -> (media type, the type that describes the fields).
FORM_REQUESTS: dict[str, tuple[str, type]] = {
    "oauth_token": ("application/x-www-form-urlencoded", schemas.TokenRequest),
}
# Success bodies that are not JSON: handler name -> (media type, schema).
TEXT_RESPONSES = {
    "metrics": ("text/plain", {"type": "string"}),
    "order_png": ("image/png", {"type": "string", "contentMediaType": "image/png"}),
    "payment_png": ("image/png", {"type": "string", "contentMediaType": "image/png"}),
    "merchant_png": ("image/png", {"type": "string", "contentMediaType": "image/png"}),
    "deposit_png": ("image/png", {"type": "string", "contentMediaType": "image/png"}),
    "get_invoice_pdf": ("application/pdf", {"type": "string", "contentMediaType": "application/pdf"}),
}
# Actions on an existing object whose every field is optional: no body at all means all defaults.
OPTIONAL_BODIES = frozenset({"capture_payment"})
# Statuses whose body is the operation's success type rather than the error shape (readyz: 503 when not ready).
SUCCESS_SHAPED_STATUSES = {"readyz": ("503",)}
QUERY_PARAMETERS = {
    "list_orders": ("name", "status", "created_gte", "created_lt", "limit", "starting_after"),
    "account_statement": ("created_gte", "created_lt", "limit", "starting_after"),
    "list_payments": ("status", "order_id", "limit", "starting_after"),
    "list_refunds": ("payment_id", "limit", "starting_after"),
    "list_payouts": ("limit", "starting_after"),
    "list_merchants": ("name", "limit", "starting_after"),
    "list_blocklist": ("limit", "starting_after"),
    "account_balances": ("at",),
    "list_events": ("type", "object_id", "limit", "starting_after"),
    "list_deliveries": ("status", "event_id", "limit", "starting_after"),
    "list_invoices": ("order_id", "limit", "starting_after"),
    "create_reconciliation": ("provider", "date"),
}
# What parse_time (edge/app.py) accepts: unix seconds below 2**33, or an RFC 3339 time from 1970 to 2262.
TIME_SCHEMA = {"anyOf": [{"type": "string", "pattern": "^[0-9]{1,10}$"}, {"type": "string", "format": "date-time"}],
               "description": "unix seconds (below 2**33) or an RFC 3339 time (1970 to 2262)"}
# The values each list's `status` (or `type`) filter takes (parse_status refuses any other).
STATUS_FILTERS = {"list_orders": ORDER_STATUSES, "list_payments": PAYMENT_STATUSES,
                  "list_deliveries": DELIVERY_STATUSES}
TYPE_FILTERS = {"list_events": EVENT_TYPES}
QUERY_SCHEMAS = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
    "created_gte": TIME_SCHEMA,
    "created_lt": TIME_SCHEMA,
    "at": TIME_SCHEMA,
}
# A route's `{name}`, a whole segment or part of one (`{id}.png`).
PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def document(routes) -> dict:
    return _document(tuple((route.method, route.path, route.handler.__name__) for route in routes))


@functools.cache
def _document(routes: tuple[tuple[str, str, str], ...]) -> dict:
    types = [kind for name in OPERATIONS for kind in OPERATIONS[name][1:3] if kind is not None]
    types += [kind for _, kind in FORM_REQUESTS.values()]
    schemas_list, components = msgspec.json.schema_components(
        [*types, views.ErrorResponse], ref_template="#/components/schemas/{name}")
    schema_of = dict(zip([*types, views.ErrorResponse], schemas_list))
    paths: dict[str, dict] = {}
    for method, path, handler in routes:
        summary, request_type, response_type, auth = OPERATIONS[handler]
        media_type, success_schema = TEXT_RESPONSES.get(handler, ("application/json", schema_of[response_type]))
        success = {"content": {media_type: {"schema": success_schema}}}
        operation = {
            "operationId": handler,
            "summary": summary,
            "description": f"Authentication: {auth}.",
            "parameters": _parameters(path, handler, method),
            "responses": {
                "200": {"description": "success", **success},
                **{status: {"description": "error", "content": {"application/json": {
                    "schema": schema_of[views.ErrorResponse]}}} for status in ERROR_STATUSES},
                **{status: {"description": "not ready", **success}
                   for status in SUCCESS_SHAPED_STATUSES.get(handler, ())},
            },
        }
        if auth != "none":
            operation["security"] = [{"bearer": []}]
        if request_type is not None:
            operation["requestBody"] = {"required": handler not in OPTIONAL_BODIES, "content": {"application/json": {
                "schema": schema_of[request_type]}}}
        if handler in OTHER_REQUEST_MEDIA:
            other_media_type, other_schema = OTHER_REQUEST_MEDIA[handler]
            operation["requestBody"]["content"][other_media_type] = {"schema": other_schema}
        if handler in FORM_REQUESTS:
            form_media_type, form_type = FORM_REQUESTS[handler]
            operation["requestBody"] = {"required": True, "content": {form_media_type: {
                "schema": schema_of[form_type]}}}
        paths.setdefault(path, {})[method.lower()] = operation
    return _json_schema_patterns({
        "openapi": "3.1.0",
        "info": {"title": "paygate", "version": "1"},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })


def _json_schema_patterns(node):
    """`node` with its patterns' Python end of text (\\Z, edge/schemas.py) written as JSON Schema's `$`."""
    if isinstance(node, dict):
        return {name: value.replace("\\Z", "$") if name == "pattern" and isinstance(value, str)
                else _json_schema_patterns(value) for name, value in node.items()}
    if isinstance(node, list):
        return [_json_schema_patterns(item) for item in node]
    return node


def _parameters(path: str, handler: str, method: str) -> list[dict]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
                  for name in PATH_PARAMETER.findall(path)]
    for name in QUERY_PARAMETERS.get(handler, ()):
        choices = {"status": STATUS_FILTERS, "type": TYPE_FILTERS}.get(name, {}).get(handler)
        schema = {"type": "string", "enum": list(choices)} if choices else QUERY_SCHEMAS.get(name, {"type": "string"})
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
    if method == "POST":
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
    return parameters
