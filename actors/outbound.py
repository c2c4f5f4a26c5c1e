"""Merchant-supplied URLs the gateway calls (webhook_url, callback_url, ipn_url). Under `paygate serve --production`
they must reach a public host: never loopback, a private, shared or link-local range (the cloud metadata address
among them), or any other address that is not globally routable, so no merchant can aim the gateway at the network
it runs in.

Two checks share one rule: the edge refuses a URL whose host is such an address or a local name when it is set, and
the notifier refuses to connect to such an address whatever name led there (`public_only_socket`, checked on the
address the socket is about to connect to, so a name that resolves elsewhere later, DNS rebinding, gains nothing).
"""

import ipaddress
import socket
import urllib.parse

NOT_PUBLIC = "is not a public address"
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class RefusedAddress(OSError):
    """A connection to an address that is not public, refused before it was made."""


def internal_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the address is not a public unicast one (an IPv4 address mapped into IPv6 judged as itself)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


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
            return False  # a name: what it resolves to is checked when it is connected to
    return internal_address(address)


def public_only_socket(address_info: tuple) -> socket.socket:
    """A socket factory for aiohttp's TCPConnector (`socket_factory`): the socket for one resolved address, refused
    (RefusedAddress) when that address is not public. aiohttp connects only to addresses it made sockets for."""
    family, kind, protocol, _, socket_address = address_info
    if internal_address(ipaddress.ip_address(socket_address[0].partition("%")[0])):
        raise RefusedAddress(f"{socket_address[0]} {NOT_PUBLIC}")
    return socket.socket(family, kind, protocol)
