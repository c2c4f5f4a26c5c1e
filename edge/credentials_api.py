"""Credential rotation over HTTP: a new set for a merchant, and the list of its live sets (never their secrets)."""

import time

from aiohttp import web

from actors.merchant_secrets import SecretSealer, random_secret, seal_context
from edge import schemas
from edge.auth import hash_secret
from edge.errors import ApiError
from edge.http import body_of, merchant_visible, new_id, raise_for, respond, run
from engine import views
from engine.credentials import live_sets
from engine.records import Credential, Merchant, RotateCredentials


async def create_api_key(request: web.Request) -> web.Response:
    merchant = await merchant_visible(request)
    fields, body = await body_of(request, schemas.ApiKeyCreate)
    return respond(request, await rotate(request, merchant, fields, body))


async def rotate(request: web.Request, merchant: Merchant, fields: schemas.ApiKeyCreate,
                 body: bytes) -> views.ApiKeyOut:
    """A new credential set, its secrets shown in this answer only; the sets live before it keep working
    `expires_in` seconds."""
    credential_id = new_id("key_", request, merchant.id)
    sealer: SecretSealer = request.app["merchant_secrets"].sealer
    shown = {"api_key": f"sk_{merchant.id}_{random_secret()}", "client_secret": f"cs_{random_secret()}",
             "signing_secret": f"sig_{random_secret()}", "webhook_secret": f"whsec_{random_secret()}"}
    credential = Credential(
        id=credential_id, api_key_hash=hash_secret(shown["api_key"]),
        client_secret_hash=hash_secret(shown["client_secret"]),
        sealed_signing_secret=sealer.seal(shown["signing_secret"], seal_context(merchant.id, credential_id, "signing")),
        sealed_webhook_secret=sealer.seal(shown["webhook_secret"], seal_context(merchant.id, credential_id, "webhook")),
    )
    command = RotateCredentials(merchant_id=merchant.id, credential=credential, expires_in_s=fields.expires_in,
                                requested_by=request.get("credential_id", ""))
    outcome = await run(request, merchant.id, command, body)
    if outcome.code == "credential_limit_reached":
        raise ApiError(409, "credential_limit_reached", "a merchant has at most 10 live credential sets: rotate with "
                       "a shorter expires_in, or wait for older sets to expire")
    if outcome.code == "credential_in_grace":
        raise ApiError(403, "credential_in_grace", "only the newest credential set (or the admin) may rotate: this "
                       "one is in its grace period")
    raise_for(outcome)
    request.app["merchant_cache"].pop(merchant.id)
    created = next(stored for stored in outcome.record.credentials if stored.id == credential_id)
    out = api_key_out(outcome.record, created)
    if not request.get("replayed"):  # secrets are shown once: a replay under the Idempotency-Key answers the set only
        out.api_key, out.client_secret = shown["api_key"], shown["client_secret"]
        out.signing_secret, out.webhook_secret = shown["signing_secret"], shown["webhook_secret"]
    return out


async def list_api_keys(request: web.Request) -> web.Response:
    return respond(request, api_keys_of(await merchant_visible(request)))


def api_keys_of(merchant: Merchant) -> views.ApiKeyList:
    """The merchant's live sets, newest first, without secrets."""
    now_ns = time.time_ns()
    return views.ApiKeyList("list", [api_key_out(merchant, credential) for credential in live_sets(merchant, now_ns)],
                            False)


def api_key_out(merchant: Merchant, credential: Credential) -> views.ApiKeyOut:
    return views.ApiKeyOut(
        id=credential.id, object="api_key", client_id=merchant.client_id, created_at=views.time_of(credential.created_at),
        expires_at=views.time_of(credential.expires_at) if credential.expires_at else None,
        last_used_at=views.time_of(credential.last_used_at) if credential.last_used_at else None,
    )

