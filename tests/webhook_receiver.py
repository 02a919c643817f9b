"""A real webhook receiver for the tests: a small Starlette app that verifies every signature.

Each path behaves as its name says: `/ok` takes everything, `/flaky` answers 500 to the first
two attempts at each delivery, `/hang` never answers its first attempt at each delivery,
`/redirect` answers 307 to `/ok`, and `/down` answers 503 until `open()` is called.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Received:
    path: str
    id: str
    payload: dict[str, Any]
    #: the status the receiver answered (0 while it has not)
    answered: int = 0


@dataclass
class Receiver:
    secret: str
    #: every verified request, in the order they came, whatever was answered
    requests: list[Received] = field(default_factory=list)
    #: signatures that did not verify (should stay empty)
    forged: list[str] = field(default_factory=list)
    is_open: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        self.is_open = True

    def taken(self, path: str = "/ok") -> list[Received]:
        """The deliveries answered 2xx at `path`, one per webhook-id."""
        attempts = Counter(r.id for r in self.at(path))
        seen: dict[str, Received] = {}
        for received in self.at(path):
            if path == "/flaky" and attempts[received.id] < 3:
                continue
            if path == "/hang" and attempts[received.id] < 2:
                continue
            seen.setdefault(received.id, received)
        return list(seen.values())

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def app(self) -> Starlette:
        verifier = Webhook(self.secret)

        async def hook(request: Request) -> Response:
            body = await request.body()
            try:
                payload = verifier.verify(body, dict(request.headers))
            except Exception as exc:  # noqa: BLE001 - a forged request is recorded, not raised
                self.forged.append(f"{request.url.path}: {exc}")
                return Response(status_code=400)
            path = request.url.path
            received = Received(path, request.headers["webhook-id"], payload)
            with self._lock:
                self.requests.append(received)
                tries = sum(1 for r in self.requests if r.id == request.headers["webhook-id"])
            response = await answer(path, tries)
            received.answered = response.status_code
            return response

        async def answer(path: str, tries: int) -> Response:
            if path == "/flaky" and tries <= 2:
                return Response(status_code=500)
            if path == "/hang" and tries == 1:
                await asyncio.sleep(3600)  # the receiver hangs: the sender must time out
            if path == "/redirect":
                return RedirectResponse("/ok", status_code=307)
            if path == "/down" and not self.is_open:
                return Response(status_code=503)
            return JSONResponse({"ok": True})

        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        return Starlette(routes=[Route("/healthz", healthz),
                                 Route("/{name}", hook, methods=["POST"])])
