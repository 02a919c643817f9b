"""What each speed fix bought: the same 1,000-job run against the service at several commits.

    .venv/bin/python bench/fixes.py a82f1da eb4a7fc 0a11130 HEAD    # prints a table, writes nothing

Each commit is checked out into a temporary git worktree, and its `app.py` is started by this
checkout's bench code (the `jobs` part's settings and clients), so only the service differs.
The commits run one after another on the same machine, in the order given.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _measure import Figures
from _server import ROOT, run_server
from concurrent_jobs import DEFAULT_CLIENTS, jobs_env, report, run_jobs, warm_up

SHOWN = ("done", "completion_p95_s", "server_cpu_ms_per_job", "events_per_job",
         "done_event_latency_p99_ms", "server_rss_mib_peak", "machine_busy_pct")


@contextmanager
def app_at(commit: str) -> Iterator[Path]:
    """The service's `app.py` as it was at `commit`, in a temporary worktree."""
    with tempfile.TemporaryDirectory(prefix="articlestream-fix-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit],
                       cwd=ROOT, check=True)
        try:
            yield tree / "app.py"
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


def measure(commit: str, jobs: int, delay_ms: int, clients: int) -> Figures:
    with app_at(commit) as app, run_server(script=app, **jobs_env(jobs, delay_ms)) as server:
        warm_up(server)
        run = run_jobs([server], jobs, clients, timeout_s=120.0 + jobs * 0.1)
    figures = Figures()
    report(run, delay_ms, figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    args = parser.parse_args()
    rows = []
    for commit in args.commits:
        name = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        figures = measure(commit, args.jobs, args.delay_ms, args.clients)
        rows.append((f"{commit} ({name})" if commit != name else name,
                     [figures.get(f) for f in SHOWN]))
    print(f"{args.jobs} jobs at OFFLINE_LLM_DELAY_MS={args.delay_ms}, each commit's app.py")
    print("| commit | " + " | ".join(SHOWN) + " |")
    print("| --- " * (len(SHOWN) + 1) + "|")
    for label, values in rows:
        print(f"| {label} | " + " | ".join(v.text if v else "" for v in values) + " |")


if __name__ == "__main__":
    main()
