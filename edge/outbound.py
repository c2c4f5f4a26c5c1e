"""Merchant-supplied URLs the gateway calls (webhook_url, callback_url, ipn_url), checked when they are set: under
`paygate serve --production` they must name a public host (the rule, and its check at connection time, are
actors/outbound.py's)."""

from aiohttp import web

from actors.outbound import internal_host
from edge.errors import ApiError


def check_outbound_urls(request: web.Request, **urls: str | None) -> None:
    """400 `url_not_allowed` for the first URL (by its parameter's name) naming an internal host, in production."""
    if not request.app["settings"].production:
        return
    for param, url in urls.items():
        if url and internal_host(url):
            raise ApiError(400, "url_not_allowed", f"{param} must name a public host, not a loopback or private one",
                           param)
