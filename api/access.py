"""Who is calling: bearer tokens (compared in constant time) and the client's address.

Also the start-up warning for a paid key that anyone can reach.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.requests import HTTPConnection

from pipeline.settings import Settings

from .errors import ApiError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def owner_of(conn: HTTPConnection, settings: Settings, *, allow_query: bool = False) -> str | None:
    """The caller's owner id (a hash of its token), or None when the service is open.

    Raises 401 when tokens are configured and the request has none or a wrong one.
    """
    if not settings.api_tokens:
        return None
    token = _bearer(conn.headers.get("authorization", ""))
    if token is None and allow_query:
        # EventSource cannot send headers, so the stream also takes ?token=.
        token = conn.query_params.get("token")
    if token is None or not _known(token, settings.api_tokens):
        raise ApiError(401, "unauthorized", "A valid bearer token is required.",
                       headers={"WWW-Authenticate": 'Bearer realm="articlestream"'})
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def client_address(conn: HTTPConnection, settings: Settings) -> str:
    """The client's IP; Fly-Client-IP (on Fly) and X-Forwarded-For are believed only from a
    trusted proxy."""
    peer = conn.client.host if conn.client else "unknown"
    if not _trusted(_ip(peer), settings):
        return peer
    # On Fly (FLY_MACHINE_ID is set) its proxy sets Fly-Client-IP itself, so it wins over a
    # chain the client may have begun. Elsewhere a proxy may pass a client's own header on.
    if settings.machine_id and (fly_client := _ip(conn.headers.get("fly-client-ip", ""))):
        return str(fly_client)
    # Walk the chain from the nearest hop; the first untrusted address is the client.
    header = conn.headers.get("x-forwarded-for", "")
    hops = [_ip(hop) for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, settings):
            # Not an IP where the client should be: nothing in the chain can be believed.
            return str(hop) if hop else peer
    # Every hop is a trusted proxy: the farthest is the nearest to the client we can see.
    return str(hops[0]) if hops else peer


def exposure_warning(settings: Settings) -> str | None:
    """A warning when anyone who can reach the service can spend the Anthropic key, else None."""
    if settings.provider != "anthropic" or settings.api_tokens or _loopback(settings.host):
        return None
    return (f"An Anthropic key is configured, API_TOKENS is unset and HOST is {settings.host}, so "
            "anyone who can reach the service can spend the Anthropic key; set API_TOKENS to "
            "require a bearer token.")


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _known(token: str, tokens: tuple[str, ...]) -> bool:
    # Check every token, so the time taken says nothing about which one nearly matched.
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def _ip(value: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; one client, one address.
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def _loopback(host: str) -> bool:
    ip = _ip(host)
    return ip.is_loopback if ip else host.strip().lower() == "localhost"


def _trusted(ip: IPAddress | None, settings: Settings) -> bool:
    return ip is not None and any(ip in network for network in settings.trusted_proxies)
