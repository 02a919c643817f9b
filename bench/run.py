"""The bench harness: every part, one dated table.

    .venv/bin/python bench/run.py                 # every part at full size; writes bench/RESULTS.md
    .venv/bin/python bench/run.py --smoke         # every part once with tiny sizes; prints only
    .venv/bin/python bench/run.py --only fanout   # one part at full size; prints only

Each part starts what it measures itself (`python app.py` on a free 127.0.0.1 port, redis-server,
sse-starlette's baseline app) and drives it from client processes of its own (bench/_clients.py),
so the clients never run on the server's event loop. The table is printed, and written to
bench/RESULTS.md after a full run of every part, with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from _measure import Figures
from _server import ROOT, load_average
from abandoned_streams import part_abandon
from cold_start import part_cold_start
from concurrent_jobs import DEFAULT_CLIENTS, part_jobs, part_one_job
from encoder import part_encoder
from fanout import part_fanout
from idle_streams import part_idle
from instances import part_redis
from load_test import part_locust
from memory import part_memory

RESULTS = ROOT / "bench" / "RESULTS.md"
MIB_150_MB = 150e6 / 2**20


@dataclass(frozen=True)
class Sizes:
    delay_ms: int = 200
    one_job_runs: int = 5
    jobs: tuple[int, ...] = (100, 1000, 2000)
    memory_jobs: int = 1000
    memory_ttl_s: float = 4.0
    idle_jobs: int = 50
    idle_per_job: int = 100
    heartbeat_s: float = 2.0
    idle_window_s: float = 12.0
    abandon_streams: int = 1000
    abandon_jobs: int = 4
    abandon_rounds: int = 2
    fanout_subscribers: int = 1000
    fanout_blockers: int = 60
    encoder_loops: int = 300
    cold_starts: int = 5
    redis_jobs: int = 1000
    locust_users: int = 200
    locust_spawn_rate: int = 50
    locust_seconds: int = 60


FULL = Sizes()
SMOKE = Sizes(delay_ms=50, one_job_runs=1, jobs=(5,), memory_jobs=5, memory_ttl_s=0.5,
              idle_jobs=2, idle_per_job=5, heartbeat_s=0.5, idle_window_s=1.5,
              abandon_streams=10, abandon_jobs=2, abandon_rounds=1, fanout_subscribers=10,
              fanout_blockers=30, encoder_loops=10, cold_starts=1, redis_jobs=4,
              locust_users=5, locust_spawn_rate=5, locust_seconds=5)


@dataclass
class Section:
    """The figures of one part (or one size of it), and any text it printed besides."""

    label: str
    figures: Figures
    text: str = ""


Part = Callable[[Sizes, int], list[Section]]


def one_job(s: Sizes, clients: int) -> list[Section]:
    return [Section("one_job", part_one_job(delay_ms=s.delay_ms, runs=s.one_job_runs))]


def jobs(s: Sizes, clients: int) -> list[Section]:
    return [Section(f"jobs_{n}", part_jobs(jobs=n, delay_ms=s.delay_ms, clients=clients)) for n in s.jobs]


def memory(s: Sizes, clients: int) -> list[Section]:
    return [Section("memory", part_memory(jobs=s.memory_jobs, delay_ms=s.delay_ms, clients=clients,
                                          ttl_s=s.memory_ttl_s))]


def idle(s: Sizes, clients: int) -> list[Section]:
    return [Section("idle", part_idle(jobs=s.idle_jobs, per_job=s.idle_per_job, heartbeat_s=s.heartbeat_s,
                                      window_s=s.idle_window_s, clients=clients))]


def abandon(s: Sizes, clients: int) -> list[Section]:
    return [Section("abandon", part_abandon(streams=s.abandon_streams, jobs=s.abandon_jobs,
                                            rounds=s.abandon_rounds, clients=clients))]


def fanout(s: Sizes, clients: int) -> list[Section]:
    return [Section("fanout", part_fanout(subscribers=s.fanout_subscribers, delay_ms=s.delay_ms,
                                          clients=clients, blockers=s.fanout_blockers))]


def encoder(s: Sizes, clients: int) -> list[Section]:
    return [Section("encoder", part_encoder(delay_ms=s.delay_ms, loops=s.encoder_loops))]


def cold_start(s: Sizes, clients: int) -> list[Section]:
    return [Section("cold_start", part_cold_start(runs=s.cold_starts))]


def redis(s: Sizes, clients: int) -> list[Section]:
    return [Section("redis", part_redis(jobs=s.redis_jobs, delay_ms=s.delay_ms, clients=clients))]


def locust(s: Sizes, clients: int) -> list[Section]:
    figures, table = part_locust(users=s.locust_users, spawn_rate=s.locust_spawn_rate, seconds=s.locust_seconds)
    return [Section("locust", figures, table)]


PARTS: dict[str, Part] = {
    "one_job": one_job, "jobs": jobs, "memory": memory, "idle": idle, "abandon": abandon,
    "fanout": fanout, "encoder": encoder, "cold_start": cold_start, "redis": redis, "locust": locust,
}


@dataclass(frozen=True)
class Target:
    label: str
    figure: str
    text: str
    check: Callable[[float, dict[str, Section]], bool] = field(repr=False)


def _events_not_growing(value: float, sections: dict[str, Section]) -> bool:
    reference = sections.get("jobs_100")
    figure = reference.figures.get("events_per_job") if reference else None
    return figure is not None and figure.number is not None and value <= figure.number * 1.05


TARGETS = [
    Target("one_job", "wall_p50_over_ideal", "<= 1.02", lambda v, _: v <= 1.02),
    Target("jobs_100", "done_event_latency_p99_ms", "<= 20 ms", lambda v, _: v <= 20),
    Target("jobs_1000", "done", "= 1000 (all)", lambda v, _: v == 1000),
    Target("jobs_1000", "completion_p95_s", "<= 2.5 s", lambda v, _: v <= 2.5),
    Target("jobs_1000", "server_cpu_ms_per_job", "<= 2 ms", lambda v, _: v <= 2),
    Target("jobs_1000", "events_per_job", "not growing: <= 1.05 x jobs_100's", _events_not_growing),
    Target("jobs_2000", "done", "= 2000 (all)", lambda v, _: v == 2000),
    Target("jobs_2000", "events_per_job", "not growing: <= 1.05 x jobs_100's", _events_not_growing),
    Target("memory", "rss_growth_mib_run1_to_run3_after_expiry", "flat: <= 2 MiB", lambda v, _: v <= 2),
    Target("idle", "server_rss_mib_with_streams", f"<= 150 MB ({MIB_150_MB:.1f} MiB)",
           lambda v, _: v <= MIB_150_MB),
    Target("idle", "server_rss_mib_peak", f"<= 150 MB ({MIB_150_MB:.1f} MiB)", lambda v, _: v <= MIB_150_MB),
    Target("fanout", "events_per_s_over_sse_starlette", ">= 3", lambda v, _: v >= 3),
    Target("encoder", "ours_over_sse_starlette", ">= 3", lambda v, _: v >= 3),
    Target("cold_start", "start_to_ready_p50_s", "<= 0.5 s", lambda v, _: v <= 0.5),
    Target("cold_start", "rss_mib_added_by_max_running_jobs_100000", "<= 1 MiB", lambda v, _: v <= 1),
]


def apply_targets(sections: list[Section]) -> None:
    by_label = {section.label: section for section in sections}
    for target in TARGETS:
        section = by_label.get(target.label)
        figure = section.figures.get(target.figure) if section else None
        if figure is None:
            continue
        figure.target = target.text
        figure.met = figure.number is not None and target.check(figure.number, by_label)


def run_parts(names: list[str], sizes: Sizes, clients: int) -> tuple[list[Section], bool]:
    sections: list[Section] = []
    ok = True
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            taken = PARTS[name](sizes, clients)
        except Exception as exc:
            traceback.print_exc()
            ok = False
            failed = Figures()
            failed.add("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            taken = [Section(name, failed)]
        elapsed = time.perf_counter() - started
        taken[-1].figures.add("part_elapsed_s", elapsed, ".1f")
        print(f"bench: {name} took {elapsed:.1f} s", file=sys.stderr, flush=True)
        sections.extend(taken)
    return sections, ok


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> tuple[str, str]:
    memory_kb = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    packages = ", ".join(f"{name} {_version(name)}" for name in
                         ("uvicorn", "httptools", "uvloop", "starlette", "httpx", "sse-starlette", "locust", "redis"))
    return (
        f"nproc {len(os.sched_getaffinity(0))}; MemTotal {int(memory_kb):,} kB; "
        f"Python {platform.python_version()}; {platform.platform()}",
        f"packages: {packages}; redis-server {redis_version[2].removeprefix('v=') if len(redis_version) > 2 else '?'}",
    )


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return f"{head} (with uncommitted changes)" if dirty else head


def table(sections: list[Section]) -> str:
    rows = ["| part | figure | value | target | met |", "| --- | --- | --- | --- | --- |"]
    for section in sections:
        for figure in section.figures:
            met = "" if figure.met is None else ("yes" if figure.met else "**no**")
            text = figure.text.replace("|", "\\|")
            rows.append(f"| {section.label} | {figure.name} | {text} | {figure.target} | {met} |")
    return "\n".join(rows)


def render(sections: list[Section], *, started: datetime, elapsed_s: float, command: str,
           load_before: str, clients: int, targets: bool) -> str:
    box, packages = machine()
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC, commit {commit()}",
        "",
        f"- command: `{command}` (run from the repository root)",
        f"- machine: {box}",
        f"- {packages}",
        f"- took {elapsed_s:.0f} s; {clients} client processes; load average before: {load_before}",
    ]
    if targets:
        judged = [f for s in sections for f in s.figures if f.met is not None]
        missed = [f"{s.label}.{f.name}" for s in sections for f in s.figures if f.met is False]
        lines.append(f"- targets: {len(judged) - len(missed)} of {len(judged)} met"
                     + (f"; missed: {', '.join(missed)}" if missed else ""))
    lines += ["", table(sections)]
    for section in sections:
        if section.text:
            lines += ["", f"{section.label}, as it printed it:", "", "```", section.text, "```"]
    return "\n".join(lines) + "\n"


PREAMBLE = """# Bench results

