"""Merchant-supplied URLs the gateway calls (webhook_url, callback_url, ipn_url). Under `paygate serve --production`
they must name a public host: never loopback, a private, shared or link-local range, or any other address that is
not globally routable, so no merchant can aim the gateway at the network it runs in."""

import ipaddress
import socket
import urllib.parse

from aiohttp import web

from edge.errors import ApiError

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def internal_host(url: str) -> bool:
    """Whether the URL's host is a local name or an address that is not public (in any spelling a resolver takes)."""
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".")
    if not host or host in LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the short, decimal, octal and hex IPv4 forms (127.1, 2130706433, 0x7f.1) resolvers accept
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False  # a name: what it resolves to is checked by whoever calls it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def check_outbound_urls(request: web.Request, **urls: str | None) -> None:
    """400 `url_not_allowed` for the first URL (by its parameter's name) naming an internal host, in production."""
    if not request.app["settings"].production:
        return
    for param, url in urls.items():
        if url and internal_host(url):
            raise ApiError(400, "url_not_allowed", f"{param} must name a public host, not a loopback or private one",
                           param)
