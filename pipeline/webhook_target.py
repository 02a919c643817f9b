"""Where a webhook may be sent: the URL's rules, and the addresses its host is allowed to be.

A target is checked when the job is submitted and again before every connection, because
what a name resolves to can change in between. The connection then goes to an address this
module returned, never to a second lookup. An address is refused when it is not one the
public internet can route to (private, loopback, link-local, unique-local, carrier-grade
NAT, multicast, reserved, unspecified) or when it is a cloud's metadata service, whether it
is written in the URL (in any of the forms a resolver accepts: `127.1`, `0x7f.1`,
`2130706433`, `0177.0.0.1`, IPv4-mapped or NAT64 IPv6) or is what the name resolves to.
`WEBHOOK_ALLOW_PRIVATE=1` lifts the address and scheme rules, for local use and tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ArticleStreamError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_CHARS = 2048
#: how long one lookup of the target's name may take
RESOLVE_TIMEOUT_S = 5.0
#: metadata services at addresses that would otherwise pass (the rest are link-local or ULA)
_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "168.63.129.16",  # Azure's wire server
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192",
    "fd00:ec2::254",
))
#: IPv6 prefixes that carry an IPv4 address in their last 32 bits
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: RFC 8215's local-use NAT64 prefix: where it carries its IPv4 address depends on the site
#: (RFC 6052), so what it reaches cannot be told; refused outright
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")


class InvalidWebhook(ArticleStreamError):
    """A webhook URL that may not be used; the message says what is wrong with it."""


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL: `host` without a trailing dot, lowercase, IPv6 unbracketed."""

    url: str
    scheme: str
    host: str
    port: int
    #: path and query, as sent in the request line
    target: str
    #: the address the host is written as, if it is one
    literal: Address | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse(url: str, *, allow_private: bool) -> Target:
    """The URL's parts, or InvalidWebhook naming what is wrong (the address of a name is
    checked by `resolve`)."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidWebhook(f"The webhook URL is longer than {MAX_URL_CHARS} characters.")
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        raise InvalidWebhook("The webhook URL must be ASCII without spaces or control characters "
                             "(write a non-ASCII host in its xn-- form).")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidWebhook(f"The webhook URL cannot be read: {exc}.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise InvalidWebhook(f"The webhook URL must use https, not {parts.scheme or 'no scheme'}.")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("The webhook URL may not hold a user name or password.")
    if not host:
        raise InvalidWebhook("The webhook URL has no host.")
    if port == 0:
        raise InvalidWebhook("The webhook URL's port cannot be 0.")
    host = host.rstrip(".") if not host.endswith("..") else host
    literal = _literal(host)
    if literal is None:
        labels = host.split(".")
        if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise InvalidWebhook(f"The webhook URL's host {host!r} is not a valid host name.")
        if labels[-1] in ("localhost", "local", "internal", "localdomain") and not allow_private:
            raise InvalidWebhook(f"The webhook URL's host {host!r} is a local name.")
    elif not allow_private:
        check(literal)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url=url, scheme=parts.scheme, host=host if literal is None else str(literal),
                  port=port or (443 if parts.scheme == "https" else 80), target=target,
                  literal=literal)


def check(address: Address) -> None:
    """InvalidWebhook if `address` is not one a webhook may go to."""
    if address in _METADATA:
        raise InvalidWebhook(f"The webhook URL points at {address}, a cloud metadata address.")
    if address in _LOCAL_NAT64:
        raise InvalidWebhook(f"The webhook URL points at {address}, a local-use NAT64 address; "
                             "only public addresses are allowed.")
    inner = embedded_ipv4(address)
    if inner is not None and inner != address:
        try:
            check(inner)
        except InvalidWebhook as exc:
            raise InvalidWebhook(f"The webhook URL points at {address}, which carries "
                                 f"{inner}: {exc}") from None
        return
    if not address.is_global or address.is_multicast:
        raise InvalidWebhook(f"The webhook URL points at {address}, {_kind(address)} address; "
                             "only public addresses are allowed.")


def embedded_ipv4(address: Address) -> Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, compatible, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if (address in _NAT64 or address in _IPV4_COMPATIBLE) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: Address) -> str:
    for name, flag in (("a loopback", address.is_loopback), ("a link-local", address.is_link_local),
                       ("a multicast", address.is_multicast),
                       ("an unspecified", address.is_unspecified),
                       ("a private", address.is_private)):
        if flag:
            return name
    if address in ipaddress.ip_network("100.64.0.0/10"):
        return "a carrier-grade NAT"
    return "a reserved"


def _literal(host: str) -> Address | None:
    """The address `host` spells, in any form a resolver would read as one; None for a name."""
    try:
        return ipaddress.ip_address(host.split("%")[0]) if ":" in host else ipaddress.IPv4Address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not _NUMBER.fullmatch(parts[-1]):
        return None  # a name (its last label is not a number)
    if len(parts) > 4 or not all(_NUMBER.fullmatch(part) for part in parts):
        raise InvalidWebhook(f"The webhook URL's host {host!r} is not a valid address.")
    try:
        numbers = [_number(part) for part in parts]
    except ValueError:
        raise InvalidWebhook(f"The webhook URL's host {host!r} is not a valid address.") from None
    # inet_aton's forms: a.b.c.d, a.b.c (c: 16 bits), a.b (b: 24 bits), a (32 bits)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise InvalidWebhook(f"The webhook URL's host {host!r} is not a valid address.")
    value = last
    for shift, n in enumerate(reversed(head), start=1):
        value |= n << (8 * (4 - shift))
    return ipaddress.IPv4Address(value)


def _number(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    return int(part)


async def resolve(target: Target, *, allow_private: bool) -> list[Address]:
    """The addresses to connect to, each checked; InvalidWebhook if the host does not
    resolve or any of its addresses is refused (one bad address spoils the name)."""
    if target.literal is not None:
        if not allow_private:
            check(target.literal)
        return [target.literal]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise InvalidWebhook(f"The webhook URL's host {target.host!r} does not resolve "
                             f"({exc.strerror if isinstance(exc, OSError) else 'timed out'}).") \
            from None
    addresses: list[Address] = []
    for _, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not allow_private:
            check(address)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidWebhook(f"The webhook URL's host {target.host!r} has no address.")
    return addresses
