"""One attempt at a webhook delivery: a signed POST to an address that was just checked.

The target's name is resolved and every address checked right before the connection
(`webhook_target.resolve`), and the request goes to that address: the URL carries the IP,
the `Host` header and TLS (SNI and the certificate check, httpcore's `sni_hostname`
extension) carry the name. So a name that resolves to a public address at the check and
to a private one a moment later cannot steer the connection. Redirects are not followed,
no proxy from the environment is used, and at most RESPONSE_CAP_BYTES of the answer are read.
"""

from __future__ import annotations

import ipaddress
import logging

import anyio
import httpx2

from .webhook_target import Address, InvalidWebhook, Target, parse, resolve

logger = logging.getLogger(__name__)

#: how much of a receiver's answer is read before the connection is closed
RESPONSE_CAP_BYTES = 4096
USER_AGENT = "ArticleStream-Webhooks/1"


class AttemptFailed(Exception):
    """The receiver did not take the delivery; the message says why (it goes on the job)."""


class Sender:
    """Sends attempts over one client; `aclose()` when done."""

    def __init__(self, *, allow_private: bool, timeout_s: float) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        # No keep-alive: a pooled connection is keyed by address, and must not carry a
        # request for another name than the one its TLS session was checked for.
        self._client = httpx2.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=timeout_s,
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=0))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body`; the status of a 2xx answer, else AttemptFailed."""
        try:
            with anyio.fail_after(self.timeout_s):
                target = parse(url, allow_private=self.allow_private)
                addresses = await resolve(target, allow_private=self.allow_private)
                return await self._post(target, addresses, body, headers)
        except TimeoutError:
            raise AttemptFailed(f"no answer within {self.timeout_s:g} s") from None
        except InvalidWebhook as exc:
            raise AttemptFailed(str(exc)) from None

    async def _post(self, target: Target, addresses: list[Address], body: bytes,
                    headers: dict[str, str]) -> int:
        failure = ""
        for address in addresses:
            try:
                return await self._post_to(target, address, body, headers)
            except httpx2.ConnectError as exc:
                failure = f"cannot connect to {address}: {exc}"  # the next address may answer
            except httpx2.TimeoutException:
                raise AttemptFailed(f"no answer within {self.timeout_s:g} s") from None
            except httpx2.HTTPError as exc:
                raise AttemptFailed(f"{type(exc).__name__}: {exc}") from None
        raise AttemptFailed(failure)

    async def _post_to(self, target: Target, address: Address, body: bytes,
                       headers: dict[str, str]) -> int:
        host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        request = self._client.build_request(
            "POST", f"{target.scheme}://{host}:{target.port}{target.target}", content=body,
            headers={**headers, "Host": target.host_header, "User-Agent": USER_AGENT,
                     "Content-Type": "application/json"},
            extensions={"sni_hostname": target.host} if target.literal is None else None)
        response = await self._client.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= RESPONSE_CAP_BYTES:
                    break
        finally:
            await response.aclose()
        if 200 <= response.status_code < 300:
            return response.status_code
        if response.is_redirect:
            raise AttemptFailed(f"the receiver answered {response.status_code} (a redirect, "
                                "which is not followed)")
        raise AttemptFailed(f"the receiver answered {response.status_code}")