Printed and written by `bench/run.py`; nothing here is worked out by hand. Each part starts the
real server (`python app.py`, offline writer, on a free 127.0.0.1 port) as a subprocess and
drives it from client processes of their own (forked, each an asyncio loop on uvloop): httpx
with one client and connection per job for jobs, a bare HTTP/1.1 reader for thousands of
streams. CPU figures are read from /proc around each timed window; RSS is sampled from /proc
every 20 ms while it runs. Other sessions share this machine's 2 cores: each window also
records `machine_busy_pct`, `other_processes_cpu_s` (busy CPU that neither the server, redis,
the clients nor the harness used, interrupts aside) and `interrupts_cpu_s` (irq and softirq,
where loopback traffic is partly handled), so read wall times beside them.

How the parts measure, in short (each module's docstring has the rest):

- `one_job`: one job alone at `OFFLINE_LLM_DELAY_MS` D, several times; ideal = 3 D (the outline
  call, the section calls side by side, the style call); wall is submit to the parsed `done`.
- `jobs_N`: N jobs submitted at once on a fresh server, each streamed to its end by its own
  client. Completion is submit to the parsed terminal event; first byte is the stream's GET to
  its first body byte. Event latency is measured on the `done` event: its data's `finished_at`
  (ISO, whole milliseconds) to the client's parse time, both from this machine's wall clock;
  the cut to the millisecond can read up to 1 ms high. Server CPU is per job of the run.
- `memory`: the RSS that N finished jobs add while kept, per job (run 50 at a time after a warm-up
  batch, so that a run's own peak does not hide them); then on a server with a small
  `JOB_TTL_SECONDS`, a warm-up run and three runs of N at once back to back, RSS read after the
  sweep forgot every job (after a run, RSS is the allocator's high-water mark: the warm-up sets it).
- `idle`: streams on running jobs that send nothing (a huge delay keeps them in their outline
  call), `HEARTBEAT_SECONDS` 2; on time = no gap between arrivals over HEARTBEAT_SECONDS + 1 s.
- `abandon`: streams opened then closed mid-stream, twice; the open-streams gauge must reach 0.
- `fanout`: one job, queued behind blocker jobs while every subscriber connects, then released;
  against sse-starlette (bench/sse_starlette_app.py: a queue per subscriber, EventSourceResponse)
  replaying the same job's events on the timeline the service wrote them. Lag is each arrival
  behind the first arrival of the same event (CLOCK_MONOTONIC, shared by the client processes).
- `encoder`: `pipeline.sse.encode` against `sse_starlette.ServerSentEvent(...).encode()` (what
  EventSourceResponse runs per event and per subscriber) on one job's real payloads, in turns.
- `cold_start`: `python app.py` with only HOST and PORT set, process start to the first 200 from
  /readyz (polled every 5 ms).
- `redis`: the `jobs` run on two instances sharing a redis-server the harness starts, job i
  submitted to instance i % 2 and streamed from the other; a job not done within 90 s counts as
  a failure. Connections per instance from CLIENT LIST every 250 ms, by the name each instance
  gives its connections; one opened but not yet named counts as unnamed, and the total as well.
- `locust`: locustfile.py, headless, against `python app.py` with only HOST and PORT set (its
  defaults: `OFFLINE_LLM_DELAY_MS` 300, `MAX_RUNNING_JOBS` 100, `MAX_LLM_CALLS` 100).
"""


#: RESULTS.md from this line on is written by hand (profiles, what each fix bought) and kept
NOTES_MARK = "<!-- notes: kept by bench/run.py when it writes the table above -->"


def kept_notes() -> str:
    old = RESULTS.read_text() if RESULTS.exists() else ""
    return "\n" + NOTES_MARK + old.split(NOTES_MARK, 1)[1] if NOTES_MARK in old else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part once with tiny sizes; writes nothing")
    parser.add_argument("--only", choices=sorted(PARTS), action="append",
                        help="run this part only (may be given more than once); writes nothing")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes per part")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    names = [name for name in PARTS if not args.only or name in args.only]
    command = shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    started = datetime.now(timezone.utc)
    load_before = load_average()
    began = time.perf_counter()
    sections, ok = run_parts(names, sizes, args.clients)
    if not args.smoke:
        apply_targets(sections)
    report = render(sections, started=started, elapsed_s=time.perf_counter() - began, command=command,
                    load_before=load_before, clients=args.clients, targets=not args.smoke)
    print(report, flush=True)
    if not args.smoke and not args.only and ok:
        RESULTS.write_text(PREAMBLE + "\n" + report + kept_notes())
        print(f"bench: wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
