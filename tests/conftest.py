"""Shared fixtures: a real server on a free loopback port, as a subprocess or in-process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page

from .browser import launched, opened
from .ports import free_port
from .redis_server import RedisServer
from .redis_server import started as redis_started
from .webhook_receiver import Receiver, new_secret

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 15.0


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll /healthz until it answers; a readiness wait, not a sleep for timing."""
    with httpx.Client(timeout=1.0) as client:
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited early with {proc.returncode}")
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            threading.Event().wait(0.05)
    raise RuntimeError(f"server at {url} did not become healthy")


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    """Factory: `start_server(**env)` runs `python app.py` on a free loopback port."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        port = free_port()
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LLM_PROVIDER": "offline",
            "OFFLINE_LLM_DELAY_MS": "20",
            "RATE_LIMIT_PER_MINUTE": "0",
            **env,
        }
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py")],
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)
        started.append(server)
        wait_until_healthy(server.url, proc)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(timeout=10)


@dataclass
class ServedApp:
    url: str
    app: Any
    loop: asyncio.AbstractEventLoop

    def request_shutdown(self) -> None:
        """What SIGTERM does in `python app.py`: start the drain, in the server's loop."""
        self.loop.call_soon_threadsafe(self.app.state.shutdown_requested.set)

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine in the server's loop (to look at the app's state) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    """Factory: `serve_app(app)` serves an ASGI app with uvicorn in a thread on a free port."""
    running: list[tuple[uvicorn.Server, threading.Thread, asyncio.AbstractEventLoop]] = []

    def serve(app: Any) -> ServedApp:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)  # off the main thread it leaves signals alone
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),),
                                  daemon=True)
        thread.start()
        running.append((server, thread, loop))
        served = ServedApp(f"http://127.0.0.1:{port}", app, loop)
        wait_until_healthy(served.url)
        return served

    yield serve
    for server, thread, loop in running:
        server.should_exit = True
        thread.join(timeout=15)
        if not thread.is_alive():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port; stopped afterwards."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = redis_started(folder)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, one per test module."""
    with launched() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page in a context of its own, watched by `tests.browser.WATCH_SCRIPT`."""
    with opened(browser) as fresh:
        yield fresh


@pytest.fixture
def receiver(serve_app: Callable[[Any], ServedApp]) -> Iterator[tuple[Receiver, str]]:
    """A webhook receiver on a free loopback port that verifies every signature, and its URL."""
    hooks = Receiver(new_secret())
    yield hooks, serve_app(hooks.app()).url
    assert hooks.forged == [], "every request must carry a valid signature"
