"""Where the server's CPU goes under load: py-spy samples the server through a `jobs` run.

    .venv/bin/python bench/hotspots.py --jobs 1000        # prints the top lines, writes nothing
    .venv/bin/python bench/hotspots.py --commit a82f1da   # the service as it was at a commit

It starts the service as the `jobs` part does, attaches `py-spy record` (raw collapsed stacks,
idle frames left out) for the whole run, and prints the functions with the most samples: `own`
counts samples where the function itself was running, `incl` where it was anywhere on the stack.
A function is named `name (file)`, the file relative to the repository or its package.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from _server import APP, ROOT, run_server
from concurrent_jobs import DEFAULT_CLIENTS, jobs_env, run_jobs, warm_up
from fixes import app_at

PY_SPY = Path(sys.executable).with_name("py-spy")
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def short(frame: str) -> str:
    """`name (file)`, the file cut to the part after the repository or site-packages."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for root in (str(ROOT) + "/", "site-packages/", "lib/python3.11/", "/tree/"):
        if root in file:
            file = file.split(root, 1)[1]
    return f"{match['name']} ({file})"


def top_lines(raw: str, count: int) -> tuple[int, list[tuple[str, int, int]]]:
    """Total samples, and the `count` functions with the most own samples: (name, own, incl)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        frames = [short(f) for f in stack.split(";")]
        # The first frame is the process/thread label py-spy adds; the last is running.
        total += n
        own[frames[-1]] += n
        for name in set(frames[1:]):
            incl[name] += n
    return total, [(name, n, incl[name]) for name, n in own.most_common(count)]


def callers(raw: str, function: str, count: int) -> list[tuple[str, int]]:
    """Who calls the frames whose name starts with `function`, by samples."""
    parents: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = [short(f) for f in stack.split(";")]
        for above, frame in zip(frames, frames[1:]):
            if frame.startswith(function):
                parents[above] += int(samples)
                break
    return parents.most_common(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--commit", help="profile the service at this commit (a temporary worktree)")
    parser.add_argument("--callers", action="append", default=[], metavar="FUNCTION",
                        help="also print who calls FUNCTION (a name's start, e.g. CancelScope._timeout)")
    args = parser.parse_args()

    with (app_at(args.commit) if args.commit else nullcontext(APP)) as app, \
            tempfile.TemporaryDirectory() as tmp, \
            run_server(script=app, **jobs_env(args.jobs, args.delay_ms)) as server:
        warm_up(server)
        out = Path(tmp) / "profile.txt"
        spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(server.pid), "--format", "raw",
                                "--rate", str(args.rate), "--output", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            run = run_jobs([server], args.jobs, args.clients, timeout_s=120.0 + args.jobs * 0.1)
        finally:
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')}")
        raw = out.read_text()
        total, lines = top_lines(raw, args.top)

    done = sum(1 for r in run.results if getattr(r, "terminal", None) == "done")
    print(f"jobs: {args.jobs}, done: {done}, samples: {total} at {args.rate}/s")
    print(f"{'own %':>6} {'incl %':>6}  function (file)")
    for name, own, incl in lines:
        print(f"{100 * own / total:6.1f} {100 * incl / total:6.1f}  {name}")
    for function in args.callers:
        print(f"callers of {function}:")
        for name, n in callers(raw, function, 8):
            print(f"{100 * n / total:6.1f}  {name}")


if __name__ == "__main__":
    main()
