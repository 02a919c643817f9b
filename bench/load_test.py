"""Bench part: locust, headless, against the service started as the README starts it.

Run alone from the repository root: `.venv/bin/python bench/load_test.py --users 200 --seconds 60`.
The server is `python app.py` with only HOST and PORT set (so the offline writer at its
default pace and every other default); locust (locustfile.py) runs in a process of its own
with `--exit-code-on-error 1`. Its request table is kept as printed, and its CSV read back for
the figures.
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import Figures, Meter
from _server import ROOT, run_server

#: locust's own start and stop, beyond its run time
LOCUST_GRACE_S = 60.0
ROWS = {
    "POST /api/jobs": "submit",
    "GET /api/jobs/[id]/events": "stream_headers",
    "SSE time to first event": "first_event",
    "SSE time to done": "done",
    " Aggregated": "aggregated",
}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summary_table(output: str) -> str:
    """Locust's last request table and percentile table, as it printed them."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Type ") and "# fails" in line]
    ends = [i for i, line in enumerate(lines) if line.strip().startswith("Aggregated")]
    if not starts or not ends or ends[-1] < starts[-1]:
        return ""
    return "\n".join(lines[starts[-1]:ends[-1] + 1])


def part_locust(*, users: int, spawn_rate: int, seconds: int) -> tuple[Figures, str]:
    """Figures, and locust's request table as it printed it."""
    figures = Figures()
    for name, value in (("users", users), ("spawn_rate", spawn_rate), ("run_time_s", seconds)):
        figures.add(name, value)
    with tempfile.TemporaryDirectory(prefix="articlestream-locust-") as folder, \
            run_server(bare=True) as server:
        prefix = Path(folder) / "locust"
        command = [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless",
                   "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s",
                   "--host", server.url, "--exit-code-on-error", "1", "--only-summary",
                   "--csv", str(prefix)]
        meter = Meter([server.pid])
        cpu_before = children_cpu_s()
        meter.start()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=seconds + LOCUST_GRACE_S)
        usage = meter.stop(children_cpu_s() - cpu_before)
        output = done.stdout + done.stderr
        with (prefix.parent / "locust_stats.csv").open() as stats:
            rows = {f"{row['Type']} {row['Name']}": row for row in csv.DictReader(stats)}
    figures.add("locust_exit_code", done.returncode)
    for key, label in ROWS.items():
        row = rows.get(key)
        if row is None:
            figures.add(f"{label}_requests", "none")
            continue
        figures.add(f"{label}_requests", int(row["Request Count"]))
        figures.add(f"{label}_failures", int(row["Failure Count"]))
        figures.add(f"{label}_median_ms", float(row["Median Response Time"]), ".0f")
        figures.add(f"{label}_p95_ms", float(row["95%"]), ".0f")
        figures.add(f"{label}_p99_ms", float(row["99%"]), ".0f")
        figures.add(f"{label}_per_s", float(row["Requests/s"]), ".2f")
    usage.add_to(figures, clients="locust")
    return figures, summary_table(output) or output[-3000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--spawn-rate", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    figures, table = part_locust(users=args.users, spawn_rate=args.spawn_rate, seconds=args.seconds)
    figures.print()
    print(table)


if __name__ == "__main__":
    main()
