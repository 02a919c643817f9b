"""Shared fixtures: a real server on a free loopback port, as a subprocess or in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def serve_app() -> Iterator[object]:
    """Factory: `serve_app(app)` serves an ASGI app with uvicorn in a thread; returns its URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def serve(app: object) -> str:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)  # off the main thread it leaves signals alone
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url)
        return url

    yield serve
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
