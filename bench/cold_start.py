"""Bench part: cold start, from the process's start to the first 200 from /readyz.

Run alone from the repository root: `.venv/bin/python bench/cold_start.py --runs 5`.
Each run starts `python app.py` as the README runs it (only HOST and PORT set, so the offline
writer and every default) and asks /readyz over a fresh connection every 5 ms until it answers
200. For scale it also times a bare `python -c pass` of the same interpreter. Each run reads the
server's RSS once it is ready; one more run with `MAX_RUNNING_JOBS=100000` shows what capacity
costs before it is used.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import Figures
from _server import APP, ROOT, bare_env, free_port, load_average, percentile, process_rss_mib

POLL_INTERVAL_S = 0.005
BIG_CAPACITY = {"MAX_RUNNING_JOBS": "100000", "MAX_QUEUED_JOBS": "100000"}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def readyz_status(port: int) -> int | None:
    """The status of one GET /readyz, or None when nothing listens yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def one_start(log_dir: Path, **env: str) -> tuple[float, float]:
    """Seconds from start to ready, and the RSS (MiB) then."""
    port = free_port()
    with (log_dir / f"server-{port}.log").open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(APP)], cwd=ROOT, env={**bare_env(port), **env},
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        while readyz_status(port) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise RuntimeError(f"/readyz did not answer 200 within {START_TIMEOUT_S:.0f} s")
            time.sleep(POLL_INTERVAL_S)
        return time.perf_counter() - started, process_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


def bare_interpreter_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def part_cold_start(*, runs: int) -> Figures:
    figures = Figures()
    figures.add("runs", runs)
    figures.add("load_average_before", load_average())
    with tempfile.TemporaryDirectory(prefix="articlestream-bench-") as folder:
        starts = [one_start(Path(folder)) for _ in range(runs)]
        _, big_rss = one_start(Path(folder), **BIG_CAPACITY)
    times = [seconds for seconds, _ in starts]
    rss = percentile([mib for _, mib in starts], 0.5)
    figures.add("start_to_ready_p50_s", percentile(times, 0.5), ".3f")
    figures.add("start_to_ready_min_s", min(times), ".3f")
    figures.add("start_to_ready_max_s", max(times), ".3f")
    bare = [bare_interpreter_s() for _ in range(runs)]
    figures.add("python_c_pass_p50_s", percentile(bare, 0.5), ".3f")
    figures.add("rss_mib_at_ready", rss, ".1f")
    figures.add("rss_mib_at_ready_max_running_jobs_100000", big_rss, ".1f")
    figures.add("rss_mib_added_by_max_running_jobs_100000", big_rss - rss, ".1f")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    part_cold_start(runs=args.runs).print()


if __name__ == "__main__":
    main()
