"""Bench part: memory held per finished job, and RSS across back-to-back runs once jobs expire.

Run alone from the repository root: `.venv/bin/python bench/memory.py --jobs 1000`.

- Held per finished job: on a server that keeps jobs (the default `JOB_TTL_SECONDS`), a first
  batch of 50 jobs warms the allocator; then N more jobs run 50 at a time, and the RSS they add,
  over N, is what each finished job holds with its event log. (N at once would not show it: the
  RSS a run needs at its peak is freed after it, and the stored jobs reuse it.)
- Expiry: on a server with a small `JOB_TTL_SECONDS`, a warm-up run of N jobs, then three runs of
  N back to back; after each, the harness waits until the sweep has forgotten every job (the list
  is empty) and reads the RSS. A leak shows as RSS that climbs from run to run. The warm-up is
  there because RSS after a run is the allocator's high-water mark, which follows that run's
  peak: a first run that peaked lower than the next read as 46.6 MiB of "growth" once here,
  then flat (+1.2 MiB) from the second run to the third.
"""

from __future__ import annotations

import argparse

import httpx
from _measure import Figures, wait_for
from _server import Server, run_server
from concurrent_jobs import DEFAULT_CLIENTS, JobResult, jobs_env, run_jobs, warm_up

RUNS = 3
#: jobs at once while measuring what finished jobs hold: few, so that what a run needs only
#: while it runs (its peak) stays small beside what the stored jobs keep
KEPT_BATCH = 50


def done_count(results: list[JobResult | str]) -> int:
    return sum(1 for r in results if isinstance(r, JobResult) and r.terminal == "done")


def stored_jobs(server: Server) -> int:
    response = httpx.get(f"{server.url}/api/jobs", params={"limit": 1}, timeout=10.0)
    return len(response.raise_for_status().json()["jobs"])


def part_memory(*, jobs: int, delay_ms: int, clients: int, ttl_s: float) -> Figures:
    figures = Figures()
    timeout_s = 120.0 + jobs * 0.1
    env = jobs_env(jobs, delay_ms)
    figures.add("jobs_per_run", jobs)
    batch = min(KEPT_BATCH, jobs)
    with run_server(**env) as server:
        warm_up(server)
        run_jobs([server], batch, clients, timeout_s)  # warms the allocator
        before = server.rss_mib()
        kept_done = sum(done_count(run_jobs([server], batch, clients, timeout_s).results)
                        for _ in range(jobs // batch))
        after = server.rss_mib()
    figures.add("kept_batch_jobs", batch)
    figures.add("kept_done", kept_done)
    figures.add("kept_rss_mib_before", before, ".1f")
    figures.add("kept_rss_mib_after", after, ".1f")
    figures.add("rss_kib_held_per_finished_job", (after - before) * 1024 / kept_done if kept_done else "none",
                ".1f")

    sweep_s = min(60.0, max(1.0, ttl_s / 4))  # the service's sweep period (pipeline/runner.py)
    figures.add("job_ttl_s", ttl_s, "g")
    with run_server(**env, JOB_TTL_SECONDS=str(ttl_s)) as server:
        warm_up(server)
        figures.add("expiry_rss_mib_before", server.rss_mib(), ".1f")
        run_jobs([server], jobs, clients, timeout_s)  # the warm-up run: the high-water mark
        wait_for(lambda: stored_jobs(server) == 0, ttl_s + 2 * sweep_s + 10, 0.2)
        figures.add("warmup_rss_mib_after_expiry", server.rss_mib(), ".1f")
        after_expiry: list[float] = []
        for number in range(1, RUNS + 1):
            run = run_jobs([server], jobs, clients, timeout_s)
            figures.add(f"run{number}_done", done_count(run.results))
            figures.add(f"run{number}_rss_mib_peak", run.rss_peak_mib[0], ".1f")
            figures.add(f"run{number}_rss_mib_with_jobs", run.rss_after_mib[0], ".1f")
            waited = wait_for(lambda: stored_jobs(server) == 0, ttl_s + 2 * sweep_s + 10, 0.2)
            figures.add(f"run{number}_all_expired_after_s",
                        waited if waited is not None else "not all expired", ".1f")
            after_expiry.append(server.rss_mib())
            figures.add(f"run{number}_rss_mib_after_expiry", after_expiry[-1], ".1f")
    figures.add("rss_growth_mib_run1_to_run3_after_expiry", after_expiry[-1] - after_expiry[0], ".1f")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--ttl-s", type=float, default=4.0, help="JOB_TTL_SECONDS of the expiry runs")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes")
    args = parser.parse_args()
    part_memory(jobs=args.jobs, delay_ms=args.delay_ms, clients=args.clients, ttl_s=args.ttl_s).print()


if __name__ == "__main__":
    main()
