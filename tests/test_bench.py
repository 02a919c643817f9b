"""The bench harness still runs: `bench/run.py --smoke` runs every part once with tiny sizes."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT

SMOKE_TIMEOUT_S = 170

#: figures each part must print (a part's label, then names in its rows)
EXPECTED = {
    "one_job": ["wall_p50_s", "wall_p50_over_ideal"],
    "jobs_5": ["done", "completion_p50_s", "completion_p95_s", "completion_p99_s",
               "completion_p95_over_ideal", "stream_first_byte_p50_ms", "done_event_latency_p50_ms",
               "done_event_latency_p99_ms", "events_per_job", "server_cpu_ms_per_job",
               "server_rss_mib_peak", "machine_busy_pct", "other_processes_cpu_s"],
    "memory": ["rss_kib_held_per_finished_job", "run1_rss_mib_after_expiry", "run3_rss_mib_after_expiry",
               "rss_growth_mib_run1_to_run3_after_expiry"],
    "idle": ["server_rss_mib_with_streams", "server_rss_kib_per_stream", "heartbeats_on_time_fraction"],
    "abandon": ["round1_streams_opened", "round1_gauge_zero_after_s", "healthz_200_while_running"],
    "fanout": ["events_per_s", "lag_p99_ms", "sse_starlette_events_per_s", "sse_starlette_lag_p99_ms",
               "events_per_s_over_sse_starlette"],
    "encoder": ["ours_events_per_s", "sse_starlette_events_per_s", "ours_over_sse_starlette"],
    "cold_start": ["start_to_ready_p50_s"],
    "redis": ["done", "completion_p95_s", "redis_memory_kib_per_job", "redis_connections_peak_instance1",
              "redis_connections_peak_instance2"],
    "locust": ["locust_exit_code", "done_requests", "done_p95_ms"],
}


def rows(output: str) -> dict[tuple[str, str], str]:
    """(part, figure) -> value, from the printed table."""
    found = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5:
            found[(cells[0], cells[1])] = cells[2]
    return found


def test_smoke_run_prints_every_part() -> None:
    done = subprocess.run([sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    table = rows(done.stdout)
    missing = [f"{part}.{name}" for part, names in EXPECTED.items() for name in names
               if (part, name) not in table]
    assert not missing, f"not printed: {missing}\n{done.stdout}"
    assert not [key for key in table if key[1] == "error"], done.stdout
    assert table[("jobs_5", "done")] == "5"
    assert table[("redis", "done")] == "4"
    assert table[("locust", "locust_exit_code")] == "0"
    assert "RESULTS.md" not in done.stderr  # a smoke run writes nothing
