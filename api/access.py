"""Who is calling: bearer tokens (compared in constant time) and the client's address."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.requests import HTTPConnection

from pipeline.settings import Settings

from .errors import ApiError


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
    """The client's IP; X-Forwarded-For is believed only from a trusted proxy."""
    peer = conn.client.host if conn.client else "unknown"
    if not settings.trusted_proxies or not _trusted(peer, settings):
        return peer
    # Walk the chain from the nearest hop; the first untrusted address is the client.
    hops = [hop.strip() for hop in conn.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, settings):
            return hop
    return hops[0] if hops else peer


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


def _trusted(address: str, settings: Settings) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in settings.trusted_proxies)
