"""Who the client is behind proxies, and the warning for a paid key anyone can reach."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from ipaddress import ip_network
from typing import Any

import pytest
from starlette.requests import Request

from api.access import client_address, exposure_warning
from pipeline.settings import Settings

# On Fly: FLY_MACHINE_ID is set, so Fly-Client-IP counts.
BEHIND_PROXIES = Settings(trusted_proxies=(ip_network("10.0.0.0/8"), ip_network("fdaa::/16")),
                          machine_id="148e21ea7e4389")


def request(peer: str | None, headers: dict[str, str] | None = None) -> Request:
    return Request({
        "type": "http",
        "method": "POST",
        "path": "/api/jobs",
        "query_string": b"",
        "headers": [(name.encode(), value.encode()) for name, value in (headers or {}).items()],
        "client": (peer, 40000) if peer is not None else None,
    })


# (case, peer, headers, client)
ADDRESSES = [
    ("untrusted-peer-both-headers", "203.0.113.9",
     {"fly-client-ip": "198.51.100.1", "x-forwarded-for": "198.51.100.2"}, "203.0.113.9"),
    ("trusted-peer-no-headers", "10.0.0.2", {}, "10.0.0.2"),
    ("fly-client-ip", "10.0.0.2", {"fly-client-ip": "198.51.100.1"}, "198.51.100.1"),
    ("fly-client-ip-wins-over-xff", "10.0.0.2",
     {"fly-client-ip": "198.51.100.1", "x-forwarded-for": "198.51.100.2"}, "198.51.100.1"),
    ("xff-first-untrusted-from-the-right", "10.0.0.2",
     {"x-forwarded-for": "198.51.100.7, 203.0.113.1, 10.0.0.5"}, "203.0.113.1"),
    ("xff-all-trusted", "10.0.0.2", {"x-forwarded-for": "10.0.0.9, 10.0.0.5"}, "10.0.0.9"),
    ("xff-blank-hops", "10.0.0.2", {"x-forwarded-for": " , 203.0.113.1,, 10.0.0.5 "},
     "203.0.113.1"),
    # Garbage falls back to the next rule, and at last to the peer.
    ("fly-garbage-then-xff", "10.0.0.2",
     {"fly-client-ip": "not-an-ip", "x-forwarded-for": "203.0.113.1"}, "203.0.113.1"),
    ("fly-list-then-xff", "10.0.0.2",
     {"fly-client-ip": "198.51.100.1, 198.51.100.2", "x-forwarded-for": "203.0.113.1"},
     "203.0.113.1"),
    ("fly-garbage-only", "10.0.0.2", {"fly-client-ip": "999.1.1.1"}, "10.0.0.2"),
    ("fly-empty", "10.0.0.2", {"fly-client-ip": ""}, "10.0.0.2"),
    ("xff-garbage-client", "10.0.0.2", {"x-forwarded-for": "203.0.113.1, <script>"}, "10.0.0.2"),
    ("xff-with-port", "10.0.0.2", {"x-forwarded-for": "203.0.113.1:4711"}, "10.0.0.2"),
    ("xff-garbage-left-of-client", "10.0.0.2", {"x-forwarded-for": "garbage, 203.0.113.1"},
     "203.0.113.1"),
    # IPv6, written any way the standard allows, comes back in one form.
    ("ipv6-untrusted-peer", "2001:db8::7", {"fly-client-ip": "2001:db8::1"}, "2001:db8::7"),
    ("ipv6-fly-client-ip", "fdaa::3", {"fly-client-ip": "2001:DB8:0::1"}, "2001:db8::1"),
    ("ipv6-xff", "fdaa::3", {"x-forwarded-for": "2001:db8::5, fdaa::9"}, "2001:db8::5"),
    ("ipv4-mapped", "::ffff:10.0.0.2", {"fly-client-ip": "::ffff:198.51.100.1"}, "198.51.100.1"),
    ("no-client", None, {"fly-client-ip": "198.51.100.1"}, "unknown"),
]


@pytest.mark.parametrize(("peer", "headers", "client"), [case[1:] for case in ADDRESSES],
                         ids=[case[0] for case in ADDRESSES])
def test_client_address(peer: str | None, headers: dict[str, str], client: str) -> None:
    assert client_address(request(peer, headers), BEHIND_PROXIES) == client


def test_off_fly_a_client_cannot_name_itself_with_fly_client_ip() -> None:
    # Another platform's proxy may pass a client's own Fly-Client-IP on untouched.
    elsewhere = replace(BEHIND_PROXIES, machine_id=None)
    headers = {"fly-client-ip": "198.51.100.1", "x-forwarded-for": "203.0.113.1"}
    assert client_address(request("10.0.0.2", headers), elsewhere) == "203.0.113.1"


def test_no_header_is_believed_without_trusted_proxies() -> None:
    headers = {"fly-client-ip": "198.51.100.1", "x-forwarded-for": "198.51.100.2"}
    assert client_address(request("10.0.0.2", headers), Settings()) == "10.0.0.2"


# A real key, no tokens, on every interface: each test changes one of those.
EXPOSED = Settings(llm_provider="anthropic", anthropic_api_key="sk-test", host="0.0.0.0")


def exposed(**changes: Any) -> Settings:
    return replace(EXPOSED, **changes)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "fly-local-6pn", "example.org"])
def test_exposure_warning_for_a_reachable_open_key(host: str) -> None:
    warning = exposure_warning(exposed(host=host))
    assert warning is not None
    assert "anyone who can reach the service can spend the Anthropic key" in warning
    assert "set API_TOKENS" in warning
    assert "sk-test" not in warning


def test_exposure_warning_when_auto_picks_anthropic() -> None:
    assert exposure_warning(exposed(llm_provider="auto")) is not None


@pytest.mark.parametrize("changes", [
    {"llm_provider": "offline"},
    {"llm_provider": "auto", "anthropic_api_key": None},
    {"api_tokens": ("secret-token",)},
    {"host": "127.0.0.1"},
    {"host": "127.8.9.10"},
    {"host": "::1"},
    {"host": "::ffff:127.0.0.1"},
    {"host": "localhost"},
    {"host": "LocalHost"},
], ids=["offline", "auto-without-key", "tokens-set", "loopback-v4", "loopback-v4-range",
        "loopback-v6", "loopback-v4-mapped", "localhost", "localhost-any-case"])
def test_no_exposure_warning(changes: dict[str, Any]) -> None:
    assert exposure_warning(exposed(**changes)) is None


def test_python_app_py_logs_the_warning_once_at_start(start_server: Callable[..., Any]) -> None:
    # Listening on every address is safe here: the test only talks to 127.0.0.1.
    server = start_server(HOST="0.0.0.0", LLM_PROVIDER="anthropic", ANTHROPIC_API_KEY="sk-test")
    warnings = [json.loads(line) for line in server.log().splitlines()
                if json.loads(line)["level"] == "WARNING"]
    assert [line["message"] for line in warnings] == [exposure_warning(Settings(
        host="0.0.0.0", llm_provider="anthropic", anthropic_api_key="sk-test"))]
    assert "sk-test" not in server.log()
