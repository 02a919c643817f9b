"""Bench helpers: run `python app.py` on a free loopback port, and read /proc figures."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
# The benches run as scripts from bench/; the contract's words come from the service itself.
sys.path.insert(0, str(ROOT))
from pipeline.contract import TERMINAL_EVENTS  # noqa: E402

__all__ = ["TERMINAL_EVENTS"]

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, total, interrupts) CPU seconds of the whole machine so far, from /proc/stat.

    Interrupts (irq + softirq) belong to no process: loopback traffic is handled there in part.
    """
    ticks = [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS, (ticks[5] + ticks[6]) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name may hold spaces; fields after its closing paren are fixed
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_mib(pid: int) -> float:
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * PAGE_BYTES / 2**20


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    #: seconds from SIGTERM to exit, once stopped
    stop_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def rss_mib(self) -> float:
        return process_rss_mib(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited early with {server.proc.returncode}:\n{server.log_tail()}"
                )
            try:
                if client.get(f"{server.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"server at {server.url} did not become healthy:\n{server.log_tail()}")


def bare_env(port: int) -> dict[str, str]:
    """The environment of the README's `python app.py`, on a loopback `port`: nothing else is set,
    so the service runs on its defaults (the offline writer, as no ANTHROPIC_API_KEY is passed)."""
    return {"PATH": os.environ.get("PATH", ""), "HOST": "127.0.0.1", "PORT": str(port)}


@contextmanager
def run_server(*, script: Path = APP, bare: bool = False, **env: str) -> Iterator[Server]:
    """Run `script` (the service) on a free port; on exit SIGTERM it, then kill.

    By default with the offline writer, no rate limit and WARNING logs, plus `env`; `bare` runs
    it with only HOST and PORT set (`bare_env`), as the README starts it.
    """
    port = free_port()
    full_env = bare_env(port) if bare else {
        **bare_env(port),
        "LLM_PROVIDER": "offline",
        "RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    log_dir = Path(tempfile.mkdtemp(prefix="articlestream-bench-"))
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        _wait_healthy(server)
        try:
            yield server
        except Exception as exc:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {proc.returncode} during the run "
                    f"(log: {log_path}):\n{server.log_tail()}"
                ) from exc
            raise
        else:
            # a clean run leaves no log behind; a failed one keeps it, named in the error
            shutil.rmtree(log_dir, ignore_errors=True)
    finally:
        if proc.poll() is None:
            stopping = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
                server.stop_s = time.perf_counter() - stopping
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)


def metric(url: str, name: str) -> float:
    """The sum of the service's /metrics samples named `name` (labels and all, or any labels)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10.0).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
