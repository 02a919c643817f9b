"""Bench part: N jobs at once on two instances sharing one Redis.

Run alone from the repository root: `.venv/bin/python bench/instances.py --jobs 1000`
(bench/run.py runs it as the `redis` part; the same N on one instance without Redis is its
`jobs` part). It starts redis-server (append-only file in a temporary folder) and the instances
on free 127.0.0.1 ports. The clients alternate: job i is submitted to instance i % 2 and
streamed from the other one. The figures are those of the `jobs` part (server CPU summed over
both instances), plus Redis's: its CPU and memory per job, and the connections each instance
held at once (CLIENT LIST, whose names carry each instance's pid). A job not done within
RUN_TIMEOUT_S of the start counts as a client failure, "not finished".
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from _measure import Figures, Sampler, wait_for
from _server import Server, free_port, process_rss_mib, run_server
from concurrent_jobs import DEFAULT_CLIENTS, jobs_env, report, run_jobs, warm_up

SAMPLE_INTERVAL_S = 0.25
HARNESS_NAME = "bench-harness"
#: a job not done this long after its submit is reported as not finished (150 x the ideal)
RUN_TIMEOUT_S = 90.0


@dataclass
class RedisProcess:
    url: str
    pid: int


@contextmanager
def redis_server() -> Iterator[RedisProcess]:
    """redis-server on a free loopback port, with an append-only file in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="articlestream-bench-redis-"))
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing (sh tests/install-system-deps.sh installs it)"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(folder), "--save", "", "--appendonly", "yes",
                             "--appendfsync", "everysec", "--logfile", str(folder / "log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    try:
        if wait_for(lambda: _answers(client), 10.0, 0.02) is None:
            raise RuntimeError(f"redis-server did not answer on port {port}: {folder / 'log'}")
        yield RedisProcess(f"redis://127.0.0.1:{port}/0", proc.pid)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class ConnectionSampler(Sampler):
    """The most Redis connections each instance held at once, from CLIENT LIST every 250 ms.

    The service names each connection after its instance (`<host>-<pid>-<random>`); one it has
    opened but not named yet is counted as unnamed (the harness names its own, and skips them);
    `total_peak` counts every connection but the harness's."""

    def __init__(self, url: str, servers: list[Server]) -> None:
        super().__init__(SAMPLE_INTERVAL_S, "redis-clients")
        self.client = redis.Redis.from_url(url, client_name=HARNESS_NAME)
        self.servers = servers
        self.peak: Counter[int] = Counter()
        self.unnamed_peak = 0
        self.total_peak = 0

    def sample(self) -> None:
        names = [entry["name"] for entry in self.client.client_list() if entry["name"] != HARNESS_NAME]
        for number, server in enumerate(self.servers, 1):
            self.peak[number] = max(self.peak[number], sum(1 for n in names if f"-{server.pid}-" in n))
        self.unnamed_peak = max(self.unnamed_peak, names.count(""))
        self.total_peak = max(self.total_peak, len(names))

    def __enter__(self) -> ConnectionSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.client.close()


def part_redis(*, jobs: int, delay_ms: int, clients: int, instances: int = 2) -> Figures:
    """`jobs` jobs at once on `instances` instances sharing one Redis; job i is submitted to
    instance i % n and streamed from instance (i + 1) % n."""
    figures = Figures()
    env = jobs_env(jobs, delay_ms)
    figures.add("instances", instances)
    figures.add("client_processes", min(clients, jobs))
    with redis_server() as store, ExitStack() as stack:
        servers = [stack.enter_context(run_server(REDIS_URL=store.url, **env)) for _ in range(instances)]
        for server in servers:
            warm_up(server)
        monitor = redis.Redis.from_url(store.url, client_name=HARNESS_NAME)
        memory_before = monitor.info("memory")["used_memory"]
        with ConnectionSampler(store.url, servers) as connections:
            run = run_jobs(servers, jobs, clients, timeout_s=RUN_TIMEOUT_S, extra_pids=[store.pid])
        memory_after = monitor.info("memory")["used_memory"]
        keys = monitor.dbsize()
        monitor.close()
        redis_rss = process_rss_mib(store.pid)
    report(run, delay_ms, figures)
    figures.add("redis_server_cpu_ms_per_job", run.usage.extra_cpu_s * 1000 / jobs, ".2f")
    figures.add("redis_memory_kib_per_job", (memory_after - memory_before) / 1024 / jobs, ".1f")
    figures.add("redis_keys_after", keys)
    figures.add("redis_rss_mib_after", redis_rss, ".1f")
    for number in range(1, instances + 1):
        figures.add(f"redis_connections_peak_instance{number}", connections.peak[number])
    figures.add("redis_connections_unnamed_peak", connections.unnamed_peak)
    figures.add("redis_connections_total_peak", connections.total_peak)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes")
    args = parser.parse_args()
    part_redis(jobs=args.jobs, delay_ms=args.delay_ms, clients=args.clients).print()


if __name__ == "__main__":
    main()
