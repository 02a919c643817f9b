"""The webhook address rules: every form of a forbidden address is refused at submit.

These run in-process under `no_outside_packets`, which refuses any connect and any name
lookup that is not loopback before it happens: a broken rule fails the test, it cannot
send a packet anywhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient

from app import create_app
from pipeline.settings import Settings
from pipeline.webhook_target import InvalidWebhook, parse, resolve

from .test_limits import assert_error
from .webhook_receiver import new_secret

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "testserver"}


@pytest.fixture
def no_outside_packets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse, in this process, any connect to or lookup of a non-loopback peer."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def loopback(address: Any) -> bool:
        return isinstance(address, tuple) and str(address[0]) in ("127.0.0.1", "::1") or \
            isinstance(address, (str, bytes))  # a Unix socket

    def connect(self: socket.socket, address: Any) -> None:
        if not loopback(address):
            raise AssertionError(f"a connect to {address!r} was attempted")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not loopback(address):
            raise AssertionError(f"a connect to {address!r} was attempted")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in _LOOPBACK_NAMES:
            raise AssertionError(f"a lookup of {name!r} was attempted")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture
def client(no_outside_packets: None) -> Iterator[TestClient]:
    settings = Settings(llm_provider="offline", offline_llm_delay_ms=1,
                        webhook_secret=new_secret())
    with TestClient(create_app(settings)) as test_client:
        yield test_client


REFUSED = [
    # loopback, however written
    "https://127.0.0.1/", "https://127.1/", "https://0x7f.1/", "https://0177.0.0.1/",
    "https://2130706433/", "https://0x7f000001/", "https://127.0.0.1./", "https://[::1]/",
    "https://[::ffff:127.0.0.1]/", "https://[::ffff:7f00:1]/", "https://[64:ff9b::7f00:1]/",
    "https://[0:0:0:0:0:ffff:127.0.0.1]/", "https://0/", "https://0.0.0.0/", "https://[::]/",
    # private, link-local, unique-local, carrier-grade NAT
    "https://10.0.0.1/", "https://172.16.5.4/", "https://192.168.1.1/", "https://169.254.1.1/",
    "https://[fe80::1]/", "https://[fc00::1]/", "https://[fd12:3456::1]/", "https://100.64.0.1/",
    "https://100.127.255.254/", "https://[::ffff:10.1.2.3]/", "https://[64:ff9b::a00:1]/",
    "https://[64:ff9b:1::808:808]/",  # local-use NAT64: where the IPv4 sits is the site's choice
    "https://[2002:a00:1::]/", "https://012.0.0.1/", "https://0xa.0.0.1/", "https://167772161/",
    # cloud metadata
    "https://169.254.169.254/latest/meta-data/", "https://[fd00:ec2::254]/",
    "https://100.100.100.200/", "https://168.63.129.16/", "https://[::ffff:169.254.169.254]/",
    "https://[::ffff:a9fe:a9fe]/", "https://2852039166/", "https://0xa9.0xfe.0xa9.0xfe/",
    "https://[64:ff9b::a9fe:a9fe]/", "https://169.254.169.254./",
    # multicast, reserved, documentation
    "https://224.0.0.1/", "https://240.0.0.1/", "https://255.255.255.255/", "https://192.0.2.1/",
    "https://[ff02::1]/",
    # local names, and what is not a URL to a public https host
    "https://localhost/", "https://localhost./", "https://metadata.google.internal/",
    "https://printer.local/", "http://example.com/", "ftp://example.com/", "example.com",
    "https:///path", "https://user:pw@example.com/", "https://256.1.1.1/", "https://1.2.3.4.5/",
    "https://0x100000000/", "https://exa mple.com/", "https://bücher.example/",
    "https://-bad-.example/", "https://example.com:0/", "https://" + "a" * 2050 + ".com/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_forbidden_targets_are_refused_at_submit(client: TestClient, url: str) -> None:
    response = client.post("/api/jobs", json={"topic": "Bees", "webhook": url})
    assert_error(response, 422, "invalid_webhook")


def test_the_refusal_names_what_is_wrong(client: TestClient) -> None:
    def message(url: str) -> str:
        response = client.post("/api/jobs", json={"topic": "Bees", "webhook": url})
        return str(response.json()["error"]["message"])

    assert "https" in message("http://example.com/")
    assert "metadata" in message("https://169.254.169.254/")
    assert "127.0.0.1" in message("https://0x7f.1/")
    assert "loopback" in message("https://[::ffff:127.0.0.1]/")
    assert "carrier-grade NAT" in message("https://100.64.0.1/")


@pytest.mark.parametrize("url, address", [
    ("https://8.8.8.8/hook", "8.8.8.8"), ("https://134744072/", "8.8.8.8"),
    ("https://0x8.0x8.0x8.0x8/", "8.8.8.8"), ("https://[2606:4700:4700::1111]:8443/x?y=1",
                                              "2606:4700:4700::1111"),
    ("https://[::ffff:8.8.8.8]/", "::ffff:8.8.8.8"),
])
def test_public_addresses_pass_the_rules_without_a_lookup(no_outside_packets: None, url: str,
                                                          address: str) -> None:
    target = parse(url, allow_private=False)
    assert target.literal is not None
    addresses = anyio.run(lambda: resolve(target, allow_private=False))
    assert addresses == [ipaddress.ip_address(address)]


def test_a_name_that_resolves_to_loopback_is_refused_at_connection_time(
        no_outside_packets: None) -> None:
    # parsed with the rules lifted (so `localhost` passes the name rule), checked without:
    # what the name resolves to is refused, whatever the name looks like.
    target = parse("https://localhost./hook", allow_private=True)
    assert target.host == "localhost"
    with pytest.raises(InvalidWebhook, match="loopback"):
        anyio.run(lambda: resolve(target, allow_private=False))


def test_the_rules_are_lifted_for_local_use() -> None:
    target = parse("http://127.0.0.1:8080/hook?x=1", allow_private=True)
    assert (target.host, target.port, target.target, target.host_header) == \
        ("127.0.0.1", 8080, "/hook?x=1", "127.0.0.1:8080")
