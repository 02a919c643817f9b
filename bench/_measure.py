"""What a bench run cost and what it printed: CPU meters, an RSS sampler, and figures.

The machine's cores are shared by the server, the bench's own processes and whatever else runs
there, so every timed window also records the whole machine's busy time and how much of it
neither the server nor the bench used (`other_processes_cpu_s`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from _server import load_average, machine_cpu_seconds, process_cpu_seconds, process_rss_mib

RSS_SAMPLE_INTERVAL_S = 0.02


@dataclass
class Figure:
    """One printed figure: `name: text`, with its number when it has one."""

    name: str
    text: str
    number: float | None = None
    #: filled in by the harness: what the figure is held against, and whether it met it
    target: str = ""
    met: bool | None = None


class Figures(list[Figure]):
    """The figures of one part, in the order they were taken."""

    def add(self, name: str, value: float | int | str, fmt: str = "") -> None:
        if isinstance(value, str):
            self.append(Figure(name, value))
        else:
            self.append(Figure(name, format(value, fmt) if fmt else str(value), float(value)))

    def get(self, name: str) -> Figure | None:
        return next((figure for figure in self if figure.name == name), None)

    def print(self) -> None:
        for figure in self:
            print(f"{figure.name}: {figure.text}", flush=True)


@dataclass
class Usage:
    """CPU seconds of one timed window."""

    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    harness_cpu_s: float
    extra_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    #: irq + softirq time of the machine, which no process is charged for
    interrupts_s: float
    load_before: str

    @property
    def others_s(self) -> float:
        ours = self.server_cpu_s + self.client_cpu_s + self.harness_cpu_s + self.extra_cpu_s
        return max(0.0, self.machine_busy_s - ours - self.interrupts_s)

    def add_to(self, figures: Figures, per: int | None = None, per_name: str = "job",
               clients: str = "bench_client") -> None:
        figures.add("measured_window_s", self.seconds, ".1f")
        figures.add("server_cpu_s", self.server_cpu_s, ".2f")
        if per:
            figures.add(f"server_cpu_ms_per_{per_name}", self.server_cpu_s * 1000 / per, ".2f")
        figures.add(f"{clients}_cpu_s", self.client_cpu_s, ".2f")
        figures.add("interrupts_cpu_s", self.interrupts_s, ".2f")
        figures.add("other_processes_cpu_s", self.others_s, ".2f")
        if self.machine_total_s > 0:
            figures.add("machine_busy_pct", 100 * self.machine_busy_s / self.machine_total_s, ".0f")
        figures.add("load_average_before", self.load_before)


class Meter:
    """CPU of the servers (and of `extra_pids`, e.g. redis-server), this process and the machine."""

    def __init__(self, server_pids: Sequence[int], extra_pids: Sequence[int] = ()) -> None:
        self.server_pids = list(server_pids)
        self.extra_pids = list(extra_pids)

    def _cpu(self, pids: list[int]) -> float:
        return sum(process_cpu_seconds(pid) for pid in pids)

    def start(self) -> None:
        self.load_before = load_average()
        self.started = time.perf_counter()
        self.server_cpu = self._cpu(self.server_pids)
        self.extra_cpu = self._cpu(self.extra_pids)
        self.harness_cpu = time.process_time()
        self.busy, self.total, self.interrupts = machine_cpu_seconds()

    def stop(self, client_cpu_s: float) -> Usage:
        busy, total, interrupts = machine_cpu_seconds()
        return Usage(
            seconds=time.perf_counter() - self.started,
            server_cpu_s=self._cpu(self.server_pids) - self.server_cpu,
            client_cpu_s=client_cpu_s,
            harness_cpu_s=time.process_time() - self.harness_cpu,
            extra_cpu_s=self._cpu(self.extra_pids) - self.extra_cpu,
            machine_busy_s=busy - self.busy,
            machine_total_s=total - self.total,
            interrupts_s=interrupts - self.interrupts,
            load_before=self.load_before,
        )


class Sampler:
    """Calls `sample()` at once, then every `interval_s` in a thread, until `stop()`."""

    def __init__(self, interval_s: float, name: str) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


class RssSampler(Sampler):
    """Samples the RSS of `pids` from /proc in a thread; `peak_mib[pid]` is the highest seen."""

    def __init__(self, pids: Sequence[int], interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        super().__init__(interval_s, "rss-sampler")
        self.pids = pids
        self.peak_mib: dict[int, float] = {}

    def sample(self) -> None:
        for pid in self.pids:
            try:
                rss = process_rss_mib(pid)
            except OSError:  # it exited
                continue
            self.peak_mib[pid] = max(self.peak_mib.get(pid, 0.0), rss)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.sample()


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> float | None:
    """Poll `check` until it holds: the seconds it took, or None if it did not within `timeout_s`."""
    started = time.perf_counter()
    while True:
        if check():
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            return None
        time.sleep(interval_s)
